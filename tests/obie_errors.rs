//! The OBIE error contract through the proxy: on OBIE routes (`errors: obie`) every refusal the
//! proxy makes answers in the OBIE error body (`Code`, `Id`, `Message`, `Errors[{ErrorCode,
//! Message, Path}]`) with a `UK.OBIE.*` code, from every stage; an expired token is 401 with no
//! body; 415 and 406 are answered before the upstream; other routes keep problem+json. Every
//! refusal is checked three ways: status and OBIE code, nothing upstream, one audit record that
//! keeps the reason code.

mod common;

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use portcullis_crypto::jose::detached::{ob_header, sign_detached, Profile};
use portcullis_crypto::jose::keypair::KeyPair;
use portcullis_crypto::jose::sign::SigningKey;
use portcullis_crypto::jose::Alg;
use portcullis_tools::client::Answer;
use rustls_pki_types::pem::PemObject;
use serde_json::{json, Value};

const NOW: i64 = 1_800_000_000;
const ISS: &str = "https://as.example";
const AUD: &str = "https://rs.example";
const TPP1_ISS: &str = "PSDGB-FCA-123456/tpp-one-software-id";
const TAN: &str = "openbanking.org.uk";
const BALANCES: &str = "/open-banking/v3.1/aisp/accounts/acc-1/balances";
const PAYMENTS: &str = "/open-banking/v3.1/pisp/domestic-payments";
const FILE: &str = "/open-banking/v3.1/pisp/file-payment-consents/fc-1/file";
const PAYMENT: &[u8] = br#"{"Data":{"ConsentId":"pdc-1","Initiation":{"InstructedAmount":{"Amount":"10.00","Currency":"GBP"}}},"Risk":{}}"#;

const POLICY: &str = r#"
group: ob
upstream: bank
errors: obie
routes:
  - id: ob.balances
    method: GET
    path: /open-banking/v3.1/aisp/accounts/{AccountId}/balances
    body_limit: 0
    auth: {profile: fapi2}
    scopes: {all_of: [accounts]}
    consent: {claim: openbanking_intent_id, permissions: [ReadBalances]}
    rules:
      - {id: account-in-consent, value: {path: AccountId}, in: {consent: accounts}}
  - id: ob.consents.get
    method: GET
    path: /open-banking/v3.1/aisp/account-access-consents/{ConsentId}
    body_limit: 0
    auth: {profile: fapi2}
    rules:
      - {id: own-consent, value: {path: ConsentId}, in: {claim: openbanking_intent_id}, deny_status: 404}
  - id: ob.payments
    method: POST
    path: /open-banking/v3.1/pisp/domestic-payments
    auth: {profile: fapi2}
    scopes: {all_of: [payments]}
    signature: {kind: obie-jws, profile: obie-3.1.4, sign_response: true}
    idempotency: required
  - id: ob.files
    method: POST
    path: /open-banking/v3.1/pisp/file-payment-consents/{ConsentId}/file
    accepts: [text/xml, application/json]
  - id: ob.gone
    method: GET
    path: /open-banking/v3.1/aisp/gone
    upstream: dead
  - id: ob.limited
    method: GET
    path: /open-banking/v3.1/aisp/limited
    rate_limit: one
  - id: plain.items
    method: POST
    path: /plain/items
    errors: problem
    auth: {profile: fapi2}
    accepts: [application/json]
    produces: [application/json]
  - id: plain.free
    method: POST
    path: /plain/free
    errors: problem
"#;

fn thumb(name: &str) -> String {
    let der = rustls_pki_types::CertificateDer::from_pem_file(certs().join(format!("{name}.pem")))
        .unwrap();
    portcullis_crypto::pki::thumbprint_s256(der.as_ref())
}

/// The kit's [`Env`] on a manual clock at [`NOW`], with tpp1's OBIE signing key and the AS key.
struct ObEnv {
    env: Env,
    ps: KeyPair,
    bank: portcullis_crypto::jose::jwk::VerifyingKey,
    as_key: SigningKey,
}

impl std::ops::Deref for ObEnv {
    type Target = Env;
    fn deref(&self) -> &Env {
        &self.env
    }
}

