//! An upstream as a set of endpoints: the bulkhead, the choice of endpoint, the tries and
//! what each try teaches about its endpoint.
//!
//! A request is refused at once, without a connect attempt, when the bulkhead is full
//! ([`UpstreamError::Overloaded`]) or when no endpoint may take it — every one unhealthy,
//! ejected or behind an open breaker ([`UpstreamError::Unavailable`]). Another try goes to an
//! endpoint not tried yet, and only when repeating cannot do harm: the request never left (no
//! connection), or it is safe to repeat (the caller says so: a safe method without a body, or
//! an idempotency key the upstream honours); and only within the retry budget.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use dashmap::DashMap;
use http::uri::Authority;
use http::{Request, Response, Uri};
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use super::endpoint::{Endpoint, EndpointState, Outcome, Standing, Ticket};
use super::retry::{two_choices, two_draws, Budget};
use super::{RetryAfter, UpstreamError};
use crate::config::Upstream;
use portcullis_base::body::{full, ProxyBody};

/// The largest request body kept for another try; a larger one, or one of unknown length,
/// is streamed and gets one try only.
const MAX_REPLAYABLE: u64 = 1024 * 1024;

/// The answer and the time to its headers, or why there is none.
pub(crate) type Sent = Result<(Response<Incoming>, Duration), UpstreamError>;

/// What the audit record says of the tries: how many and on which endpoints, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Tries {
    pub(crate) count: u32,
    pub(crate) endpoints: Vec<String>,
}

/// Counters of an upstream that outlive a reload.
#[derive(Debug, Default)]
pub(crate) struct UpstreamStats {
    pub(crate) budget: Budget,
    pub(crate) unavailable: AtomicU64,
    pub(crate) overloaded: AtomicU64,
}

/// What is known of upstreams and endpoints across reloads: a reload builds new pools but
/// keeps each endpoint's health, breaker and in-flight count, so an endpoint known to be down
/// stays down and one being drained is still seen as busy.
#[derive(Clone, Default)]
pub(crate) struct Registry {
    states: Arc<DashMap<String, Weak<EndpointState>>>,
    stats: Arc<DashMap<String, Arc<UpstreamStats>>>,
}

impl Registry {
    fn state(&self, upstream: &str, label: &str) -> Arc<EndpointState> {
        let key = format!("{upstream}\u{0}{label}");
        if let Some(s) = self.states.get(&key).and_then(|w| w.upgrade()) {
            return s;
        }
        // Entries of endpoints no generation holds any more go (DNS sets come and go).
        self.states.retain(|_, w| w.strong_count() > 0);
        let s = Arc::new(EndpointState::default());
        self.states.insert(key, Arc::downgrade(&s));
        s
    }

    fn stats(&self, upstream: &str) -> Arc<UpstreamStats> {
        Arc::clone(
            self.stats
                .entry(upstream.to_string())
                .or_insert_with(|| Arc::new(UpstreamStats::default()))
                .value(),
        )
    }
}

/// One upstream of one config generation.
pub struct UpstreamClient {
    pub config: Upstream,
    workers: usize,
    /// The endpoints now; a DNS refresh swaps in a new set.
    set: ArcSwap<Vec<Arc<Endpoint>>>,
    /// What [`UpstreamClient::uri`] names (the first endpoint, or the DNS name); each try
    /// puts its endpoint's authority in.
    authority: Authority,
    pub(crate) stats: Arc<UpstreamStats>,
    registry: Registry,
    slots: Arc<Semaphore>,
    pending: AtomicUsize,
    /// A DNS set has been resolved at least once.
    resolved: AtomicBool,
    first_resolution: Notify,
    /// One ejection decision at a time, so two failures cannot both take the last share.
    ejecting: Mutex<()>,
}

