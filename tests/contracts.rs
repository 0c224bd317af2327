//! Contracts from OpenAPI, end to end: the two OBIE v4.0.0 descriptions in `tests/vectors/openapi`
//! imported into policies (`policy import`), loaded by the proxy, and requests checked against
//! them through real mTLS and a real client. Valid payloads pass; every mutated payload is
//! refused three ways — 400 with the OBIE error body naming the JSON pointer, nothing upstream,
//! one audit record with the `contract.*` reason, the pointer and the keyword — and a shadow
//! route forwards and records. The upstream's answers are checked against the operation's
//! responses: drift is recorded (shadow) or the answer withheld (enforce). Re-import is byte-identical, reports changes and keeps
//! hand-written lines; bad contracts are refused at load naming file, field and reason.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use portcullis_crypto::jose::sign::SigningKey;
use portcullis_crypto::jose::Alg;
use portcullis_tools::client::Answer;
use portcullis_tools::openapi::{import, Import, MARKER};
use rustls_pki_types::pem::PemObject;
use serde_json::{json, Value};

const NOW: i64 = 1_800_000_000;
const ISS: &str = "https://as.example";
const AUD: &str = "https://rs.example";
const CONSENTS: &str = "/open-banking/v4.0/pisp/domestic-payment-consents";
const SCHEDULED: &str = "/open-banking/v4.0/pisp/domestic-scheduled-payment-consents";

fn vectors() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/openapi")
}

fn pisp_spec() -> PathBuf {
    vectors().join("obie-payment-initiation-v4.0.0.yaml")
}

fn aisp_spec() -> PathBuf {
    vectors().join("obie-account-info-v4.0.0.yaml")
}

fn thumb(name: &str) -> String {
    let der = rustls_pki_types::CertificateDer::from_pem_file(certs().join(format!("{name}.pem")))
        .unwrap();
    portcullis_crypto::pki::thumbprint_s256(der.as_ref())
}

/// A realistic domestic payment consent (OBWriteDomesticConsent4).
fn consent() -> Value {
    json!({
        "Data": {
            "ReadRefundAccount": "No",
            "Initiation": {
                "InstructionIdentification": "ACME412",
                "EndToEndIdentification": "FRESCO.21302.GFX.20",
                "LocalInstrument": "UK.OBIE.FPS",
                "InstructedAmount": {"Amount": "165.88", "Currency": "GBP"},
                "CreditorAccount": {
                    "SchemeName": "UK.OBIE.SortCodeAccountNumber",
                    "Identification": "08080021325698",
                    "Name": "ACME Inc",
                    "SecondaryIdentification": "0002"
                },
                "RemittanceInformation": {
                    "Unstructured": ["Internal ops code 5120101"]
                }
            },
            "Authorisation": {
                "AuthorisationType": "Single",
                "CompletionDateTime": "2027-01-01T10:00:00+00:00"
            }
        },
        "Risk": {
            "PaymentContextCode": "TransferToThirdParty",
            "MerchantCategoryCode": "5967",
            "MerchantCustomerIdentification": "053598653254",
            "DeliveryAddress": {"AddressLine": ["Flat 7", "Acacia Lodge"], "TownName": "Sparsholt", "Country": "UK"}
        }
    })
}

/// Imports the payment description into a temporary directory and returns the policy text
/// for the proxy: the description named by its absolute path (the kit writes the policy file
/// elsewhere), one route in shadow mode.
fn pisp_policy() -> String {
    let out = tempfile::tempdir().unwrap();
    let r = import(&Import {
        spec: pisp_spec(),
        out: out.path().to_path_buf(),
        group: Some("obie-pisp".into()),
        upstream: "bank".into(),
        profile: "fapi2".into(),
        response: "shadow".into(),
    })
    .unwrap();
    let text = std::fs::read_to_string(&r.file).unwrap();
    let rel = text
        .lines()
        .find_map(|l| l.split("contract: {spec: \"").nth(1))
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_string();
    let text = text.replace(&rel, &pisp_spec().display().to_string());
    let shadow =
        "operation: CreateDomesticScheduledPaymentConsents, strict: true, response: shadow}";
    assert!(text.contains(shadow));
    let enforce = "operation: GetInternationalPaymentConsentsConsentIdFundsConfirmation, strict: true, response: shadow}";
    assert!(text.contains(enforce));
    text.replace(
        shadow,
        "operation: CreateDomesticScheduledPaymentConsents, strict: true, mode: shadow, response: shadow}",
    )
    .replace(
        enforce,
        "operation: GetInternationalPaymentConsentsConsentIdFundsConfirmation, strict: true, response: enforce}",
    )
        + LEGACY_ROUTE
}

/// A route no description declares (what `audit report --spec` finds).
const LEGACY_ROUTE: &str = "  - id: legacy.status
    method: GET
    path: /open-banking/v3.1/pisp/status
    auth: {profile: fapi2}
";

struct CEnv {
    env: Env,
    as_key: SigningKey,
}

impl std::ops::Deref for CEnv {
    type Target = Env;
    fn deref(&self) -> &Env {
        &self.env
    }
}

