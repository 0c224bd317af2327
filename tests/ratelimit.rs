//! Rate limits through the proxy (docs/attacks.md group H): the per-client class limit keyed by the
//! authenticated identity, the pre-authentication limit per peer, the 429 response and its
//! headers, HTTP/2 streams, token rotation, shadow mode and config checks.

mod common;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use portcullis_crypto::jose::sign::SigningKey;
use portcullis_crypto::jose::Alg;
use serde_json::json;

const POLICY: &str = r#"
group: t
upstream: bank
routes:
  - id: tight
    method: GET
    path: /tight
    rate_limit: tight
  - id: shadowed
    method: GET
    path: /shadowed
    rate_limit: watch
  - id: free
    method: GET
    path: /free
"#;

const BY_CLIENT_ID: &str = r#"
  - id: by-client-id
    method: GET
    path: /by-client-id
    client_cert: optional
    auth: {profile: bearer}
    rate_limit: tight
"#;

/// `rate` requests per `per` with a burst of `burst`.
fn quota(rate: u32, per: &str, burst: Option<u32>, shadow: bool) -> FileQuota {
    FileQuota {
        rate,
        per: dur(per),
        burst,
        shadow,
    }
}

/// The classes `tight` (burst 3 a minute) and `watch` (burst 1 a minute, shadow).
fn limits() -> FileRateLimits {
    FileRateLimits {
        classes: [
            ("tight".to_string(), quota(1, "60s", Some(3), false)),
            ("watch".to_string(), quota(1, "60s", Some(1), true)),
        ]
        .into(),
        ..FileRateLimits::default()
    }
}

async fn start(rate_limits: FileRateLimits) -> (Proxy, Upstream) {
    let up = Upstream::start(Behaviour::Ok).await;
    let mut o = Options::new(up.addr);
    o.policy = POLICY.to_string();
    o.config.rate_limits = rate_limits;
    (Proxy::start(o).await, up)
}

fn get(path: &str) -> http::request::Builder {
    req("GET", path)
}

