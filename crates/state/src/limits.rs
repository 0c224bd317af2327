//! The rate limiters of one config: the per-peer and per-class limiters of this instance
//! ([`crate::ratelimit`]) and, with `state.backend: redis`, the fleet-wide class quotas
//! ([`crate::redis::FleetLimiter`]).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::ratelimit::{Limiter, RateLimitConfig};

/// The limiters of one config.
pub struct RateLimits {
    pub peer: Option<Limiter<IpAddr>>,
    /// Keyed by the authenticated client: `x5t:<thumbprint>`, `cid:<client_id>` or `ip:<addr>`.
    pub classes: BTreeMap<String, Limiter<String>>,
    /// Fleet-wide class quotas on Redis (`state.backend: redis`).
    pub fleet: Option<crate::redis::FleetLimiter>,
    maintenance_interval: Duration,
}

impl RateLimits {
    pub fn new(c: &RateLimitConfig) -> RateLimits {
        RateLimits::with_fleet(c, None)
    }

    /// As [`RateLimits::new`], with the class quotas shared by a fleet through `fleet`.
    pub fn with_fleet(
        c: &RateLimitConfig,
        fleet: Option<crate::redis::FleetLimiter>,
    ) -> RateLimits {
        RateLimits {
            fleet: fleet.filter(|_| !c.classes.is_empty()),
            peer: c.peer.clone().map(Limiter::new),
            classes: c
                .classes
                .iter()
                .map(|(n, s)| (n.clone(), Limiter::new(s.clone())))
                .collect(),
            maintenance_interval: c.maintenance_interval.unwrap_or(Duration::from_secs(60)),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.peer.is_none() && self.classes.is_empty()
    }

    /// Keys held across all limiters.
    pub fn keys(&self) -> usize {
        self.peer.as_ref().map_or(0, |l| l.len())
            + self.classes.values().map(|l| l.len()).sum::<usize>()
    }

    pub fn retain_recent(&self) {
        if let Some(p) = &self.peer {
            p.retain_recent();
        }
        for l in self.classes.values() {
            l.retain_recent();
        }
        if let Some(f) = &self.fleet {
            f.retain_recent();
        }
    }

    /// One maintenance task for all limiters of this config; it ends when the config is
    /// replaced (the limiters are dropped) or `stop` is cancelled. Needs a tokio runtime;
    /// without one, nothing is spawned.
    pub fn spawn_maintenance(this: &Arc<RateLimits>, stop: tokio_util::sync::CancellationToken) {
        if this.is_empty() || tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let weak: Weak<RateLimits> = Arc::downgrade(this);
        let every = this.maintenance_interval;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
                let Some(l) = weak.upgrade() else { return };
                l.retain_recent();
            }
        });
    }
}