async fn env() -> ObEnv {
    let dir = tempfile::tempdir().unwrap();
    let clients = dir.path().join("clients");
    std::fs::create_dir_all(&clients).unwrap();
    let ps = KeyPair::generate(Alg::PS256, "tpp1-ps").unwrap();
    std::fs::write(clients.join("PSDGB-FCA-123456.json"), ps.jwks().to_string()).unwrap();
    let bank = KeyPair::generate(Alg::PS256, "bank-1").unwrap();
    let bank_key = dir.path().join("bank.key");
    std::fs::write(&bank_key, bank.to_pkcs8_pem()).unwrap();
    let as_key = SigningKey::generate(Alg::ES256, "as-1").unwrap();
    let jwks = dir.path().join("as-jwks.json");
    std::fs::write(&jwks, as_key.jwks().to_string()).unwrap();
    let consents = dir.path().join("consents.json");
    std::fs::write(
        &consents,
        json!({"consents": {
            "aac-1": {"status": "Authorised", "permissions": ["ReadBalances"], "accounts": ["acc-1"]},
            "aac-2": {"status": "Revoked", "permissions": ["ReadBalances"], "accounts": ["acc-1"]},
        }})
        .to_string(),
    )
    .unwrap();
    let up = Upstream::start(Behaviour::Ok).await;
    let mut o = Options::new(up.addr);
    o.policy = POLICY.to_string();
    o.config
        .upstreams
        .insert("dead".into(), upstream_at(Upstream::dead_addr().await));
    o.config
        .issuers
        .insert("as".into(), file_issuer(ISS, AUD, &jwks));
    o.config.rate_limits = FileRateLimits {
        classes: [(
            "one".to_string(),
            FileQuota {
                rate: 1,
                per: dur("60s"),
                burst: Some(1),
                shadow: false,
            },
        )]
        .into(),
        ..FileRateLimits::default()
    };
    o.config.consent = Some(FileConsentSource {
        file: Some(consents.display().to_string()),
        ..FileConsentSource::default()
    });
    o.config.signatures = FileSignatures {
        client: Some("{org_id}".into()),
        client_keys: Some(FileClientKeys {
            directory: Some(clients.display().to_string()),
            ..FileClientKeys::default()
        }),
        jws: FileJws {
            trust_anchors: vec![TAN.into()],
            iss: Some("{org_id}/{cert_cn}".into()),
            ..FileJws::default()
        },
        response: Some(FileResponse {
            key: bank_key.display().to_string(),
            kid: "bank-1".into(),
            iss: Some("bank-org/bank-ssa".into()),
            ..FileResponse::default()
        }),
        ..FileSignatures::default()
    };
    ObEnv {
        env: Env::start(o, up, dir, Some(NOW)).await,
        ps,
        bank: portcullis_crypto::jose::jwk::from_jwk(bank.public_jwk().as_object().unwrap())
            .unwrap(),
        as_key,
    }
}

/// One request: who sends it, and what.
struct Req {
    identity: &'static str,
    method: &'static str,
    path: &'static str,
    headers: Vec<(&'static str, String)>,
    body: &'static [u8],
}

fn get(path: &'static str) -> Req {
    Req {
        identity: "tpp1",
        method: "GET",
        path,
        headers: Vec::new(),
        body: b"",
    }
}

fn post(path: &'static str, body: &'static [u8]) -> Req {
    Req {
        identity: "tpp1",
        method: "POST",
        path,
        headers: vec![("content-type", "application/json".into())],
        body,
    }
}

impl Req {
    fn with(mut self, name: &'static str, value: impl Into<String>) -> Req {
        self.headers.retain(|(k, _)| *k != name);
        self.headers.push((name, value.into()));
        self
    }
    fn by(mut self, identity: &'static str) -> Req {
        self.identity = identity;
        self
    }
}

impl ObEnv {
    /// tpp1's certificate-bound token, with `extra` claims over the defaults.
    fn token(&self, extra: Value) -> String {
        let mut claims = json!({
            "iss": ISS, "aud": AUD, "exp": NOW + 300, "iat": NOW, "client_id": "tpp-one",
            "scope": "accounts payments", "openbanking_intent_id": "aac-1",
            "cnf": {"x5t#S256": thumb("tpp1")},
        });
        for (k, v) in extra.as_object().unwrap() {
            claims[k] = v.clone();
        }
        self.as_key.access_token(&claims)
    }

