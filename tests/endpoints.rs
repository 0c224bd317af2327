//! Upstreams as endpoint sets, on loopback with real servers: `portcullis mock-bank` processes
//! killed with SIGKILL and started again, and in-process instances slowed, failing and made
//! unhealthy; the proxy's choice of endpoint, its health checks,
//! outlier ejection, breakers, bulkhead, retries and their budget, a reload that removes an
//! endpoint under a request, and a real `portcullis run` process following a DNS name whose
//! answer the test changes (a private `/etc/hosts` in a mount namespace). Each refusal is checked three ways: status and reason, nothing
//! upstream, one audit record that says why. docs/failure-behaviour.md lists each case.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use portcullis_proxy::config::file::{
    FileCircuitBreaker, FileHealthCheck, FileOutlierDetection, FileRetries, FileUpstream,
    FileUpstreamDns, FileUpstreamLimits,
};
use portcullis_proxy::config::Config;
use portcullis_tools::client::Answer;

const ACCOUNTS: &str = "/open-banking/v3.1/aisp/accounts";
const CONSENTS: &str = "/open-banking/v3.1/pisp/domestic-payment-consents";
const HEALTH: &str = "/healthz";

/// What an instance received: method, path and body.
type Seen = (String, String, Bytes);

/// A bank instance inside the test process that records what it receives and can be slowed,
/// made to fail or made unhealthy (for the cases that need those knobs; killing an instance is
/// done to a real process, see [`Bank`]).
struct Instance {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    delay: Arc<Mutex<Duration>>,
    status: Arc<AtomicU16>,
    /// What `/healthz` answers.
    health: Arc<AtomicU16>,
}

impl Instance {
    async fn start() -> Instance {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Instance::on(listener)
    }

    fn on(listener: tokio::net::TcpListener) -> Instance {
        let i = Instance {
            addr: listener.local_addr().unwrap(),
            seen: Arc::default(),
            delay: Arc::default(),
            status: Arc::new(AtomicU16::new(200)),
            health: Arc::new(AtomicU16::new(200)),
        };
        i.serve(listener);
        i
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let (seen, delay, status, health) = (
            Arc::clone(&self.seen),
            Arc::clone(&self.delay),
            Arc::clone(&self.status),
            Arc::clone(&self.health),
        );
        tokio::spawn(async move {
            loop {
                let tcp = match listener.accept().await {
                    Ok((t, _)) => t,
                    Err(_) => return,
                };
                let (seen, delay, status, health) = (
                    Arc::clone(&seen),
                    Arc::clone(&delay),
                    Arc::clone(&status),
                    Arc::clone(&health),
                );
                tokio::spawn(async move {
                    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (seen, delay, status, health) = (
                            Arc::clone(&seen),
                            Arc::clone(&delay),
                            Arc::clone(&status),
                            Arc::clone(&health),
                        );
                        async move {
                            let (parts, body) = req.into_parts();
                            let path = parts.uri.path().to_string();
                            let code = if path == HEALTH {
                                health.load(Ordering::SeqCst)
                            } else {
                                let body = body.collect().await.map(|c| c.to_bytes());
                                let body = body.unwrap_or_default();
                                let host = parts
                                    .headers
                                    .get("host")
                                    .and_then(|h| h.to_str().ok())
                                    .unwrap_or("")
                                    .to_string();
                                seen.lock().unwrap().push((
                                    parts.method.to_string(),
                                    format!("{path} host={host}"),
                                    body,
                                ));
                                let d = *delay.lock().unwrap();
                                if !d.is_zero() {
                                    tokio::time::sleep(d).await;
                                }
                                status.load(Ordering::SeqCst)
                            };
                            let mut r = http::Response::new(Full::new(Bytes::from_static(
                                b"{\"Data\":{}}",
                            )));
                            *r.status_mut() = http::StatusCode::from_u16(code).unwrap();
                            r.headers_mut()
                                .insert("content-type", "application/json".parse().unwrap());
                            Ok::<_, std::io::Error>(r)
                        }
                    });
                    let mut b = auto::Builder::new(TokioExecutor::new());
                    b.http1().timer(TokioTimer::new());
                    let _ = b.serve_connection(TokioIo::new(tcp), svc).await;
                });
            }
        });
    }

    fn set_delay(&self, d: Duration) {
        *self.delay.lock().unwrap() = d;
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

/// A `bank` upstream over `instances`, with the kit's timeouts (500 ms connect, 5 s answer).
fn set_of(instances: &[&Instance]) -> FileUpstream {
    FileUpstream {
        endpoints: instances
            .iter()
            .map(|i| format!("http://{}", i.addr))
            .collect(),
        connect_timeout: Some(dur("500ms")),
        response_timeout: Some(dur("5s")),
        ..FileUpstream::default()
    }
}

async fn proxy(up: FileUpstream) -> Proxy {
    let mut o = Options::new("127.0.0.1:9".parse().unwrap());
    *o.bank() = up;
    Proxy::start(o).await
}

fn get() -> http::Request<Full<Bytes>> {
    req("GET", ACCOUNTS).body(Full::new(Bytes::new())).unwrap()
}

fn post(n: usize) -> http::Request<Full<Bytes>> {
    req("POST", CONSENTS)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(format!("{{\"n\":{n}}}"))))
        .unwrap()
}

/// Every request the instances received, by body (POSTs) or path (GETs).
fn all_seen(instances: &[&Instance]) -> Vec<Seen> {
    instances.iter().flat_map(|i| i.seen()).collect()
}

