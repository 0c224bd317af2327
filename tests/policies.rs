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

/// A token from the dev issuer `key`, bound to tpp1, with `claims` added.
fn bound_token(key: &SigningKey, claims: serde_json::Value) -> String {
    let der = rustls_pki_types::CertificateDer::from_pem_file(certs().join("tpp1.pem")).unwrap();
    let mut c = json!({
        "iss": "https://as", "aud": "https://rs", "exp": NOW + 300,
        "cnf": {"x5t#S256": portcullis_crypto::pki::thumbprint_s256(der.as_ref())},
    });
    for (k, v) in claims.as_object().unwrap() {
        c[k] = v.clone();
    }
    key.access_token(&c)
}

/// The shipped `policies/fapi2-rar.yaml` transfers route: the debtor, the creditor and the
/// amount of a transfer must all come from one `payment_initiation` entry of the token's RFC
/// 9396 `authorization_details`; each refusal is seen three ways (status and reason, nothing
/// upstream, one audit record naming the rule).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_must_come_whole_from_one_authorization_details_entry() {
    let key = SigningKey::generate(Alg::ES256, "as-1").unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("jwks.json"), key.jwks().to_string()).unwrap();
    let up = Upstream::start(Behaviour::Ok).await;
    let mut o = Options::new(up.addr);
    o.policy = include_str!("../policies/fapi2-rar.yaml").to_string();
    o.config.issuers.insert(
        "as".into(),
        file_issuer("https://as", "https://rs", &dir.path().join("jwks.json")),
    );
    let e = Env::start(o, up, dir, Some(NOW)).await;
    let grant = |creditor: &str, amount: &str, actions: serde_json::Value| {
        json!({"type": "payment_initiation", "actions": actions,
               "debtorAccount": {"iban": "DE02"}, "creditorAccount": {"iban": creditor},
               "instructedAmount": {"currency": "EUR", "amount": amount}})
    };
    let token = bound_token(
        &key,
        json!({"authorization_details": [
            grant("DE89", "100.00", json!(["initiate"])),
            grant("GB33", "5.00", json!(["initiate"])),
        ]}),
    );
    let status_only = bound_token(
        &key,
        json!({"authorization_details": [grant("DE89", "100.00", json!(["status"]))]}),
    );
    let post = |token: &str, creditor: &str, amount: &str, currency: &str| {
        let body = json!({"debtorAccount": {"iban": "DE02"}, "creditorAccount": {"iban": creditor},
                          "instructedAmount": {"amount": amount, "currency": currency}});
        req("POST", "/fapi2/transfers")
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap()
    };
    let (a, id) = e.p.send(post(&token, "DE89", "99.99", "EUR")).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(e.up.count(), 1);
    assert_eq!(e.p.audit_of(&id).await["decision"], "allow");
    // The second entry's creditor within the second entry's amount.
    let (a, _) = e.p.send(post(&token, "GB33", "5", "EUR")).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(e.up.count(), 2);
    for (what, request, status, reason) in [
        (
            "the second entry's creditor with the first entry's amount",
            post(&token, "GB33", "99.99", "EUR"),
            403,
            "authz.grant_amount",
        ),
        (
            "a creditor no entry grants together with the debtor",
            post(&token, "FR76", "1.00", "EUR"),
            403,
            "authz.object",
        ),
        (
            "one cent above the grant",
            post(&token, "DE89", "100.01", "EUR"),
            403,
            "authz.grant_amount",
        ),
        (
            "another currency",
            post(&token, "DE89", "1.00", "GBP"),
            403,
            "authz.grant_amount",
        ),
        (
            "an amount in exponent form",
            post(&token, "DE89", "1e1", "EUR"),
            400,
            "authz.amount_malformed",
        ),
        (
            "a grant whose actions lack initiate",
            post(&status_only, "DE89", "1.00", "EUR"),
            403,
            "authz.object",
        ),
    ] {
        let (a, id) = e.p.send(request).await;
        let body = String::from_utf8_lossy(&a.body).to_string();
        assert_eq!(a.status.as_u16(), status, "{what}: {body}");
        assert_eq!(a.json()["reason"], reason, "{what}: {body}");
        assert_eq!(e.up.count(), 2, "{what}: the upstream must receive nothing");
        let rec = e.p.audit_of(&id).await;
        assert_eq!(
            (
                rec["reason"].as_str(),
                rec["decision"].as_str(),
                rec["rule_id"].as_str()
            ),
            (Some(reason), Some("deny"), Some("payment-within-one-grant")),
            "{what}: {rec}"
        );
        if status == 403 {
            assert_eq!(
                a.headers["www-authenticate"], r#"Bearer error="insufficient_scope""#,
                "{what}"
            );
        }
    }
}