    fn bearer(&self, extra: Value) -> String {
        format!("Bearer {}", self.token(extra))
    }

    fn jws(&self, body: &[u8]) -> String {
        let h = ob_header(
            Profile::Obie314,
            Alg::PS256,
            "tpp1-ps",
            NOW - 5,
            TPP1_ISS,
            TAN,
        );
        sign_detached(&h, body, |m| self.ps.sign(m))
    }

    async fn send(&self, r: Req) -> (Answer, String) {
        let id = uuid::Uuid::new_v4().to_string();
        let mut b = req(r.method, r.path).header("x-fapi-interaction-id", &id);
        for (k, v) in &r.headers {
            b = b.header(*k, v.as_str());
        }
        let mut c = self.p.client(Some(r.identity), false).await.unwrap();
        let a = c
            .send(b.body(Full::new(Bytes::from_static(r.body))).unwrap())
            .await
            .unwrap();
        (a, id)
    }

    /// A refusal on an OBIE route, three ways: the status, the OBIE error body with `code` (and
    /// `path`) and the interaction id; nothing upstream; one audit record with `reason`, the
    /// stage and the decision.
    #[allow(clippy::too_many_arguments)]
    async fn refused(
        &self,
        r: Req,
        status: u16,
        code: &str,
        path: Option<&str>,
        reason: &str,
        stage: &str,
    ) -> Answer {
        let before = self.up.count();
        let (a, id) = self.send(r).await;
        let text = String::from_utf8_lossy(&a.body).to_string();
        assert_eq!(a.status.as_u16(), status, "{reason}: {text}");
        assert_eq!(a.headers["content-type"], "application/json", "{reason}");
        assert_eq!(a.headers["x-fapi-interaction-id"], id.as_str());
        let j = a.json();
        let members: Vec<&String> = j.as_object().expect(&text).keys().collect();
        assert_eq!(
            members,
            ["Code", "Errors", "Id", "Message"],
            "{reason}: {text}"
        );
        let phrase: String = a
            .status
            .canonical_reason()
            .unwrap()
            .split_whitespace()
            .collect();
        assert_eq!(j["Code"], format!("{status} {phrase}"), "{reason}");
        assert_eq!(j["Id"], id.as_str(), "{reason}");
        assert!(j["Message"].as_str().is_some_and(|m| !m.is_empty()));
        let e = &j["Errors"][0];
        assert_eq!(e["ErrorCode"], code, "{reason}: {text}");
        assert_eq!(e["Path"].as_str(), path, "{reason}: {text}");
        assert!(e["Message"].as_str().is_some_and(|m| !m.is_empty()));
        assert!(
            !text.contains(reason),
            "the reason code stays in the record: {text}"
        );
        assert_eq!(self.up.count(), before, "{reason}: nothing upstream");
        let rec = self.p.audit_of(&id).await;
        assert_eq!(rec["reason"], reason, "{rec}");
        assert_eq!(rec["status"], status, "{rec}");
        assert_eq!(rec["stage"], stage, "{rec}");
        let decision = if status >= 500 { "error" } else { "deny" };
        assert_eq!(rec["decision"], decision, "{rec}");
        a
    }

