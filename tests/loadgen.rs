//! `portcullis loadgen --scenario` against the real proxy: DPoP-bound and certificate-bound
//! tokens minted from the dev AS key, a fresh proof per request (including a route that demands
//! DPoP nonces), OBIE-signed payments the proxy verifies, unique idempotency keys, thresholds
//! and exit codes. Runs are bounded by request counts; nothing asserts on wall-clock speed.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use portcullis_crypto::jose::keypair::KeyPair;
use portcullis_crypto::jose::Alg;
use serde_json::{json, Value};

const ISS: &str = "https://as.example";
const AUD: &str = "https://rs.example";
const BASE: &str = "https://rs.example";
const PAY: &str = "/open-banking/v3.1.10/pisp/domestic-payments";

const POLICY: &str = r#"
group: lg
upstream: bank
routes:
  - id: dpop.accounts
    method: GET
    path: /dpop/accounts
    auth: {profile: fapi2}
  - id: nonce.accounts
    method: GET
    path: /nonce/accounts
    auth: {profile: fapi2, dpop_nonce: true}
  - id: cert.accounts
    method: GET
    path: /cert/accounts
    auth: {profile: fapi1-advanced}
  - id: payments
    method: POST
    path: /open-banking/v3.1.10/pisp/domestic-payments
    body_limit: 4096
    auth: {profile: fapi2}
    signature: {kind: obie-jws, profile: obie-3.1.4}
    idempotency: required
  - id: accounts.one
    method: GET
    path: /accounts/{AccountId}
    auth: {profile: fapi2}
    rules:
      - {id: own-account, value: {path: AccountId}, in: {claim: accounts}, deny_status: 404}
"#;

/// The proxy with a DPoP route, a nonce route, a certificate-bound route and an OBIE-signed
/// payment route; tpp1's JWS key in its client key directory.
async fn env() -> Env {
    env_with(None).await
}

/// As [`env`], with a `detection:` section.
async fn env_with(detection: Option<FileDetection>) -> Env {
    env_edit(detection, |_| {}).await
}

/// As [`env_with`], with `edit` applied to the config last.
async fn env_edit(detection: Option<FileDetection>, edit: impl FnOnce(&mut FileConfig)) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let clients = dir.path().join("clients");
    std::fs::create_dir_all(&clients).unwrap();
    let jws = KeyPair::generate(Alg::PS256, "tpp1-sig").unwrap();
    std::fs::write(dir.path().join("jws.key"), jws.to_pkcs8_pem()).unwrap();
    std::fs::write(
        clients.join("PSDGB-FCA-123456.json"),
        jws.jwks().to_string(),
    )
    .unwrap();
    let up = Upstream::start(Behaviour::Ok).await;
    let mut o = Options::new(up.addr);
    o.policy = POLICY.to_string();
    o.config.issuers.insert(
        "as".into(),
        file_issuer(ISS, AUD, &certs().join("as-jwks.json")),
    );
    o.config.dpop.public_base_url = Some(BASE.into());
    o.config.signatures = FileSignatures {
        client: Some("{org_id}".into()),
        client_keys: Some(FileClientKeys {
            directory: Some(clients.display().to_string()),
            ..FileClientKeys::default()
        }),
        jws: FileJws {
            trust_anchors: vec!["openbanking.org.uk".into()],
            iss: Some("{org_id}/{cert_cn}".into()),
            ..FileJws::default()
        },
        ..FileSignatures::default()
    };
    o.config.detection = detection;
    edit(&mut o.config);
    Env::start(o, up, dir, None).await
}

/// A scenario against `env`'s proxy: `routes` and `load` YAML spliced into the common parts.
fn scenario(e: &Env, name: &str, routes: &str, load: &str) -> PathBuf {
    let c = |f: &str| certs().join(f).display().to_string();
    let token = |binding: &str, scopes: &str, extra: &str| {
        format!(
            "      signing_key: {as_key}\n      issuer: {ISS}\n      audience: {AUD}\n      client_id: tpp-one\n      scopes: {scopes}\n      binding: {binding}\n{extra}",
            as_key = c("as.key"),
        )
    };
    let text = format!(
        r#"name: {name}
target:
  address: {addr}
  server_name: localhost
  ca: {ca}
  public_base_url: {BASE}
clients:
  - name: dpop
    cert: {cert}
    key: {key}
    token:
{dpop_token}
  - name: cert
    cert: {cert}
    key: {key}
    token:
{cert_token}
routes:
{routes}
{load}
"#,
        addr = e.p.addr,
        ca = c("ca.pem"),
        cert = c("tpp1.pem"),
        key = c("tpp1.key"),
        dpop_token = token(
            "dpop",
            "[accounts, payments]",
            &format!("      dpop_key: {}\n", c("dpop.key"))
        ),
        cert_token = token("cert", "[accounts]", ""),
    );
    let path = e.dir.path().join(format!("{name}.yaml"));
    std::fs::write(&path, text).unwrap();
    path
}

const ROUTES: &str = r#"  - name: dpop.accounts
    path: /dpop/accounts
    headers: {x-fapi-interaction-id: "{uuid}"}
    clients: [dpop]
    weight: 3
    expect: [200]
  - name: nonce.accounts
    path: /nonce/accounts
    clients: [dpop]
    weight: 1
  - name: cert.accounts
    path: /cert/accounts
    clients: [cert]
    weight: 2
  - name: payment
    method: POST
    path: /open-banking/v3.1.10/pisp/domestic-payments
    headers: {content-type: application/json, x-idempotency-key: "{uuid}"}
    body: {inline: '{"Data":{"ConsentId":"c-1","Initiation":{"InstructionIdentification":"{uuid}","InstructedAmount":{"Amount":"1.00","Currency":"GBP"}}},"Risk":{}}'}
    jws: {format: obie, key: JWS_KEY, kid: tpp1-sig, iss: PSDGB-FCA-123456/tpp-one-software-id}
    clients: [dpop]
    weight: 2
    expect: [200]"#;