fn empty() -> Full<Bytes> {
    Full::new(Bytes::new())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h01_h07_the_client_limit_ignores_forwarded_headers_and_429_says_when_to_retry() {
    let (p, up) = start(limits()).await;
    for i in 0..3 {
        let r = get("/tight")
            .header("x-forwarded-for", format!("203.0.113.{i}"))
            .header("forwarded", format!("for=198.51.100.{i}"))
            .body(empty())
            .unwrap();
        let (a, id) = p.send(r).await;
        assert_eq!(a.status, 200);
        let rec = p.audit_of(&id).await;
        assert_eq!(rec["rate_limit"]["scope"], "client");
        assert_eq!(rec["rate_limit"]["limit"], 3);
        assert_eq!(rec["rate_limit"]["remaining"], 2 - i);
        assert_eq!(rec["rate_limit"]["limited"], false);
    }
    // A fourth request with yet another forwarded address: still the same client, still 429.
    let r = get("/tight")
        .header("x-forwarded-for", "192.0.2.99")
        .body(empty())
        .unwrap();
    let (a, id) = p.send(r).await;
    assert_eq!(a.status, 429, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.json()["reason"], "rate_limit.client");
    assert_eq!(a.headers["content-type"], "application/problem+json");
    let retry: u64 = a.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    assert_eq!(a.headers["ratelimit-policy"], "\"tight\";q=1;w=60");
    assert_eq!(
        a.headers["ratelimit"].to_str().unwrap(),
        format!("\"tight\";r=0;t={retry}")
    );
    assert_eq!(
        up.count(),
        3,
        "the refused request must not reach the upstream"
    );
    let rec = p.audit_of(&id).await;
    assert_eq!(rec["reason"], "rate_limit.client");
    assert_eq!(rec["stage"], "rate_limit");
    assert_eq!(rec["decision"], "deny");
    assert_eq!(rec["status"], 429);
    assert_eq!(rec["rate_limit"]["limited"], true);
    assert_eq!(rec["rate_limit"]["reset_s"], retry);
    // Another route without a class is not limited; the metric counts the refusal.
    let (a, _) = p.get("/free").await;
    assert_eq!(a.status, 200);
    let (_, m) = p.admin_get("/metrics").await;
    assert!(
        m.contains("portcullis_rate_limit_refusals_total{scope=\"client\"} 1"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h04_every_http2_stream_is_counted() {
    let (p, up) = start(limits()).await;
    let tls = p.tls(Some("tpp1"), true).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let mut s = sender.clone();
        tasks.push(tokio::spawn(async move {
            s.ready().await.unwrap();
            let r = http::Request::get("https://localhost/tight")
                .body(empty())
                .unwrap();
            let resp = s.send_request(r).await.unwrap();
            let status = resp.status().as_u16();
            let _ = resp.into_body().collect().await;
            status
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    statuses.sort();
    assert_eq!(statuses, [200, 200, 200, 429, 429, 429, 429, 429, 429, 429]);
    assert_eq!(up.count(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h03_token_rotation_stays_in_the_client_id_bucket() {
    let key = SigningKey::generate(Alg::ES256, "as-1").unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("jwks.json"), key.jwks().to_string()).unwrap();
    let up = Upstream::start(Behaviour::Ok).await;
    let mut o = Options::new(up.addr);
    o.policy = format!("{POLICY}{}", BY_CLIENT_ID.trim_start_matches('\n'));
    o.config.listener.tls.client_auth = Some("optional".into());
    o.config.rate_limits = limits();
    o.config.issuers.insert(
        "as".into(),
        file_issuer("https://as", "https://rs", &dir.path().join("jwks.json")),
    );
    let p = Proxy::start(o).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let token = |client: &str, jti: &str| {
        key.access_token(&json!({
            "iss": "https://as", "aud": "https://rs", "exp": now + 300, "iat": now,
            "client_id": client, "jti": jti,
        }))
    };
    // No client certificate: the key is the verified token's client id.
    let send = |t: String| {
        let p = &p;
        async move {
            let mut c = p.client(None, false).await.unwrap();
            c.send(
                get("/by-client-id")
                    .header("authorization", format!("Bearer {t}"))
                    .body(empty())
                    .unwrap(),
            )
            .await
            .unwrap()
        }
    };
    for i in 0..3 {
        assert_eq!(send(token("client-a", &format!("j{i}"))).await.status, 200);
    }
    // A fresh token for the same client: same bucket.
    let a = send(token("client-a", "j-new")).await;
    assert_eq!(a.status, 429);
    assert_eq!(a.json()["reason"], "rate_limit.client");
    // Another client has its own bucket.
    assert_eq!(send(token("client-b", "j0")).await.status, 200);
    assert_eq!(up.count(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h08_the_pre_auth_limit_per_peer_comes_before_identity() {
    let (p, up) = start(FileRateLimits {
        peer: Some(quota(1, "60s", Some(2), false)),
        ..limits()
    })
    .await;
    let (a, _) = p.get("/free").await;
    assert_eq!(a.status, 200);
    let (a, _) = p.get("/free").await;
    assert_eq!(a.status, 200);
    // From the same address, even before any credential is looked at.
    let (a, id) = p.get("/free").await;
    assert_eq!(a.status, 429);
    assert_eq!(a.json()["reason"], "rate_limit.peer");
    assert_eq!(a.headers["ratelimit-policy"], "\"peer\";q=1;w=60");
    assert!(a.headers.contains_key("retry-after"));
    assert_eq!(up.count(), 2);
    let rec = p.audit_of(&id).await;
    assert_eq!(rec["reason"], "rate_limit.peer");
    assert_eq!(rec["rate_limit"]["scope"], "peer");
    assert_eq!(rec["rate_limit"]["limited"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_class_records_but_does_not_refuse() {
    let (p, up) = start(limits()).await;
    let (a, _) = p.get("/shadowed").await;
    assert_eq!(a.status, 200);
    let (a, id) = p.get("/shadowed").await;
    assert_eq!(a.status, 200);
    assert_eq!(up.count(), 2);
    let rec = p.audit_of(&id).await;
    assert_eq!(rec["decision"], "shadow_deny");
    assert_eq!(rec["reason"], "rate_limit.client");
    assert_eq!(rec["rule_id"], "rate_limit:watch");
    assert_eq!(rec["rate_limit"]["limited"], true);
    let (_, m) = p.admin_get("/metrics").await;
    assert!(
        m.contains("portcullis_rate_limit_refusals_total{scope=\"shadow\"} 1"),
        "{m}"
    );
}

#[test]
fn a_route_naming_an_unknown_class_or_a_bad_quota_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = Options::new("127.0.0.1:9".parse().unwrap());
    o.config.rate_limits = FileRateLimits {
        peer: Some(quota(0, "1s", None, false)),
        classes: [("tight".to_string(), quota(1, "0s", None, false))].into(),
        ..FileRateLimits::default()
    };
    o.policy = POLICY.to_string();
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    std::fs::write(dir.path().join("policies/t.yaml"), &o.policy).unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, o.config_text()).unwrap();
    let e = portcullis_proxy::config::Config::load(&path)
        .err()
        .expect("refused")
        .to_string();
    assert!(
        e.contains("rate_limits.peer.rate: must be at least 1"),
        "{e}"
    );
    assert!(e.contains("rate_limits.classes.tight.per"), "{e}");
    assert!(e.contains("unknown rate limit class `watch`"), "{e}");
}