    /// A refusal on a problem+json route, three ways.
    async fn refused_problem(&self, r: Req, status: u16, reason: &str) {
        let before = self.up.count();
        let (a, id) = self.send(r).await;
        assert_eq!(
            a.status.as_u16(),
            status,
            "{reason}: {}",
            String::from_utf8_lossy(&a.body)
        );
        assert_eq!(a.headers["content-type"], "application/problem+json");
        assert_eq!(a.json()["reason"], reason);
        assert_eq!(a.json()["interaction_id"], id.as_str());
        assert_eq!(self.up.count(), before, "{reason}: nothing upstream");
        let rec = self.p.audit_of(&id).await;
        assert_eq!(
            (rec["reason"].as_str(), rec["decision"].as_str()),
            (Some(reason), Some("deny"))
        );
    }
}

/// A representative refusal from every stage of the chain that runs after the route is known,
/// on OBIE routes: each in the OBIE error body with its `UK.OBIE.*` code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stage_refuses_in_the_obie_error_body_on_obie_routes() {
    let e = env().await;
    let ok = e.bearer(json!({}));
    let (a, _) = e.send(get(BALANCES).with("authorization", &ok)).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let signed = |b: Req| b.with("x-jws-signature", e.jws(PAYMENT));
    const HI: &str = "UK.OBIE.Header.Invalid";
    const HM: &str = "UK.OBIE.Header.Missing";
    // Body limit (after the route match).
    let r = post(BALANCES, b"{}").with("authorization", &ok);
    let r = Req { method: "GET", ..r };
    e.refused(
        r,
        413,
        "UK.OBIE.Field.Invalid",
        None,
        "http.body_too_large",
        "http",
    )
    .await;
    // Media types.
    let r = post(PAYMENTS, PAYMENT).with("content-type", "text/plain");
    e.refused(
        r,
        415,
        HI,
        Some("Content-Type"),
        "http.unsupported_media_type",
        "http",
    )
    .await;
    let r = get(BALANCES).with("accept", "text/html, application/json;q=0");
    e.refused(r, 406, HI, Some("Accept"), "http.not_acceptable", "http")
        .await;
    // Access token and its binding.
    let a = e
        .refused(
            get(BALANCES),
            401,
            HM,
            Some("Authorization"),
            "token.missing",
            "token",
        )
        .await;
    assert!(a.headers.contains_key("www-authenticate"));
    let r = get(BALANCES).with("authorization", "Bearer not-a-jwt");
    e.refused(
        r,
        401,
        HI,
        Some("Authorization"),
        "token.malformed",
        "token",
    )
    .await;
    let r = get(BALANCES).with("authorization", &ok).by("tpp2");
    e.refused(
        r,
        401,
        HI,
        Some("Authorization"),
        "binding.cert_mismatch",
        "binding",
    )
    .await;
    // The request signature (a signing route: the refusal is signed too).
    let r = post(PAYMENTS, PAYMENT).with("authorization", &ok);
    let a = e
        .refused(
            r,
            400,
            "UK.OBIE.Signature.Missing",
            None,
            "signature.jws_missing",
            "signature",
        )
        .await;
    assert!(a.headers.contains_key("x-jws-signature"));
    // Authorization: scope, consent, object, hidden object.
    let accounts_only = e.bearer(json!({"scope": "accounts"}));
    let r = signed(post(PAYMENTS, PAYMENT).with("authorization", &accounts_only));
    e.refused(r, 403, HI, Some("Authorization"), "authz.scope", "authz")
        .await;
    let revoked = e.bearer(json!({"openbanking_intent_id": "aac-2"}));
    let r = get(BALANCES).with("authorization", &revoked);
    let code = "UK.OBIE.Resource.InvalidConsentStatus";
    e.refused(r, 403, code, None, "authz.consent_status", "authz")
        .await;
    let r = get("/open-banking/v3.1/aisp/accounts/acc-9/balances").with("authorization", &ok);
    let code = "UK.OBIE.Resource.ConsentMismatch";
    e.refused(r, 403, code, None, "authz.object", "authz").await;
    let r = get("/open-banking/v3.1/aisp/account-access-consents/aac-9").with("authorization", &ok);
    let code = "UK.OBIE.Resource.NotFound";
    e.refused(r, 404, code, None, "authz.object_hidden", "authz")
        .await;
    // Idempotency (after a verified signature).
    let r = signed(post(PAYMENTS, PAYMENT).with("authorization", &ok));
    let path = Some("x-idempotency-key");
    e.refused(r, 400, HM, path, "idempotency.key_missing", "idempotency")
        .await;
    // The client rate limit (after the identity).
    let (a, _) = e.send(get("/open-banking/v3.1/aisp/limited")).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let code = "UK.OBIE.UnexpectedError";
    let a = e
        .refused(
            get("/open-banking/v3.1/aisp/limited"),
            429,
            code,
            None,
            "rate_limit.client",
            "rate_limit",
        )
        .await;
    assert!(a.headers.contains_key("retry-after"));
    // The upstream.
    let code = "UK.OBIE.UnexpectedError";
    e.refused(
        get("/open-banking/v3.1/aisp/gone"),
        502,
        code,
        None,
        "upstream.connect_failed",
        "upstream",
    )
    .await;
    // A signed, keyed payment passes.
    let r =
        signed(post(PAYMENTS, PAYMENT).with("authorization", &ok)).with("x-idempotency-key", "k-1");
    let (a, _) = e.send(r).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
}

