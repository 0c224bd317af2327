//! RFC 7662 token introspection for opaque access tokens.
//!
//! The proxy POSTs `token=…&token_type_hint=access_token` to the issuer's introspection
//! endpoint over pinned TLS, authenticating with HTTP Basic (client id and secret) or with its
//! own client certificate (RFC 8705 §2). `active: false` is an invalid token; an unreachable
//! endpoint, a non-200 answer or a body that is not a JSON object with a boolean `active` is
//! not a decision, so the request is refused (fail closed) with its own reason code. Results
//! are cached by the token verifier for min(`exp`, TTL).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use serde_json::{Map, Value};

const MAX_BODY: usize = 64 * 1024;

/// How to reach and authenticate to one introspection endpoint.
#[derive(Clone)]
pub struct IntrospectionConfig {
    pub uri: http::Uri,
    /// TLS trust (and the client certificate, for mTLS client authentication).
    pub tls: Arc<rustls::ClientConfig>,
    /// `Authorization: Basic` credentials, when the endpoint uses a client secret.
    pub basic: Option<(String, String)>,
    pub timeout: Duration,
    /// How long an answer is reused (bounded by the token's `exp`).
    pub cache_ttl: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntrospectError {
    /// Unreachable, timed out, non-200, or not a valid answer: no decision.
    Unavailable,
}

pub struct Introspector {
    pub config: IntrospectionConfig,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    pub calls: AtomicU64,
    pub failures: AtomicU64,
}

/// `application/x-www-form-urlencoded` encoding of one value.
fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Introspector {
    pub fn new(config: IntrospectionConfig) -> Introspector {
        Introspector {
            client: crate::https::pinned_https_client(&config.tls, config.timeout),
            config,
            calls: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }
    }

    /// Asks the endpoint about `token`; returns the answer's members (with `active: true`), or
    /// `Ok(None)` for an inactive token.
    pub async fn introspect(
        &self,
        token: &str,
    ) -> Result<Option<Map<String, Value>>, IntrospectError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let r = self.call(token).await;
        if r.is_err() {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    async fn call(&self, token: &str) -> Result<Option<Map<String, Value>>, IntrospectError> {
        let body = format!("token={}&token_type_hint=access_token", form_encode(token));
        let mut req = http::Request::post(self.config.uri.clone())
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(http::header::ACCEPT, "application/json");
        if let Some((id, secret)) = &self.config.basic {
            // RFC 6749 §2.3.1: form-encode, then base64.
            let raw = format!("{}:{}", form_encode(id), form_encode(secret));
            let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
            req = req.header(http::header::AUTHORIZATION, format!("Basic {b64}"));
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|_| IntrospectError::Unavailable)?;
        let t = self.config.timeout;
        let resp = tokio::time::timeout(t, self.client.request(req))
            .await
            .map_err(|_| IntrospectError::Unavailable)?
            .map_err(|_| IntrospectError::Unavailable)?;
        if resp.status() != http::StatusCode::OK {
            return Err(IntrospectError::Unavailable);
        }
        let bytes = tokio::time::timeout(t, Limited::new(resp.into_body(), MAX_BODY).collect())
            .await
            .map_err(|_| IntrospectError::Unavailable)?
            .map_err(|_| IntrospectError::Unavailable)?
            .to_bytes();
        let m = portcullis_base::json::parse_object(&bytes).ok_or(IntrospectError::Unavailable)?;
        match m.get("active") {
            Some(Value::Bool(true)) => Ok(Some(m)),
            Some(Value::Bool(false)) => Ok(None),
            _ => Err(IntrospectError::Unavailable),
        }
    }
}
