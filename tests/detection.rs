//! Behavioural detection end to end (docs/detection.md): real mTLS clients against a lab proxy
//! on a manual clock. Enumeration of 100 account ids fires the enumeration detector within its
//! configured count (one `kind: alert` record, the metric) and quarantines the client: its next
//! requests are refused three ways (403 `detect.quarantined` with `Retry-After`, nothing
//! upstream, one audit record) until an operator lifts the quarantine from the admin listener
//! with its bearer token. Probing 30 undeclared routes and replaying one DPoP proof fire their
//! detectors; a webhook receiver that never answers costs requests nothing and its alerts are
//! counted as dropped or failed. The shipped defaults raise nothing on a well-behaved mix.

mod common;
mod support {
    pub(crate) mod attack;
    pub(crate) mod h2raw;
}

use std::time::{Duration, Instant};

use common::{dur, FileDetection, FileDetector, FileFirstUse, FileVolume, FileWebhook};
use portcullis_crypto::jose::sign::SigningKey;
use portcullis_crypto::jose::Alg;
use serde_json::{json, Value};
use support::attack::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const POLICY: &str = r#"
group: detect
upstream: bank
routes:
  - id: hidden
    method: GET
    path: /hidden/{AccountId}
    auth: {profile: fapi2}
    rules:
      - {id: hide, value: {path: AccountId}, in: {claim: accounts}, deny_status: 404}
  - id: balances
    method: GET
    path: /accounts/{AccountId}/balances
    auth: {profile: fapi2}
    scopes: {all_of: [accounts]}
    rules:
      - {id: own-account, value: {path: AccountId}, in: {claim: accounts}}
  - id: accounts
    method: GET
    path: /accounts
    auth: {profile: fapi2}
  - id: payments
    method: POST
    path: /payments
    auth: {profile: fapi2}
    scopes: {all_of: [payments]}
  - id: optional
    method: GET
    path: /optional
    client_cert: optional
    auth: {profile: bearer}
"#;

const ADMIN_TOKEN: &str = "0123456789abcdef0123456789abcdef-admin";

fn detector(threshold: u32, action: &str) -> Option<FileDetector> {
    Some(FileDetector {
        threshold: Some(threshold),
        window: Some(dur("1m")),
        action: Some(action.into()),
    })
}

/// A lab with `detection` (and the admin token file next to the config).
async fn lab(detection: FileDetection) -> Lab {
    lab_with(detection, |_| {}).await
}

async fn lab_with(detection: FileDetection, edit: impl FnOnce(&mut common::FileConfig)) -> Lab {
    let mut o = LabOptions::new(POLICY);
    edit(&mut o.config);
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, format!("{ADMIN_TOKEN}\n")).unwrap();
    let mut detection = detection;
    detection.admin_token_file = Some(token_file.display().to_string());
    o.config.detection = Some(detection);
    let lab = Lab::start(o).await;
    // The token file must outlive the proxy's start only (read at load).
    drop(dir);
    lab
}

fn token(lab: &Lab) -> String {
    lab.token(json!({"accounts": ["acc-1"], "scope": "accounts"}))
}

