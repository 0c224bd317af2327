//! Access tokens and sender constraints through the proxy (docs/attacks.md groups A, D and E): real
//! TLS clients, a recording upstream, and each refusal checked three ways.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use portcullis_base::clock::Clock;
use portcullis_crypto::jose::sign::SigningKey;
use portcullis_crypto::jose::{b64url, Alg};
use rustls_pki_types::pem::PemObject;
use serde_json::{json, Value};

const ISS: &str = "https://as.example";
const AUD: &str = "https://rs.example";
const BASE: &str = "https://rs.example";
const NOW: i64 = 1_800_000_000;

const POLICY: &str = r#"
group: t
upstream: bank
routes:
  - id: fapi2.accounts
    method: GET
    path: /accounts
    auth: {profile: fapi2}
  - id: fapi2.payments
    method: POST
    path: /payments
    auth: {profile: fapi2}
  - id: fapi1.accounts
    method: GET
    path: /fapi1/accounts
    auth: {profile: fapi1-advanced}
  - id: bearer.accounts
    method: GET
    path: /bearer/accounts
    auth: {profile: bearer, forward_credentials: true}
  - id: nonce.accounts
    method: GET
    path: /nonce/accounts
    auth: {profile: fapi2, dpop_nonce: true}
"#;

/// The kit's [`Env`] (on a manual clock at [`NOW`]) and the issuer's signing key.
struct TokenEnv {
    env: Env,
    key: SigningKey,
}

