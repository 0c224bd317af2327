//! Fault injection: what the proxy does when what it depends on fails — the upstream (refusing,
//! slow, resetting before or during its answer), the issuer's key source (down, slow, garbage),
//! the consent source, the audit disk, a bad config on reload, and a client certificate that
//! expires while its connection is open. docs/failure-behaviour.md lists each with its reason.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use portcullis_proxy::config::Config;

fn empty() -> Full<Bytes> {
    Full::new(Bytes::new())
}

const ACCOUNTS: &str = "/open-banking/v3.1/aisp/accounts";

async fn metrics(p: &Proxy) -> String {
    p.admin_get("/metrics").await.1
}

/// The value of the first metric line starting with `prefix` (0 when absent).
fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Days from now to the listener certificate's notAfter, from its expiry timestamp gauge.
fn expiry_days(text: &str) -> f64 {
    let at = metric(text, "portcullis_server_cert_expiry_timestamp_seconds ");
    (at - time::OffsetDateTime::now_utc().unix_timestamp() as f64) / 86_400.0
}

/// Sends GET `path` as tpp1 over HTTP/1.1 or HTTP/2; the answer (or the client's error) and
/// the interaction id.
async fn get_as(
    p: &Proxy,
    path: &str,
    h2: bool,
) -> (Result<portcullis_tools::client::Answer, String>, String) {
    let id = uuid::Uuid::new_v4().to_string();
    let uri = if h2 {
        format!("https://localhost{path}")
    } else {
        path.to_string()
    };
    let mut r = http::Request::get(uri).header("x-fapi-interaction-id", &id);
    if !h2 {
        r = r.header("host", "localhost");
    }
    let mut c = p.client(Some("tpp1"), h2).await.expect("connect");
    (
        c.send(r.body(empty()).unwrap())
            .await
            .map_err(|e| e.to_string()),
        id,
    )
}

