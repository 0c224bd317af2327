//! Shared state on Redis for a fleet (docs/attacks.md H06 and the replay rows of D and C):
//! two proxy instances on one private `redis-server` share client quotas, DPoP `jti`s and
//! RFC 9421 nonces; Redis stopped mid-test gives the configured behaviour (replay checks refuse,
//! rate limits fall back or refuse) without a crash or an admitted replay; Redis back (empty)
//! gives service back. The stores are also driven directly against Redis.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::redis::RedisServer;
use common::*;
use http_body_util::Full;
use portcullis_base::clock::{Clock, ManualClock};
use portcullis_crypto::httpsig::digest::{content_digest, DigestAlg};
use portcullis_crypto::httpsig::sign::{component, sign, Params};
use portcullis_crypto::httpsig::{Message, RequestView};
use portcullis_crypto::jose::keypair::KeyPair;
use portcullis_crypto::jose::sign::SigningKey;
use portcullis_crypto::jose::Alg;
use portcullis_tools::client::Answer;
use rustls_pki_types::pem::PemObject;
use serde_json::json;

const NOW: i64 = 1_800_000_000;
const ISS: &str = "https://as.example";
const AUD: &str = "https://rs.example";
const BASE: &str = "https://rs.example";
/// Fleet quota of the `/limited` route: a fixed budget (no refill within a test).
const BURST: u64 = 40;

const POLICY: &str = r#"
group: fleet
upstream: bank
routes:
  - id: dpop.accounts
    method: GET
    path: /accounts
    auth: {profile: fapi2}
  - id: limited
    method: GET
    path: /limited
    rate_limit: fleet
  - id: signed.payments
    method: POST
    path: /signed
    auth: {profile: fapi2}
    signature: {kind: http-sig, nonce: required}
  - id: payments.create
    method: POST
    path: /payments
    body_limit: 4096
    idempotency: required
"#;

fn thumb(name: &str) -> String {
    let der = rustls_pki_types::CertificateDer::from_pem_file(certs().join(format!("{name}.pem")))
        .unwrap();
    portcullis_crypto::pki::thumbprint_s256(der.as_ref())
}

/// One instance of the fleet: the kit's [`Env`] on the fleet's shared clock.
type Instance = Env;

struct Fleet {
    redis: RedisServer,
    a: Instance,
    b: Instance,
    clock: Arc<ManualClock>,
    as_key: SigningKey,
    sig_key: KeyPair,
    dpop_key: SigningKey,
    _dirs: tempfile::TempDir,
}

/// Leaves an instance's `state:` section as the Redis server writes it.
fn as_is(_: &mut FileState) {}

/// Two instances on one Redis; `b_state` edits the `state:` section of instance B.
async fn fleet(b_state: fn(&mut FileState)) -> Fleet {
    fleet_with([as_is, b_state], [Behaviour::Ok, Behaviour::Ok]).await
}