fn routes(e: &Env) -> String {
    ROUTES.replace(
        "JWS_KEY",
        &e.dir.path().join("jws.key").display().to_string(),
    )
}

/// Runs `portcullis loadgen` with `args` off the async runtime (the proxy keeps serving);
/// returns the exit code, standard output and standard error.
async fn loadgen(args: Vec<String>) -> (Option<i32>, String, String) {
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .arg("loadgen")
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    })
    .await
    .unwrap()
}

fn arg(p: &Path) -> String {
    p.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fapi_scenario_runs_without_unexpected_errors_and_every_proof_is_fresh() {
    let e = env().await;
    let s = scenario(
        &e,
        "mix",
        &routes(&e),
        "load: {connections: 4, requests: 160}\nthresholds: {max_error_rate: 0}",
    );
    let json = e.dir.path().join("report.json");
    let (code, out, err) = loadgen(vec![
        "--scenario".into(),
        arg(&s),
        "--json".into(),
        arg(&json),
    ])
    .await;
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("result: PASSED"), "{out}");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(r["requests"], 160, "{r}");
    assert_eq!(r["errors"], 0, "{r}");
    assert_eq!(r["statuses"], json!({"200": 160}));
    assert_eq!(r["tokens_minted"], 2);
    assert_eq!(r["passed"], true);
    for route in [
        "dpop.accounts",
        "nonce.accounts",
        "cert.accounts",
        "payment",
    ] {
        assert!(
            r["routes"][route]["ok"].as_u64().unwrap() > 0,
            "{route} was sent: {r}"
        );
    }
    // The nonce route answered use_dpop_nonce until the generator had a nonce; each such
    // answer was followed by one retry with it.
    let retries = r["dpop_nonce_retries"].as_u64().unwrap();
    assert!((1..=4).contains(&retries), "{retries} nonce retries");

    // The proxy's view: every request allowed except the nonce challenges; no proof replayed.
    let recs =
        e.p.audit_where(160 + retries as usize, |r| r["kind"] == "request")
            .await;
    assert_eq!(recs.len(), 160 + retries as usize);
    let refused: Vec<&Value> = recs.iter().filter(|r| r["decision"] != "allow").collect();
    assert!(
        refused.iter().all(|r| r["reason"] == "binding.dpop_nonce"),
        "refusals other than nonce challenges: {refused:?}"
    );
    assert_eq!(refused.len() as u64, retries);
    assert!(!recs.iter().any(|r| r["reason"] == "binding.dpop_replay"));

    // Upstream: exactly the allowed requests; each payment with its own idempotency key and
    // its own body (a {uuid} in each).
    let seen = e.up.seen();
    assert_eq!(seen.len(), 160);
    let payments: Vec<_> = seen.iter().filter(|s| s.path_and_query == PAY).collect();
    assert_eq!(
        payments.len() as u64,
        r["routes"]["payment"]["ok"].as_u64().unwrap()
    );
    let keys: HashSet<_> = payments
        .iter()
        .map(|s| s.headers["x-idempotency-key"].to_str().unwrap().to_string())
        .collect();
    let bodies: HashSet<_> = payments.iter().map(|s| s.body.clone()).collect();
    assert_eq!(keys.len(), payments.len());
    assert_eq!(bodies.len(), payments.len());
}

