//! Idempotency keys through the proxy (docs/attacks.md group J): a completed request is replayed
//! from the store without touching the upstream; a concurrent duplicate is 409; another body,
//! path or method under the same key is 422; a missing or malformed key is 400; keys are scoped
//! to the authenticated client; an upstream failure releases the key (or keeps it, by config);
//! a key is new again after its TTL; a route with `idempotency_current` replays the stored
//! status with the resource's current state (OBIE: 201 with the current status).

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::Full;

const POLICY: &str = r#"
group: t
upstream: bank
routes:
  - id: payments.create
    method: POST
    path: /payments
    body_limit: 4096
    idempotency: required
  - id: payments.replace
    method: PUT
    path: /payments
    body_limit: 4096
    idempotency: required
  - id: standing-orders.create
    method: POST
    path: /standing-orders
    body_limit: 4096
    idempotency: required
  - id: consents.create
    method: POST
    path: /consents
    body_limit: 4096
    idempotency: optional
  - id: notes.create
    method: POST
    path: /notes
    body_limit: 4096
  - id: transfers.create
    method: POST
    path: /transfers
    body_limit: 4096
    idempotency: required
    idempotency_current: /payments/{/Data/PaymentId}
"#;

const BODY: &str = r#"{"Data":{"Amount":"10.00","Currency":"GBP"}}"#;

async fn start_with(behaviour: Behaviour, idempotency: FileIdempotency) -> (Proxy, Upstream) {
    let up = Upstream::start(behaviour).await;
    let mut o = Options::new(up.addr);
    o.policy = POLICY.to_string();
    o.config.idempotency = idempotency;
    (Proxy::start(o).await, up)
}

fn post(path: &str, key: Option<&str>, body: &str) -> http::Request<Full<Bytes>> {
    let mut b = req("POST", path).header("content-type", "application/json");
    if let Some(k) = key {
        b = b.header("x-idempotency-key", k);
    }
    b.body(Full::new(Bytes::from(body.to_string()))).unwrap()
}

