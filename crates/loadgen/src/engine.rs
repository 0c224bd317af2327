//! The load loops: closed (each connection sends its next request when the last is answered)
//! and open (requests arrive at a fixed rate whatever the answers).
//!
//! Workers: `connections` tasks, each holding one connection per client it has sent for (a
//! connection presents one client certificate) and its own [`Recorder`]. Which route and client
//! a request uses is drawn from the scenario's weighted mix by a counter-based hash, so a run is
//! repeatable and needs no shared random state.
//!
//! Closed loop: a request's latency is the time from handing it to the connection to the end of
//! its answer (a DPoP-nonce retry included). Open loop: a dispatcher schedules request `i` at
//! `start + i / rate` and queues it; a worker takes it when free, and its latency runs from the
//! *intended* send time — time spent waiting behind a stalled server counts, so coordinated
//! omission cannot hide a stall. At most `max_outstanding` requests are queued or under way; a
//! request due when that many are is not sent and is counted as an error (`loadgen.not_sent`).
//! The target's timeout, too, runs from the intended time: a request that waited for a free
//! connection until it passed is not sent (`loadgen.late`), and one sent later has what is left.
//!
//! Warm-up requests are sent like the others and not recorded. The measured time runs from the
//! end of the warm-up to the last measured answer.
//!
//! With progress on, a line a second on standard error: elapsed time, requests, errors, the
//! rate over the last second and the p99 so far (from the shared [`Live`]). On a terminal it
//! rewrites one line; elsewhere (a log file, `--progress` in a script) it prints one per second.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use super::fapi::Fapi;
use super::report::{Failure, Live, Outcome, Recorder, RunFacts, Summary};
use super::scenario::{Mode, Pair, Scenario, Stop};
use portcullis_tools::client::{Answer, BoxError, Conn};

/// SplitMix64: a well-mixed hash of a counter.
fn mix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The weighted mix as cumulative weights.
struct Picker {
    pairs: Vec<Pair>,
    cumulative: Vec<u64>,
}

impl Picker {
    fn new(pairs: &[Pair]) -> Picker {
        let mut sum = 0;
        let cumulative = pairs
            .iter()
            .map(|p| {
                sum += p.weight;
                sum
            })
            .collect();
        Picker {
            pairs: pairs.to_vec(),
            cumulative,
        }
    }

    /// The pair of request number `n`.
    fn pick(&self, n: u64) -> Pair {
        let total = self.cumulative.last().copied().unwrap_or(1).max(1);
        let x = mix64(n) % total;
        let i = self.cumulative.partition_point(|&c| c <= x);
        self.pairs[i.min(self.pairs.len() - 1)]
    }
}

struct Shared {
    scenario: Arc<Scenario>,
    fapi: Fapi,
    picker: Picker,
    nonce_retries: AtomicU64,
    /// Requests sent again with a new token after a `token.expired` refusal.
    token_refreshes: AtomicU64,
    live: Live,
}

/// A worker's connections, one per client, opened when first needed.
struct Worker {
    shared: Arc<Shared>,
    conns: Vec<Option<Conn>>,
    rec: Recorder,
    /// The end of the warm-up: second 0 of the timeline.
    measure_start: Instant,
}

/// The `reason` member of a problem+json body.
fn reason(a: &Answer) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(&a.body).ok()?;
    let r = v.get("reason")?.as_str()?;
    Some(r.chars().take(80).collect())
}

impl Worker {
    fn new(shared: Arc<Shared>, measure_start: Instant) -> Worker {
        let (routes, clients) = (shared.scenario.routes.len(), shared.scenario.clients.len());
        Worker {
            shared,
            conns: (0..clients).map(|_| None).collect(),
            rec: Recorder::new(routes),
            measure_start,
        }
    }

