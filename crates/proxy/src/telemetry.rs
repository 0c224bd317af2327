//! The proxy's metrics, W3C trace context, and the tracing subscriber.
//!
//! The registry is lock-light: counters are atomics, keyed where needed in a `DashMap` by
//! values from bounded sets — route ids from the config (a request no route took counts under
//! `route="unrouted"`), reason codes from the rejection table, `&'static str` categories from
//! the code. Nothing a client sends becomes a label. It is written to `/metrics` through the
//! one exposition writer, [`portcullis_base::metrics::Exposition`]. The one label derived from a connection, the client certificate thumbprint on the
//! expiry gauge, is bounded by [`MAX_CLIENT_CERTS`]: past the cap only certificates expiring
//! sooner than the latest-expiring tracked one replace it, so the gauge always shows the
//! soonest expiries seen.
//!
//! Trace context ([`TraceContext`]): a valid incoming `traceparent` (W3C Trace Context level 1)
//! keeps its trace id and flags and gets our span id as the new parent id; an absent or invalid
//! one is replaced by a generated trace (flags `00`, not sampled: we record no spans), and an
//! incoming `tracestate` is then dropped, as the specification requires. With OTLP export on
//! (feature `otlp`, see `otlp.rs`) the ids and the sampled flag come from the SDK's span instead,
//! so that what goes upstream and into the audit record matches what is exported.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use dashmap::DashMap;
use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;

use portcullis_audit::AuditLog;
#[cfg(test)]
use portcullis_base::metrics::LabelValue;
use portcullis_base::metrics::{stat_field, Exposition, Float, Histogram, Kind};

const BUCKETS_SECONDS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Distinct client certificates whose expiry is tracked.
pub(crate) const MAX_CLIENT_CERTS: usize = 256;

/// The calling thread's id, from the `/proc/thread-self` link (`PID/task/TID`).
fn current_thread_id() -> Option<u32> {
    let link = std::fs::read_link("/proc/thread-self").ok()?;
    link.file_name()?.to_str()?.parse().ok()
}