/// The shipped OBIE payment policy in front of the mock bank (a real upstream that remembers
/// each payment's consent): the details of a payment made under another consent are refused
/// with 403 `authz.object` from the bank's answer, which never reaches the caller; the owner
/// reads them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_details_of_a_payment_made_under_another_consent_are_forbidden() {
    let key = SigningKey::generate(Alg::ES256, "as-1").unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("jwks.json"), key.jwks().to_string()).unwrap();
    std::fs::write(
        dir.path().join("consents.json"),
        json!({"consents": {"pdc-1": {"status": "Authorised"}, "pdc-victim": {"status": "Authorised"}}})
            .to_string(),
    )
    .unwrap();
    let bank = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bank_addr = bank.local_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(portcullis_tools::mockbank::serve(bank, stop.clone()));
    // The kit's recording upstream is not the route's upstream here: it must see nothing.
    let spare = Upstream::start(Behaviour::Ok).await;
    let mut o = Options::new(bank_addr);
    o.policy = include_str!("../policies/obie-pisp.yaml").to_string();
    o.config.issuers.insert(
        "as".into(),
        file_issuer("https://as", "https://rs", &dir.path().join("jwks.json")),
    );
    o.config.consent = Some(FileConsentSource {
        file: Some(dir.path().join("consents.json").display().to_string()),
        ..FileConsentSource::default()
    });
    let e = Env::start(o, spare, dir, Some(NOW)).await;
    let token_of = |consent: &str| {
        bound_token(
            &key,
            json!({"scope": "payments", "openbanking_intent_id": consent}),
        )
    };
    let (mine, victim) = (token_of("pdc-1"), token_of("pdc-victim"));
    let call = |token: &str, method: &str, path: &str, body: Option<serde_json::Value>| {
        let r = req(method, path).header("authorization", format!("Bearer {token}"));
        match body {
            // The shipped policy requires an idempotency key on payment POSTs.
            Some(b) => r
                .header("content-type", "application/json")
                .header("x-idempotency-key", uuid::Uuid::new_v4().to_string())
                .body(Full::new(Bytes::from(b.to_string()))),
            None => r.body(Full::new(Bytes::new())),
        }
        .unwrap()
    };
    // The victim pays under its own consent; the bank names the payment.
    let (a, _) =
        e.p.send(call(
            &victim,
            "POST",
            "/open-banking/v3.1/pisp/domestic-payments",
            Some(json!({"Data": {"ConsentId": "pdc-victim", "Initiation": {
                "InstructedAmount": {"Amount": "10.50", "Currency": "GBP"}}}, "Risk": {}})),
        ))
        .await;
    assert_eq!(a.status, 201, "{}", String::from_utf8_lossy(&a.body));
    let payment = a.json()["Data"]["DomesticPaymentId"]
        .as_str()
        .unwrap()
        .to_string();
    for (path, rule) in [
        (
            format!("/open-banking/v3.1/pisp/domestic-payments/{payment}/payment-details"),
            "own-payment-details",
        ),
        (
            format!("/open-banking/v3.1/pisp/domestic-payments/{payment}"),
            "own-payment",
        ),
    ] {
        let (a, id) = e.p.send(call(&mine, "GET", &path, None)).await;
        let body = String::from_utf8_lossy(&a.body).to_string();
        assert_eq!(a.status, 403, "{path}: {body}");
        // An OBIE route answers in the OBIE error body; the reason code is in the audit record.
        assert_eq!(
            a.json()["Errors"][0]["ErrorCode"],
            "UK.OBIE.Resource.ConsentMismatch",
            "{path}: {body}"
        );
        // Nothing of the bank's answer reaches the caller.
        for leak in ["pdc-victim", "PaymentStatus", "AcceptedSettlement", "-tx"] {
            assert!(!body.contains(leak), "{path}: {leak} leaked in {body}");
        }
        let rec = e.p.audit_of(&id).await;
        assert_eq!(
            (
                rec["reason"].as_str(),
                rec["decision"].as_str(),
                rec["rule_id"].as_str()
            ),
            (Some("authz.object"), Some("deny"), Some(rule)),
            "{path}: {rec}"
        );
        // The bank was asked: its answer is the only source of the payment's owner.
        assert_eq!(rec["upstream_status"], 200, "{path}: {rec}");
        // The owner reads it.
        let (a, _) = e.p.send(call(&victim, "GET", &path, None)).await;
        assert_eq!(
            a.status,
            200,
            "{path}: {}",
            String::from_utf8_lossy(&a.body)
        );
        assert_eq!(a.json()["Data"]["ConsentId"], "pdc-victim", "{path}");
    }
    assert_eq!(e.up.count(), 0);
    stop.cancel();
}

