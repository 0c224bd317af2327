//! What the per-request revocation checks of client certificates share — OCSP (`ocsp`) and the
//! CRLs named by the certificates themselves (`leafcrl`): the fail mode, the bounded fetch of a
//! signed document, and a cache of verified documents with one fetch in flight per key.
//!
//! rustls verifies the chain synchronously at the handshake, where no network call can be made,
//! so these checks run in the request pipeline's identity stage; the request waits for the
//! fetch. A verified document is cached until it goes stale; a failure is not cached (the next
//! request asks again), but requests that were waiting for the fetch that failed share its
//! failure rather than each asking in turn.

use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use http_body_util::{BodyExt, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;

/// The counters of one checker, written out as its metric families.
#[derive(Debug, Default)]
pub struct Counts {
    /// Requests for a signed document (an OCSP answer, a CRL).
    pub fetches: std::sync::atomic::AtomicU64,
    /// Requests that brought no verified document.
    pub failures: std::sync::atomic::AtomicU64,
    /// Certificates let through without one (`fail: open`).
    pub fail_open: std::sync::atomic::AtomicU64,
}

/// What to do when no verified answer can be had.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailMode {
    /// Refuse the certificate (the default).
    Closed,
    /// Let it through, and count it.
    Open,
}

impl std::fmt::Display for FailMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FailMode::Closed => "closed",
            FailMode::Open => "open",
        })
    }
}

/// One exchange with `client` (a [`crate::https::signed_document_client`]): the body of a 200
/// answer, read up to `max_bytes`, all within `timeout`; otherwise why not, naming `uri`.
pub async fn fetch_signed<B>(
    client: &Client<HttpsConnector<HttpConnector>, B>,
    req: http::Request<B>,
    timeout: Duration,
    max_bytes: usize,
) -> Result<Bytes, String>
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let uri = req.uri().clone();
    let exchange = async {
        let resp = client
            .request(req)
            .await
            .map_err(|_| format!("cannot reach {uri}"))?;
        if resp.status() != http::StatusCode::OK {
            return Err(format!("{uri} answered {}", resp.status().as_u16()));
        }
        let body = Limited::new(resp.into_body(), max_bytes)
            .collect()
            .await
            .map_err(|_| format!("the answer of {uri} is over {max_bytes} bytes, or cut off"))?;
        Ok(body.to_bytes())
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("{uri} did not answer within {timeout:?}"))?
}

/// Unix seconds `max_age` after `now`, or `until` if sooner (`None`: no earlier limit).
pub fn capped(now: i64, max_age: Duration, until: Option<i64>) -> i64 {
    let cap = now.saturating_add(i64::try_from(max_age.as_secs()).unwrap_or(i64::MAX));
    until.map_or(cap, |t| t.min(cap))
}

type Slot<E> = tokio::sync::Mutex<Option<(E, Instant)>>;

/// Verified values `V` by key `K`, each until a Unix second, at most `max_entries` of them; one
/// fetch per key in flight at a time, whose failure `E` the requests waiting for it share.
pub struct FlightCache<K, V, E> {
    max_entries: usize,
    cache: DashMap<K, (V, i64)>,
    /// One fetch per key at a time: requests that need the same value (an HTTP/2 connection may
    /// send a hundred at once) wait for the one in flight and take its outcome, rather than
    /// each asking. The slot holds the last failure and when it happened, for those that waited
    /// on it (failures are not cached beyond that).
    inflight: DashMap<K, Arc<Slot<E>>>,
}

impl<K, V, E> FlightCache<K, V, E>
where
    K: Eq + Hash + Clone,
    V: Clone,
    E: Clone,
{
    pub fn new(max_entries: usize) -> Self {
        FlightCache {
            max_entries: max_entries.max(1),
            cache: DashMap::new(),
            inflight: DashMap::new(),
        }
    }

    /// The value for `key` at `now` (Unix seconds): from the cache while current, else from
    /// `fetch` (a value and the Unix second until which it is used, or a failure), run by one
    /// request at a time per key.
    pub async fn get<F, Fut>(&self, key: K, now: i64, fetch: F) -> Result<V, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(V, i64), E>>,
    {
        if let Some(v) = self.cached(&key, now) {
            return Ok(v);
        }
        let started = Instant::now();
        let slot = Arc::clone(self.inflight.entry(key.clone()).or_default().value());
        let outcome = {
            let mut last = slot.lock().await;
            // Whoever held the slot while this request waited has fetched: take what it got.
            if let Some(v) = self.cached(&key, now) {
                Ok(v)
            } else if let Some((e, _)) = last.as_ref().filter(|(_, at)| *at >= started) {
                Err(e.clone())
            } else {
                match fetch().await {
                    Ok((v, until)) => {
                        self.remember(key.clone(), v.clone(), until, now);
                        *last = None;
                        Ok(v)
                    }
                    Err(e) => {
                        // Kept for the requests waiting now only.
                        *last = Some((e.clone(), Instant::now()));
                        Err(e)
                    }
                }
            }
        };
        // The slot goes when no other request holds it (the map's reference and ours).
        self.inflight
            .remove_if(&key, |_, s| Arc::strong_count(s) <= 2);
        outcome
    }

    fn cached(&self, key: &K, now: i64) -> Option<V> {
        let c = self.cache.get(key)?;
        (now < c.1).then(|| c.0.clone())
    }

    fn remember(&self, key: K, value: V, until: i64, now: i64) {
        if self.cache.len() >= self.max_entries {
            self.cache.retain(|_, c| now < c.1);
        }
        if self.cache.len() >= self.max_entries {
            // Still full of current values: drop one; it is fetched again when next needed.
            let victim = self.cache.iter().next().map(|e| e.key().clone());
            if let Some(v) = victim {
                self.cache.remove(&v);
            }
        }
        self.cache.insert(key, (value, until));
    }
}
