//! RFC 7662 token introspection for opaque access tokens.
//!
//! The proxy POSTs `token=…&token_type_hint=access_token` to the issuer's introspection
//! endpoint (configured, or named by the issuer's metadata) over pinned TLS, authenticating with HTTP Basic (client id and secret) or with its
//! own client certificate (RFC 8705 §2, `tls_client_auth`: the certificate authenticates, and
//! `client_id` goes in the form because the server needs it to find the client's registered
//! certificate). `active: false` is an invalid token; an unreachable endpoint, a non-200 answer
//! or a body that is not a JSON object with a boolean `active` is not a decision, so the request
//! is refused (fail closed) with its own reason code, and the operator learns why from a warning
//! (at most one a second, never with the token). Results are cached by the token verifier for
//! min(`exp`, TTL).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use serde_json::{Map, Value};

use crate::discovery::Discovery;
use crate::https::{form_encode, oauth_error, oauth_form_post, ClientAuth};

const MAX_BODY: usize = 64 * 1024;

/// How to reach and authenticate to one introspection endpoint.
#[derive(Clone)]
pub struct IntrospectionConfig {
    /// The endpoint; `None`: the `introspection_endpoint` of the issuer's metadata.
    pub uri: Option<http::Uri>,
    /// TLS trust (and the client certificate, for mTLS client authentication).
    pub tls: Arc<rustls::ClientConfig>,
    pub auth: ClientAuth,
    pub timeout: Duration,
    /// How long an answer is reused (bounded by the token's `exp`).
    pub cache_ttl: i64,
    /// Ask about JWT access tokens too (revocation), after their signature and claims passed.
    pub jwts: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntrospectError {
    /// Unreachable, timed out, non-200, or not a valid answer: no decision.
    Unavailable,
}

/// Why a call gave no decision, for the operator's log.
enum Failure {
    /// No endpoint: the issuer's metadata is not there or names no introspection endpoint.
    NoMetadata,
    Request,
    Timeout,
    Connect,
    /// A non-200 answer, with the OAuth `error` code when the body has a printable one.
    Status(http::StatusCode, Option<String>),
    Body,
    NotAnAnswer,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::NoMetadata => {
                f.write_str("no introspection_endpoint in the issuer's metadata")
            }
            Failure::Request => f.write_str("the request could not be built"),
            Failure::Timeout => f.write_str("no answer in time"),
            Failure::Connect => f.write_str("connection or TLS failure"),
            Failure::Status(s, Some(e)) => write!(f, "status {}, error {e}", s.as_u16()),
            Failure::Status(s, None) => write!(f, "status {}", s.as_u16()),
            Failure::Body => f.write_str("the answer body could not be read"),
            Failure::NotAnAnswer => {
                f.write_str("the answer is not a JSON object with a boolean `active`")
            }
        }
    }
}

pub struct Introspector {
    pub config: IntrospectionConfig,
    discovery: Option<Arc<Discovery>>,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    pub calls: AtomicU64,
    pub failures: AtomicU64,
    /// Unix second of the last failure warning (one a second at most).
    warned: AtomicI64,
}

/// RFC 7662 §2.2 `token_type` values that name an access token: the schemes it is used with
/// (RFC 6750 `Bearer`, RFC 9449 `DPoP`, `N_A` for RFC 8693 exchanges) and RFC 8693's URI.
pub fn is_access_token_type(t: &str) -> bool {
    ["bearer", "dpop", "n_a", "access_token"]
        .iter()
        .any(|a| t.eq_ignore_ascii_case(a))
        || t == "urn:ietf:params:oauth:token-type:access_token"
}

impl Introspector {
    pub fn new(config: IntrospectionConfig) -> Introspector {
        Introspector::discovered(config, None)
    }