/// An admin request with an optional bearer token: status and JSON body.
async fn admin(p: &common::Proxy, method: &str, path: &str, bearer: Option<&str>) -> (u16, Value) {
    let mut tcp = tokio::net::TcpStream::connect(p.admin).await.unwrap();
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: admin\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tcp.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// The value of a metric sample line that starts with `prefix` (name and labels).
async fn metric(p: &common::Proxy, prefix: &str) -> Option<f64> {
    let (_, text) = p.admin_get("/metrics").await;
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A GET with bearer `t` that must be answered 200; its interaction id.
async fn get_ok(p: &common::Proxy, path: &str, t: &str) -> String {
    let id = fresh_ids(1).remove(0);
    let a = send(p, &Req::get(path).bearer(t), &id).await.unwrap();
    assert_eq!(a.status, 200, "{path}: {:?}", a.json());
    id
}

/// Interaction ids (UUIDs: the proxy replaces anything else).
fn fresh_ids(n: usize) -> Vec<String> {
    (0..n).map(|_| uuid::Uuid::new_v4().to_string()).collect()
}

fn alerts(p: &common::Proxy) -> Vec<Value> {
    p.audit()
        .into_iter()
        .filter(|r| r["kind"] == "alert")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enumeration_quarantines_the_client_until_an_operator_lifts_it() {
    let lab = lab(FileDetection {
        enumeration: detector(20, "quarantine"),
        quarantine_ttl: Some(dur("10m")),
        ..FileDetection::default()
    })
    .await;
    let t = token(&lab);
    let tpp1 = format!("cert:{}", thumb("tpp1"));
    // Enumerate 100 account ids: hidden 404s until the detector fires, then quarantined.
    let mut hidden = 0;
    let mut quarantined = 0;
    for i in 0..100 {
        let r = Req::get(&format!("/hidden/acc-victim-{i}")).bearer(&t);
        let a = send(&lab.p, &r, &uuid::Uuid::new_v4().to_string())
            .await
            .unwrap();
        match (a.status.as_u16(), a.json()["reason"].as_str()) {
            (404, Some("route.not_found")) if quarantined == 0 => hidden += 1,
            (403, Some("detect.quarantined")) => quarantined += 1,
            other => panic!("request {i}: {other:?}"),
        }
    }
    // Linear counting may need an object or two more than the threshold after a collision;
    // never fewer.
    assert!((20..=22).contains(&hidden), "fired after {hidden} objects");
    assert_eq!(hidden + quarantined, 100);
    assert_eq!(lab.up.count(), 0);
    let found = lab.p.audit_where(1, |r| r["kind"] == "alert").await;
    assert_eq!(found.len(), 1, "{found:?}");
    let a = &found[0];
    assert_eq!(a["detector"], "enumeration");
    assert_eq!(a["action"], "quarantine");
    assert_eq!(a["subject"], tpp1.as_str());
    assert_eq!(a["client_id"], "tpp-one");
    assert_eq!(a["count"], 20);
    assert_eq!(a["threshold"], 20);
    assert!(a["quarantined_until"].is_string(), "{a}");
    assert_eq!(
        metric(
            &lab.p,
            "portcullis_detection_fired_total{detector=\"enumeration\"}"
        )
        .await,
        Some(1.0)
    );
    assert_eq!(
        metric(&lab.p, "portcullis_detection_quarantined ").await,
        Some(1.0)
    );

    // The account the client may read is refused too, three ways.
    let id = uuid::Uuid::new_v4().to_string();
    let a = send(&lab.p, &Req::get("/hidden/acc-1").bearer(&t), &id)
        .await
        .unwrap();
    common::assert_refused(&lab.p, &lab.up, &a, &id, 403, "detect.quarantined").await;
    assert_eq!(a.headers["retry-after"], "600");
    let rec = lab.p.audit_of(&id).await;
    assert_eq!(rec["stage"], "detect");
    // Before any token is checked: no token at all is refused the same way.
    let a = send(&lab.p, &Req::get("/accounts"), "nt").await.unwrap();
    assert_eq!(a.json()["reason"], "detect.quarantined");
    // Another client is not quarantined.
    let t2 = lab.token_for(
        "tpp2",
        json!({"accounts": ["acc-1"], "client_id": "tpp-two"}),
    );
    let a = send(
        &lab.p,
        &Req::get("/hidden/acc-1").bearer(&t2).as_(Some("tpp2")),
        "t2",
    )
    .await
    .unwrap();
    assert_eq!(a.status, 200);

    // Listing and lifting need the admin bearer token.
    let path = format!("/quarantines/{tpp1}");
    assert_eq!(admin(&lab.p, "GET", "/quarantines", None).await.0, 401);
    assert_eq!(admin(&lab.p, "DELETE", &path, None).await.0, 401);
    let wrong = "0123456789abcdef0123456789abcdef-admiN";
    assert_eq!(admin(&lab.p, "DELETE", &path, Some(wrong)).await.0, 401);
    assert_eq!(
        metric(&lab.p, "portcullis_detection_quarantined ").await,
        Some(1.0)
    );
    let (s, list) = admin(&lab.p, "GET", "/quarantines", Some(ADMIN_TOKEN)).await;
    assert_eq!(s, 200);
    assert_eq!(list["quarantines"][0]["subject"], tpp1.as_str());
    assert_eq!(list["quarantines"][0]["detector"], "enumeration");
    assert_eq!(list["quarantines"][0]["retry_after_s"], 600);
    let (s, body) = admin(&lab.p, "DELETE", &path, Some(ADMIN_TOKEN)).await;
    assert_eq!((s, body["lifted"].as_str()), (200, Some(tpp1.as_str())));
    let lifts = lab
        .p
        .audit_where(1, |r| r["kind"] == "quarantine_lifted")
        .await;
    assert_eq!(lifts.len(), 1, "{lifts:?}");
    assert_eq!(lifts[0]["subject"], tpp1.as_str());
    assert!(lifts[0]["admin_peer"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    assert_eq!(
        admin(&lab.p, "DELETE", &path, Some(ADMIN_TOKEN)).await.0,
        404
    );
    let a = send(&lab.p, &Req::get("/hidden/acc-1").bearer(&t), "back")
        .await
        .unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(alerts(&lab.p).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quarantine_ends_with_its_ttl() {
    let lab = lab(FileDetection {
        enumeration: detector(3, "quarantine"),
        quarantine_ttl: Some(dur("30s")),
        ..FileDetection::default()
    })
    .await;
    let t = token(&lab);
    for i in 0..3 {
        let r = Req::get(&format!("/accounts/acc-x{i}/balances")).bearer(&t);
        let a = send(&lab.p, &r, &format!("e{i}")).await.unwrap();
        assert_eq!(a.json()["reason"], "authz.object");
    }
    let a = send(&lab.p, &Req::get("/accounts").bearer(&t), "q")
        .await
        .unwrap();
    assert_eq!(a.json()["reason"], "detect.quarantined");
    assert_eq!(a.headers["retry-after"], "30");
    lab.clock().advance(30);
    let t = token(&lab);
    let a = send(&lab.p, &Req::get("/accounts").bearer(&t), "free")
        .await
        .unwrap();
    assert_eq!(a.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probing_thirty_undeclared_routes_raises_one_alert_at_the_default_threshold() {
    let lab = lab(FileDetection::default()).await;
    let t = token(&lab);
    let mut ids = Vec::new();
    for i in 0..30 {
        let id = uuid::Uuid::new_v4().to_string();
        let r = Req::get(&format!("/admin/probe-{i}")).bearer(&t);
        let a = send(&lab.p, &r, &id).await.unwrap();
        // `alert` refuses nothing by itself: each probe is answered as before.
        assert_eq!(a.json()["reason"], "route.not_found", "probe {i}");
        ids.push(id);
    }
    let found = lab.p.audit_where(1, |r| r["kind"] == "alert").await;
    assert_eq!(found.len(), 1, "{found:?}");
    let a = &found[0];
    assert_eq!(
        (a["detector"].as_str(), a["action"].as_str()),
        (Some("probing"), Some("alert"))
    );
    assert_eq!(a["threshold"], 10);
    assert_eq!(a["quarantined_until"], Value::Null);
    let at = ids
        .iter()
        .position(|id| a["interaction_id"] == id.as_str())
        .expect("the alert names the request that fired it")
        + 1;
    assert!((10..=12).contains(&at), "fired at probe {at}");
    assert_eq!(
        metric(
            &lab.p,
            "portcullis_detection_fired_total{detector=\"probing\"}"
        )
        .await,
        Some(1.0)
    );
    assert_eq!(lab.up.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_dpop_proofs_raise_the_replay_alert() {
    let lab = lab(FileDetection {
        replay: detector(5, "alert"),
        ..FileDetection::default()
    })
    .await;
    let client = SigningKey::generate(Alg::ES256, "c").unwrap();
    let t = lab.dpop_token(&client, json!({"jti": "dpop-token"}));
    let proof = proof(&client, "GET", "/accounts", &t, "the-one-jti");
    let r = Req::get("/accounts")
        .header("authorization", format!("DPoP {t}"))
        .header("dpop", proof);
    let first = send(&lab.p, &r, "first").await.unwrap();
    assert_eq!(first.status, 200);
    let ids = fresh_ids(8);
    for id in &ids {
        let a = send(&lab.p, &r, id).await.unwrap();
        assert_eq!(a.json()["reason"], "binding.dpop_replay");
    }
    let found = lab.p.audit_where(1, |r| r["kind"] == "alert").await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["detector"], "replay");
    assert_eq!(found[0]["count"], 5);
    assert_eq!(found[0]["interaction_id"], ids[4].as_str());
    assert_eq!(found[0]["reason"], "binding.dpop_replay");
    assert_eq!(lab.up.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_failures_are_counted_per_certificate_and_per_peer_address_without_one() {
    let detection = FileDetection {
        credential_abuse: detector(4, "quarantine"),
        quarantine_ttl: Some(dur("1m")),
        ..FileDetection::default()
    };
    // Certificates optional at the handshake: the routes say which need one.
    let lab = lab_with(detection, |c| {
        c.listener.tls.client_auth = Some("optional".into())
    })
    .await;
    let ids = fresh_ids(6);
    for id in &ids {
        let r = Req::get("/accounts").bearer("not-a-jwt");
        let a = send(&lab.p, &r, id).await.unwrap();
        let reason = a.json()["reason"].as_str().unwrap().to_string();
        assert!(
            reason.starts_with("token.") || reason == "detect.quarantined",
            "{reason}"
        );
    }
    let found = lab.p.audit_where(1, |r| r["kind"] == "alert").await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["detector"], "credential_abuse");
    // tpp1's certificate is the subject: it is verified before the token.
    assert_eq!(found[0]["subject"], format!("cert:{}", thumb("tpp1")));
    assert_eq!(found[0]["interaction_id"], ids[3].as_str());
    // Without a certificate nothing is known but the address: that is the subject.
    for id in fresh_ids(4) {
        let r = Req::get("/optional").bearer("not-a-jwt").as_(None);
        let a = send(&lab.p, &r, &id).await.unwrap();
        assert_eq!(a.status, 401, "{:?}", a.json());
    }
    let found = lab.p.audit_where(2, |r| r["kind"] == "alert").await;
    assert_eq!(found.len(), 2, "{found:?}");
    assert_eq!(found[1]["subject"], "peer:127.0.0.1");
    // The address is quarantined: refused before anything else, with or without a certificate.
    let a = send(&lab.p, &Req::get("/optional").as_(None), &fresh_ids(1)[0])
        .await
        .unwrap();
    assert_eq!(a.json()["reason"], "detect.quarantined");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_receiver_that_never_answers_costs_requests_nothing_and_drops_are_counted() {
    // Accepts connections and never answers.
    let sink = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = sink.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((c, _)) = sink.accept().await {
            held.push(c);
        }
    });
    let lab = lab(FileDetection {
        probing: Some(FileDetector {
            threshold: Some(1),
            window: Some(dur("1s")),
            action: Some("alert".into()),
        }),
        webhook: Some(FileWebhook {
            url: format!("http://{hook}/alerts"),
            queue: Some(1),
            attempts: Some(2),
            timeout: Some(dur("2s")),
            ca: None,
        }),
        ..FileDetection::default()
    })
    .await;
    let t = token(&lab);
    let started = Instant::now();
    for i in 0..10 {
        // A new window each time: every probe fires.
        lab.clock().advance(1);
        let r = Req::get(&format!("/probe-{i}")).bearer(&t);
        let a = send(&lab.p, &r, &format!("p{i}")).await.unwrap();
        assert_eq!(a.json()["reason"], "route.not_found");
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "requests waited on the webhook: {:?}",
        started.elapsed()
    );
    let found = lab.p.audit_where(10, |r| r["kind"] == "alert").await;
    assert_eq!(found.len(), 10);
    let dropped = metric(
        &lab.p,
        "portcullis_detection_webhook_total{outcome=\"dropped\"}",
    )
    .await
    .unwrap();
    let sent = metric(
        &lab.p,
        "portcullis_detection_webhook_total{outcome=\"sent\"}",
    )
    .await
    .unwrap();
    // One alert in flight, one queued, the rest dropped.
    assert!(dropped >= 8.0, "dropped {dropped}");
    assert_eq!(sent, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_receiver_gets_each_alert_as_json() {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Value>(8);
    let sink = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = sink.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = sink.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let n = c.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len: usize = head
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse().ok())?
                            })
                            .unwrap_or(0);
                        if body.len() >= len {
                            let _ = tx.send(serde_json::from_str(body).unwrap()).await;
                            let _ = c
                                .write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
                                .await;
                            buf.clear();
                        }
                    }
                }
            });
        }
    });
    let lab = lab(FileDetection {
        probing: detector(2, "alert"),
        webhook: Some(FileWebhook {
            url: format!("http://{hook}/alerts"),
            ..FileWebhook::default()
        }),
        ..FileDetection::default()
    })
    .await;
    let t = token(&lab);
    let ids = fresh_ids(3);
    for (i, id) in ids.iter().enumerate() {
        let r = Req::get(&format!("/probe-{i}")).bearer(&t);
        send(&lab.p, &r, id).await.unwrap();
    }
    let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("the webhook was posted")
        .unwrap();
    assert_eq!(got["kind"], "alert");
    assert_eq!(got["detector"], "probing");
    assert_eq!(got["subject"], format!("cert:{}", thumb("tpp1")));
    assert_eq!(got["interaction_id"], ids[1].as_str());
    for _ in 0..50 {
        if metric(
            &lab.p,
            "portcullis_detection_webhook_total{outcome=\"sent\"}",
        )
        .await
            == Some(1.0)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the sent counter never reached 1");
}

/// A client calling at a steady 2 requests a second, then 8 in one second: the volume detector
/// fires on the 6th of them (3 × its baseline of 1.875, above the minimum of 5), once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_spike_against_the_clients_own_baseline_raises_the_volume_alert() {
    let lab = lab(FileDetection {
        volume: Some(FileVolume {
            multiple: Some(3.0),
            min_requests: Some(5),
            warmup: Some(3),
            bucket: Some(dur("1s")),
            ..FileVolume::default()
        }),
        ..FileDetection::default()
    })
    .await;
    let t = token(&lab);
    for _ in 0..4 {
        for _ in 0..2 {
            let a = send(&lab.p, &Req::get("/accounts").bearer(&t), &fresh_ids(1)[0])
                .await
                .unwrap();
            assert_eq!(a.status, 200);
        }
        lab.clock().advance(1);
    }
    let ids = fresh_ids(8);
    for id in &ids {
        let a = send(&lab.p, &Req::get("/accounts").bearer(&t), id)
            .await
            .unwrap();
        // `alert`: the spike is served.
        assert_eq!(a.status, 200);
    }
    let found = lab.p.audit_where(1, |r| r["kind"] == "alert").await;
    assert_eq!(found.len(), 1, "{found:?}");
    let a = &found[0];
    assert_eq!(
        (a["detector"].as_str(), a["count"].as_u64()),
        (Some("volume"), Some(6))
    );
    assert_eq!(a["route_id"], "accounts");
    assert_eq!(a["interaction_id"], ids[5].as_str());
    assert_eq!(
        metric(
            &lab.p,
            "portcullis_detection_fired_total{detector=\"volume\"}"
        )
        .await,
        Some(1.0)
    );
}

/// The volume baseline is per route class: two routes that name one rate-limit class are one
/// rate. A client calling each once a second (its class: 2 a second), then 3 times each in one
/// second, fires on the 6th request of the class — neither route alone reaches the minimum of
/// 5 — and the alert names the route of that request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_of_one_rate_limit_class_share_one_volume_baseline() {
    const CLASS_POLICY: &str = r#"
group: detect
upstream: bank
routes:
  - id: accounts
    method: GET
    path: /accounts
    auth: {profile: fapi2}
    rate_limit: reads
  - id: balances
    method: GET
    path: /accounts/{AccountId}/balances
    auth: {profile: fapi2}
    rate_limit: reads
    rules:
      - {id: own-account, value: {path: AccountId}, in: {claim: accounts}}
"#;
    let mut o = LabOptions::new(CLASS_POLICY);
    o.config.rate_limits.classes.insert(
        "reads".into(),
        common::FileQuota {
            rate: 10_000,
            per: dur("1s"),
            burst: Some(10_000),
            shadow: false,
        },
    );
    o.config.detection = Some(FileDetection {
        volume: Some(FileVolume {
            multiple: Some(3.0),
            min_requests: Some(5),
            warmup: Some(3),
            bucket: Some(dur("1s")),
            ..FileVolume::default()
        }),
        ..FileDetection::default()
    });
    let lab = Lab::start(o).await;
    let t = token(&lab);
    for _ in 0..4 {
        get_ok(&lab.p, "/accounts", &t).await;
        get_ok(&lab.p, "/accounts/acc-1/balances", &t).await;
        lab.clock().advance(1);
    }
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(get_ok(&lab.p, "/accounts", &t).await);
        ids.push(get_ok(&lab.p, "/accounts/acc-1/balances", &t).await);
    }
    let found = lab.p.audit_where(1, |r| r["kind"] == "alert").await;
    assert_eq!(found.len(), 1, "{found:?}");
    let a = &found[0];
    assert_eq!(
        (a["detector"].as_str(), a["count"].as_u64()),
        (Some("volume"), Some(6))
    );
    assert_eq!(a["route_id"], "balances");
    assert_eq!(a["interaction_id"], ids[5].as_str());
}