/// The shipped OBIE payment policy in front of the mock bank: a payment repeated with its
/// `x-idempotency-key` creates nothing and answers 201 with the payment's current status (OBIE
/// Read/Write profile, "Idempotency"); without a key the payment is refused before the bank.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn obie_a_repeated_payment_answers_201_with_its_current_status() {
    let bank = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bank_addr = bank.local_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(portcullis_tools::mockbank::serve(bank, stop.clone()));
    let _stop = stop.drop_guard();
    let key = SigningKey::generate(Alg::ES256, "as-1").unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("jwks.json"), key.jwks().to_string()).unwrap();
    std::fs::write(
        dir.path().join("consents.json"),
        json!({"consents": {"pdc-1": {"status": "Authorised"}}}).to_string(),
    )
    .unwrap();
    let mut o = Options::new(bank_addr);
    o.policy = include_str!("../policies/obie-pisp.yaml").to_string();
    o.config.issuers.insert(
        "as".into(),
        file_issuer("https://as", "https://rs", &dir.path().join("jwks.json")),
    );
    o.config.consent = Some(FileConsentSource {
        file: Some(dir.path().join("consents.json").display().to_string()),
        ..FileConsentSource::default()
    });
    // The recording upstream stands by unused: the mock bank is this test's upstream.
    let idle = Upstream::start(Behaviour::Ok).await;
    let e = Env::start(o, idle, dir, Some(NOW)).await;
    let der = rustls_pki_types::CertificateDer::from_pem_file(certs().join("tpp1.pem")).unwrap();
    let token = key.access_token(&json!({
        "iss": "https://as", "aud": "https://rs", "exp": NOW + 300, "scope": "payments",
        "openbanking_intent_id": "pdc-1",
        "cnf": {"x5t#S256": portcullis_crypto::pki::thumbprint_s256(der.as_ref())},
    }));
    let pay = |idempotency_key: Option<&'static str>| {
        let (e, token) = (&e, token.clone());
        async move {
            let mut r = req("POST", "/open-banking/v3.1/pisp/domestic-payments")
                .header("authorization", format!("Bearer {token}"))
                .header("content-type", "application/json");
            if let Some(k) = idempotency_key {
                r = r.header("x-idempotency-key", k);
            }
            e.p.send(
                r.body(Full::new(Bytes::from_static(
                    br#"{"Data":{"ConsentId":"pdc-1"}}"#,
                )))
                .unwrap(),
            )
            .await
        }
    };
    let (first, _) = pay(Some("pay-1")).await;
    assert_eq!(
        first.status,
        201,
        "{}",
        String::from_utf8_lossy(&first.body)
    );
    assert_eq!(
        first.json()["Data"]["Status"],
        "AcceptedSettlementInProcess"
    );
    let payment = first.json()["Data"]["DomesticPaymentId"].clone();
    let (again, id) = pay(Some("pay-1")).await;
    assert_eq!(
        again.status,
        201,
        "{}",
        String::from_utf8_lossy(&again.body)
    );
    assert_eq!(again.headers["x-idempotent-replay"], "current");
    assert_eq!(
        again.json()["Data"]["DomesticPaymentId"],
        payment,
        "the same payment"
    );
    assert_eq!(
        again.json()["Data"]["Status"],
        "AcceptedSettlementCompleted"
    );
    let rec = e.p.audit_of(&id).await;
    assert_eq!(rec["idempotency"], "replayed_current", "{rec}");

    // No key on a payment: refused before the bank, recorded.
    let (a, id) = pay(None).await;
    assert_eq!(a.status, 400, "{}", String::from_utf8_lossy(&a.body));
    let rec = e.p.audit_of(&id).await;
    assert_eq!(rec["reason"], "idempotency.key_missing", "{rec}");
    assert!(rec["upstream_status"].is_null(), "{rec}");
}
