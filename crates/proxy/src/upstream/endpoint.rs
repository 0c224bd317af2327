//! One endpoint of an upstream: its connection pools and what the proxy knows of its health —
//! the active check's verdict, passive outlier ejection and the circuit breaker.
//!
//! The state lives apart from the pools ([`EndpointState`]) and is kept across reloads by the
//! [`super::Registry`], so a reload neither forgets that an endpoint is down nor loses count of
//! the requests in flight on it.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::uri::Authority;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::{CircuitBreaker, Upstream};
use portcullis_base::body::ProxyBody;

pub(crate) type Pool = Client<HttpsConnector<HttpConnector<Resolve>>, ProxyBody>;

/// How an endpoint's host name becomes addresses: the system resolver for a configured URL,
/// or the one address DNS gave for an endpoint of a `dns` set (whose requests still name the
/// service, for TLS and `Host`).
#[derive(Clone, Debug)]
pub(crate) struct Resolve(Option<SocketAddr>);

impl tower_service::Service<Name> for Resolve {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let fixed = self.0;
        Box::pin(async move {
            match fixed {
                Some(a) => Ok(vec![a].into_iter()),
                None => {
                    let addrs: Vec<SocketAddr> =
                        tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
                    Ok(addrs.into_iter())
                }
            }
        })
    }
}

/// How one try on an endpoint ended, as health and metrics count it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// An answer below 500.
    Answered,
    /// A 5xx answer: the endpoint is up but failing.
    Status5xx,
    /// No connection (refused, unreachable, connect timeout): the request never left.
    Connect,
    /// No answer within the try's time.
    Timeout,
    /// The exchange broke (reset, malformed answer).
    Protocol,
}

impl Outcome {
    pub(crate) const ALL: [Outcome; 5] = [
        Outcome::Answered,
        Outcome::Status5xx,
        Outcome::Connect,
        Outcome::Timeout,
        Outcome::Protocol,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Outcome::Answered => "answered",
            Outcome::Status5xx => "status_5xx",
            Outcome::Connect => "connect_failed",
            Outcome::Timeout => "timeout",
            Outcome::Protocol => "broken",
        }
    }

    /// What the breaker counts: the endpoint could not hold an exchange. A 5xx is an answer
    /// (outlier detection counts it).
    fn breaks(self) -> bool {
        matches!(
            self,
            Outcome::Connect | Outcome::Timeout | Outcome::Protocol
        )
    }

    /// What outlier detection counts.
    fn fails(self) -> bool {
        matches!(
            self,
            Outcome::Status5xx | Outcome::Connect | Outcome::Timeout
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Breaker {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { trials: u32 },
}

#[derive(Debug)]
struct Health {
    /// The active check's verdict (healthy until a check says otherwise).
    healthy: bool,
    checks_ok: u32,
    checks_failed: u32,
    /// Consecutive failures outlier detection counts.
    failures: u32,
    ejected_until: Option<Instant>,
    /// Ejections so far: each one lasts twice the last, up to the maximum.
    ejections: u32,
    breaker: Breaker,
}

impl Health {
    /// Nothing to remember: healthy, never ejected (or forgiven), breaker closed without a
    /// failure counted. A try then neither needs nor changes anything here.
    fn pristine(&self) -> bool {
        self.healthy
            && self.failures == 0
            && self.ejected_until.is_none()
            && self.breaker == Breaker::Closed { failures: 0 }
    }
}

/// How many workers keep their own count of outstanding tries (more wrap around and share).
const WORKER_SLOTS: usize = 16;

/// What is known of an endpoint, shared by every config generation that has it.
#[derive(Debug)]
pub(crate) struct EndpointState {
    /// Tries in flight, counted per data-plane worker. Each worker keeps its own pool of
    /// connections to the endpoint, and a pool grows to the peak of the worker's tries on it:
    /// balancing each worker's own tries across the set keeps every pool, and so the set's
    /// connections, as small as the load allows (balancing the total lets one worker's share
    /// of an endpoint swing while another's swings back).
    outstanding: [AtomicUsize; WORKER_SLOTS],
    /// [`Health::pristine`], kept by every change under the lock: while it holds, choosing,
    /// admitting and reporting an answered try take no lock (a set costs no more per request
    /// than a single endpoint). Read without the lock, it may lag a concurrent change by one
    /// try, which is the same as that try having started a moment earlier.
    pristine: AtomicBool,
    health: Mutex<Health>,
    attempts: [AtomicU64; 5],
    ejections_total: AtomicU64,
}

impl Default for EndpointState {
    fn default() -> Self {
        EndpointState {
            outstanding: Default::default(),
            pristine: AtomicBool::new(true),
            health: Mutex::new(Health {
                healthy: true,
                checks_ok: 0,
                checks_failed: 0,
                failures: 0,
                ejected_until: None,
                ejections: 0,
                breaker: Breaker::Closed { failures: 0 },
            }),
            attempts: Default::default(),
            ejections_total: AtomicU64::new(0),
        }
    }
}

/// Where an endpoint stands, for selection and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Standing {
    Available,
    /// The active health check says no.
    Unhealthy,
    Ejected,
    /// The breaker is open (or half-open with every trial slot taken).
    Open,
}

impl Standing {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Standing::Available => "available",
            Standing::Unhealthy => "unhealthy",
            Standing::Ejected => "ejected",
            Standing::Open => "breaker_open",
        }
    }
}

