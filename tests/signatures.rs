//! Signed requests and responses through the proxy (docs/attacks.md groups B and C): OBIE detached
//! JWS under both profiles with the OBIE error body, RFC 9421 with Content-Digest, signature
//! evidence in the audit record, and signed responses. Every refusal is checked three ways:
//! status and reason, nothing upstream, one audit record with the reason.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::*;
use http::HeaderMap;
use http_body_util::Full;
use portcullis_crypto::httpsig::base::signature_base;
use portcullis_crypto::httpsig::digest::{content_digest, DigestAlg};
use portcullis_crypto::httpsig::fields::{input, parse_field, signature_bytes};
use portcullis_crypto::httpsig::sign::{component, sign, Params};
use portcullis_crypto::httpsig::{Message, RequestView, ResponseView};
use portcullis_crypto::jose::detached::{
    ob_header, sign_detached, signing_input, Profile, OB_IAT, OB_ISS, OB_TAN,
};
use portcullis_crypto::jose::jwk::{from_jwk, VerifyingKey};
use portcullis_crypto::jose::keypair::KeyPair;
use portcullis_crypto::jose::sign::SigningKey;
use portcullis_crypto::jose::{b64url, sha256_b64url, Alg};
use portcullis_tools::client::Answer;
use rustls_pki_types::pem::PemObject;
use serde_json::{json, Map, Value};

const NOW: i64 = 1_800_000_000;
const ISS: &str = "https://as.example";
const AUD: &str = "https://rs.example";
/// tpp1's OBIE iss under `iss: "{org_id}/{cert_cn}"`.
const TPP1_ISS: &str = "PSDGB-FCA-123456/tpp-one-software-id";
const TAN: &str = "openbanking.org.uk";
const P314: &str = "/open-banking/v3.1.10/pisp/domestic-payments";
const P313: &str = "/open-banking/v3.1.2/pisp/domestic-payments";
const FAPI: &str = "/fapi/payments";
const FAPI_NONCE: &str = "/fapi/nonce-payments";
const PAYMENT: &[u8] = br#"{"Data":{"ConsentId":"c-1","Initiation":{"InstructionIdentification":"ACME412","EndToEndIdentification":"FRESCO.21302.GFX.20","InstructedAmount":{"Amount":"165.88","Currency":"GBP"},"CreditorAccount":{"SchemeName":"UK.OBIE.SortCodeAccountNumber","Identification":"08080021325698","Name":"ACME Inc"},"RemittanceInformation":{"Reference":"FRESCO-101","Unstructured":"Internal ops code 5120101"}}},"Risk":{"PaymentContextCode":"EcommerceGoods","MerchantCategoryCode":"5967","MerchantCustomerIdentification":"053598653254","DeliveryAddress":{"AddressLine":["Flat 7","Acacia Lodge"],"StreetName":"Acacia Avenue","BuildingNumber":"27","PostCode":"GU31 2ZZ","TownName":"Sparsholt","CountrySubDivision":"Wessex","Country":"UK"}}}"#;

const POLICY: &str = r#"
group: signed
upstream: bank
routes:
  - id: obie314.payments
    method: POST
    path: /open-banking/v3.1.10/pisp/domestic-payments
    body_limit: 4096
    signature: {kind: obie-jws, profile: obie-3.1.4, sign_response: true}
  - id: obie313.payments
    method: POST
    path: /open-banking/v3.1.2/pisp/domestic-payments
    signature: {kind: obie-jws, profile: obie-3.1.3}
  - id: fapi.payments
    method: POST
    path: /fapi/payments
    auth: {profile: fapi2}
    signature: {kind: http-sig, sign_response: true}
    idempotency: optional
  - id: fapi.nonce
    method: POST
    path: /fapi/nonce-payments
    auth: {profile: fapi2}
    signature: {kind: http-sig, nonce: required}
  - id: fapi.accounts
    method: GET
    path: /fapi/accounts
    auth: {profile: fapi2}
    signature: {kind: http-sig}
"#;

/// The kit's [`Env`] (on a manual clock at [`NOW`]) and the keys and token of the signing tests.
struct SigEnv {
    env: Env,
    /// tpp1's keys: PS256 (OBIE and RFC 9421), ES256 and Ed25519 (RFC 9421).
    ps: KeyPair,
    es: KeyPair,
    ed: KeyPair,
    /// tpp2's key: valid, but not tpp1's.
    other: KeyPair,
    /// The proxy's response-signing key.
    bank: VerifyingKey,
    token: String,
}

impl std::ops::Deref for SigEnv {
    type Target = Env;
    fn deref(&self) -> &Env {
        &self.env
    }
}

fn thumb(name: &str) -> String {
    let der = rustls_pki_types::CertificateDer::from_pem_file(certs().join(format!("{name}.pem")))
        .unwrap();
    portcullis_crypto::pki::thumbprint_s256(der.as_ref())
}

async fn env() -> SigEnv {
    env_with(None).await
}

/// The proxy with tpp1's and tpp2's keys in a directory, or (with `keys_url`) fetched from a
/// URL template over TLS pinned to the dev CA.
async fn env_with(keys_url: Option<String>) -> SigEnv {
    let dirs = tempfile::tempdir().unwrap();
    let clients = dirs.path().join("clients");
    std::fs::create_dir_all(&clients).unwrap();
    let ps = KeyPair::generate(Alg::PS256, "tpp1-ps").unwrap();
    let es = KeyPair::generate(Alg::ES256, "tpp1-es").unwrap();
    let ed = KeyPair::generate(Alg::EdDSA, "tpp1-ed").unwrap();
    let other = KeyPair::generate(Alg::PS256, "tpp2-ps").unwrap();
    let set = json!({"keys": [ps.public_jwk(), es.public_jwk(), ed.public_jwk()]});
    std::fs::write(clients.join("PSDGB-FCA-123456.json"), set.to_string()).unwrap();
    std::fs::write(
        clients.join("PSDGB-FCA-654321.json"),
        other.jwks().to_string(),
    )
    .unwrap();
    let bank = KeyPair::generate(Alg::PS256, "bank-1").unwrap();
    let bank_key = dirs.path().join("bank.key");
    std::fs::write(&bank_key, bank.to_pkcs8_pem()).unwrap();
    let as_key = SigningKey::generate(Alg::ES256, "as-1").unwrap();
    let jwks = dirs.path().join("as-jwks.json");
    std::fs::write(&jwks, as_key.jwks().to_string()).unwrap();
    let token = as_key.access_token(&json!({
        "iss": ISS, "aud": AUD, "exp": NOW + 3600, "iat": NOW, "client_id": "tpp-one",
        "scope": "payments", "jti": "t-1", "cnf": {"x5t#S256": thumb("tpp1")},
    }));
    let up = Upstream::start(Behaviour::Ok).await;
    let mut o = Options::new(up.addr);
    o.policy = POLICY.to_string();
    o.config
        .issuers
        .insert("as".into(), file_issuer(ISS, AUD, &jwks));
    let ca = certs().join("ca.pem").display().to_string();
    let client_keys = match &keys_url {
        None => FileClientKeys {
            directory: Some(clients.display().to_string()),
            ..FileClientKeys::default()
        },
        Some(u) => FileClientKeys {
            url: Some(u.clone()),
            ca: vec![ca],
            ..FileClientKeys::default()
        },
    };
    o.config.signatures = FileSignatures {
        client: Some("{org_id}".into()),
        client_keys: Some(FileClientKeys {
            min_refetch_interval: Some(dur("0s")),
            ..client_keys
        }),
        jws: FileJws {
            trust_anchors: vec![TAN.into()],
            iss: Some("{org_id}/{cert_cn}".into()),
            max_age: Some(dur("5m")),
            clock_skew: Some(dur("30s")),
            ..FileJws::default()
        },
        http: FileHttpSig {
            public_base_url: Some("https://rs.example".into()),
            ..FileHttpSig::default()
        },
        response: Some(FileResponse {
            key: bank_key.display().to_string(),
            kid: "bank-1".into(),
            iss: Some("bank-org/bank-ssa".into()),
            ..FileResponse::default()
        }),
    };
    SigEnv {
        env: Env::start(o, up, dirs, Some(NOW)).await,
        bank: from_jwk(bank.public_jwk().as_object().unwrap()).unwrap(),
        ps,
        es,
        ed,
        other,
        token,
    }
}

