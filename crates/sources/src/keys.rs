//! Key sources: where an issuer's verification keys come from, and how they stay fresh.
//!
//! A file source is read at config load (a bad file is a config error). A URL source is fetched
//! over HTTPS with the configured CA bundle: at start-up, on a refresh interval, and — when a
//! token names a `kid` we do not have — once, single-flight (concurrent requests wait for the
//! one fetch, and a fetch that ended while they waited is the one they wanted). Only refetches
//! an unknown `kid` triggered count against `min_refetch_interval`: a start-up or periodic fetch
//! just before the authorization server rotates must not make the new key wait out the limit.
//! A failed or garbage fetch never replaces the last good set. Until the first good set arrives
//! the source is not ready (`/readyz` says so) and tokens for that issuer are refused (fail
//! closed).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use tokio_util::sync::CancellationToken;

use crate::discovery::Discovery;
use portcullis_crypto::jose::jwk::VerifyingKey;
use portcullis_crypto::jose::jws::{KeyChoice, KeySet};
use portcullis_crypto::jose::Alg;

const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// How a remote key set is fetched and refreshed.
#[derive(Clone)]
pub struct Remote {
    /// The key set's URL; `None`: the `jwks_uri` of the issuer's metadata ([`Discovery`]).
    pub uri: Option<http::Uri>,
    pub tls: Arc<rustls::ClientConfig>,
    pub refresh: Duration,
    pub min_refetch: Duration,
    pub timeout: Duration,
}

pub struct KeySource {
    pub issuer: String,
    current: ArcSwapOption<KeySet>,
    remote: Option<RemoteState>,
    pub fetches: AtomicU64,
    pub failures: AtomicU64,
    /// Unix seconds of the last good set (0: never).
    pub last_good: AtomicI64,
}

struct RemoteState {
    cfg: Remote,
    discovery: Option<Arc<Discovery>>,
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    /// Single flight: held for the duration of one fetch.
    fetching: tokio::sync::Mutex<Fetched>,
}

