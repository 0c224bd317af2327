//! Consent sources: where the consent record a token names comes from.
//!
//! A file (dev and tests: YAML or JSON `consents: {id: record}`), or an HTTPS endpoint (`{id}` in
//! the URL template; pinned CA; answers cached for a TTL) that the proxy authenticates to with a
//! client certificate, a bearer token from a file, or a client credentials token
//! ([`crate::client_auth`]). A record is an OBIE consent resource (account access, domestic
//! payment, domestic VRP: see [`ConsentRecord::from_json`]) or flat (`status`, `expires`,
//! `permissions`, any other members such as `accounts`). An endpoint that cannot answer, or a
//! token that cannot be had, is not a decision: the request is refused with 503 (fail closed),
//! and the operator learns why from a warning (at most one a second, never with a token).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use serde_json::Value;

use portcullis_policy::rules::{AuthzError, ConsentRecord};

use crate::client_auth::{ClientCredentials, TokenEndpoint, TokenFailure, TokenFile};

#[derive(Clone)]
pub struct RemoteConsent {
    /// With `{id}` where the consent id goes.
    pub url_template: String,
    /// Trust, and the client certificate when the proxy authenticates by mutual TLS.
    pub tls: Arc<rustls::ClientConfig>,
    pub auth: ConsentAuth,
    pub ttl: Duration,
    pub timeout: Duration,
}

/// What the proxy adds to a consent request to authenticate itself.
#[derive(Clone)]
pub enum ConsentAuth {
    /// Nothing: the TLS connection carries the client certificate, if any.
    Tls,
    /// `Authorization: Bearer` with the token the file holds now.
    BearerFile(PathBuf),
    /// `Authorization: Bearer` with a client credentials token from this endpoint.
    ClientCredentials(Box<TokenEndpoint>),
}

/// The running form of [`ConsentAuth`].
enum Authenticator {
    Tls,
    File(TokenFile),
    Grant(Box<ClientCredentials>),
}

/// Why a lookup gave no decision, for the operator's log.
enum Failure {
    /// The token file is missing, empty or holds no usable token.
    TokenFile,
    Token(TokenFailure),
    Request,
    Timeout,
    Connect,
    Status(http::StatusCode),
    Body,
    NotARecord,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::TokenFile => f.write_str("the bearer token file holds no usable token"),
            Failure::Token(t) => t.fmt(f),
            Failure::Request => f.write_str("the request could not be built"),
            Failure::Timeout => f.write_str("no answer in time"),
            Failure::Connect => f.write_str("connection or TLS failure"),
            Failure::Status(s) => write!(f, "status {}", s.as_u16()),
            Failure::Body => f.write_str("the answer body could not be read"),
            Failure::NotARecord => f.write_str("the answer is not a consent record"),
        }
    }
}

/// Where consent records come from.
#[derive(Clone)]
pub enum ConsentConfig {
    File(Arc<HashMap<String, ConsentRecord>>),
    Url(RemoteConsent),
}

pub struct ConsentSource {
    config: ConsentConfig,
    client: Option<Client<HttpsConnector<HttpConnector>, Empty<Bytes>>>,
    auth: Authenticator,
    cache: DashMap<String, (std::time::Instant, Option<ConsentRecord>)>,
    pub lookups: AtomicU64,
    pub failures: AtomicU64,
    /// Unix second of the last failure warning (one a second at most).
    warned: AtomicI64,
}