/// A refusal the proxy made for a failing dependency: status and reason on the wire, one
/// record with decision `error` (upstream) or `deny`, and the metric by reason.
async fn assert_failed(
    p: &Proxy,
    a: &portcullis_tools::client::Answer,
    id: &str,
    status: u16,
    reason: &str,
) -> serde_json::Value {
    assert_eq!(
        a.status.as_u16(),
        status,
        "{}",
        String::from_utf8_lossy(&a.body)
    );
    assert_eq!(a.json()["reason"], reason);
    assert_eq!(a.headers["x-fapi-interaction-id"], id);
    let rec = p.audit_of(id).await;
    assert_eq!(rec["reason"], reason);
    assert_eq!(rec["status"], status);
    rec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_refusing_connections_is_502_and_it_recovers_when_it_listens_again() {
    let dead = Upstream::dead_addr().await;
    let p = Proxy::start(Options::new(dead)).await;
    for h2 in [false, true] {
        let (a, id) = get_as(&p, ACCOUNTS, h2).await;
        let rec = assert_failed(&p, &a.unwrap(), &id, 502, "upstream.connect_failed").await;
        assert_eq!(
            (rec["decision"].as_str(), rec["stage"].as_str()),
            (Some("error"), Some("upstream"))
        );
        assert!(rec.get("upstream_status").is_none());
    }
    let m = metrics(&p).await;
    assert_eq!(
        metric(
            &m,
            "portcullis_requests_by_decision_total{decision=\"error\"}"
        ),
        2.0,
        "{m}"
    );
    assert!(m.contains("reason=\"upstream.connect_failed\""), "{m}");
    // The upstream comes back on the same address: the next request goes through (a failed
    // connect is not remembered).
    let up = Upstream::serve(Upstream::revive(dead), Behaviour::Ok);
    let (a, _) = get_as(&p, ACCOUNTS, false).await;
    assert_eq!(a.unwrap().status, 200);
    assert_eq!(up.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upstream_is_504_at_the_response_timeout_and_the_next_request_is_unaffected() {
    let up = Upstream::start(Behaviour::Hang).await;
    let mut o = Options::new(up.addr);
    o.bank().response_timeout = Some(dur("500ms"));
    let p = Proxy::start(o).await;
    let t = Instant::now();
    let (a, id) = get_as(&p, ACCOUNTS, false).await;
    let took = t.elapsed();
    let rec = assert_failed(&p, &a.unwrap(), &id, 504, "upstream.timeout").await;
    assert_eq!(rec["decision"], "error");
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(5),
        "{took:?}"
    );
    up.set(Behaviour::Ok);
    let (a, _) = get_as(&p, ACCOUNTS, true).await;
    assert_eq!(a.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_reset_before_its_answer_is_502_bad_response() {
    let up = Upstream::start(Behaviour::ResetBeforeHead).await;
    let p = Proxy::start(Options::new(up.addr)).await;
    for h2 in [false, true] {
        let (a, id) = get_as(&p, ACCOUNTS, h2).await;
        let rec = assert_failed(&p, &a.unwrap(), &id, 502, "upstream.bad_response").await;
        assert_eq!(rec["decision"], "error");
    }
    up.set(Behaviour::Ok);
    assert_eq!(get_as(&p, ACCOUNTS, false).await.0.unwrap().status, 200);
}

/// The response streams back, so a reset after the head reaches the client as a truncated
/// body (HTTP/1.1: the connection closes short of Content-Length; HTTP/2: RST_STREAM), and the
/// audit record — written when the head is sent — says 200 from the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_reset_mid_body_truncates_the_response_the_client_sees() {
    let up = Upstream::start(Behaviour::ResetMidBody).await;
    let p = Proxy::start(Options::new(up.addr)).await;
    for h2 in [false, true] {
        let (a, id) = get_as(&p, ACCOUNTS, h2).await;
        let e = match a {
            Err(e) => e,
            Ok(a) => panic!("a complete answer {} with {} bytes", a.status, a.body.len()),
        };
        eprintln!(
            "reset mid-body, {}: client error: {e}",
            if h2 { "HTTP/2" } else { "HTTP/1.1" }
        );
        let rec = p.audit_of(&id).await;
        assert_eq!(
            (rec["status"].as_u64(), rec["upstream_status"].as_u64()),
            (Some(200), Some(200)),
            "{rec}"
        );
    }
    // The proxy keeps serving.
    up.set(Behaviour::Ok);
    assert_eq!(get_as(&p, ACCOUNTS, true).await.0.unwrap().status, 200);
}

use portcullis_crypto::jose::sign::SigningKey;
use portcullis_crypto::jose::Alg;

const ISS: &str = "https://as.example";
const AUD: &str = "https://rs.example";

fn thumb(name: &str) -> String {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_file(certs().join(format!("{name}.pem")))
        .unwrap();
    portcullis_crypto::pki::thumbprint_s256(der.as_ref())
}

fn now() -> i64 {
    use portcullis_base::clock::Clock;
    portcullis_base::clock::SystemClock.now()
}

/// A certificate-bound token for tpp1 from `key`, with `extra` claims.
fn token(key: &SigningKey, extra: serde_json::Value) -> String {
    let mut c = serde_json::json!({"iss": ISS, "aud": AUD, "exp": now() + 300, "iat": now(),
        "scope": "accounts", "cnf": {"x5t#S256": thumb("tpp1")}});
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    key.access_token(&c)
}

async fn with_token(
    p: &Proxy,
    path: &str,
    token: &str,
) -> (portcullis_tools::client::Answer, String, Duration) {
    let t = Instant::now();
    let (a, id) = p
        .send(
            req("GET", path)
                .header("authorization", format!("Bearer {token}"))
                .body(empty())
                .unwrap(),
        )
        .await;
    (a, id, t.elapsed())
}

const AUTH_POLICY: &str = "group: t\nupstream: bank\nroutes:\n  - id: accounts\n    method: GET\n    path: /accounts\n    auth: {profile: fapi2}\n  - id: balances\n    method: GET\n    path: /accounts/{AccountId}/balances\n    auth: {profile: fapi2}\n    consent: {claim: openbanking_intent_id, permissions: [ReadBalances]}\n    rules:\n      - {id: in-consent, value: {path: AccountId}, in: {consent: accounts}}\n";

/// The key source (JWKS URL) down or slow before any set: not ready and 503 within the fetch
/// timeout; once a set is good, a slow, failing or garbage source never replaces it, known keys
/// keep working without waiting for the source, and an unknown kid waits at most the fetch
/// timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_or_garbage_key_source_keeps_the_last_good_set() {
    let key = SigningKey::generate(Alg::ES256, "k1").unwrap();
    let jwks = Source::start(Reply::Hang).await;
    let up = Upstream::start(Behaviour::Ok).await;
    let mut o = Options::new(up.addr);
    o.policy = AUTH_POLICY.split("  - id: balances").next().unwrap().into();
    let keys = FileJwks {
        url: Some(format!("https://localhost:{}/jwks", jwks.addr.port())),
        ca: vec![certs().join("ca.pem").display().to_string()],
        refresh_interval: Some(dur("1s")),
        min_refetch_interval: Some(dur("1s")),
        fetch_timeout: Some(dur("500ms")),
        ..FileJwks::default()
    };
    let issuer = FileIssuer {
        issuer: ISS.into(),
        audience: AUD.into(),
        jwks: Some(keys),
        ..FileIssuer::default()
    };
    o.config.issuers.insert("as".into(), issuer);
    let p = Proxy::start(o).await;
    // Slow before any set.
    assert_eq!(p.admin_get("/readyz").await.0, 503);
    let (a, id, took) = with_token(&p, "/accounts", &token(&key, serde_json::json!({}))).await;
    assert_failed(&p, &a, &id, 503, "token.keys_unavailable").await;
    assert!(
        took < Duration::from_secs(3),
        "waited {took:?} for a slow key source"
    );
    // Down (500) before any set: the same.
    jwks.set(Reply::With(500, String::new()));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (a, id, _) = with_token(&p, "/accounts", &token(&key, serde_json::json!({}))).await;
    assert_failed(&p, &a, &id, 503, "token.keys_unavailable").await;
    assert_eq!(p.admin_get("/readyz").await.0, 503);
    // The source answers: ready, and tokens pass.
    jwks.set(Reply::With(200, key.jwks().to_string()));
    assert!(p.ready_within(Duration::from_secs(10)).await, "never ready");
    assert_eq!(
        with_token(&p, "/accounts", &token(&key, serde_json::json!({})))
            .await
            .0
            .status,
        200
    );
    // Then it goes bad in every way; the set it had keeps serving.
    let huge = format!("{{\"keys\":[],\"pad\":\"{}\"}}", "x".repeat(2 << 20));
    let unusable =
        serde_json::json!({"keys": [{"kty": "oct", "kid": "k1", "k": "c2VjcmV0"}]}).to_string();
    for (what, answer) in [
        ("slow", Reply::Hang),
        ("down", Reply::With(503, String::new())),
        ("not JSON", Reply::With(200, "<html>".into())),
        ("an empty set", Reply::With(200, "{\"keys\":[]}".into())),
        ("only unusable keys", Reply::With(200, unusable)),
        ("2 MiB", Reply::With(200, huge)),
    ] {
        jwks.set(answer);
        tokio::time::sleep(Duration::from_millis(1600)).await;
        let (a, _, took) = with_token(&p, "/accounts", &token(&key, serde_json::json!({}))).await;
        assert_eq!(
            a.status,
            200,
            "{what}: {}",
            String::from_utf8_lossy(&a.body)
        );
        assert!(
            took < Duration::from_secs(2),
            "{what}: a known key waited {took:?}"
        );
        assert_eq!(p.admin_get("/readyz").await.0, 200, "{what}");
    }
    // An unknown kid while the source is slow waits at most the fetch timeout.
    jwks.set(Reply::Hang);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let other = SigningKey::generate(Alg::ES256, "k2").unwrap();
    let (a, id, took) = with_token(&p, "/accounts", &token(&other, serde_json::json!({}))).await;
    assert_failed(&p, &a, &id, 401, "token.unknown_key").await;
    assert!(
        took < Duration::from_secs(3),
        "an unknown kid waited {took:?}"
    );
    let m = metrics(&p).await;
    assert!(
        metric(&m, "portcullis_key_source_failures_total{issuer=\"as\"}") >= 6.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "portcullis_key_source_ready{issuer=\"as\"}"),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "portcullis_key_source_keys{issuer=\"as\"}"),
        1.0,
        "{m}"
    );
}

