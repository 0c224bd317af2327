//! The idempotency-key store: a key, the fingerprint of the request that reserved it, and the
//! stored response, in memory or (see `redis`) in Redis.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use serde::{Deserialize, Serialize};

/// `idempotency:` as written.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileIdempotency {
    /// How long a key and its response are kept (default 24h).
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl: Option<portcullis_base::duration::ConfigDuration>,
    /// Keys held at most (default 100000); a full store refuses with 503.
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capacity: Option<usize>,
    /// Release the key when the upstream fails (no answer or 5xx) so the client may retry
    /// (default true). Otherwise a 5xx is stored and replayed, and a request that got no answer
    /// keeps its key reserved until the TTL ends (the upstream may have acted; retries get 409).
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release_on_upstream_error: Option<bool>,
    /// The largest response body stored for replay (default 1 MiB). A larger response is
    /// sent but not stored, and its key stays reserved until the TTL ends (retries get 409).
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_response_bytes: Option<usize>,
}

/// The validated `idempotency:` section.
#[derive(Clone, Debug)]
pub struct IdempotencyConfig {
    pub ttl: Duration,
    pub capacity: usize,
    pub release_on_upstream_error: bool,
    pub max_response_bytes: usize,
}

impl Default for IdempotencyConfig {
    fn default() -> Self {
        IdempotencyConfig {
            ttl: Duration::from_secs(24 * 3600),
            capacity: 100_000,
            release_on_upstream_error: true,
            max_response_bytes: 1024 * 1024,
        }
    }
}

pub fn validate(
    p: &mut portcullis_base::problems::Problems<'_>,
    f: &FileIdempotency,
) -> IdempotencyConfig {
    let d = IdempotencyConfig::default();
    let ttl = f.ttl.map_or(d.ttl, |t| t.0);
    if ttl.as_secs() == 0 {
        p.push("idempotency.ttl", "must be at least 1s");
    }
    let capacity = f.capacity.unwrap_or(d.capacity);
    if capacity == 0 {
        p.push("idempotency.capacity", "must be at least 1");
    }
    let max_response_bytes = f.max_response_bytes.unwrap_or(d.max_response_bytes);
    if max_response_bytes > 16 * 1024 * 1024 {
        p.push(
            "idempotency.max_response_bytes",
            "must be at most 16777216 (16 MiB)",
        );
    }
    IdempotencyConfig {
        ttl,
        capacity,
        release_on_upstream_error: f.release_on_upstream_error.unwrap_or(true),
        max_response_bytes,
    }
}

/// A completed response, as replayed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredResponse {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Bytes,
}

/// What the store says about a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Begin {
    /// First use: now reserved as in flight.
    Reserved,
    /// Another request with this key is in flight.
    InFlight,
    /// The key was used for another fingerprint.
    Mismatch,
    /// Completed: replay this.
    Completed(Arc<StoredResponse>),
}

/// The store cannot answer (full, or unreachable): fail closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreUnavailable;

pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Idempotency keys: `key` is already scoped to the client (a hash); `fingerprint` is the
/// hash of method, path and body.
pub trait IdempotencyStore: Send + Sync {
    fn begin(
        &self,
        key: [u8; 32],
        fingerprint: [u8; 32],
        now: i64,
        ttl: i64,
    ) -> StoreFuture<'static, Result<Begin, StoreUnavailable>>;
    /// Stores the response of a reserved key.
    fn complete(
        &self,
        key: [u8; 32],
        fingerprint: [u8; 32],
        response: StoredResponse,
        now: i64,
        ttl: i64,
    ) -> StoreFuture<'static, Result<(), StoreUnavailable>>;
    /// Forgets a reserved key (the request failed; the client may retry).
    fn release(&self, key: [u8; 32]) -> StoreFuture<'static, Result<(), StoreUnavailable>>;

    /// Entries held and capacity, for a store bounded in this process (`None`: not bounded
    /// here, e.g. on Redis).
    fn fill(&self) -> Option<(usize, usize)> {
        None
    }
}

#[derive(Clone, Debug)]
enum State {
    InFlight,
    Done(Arc<StoredResponse>),
}

#[derive(Clone, Debug)]
struct Entry {
    fingerprint: [u8; 32],
    state: State,
    expires: i64,
}

/// The single-instance backend: bounded; a full store sweeps, then refuses.
pub struct MemoryIdempotencyStore {
    map: DashMap<[u8; 32], Entry>,
    capacity: usize,
}

