//! The proxy authenticating to a consent service as banks run them, with real processes on
//! loopback: a service that requires mutual TLS, one that takes a bearer token from a file a
//! secret manager rotates, and one that takes client credentials tokens from a token endpoint
//! (cached, single flight, fail closed). The records are OBIE consent resources (account
//! access, domestic payment, domestic VRP) and the routes' rules read their members.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use portcullis_crypto::jose::sign::SigningKey;
use portcullis_crypto::jose::Alg;
use rustls_pki_types::pem::PemObject;
use serde_json::{json, Value};

const NOW: i64 = 1_800_000_000;

const POLICY: &str = r#"
group: t
upstream: bank
routes:
  - id: accounts
    method: GET
    path: /accounts
    auth: {profile: fapi2}
    consent: {claim: openbanking_intent_id, permissions: [ReadAccountsDetail]}
  - id: domestic-payments
    method: POST
    path: /domestic-payments
    auth: {profile: fapi2}
    consent: {claim: openbanking_intent_id}
    rules:
      - {id: creditor-in-consent, value: {json: /Data/Initiation/CreditorAccount/Identification}, in: {consent: Initiation.CreditorAccount.Identification}}
      - {id: amount-in-consent, value: {json: /Data/Initiation/InstructedAmount/Amount}, in: {consent: Initiation.InstructedAmount.Amount}}
  - id: domestic-vrps
    method: POST
    path: /domestic-vrps
    auth: {profile: fapi2}
    consent: {claim: openbanking_intent_id}
    rules:
      - {id: creditor-in-vrp-consent, value: {json: /Data/Initiation/CreditorAccount/Identification}, in: {consent: Initiation.CreditorAccount.Identification}}
      - {id: currency-in-vrp-limits, value: {json: /Data/Instruction/InstructedAmount/Currency}, in: {consent: ControlParameters.MaximumIndividualAmount.Currency}}
"#;

/// The OBIE consent resources the consent services below answer with, by consent id.
fn obie_consents() -> Vec<(&'static str, Value)> {
    let read = |f: &str| -> Value {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("crates/policy/src/rules/obie")
            .join(f);
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    };
    vec![
        ("aac-1", read("account-access-consent.json")),
        ("pdc-1", read("domestic-payment-consent.json")),
        ("vrp-1", read("domestic-vrp-consent.json")),
    ]
}

