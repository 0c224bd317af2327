use std::collections::HashSet;
use std::path::Path;
use std::sync::OnceLock;

use super::*;
use portcullis_crypto::jose::detached::{self, Profile};
use portcullis_crypto::jose::dpop::{verify, Expect};
use portcullis_crypto::jose::jwk::from_jwk;
use portcullis_crypto::jose::Alg;

fn certs() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        portcullis_proxy::install_crypto_provider();
        let d = tempfile::tempdir().unwrap();
        portcullis_tools::devcerts::generate(d.path()).unwrap();
        d
    })
    .path()
}

/// A two-client scenario (DPoP-bound and certificate-bound) with a signed POST route.
fn scenario(http2: bool) -> (Arc<Scenario>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let jws = KeyPair::generate(Alg::ES256, "sig-1").unwrap();
    std::fs::write(dir.path().join("sig.key"), jws.to_pkcs8_pem()).unwrap();
    let c = |f: &str| certs().join(f).display().to_string();
    let text = format!(
        r#"
target: {{address: 127.0.0.1:1, ca: {ca}, public_base_url: "https://API.example:443"}}
clients:
  - name: d
    cert: {cert}
    key: {key}
    token: {{signing_key: {as_key}, issuer: https://as, audience: https://rs, scopes: [a, b],
             claims: {{openbanking_intent_id: c-1}}, lifetime: 20s, binding: dpop}}
  - name: c
    cert: {cert}
    key: {key}
    token: {{signing_key: {as_key}, issuer: https://as, audience: https://rs, binding: cert}}
routes:
  - name: pay
    method: POST
    path: /pay?x=1
    headers: {{x-idempotency-key: "{{uuid}}", accept: application/json}}
    body: {{inline: '{{"id":"{{uuid}}"}}'}}
    jws: {{format: obie, key: {sig}, kid: sig-1, iss: org/ssa}}
load: {{requests: 1, protocol: {proto}}}
"#,
        ca = c("ca.pem"),
        cert = c("tpp1.pem"),
        key = c("tpp1.key"),
        as_key = c("as.key"),
        sig = dir.path().join("sig.key").display(),
        proto = if http2 { "http2" } else { "http1" },
    );
    let path = dir.path().join("s.yaml");
    std::fs::write(&path, text).unwrap();
    let s = Scenario::load_with(&path, &|_| None).unwrap_or_else(|e| panic!("{e}"));
    (Arc::new(s), dir)
}

fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&portcullis_crypto::jose::b64url_decode(payload).unwrap()).unwrap()
}

fn header<'a>(r: &'a Request<Full<Bytes>>, name: &str) -> &'a str {
    r.headers()[name].to_str().unwrap()
}

#[test]
fn a_dpop_request_carries_a_bound_token_a_fresh_proof_and_a_signed_body() {
    let (s, _d) = scenario(false);
    let f = Fapi::new(Arc::clone(&s)).unwrap();
    assert_eq!(
        f.tokens_minted.load(Ordering::Relaxed),
        2,
        "one token per client"
    );
    let r1 = f.request(0, 0).unwrap();
    let r2 = f.request(0, 0).unwrap();
    assert_eq!(r1.uri(), "/pay?x=1");
    assert_eq!(header(&r1, "host"), "localhost");
    let auth = header(&r1, "authorization");
    let token = auth.strip_prefix("DPoP ").unwrap();
    assert_eq!(
        header(&r2, "authorization"),
        auth,
        "the token is minted once"
    );
    let Binding::Dpop(k) = &s.clients[0].token.as_ref().unwrap().binding else {
        panic!("dpop binding")
    };
    let jkt = Prover::new(Arc::clone(k)).unwrap().jkt;
    let c = claims(token);
    assert_eq!(c["cnf"]["jkt"], jkt.as_str());
    assert_eq!(c["scope"], "a b");
    assert_eq!(c["openbanking_intent_id"], "c-1");
    assert_eq!(c["client_id"], "d");
    assert_eq!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), 20);
    // Each proof verifies for this request (htu: base URL normalized, no query) and is new.
    let now = super::now();
    let mut jtis = HashSet::new();
    for r in [&r1, &r2] {
        let p = verify(
            header(r, "dpop"),
            &Expect {
                method: "POST",
                htu: "https://api.example/pay",
                access_token: Some(token),
                now,
                max_age: 60,
                skew: 5,
                algs: &[Alg::ES256],
                nonce: None,
            },
        )
        .unwrap();
        assert_eq!(p.jkt, jkt);
        jtis.insert(p.jti_hash);
    }
    assert_eq!(jtis.len(), 2, "a fresh jti per proof");
    assert_ne!(
        header(&r1, "x-idempotency-key"),
        header(&r2, "x-idempotency-key")
    );
    assert_eq!(header(&r1, "accept"), "application/json");
    // The body's {uuid} is filled, and the JWS signs exactly the body sent.
    let (headers, body) = into_parts(r1);
    assert!(!body.windows(6).any(|w| w == b"{uuid}"));
    let d = detached::parse(headers["x-jws-signature"].to_str().unwrap()).unwrap();
    let checked = detached::check_header(
        &d,
        &detached::Expect {
            profile: Profile::Obie314,
            algs: &[Alg::ES256],
            now,
            max_age: 60,
            skew: 5,
            iss: Some("org/ssa"),
            trust_anchors: &["openbanking.org.uk".to_string()],
        },
    )
    .unwrap();
    let key = &s.routes[0].jws.as_ref().unwrap().key;
    let vk = from_jwk(key.public_jwk().as_object().unwrap()).unwrap();
    detached::verify(&d, &checked, &body, &vk).unwrap();
}