async fn env() -> CEnv {
    let dir = tempfile::tempdir().unwrap();
    let as_key = SigningKey::generate(Alg::ES256, "as-1").unwrap();
    let jwks = dir.path().join("as-jwks.json");
    std::fs::write(&jwks, as_key.jwks().to_string()).unwrap();
    let up = Upstream::start(Behaviour::Ok).await;
    let mut o = Options::new(up.addr);
    o.policy = pisp_policy();
    o.config
        .issuers
        .insert("as".into(), file_issuer(ISS, AUD, &jwks));
    CEnv {
        env: Env::start(o, up, dir, Some(NOW)).await,
        as_key,
    }
}

impl CEnv {
    fn bearer(&self) -> String {
        let claims = json!({
            "iss": ISS, "aud": AUD, "exp": NOW + 300, "iat": NOW, "client_id": "tpp-one",
            "scope": "payments", "cnf": {"x5t#S256": thumb("tpp1")},
        });
        format!("Bearer {}", self.as_key.access_token(&claims))
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> (Answer, String) {
        let id = uuid::Uuid::new_v4().to_string();
        let mut b = req(method, path)
            .header("x-fapi-interaction-id", &id)
            .header("authorization", self.bearer());
        if !body.is_empty() {
            b = b.header("content-type", "application/json");
        }
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let mut c = self.p.client(Some("tpp1"), false).await.unwrap();
        let a = c
            .send(b.body(Full::new(Bytes::from(body))).unwrap())
            .await
            .unwrap();
        (a, id)
    }

    /// A request without a token as `who` (a certificate name): enough for a path no route
    /// declares, which is refused before any token is read.
    async fn probe(&self, who: &str, path: &str) -> String {
        let id = uuid::Uuid::new_v4().to_string();
        let r = req("GET", path)
            .header("x-fapi-interaction-id", &id)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let mut c = self.p.client(Some(who), false).await.unwrap();
        let a = c.send(r).await.unwrap();
        assert_eq!(a.status, 404, "{path}");
        id
    }

    async fn post(&self, path: &str, body: Vec<u8>) -> (Answer, String) {
        self.send("POST", path, &PAYMENT_HEADERS, body).await
    }
}

/// The headers the OBIE description requires on a payment POST.
const PAYMENT_HEADERS: [(&str, &str); 2] = [
    ("x-idempotency-key", "a1b2c3d4"),
    ("x-jws-signature", "header..signature"),
];

/// One mutated request and what it must be refused with.
struct Mutation {
    kind: &'static str,
    pointer: String,
    reason: &'static str,
    body: Vec<u8>,
}

fn set(doc: &Value, ptr: &str, v: Value) -> Vec<u8> {
    let mut d = doc.clone();
    let (parent, last) = ptr.rsplit_once('/').unwrap();
    let target = if parent.is_empty() {
        &mut d
    } else {
        d.pointer_mut(parent).unwrap()
    };
    target.as_object_mut().unwrap().insert(last.to_string(), v);
    serde_json::to_vec(&d).unwrap()
}

fn remove(doc: &Value, ptr: &str) -> Vec<u8> {
    let mut d = doc.clone();
    let (parent, last) = ptr.rsplit_once('/').unwrap();
    let target = if parent.is_empty() {
        &mut d
    } else {
        d.pointer_mut(parent).unwrap()
    };
    target.as_object_mut().unwrap().remove(last).unwrap();
    serde_json::to_vec(&d).unwrap()
}

fn mutations() -> Vec<Mutation> {
    let base = consent();
    let mut out = Vec::new();
    let mut m = |kind, pointer: &str, reason, body| {
        out.push(Mutation {
            kind,
            pointer: pointer.to_string(),
            reason,
            body,
        })
    };
    for p in [
        "/Data",
        "/Risk",
        "/Data/Initiation",
        "/Data/Initiation/InstructionIdentification",
        "/Data/Initiation/EndToEndIdentification",
        "/Data/Initiation/InstructedAmount",
        "/Data/Initiation/CreditorAccount",
        "/Data/Initiation/InstructedAmount/Amount",
        "/Data/Initiation/InstructedAmount/Currency",
        "/Data/Initiation/CreditorAccount/SchemeName",
        "/Data/Initiation/CreditorAccount/Identification",
        "/Data/Initiation/CreditorAccount/Name",
        "/Data/Authorisation/AuthorisationType",
    ] {
        m(
            "missing required member",
            p,
            "contract.required",
            remove(&base, p),
        );
    }
    for (p, v) in [
        ("/Risk/PaymentContextCode", "Nope"),
        ("/Risk/PaymentContextCode", "transfertothirdparty"),
        ("/Data/ReadRefundAccount", "Maybe"),
        ("/Data/Authorisation/AuthorisationType", ""),
        ("/Risk/BeneficiaryAccountType", "Pirate"),
    ] {
        m(
            "wrong enum value",
            p,
            "contract.enum",
            set(&base, p, json!(v)),
        );
    }
    for (p, n) in [
        ("/Data/Initiation/InstructionIdentification", 36),
        ("/Data/Initiation/EndToEndIdentification", 36),
        ("/Data/Initiation/CreditorAccount/Identification", 257),
        ("/Data/Initiation/CreditorAccount/Name", 351),
        (
            "/Data/Initiation/CreditorAccount/SecondaryIdentification",
            35,
        ),
        ("/Data/Initiation/InstructionIdentification", 0),
    ] {
        m(
            "over-long (or empty) string",
            p,
            "contract.length",
            set(&base, p, json!("x".repeat(n))),
        );
    }
    let amount = "/Data/Initiation/InstructedAmount/Amount";
    let currency = "/Data/Initiation/InstructedAmount/Currency";
    for (p, v) in [
        (amount, "10,00"),
        (amount, "1e3"),
        (amount, "-1"),
        (amount, "12345678901234"),
        (amount, "1.123456"),
        (amount, " 10.00"),
        (currency, "gbp"),
        (currency, "GB"),
        (currency, "GBPX"),
    ] {
        m(
            "pattern mismatch",
            p,
            "contract.pattern",
            set(&base, p, json!(v)),
        );
    }
    for (p, v) in [
        (amount, json!(10.5)),
        (currency, json!(826)),
        ("/Data", json!("x")),
        ("/Data/Initiation", json!([])),
        (
            "/Data/Initiation/RemittanceInformation/Unstructured",
            json!("one line"),
        ),
        ("/Risk", json!(null)),
        ("/Data/Initiation/LocalInstrument", json!(true)),
    ] {
        m("wrong type", p, "contract.type", set(&base, p, v));
    }
    let when = "/Data/Authorisation/CompletionDateTime";
    for v in [
        "yesterday",
        "2027-13-01T10:00:00Z",
        "2027-01-01",
        "2027-01-01T25:00:00Z",
    ] {
        m(
            "bad date-time",
            when,
            "contract.format",
            set(&base, when, json!(v)),
        );
    }
    for p in [
        "/IsAdmin",
        "/Data/Status",
        "/Risk/Score",
        "/Data/Initiation/DebtorAccount2",
        "/Data/Initiation/InstructedAmount/Fee",
    ] {
        m(
            "extra member (strict)",
            p,
            "contract.undeclared",
            set(&base, p, json!("x")),
        );
    }
    for (p, twin) in [
        ("/Data", "/data"),
        (
            "/Data/Initiation/InstructedAmount/Amount",
            "/Data/Initiation/InstructedAmount/amount",
        ),
        ("/Risk/PaymentContextCode", "/Risk/paymentcontextcode"),
    ] {
        let v = base.pointer(p).unwrap().clone();
        m(
            "case-twin member",
            p,
            "contract.ambiguous",
            set(&base, twin, v),
        );
    }
    let text = serde_json::to_string(&base).unwrap();
    let dup = text.replacen("{\"Data\":", "{\"Risk\":{},\"Data\":", 1);
    m(
        "duplicate member",
        "",
        "contract.ambiguous",
        dup.into_bytes(),
    );
    let deep = |n: usize| {
        json!(
            serde_json::from_str::<Value>(&format!("{}{}", "[".repeat(n), "]".repeat(n))).unwrap()
        )
    };
    m(
        "deep nesting",
        "/Data/Initiation/RemittanceInformation/Unstructured",
        "contract.too_deep",
        set(
            &base,
            "/Data/Initiation/RemittanceInformation/Unstructured",
            deep(40),
        ),
    );
    let mut nested = json!("x");
    for _ in 0..40 {
        nested = json!({ "a": nested });
    }
    m(
        "deep nesting",
        "/Risk/Deep",
        "contract.too_deep",
        set(&base, "/Risk/Deep", nested),
    );
    for (p, item, n) in [
        ("/Risk/DeliveryAddress/AddressLine", json!("line"), 300),
        ("/Data/Initiation/RegulatoryReporting", json!({}), 500),
        ("/Risk/DeliveryAddress/AddressLine", json!("l"), 8),
    ] {
        m(
            "huge array",
            p,
            "contract.length",
            set(&base, p, Value::Array(vec![item; n])),
        );
    }
    out
}

/// The pointer a refusal names must be the mutated member, or (deep nesting) inside it.
fn pointer_fits(m: &Mutation, got: &str) -> bool {
    if m.kind == "deep nesting" {
        got.starts_with(&m.pointer)
    } else {
        got == m.pointer
    }
}

#[tokio::test]
async fn valid_payloads_pass_and_mutated_ones_are_refused_with_the_pointer_nothing_upstream_and_one_record(
) {
    let e = env().await;
    // Valid: the realistic consent, with and without its optional members.
    let base = consent();
    let valid = [
        serde_json::to_vec(&base).unwrap(),
        remove(&base, "/Data/Authorisation"),
        remove(
            &remove_v(&base, "/Risk/DeliveryAddress"),
            "/Data/ReadRefundAccount",
        ),
        set(&base, "/Risk", json!({})),
    ];
    for body in valid {
        let before = e.up.count();
        let (a, id) = e.post(CONSENTS, body.clone()).await;
        assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
        assert_eq!(e.up.count(), before + 1);
        // The bytes checked are the bytes forwarded.
        assert_eq!(e.up.seen().last().unwrap().body, body);
        let rec = e.p.audit_of(&id).await;
        assert_eq!(rec["decision"], "allow", "{rec}");
        let c = &rec["contract"];
        assert_eq!(
            (&c["operation"], &c["mode"], &c["result"]),
            (
                &json!("CreateDomesticPaymentConsents"),
                &json!("enforce"),
                &json!("valid")
            ),
            "{rec}"
        );
        assert!(c.get("pointer").is_none(), "{rec}");
        // The test upstream answers 200 where the operation declares 201: the bank's drift,
        // recorded (shadow), the answer forwarded.
        assert_eq!(
            c["response"],
            json!({"mode": "shadow", "result": "invalid", "status": 200, "pointer": "", "keyword": "status"}),
            "{rec}"
        );
    }
    let all = mutations();
    let mut by_kind: BTreeMap<&str, usize> = BTreeMap::new();
    for m in &all {
        let before = e.up.count();
        let (a, id) = e.post(CONSENTS, m.body.clone()).await;
        let text = String::from_utf8_lossy(&a.body).to_string();
        assert_eq!(a.status, 400, "{} {}: {text}", m.kind, m.pointer);
        let j = a.json();
        let err = &j["Errors"][0];
        let path = err["Path"].as_str().unwrap_or("<none>");
        assert!(pointer_fits(m, path), "{} {}: {text}", m.kind, m.pointer);
        assert!(
            err["ErrorCode"]
                .as_str()
                .unwrap()
                .starts_with("UK.OBIE.Field."),
            "{text}"
        );
        assert_eq!(
            e.up.count(),
            before,
            "{} {}: nothing upstream",
            m.kind,
            m.pointer
        );
        let rec = e.p.audit_of(&id).await;
        assert_eq!(rec["reason"], m.reason, "{} {}: {rec}", m.kind, m.pointer);
        assert_eq!(rec["stage"], "contract", "{rec}");
        assert_eq!(rec["decision"], "deny", "{rec}");
        assert_eq!(rec["contract"]["result"], "invalid", "{rec}");
        assert_eq!(rec["contract"]["pointer"], path, "{rec}");
        assert!(rec["contract"]["keyword"].is_string(), "{rec}");
        // The pointer and the keyword only: no value of the body is in the record.
        for secret in ["08080021325698", "ACME Inc", "165.88"] {
            assert!(!rec.to_string().contains(secret), "{rec}");
        }
        *by_kind.entry(m.kind).or_default() += 1;
    }
    eprintln!("mutations refused through the proxy, by kind:");
    for (k, n) in &by_kind {
        eprintln!("  {n:>3}  {k}");
    }
    eprintln!("  {:>3}  total", all.len());
    assert!(all.len() >= 50, "{}", all.len());
    assert!(by_kind.len() >= 10, "{by_kind:?}");
}

fn remove_v(doc: &Value, ptr: &str) -> Value {
    serde_json::from_slice(&remove(doc, ptr)).unwrap()
}

#[tokio::test]
async fn parameters_are_checked_and_a_shadow_route_forwards_and_records() {
    let e = env().await;
    let body = serde_json::to_vec(&consent()).unwrap();
    // A required header parameter missing: OBIE's Header.Missing, the pointer names it.
    let before = e.up.count();
    let (a, id) = e
        .send(
            "POST",
            CONSENTS,
            &[("x-jws-signature", "h..s")],
            body.clone(),
        )
        .await;
    assert_eq!(a.status, 400);
    assert_eq!(a.json()["Errors"][0]["ErrorCode"], "UK.OBIE.Header.Missing");
    assert_eq!(a.json()["Errors"][0]["Path"], "/header/x-idempotency-key");
    assert_eq!(e.up.count(), before);
    let rec = e.p.audit_of(&id).await;
    assert_eq!(rec["reason"], "contract.required", "{rec}");
    // A header that breaks its pattern.
    let (a, id) = e
        .send(
            "POST",
            CONSENTS,
            &[
                ("x-idempotency-key", "k1"),
                ("x-jws-signature", "h..s"),
                ("x-fapi-auth-date", "yesterday"),
            ],
            body.clone(),
        )
        .await;
    assert_eq!(a.status, 400);
    assert_eq!(a.json()["Errors"][0]["ErrorCode"], "UK.OBIE.Header.Invalid");
    assert_eq!(a.json()["Errors"][0]["Path"], "/header/x-fapi-auth-date");
    assert_eq!(e.up.count(), before);
    assert_eq!(e.p.audit_of(&id).await["reason"], "contract.pattern");
    // An undeclared query parameter on a strict route.
    let (a, id) = e
        .send(
            "GET",
            &format!("{CONSENTS}/pdc-1?admin=true"),
            &[],
            Vec::new(),
        )
        .await;
    assert_eq!(a.status, 400);
    assert_eq!(a.json()["Errors"][0]["Path"], "/query/admin");
    assert_eq!(e.up.count(), before);
    assert_eq!(e.p.audit_of(&id).await["reason"], "contract.undeclared");
    // The same route, declared values: forwarded.
    let (a, _) = e
        .send("GET", &format!("{CONSENTS}/pdc-1"), &[], Vec::new())
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(e.up.count(), before + 1);
    // Shadow: a body that breaks the contract is forwarded, and the record says what would
    // have been refused.
    let bad = set(
        &consent(),
        "/Data/Initiation/InstructedAmount/Currency",
        json!("gbp"),
    );
    let (a, id) = e.post(SCHEDULED, bad.clone()).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(e.up.count(), before + 2);
    assert_eq!(e.up.seen().last().unwrap().body, bad);
    let rec = e.p.audit_of(&id).await;
    assert_eq!(rec["decision"], "shadow_deny", "{rec}");
    assert_eq!(rec["stage"], "contract", "{rec}");
    assert_eq!(
        rec["rule_id"], "contract:CreateDomesticScheduledPaymentConsents",
        "{rec}"
    );
    assert_eq!(rec["contract"]["mode"], "shadow", "{rec}");
    assert_eq!(rec["contract"]["result"], "invalid", "{rec}");
    assert!(
        rec["contract"]["pointer"]
            .as_str()
            .unwrap()
            .starts_with("/Data"),
        "{rec}"
    );
}

const FUNDS: &str = "/open-banking/v4.0/pisp/domestic-payment-consents/pdc-1/funds-confirmation";
/// The same operation's twin, on a route that enforces its responses.
const FUNDS_ENFORCED: &str =
    "/open-banking/v4.0/pisp/international-payment-consents/ipc-1/funds-confirmation";

/// A body for the test upstream to answer with (it takes `'static` text).
fn answer(v: Value) -> Behaviour {
    Behaviour::Json(Box::leak(v.to_string().into_boxed_str()))
}

fn drift_metric(text: &str, route: &str, keyword: &str) -> u64 {
    let series = format!(
        "portcullis_contract_response_drift_total{{route=\"obie-pisp.{route}\",keyword=\"{keyword}\"}} "
    );
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0, |n| n.trim().parse().unwrap())
}