/// The health under the lock; on release it refreshes [`EndpointState::pristine`], so no
/// change can forget to.
struct Locked<'a> {
    guard: std::sync::MutexGuard<'a, Health>,
    pristine: &'a AtomicBool,
}

impl std::ops::Deref for Locked<'_> {
    type Target = Health;
    fn deref(&self) -> &Health {
        &self.guard
    }
}

impl std::ops::DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut Health {
        &mut self.guard
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        self.pristine
            .store(self.guard.pristine(), Ordering::Relaxed);
    }
}

impl EndpointState {
    fn lock(&self) -> Locked<'_> {
        // A poisoned lock only means a panic elsewhere mid-update; the counters stay usable.
        Locked {
            guard: self.health.lock().unwrap_or_else(|p| p.into_inner()),
            pristine: &self.pristine,
        }
    }

    /// Nothing is known against the endpoint (see [`Health::pristine`]); no lock taken.
    pub(crate) fn is_pristine(&self) -> bool {
        self.pristine.load(Ordering::Relaxed)
    }

    /// How long until the endpoint may take a try again as far as its ejection and breaker
    /// say (zero: now, or as soon as a half-open trial slot frees); `None` while the active
    /// check calls it unhealthy (only a later check can say when that ends).
    pub(crate) fn back_in(&self, now: Instant) -> Option<Duration> {
        let h = self.lock();
        if !h.healthy {
            return None;
        }
        let ejected = h
            .ejected_until
            .map_or(Duration::ZERO, |u| u.saturating_duration_since(now));
        let open = match h.breaker {
            Breaker::Open { until } => until.saturating_duration_since(now),
            Breaker::Closed { .. } | Breaker::HalfOpen { .. } => Duration::ZERO,
        };
        Some(ejected.max(open))
    }

    /// This worker's tries in flight on the endpoint: what two choices compares.
    pub(crate) fn outstanding_here(&self) -> usize {
        self.outstanding[worker_slot()].load(Ordering::Relaxed)
    }

    /// Every worker's tries in flight on the endpoint.
    pub(crate) fn outstanding(&self) -> usize {
        self.outstanding
            .iter()
            .map(|o| o.load(Ordering::Relaxed))
            .sum()
    }

    pub(crate) fn attempts(&self, o: Outcome) -> u64 {
        self.attempts[o as usize].load(Ordering::Relaxed)
    }

    pub(crate) fn ejections_total(&self) -> u64 {
        self.ejections_total.load(Ordering::Relaxed)
    }

    pub(crate) fn is_ejected(&self, now: Instant) -> bool {
        self.lock().ejected_until.is_some_and(|u| u > now)
    }

    /// Where the endpoint stands now, without taking anything.
    pub(crate) fn standing(&self, now: Instant, b: &CircuitBreaker) -> Standing {
        if self.is_pristine() {
            return Standing::Available;
        }
        let h = self.lock();
        if !h.healthy {
            return Standing::Unhealthy;
        }
        if h.ejected_until.is_some_and(|u| u > now) {
            return Standing::Ejected;
        }
        match h.breaker {
            Breaker::Open { until } if until > now => Standing::Open,
            Breaker::HalfOpen { trials } if trials >= b.half_open_requests => Standing::Open,
            _ => Standing::Available,
        }
    }

    /// Takes the endpoint for one try, if it may have one: an open breaker whose time is up
    /// lets trial requests through (half-open).
    pub(crate) fn admit(self: &Arc<Self>, now: Instant, b: &CircuitBreaker) -> Option<Ticket> {
        if self.is_pristine() {
            // A closed breaker: no trial, nothing to change.
            return Some(self.ticket(false));
        }
        let mut h = self.lock();
        if !h.healthy || h.ejected_until.is_some_and(|u| u > now) {
            return None;
        }
        let trial = match h.breaker {
            Breaker::Closed { .. } => false,
            Breaker::Open { until } if until > now => return None,
            Breaker::Open { .. } => {
                h.breaker = Breaker::HalfOpen { trials: 1 };
                true
            }
            Breaker::HalfOpen { trials } if trials >= b.half_open_requests => return None,
            Breaker::HalfOpen { trials } => {
                h.breaker = Breaker::HalfOpen { trials: trials + 1 };
                true
            }
        };
        drop(h);
        Some(self.ticket(trial))
    }

    fn ticket(self: &Arc<Self>, trial: bool) -> Ticket {
        let slot = worker_slot();
        self.outstanding[slot].fetch_add(1, Ordering::Relaxed);
        Ticket {
            state: Arc::clone(self),
            slot,
            trial,
            reported: false,
        }
    }

    /// An active check's result; `true` when the verdict changed.
    pub(crate) fn checked(&self, ok: bool, healthy_after: u32, unhealthy_after: u32) -> bool {
        let mut h = self.lock();
        if ok {
            h.checks_failed = 0;
            h.checks_ok = h.checks_ok.saturating_add(1);
            if !h.healthy && h.checks_ok >= healthy_after {
                h.healthy = true;
                return true;
            }
        } else {
            h.checks_ok = 0;
            h.checks_failed = h.checks_failed.saturating_add(1);
            if h.healthy && h.checks_failed >= unhealthy_after {
                h.healthy = false;
                return true;
            }
        }
        false
    }
}