/// The headers and the whole body of a built request.
fn into_parts(r: Request<Full<Bytes>>) -> (http::HeaderMap, Bytes) {
    use http_body_util::BodyExt;
    let (parts, body) = r.into_parts();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let bytes = rt.block_on(body.collect()).unwrap().to_bytes();
    (parts.headers, bytes)
}

#[test]
fn a_cert_bound_token_is_bearer_with_the_certificate_thumbprint_and_no_proof() {
    let (s, _d) = scenario(true);
    let f = Fapi::new(Arc::clone(&s)).unwrap();
    let r = f.request(0, 1).unwrap();
    assert_eq!(r.uri(), "https://localhost/pay?x=1", "HTTP/2: absolute URI");
    assert!(!r.headers().contains_key("host"));
    assert!(!r.headers().contains_key("dpop"));
    let token = header(&r, "authorization").strip_prefix("Bearer ").unwrap();
    let c = claims(token);
    assert_eq!(
        c["cnf"]["x5t#S256"],
        s.clients[1].cert_thumbprint.as_deref().unwrap()
    );
    assert!(c.get("scope").is_none());
    assert!(!f.uses_dpop(1));
    assert!(f.uses_dpop(0));
}

#[test]
fn tokens_are_reminted_after_three_quarters_of_their_lifetime() {
    let (s, _d) = scenario(false);
    let f = Fapi::new(Arc::clone(&s)).unwrap();
    let (first, _) = f.token(0, 0).unwrap();
    let c = claims(
        first
            .authorization
            .to_str()
            .unwrap()
            .strip_prefix("DPoP ")
            .unwrap(),
    );
    // Lifetime 20 s: due 15 s after issue.
    assert_eq!(first.refresh_at, c["iat"].as_i64().unwrap() + 15);
    let (same, _) = f.token(0, first.refresh_at - 1).unwrap();
    assert_eq!(first.authorization, same.authorization);
    assert_eq!(f.tokens_minted.load(Ordering::Relaxed), 2);
    let (next, _) = f.token(0, first.refresh_at).unwrap();
    assert_ne!(first.authorization, next.authorization);
    assert_eq!(f.tokens_minted.load(Ordering::Relaxed), 3);
    assert!(next.refresh_at >= first.refresh_at);
}

#[test]
fn a_nonce_challenge_is_retried_and_the_nonce_goes_into_later_proofs() {
    let (s, _d) = scenario(false);
    let f = Fapi::new(Arc::clone(&s)).unwrap();
    let mut headers = http::HeaderMap::new();
    headers.insert("dpop-nonce", HeaderValue::from_static("n-1"));
    headers.insert(
        "www-authenticate",
        HeaderValue::from_static("DPoP error=\"use_dpop_nonce\""),
    );
    let challenge = Answer {
        status: http::StatusCode::UNAUTHORIZED,
        headers: headers.clone(),
        body: Bytes::new(),
    };
    assert!(f.observe(&challenge));
    headers.remove("www-authenticate");
    let ok = Answer {
        status: http::StatusCode::OK,
        headers,
        body: Bytes::new(),
    };
    assert!(!f.observe(&ok), "a nonce on a success is kept, not retried");
    let r = f.request(0, 0).unwrap();
    let proof = header(&r, "dpop");
    let payload = claims(proof);
    assert_eq!(payload["nonce"], "n-1");
    assert_eq!(payload["htm"], "POST");
    assert_eq!(payload["htu"], "https://api.example/pay");
}

