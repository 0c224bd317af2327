//! What a load run measured: per-worker recorders merged into a [`Summary`] (throughput,
//! latency percentiles, statuses, errors by status and by reason, per route), the threshold
//! checks, and the text and JSON forms.
//!
//! An error is an answer whose status the route does not expect (any 2xx unless it says), or a
//! request that got no answer (`loadgen.*` reasons), or — open loop — one that could not be sent
//! because `max_outstanding` requests were already under way (`loadgen.not_sent`). The reason of
//! an error answer is the `reason` member of its problem+json body, `(none)` without one.
//! In the open loop the target's timeout runs from the intended send time: a request still
//! waiting for a free connection when it has passed is not sent (`loadgen.late`).
//!
//! The timeline counts, per second of the run (by intended send time in the open loop, by send
//! time in the closed loop), requests, errors, the slowest answer, p50 and p99, and (open loop)
//! the most requests queued or under way at once — where in a long run the errors and stalls were.
//!
//! Latencies go into HdrHistograms (3 significant digits: a percentile is at most 0.1 % above
//! the exact one, never below it), not a list of samples, so a run's memory does not grow with
//! its length: one histogram per route per worker, merged at the end, and for the timeline a
//! shared [`Live`] that keeps histograms only for the seconds still being answered (the
//! target's timeout plus two) and reduces each older second to its p50 and p99.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// What the JSON and text reports say about how percentiles were measured.
pub const PRECISION: &str = "HdrHistogram, 3 significant digits";

/// Distinct refusal reasons kept per route; more count as `(other)` so a target that puts a
/// fresh string in every answer cannot grow the report without bound.
const MAX_REASONS: usize = 64;

/// A histogram of microseconds at 3 significant digits that grows with the largest value
/// recorded (a run that stays under 10 ms keeps about 40 KiB per histogram).
fn histogram() -> Histogram<u64> {
    // 3 significant digits is a valid precision: creation cannot fail.
    Histogram::new(3).unwrap_or_else(|_| unreachable!("3 significant digits is valid"))
}

/// Records `v` in `h`, growing it as needed (`saturating_record` clamps to the current top
/// instead of growing, so it is only the fallback for a value beyond any range).
fn put(h: &mut Histogram<u64>, v: u64) {
    if h.record(v).is_err() {
        h.saturating_record(v);
    }
}

fn count_reason(map: &mut BTreeMap<String, u64>, reason: String) {
    if map.len() >= MAX_REASONS && !map.contains_key(&reason) {
        *map.entry("(other)".into()).or_default() += 1;
    } else {
        *map.entry(reason).or_default() += 1;
    }
}

/// Why a request got no answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    Connect,
    Timeout,
    ConnectionLost,
    NotSent,
    Late,
    Build,
}

impl Failure {
    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Connect => "loadgen.connect_failed",
            Failure::Timeout => "loadgen.timeout",
            Failure::ConnectionLost => "loadgen.connection_lost",
            Failure::NotSent => "loadgen.not_sent",
            Failure::Late => "loadgen.late",
            Failure::Build => "loadgen.build_failed",
        }
    }
}

/// How one request ended.
#[derive(Debug)]
pub enum Outcome {
    Answer {
        status: u16,
        /// `reason` of a problem+json body (read for non-2xx answers only).
        reason: Option<String>,
    },
    Failed(Failure),
}

struct RouteRec {
    latency: Histogram<u64>,
    /// The exact slowest answer (the histogram's is rounded up to its precision).
    max_us: u64,
    statuses: BTreeMap<u16, u64>,
    errors_by_status: BTreeMap<u16, u64>,
    errors_by_reason: BTreeMap<String, u64>,
    refusal_reasons: BTreeMap<String, u64>,
    ok: u64,
    errors: u64,
}

impl Default for RouteRec {
    fn default() -> RouteRec {
        RouteRec {
            latency: histogram(),
            max_us: 0,
            statuses: BTreeMap::new(),
            errors_by_status: BTreeMap::new(),
            errors_by_reason: BTreeMap::new(),
            refusal_reasons: BTreeMap::new(),
            ok: 0,
            errors: 0,
        }
    }
}