/// False positives: the FAPI mix above (DPoP with fresh proofs and a nonce route, a
/// certificate-bound token, OBIE-signed payments with idempotency keys), shortened for the
/// suite, under the shipped detection defaults raises no alert (docs/detection.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fapi_mix_raises_no_alert_under_the_shipped_detection_defaults() {
    let e = env_with(Some(FileDetection::default())).await;
    let s = scenario(
        &e,
        "mix",
        &routes(&e),
        "load: {connections: 4, requests: 400}\nthresholds: {max_error_rate: 0}",
    );
    let json = e.dir.path().join("report.json");
    let (code, out, err) = loadgen(vec![
        "--scenario".into(),
        arg(&s),
        "--json".into(),
        arg(&json),
    ])
    .await;
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let retries = r["dpop_nonce_retries"].as_u64().unwrap();
    let recs =
        e.p.audit_where(400 + retries as usize, |r| r["kind"] == "request")
            .await;
    let mut reasons = std::collections::BTreeMap::<String, usize>::new();
    for rec in &recs {
        let reason = rec["reason"].as_str().unwrap_or("allowed").to_string();
        *reasons.entry(reason).or_default() += 1;
    }
    eprintln!(
        "detection false-positive run: {} requests, {reasons:?}",
        recs.len()
    );
    assert_eq!(recs.len(), 400 + retries as usize);
    let alerts: Vec<Value> =
        e.p.audit()
            .into_iter()
            .filter(|r| r["kind"] == "alert")
            .collect();
    assert!(alerts.is_empty(), "{alerts:?}");
    let (_, metrics) = e.p.admin_get("/metrics").await;
    let fired: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("portcullis_detection_fired_total{"))
        .collect();
    assert_eq!(fired.len(), 6, "{fired:?}");
    assert!(fired.iter().all(|l| l.ends_with(" 0")), "{fired:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_loop_http2_run_counts_every_request() {
    let e = env().await;
    let s = scenario(
        &e,
        "open",
        &routes(&e),
        "load: {protocol: http2, mode: open, rate: 200, connections: 4, max_outstanding: 1000, requests: 60}",
    );
    let json = e.dir.path().join("open.json");
    let (code, out, err) = loadgen(vec![
        "--scenario".into(),
        arg(&s),
        "--json".into(),
        arg(&json),
    ])
    .await;
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(r["mode"], "open");
    assert_eq!(r["protocol"], "http2");
    assert_eq!(r["requests"], 60, "{r}");
    assert_eq!(r["errors"], 0, "{r}");
    assert_eq!(e.up.count(), 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missed_threshold_or_an_unexpected_status_fails_the_run() {
    let e = env().await;
    // Thresholds no run can meet.
    let s = scenario(
        &e,
        "impossible",
        &routes(&e),
        "load: {connections: 2, requests: 20}\nthresholds: {min_rps: 1000000000, max_p99_ms: 0.000001}",
    );
    let (code, out, _) = loadgen(vec!["--scenario".into(), arg(&s)]).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("FAIL min_rps"), "{out}");
    assert!(out.contains("FAIL max_p99_ms"), "{out}");
    assert!(out.contains("ok   max_error_rate"), "{out}");
    assert!(out.contains("result: FAILED"), "{out}");

    // A DPoP-bound token on a route that needs a certificate-bound one: every answer is a 401
    // the route does not expect, counted by status and by the problem+json reason.
    let wrong = r#"  - name: wrong
    path: /cert/accounts
    clients: [dpop]"#;
    let s = scenario(&e, "wrong", wrong, "load: {connections: 1, requests: 5}");
    let json = e.dir.path().join("wrong.json");
    let (code, out, err) = loadgen(vec![
        "--scenario".into(),
        arg(&s),
        "--json".into(),
        arg(&json),
    ])
    .await;
    assert_eq!(code, Some(1), "stdout:\n{out}\nstderr:\n{err}");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(r["errors"], 5);
    assert_eq!(r["errors_by_status"], json!({"401": 5}));
    let reasons = r["errors_by_reason"].as_object().unwrap();
    assert_eq!(reasons.len(), 1, "{r}");
    let (reason, n) = reasons.iter().next().unwrap();
    assert!(reason.starts_with("binding."), "{reason}");
    assert_eq!(n, 5);
    let recs = e.p.audit_where(5, |r| r["reason"] == reason.as_str()).await;
    assert_eq!(recs.len(), 5);
    assert_eq!(
        e.up.count(),
        20,
        "only the first run's requests reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_scenario_is_refused_with_file_field_and_reason() {
    let e = env().await;
    let s = scenario(
        &e,
        "invalid",
        "  - name: r\n    path: no-slash\n    weight: 0",
        "load: {connections: 1}",
    );
    let (code, _, err) = loadgen(vec!["--scenario".into(), arg(&s)]).await;
    assert_eq!(code, Some(2), "{err}");
    let file = arg(&s);
    for want in [
        format!("{file}: routes[0].path: must be an absolute path"),
        format!("{file}: routes[0].weight: must be between 1 and 1000"),
        format!("{file}: load: give exactly one of `duration` and `requests`"),
    ] {
        assert!(err.contains(&want), "missing `{want}` in:\n{err}");
    }
    assert_eq!(e.up.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_target_is_driven_over_plain_http() {
    // The upstream measured directly (as benches/compare_haproxy.sh SCENARIO=latency does with
    // the mock bank): no TLS, no certificate, open loop.
    let up = Upstream::start(Behaviour::Ok).await;
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path().join("plain.yaml");
    std::fs::write(
        &s,
        format!(
            "target: {{address: \"{}\", plaintext: true}}\nclients: [{{name: direct}}]\n\
             routes: [{{name: accounts, path: /open-banking/v3.1/aisp/accounts, expect: [200]}}]\n\
             load: {{mode: open, rate: 200, connections: 2, requests: 40}}\n",
            up.addr
        ),
    )
    .unwrap();
    let json = dir.path().join("plain.json");
    let (code, out, err) = loadgen(vec![
        "--scenario".into(),
        arg(&s),
        "--json".into(),
        arg(&json),
    ])
    .await;
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(r["statuses"], json!({"200": 40}), "{r}");
    assert_eq!(up.count(), 40);
    let seen = up.seen();
    assert!(seen
        .iter()
        .all(|s| s.path_and_query == "/open-banking/v3.1/aisp/accounts"
            && s.headers["host"] == "localhost"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_loop_times_requests_from_their_intended_send_time_and_keeps_a_timeline() {
    // One connection to an upstream that takes 100 ms, 100 requests a second due: the queue
    // grows by 90 ms a request. The 300 ms timeout runs from each request's intended send
    // time: a request taken up with little of it left times out (`loadgen.timeout`), one taken
    // up after it is not sent (`loadgen.late`), no answer comes later than the timeout
    // (without it the last of the 50 would take ~4.5 s), and the per-second timeline accounts
    // for every request.
    let up = Upstream::start(Behaviour::Delay(Duration::from_millis(100))).await;
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path().join("late.yaml");
    std::fs::write(
        &s,
        format!(
            "target: {{address: \"{}\", plaintext: true, timeout: 300ms}}\n\
             clients: [{{name: direct}}]\n\
             routes: [{{name: accounts, path: /open-banking/v3.1/aisp/accounts, expect: [200]}}]\n\
             load: {{mode: open, rate: 100, connections: 1, requests: 50}}\n",
            up.addr
        ),
    )
    .unwrap();
    let json = dir.path().join("late.json");
    let (code, out, err) = loadgen(vec![
        "--scenario".into(),
        arg(&s),
        "--json".into(),
        arg(&json),
    ])
    .await;
    assert_eq!(
        code,
        Some(1),
        "errors fail the run\nstdout:\n{out}\nstderr:\n{err}"
    );
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let late = n(&r["errors_by_reason"]["loadgen.late"]);
    let timed_out = n(&r["errors_by_reason"]["loadgen.timeout"]);
    let answered = n(&r["statuses"]["200"]);
    assert!(late + timed_out >= 20, "most waited past the timeout: {r}");
    assert!(answered >= 2, "{r}");
    assert_eq!(answered + late + timed_out, 50, "{r}");
    assert_eq!(n(&r["errors"]), late + timed_out, "{r}");
    let sent = up.count() as u64;
    assert!(
        (answered..=50 - late).contains(&sent),
        "late requests are never sent: {sent} sent, {answered} answered, {late} late"
    );
    assert!(
        n(&r["latency"]["max_us"]) < 1_000_000,
        "an answer comes within the timeout of its intended time: {r}"
    );
    let ticks = r["timeline"].as_array().unwrap();
    let sum = |k: &str| ticks.iter().map(|t| n(&t[k])).sum::<u64>();
    assert_eq!(sum("requests"), 50, "{r}");
    assert_eq!(sum("errors"), late + timed_out, "{r}");
    assert!(
        ticks.iter().any(|t| n(&t["backlog"]) >= 10),
        "the queue shows: {r}"
    );
    assert!(r["started_unix_s"].as_f64().unwrap() > 1.7e9, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_replayed_proof_is_refused_by_the_proxy() {
    let e = env().await;
    let routes = r#"  - name: no-proof
    path: /dpop/accounts
    clients: [dpop]
    dpop_proof: none
    expect: [401]
  - name: replayed
    path: /dpop/accounts
    clients: [dpop]
    dpop_proof: replay
    expect: [200, 401]"#;
    let s = scenario(
        &e,
        "refusals",
        routes,
        "load: {connections: 1, requests: 10}",
    );
    let json = e.dir.path().join("refusals.json");
    let (code, out, err) = loadgen(vec![
        "--scenario".into(),
        arg(&s),
        "--json".into(),
        arg(&json),
    ])
    .await;
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let none = &r["routes"]["no-proof"];
    let replayed = &r["routes"]["replayed"];
    let n_none = none["requests"].as_u64().unwrap();
    let n_replayed = replayed["requests"].as_u64().unwrap();
    assert!(n_none > 0 && n_replayed > 1, "{r}");
    assert_eq!(none["statuses"], json!({"401": n_none}), "{r}");
    // The first use of the kept proof is accepted, every later one is a replay.
    assert_eq!(
        replayed["statuses"],
        json!({"200": 1, "401": n_replayed - 1}),
        "{r}"
    );
    let recs = e.p.audit_where(10, |r| r["kind"] == "request").await;
    let reasons: Vec<&str> = recs.iter().filter_map(|r| r["reason"].as_str()).collect();
    assert_eq!(
        reasons
            .iter()
            .filter(|r| **r == "binding.dpop_replay")
            .count() as u64,
        n_replayed - 1,
        "{reasons:?}"
    );
    assert_eq!(reasons.len() as u64, 9, "{reasons:?}");
    assert_eq!(
        e.up.count(),
        1,
        "only the first use of the proof went upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_html_report_is_self_contained_escaped_and_renders() {
    let e = env().await;
    // A hostile route name: the page must show it as text.
    let routes = r#"  - name: "<script>alert(1)</script>"
    path: /dpop/accounts
    clients: [dpop]
    weight: 3
    expect: [200]
  - name: no-proof
    path: /dpop/accounts
    clients: [dpop]
    dpop_proof: none
    expect: [401]"#;
    // Open loop at 100/s for 250 requests: about 2.5 s, so the timeline has a few seconds.
    let s = scenario(
        &e,
        "html",
        routes,
        "load: {mode: open, rate: 100, connections: 2, requests: 250}",
    );
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let html = dir.join("loadgen-report.html");
    let json = e.dir.path().join("html.json");
    let (code, out, err) = loadgen(vec![
        "--scenario".into(),
        arg(&s),
        "--json".into(),
        arg(&json),
        "--html".into(),
        arg(&html),
    ])
    .await;
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    // Standard error is a pipe here, as in CI: no progress line.
    assert!(!err.contains("p99 so far"), "{err}");
    assert!(
        out.contains("latency percentiles by HdrHistogram, 3 significant digits"),
        "{out}"
    );
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(r["requests"], 250, "{r}");
    assert_eq!(r["latency_precision"], "HdrHistogram, 3 significant digits");
    let tl = r["timeline"].as_array().unwrap();
    assert!(tl.len() >= 2, "{r}");
    assert!(tl.iter().any(|t| t["p99_us"].as_u64().unwrap() > 0), "{r}");
    assert!(tl
        .iter()
        .all(|t| t["p50_us"].as_u64() <= t["p99_us"].as_u64()
            && t["p99_us"].as_u64() <= t["max_us"].as_u64()));
    let refused = r["routes"]["no-proof"]["requests"].as_u64().unwrap();
    assert!(refused > 0);

    let page = std::fs::read_to_string(&html).unwrap();
    assert_self_contained_html(&page, 3);
    for text in [
        "Latency over time",
        "Latency distribution",
        "Throughput and errors over time",
        "Refusal checks",
        "Parameters",
        "HdrHistogram, 3 significant digits",
        "&lt;script&gt;alert(1)&lt;/script&gt;",
    ] {
        assert!(page.contains(text), "`{text}` missing");
    }
    // The refusal check's row: the route, what it expects, what the proxy said, the verdict.
    let row = page
        .split("<tr>")
        .find(|r| r.starts_with("<td>no-proof</td><td>401</td>"))
        .unwrap_or_else(|| panic!("no refusal row in {page}"));
    assert!(row.contains("401 binding.dpop_proof_missing"), "{row}");
    assert!(row.contains("class=\"pass\""), "{row}");
    // The proxy refused them: the upstream saw only the other route's requests.
    assert_eq!(e.up.count() as u64, 250 - refused);

    let png = dir.join("loadgen-report.png");
    let shot_dir = e.dir.path().to_path_buf();
    if let Some(size) = tokio::task::spawn_blocking(move || screenshot(&html, &png, &shot_dir))
        .await
        .unwrap()
    {
        // A blank 1280 x 2000 page is about 12 KB; this one has tables and plots.
        assert!(size > 40_000, "a {size}-byte screenshot is next to blank");
    }

    // `--progress` prints a line a second even to a pipe.
    let s = scenario(
        &e,
        "progress",
        "  - name: a\n    path: /dpop/accounts\n    clients: [dpop]",
        "load: {mode: open, rate: 100, connections: 2, requests: 150}",
    );
    let (code, out, err) = loadgen(vec!["--scenario".into(), arg(&s), "--progress".into()]).await;
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    let line = err
        .lines()
        .find(|l| l.contains("p99 so far"))
        .unwrap_or_else(|| panic!("no progress line in {err}"));
    assert!(
        line.starts_with("loadgen ") && line.contains(" requests "),
        "{line}"
    );
    assert!(line.contains(" errors 0 "), "{line}");
}

// --- attack scenarios against the detectors (docs/detection.md) ----------------------------

/// An attack scenario: one client, tpp1 with a DPoP-bound token (scope accounts) granting
/// `acc-1` only, and `routes`.
fn attack(e: &Env, name: &str, routes: &str, load: &str) -> PathBuf {
    attack_bound(e, name, routes, load, true)
}

/// As [`attack`]; `dpop: false` binds the token to the certificate instead.
fn attack_bound(e: &Env, name: &str, routes: &str, load: &str, dpop: bool) -> PathBuf {
    let c = |f: &str| certs().join(f).display().to_string();
    let binding = if dpop {
        format!("binding: dpop\n      dpop_key: {}", c("dpop.key"))
    } else {
        "binding: cert".to_string()
    };
    let text = format!(
        r#"name: {name}
target:
  address: {addr}
  server_name: localhost
  ca: {ca}
  public_base_url: {BASE}
clients:
  - name: attacker
    cert: {cert}
    key: {key}
    token:
      signing_key: {as_key}
      issuer: {ISS}
      audience: {AUD}
      client_id: tpp-one
      scopes: [accounts]
      claims: {{accounts: [acc-1]}}
      {binding}
routes:
{routes}
{load}
"#,
        addr = e.p.addr,
        ca = c("ca.pem"),
        cert = c("tpp1.pem"),
        key = c("tpp1.key"),
        as_key = c("as.key"),
    );
    let path = e.dir.path().join(format!("{name}.yaml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// What an attack run showed.
struct Fired {
    /// The `kind: alert` record.
    alert: Value,
    /// The request that fired it: its place among the run's requests as the proxy recorded
    /// them (1 is the first).
    at: usize,
    /// From the run's first request record to the alert record, as a reader of the audit
    /// file polling every 5 ms sees them.
    ms: u128,
    /// The load generator's JSON report.
    report: Value,
    /// When the poller saw the alert.
    seen: Option<std::time::Instant>,
}

/// Runs the scenario `s` with the load generator against `e` while watching the audit log;
/// returns the first alert of `detector` it raised (the run must raise one).
async fn run_until_alert(e: &Env, s: &Path, detector: &str) -> Fired {
    let before = e.p.audit().len();
    let json = s.with_extension("json");
    let run = tokio::spawn(loadgen(vec![
        "--scenario".into(),
        arg(s),
        "--json".into(),
        arg(&json),
        "--quiet".into(),
    ]));
    let (mut first, mut fired) = (None, None);
    while fired.is_none() && !run.is_finished() {
        let recs = e.p.audit();
        let new = recs.get(before..).unwrap_or_default();
        if first.is_none() && new.iter().any(|r| r["kind"] == "request") {
            first = Some(std::time::Instant::now());
        }
        if new
            .iter()
            .any(|r| r["kind"] == "alert" && r["detector"] == detector)
        {
            fired = Some(std::time::Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (code, out, err) = run.await.unwrap();
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let recs = e.p.audit();
    let new = &recs[before..];
    let alert = new
        .iter()
        .find(|r| r["kind"] == "alert" && r["detector"] == detector)
        .unwrap_or_else(|| panic!("no {detector} alert: {report}"))
        .clone();
    let requests: Vec<&Value> = new.iter().filter(|r| r["kind"] == "request").collect();
    let at = requests
        .iter()
        .position(|r| r["interaction_id"] == alert["interaction_id"])
        .expect("the alert names a request of the run")
        + 1;
    // An alert seen before the poller saw a request (both in one read): 0 ms at 5 ms grain.
    let ms = match (first, fired) {
        (Some(a), Some(b)) => b.saturating_duration_since(a).as_millis(),
        _ => 0,
    };
    eprintln!(
        "time to alert: {detector} fired at request {at} (count {}, threshold {}) {ms} ms after the run's first request; run: {}",
        alert["count"], alert["threshold"], report["statuses"]
    );
    Fired {
        alert,
        at,
        ms,
        report,
        seen: fired,
    }
}

fn detector(threshold: u32, action: &str) -> Option<FileDetector> {
    Some(FileDetector {
        threshold: Some(threshold),
        window: Some(dur("1m")),
        action: Some(action.into()),
    })
}

fn alerts_of(e: &Env) -> Vec<Value> {
    e.p.audit()
        .into_iter()
        .filter(|r| r["kind"] == "alert")
        .collect()
}

/// `enumerate` a hundred account ids the token does not grant (hidden as 404).
const ENUMERATE: &str = r#"  - name: enumerate
    path: /accounts/acc-victim-{n}
    expect: [404, 403]"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_enumeration_scenario_fires_within_its_count_and_quarantines_the_client() {
    let e = env_with(Some(FileDetection {
        enumeration: detector(20, "quarantine"),
        quarantine_ttl: Some(dur("10m")),
        ..FileDetection::default()
    }))
    .await;
    let s = attack(
        &e,
        "enumerate",
        ENUMERATE,
        "load: {connections: 1, requests: 100}",
    );
    let f = run_until_alert(&e, &s, "enumeration").await;
    // Linear counting may need an id or two more than the threshold after a collision.
    assert!((20..=22).contains(&f.at), "fired at id {}", f.at);
    assert_eq!(f.alert["count"], 20);
    assert_eq!(f.alert["action"], "quarantine");
    let enumerated = &f.report["routes"]["enumerate"];
    assert_eq!(
        enumerated["statuses"],
        json!({"404": f.at, "403": 100 - f.at}),
        "hidden until the alert, quarantined from the next request: {}",
        f.report
    );
    assert_eq!(
        enumerated["refusals"]["403 detect.quarantined"],
        100 - f.at as u64
    );
    assert_eq!(e.up.count(), 0);
    assert_eq!(alerts_of(&e).len(), 1);
    assert!(f.ms < 60_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probing_scenario_fires_at_the_shipped_threshold() {
    let e = env_with(Some(FileDetection::default())).await;
    let s = attack(
        &e,
        "probe",
        r#"  - name: probe
    path: /undeclared/probe-{n}
    expect: [404]"#,
        "load: {connections: 1, requests: 30}",
    );
    let f = run_until_alert(&e, &s, "probing").await;
    assert!((10..=12).contains(&f.at), "fired at route {}", f.at);
    assert_eq!(f.alert["threshold"], 10);
    assert_eq!(f.alert["action"], "alert");
    // `alert` refuses nothing by itself: every probe was answered as before.
    assert_eq!(f.report["statuses"], json!({"404": 30}));
    assert_eq!(e.up.count(), 0);
    assert_eq!(alerts_of(&e).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replay_scenario_fires_at_its_threshold() {
    let e = env_with(Some(FileDetection {
        replay: detector(5, "alert"),
        ..FileDetection::default()
    }))
    .await;
    let s = attack(
        &e,
        "replay",
        r#"  - name: replay
    path: /dpop/accounts
    dpop_proof: replay
    expect: [200, 401]"#,
        "load: {connections: 1, requests: 12}",
    );
    let f = run_until_alert(&e, &s, "replay").await;
    // The first use of the proof is accepted; the 5th replay is the 6th request.
    assert_eq!(f.at, 6);
    assert_eq!(f.alert["count"], 5);
    assert_eq!(f.alert["reason"], "binding.dpop_replay");
    assert_eq!(f.report["statuses"], json!({"200": 1, "401": 11}));
    assert_eq!(e.up.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_volume_spike_scenario_fires_against_the_baseline_the_client_built() {
    let e = env_with(Some(FileDetection {
        volume: Some(FileVolume {
            multiple: Some(3.0),
            min_requests: Some(10),
            warmup: Some(3),
            bucket: Some(dur("1s")),
            ..FileVolume::default()
        }),
        ..FileDetection::default()
    }))
    .await;
    let route = r#"  - name: accounts
    path: /dpop/accounts
    expect: [200]"#;
    // Two requests a second for five seconds: the baseline (and nothing fires).
    let base = attack(
        &e,
        "baseline",
        route,
        "load: {mode: open, rate: 2, connections: 2, duration: 5s}",
    );
    let (code, out, err) = loadgen(vec!["--scenario".into(), arg(&base), "--quiet".into()]).await;
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    assert!(alerts_of(&e).is_empty(), "{:?}", alerts_of(&e));
    // Then forty a second.
    let spike = attack(
        &e,
        "spike",
        route,
        "load: {mode: open, rate: 40, connections: 8, max_outstanding: 64, duration: 2s}",
    );
    let f = run_until_alert(&e, &spike, "volume").await;
    let count = f.alert["count"].as_u64().unwrap();
    assert!(
        (11..=40).contains(&count),
        "fired with {count} in its bucket"
    );
    assert_eq!(f.alert["route_id"], "dpop.accounts");
    // `alert`: the spike is served.
    assert_eq!(f.report["errors"], 0, "{}", f.report);
    // The detector fires at most once per bucket; a two-second spike spans two or three
    // buckets, and a loaded machine can push a later bucket over the raised baseline too.
    let all = alerts_of(&e);
    assert!((1..=3).contains(&all.len()), "{all:?}");
    assert!(
        all.iter()
            .all(|a| a["detector"] == "volume" && a["route_id"] == "dpop.accounts"),
        "{all:?}"
    );
}

/// Two instances on one Redis: the enumeration scenario against A quarantines the client on
/// B too (within B's next read of the fleet's quarantines, every second), three ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_enumeration_scenario_on_one_instance_quarantines_the_client_on_another() {
    let redis = common::redis::RedisServer::start();
    let detection = || {
        Some(FileDetection {
            enumeration: detector(20, "quarantine"),
            quarantine_ttl: Some(dur("10m")),
            ..FileDetection::default()
        })
    };
    let state = redis.state();
    let a = env_edit(detection(), |c| c.state = state.clone()).await;
    let b = env_edit(detection(), |c| c.state = state.clone()).await;
    let own = r#"  - name: own
    path: /accounts/acc-1
    expect: [200, 403]"#;
    let on_b = attack_bound(&b, "own", own, "load: {connections: 1, requests: 1}", false);
    // A certificate-bound token: a fresh Redis holds no replay history, so DPoP replay checks
    // refuse (503 binding.replay_store_unavailable, fail closed) for one replay window after
    // it starts — on the system clock this test runs on, a minute. Both instances serve the
    // client before the attack.
    for (e, name) in [(&a, "A"), (&b, "B")] {
        let s = attack_bound(
            e,
            "ready",
            own,
            "load: {connections: 1, requests: 1}",
            false,
        );
        let mut served = false;
        for _ in 0..50 {
            let (code, out, _) =
                loadgen(vec!["--scenario".into(), arg(&s), "--quiet".into()]).await;
            if code == Some(0) && e.up.count() == 1 {
                served = true;
                break;
            }
            eprintln!("{name} not ready: {out}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(served, "{name} never served the client's own account");
    }

    let s = attack_bound(
        &a,
        "enumerate",
        ENUMERATE,
        "load: {connections: 1, requests: 100}",
        false,
    );
    let f = run_until_alert(&a, &s, "enumeration").await;
    let fired = f.seen.unwrap_or_else(std::time::Instant::now);
    assert!((20..=22).contains(&f.at), "fired at id {}", f.at);
    // B refuses the client's own account once it has read the quarantine.
    let json = b.dir.path().join("own.json");
    let mut refused = None;
    for _ in 0..50 {
        let before = b.up.count();
        let (code, out, err) = loadgen(vec![
            "--scenario".into(),
            arg(&on_b),
            "--json".into(),
            arg(&json),
            "--quiet".into(),
        ])
        .await;
        assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
        let r: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        if r["statuses"] == json!({"403": 1}) {
            refused = Some((r, before));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (r, before) = refused.expect("B never refused the quarantined client");
    eprintln!(
        "fleet: B refused the client {} ms after A's alert was seen (an upper bound: B is asked only after A's run ends, each try starts a load generator)",
        fired.elapsed().as_millis()
    );
    assert_eq!(r["refusals"], json!({"403 detect.quarantined": 1}), "{r}");
    assert_eq!(b.up.count(), before, "nothing upstream on B");
    let last =
        b.p.audit()
            .into_iter()
            .rfind(|r| r["kind"] == "request")
            .unwrap();
    assert_eq!(last["reason"], "detect.quarantined");
    assert_eq!(last["decision"], "deny");
    assert!(
        alerts_of(&b).is_empty(),
        "the alert is A's: {:?}",
        alerts_of(&b)
    );
    drop(redis);
}

/// The realistic mix of the false-positive check: tpp1 (account reads with a DPoP-bound token,
/// a nonce route, payments signed and with idempotency keys, a certificate-bound reader) and
/// tpp2 (another certificate and client id, short-lived tokens it refreshes only when refused
/// as expired), each reading its own accounts, tpp1 now and then following a stale link to a
/// closed account.
fn fp_mix(e: &Env, load: &str) -> PathBuf {
    let c = |f: &str| certs().join(f).display().to_string();
    let token = |client_id: &str, binding: &str, claims: &str, extra: &str| {
        format!(
            "      signing_key: {as_key}\n      issuer: {ISS}\n      audience: {AUD}\n      client_id: {client_id}\n      scopes: [accounts, payments]\n      claims: {claims}\n      binding: {binding}\n{extra}",
            as_key = c("as.key"),
        )
    };
    let dpop = format!("      dpop_key: {}\n", c("dpop.key"));
    let short = "      lifetime: 10s\n      refresh: on_expiry\n";
    let text = format!(
        r#"name: fp-mix
target:
  address: {addr}
  server_name: localhost
  ca: {ca}
  public_base_url: {BASE}
clients:
  - name: tpp1-dpop
    cert: {tpp1}
    key: {tpp1_key}
    weight: 3
    token:
{t1}
  - name: tpp1-cert
    cert: {tpp1}
    key: {tpp1_key}
    token:
{t1c}
  - name: tpp2-dpop
    cert: {tpp2}
    key: {tpp2_key}
    weight: 2
    token:
{t2}
  - name: tpp2-cert
    cert: {tpp2}
    key: {tpp2_key}
    token:
{t2c}
routes:
  - name: accounts.list
    path: /dpop/accounts
    headers: {{x-fapi-interaction-id: "{{uuid}}"}}
    clients: [tpp1-dpop, tpp2-dpop]
    weight: 6
    expect: [200]
  - name: tpp1.own
    path: /accounts/acc-1
    clients: [tpp1-dpop]
    weight: 4
    expect: [200]
  - name: tpp2.own
    path: /accounts/acc-9
    clients: [tpp2-dpop]
    weight: 4
    expect: [200]
  - name: stale.link
    path: /accounts/acc-closed
    clients: [tpp1-dpop]
    weight: 1
    expect: [404]
  - name: nonce.accounts
    path: /nonce/accounts
    clients: [tpp1-dpop]
    weight: 1
    expect: [200]
  - name: cert.accounts
    path: /cert/accounts
    clients: [tpp1-cert, tpp2-cert]
    weight: 3
    expect: [200]
{payment}
{load}
"#,
        addr = e.p.addr,
        ca = c("ca.pem"),
        tpp1 = c("tpp1.pem"),
        tpp1_key = c("tpp1.key"),
        tpp2 = c("tpp2.pem"),
        tpp2_key = c("tpp2.key"),
        t1 = token("tpp-one", "dpop", "{accounts: [acc-1, acc-2]}", &dpop),
        t1c = token("tpp-one", "cert", "{}", ""),
        t2 = token("tpp-two", "dpop", "{accounts: [acc-9]}", short),
        t2c = token("tpp-two", "cert", "{}", short),
        payment = ROUTES
            .split("  - name: payment")
            .nth(1)
            .map(|p| format!("  - name: payment{p}"))
            .unwrap()
            .replace("clients: [dpop]", "clients: [tpp1-dpop]")
            .replace("weight: 2", "weight: 3")
            .replace(
                "JWS_KEY",
                &e.dir.path().join("jws.key").display().to_string()
            ),
    );
    let path = e.dir.path().join("fp-mix.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

/// False positives, the short version of `benches/detection_fp.sh`: the realistic mix from
/// two certificates and two client ids, open loop for 40 s, under the shipped detection
/// defaults, raises no alert; expired tokens are refused and refreshed on the way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_realistic_fapi_mix_from_several_clients_raises_no_alert_under_the_shipped_defaults() {
    let e = env_edit(Some(FileDetection::default()), |c| {
        // Tokens end on time (10 s lifetimes), so the refresh-on-expiry path is taken.
        if let Some(i) = c.issuers.get_mut("as") {
            i.clock_skew = Some(dur("1s"));
        }
    })
    .await;
    let s = fp_mix(
        &e,
        "load: {mode: open, rate: 25, connections: 8, max_outstanding: 64, duration: 40s}\nthresholds: {max_error_rate: 0}",
    );
    let json = e.dir.path().join("fp.json");
    let (code, out, err) = loadgen(vec![
        "--scenario".into(),
        arg(&s),
        "--json".into(),
        arg(&json),
        "--quiet".into(),
    ])
    .await;
    // The report says which requests counted as errors (by status and reason), which the
    // exit code alone does not.
    let report = std::fs::read_to_string(&json).unwrap_or_default();
    assert_eq!(
        code,
        Some(0),
        "stdout:\n{out}\nstderr:\n{err}\nreport:\n{report}"
    );
    let r: Value = serde_json::from_str(&report).unwrap();
    let recs: Vec<Value> =
        e.p.audit()
            .into_iter()
            .filter(|r| r["kind"] == "request")
            .collect();
    let mut by_client = std::collections::BTreeMap::<String, usize>::new();
    let mut by_status = std::collections::BTreeMap::<String, usize>::new();
    for rec in &recs {
        // The certificate's organisation and the token's client id (none when the token
        // was refused before it was verified, as an expired one is).
        let who = format!(
            "{}/{}",
            rec["client_org_id"].as_str().unwrap_or("-"),
            rec["client_id"].as_str().unwrap_or("-")
        );
        *by_client.entry(who).or_default() += 1;
        let status = format!(
            "{} {}",
            rec["status"],
            rec["reason"].as_str().unwrap_or("allowed")
        );
        *by_status.entry(status).or_default() += 1;
    }
    eprintln!(
        "false-positive mix: {} requests; by client {by_client:?}; by status {by_status:?}; token refreshes {}",
        recs.len(),
        r["token_refreshes"]
    );
    let alerts = alerts_of(&e);
    assert!(alerts.is_empty(), "{alerts:?}");
    let (_, metrics) = e.p.admin_get("/metrics").await;
    let fired: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("portcullis_detection_fired_total{"))
        .collect();
    assert_eq!(fired.len(), 6, "{fired:?}");
    assert!(fired.iter().all(|l| l.ends_with(" 0")), "{fired:?}");
    // The mix is what it says: both client ids, expiries refreshed, stale links refused.
    assert!(
        by_client
            .iter()
            .any(|(k, n)| k.ends_with("/tpp-two") && *n > 50),
        "{by_client:?}"
    );
    assert!(r["token_refreshes"].as_u64().unwrap() >= 2, "{r}");
    assert!(
        by_status.keys().any(|k| k.contains("token.expired")),
        "{by_status:?}"
    );
    assert!(
        by_status.keys().any(|k| k.contains("authz.object_hidden")),
        "{by_status:?}"
    );
}