/// After the learning period, the first request let through on a route the client never used
/// raises one first-use alert; the routes it used while learning raise none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_first_used_after_the_learning_period_raises_the_first_use_alert() {
    let lab = lab(FileDetection {
        first_use: Some(FileFirstUse {
            learning: Some(dur("1h")),
            ..FileFirstUse::default()
        }),
        ..FileDetection::default()
    })
    .await;
    let t = token(&lab);
    get_ok(&lab.p, "/accounts", &t).await;
    lab.clock().advance(3600);
    // A fresh token: the first one's lifetime is shorter than the learning period.
    let t = lab.token(
        json!({"accounts": ["acc-1"], "iat": NOW + 3600, "nbf": NOW + 3599, "exp": NOW + 3900}),
    );
    get_ok(&lab.p, "/accounts", &t).await;
    let first = get_ok(&lab.p, "/hidden/acc-1", &t).await;
    get_ok(&lab.p, "/hidden/acc-1", &t).await;
    let found = lab.p.audit_where(1, |r| r["kind"] == "alert").await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["detector"], "first_use");
    assert_eq!(found[0]["route_id"], "hidden");
    assert_eq!(found[0]["interaction_id"], first.as_str());
}

/// A scope the client never used (the balances route requires `accounts`; the route it used
/// while learning requires none), after the learning period: the first-use alert names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scope_first_used_after_the_learning_period_is_named_in_the_first_use_alert() {
    let lab = lab(FileDetection {
        first_use: Some(FileFirstUse {
            learning: Some(dur("1h")),
            ..FileFirstUse::default()
        }),
        ..FileDetection::default()
    })
    .await;
    let t = token(&lab);
    get_ok(&lab.p, "/accounts", &t).await;
    lab.clock().advance(3600);
    let t = lab.token(
        json!({"accounts": ["acc-1"], "scope": "accounts", "iat": NOW + 3600,
        "nbf": NOW + 3599, "exp": NOW + 3900}),
    );
    let first = get_ok(&lab.p, "/accounts/acc-1/balances", &t).await;
    get_ok(&lab.p, "/accounts/acc-1/balances", &t).await;
    let found = lab.p.audit_where(1, |r| r["kind"] == "alert").await;
    assert_eq!(found.len(), 1, "{found:?}");
    let a = &found[0];
    assert_eq!(
        (a["detector"].as_str(), a["reason"].as_str()),
        (Some("first_use"), Some("first_use"))
    );
    assert_eq!(a["route_id"], "balances");
    assert_eq!(a["scope"], "accounts");
    assert_eq!(a["interaction_id"], first.as_str());
}