/// One second of the run.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Tick {
    /// Measured requests due in this second (answered or not).
    pub requests: u64,
    pub errors: u64,
    /// The slowest answer of a request due in this second.
    pub max_us: u32,
    /// The median and the 99th percentile of the answers of requests due in this second (0
    /// without one; an answer that came more than the target's timeout plus two seconds after
    /// the newest second seen counts in `requests` but not here).
    pub p50_us: u32,
    pub p99_us: u32,
    /// Open loop: the most requests queued or under way at once.
    pub backlog: u32,
}

/// Seconds the timeline keeps; later requests count in its last second.
const TIMELINE_SECONDS: usize = 86_400;

fn second(at: Duration) -> usize {
    (at.as_secs() as usize).min(TIMELINE_SECONDS - 1)
}

/// One worker's measurements (no sharing while running; merged at the end).
pub struct Recorder {
    routes: Vec<RouteRec>,
    timeline: Vec<Tick>,
}

impl Recorder {
    pub fn new(routes: usize) -> Recorder {
        Recorder {
            routes: (0..routes).map(|_| RouteRec::default()).collect(),
            timeline: Vec::new(),
        }
    }

    fn tick(&mut self, at: Duration) -> &mut Tick {
        let i = second(at);
        if self.timeline.len() <= i {
            self.timeline.resize(i + 1, Tick::default());
        }
        &mut self.timeline[i]
    }

    /// Notes `n` requests queued or under way `at` (since the end of the warm-up).
    pub fn backlog(&mut self, at: Duration, n: usize) {
        let t = self.tick(at);
        t.backlog = t.backlog.max(n.min(u32::MAX as usize) as u32);
    }

    /// Records one measured request of `route` due `at` (since the end of the warm-up);
    /// `expect` is the route's expected statuses.
    pub fn record(
        &mut self,
        at: Duration,
        route: usize,
        expect: Option<&[u16]>,
        latency: Duration,
        outcome: Outcome,
    ) {
        let Some(r) = self.routes.get_mut(route) else {
            return;
        };
        let us = latency.as_micros().min(u128::from(u32::MAX)) as u32;
        let (answered, ok) = match outcome {
            Outcome::Answer { status, reason } => {
                put(&mut r.latency, u64::from(us));
                r.max_us = r.max_us.max(u64::from(us));
                *r.statuses.entry(status).or_default() += 1;
                let expected = match expect {
                    Some(list) => list.contains(&status),
                    None => (200..300).contains(&status),
                };
                let reason = reason.unwrap_or_else(|| "(none)".into());
                if !(200..300).contains(&status) {
                    count_reason(&mut r.refusal_reasons, format!("{status} {reason}"));
                }
                if expected {
                    r.ok += 1;
                } else {
                    r.errors += 1;
                    *r.errors_by_status.entry(status).or_default() += 1;
                    count_reason(&mut r.errors_by_reason, reason);
                }
                (true, expected)
            }
            Outcome::Failed(f) => {
                r.errors += 1;
                count_reason(&mut r.errors_by_reason, f.as_str().into());
                (false, false)
            }
        };
        let tick = self.tick(at);
        tick.requests += 1;
        if !ok {
            tick.errors += 1;
        }
        if answered {
            tick.max_us = tick.max_us.max(us);
        }
    }

    pub fn merge(&mut self, other: Recorder) {
        if self.timeline.len() < other.timeline.len() {
            self.timeline.resize(other.timeline.len(), Tick::default());
        }
        for (a, b) in self.timeline.iter_mut().zip(&other.timeline) {
            a.requests += b.requests;
            a.errors += b.errors;
            a.max_us = a.max_us.max(b.max_us);
            a.backlog = a.backlog.max(b.backlog);
        }
        for (a, b) in self.routes.iter_mut().zip(other.routes) {
            add_counts(a, &b);
        }
    }
}