/// A consent source that is slow, failing or answering garbage refuses with 503 (never
/// allows), within its timeout; failures are not cached, so it recovers at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_consent_source_refuses_with_503_and_recovers() {
    let key = SigningKey::generate(Alg::ES256, "k1").unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("jwks.json"), key.jwks().to_string()).unwrap();
    let consent = Source::start(Reply::Hang).await;
    let up = Upstream::start(Behaviour::Ok).await;
    let mut o = Options::new(up.addr);
    o.policy = AUTH_POLICY.into();
    o.config.issuers.insert(
        "as".into(),
        file_issuer(ISS, AUD, &dir.path().join("jwks.json")),
    );
    o.config.consent = Some(FileConsentSource {
        url: Some(format!(
            "https://localhost:{}/consents/{{id}}",
            consent.addr.port()
        )),
        ca: vec![certs().join("ca.pem").display().to_string()],
        timeout: Some(dur("500ms")),
        ttl: Some(dur("60s")),
        ..FileConsentSource::default()
    });
    let p = Proxy::start(o).await;
    let t = token(&key, serde_json::json!({"openbanking_intent_id": "aac-1"}));
    let good = serde_json::json!({"Data": {"ConsentId": "aac-1", "Status": "Authorised",
        "ExpirationDateTime": "2099-01-01T00:00:00+00:00", "Permissions": ["ReadBalances"], "accounts": ["acc-1"]}});
    for (what, answer) in [
        ("slow", Reply::Hang),
        ("500", Reply::With(500, String::new())),
        ("not JSON", Reply::With(200, "<html>".into())),
        (
            "JSON that is not a consent",
            Reply::With(200, "{\"Data\":7}".into()),
        ),
    ] {
        consent.set(answer);
        let (a, id, took) = with_token(&p, "/accounts/acc-1/balances", &t).await;
        let rec = assert_failed(&p, &a, &id, 503, "authz.consent_unavailable").await;
        assert_eq!(rec["stage"], "authz", "{what}");
        assert!(took < Duration::from_secs(3), "{what}: waited {took:?}");
    }
    assert_eq!(
        up.count(),
        0,
        "nothing was allowed while the consent was unknown"
    );
    assert!(
        consent.hits() >= 4,
        "a failure is not cached: each request asked again"
    );
    consent.set(Reply::With(200, good.to_string()));
    let (a, _, _) = with_token(&p, "/accounts/acc-1/balances", &t).await;
    assert_eq!(
        a.status,
        200,
        "recovered: {}",
        String::from_utf8_lossy(&a.body)
    );
    // A known answer is cached for its TTL; a consent not yet known is refused while the source
    // is down.
    consent.set(Reply::With(503, String::new()));
    assert_eq!(
        with_token(&p, "/accounts/acc-1/balances", &t)
            .await
            .0
            .status,
        200
    );
    let t2 = token(&key, serde_json::json!({"openbanking_intent_id": "aac-2"}));
    let (a, id, _) = with_token(&p, "/accounts/acc-1/balances", &t2).await;
    assert_failed(&p, &a, &id, 503, "authz.consent_unavailable").await;
}

