//! Object-level authorization through the proxy: consent-bound account access, hidden objects,
//! a consent source that is down, response rules against a leaking upstream, shadow mode; and
//! `portcullis policy test` on the shipped examples.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use portcullis_crypto::jose::sign::SigningKey;
use portcullis_crypto::jose::Alg;
use rustls_pki_types::pem::PemObject;
use serde_json::json;

const NOW: i64 = 1_800_000_000;

const POLICY: &str = r#"
group: t
upstream: bank
routes:
  - id: balances
    method: GET
    path: /accounts/{AccountId}/balances
    auth: {profile: fapi2}
    scopes: {all_of: [accounts]}
    consent: {claim: openbanking_intent_id, permissions: [ReadBalances]}
    rules:
      - {id: account-in-consent, value: {path: AccountId}, in: {consent: accounts}}
  - id: hidden
    method: GET
    path: /hidden/{AccountId}
    auth: {profile: fapi2}
    rules:
      - {id: hide, value: {path: AccountId}, in: {claim: accounts}, deny_status: 404}
  - id: list-withhold
    method: GET
    path: /accounts
    auth: {profile: fapi2}
    response_rules:
      - {id: listed-in-grant, pointer: /Data/Account/*/AccountId, in: {claim: accounts}}
  - id: list-remove
    method: GET
    path: /accounts-filtered
    auth: {profile: fapi2}
    response_rules:
      - {id: drop-foreign, pointer: /Data/Account/*/AccountId, in: {claim: accounts}, action: remove}
  - id: shadowed
    method: GET
    path: /shadow/{AccountId}
    auth: {profile: fapi2}
    shadow: true
    rules:
      - {id: would-deny, value: {path: AccountId}, in: {claim: accounts}}
"#;

const LEAKY: &str = r#"{"Data":{"Account":[{"AccountId":"acc-1"},{"AccountId":"acc-victim"}]}}"#;

/// The kit's [`Env`] (on a manual clock at [`NOW`]) and tpp1's access token.
struct PolicyEnv {
    env: Env,
    token: String,
}

impl std::ops::Deref for PolicyEnv {
    type Target = Env;
    fn deref(&self) -> &Env {
        &self.env
    }
}

/// The consent file `consents.json` that [`env`] writes (`DIR` is its directory).
fn consents_file() -> FileConsentSource {
    FileConsentSource {
        file: Some("DIR/consents.json".into()),
        ..FileConsentSource::default()
    }
}

async fn env(mut consent: FileConsentSource) -> PolicyEnv {
    let key = SigningKey::generate(Alg::ES256, "as-1").unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("jwks.json"), key.jwks().to_string()).unwrap();
    std::fs::write(
        dir.path().join("consents.json"),
        json!({"consents": {"aac-1": {"status": "Authorised", "permissions": ["ReadBalances"], "accounts": ["acc-1"]}}}).to_string(),
    )
    .unwrap();
    let up = Upstream::start(Behaviour::Json(LEAKY)).await;
    let mut o = Options::new(up.addr);
    o.policy = POLICY.to_string();
    if let Some(f) = consent.file.as_mut() {
        *f = f.replace("DIR", &dir.path().display().to_string());
    }
    o.config.issuers.insert(
        "as".into(),
        file_issuer("https://as", "https://rs", &dir.path().join("jwks.json")),
    );
    o.config.consent = Some(consent);
    let env = Env::start(o, up, dir, Some(NOW)).await;
    let der = rustls_pki_types::CertificateDer::from_pem_file(certs().join("tpp1.pem")).unwrap();
    let token = key.access_token(&json!({
        "iss": "https://as", "aud": "https://rs", "exp": NOW + 300, "scope": "accounts",
        "openbanking_intent_id": "aac-1", "accounts": ["acc-1"],
        "cnf": {"x5t#S256": portcullis_crypto::pki::thumbprint_s256(der.as_ref())},
    }));
    PolicyEnv { env, token }
}