/// Adds `b`'s counts and latencies to `a`.
fn add_counts(a: &mut RouteRec, b: &RouteRec) {
    // Auto-resizing histograms of one precision always add.
    let _ = a.latency.add(&b.latency);
    a.max_us = a.max_us.max(b.max_us);
    for (k, v) in &b.statuses {
        *a.statuses.entry(*k).or_default() += v;
    }
    for (k, v) in &b.errors_by_status {
        *a.errors_by_status.entry(*k).or_default() += v;
    }
    for (k, v) in &b.errors_by_reason {
        if a.errors_by_reason.len() >= MAX_REASONS && !a.errors_by_reason.contains_key(k) {
            *a.errors_by_reason.entry("(other)".into()).or_default() += v;
        } else {
            *a.errors_by_reason.entry(k.clone()).or_default() += v;
        }
    }
    for (k, v) in &b.refusal_reasons {
        if a.refusal_reasons.len() >= MAX_REASONS && !a.refusal_reasons.contains_key(k) {
            *a.refusal_reasons.entry("(other)".into()).or_default() += v;
        } else {
            *a.refusal_reasons.entry(k.clone()).or_default() += v;
        }
    }
    a.ok += b.ok;
    a.errors += b.errors;
}

/// Latency percentiles in microseconds: nearest rank, to 3 significant digits (the top of the
/// histogram bucket that holds the exact value, at most the exact maximum); `max_us` is exact.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Latency {
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

/// The nearest-rank `q` quantile of `h`, capped at the exact maximum `max`; 0 when empty.
fn quantile(h: &Histogram<u64>, q: f64, max: u64) -> u64 {
    if h.is_empty() {
        return 0;
    }
    h.value_at_quantile(q).min(max)
}

impl Latency {
    fn of(h: &Histogram<u64>, max: u64) -> Latency {
        Latency {
            p50_us: quantile(h, 0.50, max),
            p90_us: quantile(h, 0.90, max),
            p99_us: quantile(h, 0.99, max),
            p999_us: quantile(h, 0.999, max),
            max_us: if h.is_empty() { 0 } else { max },
        }
    }
}

/// One point of the latency distribution.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct Quantile {
    pub quantile: f64,
    pub us: u64,
}

/// The percentile curve of `h`: evenly spaced in `-log10(1 - q)` from 0 to 99.99 %, then 100 %.
fn distribution(h: &Histogram<u64>, max: u64) -> Vec<Quantile> {
    if h.is_empty() {
        return Vec::new();
    }
    let mut out: Vec<Quantile> = (0..=80)
        .map(|i| {
            let q = 1.0 - 10f64.powf(-f64::from(i) / 20.0);
            Quantile {
                quantile: q,
                us: quantile(h, q, max),
            }
        })
        .collect();
    out.push(Quantile {
        quantile: 1.0,
        us: max,
    });
    out
}

/// What every worker reports while the run goes on: counts and the overall histogram for the
/// progress line, and the per-second histograms of the timeline. One lock per measured request;
/// at the rates one generator reaches it is not contended enough to matter.
pub struct Live {
    inner: Mutex<LiveInner>,
    /// Seconds a second's histogram stays open after a newer second is seen.
    window: usize,
}

struct LiveInner {
    requests: u64,
    errors: u64,
    total: Histogram<u64>,
    total_max: u64,
    /// Seconds whose answers may still come: second → histogram.
    open: BTreeMap<usize, Histogram<u64>>,
    /// p50 and p99 of each closed second.
    closed: Vec<(u32, u32)>,
    newest: usize,
}

/// What the progress line shows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    pub requests: u64,
    pub errors: u64,
    pub p99_us: u64,
}

fn clamp32(v: u64) -> u32 {
    v.min(u64::from(u32::MAX)) as u32
}