impl UpstreamClient {
    /// The client for `config` with a pool per endpoint and data-plane worker (see
    /// [`super::start`] for its background work).
    pub(crate) fn new(
        config: &Upstream,
        workers: usize,
        registry: &Registry,
    ) -> Arc<UpstreamClient> {
        let set: Vec<Arc<Endpoint>> = config
            .endpoints
            .iter()
            .map(|a| {
                let label = a.to_string();
                let state = registry.state(&config.name, &label);
                Arc::new(Endpoint::new(
                    config,
                    workers,
                    label,
                    a.clone(),
                    None,
                    state,
                ))
            })
            .collect();
        let authority = match (&config.dns, config.endpoints.first()) {
            (Some(d), _) => format!("{}:{}", d.name, d.port)
                .parse()
                .unwrap_or_else(|_| Authority::from_static("invalid")),
            (None, Some(a)) => a.clone(),
            (None, None) => Authority::from_static("invalid"),
        };
        Arc::new(UpstreamClient {
            workers,
            set: ArcSwap::from_pointee(set),
            authority,
            stats: registry.stats(&config.name),
            registry: registry.clone(),
            slots: Arc::new(Semaphore::new(config.limits.max_concurrent)),
            pending: AtomicUsize::new(0),
            resolved: AtomicBool::new(config.dns.is_none()),
            first_resolution: Notify::new(),
            ejecting: Mutex::new(()),
            config: config.clone(),
        })
    }

