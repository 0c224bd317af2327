//! Replay detection: has this one-time value (a DPoP proof's `jti`) been seen in its window?
//!
//! Keys are SHA-256 hashes of the value, so a huge `jti` costs 32 bytes. The memory backend
//! keeps two generations of entries: new values go into the current one, and a value is looked
//! up in both. When every entry of the previous generation has expired, that generation is
//! dropped whole and the current one takes its place, so expired entries go without a sweep
//! over live ones and memory follows the traffic of the last one or two windows — never a
//! value still inside its window. Memory is also bounded: when the two generations hold
//! `capacity` entries and none can be dropped, the check fails closed (the request is refused
//! with 503) rather than forgetting a value that might be replayed.
//!
//! The check is asynchronous because a fleet keeps its replay cache in Redis
//! ([`crate::state::redis`]); the memory backend answers at once.

use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use dashmap::DashMap;

use crate::state::idempotency::StoreFuture;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplayError {
    /// Full of live entries: refuse rather than forget.
    Full,
    /// The shared store cannot answer (unreachable, or it lost its data within the replay
    /// window): refuse rather than guess.
    Unavailable,
}

pub trait ReplayStore: Send + Sync {
    /// Records `key` as used until `expires_at`; returns `false` if it was already used and is
    /// still within its window.
    fn first_use(
        &self,
        key: [u8; 32],
        expires_at: i64,
        now: i64,
    ) -> StoreFuture<'static, Result<bool, ReplayError>>;
}

/// One generation: its entries (key → expiry), how many, and the latest expiry among them.
#[derive(Default)]
struct Generation {
    seen: DashMap<[u8; 32], i64>,
    count: AtomicUsize,
    last_expiry: AtomicI64,
}

impl Generation {
    fn new() -> Arc<Generation> {
        Arc::new(Generation {
            last_expiry: AtomicI64::new(i64::MIN),
            ..Generation::default()
        })
    }

    /// Whether `key` is recorded here and still inside its window at `now`.
    fn holds(&self, key: &[u8; 32], now: i64) -> bool {
        self.seen.get(key).is_some_and(|e| *e > now)
    }
}

/// The single-instance backend.
pub struct MemoryReplayStore {
    /// (previous, current).
    generations: RwLock<(Arc<Generation>, Arc<Generation>)>,
    capacity: usize,
}

impl MemoryReplayStore {
    pub fn new(capacity: usize) -> MemoryReplayStore {
        MemoryReplayStore {
            generations: RwLock::new((Generation::new(), Generation::new())),
            capacity: capacity.max(1),
        }
    }