/// OBIE: an expired access token is 401 with the challenge and no body at all — on a signing
/// route no `x-jws-signature` either (there is no body to sign). Other routes keep problem+json.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_401_without_a_body_on_obie_routes() {
    let e = env().await;
    let expired = e.bearer(json!({"iat": NOW - 7200, "exp": NOW - 3600}));
    for r in [
        get(BALANCES).with("authorization", &expired),
        post(PAYMENTS, PAYMENT)
            .with("authorization", &expired)
            .with("x-jws-signature", e.jws(PAYMENT)),
    ] {
        let before = e.up.count();
        let path = r.path;
        let (a, id) = e.send(r).await;
        assert_eq!(a.status, 401, "{path}");
        assert!(a.body.is_empty(), "{path}: {:?}", a.body);
        assert!(!a.headers.contains_key("content-type"), "{path}");
        assert!(!a.headers.contains_key("x-jws-signature"), "{path}");
        assert_eq!(
            a.headers["www-authenticate"], r#"Bearer error="invalid_token""#,
            "{path}"
        );
        assert_eq!(a.headers["x-fapi-interaction-id"], id.as_str());
        assert_eq!(e.up.count(), before, "{path}: nothing upstream");
        let rec = e.p.audit_of(&id).await;
        assert_eq!(
            (
                rec["reason"].as_str(),
                rec["status"].as_u64(),
                rec["decision"].as_str()
            ),
            (Some("token.expired"), Some(401), Some("deny")),
            "{rec}"
        );
    }
    // The same token on a problem+json route: 401 with the problem body.
    let r = post("/plain/items", b"{}").with("authorization", &expired);
    e.refused_problem(r, 401, "token.expired").await;
}

/// 415 and 406 on routes that declare (or, on OBIE routes, default to) their media types:
/// decided before the upstream, in each route's dialect; what the route takes and makes passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_content_types_and_unacceptable_accepts_are_refused_before_the_upstream() {
    let e = env().await;
    let ok = e.bearer(json!({}));
    const HI: &str = "UK.OBIE.Header.Invalid";
    // OBIE: no Content-Type on a body, a second one, a charset that is not UTF-8.
    let mut r = post(PAYMENTS, PAYMENT);
    r.headers.clear();
    e.refused(
        r,
        415,
        HI,
        Some("Content-Type"),
        "http.unsupported_media_type",
        "http",
    )
    .await;
    let r = post(PAYMENTS, PAYMENT).with("content-type", "application/json; charset=iso-8859-1");
    e.refused(
        r,
        415,
        HI,
        Some("Content-Type"),
        "http.unsupported_media_type",
        "http",
    )
    .await;
    // A file route takes what it declares, and nothing else.
    let r = post(FILE, b"<Document/>").with("content-type", "text/xml");
    let (a, _) = e.send(r).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let r = post(FILE, b"%PDF").with("content-type", "application/pdf");
    e.refused(
        r,
        415,
        HI,
        Some("Content-Type"),
        "http.unsupported_media_type",
        "http",
    )
    .await;
    // Accept: q=0 and a type the route does not make refuse; wildcards and q-values pass.
    for accept in ["application/xml", "*/*;q=0", "application/*;q=0, text/*"] {
        let r = get(BALANCES)
            .with("authorization", &ok)
            .with("accept", accept);
        e.refused(r, 406, HI, Some("Accept"), "http.not_acceptable", "http")
            .await;
    }
    for accept in [
        "*/*",
        "application/*",
        "text/html;q=0.9, application/json;q=0.1",
    ] {
        let r = get(BALANCES)
            .with("authorization", &ok)
            .with("accept", accept);
        let (a, _) = e.send(r).await;
        assert_eq!(
            a.status,
            200,
            "{accept}: {}",
            String::from_utf8_lossy(&a.body)
        );
    }
    // A problem+json route that declares its types: the same decisions, in problem+json.
    let r = post("/plain/items", b"{}")
        .with("authorization", &ok)
        .with("content-type", "text/plain");
    e.refused_problem(r, 415, "http.unsupported_media_type")
        .await;
    let r = post("/plain/items", b"{}")
        .with("authorization", &ok)
        .with("accept", "text/html");
    e.refused_problem(r, 406, "http.not_acceptable").await;
    let r = post("/plain/items", b"{}")
        .with("authorization", &ok)
        .with("content-type", "application/json; charset=UTF-8")
        .with("accept", "application/*;q=0.5, text/html");
    let (a, _) = e.send(r).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    // A route that declares nothing assumes nothing.
    let r = post("/plain/free", b"hello")
        .with("content-type", "text/plain")
        .with("accept", "text/html");
    let (a, _) = e.send(r).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
}

