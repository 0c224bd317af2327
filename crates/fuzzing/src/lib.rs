//! Fuzzing entry points: one function per cargo-fuzz target in `fuzz/`, shared with the corpus
//! replay test (`tests/fuzz_corpus.rs`), so a fuzz target and its replay run exactly the same
//! code. Not part of the API (hidden from the docs); nothing on the request path calls it.
//!
//! Each function takes arbitrary bytes, drives the library's real entry points with them and
//! panics only when an invariant beyond "no panic" is broken (an accepted canonical path that a
//! normalizer would change, a verified JWS that does not re-serialize to its own bytes, ...).
//! Keys and clocks are fixed, so a run is deterministic:
//!
//! - the keys are the RFC 9421 Appendix B.1 test keys (`test-key-ed25519`, `test-key-ecc-p256`),
//!   published in the RFC, so the RFC's own signed examples verify here;
//! - the harness signs inputs itself where the fuzzer could never forge a signature (the
//!   "signed" modes below), so the checks after the signature are reached too.
//!
//! Input layouts (the first byte picks a mode where a target has several):
//! - `path`: the request target (path and query).
//! - `jwt`: mode 0 raw token; 1 `header JSON \n payload JSON`, signed by the harness;
//!   2 an `Authorization` value; 3 a JWKS.
//! - `dpop`: mode 0 raw proof; 1 `header JSON \n payload JSON`, signed by the harness.
//! - `detached`: mode 0 `x-jws-signature value \n body`; 1 `flags, header JSON \n body`,
//!   signed by the harness (flag bit 0: sign the base64url-encoded body).
//! - `httpsig`: `METHOD target \n name: value ... \n\n body`.
//! - `policy`, `config`: a YAML file.
//! - `audit`: mode 0 raw log; 1 log re-sealed by the harness (each line's `prev`, checkpoint
//!   `sig` and `hash` recomputed); NUL bytes separate files.
//! - `contract`: one byte picking an operation with a body of the OBIE v4.0.0 Payment Initiation
//!   description (`tests/vectors/openapi/`), then the body: checked against the operation's
//!   contract, strict and as the description wrote it.
//! - `head`: the HTTP version (`0` HTTP/1.0, `1` HTTP/1.1, `2` HTTP/2), then
//!   `METHOD target \n name: value ... \n\n`: the request head checks.

pub mod seeds;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};

use serde_json::{Map, Value};

use portcullis_crypto::jose::jwk::VerifyingKey;
use portcullis_crypto::jose::keypair::KeyPair;
use portcullis_crypto::jose::{b64url, b64url_decode, Alg};

/// A target's entry function.
pub type Target = fn(&[u8]);

/// Every target: its name (the `fuzz/corpus/<name>` directory) and its entry function.
pub const TARGETS: &[(&str, Target)] = &[
    ("path", path),
    ("jwt", jwt),
    ("dpop", dpop),
    ("detached", detached),
    ("httpsig", httpsig),
    ("policy", policy),
    ("config", config),
    ("audit", audit),
    ("head", head),
    ("contract", contract),
];

// ---------------------------------------------------------------------------------------------
// Fixed keys and clocks.

/// RFC 9421 B.1.4 `test-key-ed25519` (PKCS#8), a published test key.
const ED25519_PKCS8_B64: &str = "MC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF";
/// RFC 9421 B.1.3 `test-key-ecc-p256` (RFC 5915 `EC PRIVATE KEY`), a published test key.
const P256_SEC1_B64: &str = "MHcCAQEEIFKbhfNZfpDsW43+0+JjUr9K+bTeuxopu653+hBaXGA7oAoGCCqGSM49\
AwEHoUQDQgAEqIVYZVLCrPZHGHjP17CTW0/+D9Lfw0EkjqF7xB4FivAxzic30tMM4GF+hR6Dxh71Z50VGGdldkkDXZCnTNnoXQ==";

pub const ED_KID: &str = "test-key-ed25519";
pub const EC_KID: &str = "test-key-ecc-p256";

/// The access-token issuer the `jwt` target verifies against.
pub const ISSUER: &str = "https://as.fuzz.example";
pub const AUDIENCE: &str = "https://api.fuzz.example";
/// "Now" for tokens, detached signatures and audit-free checks.
pub const NOW: i64 = 1_700_000_000;
/// "Now" for RFC 9421 signatures: just after the RFC's own examples were created.
pub const HTTPSIG_NOW: i64 = 1_618_884_480;
/// RFC 9449's example proofs: the clocks they verify at, their targets and access token.
pub const DPOP_TOKEN_NOW: i64 = 1_562_262_616;
pub const DPOP_TOKEN_HTU: &str = "https://server.example.com/token";
pub const DPOP_RESOURCE_NOW: i64 = 1_562_262_618;
pub const DPOP_RESOURCE_HTU: &str = "https://resource.example.org/protectedresource";
pub const DPOP_ACCESS_TOKEN: &str = "Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU";
pub const DPOP_NONCE: &str = "fuzz-nonce";
/// OBIE detached signatures: who signs and the trust anchor.
pub const OBIE_ISS: &str = "0015800001041RHAAY/fuzz-software-statement";
pub const OBIE_TAN: &str = "openbanking.org.uk";

/// The harness's signing keys and their public halves.
pub struct Keys {
    pub ed: KeyPair,
    pub ec: KeyPair,
    pub ed_public: Arc<VerifyingKey>,
    pub ec_public: Arc<VerifyingKey>,
    /// `{"keys": [ed, ec]}`.
    pub jwks: Value,
}

impl Keys {
    /// The public key named `kid`, if it is one of ours.
    pub fn get(&self, kid: &str) -> Option<&Arc<VerifyingKey>> {
        match kid {
            ED_KID => Some(&self.ed_public),
            EC_KID => Some(&self.ec_public),
            _ => None,
        }
    }

    /// The signing key for a header's `alg` (ES256 or, otherwise, Ed25519).
    fn signer_for(&self, header: &[u8]) -> &KeyPair {
        let alg = portcullis_base::json::parse_object(header)
            .and_then(|h| h.get("alg").and_then(Value::as_str).map(str::to_string));
        match alg.as_deref() {
            Some("ES256") => &self.ec,
            _ => &self.ed,
        }
    }
}

