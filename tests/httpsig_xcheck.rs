//! RFC 9421 cross-checked against an independent implementation (`httpsig-hyper`, RustCrypto),
//! so our signer and verifier cannot share one blind spot:
//! - requests it signs (P-256 and Ed25519, FAPI 2.0 components, its own Content-Digest) pass
//!   through the proxy;
//! - requests our signer makes (`portcullis sign http`) verify with it, digest included;
//! - the responses the proxy signs (`tag=fapi-2-response`, bound to the request with `req`)
//!   verify with it.

mod common;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use httpsig_hyper::prelude::message_component::HttpMessageComponentId;
use httpsig_hyper::prelude::{AlgorithmName, HttpSignatureParams, PublicKey, SecretKey};
use httpsig_hyper::{
    ContentDigestType, MessageSignatureReq, MessageSignatureRes, RequestContentDigest,
};
use portcullis_crypto::jose::keypair::KeyPair;
use portcullis_crypto::jose::sign::SigningKey;
use portcullis_crypto::jose::{b64url_decode, Alg};
use rustls_pki_types::pem::PemObject;
use serde_json::json;

const NOW: i64 = 1_800_000_000;
const PAYMENT: &[u8] = br#"{"Data":{"Initiation":{"InstructedAmount":{"Amount":"165.88","Currency":"GBP"}}},"Risk":{}}"#;
const URL: &str = "https://rs.example/fapi/payments";
const FAPI: &[&str] = &["@method", "@target-uri", "authorization", "content-digest"];

type Body = http_body_util::combinators::BoxBody<Bytes, httpsig_hyper::HyperDigestError>;

/// The kit's [`Env`] (on a manual clock at [`NOW`]) and tpp1's keys, the bank's response key
/// and tpp1's access token.
struct XcheckEnv {
    env: Env,
    es: KeyPair,
    ed: KeyPair,
    bank: KeyPair,
    token: String,
}

impl std::ops::Deref for XcheckEnv {
    type Target = Env;
    fn deref(&self) -> &Env {
        &self.env
    }
}

async fn env() -> XcheckEnv {
    let dirs = tempfile::tempdir().unwrap();
    let clients = dirs.path().join("clients");
    std::fs::create_dir_all(&clients).unwrap();
    let es = KeyPair::generate(Alg::ES256, "tpp1-es").unwrap();
    let ed = KeyPair::generate(Alg::EdDSA, "tpp1-ed").unwrap();
    let set = json!({"keys": [es.public_jwk(), ed.public_jwk()]});
    std::fs::write(clients.join("tpp-one.json"), set.to_string()).unwrap();
    // An ES256 response key: the other implementation has no PS256 (RSA-PSS SHA-256).
    let bank = KeyPair::generate(Alg::ES256, "bank-1").unwrap();
    let bank_key = dirs.path().join("bank.key");
    std::fs::write(&bank_key, bank.to_pkcs8_pem()).unwrap();
    let as_key = SigningKey::generate(Alg::ES256, "as-1").unwrap();
    let jwks = dirs.path().join("as-jwks.json");
    std::fs::write(&jwks, as_key.jwks().to_string()).unwrap();
    let der = rustls_pki_types::CertificateDer::from_pem_file(certs().join("tpp1.pem")).unwrap();
    let token = as_key.access_token(&json!({
        "iss": "https://as.example", "aud": "https://rs.example", "exp": NOW + 3600,
        "iat": NOW, "client_id": "tpp-one", "jti": "t-1",
        "cnf": {"x5t#S256": portcullis_crypto::pki::thumbprint_s256(der.as_ref())},
    }));
    let up = Upstream::start(Behaviour::Ok).await;
    let mut o = Options::new(up.addr);
    o.policy = r#"
group: x
upstream: bank
routes:
  - id: fapi.payments
    method: POST
    path: /fapi/payments
    auth: {profile: fapi2}
    signature: {kind: http-sig, sign_response: true}
"#
    .to_string();
    o.config.issuers.insert(
        "as".into(),
        file_issuer("https://as.example", "https://rs.example", &jwks),
    );
    o.config.signatures = FileSignatures {
        client: Some("{client_id}".into()),
        client_keys: Some(FileClientKeys {
            directory: Some(clients.display().to_string()),
            ..FileClientKeys::default()
        }),
        http: FileHttpSig {
            public_base_url: Some("https://rs.example".into()),
            ..FileHttpSig::default()
        },
        response: Some(FileResponse {
            key: bank_key.display().to_string(),
            kid: "bank-1".into(),
            ..FileResponse::default()
        }),
        ..FileSignatures::default()
    };
    XcheckEnv {
        env: Env::start(o, up, dirs, Some(NOW)).await,
        es,
        ed,
        bank,
        token,
    }
}