/// A well-behaved mix from two clients under the shipped defaults: reads of their own
/// accounts, payments, an occasional expired token and refused object (a stale link), a scope
/// refusal or two. Nothing fires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_defaults_raise_nothing_on_a_realistic_mix() {
    let lab = lab(FileDetection::default()).await;
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for (identity, client) in [("tpp1", "tpp-one"), ("tpp2", "tpp-two")] {
        let t = lab.token_for(
            identity,
            json!({"client_id": client, "accounts": ["acc-1", "acc-2"], "scope": "accounts payments"}),
        );
        let expired = lab.token_for(identity, json!({"client_id": client, "exp": NOW - 100}));
        for i in 0..60 {
            let r = match i % 20 {
                0 => Req::get("/accounts").bearer(&expired),
                1 => Req::get("/accounts/acc-closed/balances").bearer(&t),
                2 if i < 40 => Req::get("/unknown").bearer(&t),
                3 => Req::post("/payments", b"{}").bearer(&t),
                n if n % 2 == 0 => Req::get("/accounts/acc-1/balances").bearer(&t),
                _ => Req::get("/hidden/acc-2").bearer(&t),
            };
            let a = send(
                &lab.p,
                &r.as_(Some(identity)),
                &uuid::Uuid::new_v4().to_string(),
            )
            .await
            .unwrap();
            let reason = a.json()["reason"].as_str().unwrap_or("ok").to_string();
            *counts.entry(reason).or_default() += 1;
        }
    }
    eprintln!("false-positive mix: {counts:?}");
    assert_eq!(
        lab.p.audit_where(1, |r| r["kind"] == "alert").await.len(),
        0
    );
    assert!(counts["ok"] > 80, "{counts:?}");
}