/// As [`fleet`], with edits to the `state:` sections and the upstream behaviour of A and B.
async fn fleet_with(states: [fn(&mut FileState); 2], behaviours: [Behaviour; 2]) -> Fleet {
    let redis = RedisServer::start();
    let dirs = tempfile::tempdir().unwrap();
    let clients = dirs.path().join("clients");
    std::fs::create_dir_all(&clients).unwrap();
    let sig_key = KeyPair::generate(Alg::ES256, "tpp1-es").unwrap();
    std::fs::write(
        clients.join("PSDGB-FCA-123456.json"),
        json!({"keys": [sig_key.public_jwk()]}).to_string(),
    )
    .unwrap();
    let as_key = SigningKey::generate(Alg::ES256, "as-1").unwrap();
    let jwks = dirs.path().join("as-jwks.json");
    std::fs::write(&jwks, as_key.jwks().to_string()).unwrap();
    let clock = Arc::new(ManualClock::new(NOW));
    let config = |o: &mut Options, edit_state: fn(&mut FileState)| {
        let c = &mut o.config;
        c.issuers.insert("as".into(), file_issuer(ISS, AUD, &jwks));
        c.dpop.public_base_url = Some(BASE.into());
        c.signatures = FileSignatures {
            client: Some("{org_id}".into()),
            client_keys: Some(FileClientKeys {
                directory: Some(clients.display().to_string()),
                ..FileClientKeys::default()
            }),
            http: FileHttpSig {
                public_base_url: Some(BASE.into()),
                ..FileHttpSig::default()
            },
            ..FileSignatures::default()
        };
        let fleet = FileQuota {
            rate: 1,
            per: dur("1h"),
            burst: Some(BURST as u32),
            shadow: false,
        };
        c.rate_limits.classes.insert("fleet".into(), fleet);
        c.state = redis.state();
        edit_state(&mut c.state);
    };
    let mut instances = Vec::new();
    for (state, behaviour) in [(states[0], behaviours[0]), (states[1], behaviours[1])] {
        let up = Upstream::start(behaviour).await;
        let mut o = Options::new(up.addr);
        o.policy = POLICY.to_string();
        config(&mut o, state);
        let dir = tempfile::tempdir().unwrap();
        instances.push(Env::on_clock(o, up, dir, clock.clone()).await);
    }
    let b = instances.pop().unwrap();
    let a = instances.pop().unwrap();
    let f = Fleet {
        redis,
        a,
        b,
        clock,
        as_key,
        sig_key,
        dpop_key: SigningKey::generate(Alg::ES256, "client").unwrap(),
        _dirs: dirs,
    };
    // A brand-new Redis has no replay history: replay checks wait one replay window (70 s with
    // the default DPoP and RFC 9421 windows) after the epoch marker was written.
    wait_ready_says(&f.a.p, "younger than one replay window").await;
    f.clock.advance(100);
    wait_ready(&f.a.p).await;
    wait_ready(&f.b.p).await;
    f
}

async fn readyz(p: &Proxy) -> (u16, String) {
    p.admin_get("/readyz").await
}