/// Refusals made before the route was matched (header hygiene, the FAPI headers) answer as the
/// route the method and canonical path name — in the OBIE body, and signed on a signing route.
/// A path that names no route (unknown, or not canonical) has no route: problem+json. After the
/// match, a problem+json route in an OBIE group keeps problem+json.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_before_the_match_answer_as_the_route_the_path_names() {
    let e = env().await;
    const HI: &str = "UK.OBIE.Header.Invalid";
    let path = Some("x-fapi-customer-ip-address");
    let r = get(BALANCES).with("x-fapi-customer-ip-address", "not-an-ip");
    e.refused(r, 400, HI, path, "fapi.customer_ip_invalid", "fapi")
        .await;
    let r = get(BALANCES).with("x_forwarded_for", "10.0.0.1");
    e.refused(r, 400, HI, None, "http.header_underscore", "http")
        .await;
    let r = post(PAYMENTS, PAYMENT).with("x-fapi-customer-ip-address", "not-an-ip");
    let a = e
        .refused(r, 400, HI, path, "fapi.customer_ip_invalid", "fapi")
        .await;
    assert!(jws_verifies(&e, &a), "signed as the route signs");
    e.refused_problem(
        get("/open-banking/v3.1/aisp/unknown"),
        404,
        "route.not_found",
    )
    .await;
    e.refused_problem(
        get("/open-banking/v3.1/aisp/accounts/acc-1/../acc-9/balances"),
        400,
        "path.dot_segment",
    )
    .await;
    // A method the path does not have names no route, whatever else is wrong.
    let r = get(BALANCES).with("x-fapi-customer-ip-address", "not-an-ip");
    let r = Req {
        method: "DELETE",
        ..r
    };
    e.refused_problem(r, 400, "fapi.customer_ip_invalid").await;
    let r = Req {
        method: "DELETE",
        ..get(BALANCES)
    };
    e.refused_problem(r, 405, "route.method_not_allowed").await;
    e.refused_problem(post("/plain/items", b"{}"), 401, "token.missing")
        .await;
    // A refusal by a stage on a signing route verifies with the bank key (see
    // tests/signatures.rs for the RFC 9421 kind).
    let (a, _) = e
        .send(post(PAYMENTS, PAYMENT).with("authorization", e.bearer(json!({}))))
        .await;
    assert_eq!(a.status, 400);
    assert!(jws_verifies(&e, &a));
}

/// The `x-jws-signature` of `a` verifies with the bank key over exactly its body.
fn jws_verifies(e: &ObEnv, a: &Answer) -> bool {
    let jws = a.headers["x-jws-signature"].to_str().unwrap();
    let (h, s) = jws.split_once("..").unwrap();
    let input = portcullis_crypto::jose::detached::signing_input(h, &a.body, true);
    let sig = portcullis_crypto::jose::b64url_decode(s).unwrap();
    e.bank.verify(&input, &sig)
}
