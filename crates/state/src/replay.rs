//! Replay detection: has this one-time value (a DPoP proof's `jti`) been seen in its window?
//!
//! Keys are SHA-256 hashes of the value, so a huge `jti` costs 32 bytes. The memory backend
//! keeps its entries in generations of at most `capacity / SLICES` entries each: new values go
//! into the newest, a value is looked up in all of them, and once the newest is full a new one
//! is opened. A generation is dropped whole as soon as every entry in it has expired, so
//! expired entries go without a sweep over live ones, and the store holds the live values plus
//! at most about one generation of expired ones: it sustains about `(1 - 1/SLICES) × capacity /
//! window` new values a second (with 1M and a 65 s DPoP window, ~14,000 proofs/s). It never
//! forgets a value still inside its window: when the live values fill `capacity` the check
//! fails closed (the request is refused with 503).
//!
//! The check is asynchronous because a fleet keeps its replay cache in Redis
//! ([`crate::redis`]); the memory backend answers at once.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use dashmap::DashMap;

use crate::idempotency::StoreFuture;

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

    /// Entries held and capacity, for a store bounded in this process (`None`: not bounded
    /// here, e.g. on Redis).
    fn fill(&self) -> Option<(usize, usize)> {
        None
    }
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

/// How many generations `capacity` is split into: the most expired entries a store keeps is
/// about one generation's worth, and a check looks in up to `SLICES + 1` generations.
const SLICES: usize = 16;

/// The single-instance backend.
pub struct MemoryReplayStore {
    /// Oldest first; never empty; the last takes new entries.
    generations: RwLock<VecDeque<Arc<Generation>>>,
    capacity: usize,
    /// Entries a generation takes before a new one is opened.
    slice: usize,
}

impl MemoryReplayStore {
    pub fn new(capacity: usize) -> MemoryReplayStore {
        let capacity = capacity.max(1);
        MemoryReplayStore {
            generations: RwLock::new(VecDeque::from([Generation::new()])),
            capacity,
            slice: (capacity / SLICES).max(1),
        }
    }

    /// Entries held (expired ones count until their generation goes).
    pub fn len(&self) -> usize {
        held(&self.read())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn read(&self) -> RwLockReadGuard<'_, VecDeque<Arc<Generation>>> {
        // A poisoned lock only means a panic elsewhere; the generations are still consistent.
        self.generations.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether [`MemoryReplayStore::maintain`] has work: the oldest generation has expired
    /// whole, or the newest is full.
    fn due(&self, g: &VecDeque<Arc<Generation>>, now: i64) -> bool {
        let oldest_expired = g.len() > 1 && g[0].last_expiry.load(Ordering::Relaxed) < now;
        let newest_full = g
            .back()
            .is_some_and(|n| n.count.load(Ordering::Relaxed) >= self.slice);
        oldest_expired || newest_full
    }

    /// Drops the generations, oldest first, in which every entry has expired at `now`, and opens
    /// a new generation when the newest is full.
    fn maintain(&self, now: i64) {
        let dropped: Vec<Arc<Generation>> = {
            let mut g = self.generations.write().unwrap_or_else(|p| p.into_inner());
            let mut dropped = Vec::new();
            while g
                .front()
                .is_some_and(|f| f.last_expiry.load(Ordering::Relaxed) < now)
            {
                dropped.extend(g.pop_front());
            }
            // None left (all expired), or the newest is full: open a new one.
            if g.back()
                .is_none_or(|n| n.count.load(Ordering::Relaxed) >= self.slice)
            {
                g.push_back(Generation::new());
            }
            dropped
        };
        // Freed outside the lock.
        drop(dropped);
    }
}

/// Entries held by all generations.
fn held(g: &VecDeque<Arc<Generation>>) -> usize {
    g.iter().map(|x| x.count.load(Ordering::Relaxed)).sum()
}

impl ReplayStore for MemoryReplayStore {
    fn fill(&self) -> Option<(usize, usize)> {
        Some((self.len(), self.capacity))
    }

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
            self.due(&g, now) || held(&g) >= self.capacity
        };
        if due {
            self.maintain(now);
        }
        let g = self.read();
        // Never empty; fail closed all the same.
        let Some(current) = g.back() else {
            return Err(ReplayError::Unavailable);
        };
        if g.range(..g.len() - 1).any(|x| x.holds(&key, now)) {
            return Ok(false);
        }
        // One entry-API call: the check and the insert are atomic per key (and maintenance
        // waits for the read lock held here, so no check straddles a change of generations).
        match current.seen.entry(key) {
            dashmap::Entry::Occupied(mut e) => {
                if *e.get() > now {
                    return Ok(false);
                }
                e.insert(expires_at);
            }
            dashmap::Entry::Vacant(v) => {
                if held(&g) >= self.capacity {
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

    /// The `i`th value of second `t`.
    fn key(t: i64, i: u32) -> [u8; 32] {
        let mut k = [0u8; 32];
        k[..8].copy_from_slice(&t.to_be_bytes());
        k[8..12].copy_from_slice(&i.to_be_bytes());
        k
    }

    #[test]
    fn expired_generations_go_without_ever_forgetting_a_live_value() {
        let s = MemoryReplayStore::new(16_000);
        // 60 s windows, 100 values a second for 10 minutes: memory follows the window (the
        // whole history, 60,000, would not fit).
        let mut max_len = 0;
        for t in 0..600i64 {
            for i in 0..100u32 {
                assert_eq!(s.check(key(t, i), t + 60, t), Ok(true));
                // The value from 59 s ago is still refused.
                let old = key((t - 59).max(0), i);
                assert_eq!(s.check(old, t + 60, t), Ok(false), "t={t} i={i}");
            }
            max_len = max_len.max(s.len());
        }
        // The window's worth (60 s × 100/s) and at most one generation (16,000 / 16) more.
        assert!(max_len <= 61 * 100 + 16_000 / SLICES, "{max_len}");
        assert!(s.len() >= 60 * 100, "{}", s.len());
    }

    #[test]
    fn live_values_can_fill_most_of_the_capacity() {
        // 130 values a second with a 60 s window: 7,800 live of 10,000. Two generations of a
        // window each (the store before) needed 15,600 and failed closed here.
        let s = MemoryReplayStore::new(10_000);
        let mut max_len = 0;
        for t in 0..400i64 {
            for i in 0..130u32 {
                assert_eq!(s.check(key(t, i), t + 60, t), Ok(true), "t={t} i={i}");
            }
            max_len = max_len.max(s.len());
        }
        assert!(max_len <= 61 * 130 + 10_000 / SLICES, "{max_len}");
        assert!(s.read().len() <= SLICES + 1);
    }

    #[tokio::test]
    async fn the_trait_answers_as_the_check() {
        let s: Box<dyn ReplayStore> = Box::new(MemoryReplayStore::new(10));
        assert_eq!(s.first_use([1; 32], 100, 0).await, Ok(true));
        assert_eq!(s.first_use([1; 32], 100, 1).await, Ok(false));
    }
}