/// `now + d`, or as late as can be said: a configured length is never a reason to panic.
fn later(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(86_400 * 365)))
        .unwrap_or(now)
}

/// One try on an endpoint: counted as outstanding until it is reported or dropped. A try
/// dropped unreported (the client left) frees a half-open trial slot without a verdict.
pub(crate) struct Ticket {
    state: Arc<EndpointState>,
    /// The worker count it is in (dropped elsewhere, it still leaves that one).
    slot: usize,
    trial: bool,
    reported: bool,
}

/// What a report asks of the upstream: whether this failure should eject the endpoint.
pub(crate) struct Verdict {
    pub(crate) eject_for: Option<Duration>,
}

impl Ticket {
    /// Records how the try ended; says whether outlier detection wants the endpoint ejected
    /// (the upstream decides, since only it knows how much of the set is out already).
    pub(crate) fn report(
        mut self,
        outcome: Outcome,
        now: Instant,
        b: &CircuitBreaker,
        o: &crate::config::OutlierDetection,
    ) -> Verdict {
        self.reported = true;
        self.state.attempts[outcome as usize].fetch_add(1, Ordering::Relaxed);
        // An answer from an endpoint nothing is known against changes nothing (a closed
        // breaker stays closed with no failure counted, outlier detection counts none).
        if !self.trial && !outcome.breaks() && !outcome.fails() && self.state.is_pristine() {
            return Verdict { eject_for: None };
        }
        let mut h = self.state.lock();
        if b.failure_threshold > 0 {
            h.breaker = match (h.breaker, outcome.breaks()) {
                (Breaker::HalfOpen { .. }, true) => Breaker::Open {
                    until: later(now, b.open_for),
                },
                (Breaker::HalfOpen { .. }, false) => Breaker::Closed { failures: 0 },
                (Breaker::Closed { failures }, true) if failures + 1 >= b.failure_threshold => {
                    Breaker::Open {
                        until: later(now, b.open_for),
                    }
                }
                (Breaker::Closed { failures }, true) => Breaker::Closed {
                    failures: failures + 1,
                },
                (Breaker::Closed { .. }, false) => Breaker::Closed { failures: 0 },
                // Opened meanwhile by another try: it stays open.
                (open @ Breaker::Open { .. }, _) => open,
            };
        } else if self.trial {
            h.breaker = Breaker::Closed { failures: 0 };
        }
        let mut eject_for = None;
        if outcome.fails() {
            h.failures = h.failures.saturating_add(1);
            if o.consecutive_failures > 0 && h.failures >= o.consecutive_failures {
                let factor = 1u32 << h.ejections.min(16);
                let grown = o.base_ejection.checked_mul(factor);
                eject_for = Some(grown.unwrap_or(o.max_ejection).min(o.max_ejection));
            }
        } else {
            h.failures = 0;
            // Back in service and answering: the next ejection need not be as long.
            if h.ejected_until.is_some_and(|u| now > u + o.base_ejection) {
                h.ejections = h.ejections.saturating_sub(1);
                h.ejected_until = None;
            }
        }
        Verdict { eject_for }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.state.outstanding[self.slot].fetch_sub(1, Ordering::Relaxed);
        if self.trial && !self.reported {
            let mut h = self.state.lock();
            if let Breaker::HalfOpen { trials } = h.breaker {
                h.breaker = Breaker::HalfOpen {
                    trials: trials.saturating_sub(1),
                };
            }
        }
    }
}