impl Live {
    /// `timeout`: the target's; an answer comes at most that long after its second.
    pub fn new(timeout: Duration) -> Live {
        Live {
            inner: Mutex::new(LiveInner {
                requests: 0,
                errors: 0,
                total: histogram(),
                total_max: 0,
                open: BTreeMap::new(),
                closed: Vec::new(),
                newest: 0,
            }),
            window: timeout.as_secs() as usize + 2,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LiveInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes one measured request due `at`: its latency when answered, and whether it counts
    /// as an error.
    pub fn record(&self, at: Duration, latency_us: Option<u64>, error: bool) {
        let sec = second(at);
        let mut l = self.lock();
        l.requests += 1;
        if error {
            l.errors += 1;
        }
        let Some(us) = latency_us else {
            return;
        };
        put(&mut l.total, us);
        l.total_max = l.total_max.max(us);
        if sec < l.closed.len() {
            // Its second is already reduced to percentiles (see `Tick::p50_us`).
            return;
        }
        put(l.open.entry(sec).or_insert_with(histogram), us);
        if sec > l.newest {
            l.newest = sec;
            let keep_from = sec.saturating_sub(self.window);
            l.close_before(keep_from);
        }
    }

    /// The counts so far and the p99 of every answer so far.
    pub fn progress(&self) -> Progress {
        let l = self.lock();
        Progress {
            requests: l.requests,
            errors: l.errors,
            p99_us: quantile(&l.total, 0.99, l.total_max),
        }
    }

    /// p50 and p99 of each second, every second closed (at the end of the run).
    pub fn finish(&self) -> Vec<(u32, u32)> {
        let mut l = self.lock();
        l.close_before(usize::MAX);
        std::mem::take(&mut l.closed)
    }
}

impl LiveInner {
    /// Reduces every open second before `end` to its p50 and p99.
    fn close_before(&mut self, end: usize) {
        while let Some(entry) = self.open.first_entry() {
            if *entry.key() >= end {
                break;
            }
            let (sec, h) = entry.remove_entry();
            if self.closed.len() <= sec {
                self.closed.resize(sec + 1, (0, 0));
            }
            // `max` of the histogram is rounded up; cap at it only to stay in the bucket.
            let top = h.max();
            self.closed[sec] = (
                clamp32(quantile(&h, 0.50, top)),
                clamp32(quantile(&h, 0.99, top)),
            );
        }
        // Seconds with no answer up to the newest closed one stay (0, 0).
        if end != usize::MAX && self.closed.len() < end.min(self.newest) {
            self.closed.resize(end.min(self.newest), (0, 0));
        }
    }
}

/// The figures of one route, or of the whole run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Figures {
    /// Answers received (any status).
    pub requests: u64,
    /// Answers with an expected status.
    pub ok: u64,
    pub rps: f64,
    pub ok_rps: f64,
    pub latency: Latency,
    pub statuses: BTreeMap<u16, u64>,
    /// Unexpected answers and requests without an answer.
    pub errors: u64,
    /// `errors / (answers + requests without an answer)`.
    pub error_rate: f64,
    pub errors_by_status: BTreeMap<u16, u64>,
    pub errors_by_reason: BTreeMap<String, u64>,
    /// Every answer that was not 2xx, expected or not, by `STATUS reason` (at most 64 kinds,
    /// more as `(other)`): what a refusal check saw.
    pub refusals: BTreeMap<String, u64>,
    /// The statuses the route expects (`None`: any 2xx); for routes, not the total.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expect: Option<Vec<u16>>,
}

fn figures(r: &RouteRec, seconds: f64) -> Figures {
    let requests = r.latency.len();
    let attempts = requests + (r.errors - (requests - r.ok));
    Figures {
        requests,
        ok: r.ok,
        rps: requests as f64 / seconds,
        ok_rps: r.ok as f64 / seconds,
        latency: Latency::of(&r.latency, r.max_us),
        statuses: r.statuses.clone(),
        errors: r.errors,
        error_rate: if attempts == 0 {
            0.0
        } else {
            r.errors as f64 / attempts as f64
        },
        errors_by_status: r.errors_by_status.clone(),
        errors_by_reason: r.errors_by_reason.clone(),
        refusals: r.refusal_reasons.clone(),
        expect: None,
    }
}

/// One threshold and whether the run met it.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub name: String,
    pub limit: f64,
    pub actual: f64,
    pub passed: bool,
}

/// The whole run.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub scenario: String,
    /// `closed` or `open`.
    pub mode: &'static str,
    pub protocol: &'static str,
    pub connections: usize,
    /// Open loop: the arrival rate asked for.
    pub rate: Option<f64>,
    /// From the end of the warm-up to the last measured answer.
    pub seconds: f64,
    pub warmup_seconds: f64,
    #[serde(flatten)]
    pub total: Figures,
    pub routes: BTreeMap<String, Figures>,
    pub tokens_minted: u64,
    /// Requests sent again at once with a server-provided DPoP nonce.
    pub dpop_nonce_retries: u64,
    /// Requests sent again with a new token after a `token.expired` refusal
    /// (`refresh: on_expiry`).
    pub token_refreshes: u64,
    pub thresholds: Vec<Check>,
    pub passed: bool,
    /// Unix time (seconds) of the end of the warm-up: second 0 of the timeline.
    pub started_unix_s: f64,
    pub timeline: Vec<Tick>,
    /// How the percentiles were measured ([`PRECISION`]).
    pub latency_precision: &'static str,
    /// The percentile curve of every answer (for the HTML report's distribution plot).
    pub latency_distribution: Vec<Quantile>,
}