/// The upstream's answers against the operation's responses (OBWriteFundsConfirmationResponse1
/// for 200): a conforming answer passes with `response.result: ok`; drift on a shadow route is
/// forwarded unchanged, recorded with its pointer and keyword (never a value) and counted; on an
/// enforcing route it is withheld (502 `contract.response_*`, the client sees nothing of it);
/// a body streamed without a length is passed on and recorded `unchecked`.
#[tokio::test]
async fn answers_are_checked_against_the_operation_responses_in_shadow_and_enforce() {
    let e = env().await;
    let good = json!({"Data": {"FundsAvailableResult": {
        "FundsAvailableDateTime": "2027-01-01T10:00:00+00:00", "FundsAvailable": true}}});
    let bad = json!({"Data": {"FundsAvailableResult": {
        "FundsAvailableDateTime": "secret-when-7731", "FundsAvailable": true}}});
    let pointer = "/Data/FundsAvailableResult/FundsAvailableDateTime";
    let shadow_op = "GetDomesticPaymentConsentsConsentIdFundsConfirmation";
    let enforce_op = "GetInternationalPaymentConsentsConsentIdFundsConfirmation";

    // Conforming, on both routes.
    e.up.set(answer(good.clone()));
    for (path, mode) in [(FUNDS, "shadow"), (FUNDS_ENFORCED, "enforce")] {
        let (a, id) = e.send("GET", path, &[], Vec::new()).await;
        assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
        assert_eq!(a.json(), good);
        let rec = e.p.audit_of(&id).await;
        assert_eq!(rec["decision"], "allow", "{rec}");
        assert_eq!(
            rec["contract"]["response"],
            json!({"mode": mode, "result": "ok", "status": 200}),
            "{rec}"
        );
    }

    // Drift in shadow: forwarded unchanged, one record that says where, the metric up.
    let (_, before) = e.p.admin_get("/metrics").await;
    e.up.set(answer(bad.clone()));
    let (a, id) = e.send("GET", FUNDS, &[], Vec::new()).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json(), bad, "forwarded unchanged");
    let rec = e.p.audit_of(&id).await;
    assert_eq!(rec["decision"], "allow", "{rec}");
    assert!(rec.get("reason").is_none(), "{rec}");
    assert_eq!(
        rec["contract"]["response"],
        json!({"mode": "shadow", "result": "invalid", "status": 200, "pointer": pointer, "keyword": "format"}),
        "{rec}"
    );
    assert!(!rec.to_string().contains("secret-when"), "{rec}");
    let (_, after) = e.p.admin_get("/metrics").await;
    assert_eq!(
        drift_metric(&after, shadow_op, "format"),
        drift_metric(&before, shadow_op, "format") + 1,
        "{after}"
    );

    // Drift under enforce: 502 with the reason code, nothing of the upstream's body, one record.
    let (a, id) = e.send("GET", FUNDS_ENFORCED, &[], Vec::new()).await;
    assert_eq!(a.status, 502);
    let body = String::from_utf8_lossy(&a.body).to_string();
    assert!(
        !body.contains("secret-when") && !body.contains("FundsAvailable"),
        "{body}"
    );
    assert_eq!(
        a.json()["Errors"][0]["ErrorCode"],
        "UK.OBIE.UnexpectedError",
        "{body}"
    );
    let rec = e.p.audit_of(&id).await;
    assert_eq!(rec["decision"], "deny", "{rec}");
    assert_eq!(rec["stage"], "contract", "{rec}");
    assert_eq!(rec["reason"], "contract.response_invalid", "{rec}");
    assert_eq!(rec["status"], 502, "{rec}");
    assert_eq!(rec["upstream_status"], 200, "{rec}");
    assert_eq!(rec["contract"]["response"]["pointer"], pointer, "{rec}");
    assert!(!rec.to_string().contains("secret-when"), "{rec}");
    let (_, metrics) = e.p.admin_get("/metrics").await;
    assert!(
        drift_metric(&metrics, enforce_op, "format") >= 1,
        "{metrics}"
    );

    // A status the operation does not declare (nor `default`): withheld under enforce.
    e.up.set(Behaviour::Status(418));
    let (a, id) = e.send("GET", FUNDS_ENFORCED, &[], Vec::new()).await;
    assert_eq!(a.status, 502);
    let rec = e.p.audit_of(&id).await;
    assert_eq!(rec["reason"], "contract.response_status", "{rec}");
    assert_eq!(
        rec["contract"]["response"],
        json!({"mode": "enforce", "result": "invalid", "status": 418, "pointer": "", "keyword": "status"}),
        "{rec}"
    );

    // Streamed without a length: passed on as it comes in shadow, recorded unchecked and why.
    e.up.set(Behaviour::Trickle);
    let (a, id) = e.send("GET", FUNDS, &[], Vec::new()).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body.len(), 64 * 1024);
    let rec = e.p.audit_of(&id).await;
    assert_eq!(
        rec["contract"]["response"],
        json!({"mode": "shadow", "result": "unchecked", "status": 200, "why": "streamed"}),
        "{rec}"
    );
}