impl EndpointState {
    /// Ejects the endpoint (the upstream allowed it).
    pub(crate) fn eject(&self, now: Instant, length: Duration) {
        let mut h = self.lock();
        h.ejected_until = Some(later(now, length));
        h.ejections = h.ejections.saturating_add(1);
        h.failures = 0;
        self.ejections_total.fetch_add(1, Ordering::Relaxed);
    }

    /// Outlier detection wanted the endpoint out and the share was used up: it starts counting
    /// again rather than being ejected by the next single failure.
    pub(crate) fn spare(&self) {
        self.lock().failures = 0;
    }
}

fn worker_slot() -> usize {
    crate::worker::worker_index() % WORKER_SLOTS
}

/// An endpoint of one config generation: its name in records, the authority requests carry
/// and a pool per data-plane worker.
pub(crate) struct Endpoint {
    /// `host:port` as configured, or the address DNS gave (`10.0.0.7:8080`).
    pub(crate) label: String,
    pub(crate) authority: Authority,
    pools: Vec<Pool>,
    pub(crate) state: Arc<EndpointState>,
}

impl Endpoint {
    pub(crate) fn new(
        config: &Upstream,
        workers: usize,
        label: String,
        authority: Authority,
        fixed: Option<SocketAddr>,
        state: Arc<EndpointState>,
    ) -> Endpoint {
        let pools = (0..=workers).map(|_| pool(config, fixed)).collect();
        Endpoint {
            label,
            authority,
            pools,
            state,
        }
    }

    /// The pool of the worker this runs on (see `crate::worker`).
    pub(crate) fn pool(&self) -> &Pool {
        self.pools
            .get(crate::worker::worker_index())
            .unwrap_or(&self.pools[0])
    }
}