/// What [`Summary::build`] needs besides the recorder.
pub struct RunFacts<'a> {
    pub scenario: &'a str,
    pub route_names: Vec<&'a str>,
    pub mode: &'static str,
    pub protocol: &'static str,
    pub connections: usize,
    pub rate: Option<f64>,
    pub seconds: f64,
    pub warmup: Duration,
    pub tokens_minted: u64,
    pub dpop_nonce_retries: u64,
    pub token_refreshes: u64,
    pub thresholds: super::scenario::Thresholds,
    pub started_unix_s: f64,
    /// Each route's expected statuses, in `route_names` order (`None`: any 2xx).
    pub route_expect: Vec<Option<Vec<u16>>>,
    /// p50 and p99 of each second ([`Live::finish`]).
    pub second_percentiles: Vec<(u32, u32)>,
}

impl Summary {
    pub fn build(mut rec: Recorder, f: RunFacts<'_>) -> Summary {
        let seconds = f.seconds.max(1e-9);
        let mut all = RouteRec::default();
        let mut routes = BTreeMap::new();
        for (i, (name, r)) in f.route_names.iter().zip(rec.routes.iter()).enumerate() {
            let mut fig = figures(r, seconds);
            fig.expect = f.route_expect.get(i).cloned().flatten();
            add_counts(&mut all, r);
            routes.insert((*name).to_string(), fig);
        }
        let total = figures(&all, seconds);
        let mut timeline = std::mem::take(&mut rec.timeline);
        for (t, &(p50, p99)) in timeline.iter_mut().zip(&f.second_percentiles) {
            t.p50_us = p50.min(t.max_us);
            t.p99_us = p99.min(t.max_us);
        }
        let t = f.thresholds;
        let mut checks = Vec::new();
        if let Some(min) = t.min_rps {
            checks.push(Check {
                name: "min_rps".into(),
                limit: min,
                actual: total.ok_rps,
                passed: total.ok_rps >= min,
            });
        }
        if let Some(max) = t.max_p99_ms {
            let p99 = total.latency.p99_us as f64 / 1000.0;
            checks.push(Check {
                name: "max_p99_ms".into(),
                limit: max,
                actual: p99,
                passed: total.requests > 0 && p99 <= max,
            });
        }
        let max_err = t.max_error_rate.unwrap_or(0.0);
        checks.push(Check {
            name: "max_error_rate".into(),
            limit: max_err,
            actual: total.error_rate,
            passed: total.error_rate <= max_err,
        });
        let passed = total.requests > 0 && checks.iter().all(|c| c.passed);
        Summary {
            scenario: f.scenario.to_string(),
            mode: f.mode,
            protocol: f.protocol,
            connections: f.connections,
            rate: f.rate,
            seconds: f.seconds,
            warmup_seconds: f.warmup.as_secs_f64(),
            total,
            routes,
            tokens_minted: f.tokens_minted,
            dpop_nonce_retries: f.dpop_nonce_retries,
            token_refreshes: f.token_refreshes,
            thresholds: checks,
            passed,
            started_unix_s: f.started_unix_s,
            timeline,
            latency_precision: PRECISION,
            latency_distribution: distribution(&all.latency, all.max_us),
        }
    }