impl SigEnv {
    async fn send(
        &self,
        identity: &str,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: &[u8],
        h2: bool,
    ) -> (Answer, String) {
        let id = uuid::Uuid::new_v4().to_string();
        let mut r = req(method, path).header("x-fapi-interaction-id", &id);
        // A JSON body says so (OBIE routes take JSON only), unless the test sets its own type.
        if !body.is_empty() && !headers.iter().any(|(k, _)| *k == "content-type") {
            r = r.header("content-type", "application/json");
        }
        for (k, v) in headers {
            r = r.header(*k, v.as_str());
        }
        let mut c = self.p.client(Some(identity), h2).await.unwrap();
        let a = c
            .send(r.body(Full::new(Bytes::copy_from_slice(body))).unwrap())
            .await
            .unwrap();
        (a, id)
    }

    /// A refusal on an OBIE route: 400 with the OBIE error body, nothing upstream, one record.
    async fn refused_obie(
        &self,
        path: &str,
        headers: &[(&str, String)],
        body: &[u8],
        reason: &str,
        code: &str,
    ) -> Value {
        let before = self.up.count();
        let (a, id) = self.send("tpp1", "POST", path, headers, body, false).await;
        let j = a.json();
        assert_eq!(
            a.status,
            400,
            "{reason}: {}",
            String::from_utf8_lossy(&a.body)
        );
        assert_eq!(a.headers["content-type"], "application/json", "{reason}");
        assert_eq!(j["Code"], "400 BadRequest", "{reason}");
        assert_eq!(j["Id"], id.as_str(), "{reason}");
        assert!(j["Message"].as_str().is_some_and(|m| !m.is_empty()));
        assert_eq!(j["Errors"][0]["ErrorCode"], code, "{reason}: {j}");
        assert_eq!(a.headers["x-fapi-interaction-id"], id.as_str());
        assert_eq!(
            self.up.count(),
            before,
            "{reason}: the upstream must receive nothing"
        );
        let rec = self.p.audit_of(&id).await;
        assert_eq!(rec["reason"], reason, "{rec}");
        assert_eq!(rec["stage"], "signature");
        assert_eq!(rec["decision"], "deny");
        assert!(
            rec.get("signature").is_none(),
            "no evidence for a refused signature"
        );
        j
    }

    /// A refusal on an RFC 9421 route: 401 (or `status`) problem+json, nothing upstream, one
    /// record.
    async fn refused_http(
        &self,
        path: &str,
        headers: &[(&str, String)],
        body: &[u8],
        status: u16,
        reason: &str,
    ) {
        let before = self.up.count();
        let method = if path.starts_with("/fapi/accounts") {
            "GET"
        } else {
            "POST"
        };
        let (a, id) = self.send("tpp1", method, path, headers, body, false).await;
        assert_eq!(
            a.status,
            status,
            "{reason}: {}",
            String::from_utf8_lossy(&a.body)
        );
        assert_eq!(a.headers["content-type"], "application/problem+json");
        assert_eq!(
            a.json()["reason"],
            reason,
            "{}",
            String::from_utf8_lossy(&a.body)
        );
        assert_eq!(a.json()["interaction_id"], id.as_str());
        assert_eq!(
            self.up.count(),
            before,
            "{reason}: the upstream must receive nothing"
        );
        let rec = self.p.audit_of(&id).await;
        assert_eq!(rec["reason"], reason);
        assert_eq!(rec["stage"], "signature");
        assert_eq!(rec["decision"], "deny");
    }

    fn jws(&self, header: &Map<String, Value>, body: &[u8]) -> (&'static str, String) {
        (
            "x-jws-signature",
            sign_detached(header, body, |m| self.ps.sign(m)),
        )
    }
}

fn obie_header(profile: Profile) -> Map<String, Value> {
    ob_header(profile, Alg::PS256, "tpp1-ps", NOW - 5, TPP1_ISS, TAN)
}

fn sent_body_is(up: &Upstream, body: &[u8]) {
    let seen = up.seen();
    let last = seen.last().expect("forwarded");
    assert_eq!(
        last.body.as_ref(),
        body,
        "the bytes verified are the bytes forwarded"
    );
}

