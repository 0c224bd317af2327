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
//! time in the closed loop), requests, errors, the slowest answer and (open loop) the most
//! requests queued or under way at once — where in a long run the errors and stalls were.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

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

#[derive(Default)]
struct RouteRec {
    latencies_us: Vec<u32>,
    statuses: BTreeMap<u16, u64>,
    errors_by_status: BTreeMap<u16, u64>,
    errors_by_reason: BTreeMap<String, u64>,
    ok: u64,
    errors: u64,
}

/// One second of the run.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Tick {
    /// Measured requests due in this second (answered or not).
    pub requests: u64,
    pub errors: u64,
    /// The slowest answer of a request due in this second.
    pub max_us: u32,
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
                r.latencies_us.push(us);
                *r.statuses.entry(status).or_default() += 1;
                let expected = match expect {
                    Some(list) => list.contains(&status),
                    None => (200..300).contains(&status),
                };
                if expected {
                    r.ok += 1;
                } else {
                    r.errors += 1;
                    *r.errors_by_status.entry(status).or_default() += 1;
                    *r.errors_by_reason
                        .entry(reason.unwrap_or_else(|| "(none)".into()))
                        .or_default() += 1;
                }
                (true, expected)
            }
            Outcome::Failed(f) => {
                r.errors += 1;
                *r.errors_by_reason.entry(f.as_str().into()).or_default() += 1;
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
            a.latencies_us.extend(b.latencies_us);
        }
    }
}

/// Adds `b`'s counts (not its latencies) to `a`.
fn add_counts(a: &mut RouteRec, b: &RouteRec) {
    for (k, v) in &b.statuses {
        *a.statuses.entry(*k).or_default() += v;
    }
    for (k, v) in &b.errors_by_status {
        *a.errors_by_status.entry(*k).or_default() += v;
    }
    for (k, v) in &b.errors_by_reason {
        *a.errors_by_reason.entry(k.clone()).or_default() += v;
    }
    a.ok += b.ok;
    a.errors += b.errors;
}

/// Latency percentiles in microseconds (nearest rank).
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Latency {
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

fn percentile(sorted: &[u32], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (sorted.len() as f64 * p).ceil() as usize;
    u64::from(sorted[rank.clamp(1, sorted.len()) - 1])
}

impl Latency {
    fn of(sorted: &[u32]) -> Latency {
        Latency {
            p50_us: percentile(sorted, 0.50),
            p90_us: percentile(sorted, 0.90),
            p99_us: percentile(sorted, 0.99),
            p999_us: percentile(sorted, 0.999),
            max_us: sorted.last().copied().map_or(0, u64::from),
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
}

fn figures(r: &mut RouteRec, seconds: f64) -> Figures {
    r.latencies_us.sort_unstable();
    let requests = r.latencies_us.len() as u64;
    let attempts = requests + (r.errors - (requests - r.ok));
    Figures {
        requests,
        ok: r.ok,
        rps: requests as f64 / seconds,
        ok_rps: r.ok as f64 / seconds,
        latency: Latency::of(&r.latencies_us),
        statuses: r.statuses.clone(),
        errors: r.errors,
        error_rate: if attempts == 0 {
            0.0
        } else {
            r.errors as f64 / attempts as f64
        },
        errors_by_status: r.errors_by_status.clone(),
        errors_by_reason: r.errors_by_reason.clone(),
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
    pub thresholds: Vec<Check>,
    pub passed: bool,
    /// Unix time (seconds) of the end of the warm-up: second 0 of the timeline.
    pub started_unix_s: f64,
    pub timeline: Vec<Tick>,
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
    pub thresholds: super::scenario::Thresholds,
    pub started_unix_s: f64,
}

impl Summary {
    pub fn build(mut rec: Recorder, f: RunFacts<'_>) -> Summary {
        let seconds = f.seconds.max(1e-9);
        let mut all = RouteRec::default();
        let mut routes = BTreeMap::new();
        for (name, r) in f.route_names.iter().zip(rec.routes.iter_mut()) {
            let fig = figures(r, seconds);
            all.latencies_us.extend_from_slice(&r.latencies_us);
            add_counts(&mut all, r);
            routes.insert((*name).to_string(), fig);
        }
        let total = figures(&mut all, seconds);
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
            thresholds: checks,
            passed,
            started_unix_s: f.started_unix_s,
            timeline: std::mem::take(&mut rec.timeline),
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
            "tokens minted {}, DPoP nonce retries {}",
            self.tokens_minted, self.dpop_nonce_retries
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
                thresholds: super::super::scenario::Thresholds {
                    max_error_rate: Some(0.5),
                    ..Default::default()
                },
                started_unix_s: 1.5,
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
        let tick = |requests, errors, max_us, backlog| Tick {
            requests,
            errors,
            max_us,
            backlog,
        };
        assert_eq!(
            s.timeline,
            vec![
                tick(2, 0, 3000, 0),
                tick(0, 0, 0, 0),
                tick(3, 3, 4000, 7),
                tick(0, 0, 0, 2),
            ],
            "per second: requests, errors, slowest answer, largest backlog"
        );
        assert_eq!(s.started_unix_s, 1.5);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<u32> = (1..=1000).collect();
        let l = Latency::of(&v);
        assert_eq!(
            (l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us),
            (500, 900, 990, 999, 1000)
        );
        assert_eq!(Latency::of(&[]), Latency::default());
    }
}
