//! Contracts from OpenAPI, end to end: the two OBIE v4.0.0 descriptions in `tests/vectors/openapi`
//! imported into policies (`policy import`), loaded by the proxy, and requests checked against
//! them through real mTLS and a real client. Valid payloads pass; every mutated payload is
//! refused three ways — 400 with the OBIE error body naming the JSON pointer, nothing upstream,
//! one audit record with the `contract.*` reason, the pointer and the keyword — and a shadow
//! route forwards and records. Re-import is byte-identical, reports changes and keeps
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
    let shadow = "operation: CreateDomesticScheduledPaymentConsents, strict: true}";
    assert!(text.contains(shadow));
    text.replace(
        shadow,
        "operation: CreateDomesticScheduledPaymentConsents, strict: true, mode: shadow}",
    )
}

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
        assert_eq!(
            rec["contract"],
            json!({"operation": "CreateDomesticPaymentConsents", "mode": "enforce", "result": "valid"})
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