    /// Entries held (both generations; expired ones count until their generation goes).
    pub fn len(&self) -> usize {
        let g = self.read();
        g.0.count.load(Ordering::Relaxed) + g.1.count.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, (Arc<Generation>, Arc<Generation>)> {
        // A poisoned lock only means a panic elsewhere; the generations are still consistent.
        self.generations.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops the previous generation when every entry in it has expired at `now`, and makes
    /// the current one previous. Returns whether it did.
    fn rotate(&self, now: i64) -> bool {
        let dropped = {
            let mut g = self.generations.write().unwrap_or_else(|p| p.into_inner());
            if g.0.last_expiry.load(Ordering::Relaxed) >= now
                || g.1.count.load(Ordering::Relaxed) == 0
            {
                return false;
            }
            let current = std::mem::replace(&mut g.1, Generation::new());
            std::mem::replace(&mut g.0, current)
        };
        // Freed outside the lock.
        drop(dropped);
        true
    }
}

impl ReplayStore for MemoryReplayStore {
    fn first_use(
        &self,
        key: [u8; 32],
        expires_at: i64,
        now: i64,
    ) -> StoreFuture<'static, Result<bool, ReplayError>> {
        let r = self.check(key, expires_at, now);
        Box::pin(async move { r })
    }
}

impl MemoryReplayStore {
    /// [`ReplayStore::first_use`], answered at once.
    pub fn check(&self, key: [u8; 32], expires_at: i64, now: i64) -> Result<bool, ReplayError> {
        let due = {
            let g = self.read();
            g.0.last_expiry.load(Ordering::Relaxed) < now && g.1.count.load(Ordering::Relaxed) > 0
        };
        if due || self.len() >= self.capacity {
            self.rotate(now);
        }
        let g = self.read();
        let (previous, current) = (&g.0, &g.1);
        if previous.holds(&key, now) {
            return Ok(false);
        }
        // One entry-API call: the check and the insert are atomic per key (and rotation waits
        // for the read lock held here, so no check straddles a rotation).
        match current.seen.entry(key) {
            dashmap::Entry::Occupied(mut e) => {
                if *e.get() > now {
                    return Ok(false);
                }
                e.insert(expires_at);
            }
            dashmap::Entry::Vacant(v) => {
                let held =
                    previous.count.load(Ordering::Relaxed) + current.count.load(Ordering::Relaxed);
                if held >= self.capacity {
                    return Err(ReplayError::Full);
                }
                v.insert(expires_at);
                current.count.fetch_add(1, Ordering::Relaxed);
            }
        }
        current.last_expiry.fetch_max(expires_at, Ordering::Relaxed);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_is_fresh_once_within_its_window() {
        let s = MemoryReplayStore::new(10);
        assert_eq!(s.check([1; 32], 100, 0), Ok(true));
        assert_eq!(s.check([1; 32], 100, 50), Ok(false));
        assert_eq!(s.check([2; 32], 100, 50), Ok(true));
        // After the window the value may be used again (a proof that old is refused by iat).
        assert_eq!(s.check([1; 32], 300, 150), Ok(true));
    }

    #[test]
    fn a_full_store_fails_closed_until_a_generation_has_expired() {
        let s = MemoryReplayStore::new(2);
        assert_eq!(s.check([1; 32], 10, 0), Ok(true));
        assert_eq!(s.check([2; 32], 100, 0), Ok(true));
        assert_eq!(s.check([3; 32], 100, 5), Err(ReplayError::Full));
        // Once [1] has expired its generation goes and makes room.
        assert_eq!(s.check([3; 32], 100, 20), Ok(true));
        // [2] and [3] are live: nothing may be forgotten.
        assert_eq!(s.check([4; 32], 150, 99), Err(ReplayError::Full));
        assert_eq!(s.check([2; 32], 150, 99), Ok(false));
        // Once they have expired there is room again, and [2] may be used again.
        assert_eq!(s.check([4; 32], 200, 101), Ok(true));
        assert_eq!(s.check([2; 32], 200, 101), Ok(true));
    }

    #[test]
    fn expired_generations_go_without_ever_forgetting_a_live_value() {
        let s = MemoryReplayStore::new(1_000_000);
        // 60 s windows, 100 values a second for 10 minutes: memory follows the window.
        let mut max_len = 0;
        for t in 0..600i64 {
            for i in 0..100u32 {
                let mut k = [0u8; 32];
                k[..8].copy_from_slice(&t.to_be_bytes());
                k[8..12].copy_from_slice(&i.to_be_bytes());
                assert_eq!(s.check(k, t + 60, t), Ok(true));
                // The value from 59 s ago is still refused.
                let mut old = [0u8; 32];
                old[..8].copy_from_slice(&(t - 59).max(0).to_be_bytes());
                old[8..12].copy_from_slice(&i.to_be_bytes());
                assert_eq!(s.check(old, t + 60, t), Ok(false), "t={t} i={i}");
            }
            max_len = max_len.max(s.len());
        }
        // At most about two windows' worth (2 × 60 s × 100/s), never the whole history.
        assert!(max_len <= 2 * 61 * 100, "{max_len}");
        assert!(s.len() >= 60 * 100, "{}", s.len());
    }

    #[tokio::test]
    async fn the_trait_answers_as_the_check() {
        let s: Box<dyn ReplayStore> = Box::new(MemoryReplayStore::new(10));
        assert_eq!(s.first_use([1; 32], 100, 0).await, Ok(true));
        assert_eq!(s.first_use([1; 32], 100, 1).await, Ok(false));
    }
}
