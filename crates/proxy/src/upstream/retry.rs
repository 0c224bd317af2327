//! Choosing an endpoint (power of two choices on outstanding requests) and the retry budget.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::endpoint::Endpoint;

thread_local! {
    static RNG: Cell<u64> = Cell::new({
        // Seeded per thread from the standard library's random hasher keys: the choice
        // needs spread, not secrecy.
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(0x9e37_79b9_7f4a_7c15);
        h.finish() | 1
    });
}

/// A number below `n` (xorshift64*; `n` > 0).
fn below(n: usize) -> usize {
    RNG.with(|r| {
        let mut x = r.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        r.set(x);
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
    })
}

/// Two distinct indices below `n` drawn at random (the same one twice when `n` is 1).
pub(crate) fn two_draws(n: usize) -> Option<(usize, usize)> {
    match n {
        0 => None,
        1 => Some((0, 0)),
        n => {
            let a = below(n);
            let mut b = below(n - 1);
            if b >= a {
                b += 1;
            }
            Some((a, b))
        }
    }
}

/// Power of two choices: of two candidates drawn at random, the one with fewer of this
/// worker's tries in flight; with one candidate, that one.
pub(crate) fn two_choices(candidates: &[&Arc<Endpoint>]) -> Option<usize> {
    let (a, b) = two_draws(candidates.len())?;
    let (oa, ob) = (
        candidates[a].state.outstanding_here(),
        candidates[b].state.outstanding_here(),
    );
    Some(if ob < oa { b } else { a })
}

const WINDOW: Duration = Duration::from_secs(10);

/// Retries as a share of requests over a fixed 10 s window: at most `percent` % of the
/// window's requests plus `min` (so a quiet upstream can still retry at all). A failing
/// upstream then sees at most that much extra load from the proxy, however many tries a
/// request may have.
#[derive(Debug)]
pub(crate) struct Budget {
    started: Instant,
    window: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
    pub(crate) spent_total: AtomicU64,
    pub(crate) refused_total: AtomicU64,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            started: Instant::now(),
            window: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            spent_total: AtomicU64::new(0),
            refused_total: AtomicU64::new(0),
        }
    }
}

impl Budget {
    /// Starts a new window when the current one is over (approximately: a request counted
    /// at the turn may land in either).
    fn roll(&self) {
        let now = (self.started.elapsed().as_millis() / WINDOW.as_millis()) as u64;
        let seen = self.window.load(Ordering::Relaxed);
        if now != seen
            && self
                .window
                .compare_exchange(seen, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.requests.store(0, Ordering::Relaxed);
            self.retries.store(0, Ordering::Relaxed);
        }
    }

    /// Counts a request (its first try).
    pub(crate) fn request(&self) {
        self.roll();
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one retry from the budget, if there is one left.
    pub(crate) fn try_retry(&self, percent: u32, min: u32) -> bool {
        self.roll();
        let allowed =
            self.requests.load(Ordering::Relaxed) * u64::from(percent) / 100 + u64::from(min);
        let taken = self.retries.fetch_add(1, Ordering::Relaxed);
        if taken < allowed {
            self.spent_total.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            self.retries.fetch_sub(1, Ordering::Relaxed);
            self.refused_total.fetch_add(1, Ordering::Relaxed);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_allows_its_share_and_the_floor() {
        let b = Budget::default();
        for _ in 0..50 {
            b.request();
        }
        let granted = (0..100).filter(|_| b.try_retry(20, 2)).count();
        assert_eq!(granted, 12, "20 % of 50, plus 2");
    }

    #[test]
    fn draws_cover_the_range() {
        let mut seen = [false; 3];
        for _ in 0..200 {
            seen[below(3)] = true;
        }
        assert_eq!(seen, [true; 3]);
    }
}