async fn wait_ready(p: &Proxy) {
    for _ in 0..300 {
        if readyz(p).await.0 == 200 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("not ready: {:?}", readyz(p).await);
}

async fn wait_ready_says(p: &Proxy, text: &str) {
    for _ in 0..300 {
        let (s, body) = readyz(p).await;
        if s == 503 && body.contains(text) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("readyz never said `{text}`: {:?}", readyz(p).await);
}

/// One metric sample (`name{labels}`) from the admin endpoint.
async fn metric(p: &Proxy, series: &str) -> f64 {
    let (_, text) = p.admin_get("/metrics").await;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in metrics"))
}

impl Fleet {
    fn now(&self) -> i64 {
        self.clock.now()
    }

    fn dpop_token(&self) -> String {
        let now = self.now();
        self.as_key.access_token(&json!({
            "iss": ISS, "aud": AUD, "exp": now + 3600, "iat": now, "client_id": "tpp-one",
            "scope": "accounts payments", "jti": "t-dpop",
            "cnf": {"jkt": self.dpop_key.thumbprint()},
        }))
    }

    fn cert_token(&self) -> String {
        let now = self.now();
        self.as_key.access_token(&json!({
            "iss": ISS, "aud": AUD, "exp": now + 3600, "iat": now, "client_id": "tpp-one",
            "scope": "payments", "jti": "t-cert", "cnf": {"x5t#S256": thumb("tpp1")},
        }))
    }

    /// `Authorization` and a fresh DPoP proof for GET /accounts.
    fn dpop_headers(&self, token: &str, jti: &str) -> Vec<(&'static str, String)> {
        let proof = self.dpop_key.dpop_proof(
            "GET",
            &format!("{BASE}/accounts"),
            Some(token),
            self.now(),
            jti,
            None,
        );
        vec![("authorization", format!("DPoP {token}")), ("dpop", proof)]
    }

    /// An RFC 9421-signed POST /signed with `nonce`.
    fn signed_headers(&self, token: &str, body: &[u8], nonce: &str) -> Vec<(&'static str, String)> {
        let mut map = http::HeaderMap::new();
        map.insert("authorization", format!("Bearer {token}").parse().unwrap());
        map.insert(
            "content-digest",
            content_digest(DigestAlg::Sha256, body).parse().unwrap(),
        );
        let view = RequestView {
            method: "POST",
            scheme: "https",
            authority: "rs.example",
            path: "/signed",
            query: None,
            headers: &map,
        };
        let comps = ["@method", "@target-uri", "authorization", "content-digest"]
            .iter()
            .map(|n| component(n, &[], &[]).unwrap())
            .collect();
        let params = Params {
            created: self.now(),
            keyid: &self.sig_key.kid,
            tag: Some("fapi-2-request"),
            nonce: Some(nonce),
            ..Params::default()
        };
        let (si, sig) = sign("sig1", comps, &params, Message::Request(&view), |m| {
            self.sig_key.sign(m)
        })
        .unwrap();
        vec![
            ("authorization", format!("Bearer {token}")),
            ("content-digest", content_digest(DigestAlg::Sha256, body)),
            ("signature-input", si),
            ("signature", sig),
        ]
    }
}

async fn send(
    p: &Proxy,
    method: &str,
    path: &str,
    headers: &[(&'static str, String)],
    body: &[u8],
) -> (Answer, String) {
    let id = uuid::Uuid::new_v4().to_string();
    let mut r = req(method, path).header("x-fapi-interaction-id", &id);
    for (k, v) in headers {
        r = r.header(*k, v.as_str());
    }
    let mut c = p.client(Some("tpp1"), false).await.unwrap();
    let a = c
        .send(r.body(Full::new(Bytes::copy_from_slice(body))).unwrap())
        .await
        .unwrap();
    (a, id)
}

/// Asserts a refusal three ways: status and reason, nothing more upstream, one audit record.
async fn refused(
    i: &Instance,
    method: &str,
    path: &str,
    headers: &[(&'static str, String)],
    body: &[u8],
    status: u16,
    reason: &str,
) -> Answer {
    let before = i.up.count();
    let (a, id) = send(&i.p, method, path, headers, body).await;
    assert_eq!(
        a.status.as_u16(),
        status,
        "{reason}: {}",
        String::from_utf8_lossy(&a.body)
    );
    assert_eq!(a.json()["reason"], reason, "{}", a.json());
    assert_eq!(a.headers["x-fapi-interaction-id"], id.as_str());
    assert_eq!(
        i.up.count(),
        before,
        "{reason}: the upstream must receive nothing"
    );
    let rec = i.p.audit_of(&id).await;
    assert_eq!(rec["reason"], reason, "{rec}");
    assert_eq!(rec["status"], status);
    // Fail closed: a dependency that cannot answer decides nothing about the request.
    let decision = if status == 503 { "error" } else { "deny" };
    assert_eq!(rec["decision"], decision);
    a
}

async fn admitted(
    i: &Instance,
    method: &str,
    path: &str,
    headers: &[(&'static str, String)],
    body: &[u8],
) {
    let before = i.up.count();
    let (a, _) = send(&i.p, method, path, headers, body).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(i.up.count(), before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h06_two_instances_share_a_client_quota_within_the_lease_bound() {
    // Leases that outlive the test, so a slow machine cannot let leased tokens expire unspent.
    let long = |s: &mut FileState| {
        s.rate_limit_lease = Some(FileLease {
            ttl: Some(dur("60s")),
            ..FileLease::default()
        })
    };
    let f = fleet_with([long, long], [Behaviour::Ok, Behaviour::Ok]).await;
    // 100 requests of one client (tpp1's certificate), alternating between the instances.
    let mut ok = 0u64;
    let mut limited = 0u64;
    for n in 0..100 {
        let i = if n % 2 == 0 { &f.a } else { &f.b };
        let (a, id) = send(&i.p, "GET", "/limited", &[], b"").await;
        match a.status.as_u16() {
            200 => ok += 1,
            429 => {
                limited += 1;
                assert_eq!(a.json()["reason"], "rate_limit.client");
                let retry: u64 = a.headers["retry-after"].to_str().unwrap().parse().unwrap();
                assert!((1..=3600).contains(&retry), "{retry}");
                if limited == 1 {
                    let rec = i.p.audit_of(&id).await;
                    assert_eq!(rec["reason"], "rate_limit.client");
                    assert_eq!(rec["rate_limit"]["limited"], true);
                }
            }
            s => panic!("unexpected {s}: {}", String::from_utf8_lossy(&a.body)),
        }
    }
    // Each instance leases burst/10 = 4 tokens per Redis call. The budget does not refill
    // within the test, so the fleet never admits more than the quota (tolerance 0 here), and
    // at most 2 × (4 − 1) leased tokens may stay unspent.
    assert_eq!(ok + limited, 100);
    assert!(ok <= BURST, "the fleet admitted {ok} > {BURST}");
    assert!(ok >= BURST - 6, "the fleet admitted only {ok}");
    assert_eq!(
        (f.a.up.count() + f.b.up.count()) as u64,
        ok,
        "refused requests never reach an upstream"
    );
    // Leasing and cached refusals: far fewer Redis calls than requests.
    let calls = metric(
        &f.a.p,
        "portcullis_state_commands_total{feature=\"rate_limit\"}",
    )
    .await
        + metric(
            &f.b.p,
            "portcullis_state_commands_total{feature=\"rate_limit\"}",
        )
        .await;
    assert!(calls <= 16.0, "{calls} Redis calls for 100 requests");
    // Without the shared store each instance would have admitted the whole quota: 80.
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d13_c06_a_dpop_proof_or_signature_nonce_used_on_one_instance_is_refused_on_the_other() {
    let f = fleet(as_is).await;
    let token = f.dpop_token();
    let h = f.dpop_headers(&token, "proof-1");
    admitted(&f.a, "GET", "/accounts", &h, b"").await;
    let a = refused(
        &f.b,
        "GET",
        "/accounts",
        &h,
        b"",
        401,
        "binding.dpop_replay",
    )
    .await;
    assert!(a.headers["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("DPoP error=\"invalid_dpop_proof\""));
    // And the other way round, and on the same instance.
    let h2 = f.dpop_headers(&token, "proof-2");
    admitted(&f.b, "GET", "/accounts", &h2, b"").await;
    refused(
        &f.a,
        "GET",
        "/accounts",
        &h2,
        b"",
        401,
        "binding.dpop_replay",
    )
    .await;
    refused(
        &f.b,
        "GET",
        "/accounts",
        &h2,
        b"",
        401,
        "binding.dpop_replay",
    )
    .await;

    // RFC 9421 §7.2.2: a nonce is used once across the fleet.
    let token = f.cert_token();
    let body = br#"{"Data":{"Amount":"10.00"}}"#;
    let s = f.signed_headers(&token, body, "nonce-1");
    admitted(&f.a, "POST", "/signed", &s, body).await;
    refused(
        &f.b,
        "POST",
        "/signed",
        &s,
        body,
        401,
        "signature.http_replay",
    )
    .await;
    let s2 = f.signed_headers(&token, body, "nonce-2");
    admitted(&f.b, "POST", "/signed", &s2, body).await;
    drop(f.redis);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_refuses_replay_checks_falls_back_for_rate_limits_and_recovers() {
    // A: default outage settings (replay refuse, rate limits local); B: rate limits refuse.
    let mut f = fleet(|s| {
        s.on_outage = Some(FileOnOutage {
            rate_limits: Some("refuse".into()),
            ..FileOnOutage::default()
        });
        s.rate_limit_lease = Some(FileLease {
            ttl: Some(dur("50ms")),
            ..FileLease::default()
        });
    })
    .await;
    let token = f.dpop_token();
    let before_outage = f.dpop_headers(&token, "before-outage");
    admitted(&f.a, "GET", "/accounts", &before_outage, b"").await;
    admitted(&f.b, "GET", "/limited", &[], b"").await;

    f.redis.stop();
    // A fresh proof cannot be checked against the fleet: refused, never admitted.
    let fresh = f.dpop_headers(&token, "during-outage");
    let a = refused(
        &f.a,
        "GET",
        "/accounts",
        &fresh,
        b"",
        503,
        "binding.replay_store_unavailable",
    )
    .await;
    assert!(a.headers.get("www-authenticate").is_none());
    let token9421 = f.cert_token();
    let body = br#"{"Data":{"Amount":"11.00"}}"#;
    let s = f.signed_headers(&token9421, body, "nonce-outage");
    refused(
        &f.b,
        "POST",
        "/signed",
        &s,
        body,
        503,
        "signature.http_replay_unavailable",
    )
    .await;
    // Rate limits: A falls back to its own limiter; B refuses as configured (once the tokens it
    // leased before the outage expired: they were granted by the fleet).
    tokio::time::sleep(Duration::from_millis(100)).await;
    admitted(&f.a, "GET", "/limited", &[], b"").await;
    let a = refused(
        &f.b,
        "GET",
        "/limited",
        &[],
        b"",
        503,
        "rate_limit.unavailable",
    )
    .await;
    assert!(a.headers.contains_key("retry-after"));
    // Visible: /readyz, metrics; alive: /healthz.
    wait_ready_says(&f.a.p, "the shared state backend (Redis) is unavailable").await;
    assert_eq!(f.a.p.admin_get("/healthz").await.0, 200);
    assert_eq!(
        metric(&f.a.p, "portcullis_state_backend_up{backend=\"redis\"}").await,
        0.0
    );
    assert!(
        metric(
            &f.a.p,
            "portcullis_state_unavailable_refusals_total{feature=\"replay\"}"
        )
        .await
            >= 1.0
    );
    assert!(
        metric(
            &f.a.p,
            "portcullis_state_local_fallbacks_total{feature=\"rate_limit\"}"
        )
        .await
            >= 1.0
    );
    assert!(
        metric(
            &f.b.p,
            "portcullis_state_unavailable_refusals_total{feature=\"rate_limit\"}"
        )
        .await
            >= 1.0
    );

    // Redis comes back empty (no persistence): the connection recovers by itself, but the
    // replay history is gone, so replay checks keep refusing for one replay window: the proof
    // used before the outage is not admitted on the other instance.
    f.redis.restart();
    wait_ready_says(&f.a.p, "younger than one replay window").await;
    wait_ready_says(&f.b.p, "younger than one replay window").await;
    refused(
        &f.b,
        "GET",
        "/accounts",
        &before_outage,
        b"",
        503,
        "binding.replay_store_unavailable",
    )
    .await;
    // Rate limits need no history: B is back on the fleet quota.
    admitted(&f.b, "GET", "/limited", &[], b"").await;
    assert_eq!(
        metric(&f.a.p, "portcullis_state_epoch_changes_total").await,
        1.0
    );

    // One window later everything is served again, and replays are caught across instances.
    f.clock.advance(100);
    wait_ready(&f.a.p).await;
    wait_ready(&f.b.p).await;
    refused(
        &f.b,
        "GET",
        "/accounts",
        &before_outage,
        b"",
        401,
        "binding.dpop_iat",
    )
    .await;
    let after = f.dpop_headers(&token, "after-recovery");
    admitted(&f.a, "GET", "/accounts", &after, b"").await;
    refused(
        &f.b,
        "GET",
        "/accounts",
        &after,
        b"",
        401,
        "binding.dpop_replay",
    )
    .await;
    assert_eq!(
        metric(&f.a.p, "portcullis_state_backend_up{backend=\"redis\"}").await,
        1.0
    );
}

fn payment(key: &str, body: &str) -> http::Request<Full<Bytes>> {
    req("POST", "/payments")
        .header("content-type", "application/json")
        .header("x-idempotency-key", key)
        .header("x-fapi-interaction-id", uuid::Uuid::new_v4().to_string())
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

async fn pay(i: &Instance, key: &str, body: &str) -> (Answer, String) {
    let r = payment(key, body);
    let id = r.headers()["x-fapi-interaction-id"]
        .to_str()
        .unwrap()
        .to_string();
    let mut c = i.p.client(Some("tpp1"), false).await.unwrap();
    (c.send(r).await.unwrap(), id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn j02_an_idempotent_payment_is_replayed_across_instances() {
    // A's upstream is slow (for the in-flight case); B's creates payments p-1, p-2, ...
    let mut f = fleet_with(
        [as_is, as_is],
        [Behaviour::Delay(Duration::from_secs(3)), Behaviour::Created],
    )
    .await;
    let body = r#"{"Data":{"Amount":"10.00","Currency":"GBP"}}"#;
    let (first, _) = pay(&f.b, "k-1", body).await;
    assert_eq!(
        first.status,
        201,
        "{}",
        String::from_utf8_lossy(&first.body)
    );
    assert_eq!(first.headers["location"], "/payments/p-1");
    assert_eq!(f.b.up.count(), 1);
    // The retry lands on the other instance: the stored response, without any upstream.
    let (again, id) = pay(&f.a, "k-1", body).await;
    assert_eq!(again.status, 201);
    assert_eq!(again.body, first.body);
    assert_eq!(again.headers["location"], "/payments/p-1");
    assert_eq!(again.headers["x-idempotent-replay"], "true");
    assert_eq!(f.a.up.count(), 0, "a replay never reaches the upstream");
    assert_eq!(f.b.up.count(), 1);
    let rec = f.a.p.audit_of(&id).await;
    assert_eq!(rec["idempotency"], "replayed");
    assert_eq!(rec["status"], 201);
    // J01 across instances: the same key with another body.
    let (a, id) = pay(&f.a, "k-1", r#"{"Data":{"Amount":"9999.00"}}"#).await;
    assert_eq!(a.status, 422);
    assert_eq!(a.json()["reason"], "idempotency.key_reused");
    assert_eq!(f.a.up.count(), 0);
    assert_eq!(
        f.a.p.audit_of(&id).await["reason"],
        "idempotency.key_reused"
    );

    // J02 across instances: while A is still waiting for its upstream, B says 409.
    let slow = {
        let r = payment("k-2", body);
        let c = f.a.p.client(Some("tpp1"), false).await.unwrap();
        tokio::spawn(async move {
            let mut c = c;
            c.send(r).await.unwrap()
        })
    };
    for _ in 0..200 {
        if f.a.up.count() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(f.a.up.count(), 1, "the first request reached A's upstream");
    let (a, id) = pay(&f.b, "k-2", body).await;
    assert_eq!(a.status, 409, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.json()["reason"], "idempotency.in_flight");
    assert_eq!(f.b.up.count(), 1, "nothing more upstream");
    let rec = f.b.p.audit_of(&id).await;
    assert_eq!(rec["reason"], "idempotency.in_flight");
    let done = slow.await.unwrap();
    assert_eq!(done.status, 200);
    let (a, _) = pay(&f.b, "k-2", body).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body, done.body);
    assert_eq!(a.headers["x-idempotent-replay"], "true");
    assert_eq!(f.b.up.count(), 1);

    // Redis away: a key cannot be checked, so the payment is refused, never run.
    f.redis.stop();
    let (a, id) = pay(&f.b, "k-3", body).await;
    assert_eq!(a.status, 503, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.json()["reason"], "idempotency.unavailable");
    assert_eq!(f.b.up.count(), 1);
    let rec = f.b.p.audit_of(&id).await;
    assert_eq!(rec["reason"], "idempotency.unavailable");
    assert_eq!(rec["decision"], "error");
    assert!(
        metric(
            &f.b.p,
            "portcullis_state_unavailable_refusals_total{feature=\"idempotency\"}"
        )
        .await
            >= 1.0
    );
}

/// The stores against Redis directly: replay across two connections, the idempotency states,
/// and the lease bound with concurrent checks from two "instances".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stores_answer_like_the_memory_stores() {
    use portcullis_state::idempotency::{Begin, IdempotencyStore, StoredResponse};
    use portcullis_state::ratelimit::QuotaSpec;
    use portcullis_state::redis::{
        FleetLimiter, RedisIdempotencyStore, RedisReplayStore, RedisState,
    };
    use portcullis_state::replay::{ReplayError, ReplayStore};
    use portcullis_state::settings::{OnOutage, RedisSettings};

    let mut redis = RedisServer::start();
    let settings = RedisSettings {
        url: redis.url(),
        username: None,
        tls: None,
        sentinel: None,
        password: None,
        connect_timeout: Duration::from_millis(500),
        command_timeout: Duration::from_millis(500),
        health_interval: Duration::from_millis(100),
        key_prefix: "t:".into(),
    };
    let manual = Arc::new(ManualClock::new(NOW));
    let clock: Arc<dyn Clock> = manual.clone();
    let stop = tokio_util::sync::CancellationToken::new();
    let one = RedisState::start(&settings, clock.clone(), 10, stop.clone());
    let two = RedisState::start(&settings, clock.clone(), 10, stop.clone());
    for _ in 0..200 {
        if one.is_up() && two.is_up() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(one.is_up() && two.is_up());
    // Fresh Redis: not trusted until the epoch is one window (10 s) old.
    assert!(!one.replay_trusted(NOW));
    assert!(one.replay_trusted(NOW + 10));
    let r1 = RedisReplayStore::new(one.clone(), OnOutage::Refuse, 10);
    let r2 = RedisReplayStore::new(two.clone(), OnOutage::Refuse, 10);
    assert_eq!(
        r1.first_use([1; 32], NOW + 5, NOW).await,
        Err(ReplayError::Unavailable)
    );
    let t = NOW + 20;
    assert_eq!(r1.first_use([1; 32], t + 60, t).await, Ok(true));
    assert_eq!(r2.first_use([1; 32], t + 60, t).await, Ok(false));
    assert_eq!(r2.first_use([2; 32], t + 60, t).await, Ok(true));

    let i1 = RedisIdempotencyStore::new(one.clone());
    let i2 = RedisIdempotencyStore::new(two.clone());
    let resp = StoredResponse {
        status: 201,
        headers: vec![("location".into(), b"/payments/1".to_vec())],
        body: Bytes::from_static(b"{\"Data\":{\"Id\":\"1\"}}"),
    };
    assert_eq!(
        i1.begin([7; 32], [9; 32], t, 3600).await,
        Ok(Begin::Reserved)
    );
    assert_eq!(
        i2.begin([7; 32], [9; 32], t, 3600).await,
        Ok(Begin::InFlight)
    );
    assert_eq!(
        i2.begin([7; 32], [8; 32], t, 3600).await,
        Ok(Begin::Mismatch)
    );
    // Releasing a reserved key lets a retry reserve it again.
    i2.release([7; 32]).await.unwrap();
    assert_eq!(
        i2.begin([7; 32], [9; 32], t, 3600).await,
        Ok(Begin::Reserved)
    );
    i2.complete([7; 32], [9; 32], resp.clone(), t, 3600)
        .await
        .unwrap();
    assert_eq!(
        i1.begin([7; 32], [9; 32], t, 3600).await,
        Ok(Begin::Completed(Arc::new(resp.clone())))
    );
    assert_eq!(
        i1.begin([7; 32], [8; 32], t, 3600).await,
        Ok(Begin::Mismatch)
    );
    // A completed key is never released.
    i1.release([7; 32]).await.unwrap();
    assert!(matches!(
        i2.begin([7; 32], [9; 32], t, 3600).await,
        Ok(Begin::Completed(_))
    ));
    // An error answer (here a key of the wrong type) fails that call, closed, but is not an
    // outage: Redis stays up for everything else.
    let wrong = format!("t:i:{}", "06".repeat(32));
    assert_eq!(
        common::redis::command(redis.port, &format!("LPUSH {wrong} x")).as_deref(),
        Some(":1")
    );
    assert!(i1.begin([6; 32], [9; 32], t, 3600).await.is_err());
    assert!(one.is_up());
    assert_eq!(r1.first_use([9; 32], t + 60, t).await, Ok(true));

    // Two instances, 8 concurrent callers each, one budget of 50 that does not refill within
    // the test, leases of up to 5 tokens: at most 50 admitted, at most 2 × 4 left unspent.
    let spec = QuotaSpec {
        name: "pay".into(),
        rate: 1,
        per: Duration::from_secs(3600),
        burst: 50,
        shadow: false,
    };
    let fleet = [
        Arc::new(FleetLimiter::new(
            one.clone(),
            5,
            Duration::from_secs(30),
            OnOutage::Local,
        )),
        Arc::new(FleetLimiter::new(
            two.clone(),
            5,
            Duration::from_secs(30),
            OnOutage::Local,
        )),
    ];
    assert_eq!(fleet[0].batch(&spec), 5);
    let mut tasks = Vec::new();
    for n in 0..16 {
        let l = fleet[n % 2].clone();
        let spec = spec.clone();
        tasks.push(tokio::spawn(async move {
            let mut ok = 0u64;
            for _ in 0..10 {
                if l.check(&spec, "x5t:client").await.unwrap().allowed {
                    ok += 1;
                }
            }
            ok
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += t.await.unwrap();
    }
    assert!(ok <= 50, "admitted {ok} of a budget of 50");
    assert!(ok >= 50 - 8, "admitted only {ok}");
    // Another client has its own budget.
    assert!(fleet[0].check(&spec, "x5t:other").await.unwrap().allowed);

    // Outage: answers fail fast with Unavailable (never an admission); service returns.
    redis.stop();
    let t0 = std::time::Instant::now();
    assert_eq!(
        r1.first_use([3; 32], t + 60, t).await,
        Err(ReplayError::Unavailable)
    );
    assert!(i1.begin([5; 32], [9; 32], t, 3600).await.is_err());
    assert!(fleet[1].check(&spec, "x5t:third").await.is_err());
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    // The local fallback of the replay store answers alone, and remembers.
    let local = RedisReplayStore::new(one.clone(), OnOutage::Local, 10);
    assert_eq!(local.first_use([4; 32], t + 60, t).await, Ok(true));
    assert_eq!(local.first_use([4; 32], t + 60, t).await, Ok(false));
    manual.set(t + 50);
    redis.restart();
    for _ in 0..200 {
        if one.is_up() && two.is_up() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(one.is_up() && two.is_up(), "recovered by itself");
    // The restarted Redis is empty: a new epoch (written at t + 50), so replay answers wait
    // one window again: 60 s now, the longest window the store was asked for.
    let later = t + 110;
    for _ in 0..200 {
        if one
            .render_metrics(t)
            .contains("portcullis_state_epoch_changes_total 1")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(!one.replay_trusted(later - 1));
    assert!(one.replay_trusted(later));
    assert_eq!(r1.first_use([1; 32], later + 60, later).await, Ok(true));
    assert_eq!(r2.first_use([1; 32], later + 60, later).await, Ok(false));
    assert!(fleet[1].check(&spec, "x5t:third").await.unwrap().allowed);
    stop.cancel();
}

/// `password_file`: the password reaches Redis (AUTH) and nothing we print; a wrong one is an
/// outage, not an admission.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_password_is_used_and_never_shown() {
    use portcullis_state::redis::{RedisReplayStore, RedisState};
    use portcullis_state::replay::{ReplayError, ReplayStore};
    use portcullis_state::settings::{OnOutage, RedisSettings, Secret};

    let redis = RedisServer::start_with(&["--requirepass", "s3cret-pw"]);
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(NOW));
    let stop = tokio_util::sync::CancellationToken::new();
    let settings = |pw: &str| RedisSettings {
        url: redis.url(),
        username: None,
        tls: None,
        sentinel: None,
        password: Some(Secret(pw.to_string())),
        connect_timeout: Duration::from_millis(500),
        command_timeout: Duration::from_millis(500),
        health_interval: Duration::from_millis(100),
        key_prefix: "pw:".into(),
    };
    let good = RedisState::start(&settings("s3cret-pw"), clock.clone(), 1, stop.clone());
    let bad = RedisState::start(&settings("wrong"), clock.clone(), 1, stop.clone());
    for _ in 0..200 {
        if good.is_up() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(good.is_up(), "authenticated with the password");
    let t = NOW + 10;
    let store = RedisReplayStore::new(good.clone(), OnOutage::Refuse, 10);
    assert_eq!(store.first_use([1; 32], t + 60, t).await, Ok(true));
    assert_eq!(store.first_use([1; 32], t + 60, t).await, Ok(false));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!bad.is_up(), "a wrong password never connects");
    let refused = RedisReplayStore::new(bad.clone(), OnOutage::Refuse, 10);
    assert_eq!(
        refused.first_use([2; 32], t + 60, t).await,
        Err(ReplayError::Unavailable)
    );
    for s in [&good, &bad] {
        assert!(!s.endpoint().contains("s3cret"), "{}", s.endpoint());
        assert!(!s.render_metrics(t).contains("s3cret"));
    }
    assert!(!format!("{:?}", settings("s3cret-pw")).contains("s3cret"));
    stop.cancel();
}