impl std::ops::Deref for TokenEnv {
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

async fn env() -> TokenEnv {
    let key = SigningKey::generate(Alg::ES256, "as-1").unwrap();
    let jwks = tempfile::tempdir().unwrap();
    let jwks_path = jwks.path().join("jwks.json");
    std::fs::write(&jwks_path, key.jwks().to_string()).unwrap();
    let up = Upstream::start(Behaviour::Ok).await;
    let mut o = Options::new(up.addr);
    o.policy = POLICY.to_string();
    let issuer = FileIssuer {
        clock_skew: Some(dur("10s")),
        ..file_issuer(ISS, AUD, &jwks_path)
    };
    o.config.issuers.insert("as".into(), issuer);
    o.config.dpop.public_base_url = Some(BASE.into());
    TokenEnv {
        env: Env::start(o, up, jwks, Some(NOW)).await,
        key,
    }
}

fn claims(extra: Value) -> Value {
    let mut c = json!({
        "iss": ISS, "aud": AUD, "exp": NOW + 300, "iat": NOW, "nbf": NOW - 1,
        "client_id": "tpp-one", "sub": "psu-1", "scope": "accounts payments", "jti": "tok-1",
    });
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

fn cert_bound(env: &TokenEnv) -> String {
    env.key
        .access_token(&claims(json!({"cnf": {"x5t#S256": thumb("tpp1")}})))
}

impl TokenEnv {
    /// Sends `method path` as `identity` with the given headers; returns the answer and the
    /// interaction id.
    async fn send(
        &self,
        identity: &str,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
    ) -> (portcullis_tools::client::Answer, String) {
        let id = uuid::Uuid::new_v4().to_string();
        let mut r = req(method, path).header("x-fapi-interaction-id", &id);
        for (k, v) in headers {
            r = r.header(*k, v.as_str());
        }
        let mut c = self.p.client(Some(identity), false).await.unwrap();
        (
            c.send(r.body(Full::new(Bytes::new())).unwrap())
                .await
                .unwrap(),
            id,
        )
    }

    async fn refused(
        &self,
        identity: &str,
        path: &str,
        headers: &[(&str, String)],
        status: u16,
        reason: &str,
    ) -> portcullis_tools::client::Answer {
        let before = self.up.count();
        let (a, id) = self.send(identity, "GET", path, headers).await;
        assert_eq!(
            a.status.as_u16(),
            status,
            "{reason}: {}",
            String::from_utf8_lossy(&a.body)
        );
        assert_eq!(
            a.json()["reason"],
            reason,
            "{}",
            String::from_utf8_lossy(&a.body)
        );
        assert_eq!(
            self.up.count(),
            before,
            "{reason}: the upstream must receive nothing"
        );
        let rec = self.p.audit_of(&id).await;
        assert_eq!(rec["reason"], reason);
        // Fail closed: a dependency that cannot answer decides nothing about the request.
        let decision = if status == 503 { "error" } else { "deny" };
        assert_eq!(rec["decision"], decision);
        a
    }
}

fn bearer(t: &str) -> (&'static str, String) {
    ("authorization", format!("Bearer {t}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_bound_token_over_its_certificate_is_forwarded_with_vouched_identity() {
    let e = env().await;
    let t = cert_bound(&e);
    let (a, id) = e
        .send(
            "tpp1",
            "GET",
            "/accounts",
            &[bearer(&t), ("x-portcullis-client-id", "forged".into())],
        )
        .await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let seen = &e.up.seen()[0];
    assert_eq!(seen.headers["x-portcullis-client-id"], "tpp-one");
    assert_eq!(seen.headers["x-portcullis-subject"], "psu-1");
    assert_eq!(seen.headers["x-portcullis-scope"], "accounts payments");
    assert!(
        !seen.headers.contains_key("authorization"),
        "credentials are not forwarded by default"
    );
    let rec = e.p.audit_of(&id).await;
    assert_eq!(rec["client_id"], "tpp-one");
    assert_eq!(rec["token_jti"], "tok-1");
    assert_eq!(
        rec["token_hash"],
        portcullis_crypto::jose::sha256_b64url(t.as_bytes())
    );
    let log = std::fs::read_to_string(e.p.dir.path().join("audit.log")).unwrap();
    assert!(!log.contains(&t), "the token never reaches the audit log");
    // Lower-case scheme (RFC 9110 §11.1) on a route that forwards credentials.
    let (a, _) = e
        .send(
            "tpp1",
            "GET",
            "/bearer/accounts",
            &[("authorization", format!("bearer {t}"))],
        )
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(
        e.up.seen()[1].headers["authorization"],
        format!("bearer {t}").as_str()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_token_is_verified_once_but_its_expiry_is_checked_every_time() {
    let e = env().await;
    let t = cert_bound(&e);
    for _ in 0..3 {
        assert_eq!(
            e.send("tpp1", "GET", "/accounts", &[bearer(&t)])
                .await
                .0
                .status,
            200
        );
    }
    let rt = e.p.shared.runtime.load();
    assert_eq!(
        rt.tokens
            .verifications
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(rt.tokens.hits.load(std::sync::atomic::Ordering::Relaxed), 2);
    drop(rt);
    e.clock().advance(400);
    e.refused("tpp1", "/accounts", &[bearer(&t)], 401, "token.expired")
        .await;
    // The binding is checked on every hit too: the cached token from another certificate.
    e.clock().advance(-400);
    e.refused(
        "tpp2",
        "/accounts",
        &[bearer(&t)],
        401,
        "binding.cert_mismatch",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_binding_failures_are_401_invalid_token() {
    let e = env().await;
    let t = cert_bound(&e);
    let a = e
        .refused(
            "tpp2",
            "/accounts",
            &[bearer(&t)],
            401,
            "binding.cert_mismatch",
        )
        .await;
    assert_eq!(
        a.headers["www-authenticate"],
        "Bearer error=\"invalid_token\""
    );
    // E08: encoding variants of the right thumbprint never match.
    let right = thumb("tpp1");
    let raw = portcullis_crypto::jose::b64url_decode(&right).unwrap();
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let std_b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &raw);
    for variant in [
        format!("{right}="),
        std_b64,
        hex.clone(),
        hex.to_uppercase(),
        right.to_uppercase(),
    ] {
        let t = e.key.access_token(&claims(
            json!({"cnf": {"x5t#S256": variant}, "jti": variant}),
        ));
        e.refused(
            "tpp1",
            "/accounts",
            &[bearer(&t)],
            401,
            "binding.cert_mismatch",
        )
        .await;
    }
    // An unbound token on FAPI routes; accepted on the bearer route.
    let plain = e.key.access_token(&claims(json!({})));
    e.refused(
        "tpp1",
        "/accounts",
        &[bearer(&plain)],
        401,
        "binding.unbound_token",
    )
    .await;
    e.refused(
        "tpp1",
        "/fapi1/accounts",
        &[bearer(&plain)],
        401,
        "binding.unbound_token",
    )
    .await;
    assert_eq!(
        e.send("tpp1", "GET", "/bearer/accounts", &[bearer(&plain)])
            .await
            .0
            .status,
        200
    );
}

/// FAPI 1 Part 2 §6.2.1 and §8.6: a `fapi1-advanced` route takes certificate-bound tokens
/// signed with PS256 or ES256 only; the same issuer's EdDSA token (which FAPI 2.0 allows)
/// passes on the FAPI 2.0 route and is refused on the FAPI 1 route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fapi1_advanced_routes_take_only_ps256_and_es256_certificate_bound_tokens() {
    use portcullis_crypto::jose::keypair::KeyPair;
    let (es, ed) = (
        SigningKey::generate(Alg::ES256, "es").unwrap(),
        SigningKey::generate(Alg::EdDSA, "ed").unwrap(),
    );
    let ps = KeyPair::generate(Alg::PS256, "ps").unwrap();
    let set = [es.jwks(), ed.jwks(), ps.jwks()].map(|s| s["keys"][0].clone());
    let dir = tempfile::tempdir().unwrap();
    let jwks_path = dir.path().join("jwks.json");
    std::fs::write(&jwks_path, json!({ "keys": set }).to_string()).unwrap();
    let up = Upstream::start(Behaviour::Ok).await;
    let mut o = Options::new(up.addr);
    o.policy = POLICY.to_string();
    o.config
        .issuers
        .insert("as".into(), file_issuer(ISS, AUD, &jwks_path));
    let e = TokenEnv {
        env: Env::start(o, up, dir, Some(NOW)).await,
        key: es,
    };
    let bound = json!({"cnf": {"x5t#S256": thumb("tpp1")}});
    let ps_token = {
        let header = json!({"alg": "PS256", "typ": "at+jwt", "kid": "ps"});
        let input = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims(bound.clone()).to_string().as_bytes())
        );
        format!("{input}.{}", b64url(&ps.sign(input.as_bytes())))
    };
    for t in [e.key.access_token(&claims(bound.clone())), ps_token] {
        let (a, _) = e
            .send("tpp1", "GET", "/fapi1/accounts", &[bearer(&t)])
            .await;
        assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    }
    let t = ed.access_token(&claims(bound));
    let (a, _) = e.send("tpp1", "GET", "/accounts", &[bearer(&t)]).await;
    assert_eq!(a.status, 200, "EdDSA is a FAPI 2.0 algorithm");
    // Verified and cached on the FAPI 2.0 route; still refused on the FAPI 1 route.
    e.refused(
        "tpp1",
        "/fapi1/accounts",
        &[bearer(&t)],
        401,
        "token.alg_not_allowed",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_checks_each_refuse_with_their_own_reason() {
    let e = env().await;
    let x5t = thumb("tpp1");
    let cnf = json!({"x5t#S256": x5t});
    let tok = |extra: Value| {
        let mut c = claims(extra);
        c["cnf"] = cnf.clone();
        e.key.access_token(&c)
    };
    let other = SigningKey::generate(Alg::ES256, "as-1").unwrap();
    let unknown = SigningKey::generate(Alg::ES256, "nope").unwrap();
    let h = |v: Value| b64url(v.to_string().as_bytes());
    let good = tok(json!({}));
    let (gh, rest) = good.split_once('.').unwrap();
    let _ = gh;
    let none = format!(
        "{}.{}",
        h(json!({"alg": "none", "typ": "at+jwt", "kid": "as-1"})),
        rest.split_once('.').unwrap().0
    ) + ".";
    let self_signed = other.sign_compact(
        &json!({"typ": "at+jwt", "kid": "as-1", "jwk": other.public_jwk(false)}),
        &claims(json!({"cnf": cnf})),
    );
    let cases: Vec<(String, u16, &str)> = vec![
        (tok(json!({"exp": NOW - 11})), 401, "token.expired"),
        (tok(json!({"exp": null})), 401, "token.exp_missing"),
        (tok(json!({"exp": "9999999999"})), 401, "token.claim_type"),
        (tok(json!({"nbf": NOW + 60})), 401, "token.not_yet_valid"),
        (tok(json!({"iat": NOW + 60})), 401, "token.issued_at"),
        (
            tok(json!({"iss": "https://evil.example"})),
            401,
            "token.issuer",
        ),
        (
            tok(json!({"aud": "https://other.example"})),
            401,
            "token.audience",
        ),
        (tok(json!({"aud": []})), 401, "token.audience"),
        (tok(json!({"aud": ""})), 401, "token.audience"),
        (tok(json!({"client_id": 7})), 401, "token.claim_type"),
        (
            e.key.sign_compact(
                &json!({"typ": "JWT", "kid": "as-1"}),
                &claims(json!({"cnf": cnf})),
            ),
            401,
            "token.typ",
        ),
        (
            e.key.sign_compact(
                &json!({"typ": "dpop+jwt", "kid": "as-1"}),
                &claims(json!({"cnf": cnf})),
            ),
            401,
            "token.typ",
        ),
        (
            other.access_token(&claims(json!({"cnf": cnf}))),
            401,
            "token.bad_signature",
        ),
        (
            unknown.access_token(&claims(json!({"cnf": cnf}))),
            401,
            "token.unknown_key",
        ),
        (
            e.key.sign_compact(
                &json!({"typ": "at+jwt", "kid": "../../../../dev/null"}),
                &claims(json!({"cnf": cnf})),
            ),
            401,
            "token.unknown_key",
        ),
        (self_signed, 401, "token.forbidden_header"),
        (
            e.key.sign_compact(
                &json!({"typ": "at+jwt", "kid": "as-1", "jku": "http://127.0.0.1/jwks"}),
                &claims(json!({"cnf": cnf})),
            ),
            401,
            "token.forbidden_header",
        ),
        (
            e.key.sign_compact(
                &json!({"typ": "at+jwt", "kid": "as-1", "crit": ["urn:x"], "urn:x": 1}),
                &claims(json!({"cnf": cnf})),
            ),
            401,
            "token.forbidden_header",
        ),
        // An empty signature segment is malformed before the algorithm is even read.
        (none.clone(), 401, "token.malformed"),
        (format!("{none}AAAA"), 401, "token.alg_not_allowed"),
        (
            format!(
                "{}.e30.AAAA",
                h(json!({"alg": "HS256", "typ": "at+jwt", "kid": "as-1"}))
            ),
            401,
            "token.alg_not_allowed",
        ),
        ("a.b".to_string(), 401, "token.malformed"),
        (format!("{good}.x"), 401, "token.malformed"),
        ("x".repeat(9000), 401, "token.too_large"),
    ];
    for (t, status, reason) in cases {
        let a = e
            .refused("tpp1", "/accounts", &[bearer(&t)], status, reason)
            .await;
        assert_eq!(
            a.headers["www-authenticate"], "Bearer error=\"invalid_token\"",
            "{reason}"
        );
    }
    // Credential placement.
    let a = e
        .refused("tpp1", "/accounts", &[], 401, "token.missing")
        .await;
    assert!(a.headers["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Bearer, DPoP algs="));
    // RFC 6750 §2.3 / FAPI: never a token in the query; §3.1 names the error.
    let a = e
        .refused(
            "tpp1",
            &format!("/accounts?access_token={good}"),
            &[],
            400,
            "token.in_query",
        )
        .await;
    assert_eq!(
        a.headers["www-authenticate"],
        "Bearer error=\"invalid_request\""
    );
    e.refused(
        "tpp1",
        "/accounts",
        &[bearer(&good), bearer(&good)],
        400,
        "token.multiple",
    )
    .await;
    e.refused(
        "tpp1",
        "/accounts",
        &[("authorization", format!("Bearer  {good}"))],
        400,
        "token.bad_header",
    )
    .await;
    e.refused(
        "tpp1",
        "/accounts",
        &[("authorization", "Basic dXNlcjpwYXNz".into())],
        401,
        "token.unsupported_scheme",
    )
    .await;
    // Skew boundaries (A20): exp = now - skew + 1 accepted, exp = now - skew refused.
    assert_eq!(
        e.send(
            "tpp1",
            "GET",
            "/accounts",
            &[bearer(&tok(json!({"exp": NOW - 9, "jti": "b1"})))]
        )
        .await
        .0
        .status,
        200
    );
    e.refused(
        "tpp1",
        "/accounts",
        &[bearer(&tok(json!({"exp": NOW - 10, "jti": "b2"})))],
        401,
        "token.expired",
    )
    .await;
}

fn dpop_bound(e: &TokenEnv, client: &SigningKey) -> String {
    e.key
        .access_token(&claims(json!({"cnf": {"jkt": client.thumbprint()}})))
}

fn proof(
    client: &SigningKey,
    method: &str,
    path: &str,
    token: &str,
    iat: i64,
    jti: &str,
) -> String {
    client.dpop_proof(
        method,
        &format!("{BASE}{path}"),
        Some(token),
        iat,
        jti,
        None,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dpop_bound_token_needs_a_fresh_matching_proof_every_time() {
    let e = env().await;
    let client = SigningKey::generate(Alg::ES256, "c").unwrap();
    let t = dpop_bound(&e, &client);
    let auth = ("authorization", format!("DPoP {t}"));
    let p1 = proof(&client, "GET", "/accounts", &t, NOW, "p1");
    let (a, id) = e
        .send(
            "tpp1",
            "GET",
            "/accounts",
            &[auth.clone(), ("dpop", p1.clone())],
        )
        .await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert!(!e.up.seen()[0].headers.contains_key("dpop"));
    assert!(
        !e.p.audit().iter().any(|r| r.to_string().contains(&p1)),
        "the proof never reaches the audit log"
    );
    let _ = id;
    // D13: the same proof again.
    let a = e
        .refused(
            "tpp1",
            "/accounts",
            &[auth.clone(), ("dpop", p1.clone())],
            401,
            "binding.dpop_replay",
        )
        .await;
    assert!(a.headers["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("DPoP error=\"invalid_dpop_proof\""));
    // Proof-level failures.
    let other = SigningKey::generate(Alg::ES256, "o").unwrap();
    type Case<'a> = (Vec<(&'a str, String)>, u16, &'a str);
    let cases: Vec<Case<'_>> = vec![
        (vec![auth.clone()], 401, "binding.dpop_proof_missing"),
        (
            vec![
                auth.clone(),
                ("dpop", proof(&client, "GET", "/accounts", &t, NOW, "a")),
                ("dpop", proof(&client, "GET", "/accounts", &t, NOW, "b")),
            ],
            400,
            "binding.dpop_proof_multiple",
        ),
        (
            vec![
                auth.clone(),
                ("dpop", proof(&client, "POST", "/accounts", &t, NOW, "c")),
            ],
            401,
            "binding.dpop_htm",
        ),
        (
            vec![
                auth.clone(),
                ("dpop", proof(&client, "GET", "/payments", &t, NOW, "d")),
            ],
            401,
            "binding.dpop_htu",
        ),
        (
            vec![
                auth.clone(),
                (
                    "dpop",
                    client.dpop_proof(
                        "GET",
                        "https://internal.example/accounts",
                        Some(&t),
                        NOW,
                        "e",
                        None,
                    ),
                ),
            ],
            401,
            "binding.dpop_htu",
        ),
        (
            vec![
                auth.clone(),
                (
                    "dpop",
                    proof(&client, "GET", "/accounts", &t, NOW - 120, "f"),
                ),
            ],
            401,
            "binding.dpop_iat",
        ),
        (
            vec![
                auth.clone(),
                (
                    "dpop",
                    proof(&client, "GET", "/accounts", &t, NOW + 60, "g"),
                ),
            ],
            401,
            "binding.dpop_iat",
        ),
        (
            vec![
                auth.clone(),
                (
                    "dpop",
                    proof(&client, "GET", "/accounts", "another-token", NOW, "h"),
                ),
            ],
            401,
            "binding.dpop_ath",
        ),
        (
            vec![
                auth.clone(),
                (
                    "dpop",
                    client.dpop_proof("GET", &format!("{BASE}/accounts"), None, NOW, "i", None),
                ),
            ],
            401,
            "binding.dpop_ath",
        ),
        (
            vec![
                auth.clone(),
                ("dpop", proof(&other, "GET", "/accounts", &t, NOW, "j")),
            ],
            401,
            "binding.jkt_mismatch",
        ),
        (
            vec![
                auth.clone(),
                ("dpop", client.access_token(&json!({"jti": "k"}))),
            ],
            401,
            "binding.dpop_typ",
        ),
        (
            vec![auth.clone(), ("dpop", "garbage".into())],
            401,
            "binding.dpop_malformed",
        ),
        // D22: the DPoP-bound token as a bearer token.
        (
            vec![
                bearer(&t),
                ("dpop", proof(&client, "GET", "/accounts", &t, NOW, "l")),
            ],
            401,
            "binding.dpop_required",
        ),
    ];
    for (headers, status, reason) in cases {
        e.refused("tpp1", "/accounts", &headers, status, reason)
            .await;
    }
    // The DPoP scheme with a token that is not DPoP-bound.
    let cert = cert_bound(&e);
    e.refused(
        "tpp1",
        "/accounts",
        &[
            ("authorization", format!("DPoP {cert}")),
            ("dpop", proof(&client, "GET", "/accounts", &cert, NOW, "m")),
        ],
        401,
        "binding.not_dpop_bound",
    )
    .await;
    // fapi1-advanced takes certificate binding only.
    e.refused(
        "tpp1",
        "/fapi1/accounts",
        &[
            auth.clone(),
            (
                "dpop",
                proof(&client, "GET", "/fapi1/accounts", &t, NOW, "n"),
            ),
        ],
        401,
        "binding.mtls_required",
    )
    .await;
    // Normalized htu forms of the same URI are the same URI (D10).
    let up_before = e.up.count();
    let p = client.dpop_proof(
        "GET",
        "HTTPS://RS.example:443/%61ccounts",
        Some(&t),
        NOW,
        "o",
        None,
    );
    assert_eq!(
        e.send("tpp1", "GET", "/accounts", &[auth.clone(), ("dpop", p)])
            .await
            .0
            .status,
        200
    );
    assert_eq!(e.up.count(), up_before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wycheproof_jws_vectors_are_refused_as_bearer_tokens_end_to_end() {
    // Every Wycheproof JWS case marked invalid, sent as an access token with its group's key as
    // the issuer key: refused, nothing forwarded.
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/vectors/wycheproof/json_web_signature_test.json");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let up = Upstream::start(Behaviour::Ok).await;
    let jwks = tempfile::tempdir().unwrap();
    let mut total = 0;
    for (gi, group) in v["testGroups"].as_array().unwrap().iter().enumerate() {
        let set = group
            .get("public")
            .map(|k| json!({"keys": [k]}))
            .or_else(|| group.get("publicKeyset").cloned());
        let Some(mut set) = set else { continue };
        // Give keys without a kid the one the tokens use, so the case tests more than lookup.
        for k in set["keys"].as_array_mut().into_iter().flatten() {
            if k.get("kid").is_none() {
                k["kid"] = json!("none");
            }
        }
        let file = jwks.path().join(format!("g{gi}.json"));
        std::fs::write(&file, set.to_string()).unwrap();
        let mut o = Options::new(up.addr);
        o.policy = "group: w\nupstream: bank\nroutes:\n  - id: w\n    method: GET\n    path: /w\n    auth: {profile: bearer}\n".into();
        let issuer = FileIssuer {
            require_typ: Some(false),
            ..file_issuer("x", "y", &file)
        };
        o.config.issuers.insert("as".into(), issuer);
        let mut o2 = o;
        // A group whose key set we refuse outright (weak or ambiguous keys) cannot be loaded at
        // all, which is also a refusal; skip those groups here (the unit test covers them).
        let cfg_ok = {
            let d = tempfile::tempdir().unwrap();
            std::fs::create_dir_all(d.path().join("policies")).unwrap();
            std::fs::write(d.path().join("policies/p.yaml"), &o2.policy).unwrap();
            std::fs::write(d.path().join("c.yaml"), o2.config_text()).unwrap();
            portcullis_proxy::config::Config::load(&d.path().join("c.yaml")).is_ok()
        };
        if !cfg_ok {
            continue;
        }
        o2.bank().response_timeout = Some(dur("2s"));
        let p = Proxy::start(o2).await;
        for t in group["tests"].as_array().unwrap() {
            if t["result"] != "invalid" {
                continue;
            }
            let Some(jws) = t["jws"].as_str() else {
                continue;
            };
            if jws.is_empty() || jws.len() > 8000 || !jws.bytes().all(|b| b.is_ascii_graphic()) {
                continue; // cannot be carried in a header as token68; refused before parsing
            }
            let (a, _) = p
                .send(
                    req("GET", "/w")
                        .header("authorization", format!("Bearer {jws}"))
                        .body(Full::new(Bytes::new()))
                        .unwrap(),
                )
                .await;
            assert!(
                a.status == 401 || a.status == 400,
                "tcId {} got {}",
                t["tcId"],
                a.status
            );
            total += 1;
        }
    }
    assert_eq!(up.count(), 0);
    assert!(total >= 70, "{total}");
    eprintln!("wycheproof through the proxy: {total} invalid tokens refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_waits_for_key_sets_and_a_rotated_remote_key_is_fetched_on_an_unknown_kid() {
    let server = Source::start(Reply::With(503, String::new())).await;
    let k1 = SigningKey::generate(Alg::ES256, "k1").unwrap();
    let up = Upstream::start(Behaviour::Ok).await;
    let mut o = Options::new(up.addr);
    o.policy = POLICY.to_string();
    let jwks = FileJwks {
        url: Some(format!("https://localhost:{}/jwks", server.addr.port())),
        ca: vec![certs().join("ca.pem").display().to_string()],
        refresh_interval: Some(dur("1h")),
        min_refetch_interval: Some(dur("1s")),
        ..FileJwks::default()
    };
    let issuer = FileIssuer {
        issuer: ISS.into(),
        audience: AUD.into(),
        jwks: Some(jwks),
        ..FileIssuer::default()
    };
    o.config.issuers.insert("as".into(), issuer);
    let p = Proxy::start(o).await;
    // No key set yet: not ready, and tokens are refused with 503 (fail closed).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, body) = p.admin_get("/readyz").await;
    assert_eq!(status, 503);
    // The probe's body names what is missing.
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["ready"], false);
    assert_eq!(body["shutting_down"], false);
    assert_eq!(body["not_ready"], json!(["keys: as"]));
    let now = portcullis_base::clock::SystemClock.now();
    let cl = |k: &SigningKey, jti: &str| {
        k.access_token(&json!({"iss": ISS, "aud": AUD, "exp": now + 300, "jti": jti, "cnf": {"x5t#S256": thumb("tpp1")}}))
    };
    let (a, _) = p
        .send(
            req("GET", "/accounts")
                .header("authorization", format!("Bearer {}", cl(&k1, "a")))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
    assert_eq!(
        (a.status.as_u16(), a.json()["reason"].clone()),
        (503, json!("token.keys_unavailable"))
    );
    // The endpoint comes up with k1.
    server.set(Reply::With(200, k1.jwks().to_string()));
    assert!(p.ready_within(Duration::from_secs(5)).await);
    let (a, _) = p
        .send(
            req("GET", "/accounts")
                .header("authorization", format!("Bearer {}", cl(&k1, "b")))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
    assert_eq!(a.status, 200);
    // Rotation: the AS publishes k2; a k2 token is accepted without a restart.
    let k2 = SigningKey::generate(Alg::ES256, "k2").unwrap();
    server.set(Reply::With(
        200,
        json!({"keys": [k1.public_jwk(true), k2.public_jwk(true)]}).to_string(),
    ));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (a, _) = p
        .send(
            req("GET", "/accounts")
                .header("authorization", format!("Bearer {}", cl(&k2, "c")))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    // The endpoint goes bad (garbage, then down): the last good set keeps serving.
    server.set(Reply::With(200, "not json".into()));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let k3 = SigningKey::generate(Alg::ES256, "k3").unwrap();
    let (a, _) = p
        .send(
            req("GET", "/accounts")
                .header("authorization", format!("Bearer {}", cl(&k3, "d")))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
    assert_eq!(a.json()["reason"], "token.unknown_key");
    server.set(Reply::With(503, String::new()));
    let (a, _) = p
        .send(
            req("GET", "/accounts")
                .header("authorization", format!("Bearer {}", cl(&k2, "e")))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(p.admin_get("/readyz").await.0, 200);
    // An unknown-kid flood makes at most one fetch per min_refetch_interval.
    let before = server.hits();
    for i in 0..20 {
        let k = SigningKey::generate(Alg::ES256, &format!("flood{i}")).unwrap();
        p.send(
            req("GET", "/accounts")
                .header("authorization", format!("Bearer {}", cl(&k, "f")))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
    }
    assert!(
        server.hits() - before <= 2,
        "{} fetches for 20 unknown kids",
        server.hits() - before
    );
    assert_eq!(up.count(), 3);
    let (_, m) = p.admin_get("/metrics").await;
    assert!(
        m.contains("portcullis_key_source_ready{issuer=\"as\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("portcullis_key_source_keys{issuer=\"as\"} 2"),
        "{m}"
    );
    assert!(
        m.contains("portcullis_key_source_failures_total{issuer=\"as\"}"),
        "{m}"
    );
}

/// An authorization server that rotates right after the proxy started: the start-up fetch
/// must not use up the unknown-kid refetch, or the new key is refused for the whole
/// `min_refetch_interval` (30 s by default). Refetches an unknown kid triggers stay limited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotated_just_after_start_is_fetched_by_the_first_token_that_names_it() {
    let k1 = SigningKey::generate(Alg::ES256, "k1").unwrap();
    let server = Source::start(Reply::With(200, k1.jwks().to_string())).await;
    let up = Upstream::start(Behaviour::Ok).await;
    let mut o = Options::new(up.addr);
    o.policy = POLICY.to_string();
    let jwks = FileJwks {
        url: Some(format!("https://localhost:{}/jwks", server.addr.port())),
        ca: vec![certs().join("ca.pem").display().to_string()],
        refresh_interval: Some(dur("1h")),
        // The default, spelled out: what matters is that it is far longer than this test.
        min_refetch_interval: Some(dur("30s")),
        ..FileJwks::default()
    };
    let issuer = FileIssuer {
        issuer: ISS.into(),
        audience: AUD.into(),
        jwks: Some(jwks),
        ..FileIssuer::default()
    };
    o.config.issuers.insert("as".into(), issuer);
    let e = TokenEnv {
        env: Env::start(o, up, tempfile::tempdir().unwrap(), None).await,
        key: k1,
    };
    assert!(
        e.p.ready_within(Duration::from_secs(5)).await,
        "the key set was never fetched"
    );
    let now = portcullis_base::clock::SystemClock.now();
    let token = |k: &SigningKey, jti: &str| {
        bearer(&k.access_token(&json!({
            "iss": ISS, "aud": AUD, "exp": now + 300, "jti": jti,
            "cnf": {"x5t#S256": thumb("tpp1")},
        })))
    };
    let (a, _) = e
        .send("tpp1", "GET", "/accounts", &[token(&e.key, "a")])
        .await;
    assert_eq!(a.status, 200);

    // The AS rotates at once: k2 is published (k1 kept for tokens still in flight).
    let k2 = SigningKey::generate(Alg::ES256, "k2").unwrap();
    server.set(Reply::With(
        200,
        json!({"keys": [e.key.public_jwk(true), k2.public_jwk(true)]}).to_string(),
    ));
    let hits = server.hits();
    let (a, _) = e.send("tpp1", "GET", "/accounts", &[token(&k2, "b")]).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(server.hits(), hits + 1, "one refetch for the new kid");

    // Another unknown kid within min_refetch_interval of that refetch: no fetch, refused.
    let k3 = SigningKey::generate(Alg::ES256, "k3").unwrap();
    e.refused(
        "tpp1",
        "/accounts",
        &[token(&k3, "c")],
        401,
        "token.unknown_key",
    )
    .await;
    assert_eq!(
        server.hits(),
        hits + 1,
        "the unknown-kid refetch stays limited"
    );
    // The documented counter moves with the fetches: start-up, then the one refetch.
    let (_, m) = e.p.admin_get("/metrics").await;
    assert!(
        m.contains("portcullis_key_source_fetches_total{issuer=\"as\"} 2"),
        "{m}"
    );
}

/// Authorization servers that put the scopes in `scp` (a list at some, a space-separated string
/// at others) and the client in `azp`: mapped per issuer, then checked and vouched for like
/// `scope` and `client_id`. The mapped claim is the only one read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_and_the_client_are_read_from_the_claims_the_issuer_maps_them_to() {
    let key = SigningKey::generate(Alg::ES256, "as-1").unwrap();
    let jwks = tempfile::tempdir().unwrap();
    let jwks_path = jwks.path().join("jwks.json");
    std::fs::write(&jwks_path, key.jwks().to_string()).unwrap();
    let up = Upstream::start(Behaviour::Ok).await;
    let mut o = Options::new(up.addr);
    o.policy = r#"
group: t
upstream: bank
routes:
  - id: scoped
    method: GET
    path: /accounts
    auth: {profile: fapi2}
    scopes: {all_of: [accounts]}
"#
    .to_string();
    let issuer = FileIssuer {
        clock_skew: Some(dur("10s")),
        scope_claim: Some("scp".into()),
        client_claim: Some("azp".into()),
        ..file_issuer(ISS, AUD, &jwks_path)
    };
    o.config.issuers.insert("as".into(), issuer);
    let e = TokenEnv {
        env: Env::start(o, up, jwks, Some(NOW)).await,
        key,
    };
    let token = |extra: Value| {
        let mut c =
            claims(json!({"scope": null, "client_id": null, "cnf": {"x5t#S256": thumb("tpp1")}}));
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        bearer(&e.key.access_token(&c))
    };
    for (scp, vouched) in [
        (json!(["accounts", "payments"]), "accounts payments"),
        (json!("accounts payments"), "accounts payments"),
    ] {
        let before = e.up.count();
        let (a, _) = e
            .send(
                "tpp1",
                "GET",
                "/accounts",
                &[token(json!({"scp": scp, "azp": "tpp-azp"}))],
            )
            .await;
        assert_eq!(a.status, 200, "{scp}: {}", String::from_utf8_lossy(&a.body));
        assert_eq!(e.up.count(), before + 1);
        let seen = e.up.seen().pop().unwrap();
        assert_eq!(seen.headers["x-portcullis-scope"], vouched, "{scp}");
        assert_eq!(seen.headers["x-portcullis-client-id"], "tpp-azp", "{scp}");
    }
    // `scope` is not read when the issuer maps scopes to `scp`.
    e.refused(
        "tpp1",
        "/accounts",
        &[token(json!({"scope": "accounts", "azp": "tpp-azp"}))],
        403,
        "authz.scope",
    )
    .await;
    for bad in [
        json!({"scp": [1], "azp": "tpp-azp"}),
        json!({"scp": ["accounts payments"], "azp": "tpp-azp"}),
        json!({"scp": {"accounts": true}, "azp": "tpp-azp"}),
        json!({"scp": "accounts", "azp": ["tpp-azp"]}),
    ] {
        e.refused("tpp1", "/accounts", &[token(bad)], 401, "token.claim_type")
            .await;
    }
}

/// Issuer discovery: the key set's URL comes from the issuer's metadata document, which is
/// taken only when its `issuer` is exactly ours and its endpoints are https. A document for
/// another issuer (or naming an http:// key set) leaves the issuer not ready: tokens are
/// refused 503 and nothing is fetched from the URL it names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_set_is_found_through_metadata_that_names_exactly_our_issuer() {
    let key = SigningKey::generate(Alg::ES256, "k1").unwrap();
    let jwks = Source::start(Reply::With(200, key.jwks().to_string())).await;
    let jwks_url = format!("https://localhost:{}/jwks", jwks.addr.port());
    let doc = |issuer: &str, jwks_uri: &str| {
        Reply::With(
            200,
            json!({"issuer": issuer, "jwks_uri": jwks_uri, "token_endpoint": "https://as.example/token"})
                .to_string(),
        )
    };
    let metadata = Source::start(doc("https://evil.example", &jwks_url)).await;
    let up = Upstream::start(Behaviour::Ok).await;
    let mut o = Options::new(up.addr);
    o.policy = POLICY.to_string();
    let issuer = FileIssuer {
        issuer: ISS.into(),
        audience: AUD.into(),
        discovery: Some(FileDiscovery {
            url: Some(format!(
                "https://localhost:{}/.well-known/openid-configuration",
                metadata.addr.port()
            )),
            ca: vec![certs().join("ca.pem").display().to_string()],
            refresh_interval: Some(dur("1s")),
            ..FileDiscovery::default()
        }),
        // No URL and no trust of its own: both from the metadata.
        jwks: Some(FileJwks::default()),
        ..FileIssuer::default()
    };
    o.config.issuers.insert("as".into(), issuer);
    let e = TokenEnv {
        env: Env::start(o, up, tempfile::tempdir().unwrap(), None).await,
        key,
    };
    let now = portcullis_base::clock::SystemClock.now();
    let token = |jti: &str| {
        bearer(&e.key.access_token(&json!({
            "iss": ISS, "aud": AUD, "exp": now + 300, "jti": jti,
            "cnf": {"x5t#S256": thumb("tpp1")},
        })))
    };

    // Another issuer's document: not taken, never ready, tokens refused, the key set untouched.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(metadata.hits() >= 1, "the metadata was never asked for");
    assert_eq!(e.p.admin_get("/readyz").await.0, 503);
    e.refused(
        "tpp1",
        "/accounts",
        &[token("a")],
        503,
        "token.keys_unavailable",
    )
    .await;
    assert_eq!(
        jwks.hits(),
        0,
        "a key set named by another issuer's metadata was fetched"
    );
    let (_, m) = e.p.admin_get("/metrics").await;
    assert!(
        m.contains("portcullis_discovery_ready{issuer=\"as\"} 0"),
        "{m}"
    );

    // Our issuer, but an http:// key set: not taken either.
    metadata.set(doc(ISS, &jwks_url.replace("https://", "http://")));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(e.p.admin_get("/readyz").await.0, 503);
    assert_eq!(jwks.hits(), 0);

    // Our issuer's document: ready, and the key set it names verifies tokens.
    metadata.set(doc(ISS, &jwks_url));
    assert!(
        e.p.ready_within(Duration::from_secs(6)).await,
        "never ready with a good document"
    );
    assert!(jwks.hits() >= 1);
    let (a, _) = e.send("tpp1", "GET", "/accounts", &[token("b")]).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let (_, m) = e.p.admin_get("/metrics").await;
    assert!(
        m.contains("portcullis_discovery_ready{issuer=\"as\"} 1"),
        "{m}"
    );
}

/// `trust: system` uses the system's root store (here `SSL_CERT_FILE`, which the root store
/// honours) instead of a pinned bundle; with another CA there, the key set cannot be fetched.
/// Run through `portcullis token inspect`, a process of its own, so the environment variable
/// stays out of this test process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_trust_is_the_system_root_store() {
    let key = SigningKey::generate(Alg::ES256, "k1").unwrap();
    let jwks = Source::start(Reply::With(200, key.jwks().to_string())).await;
    let d = tempfile::tempdir().unwrap();
    let mut cfg = base_config(std::net::SocketAddr::from(([127, 0, 0, 1], 9)));
    cfg.issuers.insert(
        "as".into(),
        FileIssuer {
            issuer: ISS.into(),
            audience: AUD.into(),
            jwks: Some(FileJwks {
                url: Some(format!("https://localhost:{}/jwks", jwks.addr.port())),
                trust: Trust::System,
                ..FileJwks::default()
            }),
            require_typ: Some(false),
            ..FileIssuer::default()
        },
    );
    std::fs::create_dir(d.path().join("policies")).unwrap();
    std::fs::write(d.path().join("policies/t.yaml"), POLICY).unwrap();
    let config = d.path().join("config.json");
    std::fs::write(&config, serde_json::to_string(&cfg).unwrap()).unwrap();
    let now = portcullis_base::clock::SystemClock.now();
    let token = key.access_token(&json!({"iss": ISS, "aud": AUD, "exp": now + 300, "jti": "t"}));
    let run = |roots: PathBuf| {
        let (config, token) = (config.clone(), token.clone());
        tokio::task::spawn_blocking(move || {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
                .args(["token", "inspect", "--issuer", "as", "--config"])
                .arg(&config)
                .arg(&token)
                .env("SSL_CERT_FILE", roots)
                .env_remove("SSL_CERT_DIR")
                .output()
                .unwrap();
            (
                out.status.code(),
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            )
        })
    };
    let (code, out) = run(certs().join("ca.pem")).await.unwrap();
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("result: accepted"), "{out}");
    // A system store without our CA (another CA's certificate): the key set server is not
    // trusted, so there are no keys and the token is refused.
    let (code, out) = run(certs().join("rogue-ca.pem")).await.unwrap();
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("FAIL kid"), "{out}");
}

/// RS256 for APIs outside FAPI: an issuer that lists it, used by `bearer` routes only, accepts
/// RS256 tokens signed with an RSA key that declares no `alg` (as some authorization servers
/// publish them); an issuer that does not list it refuses them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_tokens_are_accepted_only_from_an_issuer_that_allows_them_on_bearer_routes() {
    use portcullis_crypto::jose::keypair::KeyPair;
    let rsa = KeyPair::generate(Alg::PS256, "entra-1").unwrap();
    let mut jwk = rsa.public_jwk();
    jwk.as_object_mut().unwrap().remove("alg");
    let jwks = tempfile::tempdir().unwrap();
    let jwks_path = jwks.path().join("jwks.json");
    std::fs::write(&jwks_path, json!({"keys": [jwk]}).to_string()).unwrap();
    let up = Upstream::start(Behaviour::Ok).await;
    let mut o = Options::new(up.addr);
    o.policy = r#"
group: t
upstream: bank
routes:
  - id: legacy
    method: GET
    path: /legacy/accounts
    auth: {profile: bearer, issuer: legacy}
  - id: strict
    method: GET
    path: /strict/accounts
    auth: {profile: bearer, issuer: strict}
"#
    .to_string();
    for (name, algorithms) in [
        ("legacy", Some(vec!["RS256".to_string()])),
        ("strict", None),
    ] {
        let issuer = FileIssuer {
            algorithms,
            clock_skew: Some(dur("10s")),
            ..file_issuer(ISS, AUD, &jwks_path)
        };
        o.config.issuers.insert(name.into(), issuer);
    }
    let e = TokenEnv {
        env: Env::start(o, up, jwks, Some(NOW)).await,
        key: SigningKey::generate(Alg::ES256, "unused").unwrap(),
    };
    let token = rs256_token(&rsa, &claims(json!({})));
    let before = e.up.count();
    let (a, _) = e
        .send("tpp1", "GET", "/legacy/accounts", &[bearer(&token)])
        .await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(e.up.count(), before + 1);
    e.refused(
        "tpp1",
        "/strict/accounts",
        &[bearer(&token)],
        401,
        "token.alg_not_allowed",
    )
    .await;
}

/// An RS256 JWT (RSASSA-PKCS1-v1_5 SHA-256) of `claims` by `key`, as RS256 authorization
/// servers mint them (portcullis itself never signs RS256).
fn rs256_token(key: &portcullis_crypto::jose::keypair::KeyPair, claims: &Value) -> String {
    use rustls_pki_types::PrivateKeyDer;
    let header = json!({"alg": "RS256", "typ": "at+jwt", "kid": key.kid});
    let input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let pem = key.to_pkcs8_pem();
    let der = PrivateKeyDer::from_pem_slice(pem.as_bytes()).unwrap();
    let rsa = aws_lc_rs::rsa::KeyPair::from_pkcs8(der.secret_der()).unwrap();
    let mut sig = vec![0u8; rsa.public_modulus_len()];
    rsa.sign(
        &aws_lc_rs::signature::RSA_PKCS1_SHA256,
        &aws_lc_rs::rand::SystemRandom::new(),
        input.as_bytes(),
        &mut sig,
    )
    .unwrap();
    format!("{input}.{}", b64url(&sig))
}

/// With `introspection.jwts`, a JWT access token that verified locally is also introspected,
/// so a token the authorization server revoked stops working within `cache_ttl`; no answer is
/// no decision (503). Without it, a JWT never reaches the introspection endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_jwt_access_tokens_are_refused_within_the_introspection_cache_ttl() {
    let key = SigningKey::generate(Alg::ES256, "as-1").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let jwks_path = dir.path().join("jwks.json");
    std::fs::write(&jwks_path, key.jwks().to_string()).unwrap();
    std::fs::write(dir.path().join("secret"), "s3cret\n").unwrap();
    let active = |yes: bool| Reply::With(200, json!({"active": yes}).to_string());
    let revocation = Source::start(active(true)).await;
    let plain = Source::start(active(true)).await;
    let up = Upstream::start(Behaviour::Ok).await;
    let mut o = Options::new(up.addr);
    o.policy = r#"
group: t
upstream: bank
routes:
  - id: checked
    method: GET
    path: /checked/accounts
    auth: {profile: bearer, issuer: checked}
  - id: plain
    method: GET
    path: /plain/accounts
    auth: {profile: bearer, issuer: plain}
"#
    .to_string();
    for (name, source, jwts) in [("checked", &revocation, true), ("plain", &plain, false)] {
        let introspection = FileIntrospection {
            url: Some(format!(
                "https://localhost:{}/introspect",
                source.addr.port()
            )),
            ca: vec![certs().join("ca.pem").display().to_string()],
            client_id: Some("rs-client".into()),
            client_secret_file: Some(dir.path().join("secret").display().to_string()),
            cache_ttl: Some(dur("1s")),
            jwts: Some(jwts),
            ..FileIntrospection::default()
        };
        let issuer = FileIssuer {
            introspection: Some(introspection),
            ..file_issuer(ISS, AUD, &jwks_path)
        };
        o.config.issuers.insert(name.into(), issuer);
    }
    let e = TokenEnv {
        env: Env::start(o, up, dir, None).await,
        key,
    };
    let now = portcullis_base::clock::SystemClock.now();
    let token = bearer(&e.key.access_token(&json!({
        "iss": ISS, "aud": AUD, "exp": now + 300, "iat": now, "jti": "j", "client_id": "tpp-one",
    })));
    let ok = |path: &'static str| {
        let (e, token) = (&e, token.clone());
        async move {
            let (a, _) = e.send("tpp1", "GET", path, &[token]).await;
            assert_eq!(
                a.status,
                200,
                "{path}: {}",
                String::from_utf8_lossy(&a.body)
            );
        }
    };
    ok("/checked/accounts").await;
    ok("/plain/accounts").await;
    assert_eq!(revocation.hits(), 1, "the JWT was introspected");
    assert_eq!(plain.hits(), 0, "without jwts a JWT is never introspected");
    // The AS revokes the token: within cache_ttl the cached answer still lets it through
    // (the documented exposure window), then it is refused.
    revocation.set(active(false));
    ok("/checked/accounts").await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    e.refused(
        "tpp1",
        "/checked/accounts",
        std::slice::from_ref(&token),
        401,
        "token.inactive",
    )
    .await;
    // No answer: no decision.
    revocation.set(Reply::With(503, String::new()));
    e.refused(
        "tpp1",
        "/checked/accounts",
        std::slice::from_ref(&token),
        503,
        "token.introspection_unavailable",
    )
    .await;
    // The other issuer's JWT is good until exp, whatever its endpoint says.
    plain.set(active(false));
    ok("/plain/accounts").await;
    assert_eq!(plain.hits(), 0);
}

#[test]
fn dev_token_mints_what_token_inspect_accepts_and_inspect_names_the_failed_check() {
    let bin = env!("CARGO_BIN_EXE_portcullis");
    let d = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(bin)
            .current_dir(d.path())
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };
    assert_eq!(run(&["dev-certs", "--out", "certs"]).0, Some(0));
    assert_eq!(run(&["dev-token", "keygen", "--out", "certs"]).0, Some(0));
    std::fs::create_dir_all(d.path().join("policies")).unwrap();
    std::fs::write(
        d.path().join("policies/p.yaml"),
        "group: g\nupstream: bank\nroutes:\n  - id: acc\n    method: GET\n    path: /accounts\n    auth: {profile: fapi2}\n",
    )
    .unwrap();
    std::fs::write(
        d.path().join("c.yaml"),
        "listener:\n  address: \"127.0.0.1:0\"\n  tls: {certificate: certs/server.pem, private_key: certs/server.key, client_ca: [certs/ca.pem]}\nupstreams: {bank: {url: \"http://127.0.0.1:9\"}}\nissuers:\n  as:\n    issuer: https://as.example\n    audience: https://rs.example\n    jwks: {file: certs/as-jwks.json}\npolicies: [policies]\n",
    )
    .unwrap();
    let (code, token) = run(&[
        "dev-token",
        "access",
        "--cert",
        "certs/tpp1.pem",
        "--issuer",
        "https://as.example",
        "--audience",
        "https://rs.example",
    ]);
    assert_eq!(code, Some(0));
    let token = token.trim();
    let (code, out) = run(&[
        "token",
        "inspect",
        "--config",
        "c.yaml",
        "--route",
        "acc",
        "--cert",
        "certs/tpp1.pem",
        token,
    ]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("result: accepted"), "{out}");
    let (code, out) = run(&[
        "token",
        "inspect",
        "--config",
        "c.yaml",
        "--route",
        "acc",
        "--cert",
        "certs/tpp2.pem",
        token,
    ]);
    assert_eq!(code, Some(1));
    assert!(out.contains("FAIL cnf.x5t#S256"), "{out}");
    // An unbound token fails the route's profile; a DPoP-bound one passes it.
    let (_, unbound) = run(&[
        "dev-token",
        "access",
        "--issuer",
        "https://as.example",
        "--audience",
        "https://rs.example",
    ]);
    let (code, out) = run(&[
        "token",
        "inspect",
        "--config",
        "c.yaml",
        "--route",
        "acc",
        unbound.trim(),
    ]);
    assert_eq!(code, Some(1));
    assert!(out.contains("FAIL profile"), "{out}");
    let (_, dpop) = run(&[
        "dev-token",
        "access",
        "--dpop-key",
        "certs/dpop.key",
        "--issuer",
        "https://as.example",
        "--audience",
        "https://rs.example",
    ]);
    let (code, out) = run(&[
        "token",
        "inspect",
        "--config",
        "c.yaml",
        "--route",
        "acc",
        dpop.trim(),
    ]);
    assert_eq!(code, Some(0), "{out}");
    let (code, proof) = run(&[
        "dev-token",
        "proof",
        "--dpop-key",
        "certs/dpop.key",
        "--url",
        "https://rs.example/accounts",
        "--token",
        dpop.trim(),
    ]);
    assert_eq!(code, Some(0));
    assert_eq!(proof.trim().split('.').count(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nonce_route_hands_out_nonces_and_refuses_proofs_without_a_current_one() {
    let e = env().await;
    let client = SigningKey::generate(Alg::ES256, "c").unwrap();
    let t = e.key.access_token(&claims(
        json!({"cnf": {"jkt": client.thumbprint()}, "exp": NOW + 3600}),
    ));
    let auth = ("authorization", format!("DPoP {t}"));
    let url = format!("{BASE}/nonce/accounts");
    let p0 = client.dpop_proof("GET", &url, Some(&t), NOW, "n0", None);
    let a = e
        .refused(
            "tpp1",
            "/nonce/accounts",
            &[auth.clone(), ("dpop", p0)],
            401,
            "binding.dpop_nonce",
        )
        .await;
    assert!(a.headers["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("DPoP error=\"use_dpop_nonce\""));
    let nonce = a.headers["dpop-nonce"].to_str().unwrap().to_string();
    let p1 = client.dpop_proof("GET", &url, Some(&t), NOW, "n1", Some(&nonce));
    let (ok, _) = e
        .send(
            "tpp1",
            "GET",
            "/nonce/accounts",
            &[auth.clone(), ("dpop", p1)],
        )
        .await;
    assert_eq!(ok.status, 200);
    assert!(ok.headers.contains_key("dpop-nonce"));
    // A nonce we never issued, and ours after its lifetime.
    let forged = client.dpop_proof(
        "GET",
        &url,
        Some(&t),
        NOW,
        "n2",
        Some("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
    );
    e.refused(
        "tpp1",
        "/nonce/accounts",
        &[auth.clone(), ("dpop", forged)],
        401,
        "binding.dpop_nonce",
    )
    .await;
    e.clock().advance(400);
    let late = client.dpop_proof("GET", &url, Some(&t), NOW + 400, "n3", Some(&nonce));
    let a = e
        .refused(
            "tpp1",
            "/nonce/accounts",
            &[auth.clone(), ("dpop", late)],
            401,
            "binding.dpop_nonce",
        )
        .await;
    assert_ne!(
        a.headers["dpop-nonce"].to_str().unwrap(),
        nonce,
        "a fresh nonce is offered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opaque_tokens_are_introspected_cached_and_refused_when_inactive_or_unknowable() {
    let calls = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let x5t = thumb("tpp1");
    let handler: Handler = {
        let (calls, down, x5t) = (calls.clone(), down.clone(), x5t.clone());
        Arc::new(move |parts, body| {
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if down.load(std::sync::atomic::Ordering::SeqCst) {
                return (500, String::new());
            }
            let basic = base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                "rs-client:s3cret",
            );
            if parts
                .headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                != Some(&format!("Basic {basic}"))
            {
                return (401, "{}".into());
            }
            let body = String::from_utf8_lossy(body).to_string();
            let answer = if body.starts_with("token=opaque-good&") {
                json!({"active": true, "iss": ISS, "aud": AUD, "exp": NOW + 600, "client_id": "tpp-one", "scope": "accounts", "cnf": {"x5t#S256": x5t}})
            } else if body.starts_with("token=opaque-garbage&") {
                return (200, "not json".into());
            } else {
                json!({"active": false})
            };
            (200, answer.to_string())
        })
    };
    let addr = https_endpoint(handler).await;
    let secret = tempfile::tempdir().unwrap();
    std::fs::write(secret.path().join("secret"), "s3cret\n").unwrap();
    let up = Upstream::start(Behaviour::Ok).await;
    let mut o = Options::new(up.addr);
    o.policy = POLICY.to_string();
    let introspection = FileIntrospection {
        url: Some(format!("https://localhost:{}/introspect", addr.port())),
        ca: vec![certs().join("ca.pem").display().to_string()],
        client_id: Some("rs-client".into()),
        client_secret_file: Some(secret.path().join("secret").display().to_string()),
        cache_ttl: Some(dur("60s")),
        ..FileIntrospection::default()
    };
    let issuer = FileIssuer {
        issuer: ISS.into(),
        audience: AUD.into(),
        introspection: Some(introspection),
        ..FileIssuer::default()
    };
    o.config.issuers.insert("as".into(), issuer);
    let e = TokenEnv {
        env: Env::start(o, up, secret, Some(NOW)).await,
        key: SigningKey::generate(Alg::ES256, "unused").unwrap(),
    };
    let n = || calls.load(std::sync::atomic::Ordering::SeqCst);
    // Active and bound to tpp1: forwarded; the answer is cached for the TTL.
    assert_eq!(
        e.send("tpp1", "GET", "/accounts", &[bearer("opaque-good")])
            .await
            .0
            .status,
        200
    );
    assert_eq!(
        e.send("tpp1", "GET", "/accounts", &[bearer("opaque-good")])
            .await
            .0
            .status,
        200
    );
    assert_eq!(n(), 1, "the second request used the cached answer");
    assert_eq!(e.up.seen()[0].headers["x-portcullis-client-id"], "tpp-one");
    // The binding still holds for introspected tokens.
    e.refused(
        "tpp2",
        "/accounts",
        &[bearer("opaque-good")],
        401,
        "binding.cert_mismatch",
    )
    .await;
    // After the TTL it is asked again.
    e.clock().advance(61);
    assert_eq!(
        e.send("tpp1", "GET", "/accounts", &[bearer("opaque-good")])
            .await
            .0
            .status,
        200
    );
    assert_eq!(n(), 2);
    e.refused(
        "tpp1",
        "/accounts",
        &[bearer("opaque-revoked")],
        401,
        "token.inactive",
    )
    .await;
    e.refused(
        "tpp1",
        "/accounts",
        &[bearer("opaque-garbage")],
        503,
        "token.introspection_unavailable",
    )
    .await;
    down.store(true, std::sync::atomic::Ordering::SeqCst);
    e.clock().advance(61);
    e.refused(
        "tpp1",
        "/accounts",
        &[bearer("opaque-good")],
        503,
        "token.introspection_unavailable",
    )
    .await;
}