    /// The human-readable report.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let load = match self.rate {
            Some(r) => format!(
                "open loop at {r} req/s over {} connections",
                self.connections
            ),
            None => format!("closed loop, {} connections", self.connections),
        };
        let _ = writeln!(
            s,
            "scenario {}: {load}, {}; {:.2} s measured after a {:.1} s warm-up",
            self.scenario, self.protocol, self.seconds, self.warmup_seconds
        );
        let _ = writeln!(
            s,
            "tokens minted {}, DPoP nonce retries {}, token refreshes after expiry {}; latency percentiles by {}",
            self.tokens_minted, self.dpop_nonce_retries, self.token_refreshes, self.latency_precision
        );
        figures_text(&mut s, "all", &self.total);
        if self.routes.len() > 1 {
            for (name, f) in &self.routes {
                figures_text(&mut s, name, f);
            }
        }
        let _ = writeln!(s, "thresholds");
        for c in &self.thresholds {
            let _ = writeln!(
                s,
                "  {} {:<15} limit {} actual {:.4}",
                if c.passed { "ok  " } else { "FAIL" },
                c.name,
                c.limit,
                c.actual
            );
        }
        if self.total.requests == 0 {
            let _ = writeln!(s, "  FAIL no request was answered");
        }
        let _ = writeln!(
            s,
            "result: {}",
            if self.passed { "PASSED" } else { "FAILED" }
        );
        s
    }
}

fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