// ---------------------------------------------------------------------------------------------
// Group B: OBIE detached JWS.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn obie_signed_payments_pass_under_both_profiles_with_evidence_and_a_signed_response() {
    let e = env().await;
    for (path, profile) in [(P314, Profile::Obie314), (P313, Profile::Obie313)] {
        let sig = e.jws(&obie_header(profile), PAYMENT);
        for h2 in [false, true] {
            let (a, id) = e
                .send(
                    "tpp1",
                    "POST",
                    path,
                    std::slice::from_ref(&sig),
                    PAYMENT,
                    h2,
                )
                .await;
            assert_eq!(
                a.status,
                200,
                "{path}: {}",
                String::from_utf8_lossy(&a.body)
            );
            sent_body_is(&e.up, PAYMENT);
            let rec = e.p.audit_of(&id).await;
            let s = &rec["signature"];
            assert_eq!(s["kind"], "obie-jws");
            assert_eq!(s["kid"], "tpp1-ps");
            assert_eq!(s["alg"], "PS256");
            let raw_sig = sig.1.rsplit('.').next().unwrap();
            assert_eq!(
                s["hash"],
                sha256_b64url(&portcullis_crypto::jose::b64url_decode(raw_sig).unwrap())
            );
            let log = std::fs::read_to_string(e.p.dir.path().join("audit.log")).unwrap();
            assert!(
                !log.contains(&sig.1),
                "the signature never reaches the audit log"
            );
            if path == P314 {
                // The response is signed by the bank key over exactly the bytes sent back.
                let jws = a.headers["x-jws-signature"].to_str().unwrap();
                let (h, s) = jws.split_once("..").unwrap();
                let header: Value =
                    serde_json::from_slice(&portcullis_crypto::jose::b64url_decode(h).unwrap())
                        .unwrap();
                assert_eq!(header["kid"], "bank-1");
                assert_eq!(header["alg"], "PS256");
                assert_eq!(header[OB_ISS], "bank-org/bank-ssa");
                assert_eq!(header[OB_TAN], TAN);
                assert_eq!(header[OB_IAT], NOW);
                assert!(header.get("b64").is_none());
                let input = signing_input(h, &a.body, true);
                let sig = portcullis_crypto::jose::b64url_decode(s).unwrap();
                assert!(e.bank.verify(&input, &sig), "response signature verifies");
            } else {
                assert!(
                    !a.headers.contains_key("x-jws-signature"),
                    "not a signing route"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b01_b14_missing_or_repeated_signatures_are_refused() {
    let e = env().await;
    e.refused_obie(
        P314,
        &[],
        PAYMENT,
        "signature.jws_missing",
        "UK.OBIE.Signature.Missing",
    )
    .await;
    let sig = e.jws(&obie_header(Profile::Obie314), PAYMENT);
    e.refused_obie(
        P314,
        &[sig.clone(), sig.clone()],
        PAYMENT,
        "signature.jws_multiple",
        "UK.OBIE.Signature.Malformed",
    )
    .await;
    e.refused_obie(
        P314,
        &[("x-jws-signature", format!("{},{}", sig.1, sig.1))],
        PAYMENT,
        "signature.jws_multiple",
        "UK.OBIE.Signature.Malformed",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b02_a_body_changed_after_signing_is_refused_bytes_not_meaning() {
    let e = env().await;
    let sig = e.jws(&obie_header(Profile::Obie314), PAYMENT);
    let text = std::str::from_utf8(PAYMENT).unwrap();
    let mut one_byte = PAYMENT.to_vec();
    let i = text.find("165.88").unwrap();
    one_byte[i] = b'9';
    let value: Value = serde_json::from_slice(PAYMENT).unwrap();
    let reserialized = serde_json::to_vec_pretty(&value).unwrap();
    let whitespace = [PAYMENT, b" "].concat();
    let reordered = text.replacen(
        r#""InstructedAmount":{"Amount":"165.88","Currency":"GBP"}"#,
        r#""InstructedAmount":{"Currency":"GBP","Amount":"165.88"}"#,
        1,
    );
    let escaped = text.replacen("ACME Inc", "ACME \\u0049nc", 1);
    for body in [
        one_byte,
        reserialized,
        whitespace,
        reordered.into_bytes(),
        escaped.into_bytes(),
    ] {
        assert_ne!(body, PAYMENT);
        e.refused_obie(
            P314,
            std::slice::from_ref(&sig),
            &body,
            "signature.jws_invalid",
            "UK.OBIE.Signature.Invalid",
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b03_b04_b11_b64_rules_follow_the_route_profile() {
    let e = env().await;
    // B03: header says b64: false but base64url(body) was signed, and the reverse.
    for (path, profile, encoded) in [
        (P313, Profile::Obie313, true),
        (P314, Profile::Obie314, false),
    ] {
        let h = obie_header(profile);
        let protected = b64url(Value::Object(h).to_string().as_bytes());
        let sig = e.ps.sign(&signing_input(&protected, PAYMENT, encoded));
        e.refused_obie(
            path,
            &[("x-jws-signature", format!("{protected}..{}", b64url(&sig)))],
            PAYMENT,
            "signature.jws_invalid",
            "UK.OBIE.Signature.Invalid",
        )
        .await;
    }
    // B04: b64: false without b64 in crit.
    let mut h = obie_header(Profile::Obie313);
    h.insert("crit".into(), json!([OB_IAT, OB_ISS, OB_TAN]));
    let j = e
        .refused_obie(
            P313,
            &[e.jws(&h, PAYMENT)],
            PAYMENT,
            "signature.jws_b64",
            "UK.OBIE.Signature.InvalidClaim",
        )
        .await;
    assert_eq!(j["Errors"][0]["Path"], "b64");
    // B11: a 3.1.3 signature on a 3.1.4 route, and a 3.1.4 one on a 3.1.3 route.
    let old = e.jws(&obie_header(Profile::Obie313), PAYMENT);
    e.refused_obie(
        P314,
        &[old],
        PAYMENT,
        "signature.jws_b64",
        "UK.OBIE.Signature.InvalidClaim",
    )
    .await;
    let new = e.jws(&obie_header(Profile::Obie314), PAYMENT);
    let j = e
        .refused_obie(
            P313,
            &[new],
            PAYMENT,
            "signature.jws_b64_missing",
            "UK.OBIE.Signature.MissingClaim",
        )
        .await;
    assert_eq!(j["Errors"][0]["Path"], "b64");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b05_to_b08_b12_header_claims_are_checked() {
    let e = env().await;
    type Edit = fn(&mut Map<String, Value>);
    let cases: Vec<(Edit, &str, &str, Option<&str>)> = vec![
        (
            |h| {
                h.remove("crit");
            },
            "signature.jws_crit_missing",
            "UK.OBIE.Signature.MissingClaim",
            Some("crit"),
        ),
        (
            |h| {
                h.insert("crit".into(), json!([OB_IAT, OB_ISS]));
            },
            "signature.jws_crit",
            "UK.OBIE.Signature.InvalidClaim",
            Some("crit"),
        ),
        (
            |h| {
                h.insert(
                    "crit".into(),
                    json!([OB_IAT, OB_ISS, OB_TAN, "urn:unknown"]),
                );
            },
            "signature.jws_crit",
            "UK.OBIE.Signature.InvalidClaim",
            Some("crit"),
        ),
        (
            |h| {
                h.remove(OB_IAT);
            },
            "signature.jws_iat_missing",
            "UK.OBIE.Signature.MissingClaim",
            Some(OB_IAT),
        ),
        (
            |h| {
                h.insert(OB_IAT.into(), json!(NOW + 120));
            },
            "signature.jws_iat",
            "UK.OBIE.Signature.InvalidClaim",
            Some(OB_IAT),
        ),
        (
            |h| {
                h.insert(OB_IAT.into(), json!(NOW - 301));
            },
            "signature.jws_iat",
            "UK.OBIE.Signature.InvalidClaim",
            Some(OB_IAT),
        ),
        (
            |h| {
                h.insert(OB_IAT.into(), json!(NOW.to_string()));
            },
            "signature.jws_iat",
            "UK.OBIE.Signature.InvalidClaim",
            Some(OB_IAT),
        ),
        (
            |h| {
                h.insert(OB_ISS.into(), json!("PSDGB-FCA-654321/tpp-two-software-id"));
            },
            "signature.jws_iss",
            "UK.OBIE.Signature.InvalidClaim",
            Some(OB_ISS),
        ),
        (
            |h| {
                h.remove(OB_ISS);
            },
            "signature.jws_iss_missing",
            "UK.OBIE.Signature.MissingClaim",
            Some(OB_ISS),
        ),
        (
            |h| {
                h.insert(OB_TAN.into(), json!("evil.example"));
            },
            "signature.jws_tan",
            "UK.OBIE.Signature.InvalidClaim",
            Some(OB_TAN),
        ),
        (
            |h| {
                h.remove(OB_TAN);
            },
            "signature.jws_tan_missing",
            "UK.OBIE.Signature.MissingClaim",
            Some(OB_TAN),
        ),
        (
            |h| {
                h.insert("alg".into(), json!("RS256"));
            },
            "signature.jws_alg",
            "UK.OBIE.Signature.InvalidClaim",
            Some("alg"),
        ),
        (
            |h| {
                h.insert("alg".into(), json!("HS256"));
            },
            "signature.jws_alg",
            "UK.OBIE.Signature.InvalidClaim",
            Some("alg"),
        ),
        (
            |h| {
                h.insert("alg".into(), json!("none"));
            },
            "signature.jws_alg",
            "UK.OBIE.Signature.InvalidClaim",
            Some("alg"),
        ),
        (
            |h| {
                h.remove("kid");
            },
            "signature.jws_kid_missing",
            "UK.OBIE.Signature.MissingClaim",
            Some("kid"),
        ),
        (
            |h| {
                h.insert("jku".into(), json!("https://evil.example/jwks"));
            },
            "signature.jws_header",
            "UK.OBIE.Signature.InvalidClaim",
            None,
        ),
    ];
    for (edit, reason, code, path) in cases {
        let mut h = obie_header(Profile::Obie314);
        edit(&mut h);
        let j = e
            .refused_obie(P314, &[e.jws(&h, PAYMENT)], PAYMENT, reason, code)
            .await;
        match path {
            Some(p) => assert_eq!(j["Errors"][0]["Path"], p, "{reason}"),
            None => assert!(j["Errors"][0].get("Path").is_none()),
        }
    }
    // B06 once more with the clock: a signature made 4 minutes ago passes, 6 minutes fails.
    let sig = e.jws(&obie_header(Profile::Obie314), PAYMENT);
    e.clock().advance(240);
    let (a, _) = e
        .send(
            "tpp1",
            "POST",
            P314,
            std::slice::from_ref(&sig),
            PAYMENT,
            false,
        )
        .await;
    assert_eq!(a.status, 200);
    e.clock().advance(120);
    e.refused_obie(
        P314,
        &[sig],
        PAYMENT,
        "signature.jws_iat",
        "UK.OBIE.Signature.InvalidClaim",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b07_b09_keys_come_only_from_the_calling_clients_set() {
    let e = env().await;
    // B09: unknown kid, and a traversal string as kid.
    for kid in [
        "nope",
        "../../PSDGB-FCA-654321",
        "https://evil.example/jwks",
    ] {
        let mut h = obie_header(Profile::Obie314);
        h.insert("kid".into(), json!(kid));
        let j = e
            .refused_obie(
                P314,
                &[e.jws(&h, PAYMENT)],
                PAYMENT,
                "signature.jws_unknown_key",
                "UK.OBIE.Signature.InvalidClaim",
            )
            .await;
        assert_eq!(j["Errors"][0]["Path"], "kid");
    }
    // B07: tpp2's own valid key and iss, presented over tpp1's connection.
    let h = ob_header(
        Profile::Obie314,
        Alg::PS256,
        "tpp2-ps",
        NOW,
        "PSDGB-FCA-654321/tpp-two-software-id",
        TAN,
    );
    let sig = (
        "x-jws-signature",
        sign_detached(&h, PAYMENT, |m| e.other.sign(m)),
    );
    e.refused_obie(
        P314,
        std::slice::from_ref(&sig),
        PAYMENT,
        "signature.jws_iss",
        "UK.OBIE.Signature.InvalidClaim",
    )
    .await;
    // tpp2's key under tpp1's iss: the kid is not in tpp1's set.
    let h = ob_header(Profile::Obie314, Alg::PS256, "tpp2-ps", NOW, TPP1_ISS, TAN);
    let sig2 = (
        "x-jws-signature",
        sign_detached(&h, PAYMENT, |m| e.other.sign(m)),
    );
    e.refused_obie(
        P314,
        &[sig2],
        PAYMENT,
        "signature.jws_unknown_key",
        "UK.OBIE.Signature.InvalidClaim",
    )
    .await;
    // The same signature from tpp2's own connection is accepted.
    let (a, _) = e.send("tpp2", "POST", P314, &[sig], PAYMENT, false).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    // A PS256 header verified with a key of the same kid signed by another key: invalid.
    let h = obie_header(Profile::Obie314);
    let forged = (
        "x-jws-signature",
        sign_detached(&h, PAYMENT, |m| e.other.sign(m)),
    );
    e.refused_obie(
        P314,
        &[forged],
        PAYMENT,
        "signature.jws_invalid",
        "UK.OBIE.Signature.Invalid",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b10_an_attached_payload_is_malformed() {
    let e = env().await;
    let (_, sig) = e.jws(&obie_header(Profile::Obie314), PAYMENT);
    let (h, s) = sig.split_once("..").unwrap();
    for bad in [
        format!("{h}.{}.{s}", b64url(PAYMENT)),
        format!("{h}.{s}"),
        "garbage".to_string(),
    ] {
        e.refused_obie(
            P314,
            &[("x-jws-signature", bad)],
            PAYMENT,
            "signature.jws_malformed",
            "UK.OBIE.Signature.Malformed",
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b13_a_compressed_body_is_verified_and_forwarded_as_the_same_bytes() {
    let e = env().await;
    // Stand-in compressed bytes: the proxy never decompresses, so the signature is over the
    // bytes on the wire and those bytes go upstream with their Content-Encoding.
    let gz: Vec<u8> = (0u8..=255).cycle().take(600).collect();
    let sig = e.jws(&obie_header(Profile::Obie314), &gz);
    let (a, _) = e
        .send(
            "tpp1",
            "POST",
            P314,
            &[sig, ("content-encoding", "gzip".into())],
            &gz,
            false,
        )
        .await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    sent_body_is(&e.up, &gz);
    assert_eq!(
        e.up.seen().last().unwrap().headers["content-encoding"],
        "gzip"
    );
    // A signature over the decompressed content does not verify over the compressed bytes.
    let sig = e.jws(&obie_header(Profile::Obie314), PAYMENT);
    e.refused_obie(
        P314,
        &[sig, ("content-encoding", "gzip".into())],
        &gz,
        "signature.jws_invalid",
        "UK.OBIE.Signature.Invalid",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_route_refuses_an_oversize_body_with_413_before_verifying() {
    let e = env().await;
    let big = vec![b'a'; 5000];
    let sig = e.jws(&obie_header(Profile::Obie314), &big);
    let (a, id) = e.send("tpp1", "POST", P314, &[sig], &big, false).await;
    assert_eq!(a.status, 413);
    assert_eq!(e.up.count(), 0);
    assert_eq!(e.p.audit_of(&id).await["reason"], "http.body_too_large");
}

/// The detached JWS of an `x-jws-signature` response header verifies with the bank key over
/// exactly `body`.
fn jws_response_verifies(e: &SigEnv, a: &Answer) -> bool {
    let jws = a.headers["x-jws-signature"].to_str().unwrap();
    let (h, s) = jws.split_once("..").unwrap();
    let header: Value =
        serde_json::from_slice(&portcullis_crypto::jose::b64url_decode(h).unwrap()).unwrap();
    assert_eq!(
        (header["kid"].as_str(), header[OB_TAN].as_str()),
        (Some("bank-1"), Some(TAN))
    );
    let input = signing_input(h, &a.body, true);
    let sig = portcullis_crypto::jose::b64url_decode(s).unwrap();
    e.bank.verify(&input, &sig)
}

/// OBIE: the proxy's own refusals on a route that signs its responses are
/// signed as the upstream's answers are, over the OBIE error body; a route that does not sign
/// does not sign its refusals either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn obie_refusals_on_signing_routes_carry_an_x_jws_signature_over_the_error_body() {
    let e = env().await;
    // From the signature stage (missing signature) and from before it (415).
    let j = e
        .refused_obie(
            P314,
            &[],
            PAYMENT,
            "signature.jws_missing",
            "UK.OBIE.Signature.Missing",
        )
        .await;
    assert_eq!(j["Errors"][0]["ErrorCode"], "UK.OBIE.Signature.Missing");
    let (a, id) = e.send("tpp1", "POST", P314, &[], PAYMENT, false).await;
    assert_eq!(a.status, 400);
    assert!(
        jws_response_verifies(&e, &a),
        "the refusal's signature verifies"
    );
    assert_eq!(e.p.audit_of(&id).await["reason"], "signature.jws_missing");
    let sig = e.jws(&obie_header(Profile::Obie314), PAYMENT);
    let before = e.up.count();
    let (a, id) = e
        .send(
            "tpp1",
            "POST",
            P314,
            &[sig, ("content-type", "text/plain".into())],
            PAYMENT,
            false,
        )
        .await;
    assert_eq!(a.status, 415, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.headers["content-type"], "application/json");
    assert_eq!(a.json()["Errors"][0]["ErrorCode"], "UK.OBIE.Header.Invalid");
    assert_eq!(a.json()["Errors"][0]["Path"], "Content-Type");
    assert!(jws_response_verifies(&e, &a));
    // A changed body does not verify: the signature is over the bytes sent.
    let tampered = Answer {
        status: a.status,
        headers: a.headers.clone(),
        body: Bytes::from(String::from_utf8_lossy(&a.body).replace("415", "400")),
    };
    assert!(!jws_response_verifies(&e, &tampered));
    assert_eq!(e.up.count(), before, "nothing upstream");
    let rec = e.p.audit_of(&id).await;
    assert_eq!(
        (rec["reason"].as_str(), rec["stage"].as_str()),
        (Some("http.unsupported_media_type"), Some("http"))
    );
    // obie-3.1.3 does not sign responses: no signature on its refusals.
    let (a, _) = e.send("tpp1", "POST", P313, &[], PAYMENT, false).await;
    assert_eq!(a.status, 400);
    assert!(!a.headers.contains_key("x-jws-signature"));
    // A path that names no route has no route to sign for: problem+json, unsigned.
    let (a, _) = e
        .send(
            "tpp1",
            "POST",
            "/open-banking/v3.1.10/pisp/unknown",
            &[],
            PAYMENT,
            false,
        )
        .await;
    assert_eq!(a.status, 404);
    assert_eq!(a.headers["content-type"], "application/problem+json");
    assert!(!a.headers.contains_key("x-jws-signature"));
}

/// The RFC 9421 response signature of `a` covers `want` (in order) and verifies with the bank
/// key, bound to `req` when given.
fn response_signature_verifies(
    e: &SigEnv,
    a: &Answer,
    req: Option<&RequestView<'_>>,
    want: &[&str],
) -> bool {
    assert_eq!(
        a.headers["content-digest"].to_str().unwrap(),
        content_digest(DigestAlg::Sha256, &a.body)
    );
    let rdict = parse_field(a.headers.get_all("signature-input"))
        .unwrap()
        .unwrap();
    let si = input("sig1", rdict.get("sig1").unwrap()).unwrap();
    assert_eq!(si.tag.as_deref(), Some("fapi-2-response"));
    assert_eq!(si.keyid.as_deref(), Some("bank-1"));
    let ids: Vec<String> = si
        .covered
        .items
        .iter()
        .map(portcullis_crypto::httpsig::base::identifier)
        .collect();
    assert_eq!(ids, want);
    let resp = ResponseView {
        status: a.status.as_u16(),
        headers: &a.headers,
    };
    let base = signature_base(&si.covered, Message::Response(&resp, req)).unwrap();
    let rs = parse_field(a.headers.get_all("signature"))
        .unwrap()
        .unwrap();
    e.bank
        .verify(base.as_bytes(), signature_bytes(&rs, "sig1").unwrap())
}

/// RFC 9421: a refusal on a route that signs its responses carries a response
/// signature over `@status` and its body's `content-digest`; once the request's signature was
/// verified (here: the idempotency stage refuses after it), it is bound to the request with
/// the `;req` components too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc9421_refusals_on_signing_routes_are_signed_and_bound_to_a_verified_request() {
    let e = env().await;
    // No request signature: refused by the signature stage, signed without `;req`.
    let before = e.up.count();
    let h = base_headers(&e, PAYMENT);
    let headers: Vec<(&str, String)> = h
        .iter()
        .map(|(k, v)| (static_name(k.as_str()), v.to_str().unwrap().to_string()))
        .collect();
    let (a, id) = e.send("tpp1", "POST", FAPI, &headers, PAYMENT, false).await;
    assert_eq!(a.status, 401, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.headers["content-type"], "application/problem+json");
    assert_eq!(a.json()["reason"], "signature.http_missing");
    assert!(response_signature_verifies(
        &e,
        &a,
        None,
        &[r#""@status""#, r#""content-digest""#]
    ));
    assert_eq!(e.up.count(), before);
    assert_eq!(e.p.audit_of(&id).await["reason"], "signature.http_missing");
    // A verified request refused after its signature was checked: bound to it.
    let s = fapi_signed(&e, &e.ps, FAPI, PAYMENT, params(&e.ps, NOW - 2));
    let mut headers = s.headers.clone();
    headers.push(("x-idempotency-key", "k".repeat(41)));
    let (a, id) = e.send("tpp1", "POST", FAPI, &headers, PAYMENT, false).await;
    assert_eq!(a.status, 400, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.json()["reason"], "idempotency.key_invalid");
    let req_view = RequestView {
        method: "POST",
        scheme: "https",
        authority: "rs.example",
        path: FAPI,
        query: None,
        headers: &s.map,
    };
    assert!(response_signature_verifies(
        &e,
        &a,
        Some(&req_view),
        &[
            r#""@status""#,
            r#""content-digest""#,
            r#""@method";req"#,
            r#""@target-uri";req"#,
            r#""content-digest";req"#,
            r#""signature-input";req;key="sig1""#,
            r#""signature";req;key="sig1""#
        ]
    ));
    assert_eq!(e.up.count(), before, "nothing upstream");
    let rec = e.p.audit_of(&id).await;
    assert_eq!(
        (rec["reason"].as_str(), rec["decision"].as_str()),
        (Some("idempotency.key_invalid"), Some("deny"))
    );
}

// ---------------------------------------------------------------------------------------------
// Group C: RFC 9421.

/// The request facts a client signs.
struct Signed {
    headers: Vec<(&'static str, String)>,
    map: HeaderMap,
}

fn base_headers(e: &SigEnv, body: &[u8]) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        "authorization",
        format!("Bearer {}", e.token).parse().unwrap(),
    );
    if !body.is_empty() {
        h.insert(
            "content-digest",
            content_digest(DigestAlg::Sha256, body).parse().unwrap(),
        );
    }
    h
}

#[allow(clippy::too_many_arguments)]
fn http_sign(
    key: &KeyPair,
    label: &str,
    comps: Vec<portcullis_crypto::httpsig::sign::ComponentItem>,
    method: &str,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    params: Params<'_>,
) -> (String, String) {
    let view = RequestView {
        method,
        scheme: "https",
        authority: "rs.example",
        path,
        query,
        headers,
    };
    sign(label, comps, &params, Message::Request(&view), |m| {
        key.sign(m)
    })
    .unwrap()
}

fn comps(names: &[&str]) -> Vec<portcullis_crypto::httpsig::sign::ComponentItem> {
    names
        .iter()
        .map(|n| component(n, &[], &[]).unwrap())
        .collect()
}

const FAPI_COMPONENTS: &[&str] = &["@method", "@target-uri", "authorization", "content-digest"];

fn params<'a>(key: &'a KeyPair, created: i64) -> Params<'a> {
    Params {
        created,
        keyid: &key.kid,
        tag: Some("fapi-2-request"),
        ..Params::default()
    }
}

/// A FAPI 2.0 signed POST of `body` to `path` by `key`.
fn fapi_signed(e: &SigEnv, key: &KeyPair, path: &str, body: &[u8], p: Params<'_>) -> Signed {
    let map = base_headers(e, body);
    let names: Vec<&str> = if body.is_empty() {
        FAPI_COMPONENTS[..3].to_vec()
    } else {
        FAPI_COMPONENTS.to_vec()
    };
    let (si, s) = http_sign(key, "sig1", comps(&names), "POST", path, None, &map, p);
    with_sig(map, si, s)
}

fn with_sig(mut map: HeaderMap, si: String, s: String) -> Signed {
    map.append("signature-input", si.parse().unwrap());
    map.append("signature", s.parse().unwrap());
    let headers = map
        .iter()
        .map(|(k, v)| (static_name(k.as_str()), v.to_str().unwrap().to_string()))
        .collect();
    Signed { headers, map }
}

fn static_name(n: &str) -> &'static str {
    match n {
        "authorization" => "authorization",
        "content-digest" => "content-digest",
        "signature-input" => "signature-input",
        "signature" => "signature",
        "x-payment-ref" => "x-payment-ref",
        "dpop" => "dpop",
        other => panic!("unexpected header {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c01_signed_requests_pass_with_each_key_type_and_the_response_is_signed() {
    let e = env().await;
    for (key, alg) in [
        (&e.es, None),
        (&e.es, Some("ecdsa-p256-sha256")),
        (&e.ed, Some("ed25519")),
        (&e.ps, None),
    ] {
        let p = Params {
            alg,
            ..params(key, NOW - 2)
        };
        let s = fapi_signed(&e, key, FAPI, PAYMENT, p);
        for h2 in [false, true] {
            let (a, id) = e.send("tpp1", "POST", FAPI, &s.headers, PAYMENT, h2).await;
            assert_eq!(
                a.status,
                200,
                "{:?}: {}",
                key.alg,
                String::from_utf8_lossy(&a.body)
            );
            sent_body_is(&e.up, PAYMENT);
            let rec = e.p.audit_of(&id).await;
            assert_eq!(rec["signature"]["kind"], "http-sig");
            assert_eq!(rec["signature"]["kid"], key.kid.as_str());
            let want_alg = alg.map_or(key.alg.name().to_string(), str::to_string);
            assert_eq!(rec["signature"]["alg"], want_alg.as_str());
            let dict = parse_field(s.map.get_all("signature")).unwrap().unwrap();
            let raw = signature_bytes(&dict, "sig1").unwrap();
            assert_eq!(rec["signature"]["hash"], sha256_b64url(raw));
            // The response: content-digest of the body sent, signed with tag fapi-2-response,
            // bound to this request (method, target URI, its digest, its signature's parameters
            // and its signature).
            assert_eq!(
                a.headers["content-digest"].to_str().unwrap(),
                content_digest(DigestAlg::Sha256, &a.body)
            );
            let rdict = parse_field(a.headers.get_all("signature-input"))
                .unwrap()
                .unwrap();
            let si = input("sig1", rdict.get("sig1").unwrap()).unwrap();
            assert_eq!(si.tag.as_deref(), Some("fapi-2-response"));
            assert_eq!(si.keyid.as_deref(), Some("bank-1"));
            assert_eq!(si.created, Some(NOW));
            let ids: Vec<String> = si
                .covered
                .items
                .iter()
                .map(portcullis_crypto::httpsig::base::identifier)
                .collect();
            assert_eq!(
                ids,
                [
                    r#""@status""#,
                    r#""content-digest""#,
                    r#""@method";req"#,
                    r#""@target-uri";req"#,
                    r#""content-digest";req"#,
                    r#""signature-input";req;key="sig1""#,
                    r#""signature";req;key="sig1""#
                ]
            );
            let req_view = RequestView {
                method: "POST",
                scheme: "https",
                authority: "rs.example",
                path: FAPI,
                query: None,
                headers: &s.map,
            };
            let resp = ResponseView {
                status: 200,
                headers: &a.headers,
            };
            let base =
                signature_base(&si.covered, Message::Response(&resp, Some(&req_view))).unwrap();
            let rs = parse_field(a.headers.get_all("signature"))
                .unwrap()
                .unwrap();
            assert!(e
                .bank
                .verify(base.as_bytes(), signature_bytes(&rs, "sig1").unwrap()));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c02_c03_c15_missing_minimal_mislabelled_or_malformed_signatures_are_refused() {
    let e = env().await;
    e.refused_http(
        FAPI,
        &[("authorization", format!("Bearer {}", e.token))],
        PAYMENT,
        401,
        "signature.http_missing",
    )
    .await;
    // C02: B.2.1-style minimal signature over ().
    let map = base_headers(&e, PAYMENT);
    let (si, s) = http_sign(
        &e.es,
        "sig1",
        vec![],
        "POST",
        FAPI,
        None,
        &map,
        params(&e.es, NOW),
    );
    e.refused_http(
        FAPI,
        &with_sig(map.clone(), si, s).headers,
        PAYMENT,
        401,
        "signature.http_coverage",
    )
    .await;
    // Each FAPI component left out in turn.
    for skip in 0..FAPI_COMPONENTS.len() {
        let names: Vec<&str> = FAPI_COMPONENTS
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != skip)
            .map(|(_, n)| *n)
            .collect();
        let (si, s) = http_sign(
            &e.es,
            "sig1",
            comps(&names),
            "POST",
            FAPI,
            None,
            &map,
            params(&e.es, NOW),
        );
        e.refused_http(
            FAPI,
            &with_sig(map.clone(), si, s).headers,
            PAYMENT,
            401,
            "signature.http_coverage",
        )
        .await;
    }
    // C03: the Signature member has another label.
    let good = fapi_signed(&e, &e.es, FAPI, PAYMENT, params(&e.es, NOW));
    let mut h = good.headers.clone();
    for (k, v) in h.iter_mut() {
        if *k == "signature" {
            *v = v.replacen("sig1=", "sig2=", 1);
        }
    }
    e.refused_http(FAPI, &h, PAYMENT, 401, "signature.http_label")
        .await;
    // FAPI 2.0 Message Signing: a complete signature under another tag (or none) is no request
    // signature at all.
    for tag in [Some("fapi-2-response"), Some("FAPI-2-REQUEST"), None] {
        let p = Params {
            tag,
            ..params(&e.es, NOW)
        };
        let other = fapi_signed(&e, &e.es, FAPI, PAYMENT, p);
        e.refused_http(FAPI, &other.headers, PAYMENT, 401, "signature.http_missing")
            .await;
    }
    // C15: malformed structured fields.
    for (name, value) in [
        ("signature-input", "sig1=(\"@method\""),
        (
            "signature-input",
            "sig1=(\"@method\");created=1, sig1=(\"@path\")",
        ),
        ("signature", "sig1=not-base64"),
        (
            "signature-input",
            "sig1=(\"@method\");created=\"now\";tag=\"fapi-2-request\"",
        ),
    ] {
        let mut h: Vec<(&str, String)> = good
            .headers
            .iter()
            .filter(|(k, _)| *k != name)
            .cloned()
            .collect();
        h.push((name, value.to_string()));
        e.refused_http(FAPI, &h, PAYMENT, 401, "signature.http_malformed")
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c04_a_second_signature_grants_nothing() {
    let e = env().await;
    let good = fapi_signed(&e, &e.es, FAPI, PAYMENT, params(&e.es, NOW));
    // An extra untagged signature under another client's key beside the good one: ignored; the
    // evidence names the client's key.
    let (si, s) = http_sign(
        &e.other,
        "attacker",
        comps(&["@method"]),
        "POST",
        FAPI,
        None,
        &good.map,
        Params {
            created: NOW,
            keyid: "tpp2-ps",
            ..Params::default()
        },
    );
    let mut h = good.headers.clone();
    h.push(("signature-input", si));
    h.push(("signature", s));
    let (a, id) = e.send("tpp1", "POST", FAPI, &h, PAYMENT, false).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(e.p.audit_of(&id).await["signature"]["kid"], "tpp1-es");
    // A second signature with the FAPI tag: ambiguous, refused.
    let (si, s) = http_sign(
        &e.other,
        "attacker",
        comps(FAPI_COMPONENTS),
        "POST",
        FAPI,
        None,
        &good.map,
        Params {
            created: NOW,
            keyid: "tpp2-ps",
            tag: Some("fapi-2-request"),
            ..Params::default()
        },
    );
    let mut h = good.headers.clone();
    h.push(("signature-input", si));
    h.push(("signature", s));
    e.refused_http(FAPI, &h, PAYMENT, 401, "signature.http_ambiguous")
        .await;
    // The other client's key alone: not a key of this caller (C08 too).
    let only = fapi_signed(&e, &e.other, FAPI, PAYMENT, params(&e.other, NOW));
    e.refused_http(
        FAPI,
        &only.headers,
        PAYMENT,
        401,
        "signature.http_unknown_key",
    )
    .await;
    let unknown = fapi_signed(
        &e,
        &e.es,
        FAPI,
        PAYMENT,
        Params {
            keyid: "no-such-key",
            ..params(&e.es, NOW)
        },
    );
    e.refused_http(
        FAPI,
        &unknown.headers,
        PAYMENT,
        401,
        "signature.http_unknown_key",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c05_c06_time_window_expiry_and_nonce_replay() {
    let e = env().await;
    for created in [NOW + 6, NOW - 61] {
        let s = fapi_signed(&e, &e.es, FAPI, PAYMENT, params(&e.es, created));
        e.refused_http(FAPI, &s.headers, PAYMENT, 401, "signature.http_created")
            .await;
    }
    let s = fapi_signed(
        &e,
        &e.es,
        FAPI,
        PAYMENT,
        Params {
            expires: Some(NOW),
            ..params(&e.es, NOW - 10)
        },
    );
    e.refused_http(FAPI, &s.headers, PAYMENT, 401, "signature.http_expired")
        .await;
    let no_created = {
        let map = base_headers(&e, PAYMENT);
        let (si, s) = http_sign(
            &e.es,
            "sig1",
            comps(FAPI_COMPONENTS),
            "POST",
            FAPI,
            None,
            &map,
            params(&e.es, NOW),
        );
        let si = si.replace(&format!(";created={NOW}"), "");
        with_sig(map, si, s)
    };
    e.refused_http(
        FAPI,
        &no_created.headers,
        PAYMENT,
        401,
        "signature.http_created_missing",
    )
    .await;
    // C06: a nonce is required on this route and used once.
    let s = fapi_signed(&e, &e.es, FAPI_NONCE, PAYMENT, params(&e.es, NOW));
    e.refused_http(
        FAPI_NONCE,
        &s.headers,
        PAYMENT,
        401,
        "signature.http_nonce_missing",
    )
    .await;
    let s = fapi_signed(
        &e,
        &e.es,
        FAPI_NONCE,
        PAYMENT,
        Params {
            nonce: Some("n-1"),
            ..params(&e.es, NOW)
        },
    );
    let (a, _) = e
        .send("tpp1", "POST", FAPI_NONCE, &s.headers, PAYMENT, false)
        .await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    e.refused_http(
        FAPI_NONCE,
        &s.headers,
        PAYMENT,
        401,
        "signature.http_replay",
    )
    .await;
    // On the optional-nonce route a nonce is still checked when present.
    let s = fapi_signed(
        &e,
        &e.es,
        FAPI,
        PAYMENT,
        Params {
            nonce: Some("n-2"),
            ..params(&e.es, NOW)
        },
    );
    let (a, _) = e
        .send("tpp1", "POST", FAPI, &s.headers, PAYMENT, false)
        .await;
    assert_eq!(a.status, 200);
    e.refused_http(FAPI, &s.headers, PAYMENT, 401, "signature.http_replay")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c07_an_alg_that_disagrees_with_the_key_is_refused() {
    let e = env().await;
    for (key, alg) in [
        (&e.es, "hmac-sha256"),
        (&e.es, "ed25519"),
        (&e.ps, "rsa-pss-sha512"),
        (&e.ed, "ecdsa-p256-sha256"),
    ] {
        let s = fapi_signed(
            &e,
            key,
            FAPI,
            PAYMENT,
            Params {
                alg: Some(alg),
                ..params(key, NOW)
            },
        );
        e.refused_http(FAPI, &s.headers, PAYMENT, 401, "signature.http_alg")
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c09_the_digest_is_recomputed_over_the_body_received() {
    let e = env().await;
    let s = fapi_signed(&e, &e.es, FAPI, PAYMENT, params(&e.es, NOW));
    let mut changed = PAYMENT.to_vec();
    changed[20] ^= 1;
    e.refused_http(FAPI, &s.headers, &changed, 401, "signature.digest_mismatch")
        .await;
    // The same meaning, re-serialized.
    let value: Value = serde_json::from_slice(PAYMENT).unwrap();
    let pretty = serde_json::to_vec_pretty(&value).unwrap();
    e.refused_http(FAPI, &s.headers, &pretty, 401, "signature.digest_mismatch")
        .await;
    // The digest header altered to match the altered body: the signature covers it.
    let mut h = s.headers.clone();
    for (k, v) in h.iter_mut() {
        if *k == "content-digest" {
            *v = content_digest(DigestAlg::Sha256, &changed);
        }
    }
    e.refused_http(FAPI, &h, &changed, 401, "signature.http_invalid")
        .await;
    // Covered but absent.
    let h: Vec<(&str, String)> = s
        .headers
        .iter()
        .filter(|(k, _)| *k != "content-digest")
        .cloned()
        .collect();
    e.refused_http(FAPI, &h, PAYMENT, 401, "signature.digest_missing")
        .await;
    // A digest with no algorithm we check.
    let mut h = s.headers.clone();
    for (k, v) in h.iter_mut() {
        if *k == "content-digest" {
            *v = "md5=:AAAA:".into();
        }
    }
    e.refused_http(FAPI, &h, PAYMENT, 401, "signature.digest_malformed")
        .await;
    // A bodiless GET needs no digest.
    let map = base_headers(&e, b"");
    let (si, sg) = http_sign(
        &e.es,
        "sig1",
        comps(&FAPI_COMPONENTS[..3]),
        "GET",
        "/fapi/accounts",
        None,
        &map,
        params(&e.es, NOW),
    );
    let (a, _) = e
        .send(
            "tpp1",
            "GET",
            "/fapi/accounts",
            &with_sig(map, si, sg).headers,
            b"",
            false,
        )
        .await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c10_c12_repeated_fields_and_query_parameters_are_not_resolved_in_the_attackers_favour() {
    let e = env().await;
    // C10: a covered field sent twice: the combined value is not what was signed.
    let mut map = base_headers(&e, PAYMENT);
    map.insert("x-payment-ref", "ref-1".parse().unwrap());
    let mut names = FAPI_COMPONENTS.to_vec();
    names.push("x-payment-ref");
    let (si, s) = http_sign(
        &e.es,
        "sig1",
        comps(&names),
        "POST",
        FAPI,
        None,
        &map,
        params(&e.es, NOW),
    );
    let good = with_sig(map, si, s);
    let (a, _) = e
        .send("tpp1", "POST", FAPI, &good.headers, PAYMENT, false)
        .await;
    assert_eq!(a.status, 200);
    let mut h = good.headers.clone();
    h.push(("x-payment-ref", "ref-2".into()));
    e.refused_http(FAPI, &h, PAYMENT, 401, "signature.http_invalid")
        .await;
    // C12: the client signs one AccountId; a second one is appended (a server reading the last
    // would see another account). Our own signer refuses to sign such a query at all.
    let map = base_headers(&e, b"");
    let mut c = comps(&FAPI_COMPONENTS[..3]);
    c.push(component("@query-param", &[("name", "AccountId")], &[]).unwrap());
    let twice = RequestView {
        method: "GET",
        scheme: "https",
        authority: "rs.example",
        path: "/fapi/accounts",
        query: Some("AccountId=1&AccountId=2"),
        headers: &map,
    };
    assert!(
        sign("s", c, &params(&e.es, NOW), Message::Request(&twice), |m| e
            .es
            .sign(m))
        .is_err()
    );
    let map = base_headers(&e, b"");
    let mut c = comps(&FAPI_COMPONENTS[..3]);
    c.push(component("@query-param", &[("name", "AccountId")], &[]).unwrap());
    let (si, s) = http_sign(
        &e.es,
        "sig1",
        c,
        "GET",
        "/fapi/accounts",
        Some("AccountId=1"),
        &map,
        params(&e.es, NOW),
    );
    let signed = with_sig(map, si, s);
    let (a, _) = e
        .send(
            "tpp1",
            "GET",
            "/fapi/accounts?AccountId=1",
            &signed.headers,
            b"",
            false,
        )
        .await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    e.refused_http(
        "/fapi/accounts?AccountId=1&AccountId=2",
        &signed.headers,
        b"",
        401,
        "signature.http_component_invalid",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c13_c14_the_external_target_uri_is_what_is_signed_over_both_http_versions() {
    let e = env().await;
    // Signed for the upstream's URI instead of the external one: refused.
    let map = base_headers(&e, PAYMENT);
    let view = RequestView {
        method: "POST",
        scheme: "http",
        authority: &e.up.addr.to_string(),
        path: FAPI,
        query: None,
        headers: &map,
    };
    let (si, s) = sign(
        "sig1",
        comps(FAPI_COMPONENTS),
        &params(&e.es, NOW),
        Message::Request(&view),
        |m| e.es.sign(m),
    )
    .unwrap();
    e.refused_http(
        FAPI,
        &with_sig(map, si, s).headers,
        PAYMENT,
        401,
        "signature.http_invalid",
    )
    .await;
    // @authority is the same component over HTTP/1.1 (Host) and HTTP/2 (:authority).
    let map = base_headers(&e, PAYMENT);
    let mut names = FAPI_COMPONENTS.to_vec();
    names.push("@authority");
    let (si, s) = http_sign(
        &e.es,
        "sig1",
        comps(&names),
        "POST",
        FAPI,
        None,
        &map,
        params(&e.es, NOW),
    );
    let signed = with_sig(map, si, s);
    for h2 in [false, true] {
        let (a, _) = e
            .send("tpp1", "POST", FAPI, &signed.headers, PAYMENT, h2)
            .await;
        assert_eq!(
            a.status,
            200,
            "h2={h2}: {}",
            String::from_utf8_lossy(&a.body)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// `portcullis sign`.

fn run_cli(args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portcullis_sign_makes_requests_the_proxy_accepts() {
    let e = env().await;
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().to_str().unwrap();
    run_cli(&[
        "sign", "keygen", "--alg", "PS256", "--kid", "cli-ps", "--out", out,
    ]);
    run_cli(&[
        "sign", "keygen", "--alg", "ES256", "--kid", "cli-es", "--out", out,
    ]);
    // Add the new public keys to tpp1's set: found on the unknown-kid re-read, no reload.
    let set_path = e.dir.path().join("clients/PSDGB-FCA-123456.json");
    let mut set: Value =
        serde_json::from_str(&std::fs::read_to_string(&set_path).unwrap()).unwrap();
    for kid in ["cli-ps", "cli-es"] {
        let one: Value = serde_json::from_str(
            &std::fs::read_to_string(tmp.path().join(format!("{kid}.jwks.json"))).unwrap(),
        )
        .unwrap();
        set["keys"]
            .as_array_mut()
            .unwrap()
            .push(one["keys"][0].clone());
    }
    std::fs::write(&set_path, set.to_string()).unwrap();
    let body = tmp.path().join("payment.json");
    std::fs::write(&body, PAYMENT).unwrap();
    let key = |k: &str| tmp.path().join(format!("{k}.key")).display().to_string();
    let now = NOW.to_string();
    let line = run_cli(&[
        "sign",
        "jws",
        "--key",
        &key("cli-ps"),
        "--kid",
        "cli-ps",
        "--iss",
        TPP1_ISS,
        "--iat",
        &now,
        "--body",
        body.to_str().unwrap(),
    ]);
    let value = line
        .trim()
        .strip_prefix("x-jws-signature: ")
        .unwrap()
        .to_string();
    let (a, id) = e
        .send(
            "tpp1",
            "POST",
            P314,
            &[("x-jws-signature", value)],
            PAYMENT,
            false,
        )
        .await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(e.p.audit_of(&id).await["signature"]["kid"], "cli-ps");
    let auth = format!("authorization: Bearer {}", e.token);
    let lines = run_cli(&[
        "sign",
        "http",
        "--key",
        &key("cli-es"),
        "--kid",
        "cli-es",
        "--url",
        "https://rs.example/fapi/payments",
        "--body",
        body.to_str().unwrap(),
        "-H",
        &auth,
        "--created",
        &now,
    ]);
    let mut headers: Vec<(&str, String)> = vec![("authorization", format!("Bearer {}", e.token))];
    for l in lines.lines() {
        let (n, v) = l.split_once(": ").unwrap();
        let n = match n {
            "Content-Digest" => "content-digest",
            "Signature-Input" => "signature-input",
            "Signature" => "signature",
            other => panic!("unexpected line {other}"),
        };
        headers.push((n, v.to_string()));
    }
    let (a, id) = e.send("tpp1", "POST", FAPI, &headers, PAYMENT, false).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(
        e.p.audit_of(&id).await["signature"]["alg"],
        "ecdsa-p256-sha256"
    );
}

#[test]
fn signature_config_and_route_requirements_are_validated_at_load() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    let policy = r#"
group: g
upstream: bank
routes:
  - id: a
    method: POST
    path: /a
    signature: {kind: obie-jws, profile: obie-3.1.4, sign_response: true}
  - id: b
    method: POST
    path: /b
    signature: {kind: http-sig}
"#;
    std::fs::write(dir.path().join("policies/p.yaml"), policy).unwrap();
    let load = |signatures: FileSignatures| {
        let mut o = Options::new("127.0.0.1:9".parse().unwrap());
        o.config.signatures = signatures;
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, o.config_text()).unwrap();
        portcullis_proxy::config::Config::load(&path)
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let err = load(FileSignatures::default()).unwrap_err();
    for want in [
        "route a: signature: the config has no `signatures.client_keys`",
        "route a: signature: obie-jws needs `signatures.jws.trust_anchors`",
        "route a: signature: sign_response needs `signatures.response`",
        "route b: signature: the config has no `signatures.client_keys`",
    ] {
        assert!(err.contains(want), "{want} not in:\n{err}");
    }
    let err = load(FileSignatures {
        client: Some("{nope}".into()),
        client_keys: Some(FileClientKeys {
            url: Some("http://x/{client}".into()),
            ..FileClientKeys::default()
        }),
        jws: FileJws {
            algorithms: Some(vec!["HS256".into()]),
            iss: Some("{org_id".into()),
            ..FileJws::default()
        },
        response: Some(FileResponse {
            key: "missing.key".into(),
            kid: "k".into(),
            ..FileResponse::default()
        }),
        ..FileSignatures::default()
    })
    .unwrap_err();
    for want in [
        "signatures.client: unknown placeholder `{nope}`",
        "signatures.client_keys.url",
        "signatures.jws.algorithms[0]",
        "signatures.jws.iss: unclosed",
        "signatures.response.key",
    ] {
        assert!(err.contains(want), "{want} not in:\n{err}");
    }
    std::fs::create_dir_all(dir.path().join("clients")).unwrap();
    let bank = KeyPair::generate(Alg::ES256, "bank").unwrap();
    std::fs::write(dir.path().join("bank.key"), bank.to_pkcs8_pem()).unwrap();
    load(FileSignatures {
        client_keys: Some(FileClientKeys {
            directory: Some(dir.path().join("clients").display().to_string()),
            ..FileClientKeys::default()
        }),
        jws: FileJws {
            trust_anchors: vec![TAN.into()],
            ..FileJws::default()
        },
        response: Some(FileResponse {
            key: dir.path().join("bank.key").display().to_string(),
            kid: "bank".into(),
            ..FileResponse::default()
        }),
        ..FileSignatures::default()
    })
    .unwrap();
    // Route fields are checked too.
    std::fs::write(
        dir.path().join("policies/p.yaml"),
        policy
            .replace("profile: obie-3.1.4", "profile: obie-4")
            .replace("kind: http-sig", "kind: http-sig, profile: obie-3.1.3"),
    )
    .unwrap();
    let err = load(FileSignatures::default()).unwrap_err();
    assert!(
        err.contains("signature.profile: unknown profile `obie-4`"),
        "{err}"
    );
    assert!(
        err.contains("signature.profile: applies only to kind obie-jws"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_keys_can_come_from_a_url_template_over_pinned_tls() {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    let served: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let fetches = Arc::new(AtomicUsize::new(0));
    let (s2, f2) = (Arc::clone(&served), Arc::clone(&fetches));
    let addr = https_endpoint(Arc::new(move |parts: &http::request::Parts, _: &[u8]| {
        f2.fetch_add(1, Ordering::SeqCst);
        match s2.lock().unwrap().get(parts.uri.path()) {
            Some(b) => (200, b.clone()),
            None => (404, "{}".to_string()),
        }
    }))
    .await;
    let e = env_with(Some(format!(
        "https://localhost:{}/keys/{{client}}.json",
        addr.port()
    )))
    .await;
    let path = "/keys/PSDGB-FCA-123456.json".to_string();
    served.lock().unwrap().insert(
        path.clone(),
        json!({"keys": [e.ps.public_jwk()]}).to_string(),
    );
    let sig = e.jws(&obie_header(Profile::Obie314), PAYMENT);
    for _ in 0..2 {
        let (a, _) = e
            .send(
                "tpp1",
                "POST",
                P314,
                std::slice::from_ref(&sig),
                PAYMENT,
                false,
            )
            .await;
        assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    }
    assert_eq!(
        fetches.load(Ordering::SeqCst),
        1,
        "fetched once, then cached"
    );
    // A key published later is found by the one refetch an unknown kid triggers.
    let k2 = KeyPair::generate(Alg::PS256, "tpp1-new").unwrap();
    served.lock().unwrap().insert(
        path.clone(),
        json!({"keys": [e.ps.public_jwk(), k2.public_jwk()]}).to_string(),
    );
    let h = ob_header(Profile::Obie314, Alg::PS256, "tpp1-new", NOW, TPP1_ISS, TAN);
    let sig2 = (
        "x-jws-signature",
        sign_detached(&h, PAYMENT, |m| k2.sign(m)),
    );
    let (a, _) = e
        .send(
            "tpp1",
            "POST",
            P314,
            std::slice::from_ref(&sig2),
            PAYMENT,
            false,
        )
        .await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(fetches.load(Ordering::SeqCst), 2);
    // Garbage never replaces the good set.
    served.lock().unwrap().insert(path, "{garbage".into());
    let mut h = obie_header(Profile::Obie314);
    h.insert("kid".into(), json!("unknown"));
    e.refused_obie(
        P314,
        &[e.jws(&h, PAYMENT)],
        PAYMENT,
        "signature.jws_unknown_key",
        "UK.OBIE.Signature.InvalidClaim",
    )
    .await;
    let (a, _) = e
        .send(
            "tpp1",
            "POST",
            P314,
            std::slice::from_ref(&sig),
            PAYMENT,
            false,
        )
        .await;
    assert_eq!(a.status, 200);
    // A client whose set cannot be fetched: fail closed, 503 in the OBIE body.
    let before = e.up.count();
    let h = ob_header(
        Profile::Obie314,
        Alg::PS256,
        "tpp2-ps",
        NOW,
        "PSDGB-FCA-654321/tpp-two-software-id",
        TAN,
    );
    let sig = (
        "x-jws-signature",
        sign_detached(&h, PAYMENT, |m| e.other.sign(m)),
    );
    let (a, id) = e.send("tpp2", "POST", P314, &[sig], PAYMENT, false).await;
    assert_eq!(a.status, 503);
    assert_eq!(a.json()["Code"], "503 ServiceUnavailable");
    assert_eq!(
        a.json()["Errors"][0]["ErrorCode"],
        "UK.OBIE.UnexpectedError"
    );
    assert_eq!(e.up.count(), before);
    assert_eq!(
        e.p.audit_of(&id).await["reason"],
        "signature.jws_keys_unavailable"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dpop_header_must_be_covered_when_present() {
    let e = env().await;
    let mut map = base_headers(&e, PAYMENT);
    map.insert("dpop", "eyJhbGciOiJFUzI1NiJ9.e30.c2ln".parse().unwrap());
    let (si, s) = http_sign(
        &e.es,
        "sig1",
        comps(FAPI_COMPONENTS),
        "POST",
        FAPI,
        None,
        &map,
        params(&e.es, NOW),
    );
    e.refused_http(
        FAPI,
        &with_sig(map.clone(), si, s).headers,
        PAYMENT,
        401,
        "signature.http_coverage",
    )
    .await;
    let mut names = FAPI_COMPONENTS.to_vec();
    names.push("dpop");
    let (si, s) = http_sign(
        &e.es,
        "sig1",
        comps(&names),
        "POST",
        FAPI,
        None,
        &map,
        params(&e.es, NOW),
    );
    let (a, _) = e
        .send(
            "tpp1",
            "POST",
            FAPI,
            &with_sig(map, si, s).headers,
            PAYMENT,
            false,
        )
        .await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
}