// ---------------------------------------------------------------------------------------------
// The audit disk. Running as root, permissions do not stop writes, so the audit path is a
// symlink: to /dev/full (every write fails with ENOSPC), later swapped for a regular file. On a
// write error the writer reopens the path, so the swap is the disk coming back.

/// A proxy whose audit path is a symlink to /dev/full; returns it, the symlink and the file the
/// symlink will point to once the disk "recovers". `queue_full` is the audit queue policy
/// (default: block).
async fn on_a_full_disk(
    up: SocketAddr,
    queue_full: Option<&str>,
) -> (
    Proxy,
    std::path::PathBuf,
    std::path::PathBuf,
    tempfile::TempDir,
) {
    let d = tempfile::tempdir().unwrap();
    let link = d.path().join("audit.log");
    std::os::unix::fs::symlink("/dev/full", &link).unwrap();
    let target = d.path().join("recovered.log");
    let mut o = Options::new(up);
    o.config.audit = FileAudit {
        sink: Some("file".into()),
        path: Some(link.display().to_string()),
        queue_capacity: Some(4),
        queue_full: queue_full.map(Into::into),
        ..FileAudit::default()
    };
    let p = Proxy::start(o).await;
    (p, link, target, d)
}

/// Points the symlink at a regular file (atomically, as a remount or a freed disk would).
fn disk_recovers(link: &std::path::Path, target: &std::path::Path) {
    std::fs::write(target, b"").unwrap();
    let tmp = link.with_extension("tmp");
    std::os::unix::fs::symlink(target, &tmp).unwrap();
    std::fs::rename(&tmp, link).unwrap();
}