impl PolicyEnv {
    async fn get(&self, path: &str) -> (portcullis_tools::client::Answer, String) {
        self.p
            .send(
                req("GET", path)
                    .header("authorization", format!("Bearer {}", self.token))
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
            .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_outside_the_consent_is_403_with_the_rule_in_the_audit_record() {
    let e = env(consents_file()).await;
    let (a, _) = e.get("/accounts/acc-1/balances").await;
    assert_eq!(a.status, 200);
    let rec = e.p.audit_where(1, |r| r["status"] == 200).await;
    assert_eq!(rec[0]["consent_id"], "aac-1");
    let before = e.up.count();
    let (a, id) = e.get("/accounts/acc-victim/balances").await;
    assert_refused_after(&e, &a, &id, 403, "authz.object", before).await;
    assert_eq!(e.p.audit_of(&id).await["rule_id"], "account-in-consent");
    // A hidden object answers exactly like an unknown route; the audit record keeps why.
    let (a, id) = e.get("/hidden/acc-victim").await;
    assert_eq!(a.status, 404);
    assert_eq!(a.json()["reason"], "route.not_found");
    let rec = e.p.audit_of(&id).await;
    assert_eq!(
        (rec["reason"].as_str(), rec["rule_id"].as_str()),
        (Some("authz.object_hidden"), Some("hide"))
    );
    assert_eq!(e.up.count(), before);
}

async fn assert_refused_after(
    e: &PolicyEnv,
    a: &portcullis_tools::client::Answer,
    id: &str,
    status: u16,
    reason: &str,
    before: usize,
) {
    assert_eq!(
        a.status.as_u16(),
        status,
        "{}",
        String::from_utf8_lossy(&a.body)
    );
    assert_eq!(a.json()["reason"], reason);
    assert_eq!(e.up.count(), before, "nothing upstream");
    let rec = e.p.audit_of(id).await;
    assert_eq!(
        (rec["reason"].as_str(), rec["decision"].as_str()),
        (Some(reason), Some("deny"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consent_source_that_is_down_refuses_with_503() {
    let e = env(FileConsentSource {
        url: Some(format!(
            "https://localhost:{}/consents/{{id}}",
            Upstream::dead_addr().await.port()
        )),
        ca: vec![certs().join("ca.pem").display().to_string()],
        timeout: Some(dur("300ms")),
        ..FileConsentSource::default()
    })
    .await;
    let (a, id) = e.get("/accounts/acc-1/balances").await;
    assert_eq!(a.status, 503);
    assert_eq!(a.json()["reason"], "authz.consent_unavailable");
    assert_eq!(e.up.count(), 0);
    assert_eq!(
        e.p.audit_of(&id).await["reason"],
        "authz.consent_unavailable"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_rules_withhold_or_filter_a_leaking_upstream() {
    let e = env(consents_file()).await;
    let (a, id) = e.get("/accounts").await;
    assert_eq!(a.status, 502);
    assert_eq!(a.json()["reason"], "authz.response_leak");
    assert!(!String::from_utf8_lossy(&a.body).contains("acc-victim"));
    let rec = e.p.audit_of(&id).await;
    assert_eq!(
        (rec["rule_id"].as_str(), rec["upstream_status"].as_u64()),
        (Some("listed-in-grant"), Some(200))
    );
    let (a, _) = e.get("/accounts-filtered").await;
    assert_eq!(a.status, 200);
    assert_eq!(
        a.json(),
        json!({"Data": {"Account": [{"AccountId": "acc-1"}]}})
    );
}

/// The shipped OBIE payment policy: a payment's owner (its consent) is known only from the
/// bank's answer, so a `forbid` response rule refuses another consent's payment with 403
/// `authz.object` and the answer never reaches the caller; the caller's own payment passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_made_under_another_consent_is_forbidden_from_the_banks_answer() {
    const FOREIGN: &str = r#"{"Data":{"DomesticPaymentId":"dp-1","ConsentId":"pdc-victim","Status":"AcceptedSettlementCompleted"}}"#;
    const OWN: &str = r#"{"Data":{"DomesticPaymentId":"dp-2","ConsentId":"pdc-1","Status":"AcceptedSettlementCompleted"}}"#;
    let key = SigningKey::generate(Alg::ES256, "as-1").unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("jwks.json"), key.jwks().to_string()).unwrap();
    std::fs::write(
        dir.path().join("consents.json"),
        json!({"consents": {"pdc-1": {"status": "Authorised"}}}).to_string(),
    )
    .unwrap();
    let up = Upstream::start(Behaviour::Json(FOREIGN)).await;
    let mut o = Options::new(up.addr);
    o.policy = include_str!("../policies/obie-pisp.yaml").to_string();
    o.config.issuers.insert(
        "as".into(),
        file_issuer("https://as", "https://rs", &dir.path().join("jwks.json")),
    );
    o.config.consent = Some(FileConsentSource {
        file: Some(dir.path().join("consents.json").display().to_string()),
        ..FileConsentSource::default()
    });
    let e = Env::start(o, up, dir, Some(NOW)).await;
    let der = rustls_pki_types::CertificateDer::from_pem_file(certs().join("tpp1.pem")).unwrap();
    let token = key.access_token(&json!({
        "iss": "https://as", "aud": "https://rs", "exp": NOW + 300, "scope": "payments",
        "openbanking_intent_id": "pdc-1",
        "cnf": {"x5t#S256": portcullis_crypto::pki::thumbprint_s256(der.as_ref())},
    }));
    let get = |path: &'static str| {
        let (e, token) = (&e, token.clone());
        async move {
            e.p.send(
                req("GET", path)
                    .header("authorization", format!("Bearer {token}"))
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
            .await
        }
    };
    let (a, id) = get("/open-banking/v3.1/pisp/domestic-payments/dp-1").await;
    assert_eq!(a.status, 403, "{}", String::from_utf8_lossy(&a.body));
    // An OBIE route (`errors: obie`): the OBIE error body; the reason is in the record.
    assert_eq!(a.headers["content-type"], "application/json");
    assert_eq!(a.json()["Code"], "403 Forbidden");
    assert_eq!(a.json()["Id"], id.as_str());
    assert_eq!(
        a.json()["Errors"][0]["ErrorCode"],
        "UK.OBIE.Resource.ConsentMismatch"
    );
    assert!(!String::from_utf8_lossy(&a.body).contains("pdc-victim"));
    assert_eq!(
        a.headers["www-authenticate"],
        r#"Bearer error="insufficient_scope""#
    );
    let rec = e.p.audit_of(&id).await;
    assert_eq!(rec["reason"], "authz.object", "{rec}");
    assert_eq!(rec["rule_id"], "own-payment", "{rec}");
    assert_eq!(rec["decision"], "deny", "{rec}");
    // The bank was asked (a GET: its answer is the only source of the owner).
    assert_eq!(rec["upstream_status"], 200, "{rec}");
    e.up.set(Behaviour::Json(OWN));
    let (a, _) = get("/open-banking/v3.1/pisp/domestic-payments/dp-2").await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.json()["Data"]["ConsentId"], "pdc-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_route_forwards_and_records_what_it_would_have_denied() {
    let e = env(consents_file()).await;
    let (a, id) = e.get("/shadow/acc-victim").await;
    assert_eq!(a.status, 200);
    assert_eq!(e.up.count(), 1);
    let rec = e.p.audit_of(&id).await;
    assert_eq!(rec["decision"], "shadow_deny");
    assert_eq!(rec["reason"], "authz.object");
    assert_eq!(rec["rule_id"], "would-deny");
    let (_, m) = e.p.admin_get("/metrics").await;
    assert!(
        m.contains("portcullis_would_deny_total{route=\"shadowed\",reason=\"authz.object\"} 1"),
        "{m}"
    );
}

#[test]
fn policy_test_passes_on_the_examples_and_fails_readably_on_a_wrong_expectation() {
    let bin = env!("CARGO_BIN_EXE_portcullis");
    let repo = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new(bin)
        .args(["policy", "test"])
        .arg(repo.join("policies"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains(" 0 failed"), "{text}");
    let d = tempfile::tempdir().unwrap();
    std::fs::copy(
        repo.join("policies/obie-aisp.yaml"),
        d.path().join("obie-aisp.yaml"),
    )
    .unwrap();
    let wrong = std::fs::read_to_string(repo.join("policies/obie-aisp.test.yaml"))
        .unwrap()
        .replace(
            "expect: {deny: {status: 403, reason: authz.object, rule: account-in-consent}}",
            "expect: allow",
        );
    std::fs::write(d.path().join("obie-aisp.test.yaml"), wrong).unwrap();
    let out = std::process::Command::new(bin)
        .args(["policy", "test"])
        .arg(d.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("FAIL")
            && text.contains("expected: allow")
            && text.contains("got:      deny 403 authz.object (account-in-consent)"),
        "{text}"
    );
    assert!(text.contains("1 failed"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_consent_source_is_asked_once_per_ttl_and_its_answer_governs() {
    let calls = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let handler: Handler = {
        let calls = calls.clone();
        Arc::new(move |parts, _| {
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            match parts.uri.path() {
                // OBIE-shaped record.
                "/consents/aac-1" => (200, json!({"Data": {"ConsentId": "aac-1", "Status": "Authorised",
                    "ExpirationDateTime": "2099-01-01T00:00:00+00:00", "Permissions": ["ReadBalances"], "accounts": ["acc-1"]}}).to_string()),
                _ => (404, String::new()),
            }
        })
    };
    let addr = https_endpoint(handler).await;
    let e = env(FileConsentSource {
        url: Some(format!("https://localhost:{}/consents/{{id}}", addr.port())),
        ca: vec![certs().join("ca.pem").display().to_string()],
        ttl: Some(dur("60s")),
        ..FileConsentSource::default()
    })
    .await;
    let (a, _) = e.get("/accounts/acc-1/balances").await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let (a, _) = e.get("/accounts/acc-1/balances").await;
    assert_eq!(a.status, 200);
    assert_eq!(
        calls.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "cached for the TTL"
    );
    let (a, _) = e.get("/accounts/acc-2/balances").await;
    assert_eq!(a.json()["reason"], "authz.object");
}