impl MemoryIdempotencyStore {
    pub fn new(capacity: usize) -> MemoryIdempotencyStore {
        MemoryIdempotencyStore {
            map: DashMap::new(),
            capacity: capacity.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn begin_now(
        &self,
        key: [u8; 32],
        fp: [u8; 32],
        now: i64,
        ttl: i64,
    ) -> Result<Begin, StoreUnavailable> {
        if self.map.len() >= self.capacity {
            self.map.retain(|_, e| e.expires > now);
            if self.map.len() >= self.capacity {
                return Err(StoreUnavailable);
            }
        }
        let fresh = Entry {
            fingerprint: fp,
            state: State::InFlight,
            expires: now + ttl,
        };
        match self.map.entry(key) {
            dashmap::Entry::Vacant(v) => {
                v.insert(fresh);
                Ok(Begin::Reserved)
            }
            dashmap::Entry::Occupied(mut o) => {
                let e = o.get();
                if e.expires <= now {
                    o.insert(fresh);
                    return Ok(Begin::Reserved);
                }
                if e.fingerprint != fp {
                    return Ok(Begin::Mismatch);
                }
                Ok(match &e.state {
                    State::InFlight => Begin::InFlight,
                    State::Done(r) => Begin::Completed(Arc::clone(r)),
                })
            }
        }
    }
}

impl IdempotencyStore for MemoryIdempotencyStore {
    fn fill(&self) -> Option<(usize, usize)> {
        Some((self.len(), self.capacity))
    }

    fn begin(
        &self,
        key: [u8; 32],
        fingerprint: [u8; 32],
        now: i64,
        ttl: i64,
    ) -> StoreFuture<'static, Result<Begin, StoreUnavailable>> {
        let r = self.begin_now(key, fingerprint, now, ttl);
        Box::pin(async move { r })
    }

    fn complete(
        &self,
        key: [u8; 32],
        fingerprint: [u8; 32],
        response: StoredResponse,
        now: i64,
        ttl: i64,
    ) -> StoreFuture<'static, Result<(), StoreUnavailable>> {
        self.map.insert(
            key,
            Entry {
                fingerprint,
                state: State::Done(Arc::new(response)),
                expires: now + ttl,
            },
        );
        Box::pin(async { Ok(()) })
    }

    fn release(&self, key: [u8; 32]) -> StoreFuture<'static, Result<(), StoreUnavailable>> {
        self.map
            .remove_if(&key, |_, e| matches!(e.state, State::InFlight));
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp() -> StoredResponse {
        StoredResponse {
            status: 201,
            headers: vec![("content-type".into(), b"application/json".to_vec())],
            body: Bytes::from_static(b"{}"),
        }
    }

    #[tokio::test]
    async fn reserve_conflict_mismatch_replay_release_expiry() {
        let s = MemoryIdempotencyStore::new(10);
        assert_eq!(s.begin([1; 32], [9; 32], 0, 100).await, Ok(Begin::Reserved));
        assert_eq!(s.begin([1; 32], [9; 32], 1, 100).await, Ok(Begin::InFlight));
        assert_eq!(s.begin([1; 32], [8; 32], 1, 100).await, Ok(Begin::Mismatch));
        s.complete([1; 32], [9; 32], resp(), 2, 100).await.unwrap();
        assert_eq!(
            s.begin([1; 32], [9; 32], 3, 100).await,
            Ok(Begin::Completed(Arc::new(resp())))
        );
        // After the window the key is new again.
        assert_eq!(
            s.begin([1; 32], [8; 32], 200, 100).await,
            Ok(Begin::Reserved)
        );
        s.release([1; 32]).await.unwrap();
        assert_eq!(
            s.begin([1; 32], [8; 32], 201, 100).await,
            Ok(Begin::Reserved)
        );
        // A completed key is not released.
        s.complete([1; 32], [8; 32], resp(), 202, 100)
            .await
            .unwrap();
        s.release([1; 32]).await.unwrap();
        assert!(matches!(
            s.begin([1; 32], [8; 32], 203, 100).await,
            Ok(Begin::Completed(_))
        ));
    }

    #[tokio::test]
    async fn a_full_store_fails_closed() {
        let s = MemoryIdempotencyStore::new(1);
        assert_eq!(s.begin([1; 32], [9; 32], 0, 100).await, Ok(Begin::Reserved));
        assert_eq!(
            s.begin([2; 32], [9; 32], 0, 100).await,
            Err(StoreUnavailable)
        );
        assert_eq!(
            s.begin([2; 32], [9; 32], 101, 100).await,
            Ok(Begin::Reserved)
        );
    }
}