#[test]
fn a_proof_verifies_only_for_its_own_request() {
    let key = Arc::new(KeyPair::generate(Alg::ES256, "dpop").unwrap());
    let p = Prover::new(key).unwrap();
    let token = "header.payload.sig";
    let htu = "https://localhost/accounts";
    let proof = p.proof(
        "GET",
        &Value::String(htu.into()).to_string(),
        &sha256_b64url(token.as_bytes()),
        None,
        1_800_000_000,
        "j1",
    );
    let expect = |method| Expect {
        method,
        htu,
        access_token: Some(token),
        now: 1_800_000_000,
        max_age: 60,
        skew: 5,
        algs: &[Alg::ES256],
        nonce: None,
    };
    assert_eq!(verify(&proof, &expect("GET")).unwrap().jkt, p.jkt);
    assert!(verify(&proof, &expect("POST")).is_err());
}

#[test]
fn dpop_proof_modes_make_the_refusals_a_proxy_must_give() {
    let dir = tempfile::tempdir().unwrap();
    let c = |f: &str| certs().join(f).display().to_string();
    let text = format!(
        r#"
target: {{address: 127.0.0.1:1, ca: {ca}}}
clients:
  - name: d
    cert: {cert}
    key: {key}
    token: {{signing_key: {as_key}, issuer: https://as, audience: https://rs, binding: dpop}}
routes:
  - {{name: fresh, path: /a}}
  - {{name: none, path: /a, dpop_proof: none}}
  - {{name: replay, path: /a, dpop_proof: replay}}
load: {{requests: 1}}
"#,
        ca = c("ca.pem"),
        cert = c("tpp1.pem"),
        key = c("tpp1.key"),
        as_key = c("as.key"),
    );
    let path = dir.path().join("s.yaml");
    std::fs::write(&path, text).unwrap();
    let s = Arc::new(Scenario::load_with(&path, &|_| None).unwrap_or_else(|e| panic!("{e}")));
    let f = Fapi::new(Arc::clone(&s)).unwrap();
    let proof = |route: usize| {
        f.request(route, 0)
            .unwrap()
            .headers()
            .get("dpop")
            .map(|v| v.to_str().unwrap().to_string())
    };
    let (a, b) = (proof(0).unwrap(), proof(0).unwrap());
    assert_ne!(a, b, "fresh: a new proof per request");
    assert_eq!(proof(1), None, "none: no DPoP header");
    let none = f.request(1, 0).unwrap();
    assert!(
        header(&none, "authorization").starts_with("DPoP "),
        "the token is still sent"
    );
    let first = proof(2).unwrap();
    assert_ne!(first, a);
    assert_eq!(proof(2).unwrap(), first, "replay: the first proof again");
    assert_eq!(proof(2).unwrap(), first);
}

#[test]
fn a_numbered_path_names_a_new_object_per_request_and_its_proof_follows() {
    let dir = tempfile::tempdir().unwrap();
    let c = |f: &str| certs().join(f).display().to_string();
    let text = format!(
        r#"
target: {{address: 127.0.0.1:1, ca: {ca}, public_base_url: "https://rs.example"}}
clients:
  - name: d
    cert: {cert}
    key: {key}
    token: {{signing_key: {as_key}, issuer: https://as, audience: https://rs, binding: dpop}}
routes:
  - {{name: enumerate, path: "/accounts/acc-{{n}}/balances?x=1"}}
load: {{requests: 1}}
"#,
        ca = c("ca.pem"),
        cert = c("tpp1.pem"),
        key = c("tpp1.key"),
        as_key = c("as.key"),
    );
    let path = dir.path().join("s.yaml");
    std::fs::write(&path, text).unwrap();
    let s = Arc::new(Scenario::load_with(&path, &|_| None).unwrap_or_else(|e| panic!("{e}")));
    assert!(s.routes[0].numbered);
    let f = Fapi::new(Arc::clone(&s)).unwrap();
    for n in 0..3 {
        let r = f.request(0, 0).unwrap();
        assert_eq!(
            r.uri().to_string(),
            format!("/accounts/acc-{n}/balances?x=1")
        );
        let htu = format!("https://rs.example/accounts/acc-{n}/balances");
        assert_eq!(claims(header(&r, "dpop"))["htu"], htu.as_str());
    }
}