pub fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let ed_der = b64.decode(ED25519_PKCS8_B64).expect("ed25519 test key");
        let ed = KeyPair::from_pkcs8(&ed_der, ED_KID).expect("ed25519 test key");
        let sec1 = b64.decode(P256_SEC1_B64).expect("p-256 test key");
        let ec_pkcs8 = EcdsaKeyPair::from_private_key_der(&ECDSA_P256_SHA256_FIXED_SIGNING, &sec1)
            .ok()
            .and_then(|k| k.to_pkcs8v1().ok())
            .expect("p-256 test key");
        let ec = KeyPair::from_pkcs8(ec_pkcs8.as_ref(), EC_KID).expect("p-256 test key");
        let public = |k: &KeyPair| {
            let jwk = k.public_jwk();
            Arc::new(
                portcullis_crypto::jose::jwk::from_jwk(jwk.as_object().expect("jwk object"))
                    .expect("public jwk"),
            )
        };
        let jwks = serde_json::json!({"keys": [ed.public_jwk(), ec.public_jwk()]});
        Keys {
            ed_public: public(&ed),
            ec_public: public(&ec),
            ed,
            ec,
            jwks,
        }
    })
}

/// Runs a future that never waits (every key source here is fixed) to completion.
fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..1000 {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
    panic!("a future with a fixed key source kept waiting");
}

fn split_mode(data: &[u8]) -> Option<(u8, &[u8])> {
    data.split_first().map(|(m, rest)| (*m, rest))
}

fn split_line(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

/// `BASE64URL(header) . BASE64URL(payload) . BASE64URL(signature by key)`.
fn compact(header: &[u8], payload: &[u8], key: &KeyPair) -> String {
    let input = format!("{}.{}", b64url(header), b64url(payload));
    let sig = key.sign(input.as_bytes());
    format!("{input}.{}", b64url(&sig))
}

/// A parsed compact JWS re-serializes to exactly the bytes it was parsed from (strict,
/// canonical base64url: no second spelling of the same token is accepted).
fn assert_reserializes(token: &str) {
    for seg in token.split('.') {
        let bytes = b64url_decode(seg).expect("an accepted segment decodes");
        assert_eq!(b64url(&bytes), seg, "an accepted segment is not canonical");
    }
}

// ---------------------------------------------------------------------------------------------
// path

/// RFC 3986 §6.2.2 syntax-based normalization of a path, plus the proxy's own canonical-form
/// rules (no empty segments): upper-case percent-escapes, decode escaped unreserved characters,
/// remove dot segments (§5.2.4), merge repeated slashes and drop a trailing one. An independent
/// reference: a path the proxy accepts as canonical must be a fixed point of it.
pub fn reference_normalize(path: &str) -> String {
    let b = path.as_bytes();
    let mut decoded = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                if v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~') {
                    decoded.push(v as char);
                } else {
                    decoded.push_str(&format!("%{v:02X}"));
                }
                i += 3;
                continue;
            }
        }
        decoded.push(b[i] as char);
        i += 1;
    }
    // §5.2.4 remove_dot_segments, then merge empty segments.
    let mut out: Vec<&str> = Vec::new();
    for seg in decoded.split('/').skip(1) {
        match seg {
            "." | "" => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

fn route_policies() -> &'static portcullis_policy::PolicySet {
    static SET: OnceLock<portcullis_policy::PolicySet> = OnceLock::new();
    SET.get_or_init(|| {
        let dir = workdir();
        let paths: Vec<PathBuf> = seeds::POLICY_FILES
            .iter()
            .filter(|(name, _)| !name.contains('/'))
            .map(|(name, _)| dir.join("policies").join(name))
            .collect();
        portcullis_policy::load_files(&paths, &portcullis_policy::Known::standalone())
            .unwrap_or_else(|e| panic!("the example policies load: {e}"))
    })
}

/// Path normalizer, canonical path check and route match.
pub fn path(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data) {
        let p = portcullis_base::path::check_path(s);
        if p.is_ok() {
            assert_eq!(
                reference_normalize(s),
                s,
                "an accepted path is not a fixed point of RFC 3986 normalization"
            );
            assert!(
                portcullis_base::path::check_query(s).is_ok(),
                "an accepted path is not an acceptable query"
            );
        }
        let _ = p.map_err(|e| (e.reason(), e.detail()));
        let _ = portcullis_base::path::check_query(s);
    }
    let Ok(uri) = http::Uri::try_from(data) else {
        return;
    };
    for version in [http::Version::HTTP_11, http::Version::HTTP_2] {
        for method in [http::Method::GET, http::Method::POST, http::Method::DELETE] {
            let Ok(req) = http::Request::builder()
                .method(method)
                .uri(uri.clone())
                .version(version)
                .body(())
            else {
                return;
            };
            let (parts, ()) = req.into_parts();
            let Ok(m) = portcullis_proxy::internals::route::resolve(&parts, route_policies())
            else {
                continue;
            };
            let path = parts.uri.path();
            assert!(
                portcullis_base::path::check_path(path).is_ok(),
                "routed a refused path"
            );
            let segs: Vec<&str> = path.split('/').collect();
            let tsegs: Vec<&str> = m.route.template.split('/').collect();
            assert_eq!(
                segs.len(),
                tsegs.len(),
                "{path} routed to {}",
                m.route.template
            );
            let mut params = Vec::new();
            for (s, t) in segs.iter().zip(&tsegs) {
                match t.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
                    Some(name) => params.push((name.to_string(), s.to_string())),
                    None => assert_eq!(s, t, "{path} routed to {}", m.route.template),
                }
            }
            assert_eq!(m.params, params, "{path} parameters");
            assert_eq!(m.route.method, parts.method);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// jwt

fn issuers() -> &'static [portcullis_proxy::config::Issuer; 2] {
    static ISSUERS: OnceLock<[portcullis_proxy::config::Issuer; 2]> = OnceLock::new();
    ISSUERS.get_or_init(|| {
        let base = portcullis_proxy::config::Issuer {
            name: "fuzz".into(),
            issuer: ISSUER.into(),
            audience: AUDIENCE.into(),
            discovery: None,
            jwks: None,
            introspection: None,
            algorithms: vec![Alg::PS256, Alg::ES256, Alg::EdDSA],
            require_typ: true,
            skew: 30,
            max_token_bytes: 8192,
            max_age: None,
            scope_claim: "scope".into(),
            client_claim: "client_id".into(),
        };
        let lax = portcullis_proxy::config::Issuer {
            name: "fuzz-lax".into(),
            algorithms: vec![Alg::EdDSA],
            require_typ: false,
            max_age: Some(3600),
            // The mapped claims (`scp` may be a list) get the hostile tokens too.
            scope_claim: "scp".into(),
            client_claim: "azp".into(),
            ..base.clone()
        };
        [base, lax]
    })
}

fn key_source() -> &'static portcullis_sources::keys::KeySource {
    static SOURCE: OnceLock<portcullis_sources::keys::KeySource> = OnceLock::new();
    SOURCE.get_or_init(|| {
        let set =
            portcullis_crypto::jose::jws::KeySet::from_json(keys().jwks.to_string().as_bytes())
                .expect("the harness JWKS loads");
        portcullis_sources::keys::KeySource::fixed("fuzz", Arc::new(set))
    })
}