fn records(file: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn chain_verifies(file: &std::path::Path) {
    let bytes = std::fs::read(file).unwrap();
    let o = portcullis_audit::verify::verify_bytes(
        &[(file, &bytes)],
        &portcullis_audit::verify::Options::default(),
    );
    assert!(o.ok(), "{o}");
}

async fn until_unhealthy(p: &Proxy) {
    for _ in 0..500 {
        if !p.shared.audit.healthy() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the audit output never showed as failing");
}

/// Under `block` (the default), a failing disk is counted and makes the proxy unready; the
/// records of requests already answered wait in the bounded queue, and once it is full the next
/// response is held until its record can be queued — so no request is answered without its
/// record, and at most the queue capacity (+1 being written) are answered while the disk fails.
/// When the disk comes back every record is written, in one verified chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_audit_disk_under_block_holds_responses_once_the_queue_is_full() {
    let up = Upstream::start(Behaviour::Ok).await;
    let (p, link, target, _d) = on_a_full_disk(up.addr, None).await;
    let p = Arc::new(p);
    let mut answered = Vec::new();
    let mut held = None;
    for _ in 0..10 {
        let p2 = p.clone();
        let task = tokio::spawn(async move { p2.get(ACCOUNTS).await });
        // A request that has not finished in 1.5 s is held (a served one takes milliseconds).
        tokio::time::sleep(Duration::from_millis(1500)).await;
        if task.is_finished() {
            let (a, id) = task.await.unwrap();
            assert_eq!(a.status, 200);
            answered.push(id);
        } else {
            held = Some(task);
            break;
        }
    }
    let held = held.expect("a response is held once the queue is full");
    eprintln!(
        "audit disk failing under block: {} answered, then held; upstream saw {}",
        answered.len(),
        up.count()
    );
    assert_eq!(
        up.count(),
        answered.len() + 1,
        "the held request has reached the upstream"
    );
    assert!(
        (1..=6).contains(&answered.len()),
        "{} answered while the disk failed",
        answered.len()
    );
    assert!(!p.shared.audit.healthy());
    assert_eq!(p.admin_get("/readyz").await.0, 503);
    let m = metrics(&p).await;
    assert_eq!(metric(&m, "portcullis_audit_output_failing"), 1.0, "{m}");
    assert!(
        metric(&m, "portcullis_audit_write_errors_total") >= 1.0,
        "{m}"
    );
    assert_eq!(metric(&m, "portcullis_audit_queue_depth"), 4.0, "{m}");
    assert_eq!(
        metric(&m, "portcullis_audit_records_dropped_total"),
        0.0,
        "{m}"
    );
    disk_recovers(&link, &target);
    let (a, id) = tokio::time::timeout(Duration::from_secs(10), held)
        .await
        .expect("the held response is released when the disk recovers")
        .unwrap();
    assert_eq!(a.status, 200);
    answered.push(id);
    assert!(p.shared.audit.sync(Duration::from_secs(10)));
    assert_eq!(p.admin_get("/readyz").await.0, 200);
    let recs = records(&target);
    for id in &answered {
        assert_eq!(
            recs.iter()
                .filter(|r| r["interaction_id"] == id.as_str())
                .count(),
            1,
            "{id}"
        );
    }
    chain_verifies(&target);
    assert_eq!(p.get(ACCOUNTS).await.0.status, 200);
}

/// Under `refuse`, a failing disk refuses new requests at once (503 `audit.unavailable`, nothing
/// forwarded), is counted and makes the proxy unready; it serves again when writes work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_audit_disk_under_refuse_refuses_until_writes_work() {
    let up = Upstream::start(Behaviour::Ok).await;
    let (p, link, target, _d) = on_a_full_disk(up.addr, Some("refuse")).await;
    let (a, first) = p.get(ACCOUNTS).await;
    assert_eq!(a.status, 200, "admitted before the failure shows");
    until_unhealthy(&p).await;
    let before = up.count();
    for _ in 0..3 {
        let (a, id) = p.get(ACCOUNTS).await;
        assert_eq!(a.status, 503);
        assert_eq!(a.json()["reason"], "audit.unavailable");
        assert_eq!(a.json()["interaction_id"], id.as_str());
    }
    assert_eq!(
        up.count(),
        before,
        "nothing forwarded while the audit fails"
    );
    assert_eq!(p.admin_get("/readyz").await.0, 503);
    let m = metrics(&p).await;
    assert_eq!(metric(&m, "portcullis_audit_output_failing"), 1.0, "{m}");
    assert!(
        metric(&m, "portcullis_audit_write_errors_total") >= 1.0,
        "{m}"
    );
    assert!(m.contains("reason=\"audit.unavailable\""), "{m}");
    disk_recovers(&link, &target);
    assert!(p.shared.audit.sync(Duration::from_secs(10)));
    assert!(p.shared.audit.healthy());
    assert_eq!(p.admin_get("/readyz").await.0, 200);
    let (a, last) = p.get(ACCOUNTS).await;
    assert_eq!(a.status, 200);
    assert!(p.shared.audit.sync(Duration::from_secs(10)));
    let recs = records(&target);
    for id in [&first, &last] {
        assert_eq!(
            recs.iter()
                .filter(|r| r["interaction_id"] == id.as_str())
                .count(),
            1,
            "{id}"
        );
    }
    chain_verifies(&target);
}