/// The other implementation's public key for one of ours (SEC1 point or raw Ed25519).
fn their_public(k: &KeyPair) -> PublicKey {
    let jwk = k.public_jwk();
    match k.alg {
        Alg::ES256 => {
            let mut point = vec![4u8];
            point.extend(b64url_decode(jwk["x"].as_str().unwrap()).unwrap());
            point.extend(b64url_decode(jwk["y"].as_str().unwrap()).unwrap());
            PublicKey::from_bytes(&AlgorithmName::EcdsaP256Sha256, &point).unwrap()
        }
        Alg::EdDSA => PublicKey::from_bytes(
            &AlgorithmName::Ed25519,
            &b64url_decode(jwk["x"].as_str().unwrap()).unwrap(),
        )
        .unwrap(),
        Alg::PS256 | Alg::RS256 => unreachable!("no RSA in httpsig"),
    }
}

fn their_alg(k: &KeyPair) -> AlgorithmName {
    match k.alg {
        Alg::ES256 => AlgorithmName::EcdsaP256Sha256,
        _ => AlgorithmName::Ed25519,
    }
}

fn body(b: &'static [u8]) -> Body {
    Full::new(Bytes::from_static(b))
        .map_err(|never| match never {})
        .boxed()
}

/// A FAPI 2.0 request signed by the other implementation.
async fn their_signed_request(e: &XcheckEnv, key: &KeyPair) -> http::Request<Body> {
    let req = http::Request::builder()
        .method("POST")
        .uri(URL)
        .header("authorization", format!("Bearer {}", e.token))
        .body(body(PAYMENT))
        .unwrap();
    let mut req = req
        .set_content_digest(&ContentDigestType::Sha256)
        .await
        .unwrap();
    let sk = SecretKey::from_pem(&their_alg(key), &key.to_pkcs8_pem()).unwrap();
    let comps: Vec<HttpMessageComponentId> = FAPI
        .iter()
        .map(|c| HttpMessageComponentId::try_from(*c).unwrap())
        .collect();
    let mut params = HttpSignatureParams::try_new(&comps).unwrap();
    params.set_key_info(&sk);
    params.set_keyid(&key.kid);
    params.set_tag("fapi-2-request");
    params.set_created(NOW as u64);
    req.set_message_signature(&params, &sk, Some("sig1"))
        .await
        .unwrap();
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_signed_by_httpsig_pass_and_our_signed_responses_verify_with_it() {
    let e = env().await;
    for key in [&e.es, &e.ed] {
        let theirs = their_signed_request(&e, key).await;
        let id = uuid::Uuid::new_v4().to_string();
        let mut r = req("POST", "/fapi/payments").header("x-fapi-interaction-id", &id);
        for name in [
            "authorization",
            "content-digest",
            "signature-input",
            "signature",
        ] {
            r = r.header(name, theirs.headers()[name].clone());
        }
        let mut c = e.p.client(Some("tpp1"), false).await.unwrap();
        let a = c
            .send(r.body(Full::new(Bytes::from_static(PAYMENT))).unwrap())
            .await
            .unwrap();
        assert_eq!(
            a.status,
            200,
            "{:?}: {}",
            key.alg,
            String::from_utf8_lossy(&a.body)
        );
        let rec = e.p.audit_of(&id).await;
        assert_eq!(rec["signature"]["kid"], key.kid.as_str());
        assert_eq!(e.up.seen().last().unwrap().body.as_ref(), PAYMENT);
        // The proxy's response signature, bound to their request, verifies with their code.
        let mut resp = http::Response::builder().status(a.status);
        for (k, v) in &a.headers {
            resp = resp.header(k, v);
        }
        let resp = resp.body(Full::new(a.body.clone())).unwrap();
        let bank = their_public(&e.bank);
        resp.verify_message_signature(&bank, Some("bank-1"), Some(&theirs))
            .await
            .unwrap_or_else(|err| panic!("{:?}: response signature: {err}", key.alg));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_signed_by_our_signer_verify_with_httpsig() {
    let e = env().await;
    for key in [&e.es, &e.ed] {
        let mut extra = http::HeaderMap::new();
        extra.insert(
            "authorization",
            format!("Bearer {}", e.token).parse().unwrap(),
        );
        let lines = portcullis_tools::sign::http_headers(
            key,
            "POST",
            URL,
            Some(PAYMENT),
            &extra,
            "fapi-2-request",
            Some("n-1"),
            "sig1",
            NOW,
        )
        .unwrap();
        let build = |b: &'static [u8]| {
            let mut r = http::Request::builder()
                .method("POST")
                .uri(URL)
                .header("authorization", format!("Bearer {}", e.token));
            for (n, v) in &lines {
                r = r.header(n.as_str(), v.as_str());
            }
            r.body(body(b)).unwrap()
        };
        let pk = their_public(key);
        build(PAYMENT)
            .verify_message_signature(&pk, Some(&key.kid))
            .await
            .unwrap_or_else(|err| panic!("{:?}: {err}", key.alg));
        assert!(build(PAYMENT).verify_content_digest().await.is_ok());
        // Their verifier is not a rubber stamp: another key, or another body, fails.
        let other = their_public(if key.alg == Alg::ES256 {
            &e.bank
        } else {
            &e.es
        });
        assert!(build(PAYMENT)
            .verify_message_signature(&other, Some(&key.kid))
            .await
            .is_err());
        assert!(build(b"{}").verify_content_digest().await.is_err());
    }
}