fn verify_token(token: &str) {
    use portcullis_proxy::internals::token::{verify, TokenCache};
    if let Ok(c) = portcullis_crypto::jose::jws::parse(token, &[Alg::PS256, Alg::ES256, Alg::EdDSA])
    {
        assert_reserializes(token);
        let _ = (c.kid(), c.typ_is("at+jwt"), c.has_key_carrying_header());
    }
    for issuer in issuers() {
        // Capacity 0: nothing is cached, so every run verifies from scratch.
        let cache = TokenCache::new(0);
        let Ok(t) = block_on(verify(token, issuer, Some(key_source()), None, &cache, NOW)) else {
            continue;
        };
        // What a verified token must be, re-checked independently of the verifier.
        assert_reserializes(token);
        let mut segs = token.split('.');
        let header: Value = segs
            .next()
            .and_then(b64url_decode)
            .and_then(|h| serde_json::from_slice(&h).ok())
            .expect("a verified header is JSON");
        let h = header.as_object().expect("a verified header is an object");
        let alg = h
            .get("alg")
            .and_then(Value::as_str)
            .and_then(Alg::from_name);
        assert!(
            alg.is_some_and(|a| issuer.algorithms.contains(&a)),
            "alg {h:?}"
        );
        for forbidden in ["jwk", "jku", "x5u", "x5c", "crit", "b64", "zip", "enc"] {
            assert!(
                !h.contains_key(forbidden),
                "{forbidden} in a verified header"
            );
        }
        let kid = h
            .get("kid")
            .and_then(Value::as_str)
            .expect("a verified kid");
        let key = keys().get(kid).expect("a verified kid is ours");
        assert_eq!(Some(key.alg), alg, "a key verified another algorithm");
        if issuer.require_typ {
            let typ = h
                .get("typ")
                .and_then(Value::as_str)
                .map(str::to_ascii_lowercase);
            assert!(
                matches!(typ.as_deref(), Some("at+jwt" | "application/at+jwt")),
                "typ {typ:?}"
            );
        }
        let c = &t.claims;
        assert_eq!(c.get("iss").and_then(Value::as_str), Some(ISSUER));
        let aud_ok = match c.get("aud") {
            Some(Value::String(a)) => a == AUDIENCE,
            Some(Value::Array(l)) => l.iter().any(|a| a == AUDIENCE),
            _ => false,
        };
        assert!(aud_ok, "aud {:?}", c.get("aud"));
        assert!(
            c.get("exp").is_some_and(Value::is_number),
            "exp {:?}",
            c.get("exp")
        );
        assert!(
            NOW < t.exp.saturating_add(issuer.skew),
            "expired token accepted"
        );
        assert!(
            t.nbf.is_none_or(|n| n <= NOW + issuer.skew),
            "nbf in the future"
        );
        for name in ["nbf", "iat"] {
            assert!(
                c.get(name).is_none_or(Value::is_number),
                "{name} {:?}",
                c.get(name)
            );
        }
        if let Some(max_age) = issuer.max_age {
            let iat = c
                .get("iat")
                .and_then(Value::as_f64)
                .expect("iat when max_age");
            assert!(iat + max_age as f64 >= NOW as f64 - 1.0, "too old");
        }
        assert_eq!(
            t.hash,
            portcullis_crypto::jose::sha256_b64url(token.as_bytes())
        );
    }
}