// ---------------------------------------------------------------------------------------------
// A bad config on reload.

/// Each kind of bad change is refused whole, naming the file; the old config keeps serving;
/// every refusal is counted; a good change afterwards applies. One bad change arrives through
/// the file watcher rather than a direct reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_config_on_reload_keeps_the_old_one_serving_and_is_counted() {
    let up = Upstream::start(Behaviour::Ok).await;
    let p = Proxy::start(Options::new(up.addr)).await;
    let config = p.config_path();
    let policy = p.dir.path().join("policies/test.yaml");
    let good_config = std::fs::read_to_string(&config).unwrap();
    let good_policy = std::fs::read_to_string(&policy).unwrap();
    let junk = p.dir.path().join("junk.pem");
    std::fs::write(
        &junk,
        "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let new_route = "  - id: new.route\n    method: GET\n    path: /new\n";
    let server_key = certs().join("server.key").display().to_string();
    // The config file is the kit's typed config written as JSON: edits are made to its value.
    let unknown_field = {
        let mut v: serde_json::Value = serde_json::from_str(&good_config).unwrap();
        v["surprise"] = 1.into();
        v.to_string()
    };
    let bad_issuer = {
        let mut f: FileConfig = serde_json::from_str(&good_config).unwrap();
        f.issuers
            .insert("as".into(), file_issuer("https://as", "https://rs", &junk));
        serde_json::to_string_pretty(&f).unwrap()
    };
    let cases: Vec<(&str, String, String, &str)> = vec![
        (
            "YAML syntax",
            good_config.clone() + "listener: [\n",
            good_policy.clone() + new_route,
            "portcullis.yaml",
        ),
        (
            "unknown field",
            unknown_field,
            good_policy.clone() + new_route,
            "surprise",
        ),
        (
            "missing certificate file",
            good_config.replace(&server_key, "/nonexistent/server.key"),
            good_policy.clone() + new_route,
            "/nonexistent/server.key",
        ),
        (
            "garbage private key",
            good_config.replace(&server_key, &junk.display().to_string()),
            good_policy.clone() + new_route,
            "listener.tls",
        ),
        (
            "garbage issuer key set",
            bad_issuer,
            good_policy.clone() + new_route,
            "junk.pem",
        ),
        (
            "route naming an unknown upstream",
            good_config.clone(),
            good_policy.clone() + new_route + "    upstream: nowhere\n",
            "nowhere",
        ),
        (
            "duplicate route id",
            good_config.clone(),
            good_policy.clone() + "  - id: accounts.list\n    method: GET\n    path: /dup\n",
            "accounts.list",
        ),
    ];
    let n = cases.len() as f64;
    for (what, c, pol, named) in cases {
        std::fs::write(&config, &c).unwrap();
        std::fs::write(&policy, &pol).unwrap();
        let err = p.shared.reload().expect_err(what).to_string();
        assert!(
            err.contains(named),
            "{what}: the error names {named}: {err}"
        );
        assert_eq!(
            p.get(ACCOUNTS).await.0.status,
            200,
            "{what}: the old config serves"
        );
        assert_eq!(
            p.get("/new").await.0.status,
            404,
            "{what}: nothing of the new config applies"
        );
    }
    let m = metrics(&p).await;
    assert_eq!(
        metric(&m, "portcullis_config_reloads_total{result=\"failed\"}"),
        n,
        "{m}"
    );
    // Through the watcher.
    std::fs::write(&config, &good_config).unwrap();
    std::fs::write(&policy, &good_policy).unwrap();
    portcullis_proxy::watch(p.shared.clone(), tokio_util::sync::CancellationToken::new()).unwrap();
    let tmp = p.dir.path().join("policies/.tmp");
    std::fs::write(
        &tmp,
        good_policy.clone() + "  - id: broken\n    method: FETCH\n    path: /x\n",
    )
    .unwrap();
    std::fs::rename(&tmp, &policy).unwrap();
    let mut counted = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if metric(
            &metrics(&p).await,
            "portcullis_config_reloads_total{result=\"failed\"}",
        ) > n
        {
            counted = true;
            break;
        }
    }
    assert!(counted, "the watcher's failed reload is counted");
    assert_eq!(p.get(ACCOUNTS).await.0.status, 200);
    // A good change applies.
    std::fs::write(&tmp, good_policy + new_route).unwrap();
    std::fs::rename(&tmp, &policy).unwrap();
    let mut status = 0;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        status = p.get("/new").await.0.status.as_u16();
        if status == 200 {
            break;
        }
    }
    assert_eq!(status, 200, "a good change after bad ones applies");
}

