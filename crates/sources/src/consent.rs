//! Consent sources: where the consent record a token names comes from.
//!
//! A file (dev and tests: YAML or JSON `consents: {id: record}`), or an HTTPS endpoint (`{id}` in
//! the URL template; pinned CA; answers cached for a TTL). A record is OBIE-shaped (`Data.Status`,
//! `Data.ExpirationDateTime`, `Data.Permissions`, ...) or flat (`status`, `expires`,
//! `permissions`, any other members such as `accounts`). An endpoint that cannot answer is not
//! a decision: the request is refused with 503 (fail closed).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
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

#[derive(Clone)]
pub struct RemoteConsent {
    /// With `{id}` where the consent id goes.
    pub url_template: String,
    pub tls: Arc<rustls::ClientConfig>,
    pub ttl: Duration,
    pub timeout: Duration,
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
    cache: DashMap<String, (std::time::Instant, Option<ConsentRecord>)>,
    pub lookups: AtomicU64,
    pub failures: AtomicU64,
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
        ConsentSource {
            config,
            client,
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
                let answer = self.fetch(r, id).await;
                match &answer {
                    Ok(rec) => {
                        if self.cache.len() > 100_000 {
                            self.cache.clear();
                        }
                        self.cache
                            .insert(id.to_string(), (std::time::Instant::now(), rec.clone()));
                    }
                    Err(_) => {
                        self.failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                answer
            }
        }
    }

    async fn fetch(
        &self,
        r: &RemoteConsent,
        id: &str,
    ) -> Result<Option<ConsentRecord>, AuthzError> {
        let client = self.client.as_ref().ok_or(AuthzError::ConsentUnavailable)?;
        let uri: http::Uri = r
            .url_template
            .replace("{id}", id)
            .parse()
            .map_err(|_| AuthzError::ConsentUnavailable)?;
        let req = http::Request::get(uri)
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::new())
            .map_err(|_| AuthzError::ConsentUnavailable)?;
        let resp = tokio::time::timeout(r.timeout, client.request(req))
            .await
            .map_err(|_| AuthzError::ConsentUnavailable)?
            .map_err(|_| AuthzError::ConsentUnavailable)?;
        match resp.status() {
            http::StatusCode::OK => {}
            http::StatusCode::NOT_FOUND => return Ok(None),
            _ => return Err(AuthzError::ConsentUnavailable),
        }
        let body = tokio::time::timeout(
            r.timeout,
            Limited::new(resp.into_body(), 256 * 1024).collect(),
        )
        .await
        .map_err(|_| AuthzError::ConsentUnavailable)?
        .map_err(|_| AuthzError::ConsentUnavailable)?
        .to_bytes();
        let v: Value = serde_json::from_slice(&body).map_err(|_| AuthzError::ConsentUnavailable)?;
        ConsentRecord::from_json(&v)
            .map(Some)
            .ok_or(AuthzError::ConsentUnavailable)
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