fn figures_text(s: &mut String, name: &str, f: &Figures) {
    let l = &f.latency;
    let _ = writeln!(
        s,
        "{name}: {} answers ({} ok) = {:.1} req/s ({:.1} ok/s)",
        f.requests, f.ok, f.rps, f.ok_rps
    );
    let _ = writeln!(
        s,
        "  latency ms  p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
        ms(l.p50_us),
        ms(l.p90_us),
        ms(l.p99_us),
        ms(l.p999_us),
        ms(l.max_us)
    );
    let statuses: Vec<String> = f
        .statuses
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    let _ = writeln!(s, "  statuses    {}", statuses.join(", "));
    if f.errors > 0 {
        let by_status: Vec<String> = f
            .errors_by_status
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        let by_reason: Vec<String> = f
            .errors_by_reason
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        let _ = writeln!(
            s,
            "  errors      {} ({:.3}%); by status {}; by reason {}",
            f.errors,
            f.error_rate * 100.0,
            if by_status.is_empty() {
                "-".into()
            } else {
                by_status.join(", ")
            },
            by_reason.join(", ")
        );
    } else {
        let _ = writeln!(s, "  errors      0");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, reason: Option<&str>) -> Outcome {
        Outcome::Answer {
            status,
            reason: reason.map(str::to_string),
        }
    }

    #[test]
    fn errors_are_unexpected_statuses_and_requests_without_an_answer() {
        let mut a = Recorder::new(2);
        let ms = Duration::from_millis;
        let s = Duration::from_secs;
        a.record(s(0), 0, None, ms(1), answer(200, None));
        a.record(
            s(2),
            0,
            None,
            ms(2),
            answer(401, Some("binding.dpop_replay")),
        );
        a.backlog(ms(2500), 7);
        let mut b = Recorder::new(2);
        b.record(ms(300), 1, Some(&[201]), ms(3), answer(201, None));
        b.record(ms(2100), 1, Some(&[201]), ms(4), answer(200, None));
        b.record(
            ms(2200),
            1,
            Some(&[201]),
            ms(0),
            Outcome::Failed(Failure::Late),
        );
        b.backlog(ms(2900), 5);
        b.backlog(s(3), 2);
        a.merge(b);
        let s = Summary::build(
            a,
            RunFacts {
                scenario: "t",
                route_names: vec!["r0", "r1"],
                mode: "closed",
                protocol: "http1",
                connections: 1,
                rate: None,
                seconds: 1.0,
                warmup: Duration::ZERO,
                tokens_minted: 1,
                dpop_nonce_retries: 0,
                token_refreshes: 0,
                thresholds: super::super::scenario::Thresholds {
                    max_error_rate: Some(0.5),
                    ..Default::default()
                },
                started_unix_s: 1.5,
                route_expect: vec![None, Some(vec![201])],
                second_percentiles: vec![(1000, 3001), (0, 0), (2000, 4000)],
            },
        );
        assert_eq!(s.total.requests, 4);
        assert_eq!(s.total.ok, 2);
        assert_eq!(s.total.errors, 3);
        assert!((s.total.error_rate - 0.6).abs() < 1e-9);
        assert_eq!(
            s.total.errors_by_status,
            BTreeMap::from([(200, 1), (401, 1)])
        );
        assert_eq!(s.total.errors_by_reason["binding.dpop_replay"], 1);
        assert_eq!(s.total.errors_by_reason["(none)"], 1);
        assert_eq!(s.total.errors_by_reason["loadgen.late"], 1);
        assert_eq!(s.routes["r1"].errors, 2);
        assert_eq!(s.total.latency.max_us, 4000);
        assert_eq!(s.total.latency.p50_us, 2000);
        assert!(!s.passed, "0.6 > 0.5");
        let tick = |requests, errors, max_us, backlog, p50_us, p99_us| Tick {
            requests,
            errors,
            max_us,
            backlog,
            p50_us,
            p99_us,
        };
        assert_eq!(
            s.timeline,
            vec![
                tick(2, 0, 3000, 0, 1000, 3000),
                tick(0, 0, 0, 0, 0, 0),
                tick(3, 3, 4000, 7, 2000, 4000),
                tick(0, 0, 0, 2, 0, 0),
            ],
            "per second: requests, errors, slowest answer, largest backlog, p50, p99 \
             (a rounded-up p99 capped at the exact maximum)"
        );
        assert_eq!(s.routes["r1"].expect, Some(vec![201]));
        assert_eq!(s.routes["r0"].expect, None);
        assert_eq!(s.total.refusals["401 binding.dpop_replay"], 1);
        assert_eq!(s.latency_precision, PRECISION);
        let last = s.latency_distribution.last().unwrap();
        assert_eq!((last.quantile, last.us), (1.0, 4000));
        assert_eq!(s.started_unix_s, 1.5);
    }

    fn hist(values: &[u64]) -> Histogram<u64> {
        let mut h = histogram();
        for &v in values {
            put(&mut h, v);
        }
        h
    }

    /// The exact nearest-rank percentile of a sorted list.
    fn exact(sorted: &[u64], p: f64) -> u64 {
        let rank = (sorted.len() as f64 * p).ceil() as usize;
        sorted[rank.clamp(1, sorted.len()) - 1]
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        // Below 2048 us a 3-digit histogram has unit buckets: exact.
        let v: Vec<u64> = (1..=1000).collect();
        let l = Latency::of(&hist(&v), 1000);
        assert_eq!(
            (l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us),
            (500, 900, 990, 999, 1000)
        );
        assert_eq!(Latency::of(&histogram(), 0), Latency::default());
    }

    #[test]
    fn histogram_percentiles_are_within_three_significant_digits_of_the_exact_ones() {
        // A skewed spread from 50 us to about 40 s, in a fixed pseudo-random order.
        let mut v: Vec<u64> = (0..5000u64)
            .map(|i| {
                let x = (i.wrapping_mul(2_654_435_761) % 5000) as f64 / 5000.0;
                50 + (x.powi(6) * 4.0e7) as u64
            })
            .collect();
        let h = hist(&v);
        v.sort_unstable();
        let max = *v.last().unwrap();
        for p in [0.0, 0.25, 0.5, 0.9, 0.99, 0.999, 1.0] {
            let want = exact(&v, p);
            let got = quantile(&h, p, max);
            assert!(
                got >= want && got as f64 <= want as f64 * 1.001 + 1.0,
                "p{p}: histogram {got}, exact {want}"
            );
        }
        assert_eq!(Latency::of(&h, max).max_us, max);
    }

    #[test]
    fn the_timeline_keeps_histograms_only_for_seconds_still_answered() {
        let s = Duration::from_secs;
        let live = Live::new(Duration::from_secs(1));
        for us in 1..=100 {
            live.record(s(0), Some(us), false);
        }
        live.record(s(1), Some(7), false);
        live.record(s(1), None, true);
        assert_eq!(live.lock().open.len(), 2);
        // Second 5 is more than the window (timeout 1 s + 2) past seconds 0 and 1: both close.
        live.record(s(5), Some(9), false);
        assert_eq!(live.lock().open.len(), 1);
        // An answer for a closed second still counts, but not in its percentiles.
        live.record(s(0), Some(1_000_000), true);
        let p = live.progress();
        assert_eq!((p.requests, p.errors), (104, 2));
        assert_eq!(p.p99_us, 100, "the p99 so far covers every answer");
        let sec = live.finish();
        assert_eq!(sec, vec![(50, 99), (7, 7), (0, 0), (0, 0), (0, 0), (9, 9)]);
    }
}