// ---------------------------------------------------------------------------------------------
// Certificates expiring while running.

/// A client certificate from the dev CA valid until `not_after`, written beside the dev
/// certificates as `{stem}.pem` / `{stem}.key`.
fn short_lived_client(stem: &str, not_after: time::OffsetDateTime) {
    use rcgen::{DnType, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose};
    let dir = certs();
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name
        .push(DnType::OrganizationName, "Tpp Short Ltd");
    p.distinguished_name
        .push(DnType::CustomDnType(vec![2, 5, 4, 97]), "PSDGB-FCA-777777");
    p.distinguished_name.push(DnType::CommonName, stem);
    p.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    p.not_after = not_after;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let ca_key = KeyPair::from_pem(&std::fs::read_to_string(dir.join("ca.key")).unwrap()).unwrap();
    let mut ca = rcgen::CertificateParams::default();
    ca.distinguished_name = rcgen::DistinguishedName::new();
    ca.distinguished_name
        .push(DnType::OrganizationName, "portcullis dev");
    ca.distinguished_name
        .push(DnType::CommonName, "portcullis dev CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = p.signed_by(&key, &rcgen::Issuer::new(ca, ca_key)).unwrap();
    std::fs::write(dir.join(format!("{stem}.pem")), cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{stem}.key")), key.serialize_pem()).unwrap();
}

async fn get_on(
    c: &mut portcullis_tools::client::Conn,
    h2: bool,
) -> (portcullis_tools::client::Answer, String) {
    let id = uuid::Uuid::new_v4().to_string();
    let uri = if h2 {
        format!("https://localhost{ACCOUNTS}")
    } else {
        ACCOUNTS.to_string()
    };
    let mut r = http::Request::get(uri).header("x-fapi-interaction-id", &id);
    if !h2 {
        r = r.header("host", "localhost");
    }
    (c.send(r.body(empty()).unwrap()).await.expect("send"), id)
}

/// A client certificate that expires while its connections are open: new handshakes fail
/// (`cert_expired`), and requests on the connections already open are refused from then on
/// (401 `identity.client_cert_expired`) — an open keep-alive or HTTP/2 connection does not
/// outlive its certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_expiring_mid_connection_is_refused_from_then_on() {
    let expires = time::OffsetDateTime::now_utc() + time::Duration::seconds(4);
    short_lived_client("short", expires);
    let up = Upstream::start(Behaviour::Ok).await;
    let p = Proxy::start(Options::new(up.addr)).await;
    let mut h1 = p.client(Some("short"), false).await.unwrap();
    let mut h2 = p.client(Some("short"), true).await.unwrap();
    assert_eq!(get_on(&mut h1, false).await.0.status, 200);
    assert_eq!(get_on(&mut h2, true).await.0.status, 200);
    let wait = (expires - time::OffsetDateTime::now_utc())
        .whole_milliseconds()
        .max(0) as u64;
    tokio::time::sleep(Duration::from_millis(wait + 1500)).await;
    let refused = match p.client(Some("short"), false).await {
        Err(_) => true,
        Ok(mut c) => c
            .send(req("GET", ACCOUNTS).body(empty()).unwrap())
            .await
            .is_err(),
    };
    assert!(refused, "a new handshake with the expired certificate");
    let recs = p.audit_where(1, |r| r["kind"] == "tls_handshake").await;
    assert_eq!(recs.last().unwrap()["failure"], "cert_expired");
    let forwarded = up.count();
    for (c, is_h2) in [(&mut h1, false), (&mut h2, true)] {
        let (a, id) = get_on(c, is_h2).await;
        assert_eq!(a.status, 401, "{}", String::from_utf8_lossy(&a.body));
        assert_eq!(a.json()["reason"], "identity.client_cert_expired");
        let rec = p.audit_of(&id).await;
        assert_eq!(rec["reason"], "identity.client_cert_expired");
        assert_eq!(rec["stage"], "identity");
    }
    assert_eq!(
        up.count(),
        forwarded,
        "nothing forwarded for an expired certificate"
    );
}

/// The same with the proxy's clock (Options.clock) moved past a long-lived certificate's
/// notAfter: the check reads the clock every request, not the handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_expiry_check_reads_the_proxys_clock_on_every_request() {
    use portcullis_base::clock::{Clock, ManualClock};
    let clock = Arc::new(ManualClock::new(now()));
    let up = Upstream::start(Behaviour::Ok).await;
    let mut o = Options::new(up.addr);
    o.clock = Some(clock.clone() as Arc<dyn Clock>);
    let p = Proxy::start(o).await;
    let mut c = p.client(Some("tpp1"), false).await.unwrap();
    assert_eq!(get_on(&mut c, false).await.0.status, 200);
    clock.advance(3 * 365 * 86_400);
    let (a, id) = get_on(&mut c, false).await;
    assert_eq!(a.status, 401, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.json()["reason"], "identity.client_cert_expired");
    assert_eq!(
        p.audit_of(&id).await["reason"],
        "identity.client_cert_expired"
    );
    assert_eq!(
        up.count(),
        1,
        "only the request before expiry was forwarded"
    );
}