fn cli(args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `audit report` over the log the real proxy wrote: requests to undeclared paths grouped by
/// shape with the clients that sent them, routes never called, the descriptions against the
/// policy (`--spec`), each client's operations, and the upstream's drift per route — in text,
/// JSON and HTML.
#[tokio::test]
async fn the_audit_report_inventories_undeclared_shapes_zombies_spec_differences_and_drift() {
    let e = env().await;
    // Declared: a payment consent (the test upstream answers 200 where 201 is declared: drift)
    // and a funds check (its answer fits).
    let (a, _) = e
        .post(CONSENTS, serde_json::to_vec(&consent()).unwrap())
        .await;
    assert_eq!(a.status, 200);
    let (a, _) = e.send("GET", FUNDS, &[], Vec::new()).await;
    assert_eq!(a.status, 200);
    // Undeclared: one shape from two clients under three made-up ids, one with a UUID.
    let shape = "/open-banking/v4.0/pisp/domestic-payment-consents/{id}/statements-v2";
    for (who, id) in [("tpp1", "pdc-1"), ("tpp1", "pdc-2"), ("tpp2", "pdc-3")] {
        e.probe(who, &shape.replace("{id}", id)).await;
    }
    e.probe(
        "tpp2",
        "/open-banking/v4.0/pisp/refunds/2f1c9c1e-7d2b-4d8e-9c3a-2b1e0f9a8d7c",
    )
    .await;
    let last = e.probe("tpp2", "/open-banking/v4.0/pisp/admin").await;
    e.p.audit_of(&last).await;
    assert_eq!(
        e.p.audit_where(7, |r| r["kind"] == "request").await.len(),
        7
    );

    let policies = e.p.dir.path().join("policies").display().to_string();
    let log = e.p.dir.path().join("audit.log").display().to_string();
    let (pisp, aisp) = (
        pisp_spec().display().to_string(),
        aisp_spec().display().to_string(),
    );
    let args = [
        "audit", "report", "--policy", &policies, "--spec", &pisp, "--spec", &aisp,
    ];
    let (code, out) = cli(&[&args[..], &["--json", &log]].concat());
    assert_eq!(code, 0, "{out}");
    let r: Value = serde_json::from_str(&out).unwrap();
    let tpp1 = "PSDGB-FCA-123456 / -";
    let tpp2 = "PSDGB-FCA-654321 / -";
    let undeclared = r["undeclared"].as_array().unwrap();
    let statements = undeclared
        .iter()
        .find(|u| u["shape"] == shape)
        .unwrap_or_else(|| panic!("{shape} in {undeclared:?}"));
    assert_eq!(statements["method"], "GET");
    assert_eq!(
        (
            statements["requests"].as_u64(),
            statements["paths"].as_u64()
        ),
        (Some(3), Some(3))
    );
    assert_eq!(statements["clients"], json!({tpp1: 2, tpp2: 1}));
    assert_eq!(statements["reasons"], json!(["route.not_found"]));
    assert!(
        undeclared
            .iter()
            .any(|u| u["shape"] == "/open-banking/v4.0/pisp/refunds/{id}"
                && u["clients"] == json!({tpp2: 1})),
        "{undeclared:?}"
    );
    assert!(undeclared
        .iter()
        .any(|u| u["shape"] == "/open-banking/v4.0/pisp/admin"));
    assert_eq!(undeclared.len(), 3, "{undeclared:?}");
    // Zombie candidates: the routes nobody called, the hand-written one among them.
    let never: Vec<&str> = r["routes_never_called"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(never.contains(&"legacy.status"), "{never:?}");
    assert!(
        never.contains(&"obie-pisp.CreateDomesticPayments"),
        "{never:?}"
    );
    assert!(
        !never.contains(&"obie-pisp.CreateDomesticPaymentConsents"),
        "{never:?}"
    );
    assert_eq!(never.len(), 42 - 2, "{never:?}");
    // The descriptions against the policy: every payment operation has its route, no account
    // operation has one, and the hand-written route is in neither.
    let specs = r["spec"]["specs"].as_array().unwrap();
    assert_eq!(specs[0]["operations"], 41);
    assert_eq!(specs[0]["operations_without_route"], json!([]));
    assert_eq!(specs[1]["operations"], 29);
    assert_eq!(
        specs[1]["operations_without_route"]
            .as_array()
            .unwrap()
            .len(),
        29
    );
    assert!(specs[1]["operations_without_route"][0]
        .as_str()
        .unwrap()
        .contains("/open-banking/v4.0/aisp/"));
    assert_eq!(r["spec"]["routes_not_in_specs"], json!(["legacy.status"]));
    // Per client: the operations it used (the token's client on declared routes).
    let client = |label: &str| {
        r["clients"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| {
                let org = c["org_id"].as_str().unwrap_or("-");
                let id = c["client_id"].as_str().unwrap_or("-");
                format!("{org} / {id}") == label
            })
            .unwrap_or_else(|| panic!("{label} in {r}"))
            .clone()
    };
    let tpp1_token = client("PSDGB-FCA-123456 / tpp-one");
    assert_eq!(
        tpp1_token["operations"],
        json!([
            "CreateDomesticPaymentConsents",
            "GetDomesticPaymentConsentsConsentIdFundsConfirmation"
        ])
    );
    assert_eq!(client(tpp2)["requests"], 3);
    assert_eq!(client(tpp1)["requests"], 2);
    // Drift per route.
    let consents = &r["response_drift"]["obie-pisp.CreateDomesticPaymentConsents"];
    assert_eq!(
        (
            consents["invalid"].as_u64(),
            consents["keywords"]["status"].as_u64()
        ),
        (Some(1), Some(1))
    );
    let funds =
        &r["response_drift"]["obie-pisp.GetDomesticPaymentConsentsConsentIdFundsConfirmation"];
    assert_eq!(
        (funds["checked"].as_u64(), funds["invalid"].as_u64()),
        (Some(1), Some(0))
    );

    // Text.
    let (code, text) = cli(&[&args[..], &[&log]].concat());
    assert_eq!(code, 0, "{text}");
    for line in [
        format!("GET {shape}"),
        format!("{tpp1}=2 {tpp2}=1"),
        "routes in no description  legacy.status".to_string(),
        "no route     GetAccounts".to_string(),
        "operations   CreateDomesticPaymentConsents GetDomesticPaymentConsentsConsentIdFundsConfirmation".to_string(),
        "obie-pisp.CreateDomesticPaymentConsents".to_string(),
        "legacy.status".to_string(),
    ] {
        assert!(text.contains(&line), "`{line}` missing:\n{text}");
    }
    assert!(text.contains("response drift"), "{text}");
    // HTML.
    let html = e.p.dir.path().join("report.html");
    let h = html.display().to_string();
    let (code, out) = cli(&[&args[..], &["--html", &h, &log]].concat());
    assert_eq!(code, 0, "{out}");
    let page = std::fs::read_to_string(&html).unwrap();
    for text in [
        "<h2>Undeclared requests</h2>",
        "/open-banking/v4.0/pisp/domestic-payment-consents/{id}/statements-v2",
        "<h2>Response drift</h2>",
        "<h2>Descriptions and policy</h2>",
        "<code>legacy.status</code>",
        "GetAccounts",
        "CreateDomesticPaymentConsents",
    ] {
        assert!(page.contains(text), "`{text}` missing");
    }
    // --spec without the policy is a usage error.
    let (code, out) = cli(&["audit", "report", "--spec", &pisp, &log]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("--spec needs the policy"), "{out}");
}

/// Both descriptions import into policies that load, pass their policy tests and decide a
/// valid payment as the proxy does; re-import is byte-identical, a changed description is
/// reported, and hand-written lines survive.
#[test]
fn import_is_idempotent_reports_changes_and_keeps_hand_written_rules() {
    let out = tempfile::tempdir().unwrap();
    let specs = tempfile::tempdir().unwrap();
    let pisp = specs.path().join("pisp.yaml");
    std::fs::copy(pisp_spec(), &pisp).unwrap();
    let run = |spec: &Path, group: &str| {
        import(&Import {
            spec: spec.to_path_buf(),
            out: out.path().to_path_buf(),
            group: Some(group.into()),
            upstream: "bank".into(),
            profile: "fapi2".into(),
            response: "shadow".into(),
        })
        .unwrap()
    };
    let a = run(&pisp, "obie-pisp");
    let b = run(&aisp_spec(), "obie-aisp");
    assert_eq!((a.routes, b.routes), (41, 29));
    assert!(a.changed && b.changed && a.changes.is_empty());
    let set = portcullis_policy::load_files(
        &[out.path().to_path_buf()],
        &portcullis_policy::Known::standalone(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(set.routes().len(), 70);
    assert!(set
        .routes()
        .iter()
        .all(|r| r.contract.is_some() && r.auth.is_some()));
    let results = portcullis_tools::policytest::run(out.path()).unwrap();
    let failed: Vec<&str> = results
        .iter()
        .filter(|r| !r.passed)
        .map(|r| r.name.as_str())
        .collect();
    assert!(!results.is_empty() && failed.is_empty(), "{failed:?}");
    // Same description again: nothing changes, byte for byte.
    let file = out.path().join("obie-pisp.yaml");
    let first = std::fs::read(&file).unwrap();
    let again = run(&pisp, "obie-pisp");
    assert!(!again.changed && again.changes.is_empty(), "{again:?}");
    assert_eq!(std::fs::read(&file).unwrap(), first);
    // A security team's rules below a route's marker.
    let text = String::from_utf8(first).unwrap();
    let route = "  - id: obie-pisp.CreateDomesticPayments\n";
    let at = text.find(route).unwrap();
    let marker = at + text[at..].find(MARKER).unwrap() + MARKER.len() + 1;
    let hand = "    consent: {claim: openbanking_intent_id, status: [Authorised]}\n    # OBIE: a repeat creates nothing.\n    idempotency: required\n";
    let edited = format!("{}{hand}{}", &text[..marker], &text[marker..]);
    std::fs::write(&file, &edited).unwrap();
    // The description changes: an operation goes, another's scope changes.
    let spec_text = std::fs::read_to_string(&pisp).unwrap();
    let mut v: Value = serde_saphyr::from_str(&spec_text).unwrap();
    v["paths"]
        .as_object_mut()
        .unwrap()
        .remove("/domestic-payments/{DomesticPaymentId}/payment-details")
        .unwrap();
    v["paths"]["/domestic-payments"]["post"]["security"] =
        json!([{"PSUOAuth2Security": ["payments", "openid"]}]);
    std::fs::write(&pisp, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    let r = run(&pisp, "obie-pisp");
    assert!(r.changed);
    assert!(
        r.changes.iter().any(|c| c
            .starts_with("removed obie-pisp.GetDomesticPaymentsDomesticPaymentIdPaymentDetails")),
        "{:?}",
        r.changes
    );
    assert!(
        r.changes.iter().any(
            |c| c.starts_with("scopes  obie-pisp.CreateDomesticPayments:")
                && c.contains("[openid, payments]")
        ),
        "{:?}",
        r.changes
    );
    let now = std::fs::read_to_string(&file).unwrap();
    assert!(now.contains(&format!("{MARKER}\n{hand}")), "{now}");
    let set = portcullis_policy::load_files(
        &[out.path().to_path_buf()],
        &portcullis_policy::Known::standalone(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let route = set
        .routes()
        .iter()
        .find(|r| r.id == "obie-pisp.CreateDomesticPayments")
        .unwrap();
    assert!(route.authz.consent.is_some());
    // And again: unchanged.
    let last = run(&pisp, "obie-pisp");
    assert!(!last.changed, "{last:?}");
    // Enforcing the answers is a reviewed change, route by route; an unknown mode is refused.
    let enforce = |response: &str| {
        import(&Import {
            spec: pisp.clone(),
            out: out.path().to_path_buf(),
            group: Some("obie-pisp".into()),
            upstream: "bank".into(),
            profile: "fapi2".into(),
            response: response.into(),
        })
    };
    let r = enforce("enforce").unwrap();
    assert!(r.changed);
    assert!(
        r.changes
            .contains(&"response obie-pisp.CreateDomesticPayments: shadow -> enforce".to_string()),
        "{:?}",
        r.changes
    );
    assert!(std::fs::read_to_string(&file)
        .unwrap()
        .contains("operation: CreateDomesticPayments, strict: true, response: enforce}"));
    let e = enforce("loud").unwrap_err();
    assert!(e.contains("--response: unknown value `loud`"), "{e}");
}

/// A contract that cannot be made is refused at load: the file, the field and the reason.
#[test]
fn bad_contracts_are_refused_at_load_naming_file_field_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.json");
    std::fs::write(
        &broken,
        json!({
            "openapi": "3.1.0",
            "paths": {"/x": {"post": {"operationId": "op", "requestBody": {"content": {"application/json": {"schema": {"type": "string", "pattern": "(unclosed"}}}}}}}
        })
        .to_string(),
    )
    .unwrap();
    let spec = pisp_spec().display().to_string();
    let cases = [
        (
            "{spec: missing.yaml, operation: op}".to_string(),
            "routes[0].contract.spec",
            "cannot read",
        ),
        (
            format!("{{spec: \"{spec}\", operation: NoSuchOperation}}"),
            "routes[0].contract.operation",
            "no operation `NoSuchOperation`",
        ),
        (
            "{spec: broken.json, operation: op}".to_string(),
            "routes[0].contract.spec",
            "does not compile",
        ),
        (
            format!("{{spec: \"{spec}\", operation: CreateDomesticPayments, mode: loud}}"),
            "routes[0].contract.mode",
            "unknown value `loud`",
        ),
        (
            format!("{{spec: \"{spec}\", operation: CreateDomesticPayments, response: loud}}"),
            "routes[0].contract.response",
            "unknown value `loud` (shadow, enforce or off)",
        ),
    ];
    for (contract, field, reason) in cases {
        let file = dir.path().join("p.yaml");
        std::fs::write(
            &file,
            format!("group: g\nupstream: bank\nroutes:\n  - id: r\n    method: POST\n    path: /x\n    contract: {contract}\n"),
        )
        .unwrap();
        let errs = portcullis_policy::load_files(
            std::slice::from_ref(&file),
            &portcullis_policy::Known::standalone(),
        )
        .unwrap_err();
        let e = &errs.0[0];
        assert_eq!(e.file, file, "{errs}");
        assert_eq!(e.field, field, "{errs}");
        assert!(e.reason.contains(reason), "{errs}");
    }
}