    /// The upstream URI for an already checked path and query.
    pub fn uri(&self, path: &str, query: Option<&str>) -> Result<Uri, http::Error> {
        let c = &self.config;
        let pq = match query {
            Some(q) => format!("{}{path}?{q}", c.base_path),
            None => format!("{}{path}", c.base_path),
        };
        Uri::builder()
            .scheme(c.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(pq)
            .build()
    }

    /// The endpoints now.
    pub(crate) fn endpoints(&self) -> Arc<Vec<Arc<Endpoint>>> {
        self.set.load_full()
    }

    /// Replaces the set (a DNS refresh): endpoints that stay keep their pools; those that
    /// go finish what they have in flight (each try holds its endpoint).
    pub(crate) fn replace(&self, addrs: &[std::net::SocketAddr]) {
        let old = self.set.load_full();
        let set: Vec<Arc<Endpoint>> = addrs
            .iter()
            .map(|a| {
                let label = a.to_string();
                match old.iter().find(|e| e.label == label) {
                    Some(e) => Arc::clone(e),
                    None => Arc::new(Endpoint::new(
                        &self.config,
                        self.workers,
                        label.clone(),
                        self.authority.clone(),
                        Some(*a),
                        self.registry.state(&self.config.name, &label),
                    )),
                }
            })
            .collect();
        let changed =
            set.len() != old.len() || set.iter().any(|e| !old.iter().any(|o| Arc::ptr_eq(e, o)));
        if changed {
            tracing::info!(upstream = %self.config.name, endpoints = set.len(), "upstream endpoints changed");
        }
        self.set.store(Arc::new(set));
    }

    /// Marks the first DNS resolution done (or failed), waking requests that wait for it.
    pub(crate) fn resolved(&self) {
        self.resolved.store(true, Ordering::Release);
        self.first_resolution.notify_waiters();
    }

    /// A slot in the bulkhead: at once, or after waiting in the bounded queue of pending
    /// requests; refused when the queue is full or the wait is over.
    async fn slot(&self) -> Result<OwnedSemaphorePermit, UpstreamError> {
        if let Ok(p) = Arc::clone(&self.slots).try_acquire_owned() {
            return Ok(p);
        }
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        let before = self.pending.fetch_add(1, Ordering::Relaxed);
        let _waiting = Waiting(&self.pending);
        let limits = &self.config.limits;
        if before < limits.max_pending {
            let wait = Arc::clone(&self.slots).acquire_owned();
            if let Ok(Ok(p)) = tokio::time::timeout(limits.pending_timeout, wait).await {
                return Ok(p);
            }
        }
        self.stats.overloaded.fetch_add(1, Ordering::Relaxed);
        Err(UpstreamError::Overloaded)
    }

    /// An endpoint not in `tried` that may take a try now, chosen by two random choices.
    fn pick(&self, tried: &[String]) -> Option<(Arc<Endpoint>, Ticket)> {
        let set = self.set.load();
        let now = Instant::now();
        let b = &self.config.breaker;
        // The common case, without a lock or an allocation: a first try, and both endpoints
        // drawn have nothing against them.
        if tried.is_empty() {
            if let Some((i, j)) = two_draws(set.len()) {
                let (x, y) = (&set[i], &set[j]);
                if x.state.is_pristine() && y.state.is_pristine() {
                    let e = if y.state.outstanding_here() < x.state.outstanding_here() {
                        y
                    } else {
                        x
                    };
                    if let Some(t) = e.state.admit(now, b) {
                        return Some((Arc::clone(e), t));
                    }
                }
            }
        }
        let mut candidates: Vec<&Arc<Endpoint>> = set
            .iter()
            .filter(|e| !tried.contains(&e.label))
            .filter(|e| e.state.standing(now, b) == Standing::Available)
            .collect();
        while let Some(i) = two_choices(&candidates) {
            if let Some(t) = candidates[i].state.admit(now, b) {
                return Some((Arc::clone(candidates[i]), t));
            }
            // Taken meanwhile (the last half-open trial slot): the next best.
            candidates.swap_remove(i);
        }
        None
    }

    /// When an endpoint of the set may take a request again: the soonest end of an ejection
    /// or open breaker; with every endpoint unhealthy (or none resolved yet), the time the
    /// active check needs to call one healthy, else 1 s.
    fn retry_after(&self) -> RetryAfter {
        let now = Instant::now();
        let soonest = self
            .set
            .load()
            .iter()
            .filter_map(|e| e.state.back_in(now))
            .min();
        let d = soonest.unwrap_or_else(|| match &self.config.health_check {
            Some(h) => h.interval.saturating_mul(h.healthy_threshold),
            None => Duration::from_secs(1),
        });
        RetryAfter::of(d)
    }

    /// Records a try's outcome and ejects the endpoint when outlier detection asks and the
    /// share of the set already out allows it.
    fn report(&self, ep: &Endpoint, ticket: Ticket, outcome: Outcome) {
        let now = Instant::now();
        let verdict = ticket.report(outcome, now, &self.config.breaker, &self.config.outlier);
        let Some(length) = verdict.eject_for else {
            return;
        };
        let _one = self.ejecting.lock().unwrap_or_else(|p| p.into_inner());
        let set = self.set.load();
        let out = set.iter().filter(|e| e.state.is_ejected(now)).count();
        let share = self.config.outlier.max_ejected_percent as usize;
        if (out + 1) * 100 <= set.len() * share {
            ep.state.eject(now, length);
            tracing::warn!(upstream = %self.config.name, endpoint = %ep.label, failure = outcome.as_str(), seconds = length.as_secs_f64(), "upstream endpoint ejected");
        } else {
            ep.state.spare();
        }
    }

    /// Sends the request to an endpoint, and to another one where that is safe (see the
    /// module doc); `repeatable`: the request may be executed twice without harm. Returns
    /// the response and the time to its headers; `tries` says where it went.
    pub(crate) fn send<'a>(
        &'a self,
        req: Request<ProxyBody>,
        repeatable: bool,
        tries: &'a mut Tries,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Sent> + Send + 'a>> {
        // Boxed: the exchange runs in a spawned task, and a named `Send` future keeps the
        // compiler's proof of that local to this function.
        Box::pin(self.tries(req, repeatable, tries))
    }

    async fn tries(&self, req: Request<ProxyBody>, repeatable: bool, tries: &mut Tries) -> Sent {
        let start = Instant::now();
        if !self.resolved.load(Ordering::Acquire) {
            let first = self.first_resolution.notified();
            if !self.resolved.load(Ordering::Acquire) {
                let _ = tokio::time::timeout(self.config.connect_timeout, first).await;
            }
        }
        let _slot = self.slot().await?;
        let Some(mut current) = self.pick(&tries.endpoints) else {
            self.stats.unavailable.fetch_add(1, Ordering::Relaxed);
            return Err(UpstreamError::Unavailable(self.retry_after()));
        };
        self.stats.budget.request();
        let (mut parts, body) = req.into_parts();
        let retries = &self.config.retries;
        // Another try needs the body again: kept when it is small and of known length.
        let upper = body.size_hint().upper();
        let (mut body, replay) = match upper {
            // Ended already (a GET): nothing to read or keep.
            Some(0) if retries.attempts > 1 && body.is_end_stream() => (None, Some(Bytes::new())),
            Some(n) if retries.attempts > 1 && n <= MAX_REPLAYABLE => {
                // The upper bound is the declared length, which the admitted body enforces.
                match body.collect().await {
                    Ok(b) => (None, Some(b.to_bytes())),
                    Err(_) => return Err(UpstreamError::Protocol),
                }
            }
            _ => (Some(body), None::<Bytes>),
        };
        let deadline = start + self.config.response_timeout;
        loop {
            let (ep, ticket) = current;
            let body = match (&replay, body.take()) {
                (Some(b), _) => full(b.clone()),
                (None, Some(b)) => b,
                // The only body went with the last try (not reached: `replay` is None
                // exactly when no other try is made).
                (None, None) => return Err(UpstreamError::Protocol),
            };
            let mut out = Request::new(body);
            *out.method_mut() = parts.method.clone();
            *out.uri_mut() = at(&parts.uri, &ep.authority);
            *out.version_mut() = parts.version;
            // Without a kept body there is one try only: the headers need no copy.
            *out.headers_mut() = if replay.is_some() {
                parts.headers.clone()
            } else {
                std::mem::take(&mut parts.headers)
            };
            tries.count += 1;
            tries.endpoints.push(ep.label.clone());
            let left = deadline.saturating_duration_since(Instant::now());
            let limit = retries.per_try_timeout.min(left);
            let result = tokio::time::timeout(limit, ep.pool().request(out)).await;
            let (outcome, answer) = match result {
                Err(_) => (Outcome::Timeout, Err(UpstreamError::Timeout)),
                Ok(Err(e)) if e.is_connect() => {
                    tracing::warn!(upstream = %self.config.name, endpoint = %ep.label, failure = "connect", error = %e, "upstream connect failed");
                    (Outcome::Connect, Err(UpstreamError::Connect))
                }
                Ok(Err(e)) => {
                    tracing::warn!(upstream = %self.config.name, endpoint = %ep.label, failure = "protocol", error = %e, "upstream request failed");
                    (Outcome::Protocol, Err(UpstreamError::Protocol))
                }
                Ok(Ok(r)) if r.status().is_server_error() => (Outcome::Status5xx, Ok(r)),
                Ok(Ok(r)) => (Outcome::Answered, Ok(r)),
            };
            self.report(&ep, ticket, outcome);
            let again = replay.is_some()
                && match &answer {
                    // The request never left: repeating it elsewhere is no repetition.
                    Err(UpstreamError::Connect) => true,
                    Err(_) => repeatable,
                    Ok(r) => repeatable && matches!(r.status().as_u16(), 502..=504),
                };
            let more = again && tries.count < retries.attempts && Instant::now() < deadline;
            let next = if more {
                self.pick(&tries.endpoints)
            } else {
                None
            };
            match next {
                Some(n)
                    if self
                        .stats
                        .budget
                        .try_retry(retries.budget_percent, retries.min_retries) =>
                {
                    current = n;
                }
                _ => return answer.map(|r| (r, start.elapsed())),
            }
        }
    }

    /// Where each endpoint stands now, with its label (for metrics).
    pub(crate) fn standings(&self) -> Vec<(Arc<Endpoint>, Standing)> {
        let now = Instant::now();
        self.set
            .load()
            .iter()
            .map(|e| (Arc::clone(e), e.state.standing(now, &self.config.breaker)))
            .collect()
    }
}

/// `uri` with `authority` in place of its own.
fn at(uri: &Uri, authority: &Authority) -> Uri {
    if uri.authority() == Some(authority) {
        return uri.clone();
    }
    let mut p = uri.clone().into_parts();
    p.authority = Some(authority.clone());
    Uri::from_parts(p).unwrap_or_else(|_| uri.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CircuitBreaker, DnsEndpoints, OutlierDetection, Retries, UpstreamLimits};

    fn dns_upstream() -> Upstream {
        Upstream {
            name: "bank".into(),
            scheme: http::uri::Scheme::HTTP,
            endpoints: Vec::new(),
            dns: Some(DnsEndpoints {
                name: "bank.svc".into(),
                port: 8080,
                interval: Duration::from_secs(10),
            }),
            health_check: None,
            outlier: OutlierDetection {
                consecutive_failures: 5,
                base_ejection: Duration::from_secs(30),
                max_ejection: Duration::from_secs(300),
                max_ejected_percent: 50,
            },
            breaker: CircuitBreaker {
                failure_threshold: 5,
                open_for: Duration::from_secs(5),
                half_open_requests: 1,
            },
            limits: UpstreamLimits {
                max_concurrent: 8,
                max_pending: 0,
                pending_timeout: Duration::from_secs(1),
            },
            retries: Retries {
                attempts: 3,
                per_try_timeout: Duration::from_secs(1),
                budget_percent: 20,
                min_retries: 3,
                honours_idempotency_key: false,
            },
            base_path: String::new(),
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(1),
            pool_idle_timeout: Duration::from_secs(30),
            pool_max_idle_per_host: 4,
            http2: false,
            tls: None,
        }
    }

    #[test]
    fn a_new_dns_answer_keeps_the_endpoints_that_stay_and_their_state() {
        let registry = Registry::default();
        let c = UpstreamClient::new(&dns_upstream(), 1, &registry);
        assert!(c.endpoints().is_empty(), "nothing before the first answer");
        let (a, b, d): (
            std::net::SocketAddr,
            std::net::SocketAddr,
            std::net::SocketAddr,
        ) = (
            "10.0.0.1:8080".parse().unwrap(),
            "10.0.0.2:8080".parse().unwrap(),
            "[fd00::3]:8080".parse().unwrap(),
        );
        c.replace(&[a, b]);
        let first = c.endpoints();
        let labels: Vec<&str> = first.iter().map(|e| e.label.as_str()).collect();
        assert_eq!(labels, ["10.0.0.1:8080", "10.0.0.2:8080"]);
        // Requests name the service, whichever address they go to.
        assert_eq!(first[0].authority.as_str(), "bank.svc:8080");
        let held = c.pick(&[]).expect("an endpoint");
        c.replace(&[b, d]);
        let second = c.endpoints();
        let labels: Vec<&str> = second.iter().map(|e| e.label.as_str()).collect();
        assert_eq!(labels, ["10.0.0.2:8080", "[fd00::3]:8080"]);
        assert!(Arc::ptr_eq(&first[1], &second[0]), "b kept its pools");
        // A try on a removed endpoint still holds it, and its count.
        assert_eq!(held.0.state.outstanding(), 1);
        drop(held);
        // A reload (a new client) finds the same state for the same address.
        let again = UpstreamClient::new(&dns_upstream(), 1, &registry);
        again.replace(&[b]);
        assert!(Arc::ptr_eq(&again.endpoints()[0].state, &second[0].state));
    }

    #[test]
    fn nothing_can_take_the_request_when_every_breaker_is_open() {
        let mut u = dns_upstream();
        u.breaker.failure_threshold = 1;
        let c = UpstreamClient::new(&u, 1, &Registry::default());
        c.replace(&[
            "10.0.0.1:8080".parse().unwrap(),
            "10.0.0.2:8080".parse().unwrap(),
        ]);
        for _ in 0..2 {
            let (ep, t) = c.pick(&[]).expect("an endpoint");
            c.report(&ep, t, Outcome::Connect);
        }
        assert!(c.pick(&[]).is_none());
        // Both open for 5 s from about now: the soonest half-opens within 5 s.
        assert_eq!(c.retry_after(), RetryAfter(5));
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds_and_never_says_zero() {
        assert_eq!(RetryAfter::of(Duration::ZERO), RetryAfter(1));
        assert_eq!(RetryAfter::of(Duration::from_millis(1)), RetryAfter(1));
        assert_eq!(RetryAfter::of(Duration::from_millis(1001)), RetryAfter(2));
        assert_eq!(RetryAfter::of(Duration::from_secs(30)), RetryAfter(30));
    }

    #[test]
    fn retry_after_is_the_soonest_return_of_any_endpoint() {
        let c = UpstreamClient::new(&dns_upstream(), 1, &Registry::default());
        // Nothing resolved and no health check: 1 s.
        assert_eq!(c.retry_after(), RetryAfter(1));
        c.replace(&[
            "10.0.0.1:8080".parse().unwrap(),
            "10.0.0.2:8080".parse().unwrap(),
        ]);
        let now = Instant::now();
        let set = c.endpoints();
        set[0].state.eject(now, Duration::from_secs(30));
        set[1].state.eject(now, Duration::from_secs(12));
        assert_eq!(c.retry_after(), RetryAfter(12));
    }
}