    /// Sends one request of `pair`, connecting and answering within `budget`; returns the
    /// instant it was handed to the connection.
    async fn exec(&mut self, pair: Pair, budget: Duration) -> (Instant, Outcome) {
        let s = Arc::clone(&self.shared);
        let t = &s.scenario.target;
        let slot = &mut self.conns[pair.client];
        if slot.as_ref().is_none_or(|c| !c.is_open()) {
            let connect = async {
                match &s.scenario.clients[pair.client].tls {
                    Some(tls) => Conn::connect(t.address, &t.server_name, Arc::clone(tls)).await,
                    None => Conn::connect_plain(t.address, s.scenario.load.http2).await,
                }
            };
            match tokio::time::timeout(budget, connect).await {
                Ok(Ok(c)) => *slot = Some(c),
                _ => {
                    *slot = None;
                    return (Instant::now(), Outcome::Failed(Failure::Connect));
                }
            }
        }
        let Some(conn) = slot.as_mut() else {
            return (Instant::now(), Outcome::Failed(Failure::Connect));
        };
        let mut sent = None;
        let mut retried = false;
        let mut refreshed = false;
        loop {
            let Ok(req) = s.fapi.request(pair.route, pair.client) else {
                return (Instant::now(), Outcome::Failed(Failure::Build));
            };
            let start = *sent.get_or_insert_with(Instant::now);
            let answer = match tokio::time::timeout(budget, conn.send(req)).await {
                Ok(Ok(a)) => a,
                Ok(Err(_)) => {
                    *slot = None;
                    return (start, Outcome::Failed(Failure::ConnectionLost));
                }
                Err(_) => {
                    *slot = None;
                    return (start, Outcome::Failed(Failure::Timeout));
                }
            };
            // RFC 9449 §8: a server that wants a nonce answers 401 use_dpop_nonce with one;
            // send again once with a proof carrying it.
            if s.fapi.observe(&answer) && s.fapi.uses_dpop(pair.client) && !retried {
                retried = true;
                s.nonce_retries.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let status = answer.status.as_u16();
            let reason = (!answer.status.is_success())
                .then(|| reason(&answer))
                .flatten();
            // `refresh: on_expiry`: the client learns its token ended from the refusal, gets
            // a new one and sends the request again once (the refusal is the proxy's to count).
            if status == 401
                && !refreshed
                && reason.as_deref() == Some("token.expired")
                && s.fapi.refreshes_on_expiry(pair.client)
            {
                refreshed = true;
                s.token_refreshes.fetch_add(1, Ordering::Relaxed);
                s.fapi.refresh(pair.client);
                continue;
            }
            return (start, Outcome::Answer { status, reason });
        }
    }

    /// Records a measured request of `pair` due at `due`.
    fn record(&mut self, due: Instant, pair: Pair, latency: Duration, outcome: Outcome) {
        let expect = self.shared.scenario.routes[pair.route].expect.as_deref();
        let at = due.saturating_duration_since(self.measure_start);
        record_live(&self.shared.live, at, expect, latency, &outcome);
        self.rec.record(at, pair.route, expect, latency, outcome);
    }
}

/// Notes a measured request in the shared [`Live`] (the same error rule as the recorder's).
fn record_live(
    live: &Live,
    at: Duration,
    expect: Option<&[u16]>,
    latency: Duration,
    outcome: &Outcome,
) {
    let us = latency.as_micros().min(u128::from(u32::MAX)) as u64;
    match outcome {
        Outcome::Answer { status, .. } => {
            let ok = match expect {
                Some(list) => list.contains(status),
                None => (200..300).contains(status),
            };
            live.record(at, Some(us), !ok);
        }
        Outcome::Failed(_) => live.record(at, None, true),
    }
}

/// When the run stops: shared by the workers (closed) or the dispatcher (open).
struct Clock {
    measure_start: Instant,
    stop: Stop,
    /// Requests started after the warm-up (for `Stop::Requests`).
    issued: AtomicU64,
}

impl Clock {
    /// Whether a request may start at `now`; `Some(measured)` if so.
    fn admit(&self, now: Instant) -> Option<bool> {
        let measured = now >= self.measure_start;
        match self.stop {
            Stop::After(d) if now >= self.measure_start + d => None,
            Stop::Requests(n) if measured => {
                (self.issued.fetch_add(1, Ordering::Relaxed) < n).then_some(true)
            }
            _ => Some(measured),
        }
    }
}

async fn closed(shared: Arc<Shared>, clock: Arc<Clock>, counter: Arc<AtomicU64>) -> Worker {
    let mut w = Worker::new(shared, clock.measure_start);
    let timeout = w.shared.scenario.target.timeout;
    while let Some(measured) = clock.admit(Instant::now()) {
        let pair = w
            .shared
            .picker
            .pick(counter.fetch_add(1, Ordering::Relaxed));
        let (start, outcome) = w.exec(pair, timeout).await;
        let latency = start.elapsed();
        let failed_connect = matches!(outcome, Outcome::Failed(Failure::Connect));
        if measured {
            w.record(start, pair, latency, outcome);
        }
        if failed_connect {
            // Do not spin on a target that refuses connections.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    w
}

struct Job {
    pair: Pair,
    intended: Instant,
    measured: bool,
    _permit: OwnedSemaphorePermit,
}

async fn open_worker(shared: Arc<Shared>, jobs: Arc<Jobs>, measure_start: Instant) -> Worker {
    let mut w = Worker::new(shared, measure_start);
    let timeout = w.shared.scenario.target.timeout;
    while let Some(job) = jobs.next().await {
        let outcome = match timeout.checked_sub(job.intended.elapsed()) {
            Some(left) if !left.is_zero() => w.exec(job.pair, left).await.1,
            _ => Outcome::Failed(Failure::Late),
        };
        if job.measured {
            w.record(job.intended, job.pair, job.intended.elapsed(), outcome);
        }
    }
    w
}

/// The open loop's queue: the dispatcher pushes, any idle worker takes. A push wakes one
/// waiting worker directly (a receiver behind a lock handed jobs out one lock hand-off at a
/// time, and the queue grew behind that chain on busy cores).
struct Jobs {
    queue: std::sync::Mutex<(std::collections::VecDeque<Job>, bool)>,
    ready: Notify,
}

impl Jobs {
    fn new() -> Jobs {
        Jobs {
            queue: std::sync::Mutex::new((std::collections::VecDeque::new(), false)),
            ready: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (std::collections::VecDeque<Job>, bool)> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, job: Job) {
        self.lock().0.push_back(job);
        self.ready.notify_one();
    }

    /// No more jobs: workers finish the queue and stop.
    fn close(&self) {
        self.lock().1 = true;
        self.ready.notify_waiters();
    }

    /// The next job, or `None` once the queue is closed and empty.
    async fn next(&self) -> Option<Job> {
        loop {
            let notified = self.ready.notified();
            tokio::pin!(notified);
            // Registered before looking, so a push between the look and the wait is not lost.
            notified.as_mut().enable();
            {
                let mut q = self.lock();
                if let Some(job) = q.0.pop_front() {
                    if !q.0.is_empty() {
                        // More are waiting: pass the wake-up on.
                        self.ready.notify_one();
                    }
                    return Some(job);
                }
                if q.1 {
                    return None;
                }
            }
            notified.await;
        }
    }
}

/// Schedules requests at `rate`; returns the recorder of the ones it could not send and of
/// the backlog.
///
/// Runs on a thread of its own and paces with the kernel's high-resolution sleep (timer slack
/// 1 ns): tokio's timer has a 1 ms tick, which sent the requests of each millisecond together,
/// up to a millisecond after their intended times — bursts no fixed-rate client makes, and a
/// delay that both the measured target and a direct baseline then carried. A request whose time
/// has passed (the thread was not scheduled in time) is sent at once; its latency still runs
/// from its intended time.
fn dispatch(
    shared: Arc<Shared>,
    clock: Arc<Clock>,
    rate: f64,
    max_outstanding: usize,
    jobs: Arc<Jobs>,
) -> Recorder {
    let mut unsent = Recorder::new(shared.scenario.routes.len());
    let permits = Arc::new(Semaphore::new(max_outstanding));
    let start = Instant::now();
    let mut i: u64 = 0;
    loop {
        let intended = start + Duration::from_secs_f64(i as f64 / rate);
        let now = Instant::now();
        if intended > now {
            std::thread::sleep(intended - now);
        }
        let Some(measured) = clock.admit(intended) else {
            break;
        };
        let pair = shared.picker.pick(i);
        i += 1;
        match Arc::clone(&permits).try_acquire_owned() {
            Ok(permit) => {
                if measured {
                    let at = intended.saturating_duration_since(clock.measure_start);
                    unsent.backlog(at, max_outstanding - permits.available_permits());
                }
                let job = Job {
                    pair,
                    intended,
                    measured,
                    _permit: permit,
                };
                jobs.push(job);
            }
            Err(_) if measured => {
                let expect = shared.scenario.routes[pair.route].expect.as_deref();
                let at = intended.saturating_duration_since(clock.measure_start);
                let outcome = Outcome::Failed(Failure::NotSent);
                record_live(&shared.live, at, expect, Duration::ZERO, &outcome);
                unsent.record(at, pair.route, expect, Duration::ZERO, outcome);
            }
            Err(_) => {}
        }
    }
    jobs.close();
    unsent
}

/// Whether to print the progress line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShowProgress {
    /// When standard error is a terminal (so not in CI or a redirected log).
    Auto,
    Always,
    Never,
}

/// The progress line at `elapsed` since the start (warm-up included).
fn progress_line(
    elapsed: Duration,
    warmup: Duration,
    p: super::report::Progress,
    rate: u64,
) -> String {
    if elapsed < warmup {
        return format!(
            "loadgen {:.0} s  warming up ({:.0} s)",
            elapsed.as_secs_f64(),
            warmup.as_secs_f64()
        );
    }
    format!(
        "loadgen {:.0} s  requests {}  errors {}  rate {rate}/s  p99 so far {:.2} ms",
        (elapsed - warmup).as_secs_f64(),
        p.requests,
        p.errors,
        p.p99_us as f64 / 1000.0
    )
}

/// Prints the progress line once a second until `done`.
async fn show_progress(shared: Arc<Shared>, warmup: Duration, terminal: bool, done: Arc<Notify>) {
    use std::io::Write as _;
    let start = Instant::now();
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    let mut last = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = done.notified() => break,
        }
        let p = shared.live.progress();
        let line = progress_line(start.elapsed(), warmup, p, p.requests - last);
        last = p.requests;
        let mut err = std::io::stderr().lock();
        // A failed write to standard error is no reason to stop the run.
        let _ = if terminal {
            write!(err, "\r{line}\x1b[K")
        } else {
            writeln!(err, "{line}")
        };
        let _ = err.flush();
    }
    if terminal {
        let _ = writeln!(std::io::stderr());
    }
}

/// Runs the scenario to its end and summarizes it.
pub async fn run(scenario: Arc<Scenario>, progress: ShowProgress) -> Result<Summary, BoxError> {
    use std::io::IsTerminal as _;
    let fapi = Fapi::new(Arc::clone(&scenario))?;
    let shared = Arc::new(Shared {
        picker: Picker::new(&scenario.mix),
        fapi,
        scenario: Arc::clone(&scenario),
        nonce_retries: AtomicU64::new(0),
        token_refreshes: AtomicU64::new(0),
        live: Live::new(scenario.target.timeout),
    });
    let terminal = std::io::stderr().is_terminal();
    let progress_done = Arc::new(Notify::new());
    let progress_task = match progress {
        ShowProgress::Always => true,
        ShowProgress::Auto => terminal,
        ShowProgress::Never => false,
    }
    .then(|| {
        tokio::spawn(show_progress(
            Arc::clone(&shared),
            scenario.load.warmup,
            terminal,
            Arc::clone(&progress_done),
        ))
    });
    let load = scenario.load;
    let started_unix_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
        + load.warmup.as_secs_f64();
    let clock = Arc::new(Clock {
        measure_start: Instant::now() + load.warmup,
        stop: load.stop,
        issued: AtomicU64::new(0),
    });
    let mut rec = Recorder::new(scenario.routes.len());
    let mut workers = Vec::new();
    let mut dispatcher = None;
    match load.mode {
        Mode::Closed => {
            let counter = Arc::new(AtomicU64::new(0));
            for _ in 0..load.connections {
                workers.push(tokio::spawn(closed(
                    Arc::clone(&shared),
                    Arc::clone(&clock),
                    Arc::clone(&counter),
                )));
            }
        }
        Mode::Open {
            rate,
            max_outstanding,
        } => {
            let jobs = Arc::new(Jobs::new());
            for _ in 0..load.connections {
                workers.push(tokio::spawn(open_worker(
                    Arc::clone(&shared),
                    Arc::clone(&jobs),
                    clock.measure_start,
                )));
            }
            let (shared, clock) = (Arc::clone(&shared), Arc::clone(&clock));
            dispatcher = Some(tokio::task::spawn_blocking(move || {
                // Best effort: without it a sleep may end up to 50 us late (the default slack).
                let _ = rustix::thread::set_current_timer_slack(std::num::NonZeroU64::new(1));
                dispatch(shared, clock, rate, max_outstanding, jobs)
            }));
        }
    }
    if let Some(d) = dispatcher {
        rec.merge(d.await?);
    }
    for w in workers {
        rec.merge(w.await?.rec);
    }
    let seconds = clock.measure_start.elapsed().as_secs_f64();
    if let Some(t) = progress_task {
        progress_done.notify_one();
        let _ = t.await;
    }
    let route_names = scenario.routes.iter().map(|r| r.name.as_str()).collect();
    let route_expect = scenario.routes.iter().map(|r| r.expect.clone()).collect();
    let nonce_retries = shared.nonce_retries.load(Ordering::Relaxed);
    let tokens_minted = shared.fapi.tokens_minted.load(Ordering::Relaxed);
    // Every worker has ended: no answer is still to come.
    let second_percentiles = shared.live.finish();
    let (mode, rate) = match load.mode {
        Mode::Closed => ("closed", None),
        Mode::Open { rate, .. } => ("open", Some(rate)),
    };
    Ok(Summary::build(
        rec,
        RunFacts {
            scenario: &scenario.name,
            route_names,
            mode,
            protocol: if load.http2 { "http2" } else { "http1" },
            connections: load.connections,
            rate,
            seconds,
            warmup: load.warmup,
            tokens_minted,
            token_refreshes: shared.token_refreshes.load(Ordering::Relaxed),
            dpop_nonce_retries: nonce_retries,
            thresholds: scenario.thresholds,
            started_unix_s,
            route_expect,
            second_percentiles,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_follows_the_weights() {
        let pairs = [
            Pair {
                route: 0,
                client: 0,
                weight: 3000,
            },
            Pair {
                route: 1,
                client: 0,
                weight: 1000,
            },
        ];
        let p = Picker::new(&pairs);
        let first = (0..100_000).filter(|&n| p.pick(n).route == 0).count();
        assert!((74_000..76_000).contains(&first), "{first}");
    }
}