/// A server certificate for `localhost` from the dev CA, valid from `from` to `to`, written to
/// `dir` as `server.pem` / `server.key` (replacing what is there).
fn server_cert(
    dir: &std::path::Path,
    from: time::OffsetDateTime,
    to: time::OffsetDateTime,
) -> Vec<u8> {
    use rcgen::{DnType, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose};
    let mut p = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, "localhost");
    p.not_before = from;
    p.not_after = to;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    p.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let ca_key =
        KeyPair::from_pem(&std::fs::read_to_string(certs().join("ca.key")).unwrap()).unwrap();
    let mut ca = rcgen::CertificateParams::default();
    ca.distinguished_name = rcgen::DistinguishedName::new();
    ca.distinguished_name
        .push(DnType::OrganizationName, "portcullis dev");
    ca.distinguished_name
        .push(DnType::CommonName, "portcullis dev CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = p.signed_by(&key, &rcgen::Issuer::new(ca, ca_key)).unwrap();
    std::fs::write(dir.join("server.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
    cert.der().to_vec()
}

/// The certificate the proxy presents to a new connection.
async fn presented(p: &Proxy) -> Vec<u8> {
    let tls = p.tls(Some("tpp1"), false).await.unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0]
        .as_ref()
        .to_vec()
}

/// The server certificate close to expiry shows in the metric; a renewed one written to the
/// same files is presented to new connections after a reload; an expired replacement is
/// refused at reload (the old, still valid one keeps serving) and a proxy never starts with one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_certificate_near_expiry_is_renewed_by_reload_and_an_expired_one_refused() {
    let now = time::OffsetDateTime::now_utc();
    let d = tempfile::tempdir().unwrap();
    let first = server_cert(
        d.path(),
        now - time::Duration::hours(1),
        now + time::Duration::hours(12),
    );
    let up = Upstream::start(Behaviour::Ok).await;
    let mut o = Options::new(up.addr);
    o.config.listener.tls.certificate = d.path().join("server.pem").display().to_string();
    o.config.listener.tls.private_key = d.path().join("server.key").display().to_string();
    let p = Proxy::start(o).await;
    assert_eq!(presented(&p).await, first);
    let days = expiry_days(&metrics(&p).await);
    assert!(days > 0.0 && days < 1.0, "expiry in {days} days");
    // Renewed on disk, then reloaded (SIGHUP or the watcher do the same).
    let renewed = server_cert(
        d.path(),
        now - time::Duration::hours(1),
        now + time::Duration::days(90),
    );
    p.shared.reload().expect("a renewed certificate reloads");
    assert_eq!(presented(&p).await, renewed);
    let days = expiry_days(&metrics(&p).await);
    assert!(days > 89.0, "expiry in {days} days");
    assert_eq!(p.get(ACCOUNTS).await.0.status, 200);
    // An expired replacement: refused, the renewed one keeps serving.
    server_cert(
        d.path(),
        now - time::Duration::days(30),
        now - time::Duration::days(1),
    );
    let err = p
        .shared
        .reload()
        .expect_err("an expired server certificate")
        .to_string();
    assert!(
        err.contains("listener.tls.certificate") && err.contains("expired"),
        "{err}"
    );
    assert_eq!(presented(&p).await, renewed);
    let config = Config::load(&p.config_path())
        .err()
        .expect("start-up refuses it too")
        .to_string();
    assert!(config.contains("expired"), "{config}");
}