/// Asserts a refusal by the idempotency stage: status and reason, the upstream count unchanged,
/// one audit record with the reason and the idempotency outcome.
async fn assert_idem_refused(
    p: &Proxy,
    up: &Upstream,
    before: usize,
    a: &portcullis_tools::client::Answer,
    id: &str,
    (status, reason, outcome): (u16, &str, Option<&str>),
) {
    assert_eq!(
        a.status.as_u16(),
        status,
        "body {}",
        String::from_utf8_lossy(&a.body)
    );
    assert_eq!(a.json()["reason"], reason);
    assert_eq!(a.headers["content-type"], "application/problem+json");
    assert!(a.headers.get("x-idempotent-replay").is_none());
    assert_eq!(up.count(), before, "the upstream must receive nothing more");
    let rec = p.audit_of(id).await;
    assert_eq!(rec["reason"], reason);
    assert_eq!(rec["status"], status);
    // Fail closed: a dependency that cannot answer decides nothing about the request.
    let decision = if status == 503 { "error" } else { "deny" };
    assert_eq!(rec["decision"], decision);
    assert_eq!(rec["stage"], "idempotency");
    match outcome {
        Some(o) => assert_eq!(rec["idempotency"], o),
        None => assert!(rec["idempotency"].is_null(), "{rec}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_request_is_replayed_without_the_upstream() {
    let (p, up) = start_with(Behaviour::Created, FileIdempotency::default()).await;
    let (first, id1) = p.send(post("/payments", Some("k-1"), BODY)).await;
    assert_eq!(first.status, 201);
    assert_eq!(first.headers["location"], "/payments/p-1");
    assert!(first.headers.get("x-idempotent-replay").is_none());
    assert_eq!(up.count(), 1);
    assert_eq!(up.seen()[0].body, BODY.as_bytes());
    let rec = p.audit_of(&id1).await;
    assert_eq!(rec["idempotency"], "stored");
    assert_eq!(rec["decision"], "allow");

    // The retry (a new connection, a new interaction id) gets the stored answer.
    let (again, id2) = p.send(post("/payments", Some("k-1"), BODY)).await;
    assert_eq!(again.status, 201);
    assert_eq!(again.body, first.body);
    assert_eq!(again.headers["location"], "/payments/p-1");
    assert_eq!(again.headers["content-type"], "application/json");
    assert_eq!(again.headers["x-idempotent-replay"], "true");
    assert_eq!(again.headers["x-fapi-interaction-id"], id2.as_str());
    assert!(again.headers.get("date").is_some());
    // Hop-by-hop headers the upstream named were cleaned before storing.
    assert!(again.headers.get("x-upstream-secret").is_none());
    assert_eq!(up.count(), 1, "a replay never reaches the upstream");
    let rec = p.audit_of(&id2).await;
    assert_eq!(rec["idempotency"], "replayed");
    assert_eq!(rec["decision"], "allow");
    assert_eq!(rec["status"], 201);
    assert!(rec["upstream_status"].is_null());

    // `Idempotency-Key` (IETF draft) names the same key.
    let r = req("POST", "/payments")
        .header("idempotency-key", "k-1")
        .body(Full::new(Bytes::from(BODY)))
        .unwrap();
    let (third, _) = p.send(r).await;
    assert_eq!(third.body, first.body);
    assert_eq!(third.headers["x-idempotent-replay"], "true");
    assert_eq!(up.count(), 1);

    // Another key is another payment.
    let (other, _) = p.send(post("/payments", Some("k-2"), BODY)).await;
    assert_eq!(other.headers["location"], "/payments/p-2");
    assert_eq!(up.count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn j01_j04_j08_the_same_key_for_another_request_is_422() {
    let (p, up) = start_with(Behaviour::Created, FileIdempotency::default()).await;
    let (first, _) = p.send(post("/payments", Some("k-1"), BODY)).await;
    assert_eq!(first.status, 201);
    // J01: another body.
    let (a, id) = p
        .send(post(
            "/payments",
            Some("k-1"),
            r#"{"Data":{"Amount":"9999.00"}}"#,
        ))
        .await;
    assert_idem_refused(
        &p,
        &up,
        1,
        &a,
        &id,
        (422, "idempotency.key_reused", Some("mismatch")),
    )
    .await;
    // J08: the same JSON with other bytes is another request (fingerprint over raw bytes).
    let same_meaning = r#"{"Data": {"Currency":"GBP","Amount":"10.00"}}"#;
    let (a, id) = p.send(post("/payments", Some("k-1"), same_meaning)).await;
    assert_idem_refused(
        &p,
        &up,
        1,
        &a,
        &id,
        (422, "idempotency.key_reused", Some("mismatch")),
    )
    .await;
    // J04: another path, and another method on the same path.
    let (a, id) = p.send(post("/standing-orders", Some("k-1"), BODY)).await;
    assert_idem_refused(
        &p,
        &up,
        1,
        &a,
        &id,
        (422, "idempotency.key_reused", Some("mismatch")),
    )
    .await;
    let put = req("PUT", "/payments")
        .header("x-idempotency-key", "k-1")
        .body(Full::new(Bytes::from(BODY)))
        .unwrap();
    let (a, id) = p.send(put).await;
    assert_idem_refused(
        &p,
        &up,
        1,
        &a,
        &id,
        (422, "idempotency.key_reused", Some("mismatch")),
    )
    .await;
    // The original still replays.
    let (again, _) = p.send(post("/payments", Some("k-1"), BODY)).await;
    assert_eq!(again.body, first.body);
    assert_eq!(up.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn j02_a_concurrent_duplicate_is_409_and_the_first_still_completes() {
    let (p, up) = start_with(
        Behaviour::Delay(Duration::from_millis(1500)),
        FileIdempotency::default(),
    )
    .await;
    let p = Arc::new(p);
    let first = {
        let p = Arc::clone(&p);
        tokio::spawn(async move { p.send(post("/payments", Some("k-1"), BODY)).await })
    };
    for _ in 0..500 {
        if up.count() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(up.count(), 1, "the first request reached the upstream");
    let (a, id) = p.send(post("/payments", Some("k-1"), BODY)).await;
    assert_idem_refused(
        &p,
        &up,
        1,
        &a,
        &id,
        (409, "idempotency.in_flight", Some("in_flight")),
    )
    .await;
    let (a1, _) = first.await.unwrap();
    assert_eq!(a1.status, 200);
    // Once the first completed, a retry replays it.
    let (again, id) = p.send(post("/payments", Some("k-1"), BODY)).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.headers["x-idempotent-replay"], "true");
    assert_eq!(up.count(), 1);
    assert_eq!(p.audit_of(&id).await["idempotency"], "replayed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn j05_j06_a_missing_or_malformed_key_is_400() {
    let (p, up) = start_with(Behaviour::Created, FileIdempotency::default()).await;
    // J05: required and missing.
    let (a, id) = p.send(post("/payments", None, BODY)).await;
    assert_idem_refused(&p, &up, 0, &a, &id, (400, "idempotency.key_missing", None)).await;
    // J06: too long (OBIE: at most 40 characters), empty, a tab, non-ASCII, and two
    // different values.
    let long = "k".repeat(41);
    let bad: Vec<Vec<(&str, &[u8])>> = vec![
        vec![("x-idempotency-key", long.as_bytes())],
        vec![("x-idempotency-key", b"")],
        vec![("x-idempotency-key", b"a\tb")],
        vec![("x-idempotency-key", "caf\u{e9}".as_bytes())],
        vec![("x-idempotency-key", b"k-1"), ("idempotency-key", b"k-2")],
        vec![("x-idempotency-key", b"k-1"), ("x-idempotency-key", b"k-2")],
    ];
    for headers in bad {
        let mut b = req("POST", "/payments");
        for (n, v) in &headers {
            b = b.header(*n, http::HeaderValue::from_bytes(v).unwrap());
        }
        let (a, id) = p.send(b.body(Full::new(Bytes::from(BODY))).unwrap()).await;
        assert_idem_refused(&p, &up, 0, &a, &id, (400, "idempotency.key_invalid", None)).await;
    }
    // Exactly 40 characters is fine.
    let (a, _) = p.send(post("/payments", Some(&"k".repeat(40)), BODY)).await;
    assert_eq!(a.status, 201);
    assert_eq!(up.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optional_routes_honour_a_key_and_other_routes_ignore_it() {
    let (p, up) = start_with(Behaviour::Created, FileIdempotency::default()).await;
    // Optional: without a key every request is forwarded.
    for _ in 0..2 {
        let (a, id) = p.send(post("/consents", None, BODY)).await;
        assert_eq!(a.status, 201);
        assert!(p.audit_of(&id).await["idempotency"].is_null());
    }
    assert_eq!(up.count(), 2);
    // With a key it is honoured.
    let (a, _) = p.send(post("/consents", Some("c-1"), BODY)).await;
    let (b, _) = p.send(post("/consents", Some("c-1"), BODY)).await;
    assert_eq!(a.body, b.body);
    assert_eq!(b.headers["x-idempotent-replay"], "true");
    assert_eq!(up.count(), 3);
    // A route without idempotency ignores the key entirely.
    let (a, _) = p.send(post("/notes", Some("n-1"), BODY)).await;
    let (b, id) = p.send(post("/notes", Some("n-1"), BODY)).await;
    assert_ne!(a.body, b.body);
    assert!(b.headers.get("x-idempotent-replay").is_none());
    assert!(p.audit_of(&id).await["idempotency"].is_null());
    assert_eq!(up.count(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_scoped_to_the_authenticated_client() {
    let (p, up) = start_with(Behaviour::Created, FileIdempotency::default()).await;
    let (a, _) = p.send(post("/payments", Some("shared"), BODY)).await;
    assert_eq!(a.headers["location"], "/payments/p-1");
    // TPP Two sends the same key and body: its own key, its own payment, not TPP One's answer.
    let mut c = p.client(Some("tpp2"), false).await.unwrap();
    let mut r = post("/payments", Some("shared"), BODY);
    r.headers_mut().insert(
        "x-fapi-interaction-id",
        uuid::Uuid::new_v4().to_string().parse().unwrap(),
    );
    let b = c.send(r).await.unwrap();
    assert_eq!(b.status, 201);
    assert_eq!(b.headers["location"], "/payments/p-2");
    assert!(b.headers.get("x-idempotent-replay").is_none());
    assert_eq!(up.count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn j07_a_key_is_new_again_after_its_ttl() {
    let clock = Arc::new(portcullis_base::clock::ManualClock::new(1_700_000_000));
    let up = Upstream::start(Behaviour::Created).await;
    let mut o = Options::new(up.addr);
    o.policy = POLICY.to_string();
    o.config.idempotency.ttl = Some(dur("1h"));
    o.clock = Some(clock.clone());
    let p = Proxy::start(o).await;
    let (a, _) = p.send(post("/payments", Some("k-1"), BODY)).await;
    clock.advance(3599);
    let (b, _) = p.send(post("/payments", Some("k-1"), BODY)).await;
    assert_eq!(b.body, a.body, "still within the TTL");
    clock.advance(2);
    let (c, id) = p.send(post("/payments", Some("k-1"), BODY)).await;
    assert_eq!(
        c.headers["location"], "/payments/p-2",
        "a new request after the TTL"
    );
    assert_eq!(p.audit_of(&id).await["idempotency"], "stored");
    assert_eq!(up.count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_5xx_releases_the_key_by_default() {
    let (p, up) = start_with(Behaviour::Status(503), FileIdempotency::default()).await;
    let (a, id) = p.send(post("/payments", Some("k-1"), BODY)).await;
    assert_eq!(a.status, 503);
    assert_eq!(p.audit_of(&id).await["idempotency"], "released");
    let (b, id) = p.send(post("/payments", Some("k-1"), BODY)).await;
    assert_eq!(b.status, 503);
    assert!(b.headers.get("x-idempotent-replay").is_none());
    assert_eq!(up.count(), 2, "the retry reached the upstream again");
    assert_eq!(p.audit_of(&id).await["idempotency"], "released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_release_a_5xx_is_stored_and_replayed() {
    let idempotency = FileIdempotency {
        release_on_upstream_error: Some(false),
        ..FileIdempotency::default()
    };
    let (p, up) = start_with(Behaviour::Status(500), idempotency).await;
    let (a, _) = p.send(post("/payments", Some("k-1"), BODY)).await;
    assert_eq!(a.status, 500);
    let (b, id) = p.send(post("/payments", Some("k-1"), BODY)).await;
    assert_eq!(b.status, 500);
    assert_eq!(b.headers["x-idempotent-replay"], "true");
    assert_eq!(up.count(), 1);
    assert_eq!(p.audit_of(&id).await["idempotency"], "replayed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_request_releases_its_key_or_keeps_it_by_config() {
    // Nothing listens upstream: 502, and the key is released, so the retry is tried again.
    let dead = Upstream::dead_addr().await;
    let mut o = Options::new(dead);
    o.policy = POLICY.to_string();
    let p = Proxy::start(o).await;
    for _ in 0..2 {
        let (a, id) = p.send(post("/payments", Some("k-1"), BODY)).await;
        assert_eq!(a.status, 502, "{}", String::from_utf8_lossy(&a.body));
        let rec = p.audit_of(&id).await;
        assert_eq!(rec["idempotency"], "released");
        assert_eq!(rec["stage"], "upstream");
    }
    // Kept: the upstream may have acted, so a retry is 409 until the TTL ends, never a second
    // execution.
    let mut o = Options::new(dead);
    o.policy = POLICY.to_string();
    o.config.idempotency.release_on_upstream_error = Some(false);
    let p = Proxy::start(o).await;
    let (a, id) = p.send(post("/payments", Some("k-1"), BODY)).await;
    assert_eq!(a.status, 502);
    assert_eq!(p.audit_of(&id).await["idempotency"], "kept");
    let (b, id) = p.send(post("/payments", Some("k-1"), BODY)).await;
    assert_eq!(b.status, 409);
    assert_eq!(b.json()["reason"], "idempotency.in_flight");
    assert_eq!(p.audit_of(&id).await["reason"], "idempotency.in_flight");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_larger_than_the_store_limit_is_sent_and_the_key_kept() {
    let idempotency = FileIdempotency {
        max_response_bytes: Some(10),
        ..FileIdempotency::default()
    };
    let (p, up) = start_with(Behaviour::Created, idempotency).await;
    let (a, id) = p.send(post("/payments", Some("k-1"), BODY)).await;
    assert_eq!(a.status, 201);
    assert!(a.body.len() > 10);
    assert_eq!(p.audit_of(&id).await["idempotency"], "kept");
    let (b, id) = p.send(post("/payments", Some("k-1"), BODY)).await;
    assert_idem_refused(
        &p,
        &up,
        1,
        &b,
        &id,
        (409, "idempotency.in_flight", Some("in_flight")),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_store_fails_closed() {
    let idempotency = FileIdempotency {
        capacity: Some(1),
        ..FileIdempotency::default()
    };
    let (p, up) = start_with(Behaviour::Created, idempotency).await;
    let (a, _) = p.send(post("/payments", Some("k-1"), BODY)).await;
    assert_eq!(a.status, 201);
    let (b, id) = p.send(post("/payments", Some("k-2"), BODY)).await;
    assert_idem_refused(
        &p,
        &up,
        1,
        &b,
        &id,
        (503, "idempotency.unavailable", Some("unavailable")),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_idempotency_config_is_refused_with_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start(Behaviour::Ok).await;
    let mut o = Options::new(up.addr);
    o.policy = POLICY.replace("idempotency: optional", "idempotency: sometimes");
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    std::fs::write(dir.path().join("policies/test.yaml"), &o.policy).unwrap();
    let path = dir.path().join("portcullis.yaml");
    std::fs::write(&path, o.config_text()).unwrap();
    let err = portcullis_proxy::config::Config::load(&path)
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("test.yaml"), "{err}");
    assert!(err.contains("idempotency"), "{err}");
    assert!(err.contains("sometimes"), "{err}");
    // And the config section: a store limit beyond 16 MiB.
    let mut o = Options::new(up.addr);
    o.config.idempotency.max_response_bytes = Some(99999999);
    std::fs::write(dir.path().join("policies/test.yaml"), POLICY).unwrap();
    std::fs::write(&path, o.config_text()).unwrap();
    let err = portcullis_proxy::config::Config::load(&path)
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("idempotency.max_response_bytes"), "{err}");
}

/// OBIE Read/Write "Idempotency": a repeated request creates nothing and answers 201 with the
/// resource's current status, read by a GET; when that GET fails the stored answer is sent.
/// Never a second POST.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn obie_a_replay_answers_the_current_state_of_the_resource() {
    let (p, up) = start_with(Behaviour::Created, FileIdempotency::default()).await;
    let (first, id1) = p.send(post("/transfers", Some("t-1"), BODY)).await;
    assert_eq!(first.status, 201);
    assert_eq!(first.body, br#"{"Data":{"PaymentId":"p-1"}}"#.as_slice());
    assert_eq!(p.audit_of(&id1).await["idempotency"], "stored");

    // The payment moved on; the replay shows where it is now, with the stored 201.
    const NOW: &str = r#"{"Data":{"PaymentId":"p-1","Status":"AcceptedSettlementCompleted"}}"#;
    up.set(Behaviour::Json(NOW));
    let (again, id2) = p.send(post("/transfers", Some("t-1"), BODY)).await;
    assert_eq!(again.status, 201);
    assert_eq!(again.body, NOW.as_bytes());
    assert_eq!(again.headers["x-idempotent-replay"], "current");
    assert_eq!(again.headers["location"], "/payments/p-1");
    assert_eq!(again.headers["content-type"], "application/json");
    assert_eq!(again.headers["x-fapi-interaction-id"], id2.as_str());
    let seen = up.seen();
    assert_eq!(seen.len(), 2);
    let get = &seen[1];
    assert_eq!(
        (get.method.as_str(), get.path_and_query.as_str()),
        ("GET", "/payments/p-1")
    );
    assert!(get.body.is_empty());
    assert_eq!(get.headers["x-fapi-interaction-id"], id2.as_str());
    for h in ["x-idempotency-key", "content-type", "content-length"] {
        assert!(get.headers.get(h).is_none(), "{h} must not reach the GET");
    }
    let rec = p.audit_of(&id2).await;
    assert_eq!(rec["idempotency"], "replayed_current");
    assert_eq!(rec["status"], 201);
    assert_eq!(rec["upstream_status"], 200);
    assert_eq!(rec["decision"], "allow");

    // The upstream cannot tell the current state: the stored first answer, still no second POST.
    up.set(Behaviour::Status(503));
    let (third, id3) = p.send(post("/transfers", Some("t-1"), BODY)).await;
    assert_eq!(third.status, 201);
    assert_eq!(third.body, first.body);
    assert_eq!(third.headers["x-idempotent-replay"], "true");
    let rec = p.audit_of(&id3).await;
    assert_eq!(rec["idempotency"], "replayed_stored");
    assert_eq!(rec["upstream_status"], 503);
    let posts = up.seen().iter().filter(|s| s.method == "POST").count();
    assert_eq!(posts, 1, "a replay never executes the payment again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_idempotency_current_path_is_refused_with_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start(Behaviour::Ok).await;
    let o = Options::new(up.addr);
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    let path = dir.path().join("portcullis.yaml");
    std::fs::write(&path, o.config_text()).unwrap();
    for (policy, why) in [
        (
            POLICY.replace(
                "/payments/{/Data/PaymentId}",
                "/payments/{/Data/PaymentId}?x=1",
            ),
            "may not hold",
        ),
        (
            POLICY.replace("/payments/{/Data/PaymentId}", "/payments/p-1"),
            "names no value",
        ),
        (
            POLICY.replace(
                "    idempotency: required\n    idempotency_current",
                "    idempotency_current",
            ),
            "needs `idempotency: required` or `optional`",
        ),
    ] {
        std::fs::write(dir.path().join("policies/test.yaml"), &policy).unwrap();
        let err = portcullis_proxy::config::Config::load(&path)
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains("test.yaml"), "{err}");
        assert!(err.contains("idempotency_current"), "{err}");
        assert!(err.contains(why), "{err}");
    }
}