/// Consent ids travel in a URL path as one segment: only unreserved characters, and not a dot
/// segment (`..` would climb out of the template's path; `%2E%2E` is the same to RFC 3986).
fn safe_id(id: &str) -> bool {
    !id.is_empty()
        && id != "."
        && id != ".."
        && id.len() <= 256
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

impl ConsentSource {
    pub fn new(config: ConsentConfig) -> ConsentSource {
        let client = match &config {
            ConsentConfig::File(_) => None,
            ConsentConfig::Url(r) => Some(crate::https::pinned_https_client(&r.tls, r.timeout)),
        };
        let auth = match &config {
            ConsentConfig::Url(RemoteConsent {
                auth: ConsentAuth::BearerFile(p),
                ..
            }) => Authenticator::File(TokenFile::new(p.clone())),
            ConsentConfig::Url(RemoteConsent {
                auth: ConsentAuth::ClientCredentials(e),
                ..
            }) => Authenticator::Grant(Box::new(ClientCredentials::new((**e).clone()))),
            _ => Authenticator::Tls,
        };
        ConsentSource {
            config,
            client,
            auth,
            warned: AtomicI64::new(0),
            cache: DashMap::new(),
            lookups: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }
    }

    /// The record for `id`: `Ok(None)` when there is no such consent, `Err` when the source
    /// could not answer.
    pub async fn get(&self, id: &str) -> Result<Option<ConsentRecord>, AuthzError> {
        self.lookups.fetch_add(1, Ordering::Relaxed);
        match &self.config {
            ConsentConfig::File(m) => Ok(m.get(id).cloned()),
            ConsentConfig::Url(r) => {
                if !safe_id(id) {
                    return Ok(None);
                }
                if let Some(hit) = self.cache.get(id).map(|e| e.value().clone()) {
                    if hit.0.elapsed() < r.ttl {
                        return Ok(hit.1);
                    }
                }
                match self.fetch(r, id).await {
                    Ok(rec) => {
                        if self.cache.len() > 100_000 {
                            self.cache.clear();
                        }
                        self.cache
                            .insert(id.to_string(), (std::time::Instant::now(), rec.clone()));
                        Ok(rec)
                    }
                    Err(why) => {
                        self.failures.fetch_add(1, Ordering::Relaxed);
                        self.warn(r, &why);
                        Err(AuthzError::ConsentUnavailable)
                    }
                }
            }
        }
    }

    /// Client credentials token requests sent so far (0 without that authentication).
    pub fn token_requests(&self) -> u64 {
        match &self.auth {
            Authenticator::Grant(g) => g.requests.load(Ordering::Relaxed),
            _ => 0,
        }
    }

    fn warn(&self, r: &RemoteConsent, why: &Failure) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        if self.warned.swap(now, Ordering::Relaxed) != now {
            tracing::warn!(
                endpoint = %r.url_template,
                failure = %why,
                "consent lookup failed; requests that need a consent are refused until it answers"
            );
        }
    }

    async fn fetch(&self, r: &RemoteConsent, id: &str) -> Result<Option<ConsentRecord>, Failure> {
        let client = self.client.as_ref().ok_or(Failure::Request)?;
        let token = match &self.auth {
            Authenticator::Tls => None,
            Authenticator::File(f) => Some(f.token().ok_or(Failure::TokenFile)?),
            Authenticator::Grant(g) => Some(g.token().await.map_err(Failure::Token)?),
        };
        let uri: http::Uri = r
            .url_template
            .replace("{id}", id)
            .parse()
            .map_err(|_| Failure::Request)?;
        let mut req = http::Request::get(uri).header(http::header::ACCEPT, "application/json");
        if let Some(t) = &token {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req.body(Empty::new()).map_err(|_| Failure::Request)?;
        let resp = tokio::time::timeout(r.timeout, client.request(req))
            .await
            .map_err(|_| Failure::Timeout)?
            .map_err(|_| Failure::Connect)?;
        match resp.status() {
            http::StatusCode::OK => {}
            http::StatusCode::NOT_FOUND => return Ok(None),
            s => {
                // A refused token was revoked or rotated: the next lookup gets a fresh one.
                if s == http::StatusCode::UNAUTHORIZED {
                    match (&self.auth, &token) {
                        (Authenticator::File(f), _) => f.recheck(),
                        (Authenticator::Grant(g), Some(t)) => g.forget(t).await,
                        _ => {}
                    }
                }
                return Err(Failure::Status(s));
            }
        }
        let body = tokio::time::timeout(
            r.timeout,
            Limited::new(resp.into_body(), 256 * 1024).collect(),
        )
        .await
        .map_err(|_| Failure::Timeout)?
        .map_err(|_| Failure::Body)?
        .to_bytes();
        let v: Value = serde_json::from_slice(&body).map_err(|_| Failure::NotARecord)?;
        ConsentRecord::from_json(&v)
            .map(Some)
            .ok_or(Failure::NotARecord)
    }
}

#[cfg(test)]
mod id_tests {
    #[test]
    fn ids_cannot_leave_their_path_segment() {
        for good in ["pdc-a1_~", "pdc.1", "a..b"] {
            assert!(super::safe_id(good), "{good}");
        }
        for bad in [
            "", ".", "..", "../x", "a/b", "a?b", "a#b", "a b", "a%2Fb", "é",
        ] {
            assert!(!super::safe_id(bad), "{bad}");
        }
    }
}