#[test]
fn bad_detection_config_is_refused_naming_file_field_and_reason() {
    let mut c = common::base_config(std::net::SocketAddr::from(([127, 0, 0, 1], 9)));
    c.detection = Some(FileDetection {
        probing: Some(FileDetector {
            action: Some("ban".into()),
            ..FileDetector::default()
        }),
        admin_token_file: Some("missing-token".into()),
        ..FileDetection::default()
    });
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    std::fs::write(dir.path().join("policies/p.yaml"), common::POLICY).unwrap();
    let short = dir.path().join("short-token");
    std::fs::write(&short, "short").unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, serde_json::to_string(&c).unwrap()).unwrap();
    let e = portcullis_proxy::config::Config::load(&path)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("c.yaml: detection.probing.action: unknown value `ban`"),
        "{e}"
    );
    assert!(e.contains("detection.admin_token_file: cannot read"), "{e}");
    c.detection = Some(FileDetection {
        admin_token_file: Some(short.display().to_string()),
        ..FileDetection::default()
    });
    std::fs::write(&path, serde_json::to_string(&c).unwrap()).unwrap();
    let e = portcullis_proxy::config::Config::load(&path)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("detection.admin_token_file:") && e.contains("at least 32"),
        "{e}"
    );
}

/// Two instances on one Redis: enumeration spread over both is counted once for the fleet
/// (3 ids on A, then B's 2nd id reaches the threshold of 5: one alert, on B), the quarantine
/// refuses the client on A within a sync interval (1 s), and lifting it on A frees it on B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enumeration_spread_over_two_instances_is_counted_and_quarantined_for_the_fleet() {
    let redis = common::redis::RedisServer::start();
    let detection = || FileDetection {
        enumeration: detector(5, "quarantine"),
        quarantine_ttl: Some(dur("10m")),
        ..FileDetection::default()
    };
    let state = redis.state();
    let a = lab_with(detection(), |c| c.state = state.clone()).await;
    let b = lab_with(detection(), |c| c.state = state.clone()).await;
    let (ta, tb) = (token(&a), token(&b));
    let tpp1 = format!("cert:{}", thumb("tpp1"));
    let r = send(
        &a.p,
        &Req::get("/hidden/acc-1").bearer(&ta),
        &fresh_ids(1)[0],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    for i in 0..3 {
        let r = Req::get(&format!("/hidden/acc-x{i}")).bearer(&ta);
        let r = send(&a.p, &r, &fresh_ids(1)[0]).await.unwrap();
        assert_eq!(r.status, 404);
    }
    let mut statuses = Vec::new();
    for i in 3..8 {
        let r = Req::get(&format!("/hidden/acc-x{i}")).bearer(&tb);
        statuses.push(
            send(&b.p, &r, &fresh_ids(1)[0])
                .await
                .unwrap()
                .status
                .as_u16(),
        );
        // The count is kept off the request path: give it its round trip.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(statuses, [404, 404, 403, 403, 403], "B: {statuses:?}");
    let on_b = b.p.audit_where(1, |r| r["kind"] == "alert").await;
    assert_eq!(on_b.len(), 1, "{on_b:?}");
    assert_eq!(
        (on_b[0]["detector"].as_str(), on_b[0]["count"].as_u64()),
        (Some("enumeration"), Some(5))
    );
    assert!(alerts(&a.p).is_empty());
    // A refuses tpp1 once it has synced (every second), three ways.
    let refused_on_a = async {
        for _ in 0..60 {
            let id = fresh_ids(1).remove(0);
            let before = a.up.count();
            let r = send(&a.p, &Req::get("/hidden/acc-1").bearer(&ta), &id)
                .await
                .unwrap();
            if r.status == 403 {
                return Some((r, id, before));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    };
    let (r, id, before) = refused_on_a.await.expect("A never saw the quarantine");
    assert_eq!(r.json()["reason"], "detect.quarantined");
    assert!(r.headers.contains_key("retry-after"));
    assert_eq!(a.up.count(), before, "nothing upstream");
    assert_eq!(a.p.audit_of(&id).await["reason"], "detect.quarantined");
    let (s, list) = admin(&a.p, "GET", "/quarantines", Some(ADMIN_TOKEN)).await;
    assert_eq!(
        (s, list["quarantines"][0]["subject"].as_str()),
        (200, Some(tpp1.as_str()))
    );
    // Lifted on A: B serves tpp1 again after its next sync.
    let (s, _) = admin(
        &a.p,
        "DELETE",
        &format!("/quarantines/{tpp1}"),
        Some(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(s, 200);
    let mut served = false;
    for _ in 0..60 {
        let r = send(
            &b.p,
            &Req::get("/hidden/acc-1").bearer(&tb),
            &fresh_ids(1)[0],
        )
        .await
        .unwrap();
        if r.status == 200 {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served, "B still refuses tpp1 after the lift on A");
    drop(redis);
}

/// An https:// receiver (the dev server certificate, no client certificate asked): answers
/// each POST 204 and hands its JSON body over.
async fn https_receiver() -> (std::net::SocketAddr, tokio::sync::mpsc::Receiver<Value>) {
    let certs = common::certs();
    use rustls_pki_types::pem::PemObject;
    let chain: Vec<_> = rustls_pki_types::CertificateDer::pem_file_iter(certs.join("server.pem"))
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_file(certs.join("server.key")).unwrap();
    let cfg = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(cfg));
    let (tx, rx) = tokio::sync::mpsc::channel::<Value>(8);
    let sink = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = sink.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = sink.accept().await {
            let (tx, acceptor) = (tx.clone(), acceptor.clone());
            tokio::spawn(async move {
                let Ok(mut c) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let n = c.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    let Some((head, body)) = text.split_once("\r\n\r\n") else {
                        continue;
                    };
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse().ok())?
                        })
                        .unwrap_or(0);
                    if body.len() >= len {
                        let _ = tx.send(serde_json::from_str(body).unwrap()).await;
                        let _ = c
                            .write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
                            .await;
                        buf.clear();
                    }
                }
            });
        }
    });
    (addr, rx)
}