fn pool(config: &Upstream, fixed: Option<SocketAddr>) -> Pool {
    let mut http = HttpConnector::new_with_resolver(Resolve(fixed));
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(config.connect_timeout));
    let tls = match &config.tls {
        Some(t) => (*t.client_config).clone(),
        None => rustls::ClientConfig::builder_with_provider(crate::tls::crypto_provider())
            .with_safe_default_protocol_versions()
            .map(|b| {
                b.with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth()
            })
            .unwrap_or_else(|_| {
                rustls::ClientConfig::builder()
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth()
            }),
    };
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(config.pool_idle_timeout)
        .pool_max_idle_per_host(config.pool_max_idle_per_host)
        .http2_only(config.http2)
        .build(connector)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> CircuitBreaker {
        CircuitBreaker {
            failure_threshold: 2,
            open_for: Duration::from_secs(5),
            half_open_requests: 1,
        }
    }

    fn outlier() -> crate::config::OutlierDetection {
        crate::config::OutlierDetection {
            consecutive_failures: 3,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(25),
            max_ejected_percent: 50,
        }
    }

    #[test]
    fn the_breaker_opens_lets_one_trial_through_and_closes_on_its_success() {
        let (b, o) = (breaker(), outlier());
        let s = Arc::new(EndpointState::default());
        let t0 = Instant::now();
        for _ in 0..2 {
            s.admit(t0, &b)
                .unwrap()
                .report(Outcome::Connect, t0, &b, &o);
        }
        assert_eq!(s.standing(t0, &b), Standing::Open);
        assert!(s.admit(t0, &b).is_none(), "open: nothing gets through");
        let later = t0 + Duration::from_secs(6);
        let trial = s.admit(later, &b).expect("half-open: one trial");
        assert!(s.admit(later, &b).is_none(), "one trial at a time");
        trial.report(Outcome::Answered, later, &b, &o);
        assert_eq!(s.standing(later, &b), Standing::Available);
        assert!(s.admit(later, &b).is_some());
    }

    #[test]
    fn a_failed_trial_opens_the_breaker_again_and_a_dropped_one_frees_its_slot() {
        let (b, o) = (breaker(), outlier());
        let s = Arc::new(EndpointState::default());
        let t0 = Instant::now();
        for _ in 0..2 {
            s.admit(t0, &b)
                .unwrap()
                .report(Outcome::Timeout, t0, &b, &o);
        }
        let later = t0 + Duration::from_secs(6);
        drop(s.admit(later, &b).unwrap());
        let trial = s
            .admit(later, &b)
            .expect("the dropped trial freed its slot");
        trial.report(Outcome::Connect, later, &b, &o);
        assert_eq!(s.standing(later, &b), Standing::Open);
        assert_eq!(s.outstanding(), 0);
    }

    #[test]
    fn each_worker_counts_its_own_tries_and_the_gauge_counts_all() {
        let b = breaker();
        let s = Arc::new(EndpointState::default());
        let now = Instant::now();
        let here = s.admit(now, &b).unwrap();
        let (elsewhere, seen_there) = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    crate::worker::enter(2);
                    let t = s.admit(now, &b).unwrap();
                    let t2 = s.admit(now, &b).unwrap();
                    drop(t2);
                    let seen = s.outstanding_here();
                    (t, seen)
                })
                .join()
                .unwrap()
        });
        assert_eq!(seen_there, 1, "worker 2 sees its own try only");
        assert_eq!(s.outstanding_here(), 1, "this thread sees its own try only");
        assert_eq!(s.outstanding(), 2);
        // Dropped on another thread, a try still leaves the count it was in.
        drop(elsewhere);
        assert_eq!((s.outstanding_here(), s.outstanding()), (1, 1));
        drop(here);
        assert_eq!(s.outstanding(), 0);
    }

    #[test]
    fn ejections_grow_up_to_the_maximum() {
        let (b, o) = (
            CircuitBreaker {
                failure_threshold: 0,
                ..breaker()
            },
            outlier(),
        );
        let s = Arc::new(EndpointState::default());
        let mut now = Instant::now();
        let mut lengths = Vec::new();
        for _ in 0..3 {
            let mut v = None;
            for _ in 0..3 {
                v = s
                    .admit(now, &b)
                    .unwrap()
                    .report(Outcome::Status5xx, now, &b, &o)
                    .eject_for;
            }
            let d = v.expect("three failures eject");
            s.eject(now, d);
            assert_eq!(s.standing(now, &b), Standing::Ejected);
            lengths.push(d.as_secs());
            now += d;
        }
        assert_eq!(lengths, [10, 20, 25]);
    }

    #[test]
    fn the_lock_free_path_holds_only_while_nothing_is_known_against_the_endpoint() {
        let (b, o) = (breaker(), outlier());
        let s = Arc::new(EndpointState::default());
        let t0 = Instant::now();
        assert!(s.is_pristine());
        s.admit(t0, &b)
            .unwrap()
            .report(Outcome::Connect, t0, &b, &o);
        assert!(!s.is_pristine(), "one failure counted");
        s.admit(t0, &b)
            .unwrap()
            .report(Outcome::Answered, t0, &b, &o);
        assert!(s.is_pristine(), "an answer clears the count");
        for _ in 0..2 {
            s.admit(t0, &b)
                .unwrap()
                .report(Outcome::Timeout, t0, &b, &o);
        }
        assert!(!s.is_pristine());
        assert_eq!(
            s.standing(t0, &b),
            Standing::Open,
            "not taken for available"
        );
        assert!(s.admit(t0, &b).is_none());
        assert_eq!(s.outstanding(), 0);
        let u = EndpointState::default();
        assert!(u.checked(false, 1, 1));
        assert!(!u.is_pristine(), "unhealthy");
    }

    #[test]
    fn the_active_check_needs_its_thresholds() {
        let s = EndpointState::default();
        assert!(!s.checked(false, 2, 2));
        assert!(s.checked(false, 2, 2), "second failure: unhealthy");
        assert_eq!(s.standing(Instant::now(), &breaker()), Standing::Unhealthy);
        assert!(!s.checked(true, 2, 2));
        assert!(s.checked(true, 2, 2), "second success: healthy");
    }
}
