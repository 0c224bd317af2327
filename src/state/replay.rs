//! Replay detection: has this one-time value (a DPoP proof's `jti`) been seen in its window?
//!
//! Keys are SHA-256 hashes of the value, so a huge `jti` costs 32 bytes. Memory is bounded:
//! when the store is full, expired entries are swept; if it is still full, the check fails
//! closed (the request is refused with 503) rather than forgetting a value that might be
//! replayed.
//!
//! The check is asynchronous because a fleet keeps its replay cache in Redis
//! ([`crate::state::redis`]); the memory backend answers at once.

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

/// The single-instance backend.
pub struct MemoryReplayStore {
    seen: DashMap<[u8; 32], i64>,
    capacity: usize,
}

impl MemoryReplayStore {
    pub fn new(capacity: usize) -> MemoryReplayStore {
        MemoryReplayStore {
            seen: DashMap::new(),
            capacity: capacity.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Drops expired entries.
    pub fn sweep(&self, now: i64) {
        self.seen.retain(|_, exp| *exp > now);
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
        if self.seen.len() >= self.capacity {
            self.sweep(now);
            if self.seen.len() >= self.capacity {
                return Err(ReplayError::Full);
            }
        }
        // One entry-API call: the check and the insert are atomic per key.
        match self.seen.entry(key) {
            dashmap::Entry::Occupied(mut e) => {
                if *e.get() > now {
                    Ok(false)
                } else {
                    e.insert(expires_at);
                    Ok(true)
                }
            }
            dashmap::Entry::Vacant(v) => {
                v.insert(expires_at);
                Ok(true)
            }
        }
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
    fn a_full_store_sweeps_then_fails_closed() {
        let s = MemoryReplayStore::new(2);
        assert_eq!(s.check([1; 32], 10, 0), Ok(true));
        assert_eq!(s.check([2; 32], 100, 0), Ok(true));
        assert_eq!(s.check([3; 32], 100, 5), Err(ReplayError::Full));
        // Once [1] expires the sweep makes room.
        assert_eq!(s.check([3; 32], 100, 20), Ok(true));
        assert_eq!(s.len(), 2);
    }

    #[tokio::test]
    async fn the_trait_answers_as_the_check() {
        let s: Box<dyn ReplayStore> = Box::new(MemoryReplayStore::new(10));
        assert_eq!(s.first_use([1; 32], 100, 0).await, Ok(true));
        assert_eq!(s.first_use([1; 32], 100, 1).await, Ok(false));
    }
}