/// The consent service's answer to `GET /consents/{id}`.
fn consent_answer(path: &str) -> (u16, String) {
    let id = path.trim_start_matches("/consents/");
    match obie_consents().into_iter().find(|(i, _)| *i == id) {
        Some((_, v)) => (200, v.to_string()),
        None => (404, r#"{"Code":"NotFound"}"#.into()),
    }
}

struct ConsentEnv {
    env: Env,
    key: SigningKey,
}

impl std::ops::Deref for ConsentEnv {
    type Target = Env;
    fn deref(&self) -> &Env {
        &self.env
    }
}

fn path_of(p: &std::path::Path) -> String {
    p.display().to_string()
}

fn cert(name: &str) -> String {
    path_of(&certs().join(name))
}

/// The proxy in front of a recording upstream, reading consents from `https://localhost:port/consents/{id}`
/// (every answer fresh: a TTL of a millisecond) with `client_auth`; `dir` holds the test's files.
async fn env(
    port: u16,
    client_auth: Option<FileConsentClientAuth>,
    dir: tempfile::TempDir,
) -> ConsentEnv {
    let key = SigningKey::generate(Alg::ES256, "as-1").unwrap();
    std::fs::write(dir.path().join("jwks.json"), key.jwks().to_string()).unwrap();
    let up = Upstream::start(Behaviour::Json(r#"{"Data":{}}"#)).await;
    let mut o = Options::new(up.addr);
    o.policy = POLICY.to_string();
    o.config.issuers.insert(
        "as".into(),
        file_issuer("https://as", "https://rs", &dir.path().join("jwks.json")),
    );
    o.config.consent = Some(FileConsentSource {
        url: Some(format!("https://localhost:{port}/consents/{{id}}")),
        ca: vec![cert("ca.pem")],
        ttl: Some(dur("1ms")),
        timeout: Some(dur("2s")),
        client_auth,
        ..FileConsentSource::default()
    });
    ConsentEnv {
        env: Env::start(o, up, dir, Some(NOW)).await,
        key,
    }
}

impl ConsentEnv {
    /// A request with tpp1's certificate-bound token naming `consent`.
    async fn call(
        &self,
        method: &str,
        path: &str,
        consent: &str,
        body: Option<Value>,
    ) -> (portcullis_tools::client::Answer, String) {
        let der =
            rustls_pki_types::CertificateDer::from_pem_file(certs().join("tpp1.pem")).unwrap();
        let token = self.key.access_token(&json!({
            "iss": "https://as", "aud": "https://rs", "exp": NOW + 300,
            "openbanking_intent_id": consent,
            "cnf": {"x5t#S256": portcullis_crypto::pki::thumbprint_s256(der.as_ref())},
        }));
        let mut r = req(method, path).header("authorization", format!("Bearer {token}"));
        let body = match body {
            Some(b) => {
                r = r.header("content-type", "application/json");
                Bytes::from(b.to_string())
            }
            None => Bytes::new(),
        };
        self.p.send(r.body(Full::new(body)).unwrap()).await
    }

    async fn accounts(&self) -> (portcullis_tools::client::Answer, String) {
        self.call("GET", "/accounts", "aac-1", None).await
    }

    /// Asserts a refusal three ways (status and reason, nothing more upstream, one audit
    /// record saying why), the upstream having seen `before` requests.
    async fn refused(
        &self,
        what: &str,
        (a, id): (portcullis_tools::client::Answer, String),
        status: u16,
        reason: &str,
        before: usize,
    ) {
        assert_eq!(
            a.status.as_u16(),
            status,
            "{what}: {}",
            String::from_utf8_lossy(&a.body)
        );
        assert_eq!(a.json()["reason"], reason, "{what}");
        assert_eq!(self.up.count(), before, "{what}: nothing upstream");
        // A refusal for want of an answer is the proxy's error, not a decision about the caller.
        let decision = if status >= 500 { "error" } else { "deny" };
        let rec = self.p.audit_of(&id).await;
        assert_eq!(
            (rec["reason"].as_str(), rec["decision"].as_str()),
            (Some(reason), Some(decision)),
            "{what}"
        );
    }
}

fn forwarded(what: &str, (a, _): &(portcullis_tools::client::Answer, String)) {
    assert_eq!(
        a.status.as_u16(),
        200,
        "{what}: {}",
        String::from_utf8_lossy(&a.body)
    );
}

fn tpp1_certificate() -> FileConsentClientAuth {
    FileConsentClientAuth {
        client_certificate: Some(cert("tpp1.pem")),
        client_private_key: Some(cert("tpp1.key")),
        ..FileConsentClientAuth::default()
    }
}

/// A payment submission whose initiation is the consent's, with `change` applied.
fn payment(change: impl FnOnce(&mut Value)) -> Value {
    let consent = &obie_consents()[1].1;
    let mut initiation = consent["Data"]["Initiation"].clone();
    change(&mut initiation);
    json!({"Data": {"ConsentId": "pdc-1", "Initiation": initiation}, "Risk": consent["Risk"]})
}

fn vrp(creditor: &str, currency: &str) -> Value {
    json!({"Data": {"ConsentId": "vrp-1",
        "Initiation": {"CreditorAccount": {"SchemeName": "UK.OBIE.SortCodeAccountNumber", "Identification": creditor}},
        "Instruction": {"InstructionIdentification": "i-1", "EndToEndIdentification": "e-1",
            "InstructedAmount": {"Amount": "10.00", "Currency": currency},
            "CreditorAccount": {"SchemeName": "UK.OBIE.SortCodeAccountNumber", "Identification": creditor}}},
        "Risk": {"PaymentContextCode": "PartyToParty"}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consent_service_that_requires_mtls_is_reached_with_the_client_certificate_only() {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let addr = https_endpoint_requiring_client_cert(Arc::new(move |parts, _| {
        h.fetch_add(1, Ordering::SeqCst);
        consent_answer(parts.uri.path())
    }))
    .await;
    let e = env(
        addr.port(),
        Some(tpp1_certificate()),
        tempfile::tempdir().unwrap(),
    )
    .await;
    // The three OBIE shapes, read from the service, govern their routes.
    forwarded("account access consent", &e.accounts().await);
    forwarded(
        "payment matching its consent",
        &e.call("POST", "/domestic-payments", "pdc-1", Some(payment(|_| {})))
            .await,
    );
    forwarded(
        "VRP within its consent",
        &e.call(
            "POST",
            "/domestic-vrps",
            "vrp-1",
            Some(vrp("30949330000011", "GBP")),
        )
        .await,
    );
    assert_eq!(e.up.count(), 3);
    assert_eq!(hits.load(Ordering::SeqCst), 3);
    let before = e.up.count();
    for (what, body, rule) in [
        (
            "payment to another creditor",
            payment(|i| i["CreditorAccount"]["Identification"] = json!("99999999999999")),
            "creditor-in-consent",
        ),
        (
            "payment of another amount",
            payment(|i| i["InstructedAmount"]["Amount"] = json!("1165.88")),
            "amount-in-consent",
        ),
    ] {
        let answer = e
            .call("POST", "/domestic-payments", "pdc-1", Some(body))
            .await;
        let id = answer.1.clone();
        e.refused(what, answer, 403, "authz.object", before).await;
        assert_eq!(e.p.audit_of(&id).await["rule_id"], rule, "{what}");
    }
    let answer = e
        .call(
            "POST",
            "/domestic-vrps",
            "vrp-1",
            Some(vrp("30949330000011", "EUR")),
        )
        .await;
    let id = answer.1.clone();
    e.refused(
        "VRP in another currency",
        answer,
        403,
        "authz.object",
        before,
    )
    .await;
    assert_eq!(e.p.audit_of(&id).await["rule_id"], "currency-in-vrp-limits");

    // Without a client certificate the service refuses the handshake: no decision, 503.
    let bare = env(addr.port(), None, tempfile::tempdir().unwrap()).await;
    let seen = hits.load(Ordering::SeqCst);
    bare.refused(
        "no client certificate",
        bare.accounts().await,
        503,
        "authz.consent_unavailable",
        0,
    )
    .await;
    assert_eq!(hits.load(Ordering::SeqCst), seen, "no request got through");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bearer_token_file_rotated_while_running_is_used_without_a_reload() {
    let current = Arc::new(Mutex::new("token-one".to_string()));
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let (c, s) = (current.clone(), seen.clone());
    let addr = https_endpoint(Arc::new(move |parts, _| {
        let got = parts
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        s.lock().unwrap().push(got.clone());
        if got == format!("Bearer {}", c.lock().unwrap()) {
            consent_answer(parts.uri.path())
        } else {
            (401, r#"{"error":"invalid_token"}"#.into())
        }
    }))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("consent-token");
    std::fs::write(&file, "token-one\n").unwrap();
    let e = env(
        addr.port(),
        Some(FileConsentClientAuth {
            bearer_token_file: Some(path_of(&file)),
            ..FileConsentClientAuth::default()
        }),
        dir,
    )
    .await;
    forwarded("the first token", &e.accounts().await);
    assert_eq!(*seen.lock().unwrap(), ["Bearer token-one"]);
    // The service rotates: the old token stops working there, and the proxy, still holding
    // it, has no decision.
    *current.lock().unwrap() = "token-two".into();
    e.refused(
        "the rotated-out token",
        e.accounts().await,
        503,
        "authz.consent_unavailable",
        1,
    )
    .await;
    // The secret manager writes the new token; the proxy reads it on its own (no reload).
    std::fs::write(&file, "token-two\n").unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    forwarded("the rotated-in token", &e.accounts().await);
    assert_eq!(
        seen.lock().unwrap().last().map(String::as_str),
        Some("Bearer token-two")
    );
    // A token file emptied (a botched rotation) gives no token: fail closed, nothing sent.
    std::fs::write(&file, "").unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let asked = seen.lock().unwrap().len();
    e.refused(
        "an empty token file",
        e.accounts().await,
        503,
        "authz.consent_unavailable",
        2,
    )
    .await;
    assert_eq!(
        seen.lock().unwrap().len(),
        asked,
        "no request without a token"
    );
}

/// A token endpoint issuing `cc-<n>` tokens for `expires_in` seconds to the client `portcullis`
/// authenticated with HTTP Basic (`s3cret`), or answering `fail` when set.
struct TokenEndpoint {
    addr: std::net::SocketAddr,
    issued: Arc<Mutex<Vec<String>>>,
    fail: Arc<Mutex<Option<(u16, String)>>>,
}

async fn token_endpoint(expires_in: u64) -> TokenEndpoint {
    let issued = Arc::new(Mutex::new(Vec::<String>::new()));
    let fail = Arc::new(Mutex::new(None::<(u16, String)>));
    let (i, f) = (issued.clone(), fail.clone());
    let basic = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            "portcullis:s3cret"
        )
    );
    let addr = https_endpoint(Arc::new(move |parts, body| {
        if let Some(answer) = f.lock().unwrap().clone() {
            return answer;
        }
        let form = String::from_utf8_lossy(body);
        let authorized = parts
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            == Some(&basic);
        if parts.method != "POST" || !authorized {
            return (401, r#"{"error":"invalid_client"}"#.into());
        }
        if form != "grant_type=client_credentials&scope=consents%3Aread" {
            return (400, r#"{"error":"invalid_request"}"#.into());
        }
        let mut issued = i.lock().unwrap();
        let token = format!("cc-{}", issued.len() + 1);
        issued.push(token.clone());
        (
            200,
            json!({"access_token": token, "token_type": "Bearer", "expires_in": expires_in})
                .to_string(),
        )
    }))
    .await;
    TokenEndpoint { addr, issued, fail }
}

/// A consent service accepting only the tokens `issued` has handed out.
async fn consent_service_for(issued: Arc<Mutex<Vec<String>>>) -> std::net::SocketAddr {
    https_endpoint(Arc::new(move |parts, _| {
        let got = parts
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if issued.lock().unwrap().iter().any(|t| t == got) {
            consent_answer(parts.uri.path())
        } else {
            (401, r#"{"error":"invalid_token"}"#.into())
        }
    }))
    .await
}

fn client_credentials(dir: &tempfile::TempDir, token_url: String) -> FileConsentClientAuth {
    std::fs::write(dir.path().join("client-secret"), "s3cret\n").unwrap();
    FileConsentClientAuth {
        client_credentials: Some(FileClientCredentials {
            token_url,
            client_id: "portcullis".into(),
            client_secret_file: Some(path_of(&dir.path().join("client-secret"))),
            scope: Some("consents:read".into()),
            ..FileClientCredentials::default()
        }),
        ..FileConsentClientAuth::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_tokens_are_cached_until_expiry_asked_once_and_fail_closed() {
    let log = Log::global();
    let te = token_endpoint(2).await;
    let consents = consent_service_for(te.issued.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let auth = client_credentials(&dir, format!("https://localhost:{}/token", te.addr.port()));
    let e = env(consents.port(), Some(auth), dir).await;
    // Concurrent first lookups wait for one token request (single flight).
    let (a1, a2, a3, a4, a5, a6) = tokio::join!(
        e.accounts(),
        e.accounts(),
        e.accounts(),
        e.accounts(),
        e.accounts(),
        e.accounts()
    );
    for a in [&a1, &a2, &a3, &a4, &a5, &a6] {
        forwarded("concurrent lookups", a);
    }
    forwarded("a later lookup", &e.accounts().await);
    assert_eq!(*te.issued.lock().unwrap(), ["cc-1"], "one token for all");
    // The token lives 2 s: after it, a new one.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    forwarded("after expiry", &e.accounts().await);
    assert_eq!(*te.issued.lock().unwrap(), ["cc-1", "cc-2"]);
    // The authorization server stops accepting the proxy: once the token expires, the lookup
    // has no decision, and the operator reads the status and the OAuth error code.
    *te.fail.lock().unwrap() = Some((
        401,
        r#"{"error":"invalid_client","error_description":"client secret s3cret is wrong"}"#.into(),
    ));
    tokio::time::sleep(Duration::from_millis(2100)).await;
    e.refused(
        "token endpoint refuses the client",
        e.accounts().await,
        503,
        "authz.consent_unavailable",
        8,
    )
    .await;
    let endpoint = format!("localhost:{}/consents", consents.port());
    let logged = log.text();
    let lines: Vec<_> = logged.lines().filter(|l| l.contains(&endpoint)).collect();
    assert_eq!(lines.len(), 1, "one warning: {logged}");
    assert!(
        lines[0].contains("token request: status 401, error invalid_client"),
        "{}",
        lines[0]
    );
    assert!(
        !logged.contains("s3cret") && !logged.contains("cc-2"),
        "{logged}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_endpoint_that_is_down_is_no_decision() {
    let issued = Arc::new(Mutex::new(Vec::new()));
    let consents = consent_service_for(issued).await;
    let dir = tempfile::tempdir().unwrap();
    let dead = Upstream::dead_addr().await;
    let auth = client_credentials(&dir, format!("https://localhost:{}/token", dead.port()));
    let e = env(consents.port(), Some(auth), dir).await;
    e.refused(
        "token endpoint down",
        e.accounts().await,
        503,
        "authz.consent_unavailable",
        0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_by_client_certificate_reach_an_mtls_token_endpoint_and_consent_service()
{
    let issued = Arc::new(Mutex::new(Vec::<String>::new()));
    let i = issued.clone();
    // tls_client_auth (RFC 8705 §2): the certificate authenticates, the form names the client,
    // and there is no secret anywhere.
    let token = https_endpoint_requiring_client_cert(Arc::new(move |parts, body| {
        let form = String::from_utf8_lossy(body);
        if parts.headers.contains_key("authorization")
            || form != "grant_type=client_credentials&client_id=portcullis"
        {
            return (400, r#"{"error":"invalid_request"}"#.into());
        }
        let mut issued = i.lock().unwrap();
        let token = format!("mtls-{}", issued.len() + 1);
        issued.push(token);
        (
            200,
            json!({"access_token": issued.last(), "token_type": "bearer", "expires_in": 300})
                .to_string(),
        )
    }))
    .await;
    let i = issued.clone();
    let consents = https_endpoint_requiring_client_cert(Arc::new(move |parts, _| {
        let got = parts
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if i.lock().unwrap().iter().any(|t| t == got) {
            consent_answer(parts.uri.path())
        } else {
            (401, r#"{"error":"invalid_token"}"#.into())
        }
    }))
    .await;
    let mut auth = tpp1_certificate();
    auth.client_credentials = Some(FileClientCredentials {
        token_url: format!("https://localhost:{}/token", token.port()),
        client_id: "portcullis".into(),
        ..FileClientCredentials::default()
    });
    let e = env(consents.port(), Some(auth), tempfile::tempdir().unwrap()).await;
    forwarded("first", &e.accounts().await);
    forwarded("second", &e.accounts().await);
    assert_eq!(*issued.lock().unwrap(), ["mtls-1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_credentials_token_the_service_refuses_is_replaced_on_the_next_lookup() {
    let te = token_endpoint(300).await;
    let consents = consent_service_for(te.issued.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let auth = client_credentials(&dir, format!("https://localhost:{}/token", te.addr.port()));
    let e = env(consents.port(), Some(auth), dir).await;
    forwarded("with the first token", &e.accounts().await);
    // The service revokes the token long before its expiry: that lookup has no decision...
    te.issued.lock().unwrap()[0] = "revoked".into();
    e.refused(
        "a revoked token",
        e.accounts().await,
        503,
        "authz.consent_unavailable",
        1,
    )
    .await;
    // ...and the proxy, having dropped it, asks for a new one.
    forwarded("with a new token", &e.accounts().await);
    assert_eq!(*te.issued.lock().unwrap(), ["revoked", "cc-2"]);
}
