//! Authorization server metadata (RFC 8414, OpenID Connect Discovery 1.0): where an issuer's key
//! set and introspection endpoint are, read from the issuer's own metadata document.
//!
//! The document is fetched over HTTPS with the configured trust at start-up and on a refresh
//! interval. It is taken only when its `issuer` is exactly the configured issuer (RFC 8414 §3.3,
//! OpenID Discovery §4.3: a document for another issuer must not be used, or an attacker who
//! can serve one redirects key fetches) and every endpoint it names that we use is an
//! `https://` URL. A failed, garbage or mismatched fetch never replaces the last good document;
//! until the first good one arrives the issuer is not ready and its tokens are refused.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const MAX_METADATA_BYTES: usize = 256 * 1024;

/// Where the metadata document is and how it is fetched.
#[derive(Clone)]
pub struct DiscoveryConfig {
    /// The document's URL (by default the issuer + `/.well-known/openid-configuration`).
    pub uri: http::Uri,
    /// The exact `issuer` the document must name.
    pub issuer: String,
    /// The trust the document is fetched with; endpoints it names that list no trust of their
    /// own are reached with the same roots (the same authorization server).
    pub roots: rustls::RootCertStore,
    pub tls: Arc<rustls::ClientConfig>,
    pub refresh: Duration,
    pub timeout: Duration,
}

/// What portcullis uses from a metadata document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Metadata {
    pub jwks_uri: Option<http::Uri>,
    pub introspection_endpoint: Option<http::Uri>,
}

/// Why a document was not taken; a bounded word for logs and metrics.
fn parse(body: &[u8], issuer: &str) -> Result<Metadata, &'static str> {
    let m = portcullis_base::json::parse_object(body).ok_or("not_a_json_object")?;
    match m.get("issuer") {
        Some(Value::String(i)) if i == issuer => {}
        _ => return Err("issuer_mismatch"),
    }
    let endpoint = |name: &str| -> Result<Option<http::Uri>, &'static str> {
        match m.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => match s.parse::<http::Uri>() {
                Ok(u) if u.scheme() == Some(&http::uri::Scheme::HTTPS) && u.host().is_some() => {
                    Ok(Some(u))
                }
                _ => Err("endpoint_not_https"),
            },
            Some(_) => Err("endpoint_not_a_string"),
        }
    };
    Ok(Metadata {
        jwks_uri: endpoint("jwks_uri")?,
        introspection_endpoint: endpoint("introspection_endpoint")?,
    })
}

pub struct Discovery {
    pub config: DiscoveryConfig,
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    current: ArcSwapOption<Metadata>,
    /// Single flight.
    fetching: tokio::sync::Mutex<()>,
    pub fetches: AtomicU64,
    pub failures: AtomicU64,
}

impl Discovery {
    pub fn new(config: DiscoveryConfig) -> Discovery {
        Discovery {
            client: crate::https::pinned_https_client(&config.tls, config.timeout),
            config,
            current: ArcSwapOption::empty(),
            fetching: tokio::sync::Mutex::new(()),
            fetches: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }
    }

    pub fn is_ready(&self) -> bool {
        self.current.load().is_some()
    }

    /// The last good document, fetched now (single flight) if there is none yet.
    pub async fn metadata(&self) -> Option<Arc<Metadata>> {
        if let Some(m) = self.current.load_full() {
            return Some(m);
        }
        let seen = self.fetches.load(Ordering::Relaxed);
        let _one = self.fetching.lock().await;
        if self.fetches.load(Ordering::Relaxed) == seen {
            self.fetch_and_store().await;
        }
        self.current.load_full()
    }

    /// Fetches now; returns whether a good document is in place afterwards.
    pub async fn refresh(&self) -> bool {
        let _one = self.fetching.lock().await;
        self.fetch_and_store().await;
        self.is_ready()
    }

    async fn fetch_and_store(&self) {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        match self.fetch().await {
            Ok(m) => self.current.store(Some(Arc::new(m))),
            Err(why) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    issuer = %self.config.issuer,
                    url = %self.config.uri,
                    failure = why,
                    "authorization server metadata not taken; keeping the last good document"
                );
            }
        }
    }

    async fn fetch(&self) -> Result<Metadata, &'static str> {
        let req = http::Request::get(self.config.uri.clone())
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::new())
            .map_err(|_| "request")?;
        let t = self.config.timeout;
        let resp = tokio::time::timeout(t, self.client.request(req))
            .await
            .map_err(|_| "timeout")?
            .map_err(|_| "connect")?;
        if resp.status() != http::StatusCode::OK {
            return Err("status");
        }
        let body = tokio::time::timeout(
            t,
            Limited::new(resp.into_body(), MAX_METADATA_BYTES).collect(),
        )
        .await
        .map_err(|_| "timeout")?
        .map_err(|_| "body")?
        .to_bytes();
        parse(&body, &self.config.issuer)
    }

    /// Fetches now and then every refresh interval until `shutdown` (quickly again while there
    /// is no good document).
    pub fn spawn_refresh(self: &Arc<Self>, shutdown: CancellationToken) {
        let me = Arc::clone(self);
        crate::https::spawn_refresh_loop(self.config.refresh, shutdown, move || {
            let me = Arc::clone(&me);
            async move { me.refresh().await }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_is_taken_only_for_the_exact_issuer_with_https_endpoints() {
        let iss = "https://as.example";
        let ok = parse(
            br#"{"issuer":"https://as.example","jwks_uri":"https://as.example/jwks","introspection_endpoint":"https://as.example/i"}"#,
            iss,
        )
        .unwrap();
        assert_eq!(ok.jwks_uri.unwrap(), "https://as.example/jwks");
        assert_eq!(ok.introspection_endpoint.unwrap(), "https://as.example/i");
        for (body, why) in [
            (
                &br#"{"issuer":"https://as.example/","jwks_uri":"https://a/j"}"#[..],
                "issuer_mismatch",
            ),
            (
                br#"{"issuer":"https://AS.example","jwks_uri":"https://a/j"}"#,
                "issuer_mismatch",
            ),
            (br#"{"jwks_uri":"https://a/j"}"#, "issuer_mismatch"),
            (
                br#"{"issuer":"https://as.example","jwks_uri":"http://a/j"}"#,
                "endpoint_not_https",
            ),
            (
                br#"{"issuer":"https://as.example","jwks_uri":"/j"}"#,
                "endpoint_not_https",
            ),
            (
                br#"{"issuer":"https://as.example","introspection_endpoint":7}"#,
                "endpoint_not_a_string",
            ),
            (
                br#"{"issuer":"https://as.example","issuer":"https://as.example"}"#,
                "not_a_json_object",
            ),
            (b"<html>", "not_a_json_object"),
        ] {
            assert_eq!(
                parse(body, iss),
                Err(why),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