/// JWT access tokens: compact JWS parsing, header and claim checks, `Authorization` parsing and
/// JWKS loading.
pub fn jwt(data: &[u8]) {
    let Some((mode, rest)) = split_mode(data) else {
        return;
    };
    match mode % 4 {
        0 => {
            if let Ok(token) = std::str::from_utf8(rest) {
                verify_token(token);
            }
        }
        1 => {
            let (header, payload) = split_line(rest);
            let token = compact(header, payload, keys().signer_for(header));
            verify_token(&token);
        }
        2 => {
            let Ok(value) = http::HeaderValue::from_bytes(rest) else {
                return;
            };
            let (parts, ()) = http::Request::get("/x")
                .header(http::header::AUTHORIZATION, value)
                .body(())
                .expect("a request")
                .into_parts();
            if let Ok(c) = portcullis_proxy::internals::token::extract(&parts) {
                let raw = parts.headers[http::header::AUTHORIZATION]
                    .to_str()
                    .expect("extracted from a string");
                assert!(raw.ends_with(c.token), "the token is the value's tail");
                assert!(!c.token.contains(' '), "a token68 has no space");
                verify_token(c.token);
            }
        }
        _ => {
            if let Ok(set) = portcullis_crypto::jose::jws::KeySet::from_json(rest) {
                assert!(!set.is_empty(), "an empty key set loaded");
                let _ = set.skipped.len();
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// dpop

/// RFC 7638 thumbprint computed with serde_json from the JWK's required members: an
/// independent check of the verifier's `jkt`.
fn reference_thumbprint(jwk: &Map<String, Value>) -> Option<String> {
    let kty = jwk.get("kty")?.as_str()?;
    let members: &[&str] = match kty {
        "EC" => &["crv", "kty", "x", "y"],
        "OKP" => &["crv", "kty", "x"],
        "RSA" => &["e", "kty", "n"],
        _ => return None,
    };
    let mut m = serde_json::Map::new();
    for name in members {
        m.insert((*name).to_string(), jwk.get(*name)?.clone());
    }
    // serde_json's map is ordered by key, as RFC 7638 requires.
    Some(portcullis_crypto::jose::sha256_b64url(
        Value::Object(m).to_string().as_bytes(),
    ))
}

fn verify_proof(proof: &str) {
    use portcullis_crypto::jose::dpop::{normalize_htu, verify, Expect};
    let algs = [Alg::ES256, Alg::EdDSA, Alg::PS256];
    let accepts = |n: &str| n == DPOP_NONCE;
    let expects = [
        Expect {
            method: "POST",
            htu: DPOP_TOKEN_HTU,
            access_token: None,
            now: DPOP_TOKEN_NOW,
            max_age: 300,
            skew: 60,
            algs: &algs,
            nonce: None,
        },
        Expect {
            method: "GET",
            htu: DPOP_RESOURCE_HTU,
            access_token: Some(DPOP_ACCESS_TOKEN),
            now: DPOP_RESOURCE_NOW,
            max_age: 300,
            skew: 60,
            algs: &algs,
            nonce: None,
        },
        Expect {
            method: "GET",
            htu: DPOP_RESOURCE_HTU,
            access_token: Some(DPOP_ACCESS_TOKEN),
            now: DPOP_RESOURCE_NOW,
            max_age: 300,
            skew: 60,
            algs: &algs,
            nonce: Some(&accepts),
        },
    ];
    for e in &expects {
        let Ok(p) = verify(proof, e) else { continue };
        assert_reserializes(proof);
        let mut segs = proof.split('.');
        let header: Map<String, Value> = segs
            .next()
            .and_then(b64url_decode)
            .and_then(|h| serde_json::from_slice(&h).ok())
            .expect("a verified header is a JSON object");
        let claims: Map<String, Value> = segs
            .next()
            .and_then(b64url_decode)
            .and_then(|h| serde_json::from_slice(&h).ok())
            .expect("verified claims are a JSON object");
        let jwk = header
            .get("jwk")
            .and_then(Value::as_object)
            .expect("a verified proof carries its jwk");
        assert_eq!(
            reference_thumbprint(jwk).as_deref(),
            Some(p.jkt.as_str()),
            "jkt is not the RFC 7638 thumbprint of the proof's jwk"
        );
        assert_eq!(claims.get("htm").and_then(Value::as_str), Some(e.method));
        let htu = claims.get("htu").and_then(Value::as_str).expect("htu");
        assert_eq!(normalize_htu(htu).as_deref(), Some(e.htu));
        assert!(
            p.iat <= e.now + e.skew && p.iat >= e.now - e.max_age,
            "iat {}",
            p.iat
        );
        let jti = claims.get("jti").and_then(Value::as_str).expect("jti");
        assert!(!jti.is_empty());
        assert_eq!(p.jti_hash, portcullis_crypto::jose::sha256(jti.as_bytes()));
        if e.nonce.is_some() {
            assert_eq!(
                claims.get("nonce").and_then(Value::as_str),
                Some(DPOP_NONCE)
            );
        }
    }
}

/// DPoP proofs (RFC 9449 §4.3) with fixed request facts and clocks, and `htu` normalization.
pub fn dpop(data: &[u8]) {
    let Some((mode, rest)) = split_mode(data) else {
        return;
    };
    let proof = match mode % 2 {
        0 => match std::str::from_utf8(rest) {
            Ok(s) => s.to_string(),
            Err(_) => return,
        },
        _ => {
            let (header, payload) = split_line(rest);
            compact(header, payload, keys().signer_for(header))
        }
    };
    verify_proof(&proof);
    // htu normalization is idempotent: a normalized URI is its own normal form.
    if let Ok(s) = std::str::from_utf8(rest) {
        for candidate in std::iter::once(s).chain(s.lines()) {
            if let Some(n) = portcullis_crypto::jose::dpop::normalize_htu(candidate) {
                assert_eq!(
                    portcullis_crypto::jose::dpop::normalize_htu(&n).as_deref(),
                    Some(n.as_str()),
                    "normalize_htu({candidate:?}) is not a fixed point"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// detached

fn check_detached(value: &str, body: &[u8], signed_encoded: Option<bool>) {
    use portcullis_crypto::jose::detached::{check_header, parse, verify, Expect, Profile};
    let Ok(d) = parse(value) else { return };
    let anchors = [OBIE_TAN.to_string()];
    for profile in [Profile::Obie313, Profile::Obie314] {
        let e = Expect {
            profile,
            algs: &[Alg::PS256, Alg::ES256, Alg::EdDSA],
            now: NOW,
            max_age: 3600,
            skew: 60,
            iss: Some(OBIE_ISS),
            trust_anchors: &anchors,
        };
        let Ok(checked) = check_header(&d, &e) else {
            continue;
        };
        let Some(key) = keys().get(checked.kid) else {
            continue;
        };
        if verify(&d, &checked, body, key).is_err() {
            continue;
        }
        // A verified detached JWS: the payload segment is empty, the header says exactly what
        // the profile requires, and the body was signed the way the header says.
        let (h, rest) = value.split_once('.').expect("three segments");
        assert!(rest.starts_with('.'), "an attached payload verified");
        assert_reserializes(&format!("{h}.{}", &rest[1..]));
        let header: Map<String, Value> = b64url_decode(h)
            .and_then(|b| serde_json::from_slice(&b).ok())
            .expect("a verified header is a JSON object");
        match profile {
            Profile::Obie313 => assert_eq!(header.get("b64"), Some(&Value::Bool(false))),
            Profile::Obie314 => assert!(!header.contains_key("b64")),
        }
        assert_eq!(checked.encoded, profile == Profile::Obie314);
        if let Some(encoded) = signed_encoded {
            assert!(
                body.is_empty() || encoded == checked.encoded,
                "a body signed one way verified the other way (b64 confusion)"
            );
        }
        assert_eq!(
            header
                .get(portcullis_crypto::jose::detached::OB_ISS)
                .and_then(Value::as_str),
            Some(OBIE_ISS)
        );
        assert_eq!(
            header
                .get(portcullis_crypto::jose::detached::OB_TAN)
                .and_then(Value::as_str),
            Some(OBIE_TAN)
        );
        assert!((NOW - 3600..=NOW + 60).contains(&checked.iat));
    }
}

/// OBIE detached JWS (`x-jws-signature`) under both profiles.
pub fn detached(data: &[u8]) {
    let Some((mode, rest)) = split_mode(data) else {
        return;
    };
    match mode % 2 {
        0 => {
            let (value, body) = split_line(rest);
            if let Ok(value) = std::str::from_utf8(value) {
                check_detached(value, body, None);
            }
        }
        _ => {
            let Some((flags, rest)) = split_mode(rest) else {
                return;
            };
            let encoded = flags & 1 == 1;
            let (header, body) = split_line(rest);
            let protected = b64url(header);
            let input = portcullis_crypto::jose::detached::signing_input(&protected, body, encoded);
            let sig = keys().signer_for(header).sign(&input);
            let value = format!("{protected}..{}", b64url(&sig));
            check_detached(&value, body, Some(encoded));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// httpsig

/// One HTTP request in the `httpsig` layout.
pub struct FuzzRequest {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
}

/// Parses `METHOD target \n name: value ... \n\n body` (the method and target as `http`
/// parses them; otherwise `None`); lines that are not valid fields are skipped.
pub fn parse_request(data: &[u8]) -> Option<FuzzRequest> {
    let (first, rest) = split_line(data);
    let first = std::str::from_utf8(first).ok()?;
    let (method, target) = first.split_once(' ').unwrap_or((first, "/"));
    // What the pipeline hands the signature stage: a method and a URI hyper accepted.
    let method = http::Method::from_bytes(method.as_bytes()).ok()?;
    let uri = http::Uri::try_from(target).ok()?;
    let (path, query) = (uri.path().to_string(), uri.query().map(str::to_string));
    let (headers, rest) = field_lines(rest);
    Some(FuzzRequest {
        method: method.as_str().to_string(),
        path,
        query,
        headers,
        body: rest.to_vec(),
    })
}

/// `name: value` lines up to an empty line (or the end), as header fields; lines that are not
/// valid fields are skipped. Returns the fields and what follows the empty line.
fn field_lines(mut rest: &[u8]) -> (http::HeaderMap, &[u8]) {
    let mut headers = http::HeaderMap::new();
    while !rest.is_empty() {
        let (line, next) = split_line(rest);
        rest = next;
        if line.is_empty() {
            break;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = http::HeaderName::from_bytes(&line[..colon]);
        let value = http::HeaderValue::from_bytes(line[colon + 1..].trim_ascii());
        if let (Ok(n), Ok(v)) = (name, value) {
            headers.append(n, v);
        }
    }
    (headers, rest)
}

/// RFC 9421 structured fields, signature bases, `Content-Digest`, and verification.
pub fn httpsig(data: &[u8]) {
    use portcullis_crypto::httpsig::base::{normalize_authority, signature_base, signature_params};
    use portcullis_crypto::httpsig::fields::{input, parse_dictionary_str, parse_field};
    use portcullis_crypto::httpsig::{digest, verify, Message, RequestView, ResponseView};
    use sfv::ListEntry;

    let Some(req) = parse_request(data) else {
        return;
    };
    let h = &req.headers;
    let authority = h
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .and_then(|a| normalize_authority("https", a))
        .unwrap_or_else(|| "example.com".to_string());
    if let Some(a) = normalize_authority("https", &authority) {
        assert_eq!(a, authority, "normalize_authority is not idempotent");
    }
    let view = RequestView {
        method: &req.method,
        scheme: "https",
        authority: &authority,
        path: &req.path,
        query: req.query.as_deref(),
        headers: h,
    };
    let response = ResponseView {
        status: 200,
        headers: h,
    };
    let messages = [
        Message::Request(&view),
        Message::Response(&response, Some(&view)),
    ];

    // Every labelled input: `@signature-params` round-trips, every base is well formed, and a
    // signature by one of our keys is checked.
    let sigs = parse_field(h.get_all("signature")).ok().flatten();
    if let Ok(Some(inputs)) = parse_field(h.get_all("signature-input")) {
        for (label, entry) in &inputs {
            let Ok(si) = input(label.as_str(), entry) else {
                continue;
            };
            let params = signature_params(&si.covered);
            let again = parse_dictionary_str(&format!("{}={params}", label.as_str()))
                .expect("@signature-params re-parses");
            assert_eq!(
                again.get(label.as_str()),
                Some(&ListEntry::InnerList(si.covered.clone())),
                "@signature-params does not round-trip"
            );
            for msg in messages {
                let Ok(base) = signature_base(&si.covered, msg) else {
                    continue;
                };
                assert!(!base.contains('\r'), "CR in a signature base");
                assert_eq!(
                    base.split('\n').count(),
                    si.covered.items.len() + 1,
                    "a component value spans lines in the signature base"
                );
                assert!(base.ends_with(&format!("\"@signature-params\": {params}")));
                if let (Some(sigs), Some(key)) =
                    (&sigs, si.keyid.as_deref().and_then(|k| keys().get(k)))
                {
                    if let Ok(sig) =
                        portcullis_crypto::httpsig::fields::signature_bytes(sigs, &si.label)
                    {
                        let _ = key.verify(base.as_bytes(), sig);
                    }
                }
            }
        }
    }

    // The FAPI pipeline's steps, in its order.
    for require_nonce in [false, true] {
        let mut required: Vec<&str> = vec!["@method", "@target-uri"];
        if h.contains_key(http::header::AUTHORIZATION) {
            required.push("authorization");
        }
        if h.contains_key("dpop") {
            required.push("dpop");
        }
        if !req.body.is_empty() {
            required.push("content-digest");
        }
        let policy = verify::Policy {
            tag: "fapi-2-request",
            now: HTTPSIG_NOW,
            window: 300,
            skew: 60,
            require_nonce,
            required: &required,
        };
        let Ok(sel) = verify::select(h, &policy) else {
            continue;
        };
        for name in &required {
            assert!(sel.input.covers(name), "{name} not covered");
        }
        assert!(!sel.keyid.is_empty());
        match digest::check(h, &req.body) {
            Ok(false) if !req.body.is_empty() => continue,
            Err(_) => continue,
            _ => {}
        }
        let Some(key) = keys().get(&sel.keyid) else {
            continue;
        };
        let _ = verify::verify_with(
            &sel,
            Message::Request(&view),
            key,
            &[Alg::PS256, Alg::ES256, Alg::EdDSA],
        );
    }

    // Content-Digest: what we compute, we accept.
    let _ = digest::check(h, &req.body);
    for alg in [digest::DigestAlg::Sha256, digest::DigestAlg::Sha512] {
        let mut own = http::HeaderMap::new();
        let value = digest::content_digest(alg, &req.body);
        own.insert(
            "content-digest",
            http::HeaderValue::from_str(&value).expect("a digest is a header value"),
        );
        assert_eq!(digest::check(&own, &req.body), Ok(true), "{value}");
    }
}

// ---------------------------------------------------------------------------------------------
// policy and config (files)

/// A per-process directory with the dev certificates and the example policies, so the config
/// files in `config/` load as they do in the repository (`../certs`, `../policies`).
fn workdir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("portcullis-fuzzing-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        portcullis_tools::devcerts::generate(&dir.join("certs")).expect("dev certificates");
        for (name, text) in seeds::POLICY_FILES {
            let p = dir.join("policies").join(name);
            std::fs::create_dir_all(p.parent().expect("a parent")).expect("policies dir");
            std::fs::write(&p, text).expect("a policy file");
        }
        std::fs::create_dir_all(dir.join("config")).expect("config dir");
        dir
    })
}

/// Writes `data` to a fresh file in `workdir()/sub`, runs `f` on its path, and removes it.
fn with_file<T>(sub: &str, data: &[u8], f: impl FnOnce(&Path) -> T) -> T {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let p = workdir().join(sub).join(format!("fuzz-{n}.yaml"));
    std::fs::write(&p, data).expect("write the input");
    let out = f(&p);
    let _ = std::fs::remove_file(&p);
    out
}

/// Inputs that could name a device or a kernel file (`/dev/zero` would never end): skipped, as
/// are escapes that could spell one. Config and policy files are the operator's, not an
/// attacker's; the fuzzer looks for crashes in parsing and validation, not in reading devices.
fn names_a_device(data: &[u8]) -> bool {
    [&b"/dev"[..], b"/proc", b"/sys", b"\\"]
        .iter()
        .any(|w| data.windows(w.len()).any(|x| x == *w))
}

/// A route's template with each `{Name}` replaced by a literal.
fn instantiate(template: &str) -> String {
    template
        .split('/')
        .map(|s| if s.starts_with('{') { "p1" } else { s })
        .collect::<Vec<_>>()
        .join("/")
}

/// The policy parser: one YAML file, standalone and against a config's names.
pub fn policy(data: &[u8]) {
    if names_a_device(data) {
        return;
    }
    with_file("policies", data, |p| {
        let known = [
            portcullis_policy::Known::standalone(),
            portcullis_policy::Known {
                upstreams: vec!["bank", "payments"],
                issuers: vec!["as"],
                default_body_limit: 1 << 20,
                has_consent: true,
                standalone: false,
            },
        ];
        for k in &known {
            match portcullis_policy::load_files(&[p.to_path_buf()], k) {
                Ok(set) => {
                    assert!(!set.routes().is_empty(), "a policy set without routes");
                    for r in set.routes() {
                        let path = instantiate(&r.template);
                        assert!(portcullis_base::path::check_path(&path).is_ok(), "{path}");
                        let m = set.lookup(&r.method, &path).unwrap_or_else(|e| {
                            panic!("{path} ({}) finds no route: {e:?}", r.template)
                        });
                        assert_eq!(m.route.method, r.method);
                    }
                }
                Err(e) => {
                    assert!(!e.0.is_empty(), "an error without a problem");
                    let _ = e.to_string();
                }
            }
        }
    });
}

/// The config parser: one YAML file next to the dev certificates and example policies.
pub fn config(data: &[u8]) {
    if names_a_device(data) {
        return;
    }
    with_file(
        "config",
        data,
        |p| match portcullis_proxy::config::Config::load(p) {
            Ok(c) => {
                assert!(!c.upstreams.is_empty());
                assert!(!c.policies.routes().is_empty());
            }
            Err(e) => {
                assert!(!e.0.is_empty(), "an error without a problem");
                let _ = e.to_string();
            }
        },
    );
}

// ---------------------------------------------------------------------------------------------
// audit

pub fn audit_key() -> &'static portcullis_audit::AuditKey {
    static KEY: OnceLock<portcullis_audit::AuditKey> = OnceLock::new();
    KEY.get_or_init(|| {
        use base64::Engine;
        let der = base64::engine::general_purpose::STANDARD
            .decode(ED25519_PKCS8_B64)
            .expect("ed25519 test key");
        portcullis_audit::AuditKey::from_pem(
            portcullis_crypto::jose::pem("PRIVATE KEY", &der).as_bytes(),
        )
        .expect("audit test key")
    })
}

const PREV: &[u8] = b"\"prev\":\"";

/// Re-seals a log as the writer would have: each complete line's `prev` set to the hash before
/// it, a checkpoint's `sig` re-made with the harness key, and `hash` recomputed. Lines that are
/// not sealable are left as they are.
pub fn reseal(data: &[u8], prev: &mut String) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 64);
    let mut rest = data;
    while !rest.is_empty() {
        let (line, complete) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => {
                let l = &rest[..i];
                rest = &rest[i + 1..];
                (l, true)
            }
            None => {
                let l = rest;
                rest = &[];
                (l, false)
            }
        };
        if !complete {
            out.extend_from_slice(line);
            break;
        }
        let mut canonical = match portcullis_audit::split_hash(line) {
            Some((prefix, _)) => [prefix, b"}"].concat(),
            None if line.ends_with(b"}") => line.to_vec(),
            None => {
                out.extend_from_slice(line);
                out.push(b'\n');
                continue;
            }
        };
        // `"prev":"<43 chars>"`, the last one in the line.
        if let Some(at) = canonical
            .windows(PREV.len())
            .rposition(|w| w == PREV)
            .map(|i| i + PREV.len())
        {
            if canonical.len() > at + portcullis_audit::GENESIS.len()
                && canonical[at + portcullis_audit::GENESIS.len()] == b'"'
                && !prev.is_empty()
            {
                canonical[at..at + prev.len()].copy_from_slice(prev.as_bytes());
            }
        }
        if let Some((signed, _)) = portcullis_audit::split_sig(&canonical) {
            let mut buf = [signed, b"}"].concat();
            audit_key().sign_into(&mut buf, 0);
            canonical = buf;
        }
        let hash = portcullis_crypto::jose::sha256_b64url(&canonical);
        canonical.pop();
        out.extend_from_slice(&canonical);
        out.extend_from_slice(b",\"hash\":\"");
        out.extend_from_slice(hash.as_bytes());
        out.extend_from_slice(b"\"}\n");
        *prev = hash;
    }
    out
}

/// The audit-line verifier over one to four files, with and without signature checks.
pub fn audit(data: &[u8]) {
    use portcullis_audit::verify::{parse_anchor, verify_bytes, Options};
    let Some((mode, rest)) = split_mode(data) else {
        return;
    };
    let mut prev = String::new();
    let files: Vec<Vec<u8>> = rest
        .split(|&b| b == 0)
        .take(4)
        .map(|f| {
            if mode & 1 == 1 {
                reseal(f, &mut prev)
            } else {
                f.to_vec()
            }
        })
        .collect();
    let names: Vec<PathBuf> = (0..files.len())
        .map(|i| PathBuf::from(format!("audit.log.{i}")))
        .collect();
    let input: Vec<(&Path, &[u8])> = names
        .iter()
        .map(PathBuf::as_path)
        .zip(files.iter().map(Vec::as_slice))
        .collect();
    let total_lines: u64 = files
        .iter()
        .map(|f| f.iter().filter(|&&b| b == b'\n').count() as u64)
        .sum();
    // An anchor on the first record, when mode bit 1 asks for one.
    let anchor = (mode & 2 == 2)
        .then(|| {
            let first = files.first()?;
            let line = first.split(|&b| b == b'\n').next()?;
            let (_, hash) = portcullis_audit::split_hash(line)?;
            let seq = serde_json::from_slice::<Value>(line)
                .ok()?
                .get("seq")?
                .as_u64()?;
            parse_anchor(&format!("{seq}:{hash}"))
        })
        .flatten();
    let mut outcomes = Vec::new();
    for check_signatures in [false, true] {
        let opts = Options {
            keys: vec![audit_key().public()],
            check_signatures,
            anchor: anchor.clone(),
        };
        let o = verify_bytes(&input, &opts);
        let _ = o.to_string();
        if o.ok() {
            assert!(o.records <= total_lines, "more records than lines");
            match (o.first_seq, o.last_seq) {
                (Some(a), Some(b)) => {
                    assert!(o.records > 0);
                    assert_eq!(b - a + 1, o.records, "a gap in a verified log");
                }
                (None, None) => assert_eq!(o.records, 0),
                _ => panic!("first_seq and last_seq disagree"),
            }
            assert!(o.checkpoints <= o.records);
            assert!(o.unsigned_tail <= o.records);
        }
        outcomes.push(o.ok());
    }
    // Checking signatures only adds checks: a log that verifies with them verifies without.
    assert!(
        !outcomes[1] || outcomes[0],
        "signatures accepted what the chain refused"
    );
}

// ---------------------------------------------------------------------------------------------
// Request head: framing, limits, header names, Host / :authority, FAPI headers, query.

/// Small limits, so the fuzzer reaches every limit with short inputs.
fn head_limits() -> portcullis_proxy::config::Limits {
    portcullis_proxy::config::Limits {
        max_header_bytes: 512,
        max_headers: 12,
        max_uri_bytes: 256,
        ..portcullis_proxy::config::Limits::default()
    }
}

/// The request head checks that run before routing (`pipeline::http::check`, the FAPI header
/// checks) and the values later stages take from the head (`host`, `external_htu`, the query
/// check), on a head `http` accepts. Every accepted head is re-checked here against the rules
/// written out independently: what the checks let through is what the README promises.
pub fn head(data: &[u8]) {
    let _ = head_accepted(data);
}

/// [`head`], returning whether `pipeline::http::check` accepted the head with and without
/// `server_names` (`None`: the bytes are not a head `http` builds), so the replay test can tell
/// that the seeds reach both sides of the checks.
pub fn head_accepted(data: &[u8]) -> Option<[bool; 2]> {
    use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
    use portcullis_proxy::config::InteractionIdMode;
    use portcullis_proxy::internals::{fapi, http as head_check};

    let (&v, rest) = data.split_first()?;
    let version = match v {
        b'0' => http::Version::HTTP_10,
        b'2' => http::Version::HTTP_2,
        _ => http::Version::HTTP_11,
    };
    let (first, rest) = split_line(rest);
    let Ok(first) = std::str::from_utf8(first) else {
        return None;
    };
    let (method, target) = first.split_once(' ').unwrap_or((first, "/"));
    let Ok(builder) = http::Method::from_bytes(method.as_bytes()).map(|m| {
        http::Request::builder()
            .method(m)
            .uri(target)
            .version(version)
    }) else {
        return None;
    };
    let Ok(req) = builder.body(()) else {
        return None;
    };
    let (mut parts, ()) = req.into_parts();
    parts.headers = field_lines(rest).0;
    let h = &parts.headers;
    let limits = head_limits();
    let names = ["bank.example".to_string(), "127.0.0.1".to_string()];

    let mut accepted = [false; 2];
    for (k, server_names) in [&[][..], &names[..]].into_iter().enumerate() {
        if head_check::check(&parts, &limits, server_names).is_err() {
            continue;
        }
        accepted[k] = true;
        let uri_len = parts.uri.path_and_query().map_or(0, |pq| pq.as_str().len());
        assert!(
            uri_len <= limits.max_uri_bytes,
            "URI over the limit accepted"
        );
        assert!(h.len() <= limits.max_headers, "too many headers accepted");
        let bytes: usize = h.iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum();
        assert!(
            bytes <= limits.max_header_bytes,
            "header block over the limit accepted"
        );
        for name in h.keys() {
            let n = name.as_str();
            assert!(!n.contains('_'), "header name with `_` accepted: {n}");
            assert!(
                ![
                    "x-http-method-override",
                    "x-http-method",
                    "x-method-override"
                ]
                .contains(&n),
                "method override accepted: {n}"
            );
            assert!(n != "upgrade" && n != "http2-settings", "upgrade accepted");
        }
        let cl: Vec<_> = h.get_all(CONTENT_LENGTH).iter().collect();
        assert!(cl.len() <= 1, "repeated Content-Length accepted");
        if let Some(v) = cl.first() {
            assert!(
                !v.is_empty() && v.as_bytes().iter().all(u8::is_ascii_digit),
                "malformed Content-Length accepted: {v:?}"
            );
        }
        let te: Vec<_> = h.get_all(TRANSFER_ENCODING).iter().collect();
        if !te.is_empty() {
            assert!(
                cl.is_empty(),
                "Content-Length with Transfer-Encoding accepted"
            );
            assert_eq!(te.len(), 1, "repeated Transfer-Encoding accepted");
            assert!(
                te[0].as_bytes().eq_ignore_ascii_case(b"chunked"),
                "Transfer-Encoding {:?} accepted",
                te[0]
            );
            assert_eq!(parts.version, http::Version::HTTP_11, "TE outside HTTP/1.1");
        }
        let hosts: Vec<_> = h.get_all(HOST).iter().collect();
        assert!(hosts.len() <= 1, "repeated Host accepted");
        let authority = parts.uri.authority().map(|a| a.as_str());
        assert!(
            authority.is_some() || hosts.len() == 1,
            "a request without Host or :authority accepted"
        );
        assert!(
            !authority.is_some_and(|a| a.contains('@'))
                && !hosts.first().is_some_and(|v| v.as_bytes().contains(&b'@')),
            "userinfo in the authority accepted"
        );
        if let (true, Some(a), Some(v)) = (
            parts.version == http::Version::HTTP_2,
            authority,
            hosts.first(),
        ) {
            assert!(
                a.as_bytes().eq_ignore_ascii_case(v.as_bytes()),
                "Host {v:?} disagreeing with :authority {a} accepted"
            );
        }
        let host = head_check::host(&parts).expect("an accepted head has a host");
        assert_eq!(host, host.to_ascii_lowercase(), "host not lower-cased");
        assert!(!host.contains('@'));
        if !server_names.is_empty() {
            assert!(server_names.contains(&host), "host {host} is not ours");
        }
        // The DPoP `htu` the head yields is already in normal form.
        for base in [None, Some("https://bank.example")] {
            if let Some(htu) = head_check::external_htu(&parts, base) {
                assert!(htu.starts_with("https://"), "{htu}");
                assert_eq!(
                    portcullis_crypto::jose::dpop::normalize_htu(&htu).as_deref(),
                    Some(htu.as_str()),
                    "htu is not a fixed point of its normalization"
                );
            }
        }
    }

    // FAPI headers. The interaction id handed back is always a fresh or echoed canonical UUID
    // (safe to log and to put in a response header); the client's is echoed only when it is one.
    let given: Vec<_> = h.get_all(fapi::INTERACTION_ID).iter().collect();
    let single_uuid = match given.as_slice() {
        [v] => v.to_str().ok().and_then(|s| uuid::Uuid::try_parse(s).ok()),
        _ => None,
    };
    for mode in [
        InteractionIdMode::EchoOrGenerate,
        InteractionIdMode::RejectInvalid,
    ] {
        let (id, refused) = fapi::interaction_id(h, mode);
        let parsed = uuid::Uuid::try_parse(&id).expect("interaction id is a UUID");
        assert_eq!(
            id,
            parsed.hyphenated().to_string(),
            "not the canonical form"
        );
        if let Some(u) = single_uuid {
            assert_eq!(parsed, u, "a valid interaction id was not echoed");
        }
        let bad = !given.is_empty() && single_uuid.is_none();
        assert_eq!(
            refused.is_some(),
            bad && mode == InteractionIdMode::RejectInvalid,
            "interaction id refusal for {given:?}"
        );
    }
    let ips: Vec<_> = h.get_all(fapi::CUSTOMER_IP).iter().collect();
    let ip_ok = match ips.as_slice() {
        [] => true,
        [v] => v
            .to_str()
            .is_ok_and(|s| s.parse::<std::net::IpAddr>().is_ok()),
        _ => false,
    };
    assert_eq!(
        fapi::check_customer_ip(h).is_ok(),
        ip_ok,
        "customer IP {ips:?}"
    );

    // The query as routing checks it: an accepted query holds only visible ASCII and
    // well-formed escapes of visible ASCII.
    if let Some(q) = parts.uri.query() {
        if portcullis_base::path::check_query(q).is_ok() {
            let b = q.as_bytes();
            let mut i = 0;
            while i < b.len() {
                assert!(b[i].is_ascii_graphic(), "query byte {:#x} accepted", b[i]);
                if b[i] == b'%' {
                    let hex = std::str::from_utf8(&b[i + 1..i + 3]).expect("escape in range");
                    let c = u8::from_str_radix(hex, 16).expect("hex escape");
                    assert!((0x20..0x7f).contains(&c), "escape %{hex} accepted");
                    i += 3;
                } else {
                    i += 1;
                }
            }
        }
    }
    Some(accepted)
}

// ---------------------------------------------------------------------------------------------
// Request contracts (OpenAPI).

/// The OBIE v4.0.0 Payment Initiation description, read once.
pub fn obie_spec() -> &'static Arc<portcullis_policy::contract::Spec> {
    static SPEC: OnceLock<Arc<portcullis_policy::contract::Spec>> = OnceLock::new();
    SPEC.get_or_init(|| {
        Arc::new(
            portcullis_policy::contract::Spec::parse(include_str!(
                "../../../tests/vectors/openapi/obie-payment-initiation-v4.0.0.yaml"
            ))
            .expect("the vendored description"),
        )
    })
}

/// The operations of [`obie_spec`] that take a body, in the description's order: their ids.
pub fn contract_operations() -> Vec<String> {
    let spec = obie_spec();
    spec.operations()
        .iter()
        .filter(|o| o.op.contains_key("requestBody"))
        .map(|o| o.id.clone())
        .collect()
}

type Pair = (
    portcullis_policy::contract::Contract,
    portcullis_policy::contract::Contract,
);

/// Each body-taking operation's contract, strict and not, compiled once.
fn contracts() -> &'static [Pair] {
    static ALL: OnceLock<Vec<Pair>> = OnceLock::new();
    ALL.get_or_init(|| {
        use portcullis_policy::contract::ContractMode::Enforce;
        let spec = obie_spec();
        let file = Path::new("obie-payment-initiation-v4.0.0.yaml");
        contract_operations()
            .iter()
            .map(|id| {
                let c = |strict| spec.compile(file, id, Enforce, strict).expect("compiles");
                (c(true), c(false))
            })
            .collect()
    })
}

pub fn contract(data: &[u8]) {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let all = contracts();
    let (strict, loose) = &all[usize::from(pick) % all.len()];
    let mut headers = http::HeaderMap::new();
    // The headers every OBIE payment POST requires, so the body is what decides.
    headers.insert(
        "x-idempotency-key",
        http::HeaderValue::from_static("fuzz-1"),
    );
    headers.insert("x-jws-signature", http::HeaderValue::from_static("h..s"));
    let check = |c: &portcullis_policy::contract::Contract| {
        c.check(&portcullis_policy::contract::Request {
            params: &[],
            query: None,
            headers: &headers,
            body: Some(body),
        })
    };
    let (s, l) = (check(strict), check(loose));
    // Strict mode only adds refusals: what it accepts, the description accepts.
    if s.is_ok() {
        assert!(
            l.is_ok(),
            "strict accepted what the description refuses: {l:?}"
        );
    }
    // An accepted body is JSON without duplicate members.
    if l.is_ok() && !body.is_empty() {
        assert!(portcullis_base::json::parse_value(body).is_some());
    }
    // A refusal names a JSON pointer (the document, or a path into it) and a keyword.
    for v in [s.err(), l.err()].into_iter().flatten() {
        assert!(v.pointer.is_empty() || v.pointer.starts_with('/'), "{v:?}");
        assert!(!v.keyword.is_empty(), "{v:?}");
    }
}