    /// An introspector whose endpoint, when the config names none, is the issuer's metadata's
    /// `introspection_endpoint` (read on every call, so a moved endpoint is followed).
    pub fn discovered(
        config: IntrospectionConfig,
        discovery: Option<Arc<Discovery>>,
    ) -> Introspector {
        Introspector {
            client: crate::https::pinned_https_client(&config.tls, config.timeout),
            config,
            discovery,
            calls: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            warned: AtomicI64::new(0),
        }
    }

    /// Asks the endpoint about `token`; returns the answer's members (with `active: true`), or
    /// `Ok(None)` for an inactive token.
    pub async fn introspect(
        &self,
        token: &str,
    ) -> Result<Option<Map<String, Value>>, IntrospectError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        match self.call(token).await {
            Ok(answer) => Ok(answer),
            Err(why) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                self.warn(&why);
                Err(IntrospectError::Unavailable)
            }
        }
    }

    fn warn(&self, why: &Failure) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        if self.warned.swap(now, Ordering::Relaxed) != now {
            tracing::warn!(
                endpoint = %self.config.uri.as_ref().map_or("(from metadata)".to_string(), |u| u.to_string()),
                failure = %why,
                "token introspection failed; tokens of this issuer are refused until it answers"
            );
        }
    }

    async fn call(&self, token: &str) -> Result<Option<Map<String, Value>>, Failure> {
        let body = format!("token={}&token_type_hint=access_token", form_encode(token));
        let uri = match (&self.config.uri, &self.discovery) {
            (Some(u), _) => u.clone(),
            (None, Some(d)) => d
                .metadata()
                .await
                .ok_or(Failure::NoMetadata)?
                .introspection_endpoint
                .clone()
                .ok_or(Failure::NoMetadata)?,
            (None, None) => return Err(Failure::NoMetadata),
        };
        let req = oauth_form_post(uri, body, &self.config.auth).map_err(|_| Failure::Request)?;
        let t = self.config.timeout;
        let resp = tokio::time::timeout(t, self.client.request(req))
            .await
            .map_err(|_| Failure::Timeout)?
            .map_err(|_| Failure::Connect)?;
        let status = resp.status();
        let bytes = tokio::time::timeout(t, Limited::new(resp.into_body(), MAX_BODY).collect())
            .await
            .map_err(|_| Failure::Timeout)?
            .map_err(|_| Failure::Body)?
            .to_bytes();
        if status != http::StatusCode::OK {
            return Err(Failure::Status(status, oauth_error(&bytes)));
        }
        let m = portcullis_base::json::parse_object(&bytes).ok_or(Failure::NotAnAnswer)?;
        match m.get("active") {
            Some(Value::Bool(true)) => Ok(Some(m)),
            Some(Value::Bool(false)) => Ok(None),
            _ => Err(Failure::NotAnAnswer),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_short_printable_oauth_error_code_is_taken_from_a_refusal() {
        assert_eq!(
            oauth_error(br#"{"error":"invalid_client","error_description":"x"}"#).as_deref(),
            Some("invalid_client")
        );
        for body in [
            &br#"{"error":"a\nb"}"#[..],
            br#"{"error":1}"#,
            br#"{"error":"a\"b"}"#,
            b"<html>",
            b"",
        ] {
            assert_eq!(oauth_error(body), None, "{}", String::from_utf8_lossy(body));
        }
        let long = format!(r#"{{"error":"{}"}}"#, "e".repeat(65));
        assert_eq!(oauth_error(long.as_bytes()), None);
        let s = Failure::Status(
            http::StatusCode::BAD_REQUEST,
            Some("invalid_request".into()),
        );
        assert_eq!(s.to_string(), "status 400, error invalid_request");
    }

    #[test]
    fn access_token_types_are_the_schemes_and_the_rfc_8693_uri() {
        for t in [
            "Bearer",
            "DPoP",
            "N_A",
            "urn:ietf:params:oauth:token-type:access_token",
        ] {
            assert!(is_access_token_type(t), "{t}");
        }
        for t in [
            "refresh_token",
            "urn:ietf:params:oauth:token-type:refresh_token",
            "",
        ] {
            assert!(!is_access_token_type(t), "{t}");
        }
    }
}