/// User + system CPU seconds of thread `tid` of this process, from `/proc/self/task/TID/stat`
/// (fields 14 and 15, in USER_HZ ticks, 100 a second on Linux).
fn thread_cpu_seconds(tid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
    let utime: u64 = stat_field(&stat, 14)?.parse().ok()?;
    let stime: u64 = stat_field(&stat, 15)?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// The route label of a request no route took.
pub(crate) const UNROUTED: &str = "unrouted";

pub struct Metrics {
    requests: DashMap<(String, u16, &'static str), AtomicU64>,
    /// Time to response headers by route id (or [`UNROUTED`]).
    latency: DashMap<String, Histogram>,
    decisions: DashMap<&'static str, AtomicU64>,
    upstream_latency: Histogram,
    handshake_failures: DashMap<&'static str, AtomicU64>,
    connections_total: AtomicU64,
    connections_active: AtomicU64,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    audit: OnceLock<AuditLog>,
    server_cert_not_after: AtomicI64,
    client_certs: Mutex<HashMap<String, i64>>,
    client_certs_untracked: AtomicU64,
    rate_limit_refusals: DashMap<&'static str, AtomicU64>,
    would_deny: DashMap<(String, &'static str), AtomicU64>,
    /// Answers outside their route's contract, by route and failed keyword (the keywords are
    /// JSON Schema's fixed set, so the label stays bounded).
    contract_drift: DashMap<(String, String), AtomicU64>,
    /// The thread ids of the data-plane workers, by worker index (Linux).
    workers: Mutex<Vec<Option<u32>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: DashMap::new(),
            latency: DashMap::new(),
            decisions: DashMap::new(),
            upstream_latency: Histogram::new(&BUCKETS_SECONDS),
            handshake_failures: DashMap::new(),
            connections_total: AtomicU64::new(0),
            connections_active: AtomicU64::new(0),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            audit: OnceLock::new(),
            server_cert_not_after: AtomicI64::new(i64::MIN),
            client_certs: Mutex::new(HashMap::new()),
            client_certs_untracked: AtomicU64::new(0),
            rate_limit_refusals: DashMap::new(),
            would_deny: DashMap::new(),
            contract_drift: DashMap::new(),
            workers: Mutex::new(Vec::new()),
        }
    }
}

fn bump<K: std::hash::Hash + Eq + Clone>(map: &DashMap<K, AtomicU64>, key: K) {
    if let Some(c) = map.get(&key) {
        c.fetch_add(1, Ordering::Relaxed);
        return;
    }
    map.entry(key).or_default().fetch_add(1, Ordering::Relaxed);
}

fn sorted<K: Ord + Clone + std::hash::Hash + Eq>(map: &DashMap<K, AtomicU64>) -> Vec<(K, u64)> {
    let mut rows: Vec<_> = map
        .iter()
        .map(|e| (e.key().clone(), e.value().load(Ordering::Relaxed)))
        .collect();
    rows.sort();
    rows
}

impl Metrics {
    pub fn request(&self, route: Option<&str>, status: u16, reason: &'static str, took: Duration) {
        let route = route.unwrap_or(UNROUTED);
        bump(&self.requests, (route.to_string(), status, reason));
        if let Some(h) = self.latency.get(route) {
            h.observe(took);
            return;
        }
        self.latency
            .entry(route.to_string())
            .or_insert_with(|| Histogram::new(&BUCKETS_SECONDS))
            .observe(took);
    }

    /// The outcome of one request: its decision (`allow`, `deny`, `error`) and, when it was
    /// forwarded, the upstream's time to response headers.
    pub fn request_outcome(&self, decision: &'static str, upstream_latency_us: Option<u64>) {
        bump(&self.decisions, decision);
        if let Some(us) = upstream_latency_us {
            self.upstream_latency.observe(Duration::from_micros(us));
        }
    }

    pub fn handshake_failure(&self, category: &'static str) {
        bump(&self.handshake_failures, category);
    }

    pub fn connection_opened(&self) {
        self.connections_total.fetch_add(1, Ordering::Relaxed);
        self.connections_active.fetch_add(1, Ordering::Relaxed);
    }

    pub fn connection_closed(&self) {
        self.connections_active.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn reload(&self, ok: bool) {
        let c = if ok {
            &self.reloads_ok
        } else {
            &self.reloads_failed
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn reloads(&self) -> (u64, u64) {
        (
            self.reloads_ok.load(Ordering::Relaxed),
            self.reloads_failed.load(Ordering::Relaxed),
        )
    }

    /// Makes the audit queue and writer visible on `/metrics` (once; later calls are ignored).
    pub fn attach_audit(&self, audit: AuditLog) {
        let _ = self.audit.set(audit);
    }

    /// The listener certificate's notAfter (unix seconds), for the expiry gauge.
    pub fn server_cert(&self, not_after: Option<i64>) {
        self.server_cert_not_after
            .store(not_after.unwrap_or(i64::MIN), Ordering::Relaxed);
    }

    /// A verified client certificate was seen on a connection (see the module doc for the cap).
    pub fn client_cert_seen(&self, thumbprint: &str, not_after: i64) {
        let Ok(mut certs) = self.client_certs.lock() else {
            return;
        };
        if let Some(t) = certs.get_mut(thumbprint) {
            *t = not_after;
            return;
        }
        if certs.len() < MAX_CLIENT_CERTS {
            certs.insert(thumbprint.to_string(), not_after);
            return;
        }
        self.client_certs_untracked.fetch_add(1, Ordering::Relaxed);
        let latest = certs
            .iter()
            .max_by_key(|(_, t)| **t)
            .map(|(k, t)| (k.clone(), *t));
        if let Some((k, t)) = latest {
            if not_after < t {
                certs.remove(&k);
                certs.insert(thumbprint.to_string(), not_after);
            }
        }
    }

    /// Hook: a request refused by a rate limit of `scope` (`peer`, `client`, ...).
    pub fn rate_limit_refused(&self, scope: &'static str) {
        bump(&self.rate_limit_refusals, scope);
    }

    /// A shadow rule would have denied a request on `route` for `reason` (not enforced).
    pub fn would_deny(&self, route: Option<&str>, reason: &'static str) {
        bump(
            &self.would_deny,
            (route.unwrap_or(UNROUTED).to_string(), reason),
        );
    }

    /// An upstream answer on `route` broke its contract at `keyword` (shadow or enforced).
    pub fn contract_response_drift(&self, route: Option<&str>, keyword: &str) {
        let key = (route.unwrap_or(UNROUTED).to_string(), keyword.to_string());
        bump(&self.contract_drift, key);
    }

    /// Called on data-plane worker `index`'s own thread when it starts: remembers its thread
    /// id so that its CPU time can be reported (Linux; a no-op where `/proc` is missing).
    pub fn worker_started(&self, index: usize) {
        let Some(tid) = current_thread_id() else {
            return;
        };
        let mut w = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        if w.len() <= index {
            w.resize(index + 1, None);
        }
        w[index] = Some(tid);
    }

    /// CPU time (user + system, seconds) each data-plane worker thread has used so far, by
    /// worker index; workers whose time cannot be read are left out.
    pub fn worker_cpu_seconds(&self) -> Vec<(usize, f64)> {
        let w = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        w.iter()
            .enumerate()
            .filter_map(|(i, tid)| Some((i, thread_cpu_seconds((*tid)?)?)))
            .collect()
    }

    /// Distinct client certificates tracked for the expiry gauge, and the cap.
    pub fn client_certs_tracked(&self) -> (usize, usize) {
        let n = self.client_certs.lock().map(|c| c.len()).unwrap_or(0);
        (n, MAX_CLIENT_CERTS)
    }

    /// Renders this registry alone (tests; `/metrics` writes it with the rest through
    /// [`Metrics::write`]).
    pub fn render(&self) -> String {
        let mut out = Exposition::new();
        self.write(&mut out);
        out.finish()
    }

    /// Writes the proxy's own families, the build info and the process metrics.
    pub fn write(&self, out: &mut Exposition) {
        let commit = option_env!("PORTCULLIS_COMMIT").unwrap_or("unknown");
        out.family(
            "portcullis_build_info",
            Kind::Gauge,
            "Always 1; the labels name the running build (commit from PORTCULLIS_COMMIT at build time).",
        )
        .sample(
            &[("version", env!("CARGO_PKG_VERSION")), ("commit", commit)],
            1,
        );
        portcullis_base::metrics::write_process_metrics(out);
        let mut f = out.family(
            "portcullis_requests_total",
            Kind::Counter,
            "Requests by route, status and reason.",
        );
        for ((route, status, reason), n) in sorted(&self.requests) {
            let status = status.to_string();
            f.sample(
                &[("route", &route), ("status", &status), ("reason", reason)],
                n,
            );
        }
        let mut f = out.family(
            "portcullis_requests_by_decision_total",
            Kind::Counter,
            "Requests by decision (allow, deny, error).",
        );
        for (d, n) in sorted(&self.decisions) {
            f.sample(&[("decision", d)], n);
        }
        let mut f = out.family(
            "portcullis_request_duration_seconds",
            Kind::Histogram,
            "Time to response headers, by route id (unrouted: no route took the request).",
        );
        let mut routes: Vec<String> = self.latency.iter().map(|e| e.key().clone()).collect();
        routes.sort();
        for route in routes {
            if let Some(h) = self.latency.get(&route) {
                f.histogram(&[("route", &route)], &h);
            }
        }
        self.upstream_latency.render(
            out,
            "portcullis_upstream_duration_seconds",
            "Upstream time to response headers.",
        );
        let mut f = out.family(
            "portcullis_tls_handshake_failures_total",
            Kind::Counter,
            "Failed handshakes by category.",
        );
        for (cat, n) in sorted(&self.handshake_failures) {
            f.sample(&[("failure", cat)], n);
        }
        out.single(
            "portcullis_connections_total",
            Kind::Counter,
            "Accepted TLS connections.",
            self.connections_total.load(Ordering::Relaxed),
        );
        out.single(
            "portcullis_connections_active",
            Kind::Gauge,
            "Open TLS connections.",
            self.connections_active.load(Ordering::Relaxed),
        );
        let mut f = out.family(
            "portcullis_worker_cpu_seconds_total",
            Kind::Counter,
            "CPU time (user + system) of each data-plane worker thread.",
        );
        for (i, secs) in self.worker_cpu_seconds() {
            f.sample(&[("worker", &i.to_string())], Float(secs));
        }
        let (ok, failed) = self.reloads();
        out.family(
            "portcullis_config_reloads_total",
            Kind::Counter,
            "Config reloads by result.",
        )
        .sample(&[("result", "ok")], ok)
        .sample(&[("result", "failed")], failed);
        self.write_certs(out);
        self.write_audit(out);
        self.write_hooks(out);
    }

    fn write_certs(&self, out: &mut Exposition) {
        let server = self.server_cert_not_after.load(Ordering::Relaxed);
        if server != i64::MIN {
            out.single(
                "portcullis_server_cert_expiry_timestamp_seconds",
                Kind::Gauge,
                "notAfter of the listener certificate (Unix seconds).",
                server,
            );
        }
        let mut f = out.family(
            "portcullis_client_cert_expiry_timestamp_seconds",
            Kind::Gauge,
            "notAfter (Unix seconds) of each client certificate seen, by SHA-256 thumbprint (the soonest 256).",
        );
        let mut certs: Vec<(String, i64)> = self
            .client_certs
            .lock()
            .map(|c| c.iter().map(|(k, v)| (k.clone(), *v)).collect())
            .unwrap_or_default();
        certs.sort();
        for (thumbprint, not_after) in certs {
            f.sample(&[("thumbprint", &thumbprint)], not_after);
        }
        out.single(
            "portcullis_client_certs_untracked_total",
            Kind::Counter,
            "Client certificates seen beyond the tracking cap.",
            self.client_certs_untracked.load(Ordering::Relaxed),
        );
    }

    fn write_audit(&self, out: &mut Exposition) {
        let Some(audit) = self.audit.get() else {
            return;
        };
        let Some(stats) = audit.stats() else {
            return;
        };
        let (depth, capacity) = audit.queue_depth();
        out.single(
            "portcullis_audit_queue_depth",
            Kind::Gauge,
            "Audit records waiting for the writer.",
            depth,
        );
        out.single(
            "portcullis_audit_queue_capacity",
            Kind::Gauge,
            "Capacity of the audit queue.",
            capacity,
        );
        for (name, kind, help, v) in [
            (
                "portcullis_audit_records_written_total",
                Kind::Counter,
                "Audit records written (checkpoints and markers included).",
                stats.written(),
            ),
            (
                "portcullis_audit_records_dropped_total",
                Kind::Counter,
                "Audit records dropped under the drop policy or best effort.",
                stats.dropped(),
            ),
            (
                "portcullis_audit_write_errors_total",
                Kind::Counter,
                "Failed audit write or fsync attempts.",
                stats.write_errors(),
            ),
            (
                "portcullis_audit_output_failing",
                Kind::Gauge,
                "1 while the audit output fails.",
                u64::from(stats.failing()),
            ),
            (
                "portcullis_audit_checkpoints_total",
                Kind::Counter,
                "Signed audit checkpoints written.",
                stats.checkpoints(),
            ),
            (
                "portcullis_audit_rotations_total",
                Kind::Counter,
                "Audit file rotations.",
                stats.rotations(),
            ),
        ] {
            out.single(name, kind, help, v);
        }
        stats.write_latency().render(
            out,
            "portcullis_audit_write_seconds",
            "Time to write one batch of audit records.",
        );
    }

    fn write_hooks(&self, out: &mut Exposition) {
        let mut f = out.family(
            "portcullis_rate_limit_refusals_total",
            Kind::Counter,
            "Requests refused by a rate limit, by scope.",
        );
        for (scope, n) in sorted(&self.rate_limit_refusals) {
            f.sample(&[("scope", scope)], n);
        }
        let mut f = out.family(
            "portcullis_would_deny_total",
            Kind::Counter,
            "Requests a shadow rule would have denied, by route and reason (not enforced).",
        );
        for ((route, reason), n) in sorted(&self.would_deny) {
            f.sample(&[("route", &route), ("reason", reason)], n);
        }
        let mut f = out.family(
            "portcullis_contract_response_drift_total",
            Kind::Counter,
            "Upstream answers outside their route's OpenAPI contract, by route and failed keyword.",
        );
        for ((route, keyword), n) in sorted(&self.contract_drift) {
            f.sample(&[("route", &route), ("keyword", &keyword)], n);
        }
    }
}

/// `traceparent` (W3C Trace Context).
pub(crate) const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// `tracestate` (W3C Trace Context).
pub(crate) const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The trace context of one request as it leaves the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TraceContext {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    flags: u8,
    /// Whether the incoming `traceparent` was valid (so its `tracestate` may travel on).
    continued: bool,
}

fn hex_into(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
}

fn parse_lower_hex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in s.chunks(2).enumerate() {
        out[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    while out.iter().all(|b| *b == 0) {
        let u = uuid::Uuid::new_v4();
        let n = N.min(16);
        out[..n].copy_from_slice(&u.as_bytes()[..n]);
        if N > 16 {
            let v = uuid::Uuid::new_v4();
            out[16..].copy_from_slice(&v.as_bytes()[..N - 16]);
        }
    }
    out
}

/// Parses a `traceparent` value: trace id, parent id and flags, or `None` when invalid.
///
/// Version `00` must be exactly `00-<32 hex>-<16 hex>-<2 hex>`, lower-case; a later version
/// may append `-…` fields, which are ignored; version `ff` is invalid, as are all-zero ids.
// Public for the `internals` feature (the fuzz harness).
#[cfg_attr(not(feature = "internals"), allow(unreachable_pub))]
pub fn parse_traceparent(value: &[u8]) -> Option<([u8; 16], [u8; 8], u8)> {
    if value.len() < 55 {
        return None;
    }
    let version = parse_lower_hex::<1>(&value[0..2])?[0];
    if version == 0xff || (version == 0 && value.len() != 55) {
        return None;
    }
    if value.len() > 55 && value[55] != b'-' {
        return None;
    }
    if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let trace = parse_lower_hex::<16>(&value[3..35])?;
    let parent = parse_lower_hex::<8>(&value[36..52])?;
    let flags = parse_lower_hex::<1>(&value[53..55])?[0];
    if trace == [0; 16] || parent == [0; 8] {
        return None;
    }
    Some((trace, parent, flags))
}

/// The request's `traceparent` when there is exactly one and it is valid: trace id, parent id,
/// flags. Two or more are ambiguous, so none is trusted.
pub(crate) fn incoming_traceparent(h: &HeaderMap) -> Option<([u8; 16], [u8; 8], u8)> {
    let mut values = h.get_all(TRACEPARENT).iter();
    match (values.next(), values.next()) {
        (Some(v), None) => parse_traceparent(v.as_bytes()),
        _ => None,
    }
}

impl TraceContext {
    /// Continues the incoming trace when there is exactly one valid `traceparent`; otherwise
    /// starts a new one. Either way the span id is ours and fresh.
    pub(crate) fn from_headers(h: &HeaderMap) -> TraceContext {
        match incoming_traceparent(h) {
            Some((trace_id, _, flags)) => TraceContext {
                trace_id,
                span_id: random_bytes(),
                // Level 1 defines only the sampled bit; the others are passed as zero.
                flags: flags & 0x01,
                continued: true,
            },
            None => TraceContext {
                trace_id: random_bytes(),
                span_id: random_bytes(),
                flags: 0,
                continued: false,
            },
        }
    }

    /// The context of the proxy's own exported span (feature `otlp`): its ids, and the sampled
    /// flag exactly when the SDK's sampler chose to export it.
    #[cfg(feature = "otlp")]
    pub(crate) fn of_span(
        trace_id: [u8; 16],
        span_id: [u8; 8],
        sampled: bool,
        continued: bool,
    ) -> TraceContext {
        TraceContext {
            trace_id,
            span_id,
            flags: u8::from(sampled),
            continued,
        }
    }

    /// Whether an incoming `traceparent` was continued.
    #[cfg(test)]
    pub(crate) fn continued(&self) -> bool {
        self.continued
    }

    pub(crate) fn trace_id(&self) -> String {
        let mut s = String::with_capacity(32);
        hex_into(&mut s, &self.trace_id);
        s
    }

    pub(crate) fn span_id(&self) -> String {
        let mut s = String::with_capacity(16);
        hex_into(&mut s, &self.span_id);
        s
    }

    /// The `traceparent` the upstream receives: our span id as its parent.
    pub(crate) fn traceparent(&self) -> String {
        let mut s = String::with_capacity(55);
        s.push_str("00-");
        hex_into(&mut s, &self.trace_id);
        s.push('-');
        hex_into(&mut s, &self.span_id);
        s.push('-');
        hex_into(&mut s, &[self.flags]);
        s
    }

    /// Sets `traceparent` on a forwarded request, replacing the client's; drops `tracestate`
    /// when the client's `traceparent` was not continued.
    pub(crate) fn inject(&self, h: &mut HeaderMap) {
        if let Ok(v) = HeaderValue::from_str(&self.traceparent()) {
            h.insert(TRACEPARENT, v);
        }
        if !self.continued {
            h.remove(TRACESTATE);
        }
    }
}

/// The subscriber for `portcullis check`: what the config load warns about (a JWKS key
/// skipped, ...) goes to stderr as plain lines beside the errors, warnings and up by default
/// (`RUST_LOG` overrides). Without it those warnings would be dropped and `check` would pass in
/// silence over a key the proxy will never use.
pub fn init_check_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .without_time()
        .with_target(false)
        .try_init();
}

/// Installs the tracing subscriber: JSON lines on stderr, level from `RUST_LOG` (default info).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .json()
        .try_init();
}

#[cfg(test)]
mod tests;