/// Asserts an upstream refusal of `id`: status and reason in the answer, one audit record with
/// them (decision `error`, stage `upstream`) and no try made.
async fn assert_upstream_refusal(p: &Proxy, a: &Answer, id: &str, status: u16, reason: &str) {
    assert_eq!(
        a.status.as_u16(),
        status,
        "status; body {}",
        String::from_utf8_lossy(&a.body)
    );
    assert_eq!(a.json()["reason"], reason, "{}", a.json());
    assert_eq!(a.headers["x-fapi-interaction-id"], id);
    let rec = p.audit_of(id).await;
    assert_eq!(rec["reason"], reason, "{rec}");
    assert_eq!(rec["status"], status);
    assert_eq!(rec["decision"], "error");
    assert_eq!(rec["stage"], "upstream");
    assert_eq!(rec["upstream_attempts"], 0, "no try was made: {rec}");
    assert!(rec["upstream_endpoints"].is_null(), "{rec}");
}

async fn metrics(p: &Proxy) -> String {
    p.admin_get("/metrics").await.1
}

fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Polls `done` every 20 ms until it holds; past `limit`, fails with what `why` says then
/// (asked only on failure: it may read the log or the proxy's metrics).
async fn wait_until<F>(
    limit: Duration,
    mut done: impl FnMut() -> F,
    why: impl AsyncFnOnce() -> String,
) where
    F: std::future::Future<Output = bool>,
{
    let t = Instant::now();
    while !done().await {
        if t.elapsed() >= limit {
            panic!("{} ({limit:?} on)", why().await);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What a bank process recorded of one request: method, path, body SHA-256, idempotency key,
/// the `Host` it was asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Recorded {
    method: String,
    path: String,
    body_sha256: String,
    key: String,
    host: String,
}

/// A `portcullis mock-bank` process on loopback, recording every request it takes to a file
/// (one line written before each answer): an instance as it really runs, killed with SIGKILL
/// as a crashing one is, and started again on the same address.
struct Bank {
    addr: SocketAddr,
    record: std::path::PathBuf,
    delay_ms: u64,
    child: Option<ChildGuard>,
}

impl Bank {
    async fn start(dir: &std::path::Path, n: usize, delay_ms: u64) -> Bank {
        Bank::start_at(dir, n, free_addr(), delay_ms).await
    }

    async fn start_at(dir: &std::path::Path, n: usize, addr: SocketAddr, delay_ms: u64) -> Bank {
        let mut b = Bank {
            addr,
            record: dir.join(format!("bank-{n}.log")),
            delay_ms,
            child: None,
        };
        b.spawn().await;
        b
    }

    /// Starts the process and waits until it accepts connections.
    async fn spawn(&mut self) {
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["mock-bank", "--listen", &self.addr.to_string(), "--record"])
            .arg(&self.record)
            .args(["--delay-ms", &self.delay_ms.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("portcullis mock-bank");
        self.child = Some(ChildGuard(child));
        let addr = self.addr;
        wait_until(
            Duration::from_secs(10),
            || async move { tokio::net::TcpStream::connect(addr).await.is_ok() },
            async || format!("mock bank on {addr}"),
        )
        .await;
    }

    /// SIGKILL, and reaped: its listener and every connection are gone at once.
    fn kill(&mut self) {
        drop(self.child.take());
    }

    fn seen(&self) -> Vec<Recorded> {
        let text = std::fs::read_to_string(&self.record).unwrap_or_default();
        text.lines()
            .map(|l| {
                let w: Vec<&str> = l.split(' ').collect();
                assert_eq!(w.len(), 5, "record line {l:?}");
                Recorded {
                    method: w[0].into(),
                    path: w[1].into(),
                    body_sha256: w[2].into(),
                    key: w[3].into(),
                    host: w[4].into(),
                }
            })
            .collect()
    }

    fn count(&self) -> usize {
        self.seen().len()
    }
}

fn set_of_banks(banks: &[&Bank]) -> FileUpstream {
    FileUpstream {
        endpoints: banks.iter().map(|b| format!("http://{}", b.addr)).collect(),
        connect_timeout: Some(dur("500ms")),
        response_timeout: Some(dur("5s")),
        ..FileUpstream::default()
    }
}

fn banks_seen(banks: &[&Bank]) -> Vec<Recorded> {
    banks.iter().flat_map(|b| b.seen()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_bank_process_killed_under_load_fails_no_read_and_sends_no_post_twice() {
    let dir = tempfile::tempdir().unwrap();
    // A few milliseconds per answer: requests are in flight on the instance when it dies.
    let mut a = Bank::start(dir.path(), 1, 5).await;
    let b = Bank::start(dir.path(), 2, 5).await;
    let c = Bank::start(dir.path(), 3, 5).await;
    let p = Arc::new(proxy(set_of_banks(&[&a, &b, &c])).await);
    let stop = Instant::now() + Duration::from_millis(1500);
    let mut load = tokio::task::JoinSet::new();
    for w in 0..8usize {
        let p = Arc::clone(&p);
        load.spawn(async move {
            let mut c = p.client(Some("tpp1"), false).await.unwrap();
            let mut out = Vec::new();
            let mut n = 0;
            while Instant::now() < stop {
                n += 1;
                let is_post = n % 3 == 0;
                let r = if is_post {
                    post(w * 100_000 + n)
                } else {
                    get()
                };
                let a = match c.send(r).await {
                    Ok(a) => a,
                    Err(_) => {
                        c = p.client(Some("tpp1"), false).await.unwrap();
                        continue;
                    }
                };
                out.push((is_post, a.status.as_u16(), a.json()["reason"].clone()));
            }
            out
        });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.kill();
    // The process is gone and reaped: what its file holds now is all it ever took.
    let killed_at = a.count();
    let mut answers = Vec::new();
    while let Some(r) = load.join_next().await {
        answers.extend(r.unwrap());
    }
    let reads: Vec<_> = answers.iter().filter(|x| !x.0).collect();
    assert!(reads.len() > 50, "load ran: {} reads", reads.len());
    for (_, status, reason) in &reads {
        assert_eq!(*status, 200, "a read failed: {reason}");
    }
    // A POST is never sent twice: each body arrived at most once across the three processes.
    let mut bodies: Vec<String> = banks_seen(&[&a, &b, &c])
        .into_iter()
        .filter(|s| s.method == "POST")
        .map(|s| s.body_sha256)
        .collect();
    let sent = bodies.len();
    assert!(sent > 10, "POSTs reached the banks: {sent}");
    bodies.sort();
    bodies.dedup();
    assert_eq!(bodies.len(), sent, "a POST reached the set twice");
    // A POST the killed instance may have been working on fails (502) rather than repeat.
    for (_, status, reason) in answers.iter().filter(|x| x.0) {
        assert!(
            *status == 201 || (*status == 502 && reason == "upstream.bad_response"),
            "POST answered {status} {reason}"
        );
    }
    assert_eq!(a.count(), killed_at, "nothing reached the killed instance");
    assert!(b.count() > 0 && c.count() > 0, "the others served");
    // Some request found the instance dead and went on to another one.
    let retried: Vec<_> = p
        .audit()
        .into_iter()
        .filter(|r| r["upstream_attempts"].as_u64().unwrap_or(0) >= 2)
        .collect();
    assert!(!retried.is_empty(), "no request was retried");
    let first = &retried[0];
    assert_eq!(first["status"], 200, "{first}");
    assert_eq!(
        first["upstream_endpoints"][0],
        a.addr.to_string(),
        "{first}"
    );
    let m = metrics(&p).await;
    let label = format!(
        "portcullis_upstream_attempts_total{{upstream=\"bank\",endpoint=\"{}\",result=\"connect_failed\"}}",
        a.addr
    );
    assert!(metric(&m, &label) >= 1.0, "{label} in\n{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_bank_processes_killed_answer_503_at_once_with_retry_after_and_recover_through_half_open(
) {
    let dir = tempfile::tempdir().unwrap();
    let mut banks = Vec::new();
    for n in 1..=3 {
        banks.push(Bank::start(dir.path(), n, 0).await);
    }
    let mut up = set_of_banks(&banks.iter().collect::<Vec<_>>());
    // A slow connect would show: the refusal must not wait for it.
    up.connect_timeout = Some(dur("2s"));
    up.circuit_breaker = Some(FileCircuitBreaker {
        failure_threshold: Some(2),
        open_for: Some(dur("1500ms")),
        half_open_requests: Some(1),
    });
    // Only the breakers decide here, not the retry budget.
    up.retries = Some(FileRetries {
        min_retries: Some(100),
        ..FileRetries::default()
    });
    let p = proxy(up).await;
    assert_eq!(p.get(ACCOUNTS).await.0.status, 200);
    for b in banks.iter_mut() {
        b.kill();
    }
    // Connect failures open every breaker (each request tries up to three endpoints).
    let mut c1 = p.client(Some("tpp1"), false).await.unwrap();
    let mut opened = None;
    for _ in 0..10 {
        let a = c1.send(get()).await.unwrap();
        if a.json()["reason"] == "upstream.unavailable" {
            opened = Some(Instant::now());
            break;
        }
        // Refused connects; a pooled connection the kill closed may break instead.
        let reason = a.json()["reason"].clone();
        assert!(
            reason == "upstream.connect_failed" || reason == "upstream.bad_response",
            "{reason}"
        );
        assert!(a.headers.get("retry-after").is_none(), "{:?}", a.headers);
    }
    let opened = opened.expect("the breakers opened");
    let all = || banks.iter().collect::<Vec<_>>();
    let before = banks_seen(&all()).len();
    let id = uuid::Uuid::new_v4().to_string();
    let mut r = get();
    r.headers_mut()
        .insert("x-fapi-interaction-id", id.parse().unwrap());
    let t = Instant::now();
    let ans = c1.send(r).await.unwrap();
    let took = t.elapsed();
    eprintln!("all breakers open: 503 in {took:?}");
    assert!(
        took < Duration::from_millis(100),
        "answered in {took:?}: no connect was tried"
    );
    assert_upstream_refusal(&p, &ans, &id, 503, "upstream.unavailable").await;
    // The soonest breaker half-opens within `open_for` (1.5 s), rounded up to whole seconds.
    assert_eq!(ans.headers["retry-after"], "2", "{:?}", ans.headers);
    assert_eq!(banks_seen(&all()).len(), before, "nothing upstream");
    // One instance comes back; once its breaker half-opens a trial request goes through and
    // closes it; the others stay open until their own trials.
    banks[1].spawn().await;
    tokio::time::sleep(
        (opened + Duration::from_millis(1600)).saturating_duration_since(Instant::now()),
    )
    .await;
    let back = banks[1].addr.to_string();
    let mut ok = 0;
    for _ in 0..6 {
        let (ans, id) = p.get(ACCOUNTS).await;
        if ans.status == 200 {
            ok += 1;
            let rec = p.audit_of(&id).await;
            assert!(
                rec["upstream_endpoints"]
                    .as_array()
                    .unwrap()
                    .contains(&serde_json::json!(back)),
                "{rec}"
            );
        }
    }
    assert_eq!(
        ok, 6,
        "recovered: every request answered once bank 2 was back"
    );
    assert!(banks[1].count() >= 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_instance_is_ejected_and_readmitted() {
    let (a, b, c) = (
        Instance::start().await,
        Instance::start().await,
        Instance::start().await,
    );
    b.set_delay(Duration::from_secs(2));
    let mut up = set_of(&[&a, &b, &c]);
    up.retries = Some(FileRetries {
        per_try_timeout: Some(dur("150ms")),
        ..FileRetries::default()
    });
    up.outlier_detection = Some(FileOutlierDetection {
        consecutive_failures: Some(2),
        base_ejection: Some(dur("800ms")),
        max_ejection: Some(dur("5s")),
        max_ejected_percent: Some(34),
    });
    // The breaker would also take it out; this test is about ejection.
    up.circuit_breaker = Some(FileCircuitBreaker {
        failure_threshold: Some(0),
        ..FileCircuitBreaker::default()
    });
    let p = proxy(up).await;
    let mut slow_ids = Vec::new();
    for _ in 0..30 {
        let (ans, id) = p.get(ACCOUNTS).await;
        assert_eq!(ans.status, 200, "reads are retried past the slow instance");
        let rec = p.audit_of(&id).await;
        if rec["upstream_endpoints"][0] == b.addr.to_string() {
            slow_ids.push(rec);
        }
        if b.count() >= 2 {
            break;
        }
    }
    assert_eq!(b.count(), 2, "two timeouts eject it");
    let r = &slow_ids[0];
    assert_eq!(r["upstream_attempts"], 2, "{r}");
    assert_ne!(r["upstream_endpoints"][1], b.addr.to_string(), "{r}");
    let m = metrics(&p).await;
    let state = format!(
        "portcullis_upstream_endpoint_state{{upstream=\"bank\",endpoint=\"{}\",state=\"ejected\"}}",
        b.addr
    );
    assert_eq!(metric(&m, &state), 1.0, "{m}");
    // Ejected: none of the next requests goes there.
    for _ in 0..10 {
        assert_eq!(p.get(ACCOUNTS).await.0.status, 200);
    }
    assert_eq!(b.count(), 2, "an ejected endpoint gets nothing");
    // Fast again and its time is up: it is back in the set.
    b.set_delay(Duration::ZERO);
    tokio::time::sleep(Duration::from_millis(900)).await;
    for _ in 0..30 {
        assert_eq!(p.get(ACCOUNTS).await.0.status, 200);
    }
    assert!(b.count() > 2, "readmitted");
    let m = metrics(&p).await;
    let ejections = format!(
        "portcullis_upstream_ejections_total{{upstream=\"bank\",endpoint=\"{}\"}}",
        b.addr
    );
    assert_eq!(metric(&m, &ejections), 1.0, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_failing_its_health_check_gets_nothing_until_it_passes() {
    let (a, b) = (Instance::start().await, Instance::start().await);
    let mut up = set_of(&[&a, &b]);
    up.health_check = Some(FileHealthCheck {
        path: HEALTH.into(),
        interval: Some(dur("100ms")),
        timeout: Some(dur("100ms")),
        healthy_threshold: Some(2),
        unhealthy_threshold: Some(2),
    });
    let p = proxy(up).await;
    a.health.store(503, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = a.count();
    for _ in 0..10 {
        assert_eq!(p.get(ACCOUNTS).await.0.status, 200);
    }
    assert_eq!(a.count(), before, "an unhealthy endpoint gets nothing");
    a.health.store(200, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..20 {
        assert_eq!(p.get(ACCOUNTS).await.0.status, 200);
    }
    assert!(a.count() > before, "healthy again: back in the set");
    // Both unhealthy: refused at once, nothing sent.
    a.health.store(503, Ordering::SeqCst);
    b.health.store(503, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = all_seen(&[&a, &b]).len();
    let (ans, id) = p.get(ACCOUNTS).await;
    assert_upstream_refusal(&p, &ans, &id, 503, "upstream.unavailable").await;
    // Only the checks can readmit one: two passes 100 ms apart, rounded up to a second.
    assert_eq!(ans.headers["retry-after"], "1", "{:?}", ans.headers);
    assert_eq!(all_seen(&[&a, &b]).len(), before, "nothing upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_bulkhead_answers_503_overloaded_at_once() {
    let a = Instance::start().await;
    a.set_delay(Duration::from_millis(800));
    let mut up = set_of(&[&a]);
    up.limits = Some(FileUpstreamLimits {
        max_concurrent: Some(1),
        max_pending: Some(0),
        pending_timeout: None,
    });
    let p = Arc::new(proxy(up).await);
    let q = Arc::clone(&p);
    let slow = tokio::spawn(async move { q.get(ACCOUNTS).await.0.status });
    while a.count() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let t = Instant::now();
    let (ans, id) = p.get(ACCOUNTS).await;
    assert!(t.elapsed() < Duration::from_millis(400), "not queued");
    assert_upstream_refusal(&p, &ans, &id, 503, "upstream.overloaded").await;
    assert_eq!(ans.headers["retry-after"], "1", "{:?}", ans.headers);
    assert_eq!(a.count(), 1, "nothing upstream but the first request");
    assert_eq!(slow.await.unwrap(), 200);
    let m = metrics(&p).await;
    assert_eq!(
        metric(
            &m,
            "portcullis_upstream_refused_total{upstream=\"bank\",reason=\"overloaded\"}"
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_stay_within_the_budget_and_never_repeat_a_post() {
    let (a, b) = (Instance::start().await, Instance::start().await);
    a.status.store(503, Ordering::SeqCst);
    let mut up = set_of(&[&a, &b]);
    up.retries = Some(FileRetries {
        attempts: Some(2),
        budget_percent: Some(20),
        min_retries: Some(0),
        ..FileRetries::default()
    });
    // Only the budget limits the retries here.
    up.outlier_detection = Some(FileOutlierDetection {
        consecutive_failures: Some(0),
        ..FileOutlierDetection::default()
    });
    let p = proxy(up).await;
    let mut c = p.client(Some("tpp1"), false).await.unwrap();
    let n = 60;
    let mut passed_503 = 0;
    for _ in 0..n {
        let ans = c.send(get()).await.unwrap();
        match ans.status.as_u16() {
            200 => {}
            503 => passed_503 += 1,
            s => panic!("status {s}"),
        }
    }
    let total = a.count() + b.count();
    let retries = total - n;
    assert!(retries >= 1, "some reads were retried");
    assert!(
        retries <= n / 5 + 1,
        "{retries} retries for {n} requests: over the 20 % budget"
    );
    assert!(passed_503 >= 1, "past the budget the 503 is passed on");
    let m = metrics(&p).await;
    assert_eq!(
        metric(
            &m,
            "portcullis_upstream_retries_total{upstream=\"bank\",result=\"sent\"}"
        ),
        retries as f64
    );
    // A POST answered 503 is never sent again.
    let before = all_seen(&[&a, &b]).len();
    let mut sent = 0;
    for k in 0..20 {
        let ans = c.send(post(k)).await.unwrap();
        sent += 1;
        if ans.status == 503 {
            break;
        }
    }
    assert_eq!(all_seen(&[&a, &b]).len() - before, sent, "one try per POST");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_removing_an_endpoint_lets_its_request_in_flight_finish() {
    let (a, b) = (Instance::start().await, Instance::start().await);
    a.set_delay(Duration::from_millis(1000));
    let p = Arc::new(proxy(set_of(&[&a])).await);
    let q = Arc::clone(&p);
    let slow = tokio::spawn(async move { q.get(ACCOUNTS).await });
    while a.count() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    p.edit_config(|c| {
        let bank = c.upstreams.get_mut("bank").unwrap();
        bank.endpoints = vec![format!("http://{}", b.addr)];
    });
    p.shared.reload().expect("the new set loads");
    let (ans, _) = p.get(ACCOUNTS).await;
    assert_eq!(ans.status, 200);
    assert_eq!(b.count(), 1, "new requests go to the new set");
    let (ans, id) = slow.await.unwrap();
    assert_eq!(
        ans.status, 200,
        "the request in flight on the removed endpoint finished"
    );
    let rec = p.audit_of(&id).await;
    assert_eq!(rec["upstream_endpoints"][0], a.addr.to_string());
    assert_eq!(a.count(), 1);
}

/// An upstream that is the DNS name `name` on `port`, resolved again every 200 ms.
fn dns_upstream(name: &str, port: u16) -> FileUpstream {
    FileUpstream {
        dns: Some(FileUpstreamDns {
            name: name.into(),
            port,
            scheme: None,
            base_path: None,
            interval: Some(dur("200ms")),
        }),
        connect_timeout: Some(dur("500ms")),
        response_timeout: Some(dur("5s")),
        ..FileUpstream::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns_name_is_resolved_to_its_addresses_and_named_in_requests() {
    // `localhost` resolves to the loopback address here (and to ::1 too where the resolver
    // says so): each address is an endpoint, requests name the service.
    let a = Instance::start().await;
    let port = a.addr.port();
    let p = proxy(dns_upstream("localhost", port)).await;
    let (ans, id) = p.get(ACCOUNTS).await;
    assert_eq!(ans.status, 200);
    let rec = p.audit_of(&id).await;
    let tried = rec["upstream_endpoints"][0].as_str().unwrap().to_string();
    assert!(
        tried == a.addr.to_string() || tried == format!("[::1]:{port}"),
        "{rec}"
    );
    let seen = a.seen();
    assert_eq!(seen.len(), 1);
    assert!(
        seen[0].1.ends_with(&format!("host=localhost:{port}")),
        "{seen:?}"
    );
}

/// The name the DNS test's proxy process resolves: under `.test`, reserved, so it can only be
/// answered by the hosts file the test writes.
const BANK_NAME: &str = "bank.portcullis.test";

/// How long bank 1 of the DNS test takes to answer: long enough that a request is still in
/// flight on it after the proxy has resolved the name again (every 200 ms) and dropped it.
const SLOW_MS: u64 = 2500;

/// Fails, saying why, when this machine cannot give a process a private `/etc/hosts` (user and
/// mount namespaces): the DNS test must not pass by not running.
fn assert_namespaces() {
    let out = std::process::Command::new("unshare")
        .args(["-r", "-m", "true"])
        .output();
    let ok = matches!(&out, Ok(o) if o.status.success());
    assert!(
        ok,
        "`unshare -r -m true` failed, so user and mount namespaces are unavailable here: the DNS \
         re-resolution test needs them to give the proxy process a private /etc/hosts \
         (allow unprivileged user namespaces, e.g. sysctl kernel.unprivileged_userns_clone=1 and \
         user.max_user_namespaces > 0, or run as root): {out:?}"
    );
}

/// Three addresses on the same free port, on 127.0.0.1, 127.0.0.2 and 127.0.0.3 (bound and
/// released, for the bank processes to bind next): the three addresses one name resolves to.
fn three_loopback_addrs() -> [SocketAddr; 3] {
    for _ in 0..100 {
        let port = free_addr().port();
        let addrs = [1u8, 2, 3].map(|n| SocketAddr::from(([127, 0, 0, n], port)));
        let free = addrs.iter().all(|a| std::net::TcpListener::bind(a).is_ok());
        if free {
            return addrs;
        }
    }
    panic!("no port free on 127.0.0.1, 127.0.0.2 and 127.0.0.3 at once");
}

/// The file the proxy process sees as `/etc/hosts` (bind-mounted over it in its namespace).
struct Hosts(std::path::PathBuf);

impl Hosts {
    /// Makes `BANK_NAME` resolve to `ips` (none: no line for it). The file is rewritten in
    /// place, truncated and written on the same inode: the bind mount shows the inode it was
    /// made on, so a new file renamed over it would never be seen.
    fn answer(&self, ips: &[std::net::IpAddr]) {
        let mut text = String::from("127.0.0.1 localhost\n::1 localhost\n");
        for ip in ips {
            text.push_str(&format!("{ip} {BANK_NAME}\n"));
        }
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&self.0)
            .expect("the hosts file");
        f.write_all(text.as_bytes())
            .expect("the hosts file written");
    }
}

/// A real `portcullis run` process in front of an upstream that is the DNS name `BANK_NAME`,
/// resolved through glibc (nsswitch `files`) against the test's hosts file.
struct ProxyProcess {
    addr: SocketAddr,
    admin: SocketAddr,
    dir: tempfile::TempDir,
    _child: ChildGuard,
}

impl ProxyProcess {
    async fn start(port: u16, hosts: &Hosts) -> ProxyProcess {
        let (addr, admin) = (free_addr(), free_addr());
        let mut o = Options::new("127.0.0.1:9".parse().unwrap());
        o.config.listener.address = addr.to_string();
        o.config.admin = Some(FileAdmin {
            address: admin.to_string(),
        });
        *o.bank() = dns_upstream(BANK_NAME, port);
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("policies")).unwrap();
        std::fs::write(dir.path().join("policies/test.yaml"), &o.policy).unwrap();
        let config = dir.path().join("portcullis.yaml");
        std::fs::write(&config, o.config_text()).unwrap();
        // A name missing from the hosts file falls through to DNS (nsswitch `files dns`): the
        // resolver the process sees points at a loopback port nothing serves, so that answer
        // fails at once and no query leaves the machine.
        let resolv = dir.path().join("resolv.conf");
        std::fs::write(
            &resolv,
            "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("proxy.log")).unwrap();
        let child = std::process::Command::new("unshare")
            .args([
                "-r",
                "-m",
                "sh",
                "-c",
                "mount --bind \"$0\" /etc/hosts && mount --bind \"$1\" /etc/resolv.conf \
                 && exec \"$2\" run --config \"$3\"",
            ])
            .arg(&hosts.0)
            .arg(&resolv)
            .arg(env!("CARGO_BIN_EXE_portcullis"))
            .arg(&config)
            .current_dir(dir.path())
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("unshare");
        let p = ProxyProcess {
            addr,
            admin,
            dir,
            _child: ChildGuard(child),
        };
        wait_until(
            Duration::from_secs(20),
            || async { p.admin_text("/readyz").await.0 == 200 },
            async || format!("the proxy process never got ready; its log:\n{}", p.log()),
        )
        .await;
        p
    }

    /// What the process logged (JSON lines, info and up).
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("proxy.log")).unwrap_or_default()
    }

    /// `GET path` on the admin listener: status (0 when it did not answer) and body.
    async fn admin_text(&self, path: &str) -> (u16, String) {
        admin_get(self.admin, path)
            .await
            .unwrap_or((0, String::new()))
    }

    /// The `bank` upstream's endpoints now, as `/metrics` lists them (sorted).
    async fn endpoints(&self) -> Vec<String> {
        let text = self.admin_text("/metrics").await.1;
        let prefix = "portcullis_upstream_endpoint_state{upstream=\"bank\",endpoint=\"";
        let mut set: Vec<String> = text
            .lines()
            .filter_map(|l| l.strip_prefix(prefix))
            .filter_map(|l| l.split('"').next())
            .map(String::from)
            .collect();
        set.sort();
        set.dedup();
        set
    }

    /// Waits (at most 5 s) until the upstream's endpoints are `want`.
    async fn endpoints_become(&self, want: &[SocketAddr]) {
        let mut want: Vec<String> = want.iter().map(|a| a.to_string()).collect();
        want.sort();
        let want = &want;
        wait_until(
            Duration::from_secs(5),
            || async move { self.endpoints().await == *want },
            async || {
                format!(
                    "the set is {:?}, not {want:?}; the log:\n{}",
                    self.endpoints().await,
                    self.log()
                )
            },
        )
        .await;
    }

    /// How many times the process said a resolution kept the last set.
    fn kept_last_set(&self) -> usize {
        self.log().matches("keeping the last set").count()
    }

    /// The audit records of the interactions `ids`, one each, in their order (waited for at
    /// most 2 s).
    async fn audits_of(&self, ids: &[&str]) -> Vec<serde_json::Value> {
        let t = Instant::now();
        loop {
            let raw = raw_audit_file(&self.dir.path().join("audit.log"));
            let mut by_id: std::collections::HashMap<String, Vec<serde_json::Value>> =
                std::collections::HashMap::new();
            for r in portcullis_audit::resolve::inline_file(raw) {
                if let Some(id) = r["interaction_id"].as_str() {
                    by_id.entry(id.to_string()).or_default().push(r);
                }
            }
            let all_there = ids.iter().all(|id| by_id.contains_key(*id));
            if all_there || t.elapsed() > Duration::from_secs(2) {
                return ids
                    .iter()
                    .map(|id| {
                        let recs = by_id.remove(*id).unwrap_or_default();
                        assert_eq!(recs.len(), 1, "exactly one audit record for {id}: {recs:?}");
                        recs.into_iter().next().unwrap()
                    })
                    .collect();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Asserts, by their audit records, that each of the requests `ids` answered 200 from one
    /// of `endpoints`, tried once.
    async fn assert_served_by(&self, ids: &[&str], endpoints: &[SocketAddr]) {
        let endpoints: Vec<String> = endpoints.iter().map(|a| a.to_string()).collect();
        for rec in self.audits_of(ids).await {
            assert_eq!(rec["status"], 200, "{rec}");
            assert_eq!(rec["upstream_attempts"], 1, "{rec}");
            let tried = rec["upstream_endpoints"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            assert!(
                tried.len() == 1 && endpoints.iter().any(|e| tried[0] == e.as_str()),
                "served by {tried:?}, not one of {endpoints:?}: {rec}"
            );
        }
    }
}
/// A GET of the accounts on a new connection as TPP One with a fresh interaction id: the
/// status (`None` when the connection or the request failed) and the id.
async fn read_at(addr: SocketAddr) -> (Option<u16>, String) {
    let id = uuid::Uuid::new_v4().to_string();
    let r = req("GET", ACCOUNTS)
        .header("x-fapi-interaction-id", &id)
        .body(Full::new(Bytes::new()))
        .unwrap();
    (send_fresh(addr, r).await.map(|a| a.status.as_u16()), id)
}

/// `workers` clients each sending reads one after another until `stop` is set; each returns
/// its answers.
fn readers(
    addr: SocketAddr,
    workers: usize,
    stop: &Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinSet<Vec<(Option<u16>, String)>> {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let stop = Arc::clone(stop);
        set.spawn(async move {
            let mut out = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                out.push(read_at(addr).await);
            }
            out
        });
    }
    set
}

/// Stops the readers `load` and asserts that they read, that every read answered 200 and
/// that each was served by one of `endpoints` (`when` names the phase in a failure).
async fn assert_reads_served(
    p: &ProxyProcess,
    mut load: tokio::task::JoinSet<Vec<(Option<u16>, String)>>,
    stop: &std::sync::atomic::AtomicBool,
    endpoints: &[SocketAddr],
    when: &str,
) {
    stop.store(true, Ordering::Relaxed);
    let mut answers = Vec::new();
    while let Some(r) = load.join_next().await {
        answers.extend(r.unwrap());
    }
    assert!(!answers.is_empty(), "no read {when}");
    for (status, id) in &answers {
        assert_eq!(*status, Some(200), "a read failed {when}: {id}");
    }
    let ids: Vec<&str> = answers.iter().map(|a| a.1.as_str()).collect();
    p.assert_served_by(&ids, endpoints).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_running_process_follows_its_dns_name_as_the_answer_changes() {
    assert_namespaces();
    let dir = tempfile::tempdir().unwrap();
    let [a1, a2, a3] = three_loopback_addrs();
    let port = a1.port();
    let b1 = Bank::start_at(dir.path(), 1, a1, SLOW_MS).await;
    let b2 = Bank::start_at(dir.path(), 2, a2, 0).await;
    let b3 = Bank::start_at(dir.path(), 3, a3, 0).await;
    let hosts = Hosts(dir.path().join("hosts"));
    std::fs::write(&hosts.0, "").unwrap();
    hosts.answer(&[a1.ip()]);
    let p = ProxyProcess::start(port, &hosts).await;
    p.endpoints_become(&[a1]).await;

    // 1. The name answers 127.0.0.1: reads go to bank 1 only.
    let (r1, r2) = tokio::join!(read_at(p.addr), read_at(p.addr));
    for (status, id) in [&r1, &r2] {
        assert_eq!(*status, Some(200), "{id}");
    }
    p.assert_served_by(&[&r1.1, &r2.1], &[a1]).await;
    assert_eq!((b1.count(), b2.count(), b3.count()), (2, 0, 0));

    // 2. It answers all three: within a bounded time all three take reads, none fails.
    hosts.answer(&[a1.ip(), a2.ip(), a3.ip()]);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = readers(p.addr, 3, &stop);
    wait_until(
        Duration::from_secs(5),
        || async { b1.count() > 2 && b2.count() > 0 && b3.count() > 0 },
        async || {
            format!(
                "not all three took reads after the change: {} {} {}; set {:?}",
                b1.count(),
                b2.count(),
                b3.count(),
                p.endpoints().await
            )
        },
    )
    .await;
    assert_reads_served(&p, load, &stop, &[a1, a2, a3], "while the set grew").await;
    p.endpoints_become(&[a1, a2, a3]).await;

    // 3. A slow read in flight on bank 1 while the name stops answering 127.0.0.1: it
    // finishes, and nothing new reaches bank 1. Reads are sent one at a time until one lands
    // on bank 1 (two random choices: a third of them, each), which then holds it SLOW_MS.
    let mut slow = None;
    for _ in 0..60 {
        let before = b1.count();
        let task = tokio::spawn(read_at(p.addr));
        loop {
            if b1.count() > before {
                slow = Some(task);
                break;
            }
            if task.is_finished() {
                let (status, id) = task.await.unwrap();
                assert_eq!(status, Some(200), "{id}");
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if slow.is_some() {
            break;
        }
    }
    let slow = slow.expect("no read landed on bank 1 in 60 tries");
    let on_bank_1 = b1.count();
    hosts.answer(&[a2.ip(), a3.ip()]);
    p.endpoints_become(&[a2, a3]).await;
    assert!(
        !slow.is_finished(),
        "the set changed only after the slow read finished: the test proved nothing \
         (SLOW_MS too short for this machine)"
    );
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = readers(p.addr, 2, &stop);
    let (status, slow_id) = slow.await.unwrap();
    assert_eq!(
        status,
        Some(200),
        "the read in flight on the dropped endpoint finished"
    );
    p.assert_served_by(&[&slow_id], &[a1]).await;
    let (n2, n3) = (b2.count(), b3.count());
    wait_until(
        Duration::from_secs(5),
        || async { b2.count() > n2 && b3.count() > n3 },
        async || "banks 2 and 3 serve".to_string(),
    )
    .await;
    assert_reads_served(&p, load, &stop, &[a2, a3], "after bank 1 left").await;
    assert_eq!(b1.count(), on_bank_1, "nothing new reached bank 1");

    // 4. The name has no answer at all: the last set keeps serving.
    let kept = p.kept_last_set();
    hosts.answer(&[]);
    // Two failed resolutions, so the reads below come after the proxy has known of it a while.
    wait_until(
        Duration::from_secs(5),
        || async { p.kept_last_set() >= kept + 2 },
        async || {
            format!(
                "no failed resolution logged after the name went; the log:\n{}",
                p.log()
            )
        },
    )
    .await;
    let mut ids = Vec::new();
    for _ in 0..6 {
        let (status, id) = read_at(p.addr).await;
        assert_eq!(
            status,
            Some(200),
            "a read failed with no answer for the name: {id}"
        );
        ids.push(id);
    }
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    p.assert_served_by(&ids, &[a2, a3]).await;
    assert_eq!(p.endpoints().await.len(), 2, "the last set is kept");
    assert_eq!(b1.count(), on_bank_1, "nothing new reached bank 1");

    // 5. Every request the banks took named the service, not the address it was sent to.
    let host = format!("{BANK_NAME}:{port}");
    let seen = banks_seen(&[&b1, &b2, &b3]);
    assert!(seen.len() >= 10, "{seen:?}");
    for s in &seen {
        assert_eq!(s.host, host, "{s:?}");
        assert_eq!((s.method.as_str(), s.path.as_str()), ("GET", ACCOUNTS));
    }
}

/// A change to the `bank` upstream's entry.
type Edit = Box<dyn Fn(&mut FileUpstream)>;

#[test]
fn bad_upstream_sets_are_refused_at_load_by_field() {
    let cases: Vec<(Edit, &str, &str)> = vec![
        (
            Box::new(|u| u.endpoints = vec!["http://127.0.0.1:1".into()]),
            "upstreams.bank",
            "exactly one of",
        ),
        (
            Box::new(|u| {
                u.url = String::new();
                u.endpoints = vec!["http://127.0.0.1:1".into(), "https://127.0.0.1:2".into()];
            }),
            "upstreams.bank.endpoints[1]",
            "scheme and path",
        ),
        (
            Box::new(|u| {
                u.url = String::new();
                u.endpoints = vec!["http://127.0.0.1:1".into(), "http://127.0.0.1:1".into()];
            }),
            "upstreams.bank.endpoints[1]",
            "listed twice",
        ),
        (
            Box::new(|u| {
                u.retries = Some(FileRetries {
                    attempts: Some(0),
                    ..FileRetries::default()
                })
            }),
            "upstreams.bank.retries.attempts",
            "1 to 10",
        ),
        (
            Box::new(|u| {
                u.url = String::new();
                u.dns = Some(FileUpstreamDns {
                    name: "bad name!".into(),
                    port: 80,
                    ..FileUpstreamDns::default()
                })
            }),
            "upstreams.bank.dns.name",
            "not a DNS name",
        ),
        (
            Box::new(|u| {
                u.outlier_detection = Some(FileOutlierDetection {
                    max_ejected_percent: Some(150),
                    ..FileOutlierDetection::default()
                })
            }),
            "upstreams.bank.outlier_detection.max_ejected_percent",
            "0 to 100",
        ),
    ];
    for (edit, field, why) in cases {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("policies")).unwrap();
        std::fs::write(dir.path().join("policies/test.yaml"), POLICY).unwrap();
        let mut o = Options::new("127.0.0.1:9".parse().unwrap());
        edit(o.bank());
        let path = dir.path().join("portcullis.yaml");
        std::fs::write(&path, o.config_text()).unwrap();
        let err = Config::load(&path).err().expect(field).to_string();
        assert!(err.contains(field), "{field}: {err}");
        assert!(err.contains(why), "{why}: {err}");
        assert!(err.contains("portcullis.yaml"), "names the file: {err}");
    }
}

const IDEMPOTENT_POLICY: &str = r#"
group: t
upstream: bank
routes:
  - id: payments.create
    method: POST
    path: /payments
    body_limit: 4096
    idempotency: required
"#;

/// A payment answered 503 by one instance is sent to another only when the route reserved its
/// idempotency key and the upstream is declared to honour it; otherwise the 503 is passed on
/// and the payment is never sent twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_is_retried_only_with_a_key_the_upstream_honours() {
    for honours in [true, false] {
        let (a, b) = (Instance::start().await, Instance::start().await);
        a.status.store(503, Ordering::SeqCst);
        let mut up = set_of(&[&a, &b]);
        up.retries = Some(FileRetries {
            min_retries: Some(100),
            honours_idempotency_key: honours,
            ..FileRetries::default()
        });
        up.outlier_detection = Some(FileOutlierDetection {
            consecutive_failures: Some(0),
            ..FileOutlierDetection::default()
        });
        let mut o = Options::new("127.0.0.1:9".parse().unwrap());
        *o.bank() = up;
        o.policy = IDEMPOTENT_POLICY.to_string();
        let p = Proxy::start(o).await;
        let mut statuses = Vec::new();
        for n in 0..12 {
            let r = req("POST", "/payments")
                .header("content-type", "application/json")
                .header("x-idempotency-key", format!("key-{honours}-{n}"))
                .body(Full::new(Bytes::from(format!("{{\"n\":{n}}}"))))
                .unwrap();
            let (ans, _) = p.send(r).await;
            statuses.push(ans.status.as_u16());
        }
        let at_a: Vec<Bytes> = a.seen().into_iter().map(|s| s.2).collect();
        let at_b: Vec<Bytes> = b.seen().into_iter().map(|s| s.2).collect();
        assert!(
            !at_a.is_empty(),
            "some payment went to the failing instance first"
        );
        let both = at_a.iter().filter(|x| at_b.contains(x)).count();
        if honours {
            assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
            assert_eq!(both, at_a.len(), "each payment a refused was sent to b");
        } else {
            assert_eq!(both, 0, "no payment sent twice");
            assert_eq!(
                statuses.iter().filter(|s| **s == 503).count(),
                at_a.len(),
                "{statuses:?}"
            );
        }
    }
}