/// When fetches started, by what started them.
#[derive(Default)]
struct Fetched {
    last: Option<Instant>,
    /// The last fetch an unknown `kid` triggered (the rate-limited kind).
    for_unknown_kid: Option<Instant>,
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl KeySource {
    /// A source with a fixed set (from a file).
    pub fn fixed(issuer: &str, keys: Arc<KeySet>) -> KeySource {
        KeySource {
            issuer: issuer.to_string(),
            current: ArcSwapOption::from(Some(keys)),
            remote: None,
            fetches: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            last_good: AtomicI64::new(now_unix()),
        }
    }

    /// A source fetched from `remote`; empty until the first good fetch.
    pub fn remote(issuer: &str, remote: Remote) -> KeySource {
        KeySource::discovered(issuer, remote, None)
    }

    /// A source fetched from `remote`, or (without a URL there) from the `jwks_uri` of the
    /// issuer's metadata, read afresh on every fetch so a moved key set is followed.
    pub fn discovered(
        issuer: &str,
        remote: Remote,
        discovery: Option<Arc<Discovery>>,
    ) -> KeySource {
        let client = crate::https::pinned_https_client(&remote.tls, remote.timeout);
        KeySource {
            issuer: issuer.to_string(),
            current: ArcSwapOption::empty(),
            remote: Some(RemoteState {
                cfg: remote,
                discovery,
                client,
                fetching: tokio::sync::Mutex::new(Fetched::default()),
            }),
            fetches: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            last_good: AtomicI64::new(0),
        }
    }

    pub fn is_ready(&self) -> bool {
        self.current.load().is_some()
    }

    pub fn key_count(&self) -> usize {
        self.current.load().as_ref().map_or(0, |k| k.len())
    }

    /// The key for `kid` and `alg` in the current set ([`KeySet::select`]); without a set,
    /// every `kid` is unknown.
    pub fn select(&self, kid: &str, alg: Option<Alg>) -> Result<Arc<VerifyingKey>, KeyChoice> {
        match self.current.load().as_ref() {
            Some(s) => s.select(kid, alg).cloned(),
            None => Err(KeyChoice::UnknownKid),
        }
    }

    /// Fetches once now (single flight), unless a fetch happened less than `min_gap` ago.
    /// Returns whether a good set is in place afterwards.
    pub async fn refresh(&self, min_gap: Duration) -> bool {
        let Some(r) = &self.remote else {
            return self.is_ready();
        };
        let mut f = r.fetching.lock().await;
        if f.last.is_some_and(|t| t.elapsed() < min_gap) {
            return self.is_ready();
        }
        f.last = Some(Instant::now());
        self.fetch_and_store(r).await
    }

    /// On an unknown `kid`: one single-flight refetch, unless another unknown `kid` triggered
    /// one less than `min_refetch_interval` ago (a flood of made-up kids costs one fetch per
    /// interval) or a fetch ended while this call waited for its turn.
    pub async fn refetch_for_unknown_kid(&self) -> bool {
        let Some(r) = &self.remote else {
            return false;
        };
        let seen = self.fetches.load(Ordering::Relaxed);
        let mut f = r.fetching.lock().await;
        if self.fetches.load(Ordering::Relaxed) != seen
            || f.for_unknown_kid
                .is_some_and(|t| t.elapsed() < r.cfg.min_refetch)
        {
            return self.is_ready();
        }
        let now = Instant::now();
        f.last = Some(now);
        f.for_unknown_kid = Some(now);
        self.fetch_and_store(r).await
    }

    /// One fetch; called with `fetching` held. A good set replaces the current one.
    async fn fetch_and_store(&self, r: &RemoteState) -> bool {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        match self.fetch(r).await {
            Ok(set) => {
                if !set.skipped.is_empty() {
                    tracing::warn!(issuer = %self.issuer, skipped = set.skipped.len(), "JWKS keys skipped");
                }
                for (kid, alg) in set.ambiguous() {
                    tracing::warn!(issuer = %self.issuer, kid = %portcullis_base::text::bounded(kid), alg = alg.name(), "JWKS kid names two keys of one algorithm; its signatures are refused");
                }
                self.current.store(Some(Arc::new(set)));
                self.last_good.store(now_unix(), Ordering::Relaxed);
            }
            Err(why) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(issuer = %self.issuer, failure = why, "JWKS fetch failed; keeping the last good set");
            }
        }
        self.is_ready()
    }

    async fn fetch(&self, r: &RemoteState) -> Result<KeySet, &'static str> {
        let uri = match (&r.cfg.uri, &r.discovery) {
            (Some(u), _) => u.clone(),
            (None, Some(d)) => d
                .metadata()
                .await
                .ok_or("no_metadata")?
                .jwks_uri
                .clone()
                .ok_or("metadata_without_jwks_uri")?,
            (None, None) => return Err("no_url"),
        };
        let req = http::Request::get(uri)
            .header(
                http::header::ACCEPT,
                "application/jwk-set+json, application/json",
            )
            .body(Empty::new())
            .map_err(|_| "request")?;
        let resp = tokio::time::timeout(r.cfg.timeout, r.client.request(req))
            .await
            .map_err(|_| "timeout")?
            .map_err(|_| "connect")?;
        if resp.status() != http::StatusCode::OK {
            return Err("status");
        }
        let body = tokio::time::timeout(
            r.cfg.timeout,
            Limited::new(resp.into_body(), MAX_JWKS_BYTES).collect(),
        )
        .await
        .map_err(|_| "timeout")?
        .map_err(|_| "body")?
        .to_bytes();
        KeySet::from_json(&body).map_err(|_| "invalid_jwks")
    }

    /// Fetches now and then every refresh interval until `shutdown`.
    pub fn spawn_refresh(self: &Arc<Self>, shutdown: CancellationToken) {
        let Some(r) = &self.remote else { return };
        let me = Arc::clone(self);
        crate::https::spawn_refresh_loop(r.cfg.refresh, shutdown, move || {
            let me = Arc::clone(&me);
            async move { me.refresh(Duration::ZERO).await }
        });
    }
}