/// The webhook over https (rustls, the project's client stack): a receiver whose certificate
/// chains to `webhook.ca` gets the alert; one that does not (another CA pinned) gets nothing,
/// and each such alert is counted as failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_webhook_receiver_gets_alerts_only_when_its_certificate_chains_to_the_pinned_ca() {
    for (ca, delivered) in [("ca.pem", true), ("rogue-ca.pem", false)] {
        let (hook, mut rx) = https_receiver().await;
        let lab = lab(FileDetection {
            probing: detector(2, "alert"),
            webhook: Some(FileWebhook {
                url: format!("https://localhost:{}/alerts", hook.port()),
                ca: Some(common::certs().join(ca).display().to_string()),
                attempts: Some(2),
                timeout: Some(dur("1s")),
                ..FileWebhook::default()
            }),
            ..FileDetection::default()
        })
        .await;
        let t = token(&lab);
        let ids = fresh_ids(2);
        for (i, id) in ids.iter().enumerate() {
            let r = Req::get(&format!("/probe-{i}")).bearer(&t);
            send(&lab.p, &r, id).await.unwrap();
        }
        let outcome = if delivered { "sent" } else { "failed" };
        let got = tokio::time::timeout(Duration::from_secs(3), rx.recv()).await;
        if delivered {
            let got = got.expect("the webhook was posted").unwrap();
            assert_eq!(got["detector"], "probing");
            assert_eq!(got["interaction_id"], ids[1].as_str());
        } else {
            assert!(
                got.is_err(),
                "posted to a receiver the pinned CA does not vouch for"
            );
        }
        let mut counted = false;
        for _ in 0..100 {
            let m = format!("portcullis_detection_webhook_total{{outcome=\"{outcome}\"}}");
            if metric(&lab.p, &m).await == Some(1.0) {
                counted = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(counted, "{ca}: the {outcome} counter never reached 1");
    }
}

#[test]
fn a_webhook_ca_without_https_or_unreadable_is_refused_at_load() {
    let mut c = common::base_config(std::net::SocketAddr::from(([127, 0, 0, 1], 9)));
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    std::fs::write(dir.path().join("policies/p.yaml"), common::POLICY).unwrap();
    let path = dir.path().join("c.yaml");
    for (url, ca, expect) in [
        (
            "http://hooks.example/a",
            "ca.pem",
            "c.yaml: detection.webhook.ca: only with an https:// url",
        ),
        (
            "https://hooks.example/a",
            "missing.pem",
            "c.yaml: detection.webhook.ca: cannot read",
        ),
        (
            "ftp://hooks.example/a",
            "ca.pem",
            "detection.webhook.url: `ftp://hooks.example/a` must be an http:// or https:// URL",
        ),
    ] {
        c.detection = Some(FileDetection {
            webhook: Some(FileWebhook {
                url: url.into(),
                ca: Some(common::certs().join(ca).display().to_string()),
                ..FileWebhook::default()
            }),
            ..FileDetection::default()
        });
        std::fs::write(&path, serde_json::to_string(&c).unwrap()).unwrap();
        let e = portcullis_proxy::config::Config::load(&path)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains(expect), "{url} {ca}: {e}");
    }
}
