//! JOSE unit tests, including the public vectors vendored in `tests/vectors/`.

use serde_json::{json, Value};

use super::dpop::{self, DpopError, Expect};
use super::jws::{parse, JwsError, KeyChoice, KeySet, KeySetError};
use super::sign::SigningKey;
use super::*;

const ALL: &[Alg] = &[Alg::ES256, Alg::PS256, Alg::EdDSA];

fn vectors() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join("tests/vectors")
}

/// A vendored vector file; a missing or unreadable file fails the test that needs it.
fn load(name: &str) -> Value {
    let p = vectors().join(name);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn a_minted_token_verifies_and_any_tampering_fails() {
    for alg in [Alg::ES256, Alg::EdDSA] {
        let k = SigningKey::generate(alg, "k1").unwrap();
        let set = KeySet::from_json(k.jwks().to_string().as_bytes()).unwrap();
        let t = k.access_token(&json!({"iss": "x", "exp": 1}));
        let c = parse(&t, ALL).unwrap();
        assert_eq!(c.kid(), Some("k1"));
        assert!(c.typ_is("at+jwt"));
        c.verify_with(set.select("k1", Some(alg)).unwrap()).unwrap();
        let mut bad = t.clone().into_bytes();
        let i = bad.len() / 2;
        bad[i] = if bad[i] == b'A' { b'B' } else { b'A' };
        let bad = String::from_utf8(bad).unwrap();
        let r = parse(&bad, ALL).and_then(|c| c.verify_with(set.select("k1", Some(alg)).unwrap()));
        assert!(r.is_err());
    }
}

#[test]
fn structural_damage_and_unknown_algorithms_are_refused() {
    let k = SigningKey::generate(Alg::ES256, "k1").unwrap();
    let t = k.access_token(&json!({"iss": "x"}));
    let (h, rest) = t.split_once('.').unwrap();
    let (p, s) = rest.split_once('.').unwrap();
    for bad in [
        String::new(),
        format!("{h}.{p}"),
        format!("{h}.{p}.{s}.x"),
        format!("{h}.{p}."),
        format!("{h}=.{p}.{s}"),
        format!("{h}.{p}.{s} "),
        format!(" {h}.{p}.{s}"),
        format!("{h}.{p}.+{}", &s[1..]),
        format!("{{\"alg\":\"ES256\"}}.{p}.{s}"),
    ] {
        assert!(parse(&bad, ALL).is_err(), "{bad}");
    }
    let hdr = |v: Value| format!("{}.{p}.{s}", b64url(v.to_string().as_bytes()));
    for (h, want) in [
        (json!({"alg": "none"}), JwsError::AlgNotAllowed),
        (json!({"alg": "None"}), JwsError::AlgNotAllowed),
        (json!({"alg": "HS256"}), JwsError::AlgNotAllowed),
        (json!({"alg": "ES256 "}), JwsError::AlgNotAllowed),
        (json!({"alg": "RS256"}), JwsError::AlgNotAllowed),
        (
            json!({"alg": "ES256", "crit": ["urn:x"], "urn:x": 1}),
            JwsError::Crit,
        ),
        (json!({"alg": "ES256", "crit": []}), JwsError::Crit),
        (
            json!({"alg": "ES256", "b64": false}),
            JwsError::ForbiddenHeader,
        ),
        (json!({"kid": "k1"}), JwsError::Malformed),
    ] {
        assert_eq!(parse(&hdr(h.clone()), ALL).unwrap_err(), want, "{h}");
    }
    assert_eq!(
        parse(&t, &[Alg::PS256]).unwrap_err(),
        JwsError::AlgNotAllowed
    );
}

#[test]
fn a_key_verifies_only_its_own_algorithm() {
    let ec = SigningKey::generate(Alg::ES256, "k").unwrap();
    let ed = SigningKey::generate(Alg::EdDSA, "k").unwrap();
    let ed_set = KeySet::from_json(ed.jwks().to_string().as_bytes()).unwrap();
    let t = ec.access_token(&json!({}));
    assert_eq!(
        parse(&t, ALL)
            .unwrap()
            .verify_with(ed_set.select("k", None).unwrap()),
        Err(JwsError::KeyAlgMismatch)
    );
}

/// RFC 7517 §4.5: one `kid` may name keys of different types (FAPI authorization servers
/// publish a signing and an encryption key, or an RSA and an EC key, under one `kid`). Every
/// verification key is kept; a token's `kid` and `alg` choose one; only two different keys of
/// one algorithm under one `kid` are ambiguous, and then only for that `kid` and algorithm.
#[test]
fn key_sets_keep_keys_sharing_a_kid_choose_by_alg_and_skip_unusable_keys() {
    let ec = SigningKey::generate(Alg::ES256, "a").unwrap();
    let ed = SigningKey::generate(Alg::EdDSA, "a").unwrap();
    let rsa = keypair::KeyPair::generate(Alg::PS256, "a").unwrap();
    let enc = SigningKey::generate(Alg::ES256, "a").unwrap();
    let mut enc_jwk = enc.public_jwk(true);
    enc_jwk["use"] = json!("enc");
    let mut ops_jwk = SigningKey::generate(Alg::ES256, "a")
        .unwrap()
        .public_jwk(true);
    ops_jwk["key_ops"] = json!(["encrypt"]);
    // A signing and an encryption key under one kid, plus RSA and EdDSA alternatives, and the
    // same EC key listed twice (one key, not an ambiguity).
    let shared = json!({"keys": [
        enc_jwk, ec.public_jwk(true), ops_jwk, ed.public_jwk(true), rsa.public_jwk(),
        ec.public_jwk(true),
    ]});
    let set = KeySet::from_json(shared.to_string().as_bytes()).unwrap();
    assert_eq!(set.len(), 3);
    assert_eq!(set.skipped.len(), 2, "{:?}", set.skipped);
    assert!(set.ambiguous().is_empty());
    for (alg, token) in [
        (Alg::ES256, ec.access_token(&json!({}))),
        (Alg::EdDSA, ed.access_token(&json!({}))),
    ] {
        let c = parse(&token, ALL).unwrap();
        let key = set.select("a", Some(c.alg)).unwrap();
        assert_eq!(key.alg, alg);
        c.verify_with(key).unwrap();
    }
    assert_eq!(set.select("a", Some(Alg::PS256)).unwrap().alg, Alg::PS256);
    // The encryption key never verifies: a token it signed fails against the sig key.
    let by_enc = enc.access_token(&json!({}));
    let c = parse(&by_enc, ALL).unwrap();
    assert_eq!(
        c.verify_with(set.select("a", Some(c.alg)).unwrap()),
        Err(JwsError::BadSignature)
    );
    // Without an algorithm, a kid naming several keys chooses none.
    assert_eq!(set.select("a", None).unwrap_err(), KeyChoice::Ambiguous);
    assert_eq!(
        set.select("b", Some(Alg::ES256)).unwrap_err(),
        KeyChoice::UnknownKid
    );
    assert_eq!(
        set.select("A", Some(Alg::ES256)).unwrap_err(),
        KeyChoice::UnknownKid
    );

    // Two different ES256 keys under one kid: ES256 tokens naming it are refused, EdDSA tokens
    // naming it and tokens naming other kids still verify.
    let twin = SigningKey::generate(Alg::ES256, "a").unwrap();
    let other = SigningKey::generate(Alg::ES256, "b").unwrap();
    let twins = json!({"keys": [
        ec.public_jwk(true), twin.public_jwk(true), ed.public_jwk(true), other.public_jwk(true),
    ]});
    let set = KeySet::from_json(twins.to_string().as_bytes()).unwrap();
    assert_eq!(set.len(), 4);
    assert_eq!(set.ambiguous(), vec![("a", Alg::ES256)]);
    assert_eq!(
        set.select("a", Some(Alg::ES256)).unwrap_err(),
        KeyChoice::Ambiguous
    );
    assert_eq!(set.select("a", Some(Alg::EdDSA)).unwrap().alg, Alg::EdDSA);
    assert_eq!(
        set.select("a", Some(Alg::PS256)).unwrap_err(),
        KeyChoice::NoKeyForAlg
    );
    let t = other.access_token(&json!({}));
    let c = parse(&t, ALL).unwrap();
    c.verify_with(set.select("b", Some(c.alg)).unwrap())
        .unwrap();

    // Unusable keys are skipped, each with why; a set with none left is refused.
    let a = SigningKey::generate(Alg::ES256, "a").unwrap();
    let mut private = a.public_jwk(true);
    private["d"] = json!("AAAA");
    private["kid"] = json!("p");
    let mut enc = ed.public_jwk(true);
    enc["use"] = json!("enc");
    enc["kid"] = json!("e");
    let set = json!({"keys": [a.public_jwk(true), private, enc, {"kty": "oct", "k": "AAAA", "kid": "s"}]});
    let set = KeySet::from_json(set.to_string().as_bytes()).unwrap();
    assert_eq!(set.len(), 1);
    assert_eq!(set.skipped.len(), 3);
    assert_eq!(
        KeySet::from_json(br#"{"keys":[]}"#).unwrap_err(),
        KeySetError::NoUsableKey
    );
    let only_enc = json!({"keys": [enc_only(&a)]});
    assert_eq!(
        KeySet::from_json(only_enc.to_string().as_bytes()).unwrap_err(),
        KeySetError::NoUsableKey
    );
}

fn enc_only(k: &SigningKey) -> Value {
    let mut j = k.public_jwk(true);
    j["use"] = json!("enc");
    j
}

/// RFC 7638 §3.1 example thumbprint.
#[test]
fn rfc7638_thumbprint_of_the_example_key() {
    let jwk = json!({
        "kty": "RSA",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
        "e": "AQAB",
        "alg": "PS256",
        "kid": "2011-04-29"
    });
    let k = jwk::from_jwk(jwk.as_object().unwrap()).unwrap();
    assert_eq!(k.thumbprint, "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
}

#[test]
fn the_rfc9449_example_proofs_verify_with_their_thumbprints() {
    let v = load("rfc9449-dpop-examples.json");
    let jkt = v["jkt"].as_str().unwrap();
    for name in ["token_endpoint_proof", "resource_proof"] {
        let ex = &v[name];
        let proof = ex["proof"].as_str().unwrap();
        let htu_n = dpop::normalize_htu(ex["htu"].as_str().unwrap()).unwrap();
        let iat = ex["iat"].as_i64().unwrap();
        let e = Expect {
            method: ex["htm"].as_str().unwrap(),
            htu: &htu_n,
            access_token: ex["access_token"].as_str(),
            now: iat,
            max_age: 60,
            skew: 5,
            algs: ALL,
            nonce: None,
        };
        let p = dpop::verify(proof, &e).unwrap_or_else(|err| panic!("{name}: {err:?}"));
        assert_eq!(p.jkt, jkt, "{name}");
        if let Some(ath) = ex["ath"].as_str() {
            assert_eq!(
                sha256_b64url(ex["access_token"].as_str().unwrap().as_bytes()),
                ath
            );
        }
        // The same proof with the clock set a day later, or for another method, is refused.
        let late = Expect {
            now: iat + 86_400,
            ..e
        };
        assert_eq!(dpop::verify(proof, &late).unwrap_err(), DpopError::Iat);
        let other = Expect {
            method: "DELETE",
            now: iat,
            ..late
        };
        assert_eq!(dpop::verify(proof, &other).unwrap_err(), DpopError::Method);
    }
}

fn dpop_expect<'a>(htu: &'a str, token: Option<&'a str>, now: i64) -> Expect<'a> {
    Expect {
        method: "GET",
        htu,
        access_token: token,
        now,
        max_age: 60,
        skew: 5,
        algs: ALL,
        nonce: None,
    }
}

#[test]
fn dpop_proofs_fail_each_check_with_its_own_error() {
    let k = SigningKey::generate(Alg::ES256, "c").unwrap();
    let htu = "https://rs.example/accounts";
    let now = 1_700_000_000;
    let ok = k.dpop_proof("GET", htu, Some("tok"), now, "j1", None);
    let p = dpop::verify(&ok, &dpop_expect(htu, Some("tok"), now)).unwrap();
    assert_eq!(p.jkt, k.thumbprint());
    let cases: Vec<(String, Expect<'_>, DpopError)> = vec![
        (
            k.dpop_proof("POST", htu, Some("tok"), now, "j", None),
            dpop_expect(htu, Some("tok"), now),
            DpopError::Method,
        ),
        (
            k.dpop_proof("get", htu, Some("tok"), now, "j", None),
            dpop_expect(htu, Some("tok"), now),
            DpopError::Method,
        ),
        (
            k.dpop_proof(
                "GET",
                "https://rs.example/other",
                Some("tok"),
                now,
                "j",
                None,
            ),
            dpop_expect(htu, Some("tok"), now),
            DpopError::Uri,
        ),
        (
            k.dpop_proof(
                "GET",
                "https://rs.example/accounts?x=1",
                Some("tok"),
                now,
                "j",
                None,
            ),
            dpop_expect(htu, Some("tok"), now),
            DpopError::Uri,
        ),
        (
            k.dpop_proof("GET", htu, Some("tok"), now - 120, "j", None),
            dpop_expect(htu, Some("tok"), now),
            DpopError::Iat,
        ),
        (
            k.dpop_proof("GET", htu, Some("tok"), now + 60, "j", None),
            dpop_expect(htu, Some("tok"), now),
            DpopError::Iat,
        ),
        (
            k.dpop_proof("GET", htu, None, now, "j", None),
            dpop_expect(htu, Some("tok"), now),
            DpopError::Ath,
        ),
        (
            k.dpop_proof("GET", htu, Some("other"), now, "j", None),
            dpop_expect(htu, Some("tok"), now),
            DpopError::Ath,
        ),
        (
            k.dpop_proof("GET", htu, Some("tok"), now, "j", None),
            Expect {
                nonce: Some(&|n: &str| n == "n1"),
                ..dpop_expect(htu, Some("tok"), now)
            },
            DpopError::NonceRequired,
        ),
        (
            k.dpop_proof("GET", htu, Some("tok"), now, "j", Some("n0")),
            Expect {
                nonce: Some(&|n: &str| n == "n1"),
                ..dpop_expect(htu, Some("tok"), now)
            },
            DpopError::NonceStale,
        ),
        (
            k.access_token(&json!({"jti": "j", "htm": "GET", "htu": htu, "iat": now})),
            dpop_expect(htu, None, now),
            DpopError::Typ,
        ),
        (
            k.sign_compact(
                &json!({"typ": "dpop+jwt"}),
                &json!({"jti": "j", "htm": "GET", "htu": htu, "iat": now}),
            ),
            dpop_expect(htu, None, now),
            DpopError::Key,
        ),
        (
            k.sign_compact(
                &json!({"typ": "dpop+jwt", "jwk": k.public_jwk(false)}),
                &json!({"htm": "GET", "htu": htu, "iat": now}),
            ),
            dpop_expect(htu, None, now),
            DpopError::MissingClaim,
        ),
        (
            k.sign_compact(
                &json!({"typ": "dpop+jwt", "jwk": k.public_jwk(false)}),
                &json!({"jti": "j", "htm": "GET", "htu": htu, "iat": "now"}),
            ),
            dpop_expect(htu, None, now),
            DpopError::MissingClaim,
        ),
    ];
    for (proof, e, want) in cases {
        assert_eq!(dpop::verify(&proof, &e).unwrap_err(), want);
    }
    // A proof signed by another key than the one it carries.
    let other = SigningKey::generate(Alg::ES256, "o").unwrap();
    let forged = other.sign_compact(
        &json!({"typ": "dpop+jwt", "jwk": k.public_jwk(false)}),
        &json!({"jti": "j", "htm": "GET", "htu": htu, "iat": now}),
    );
    assert_eq!(
        dpop::verify(&forged, &dpop_expect(htu, None, now)).unwrap_err(),
        DpopError::BadSignature
    );
    // A jwk with private material.
    let mut private = k.public_jwk(false);
    private["d"] = json!("AAAA");
    let p = k.sign_compact(
        &json!({"typ": "dpop+jwt", "jwk": private}),
        &json!({"jti": "j", "htm": "GET", "htu": htu, "iat": now}),
    );
    assert_eq!(
        dpop::verify(&p, &dpop_expect(htu, None, now)).unwrap_err(),
        DpopError::Key
    );
}

/// Wycheproof JWS: every case marked invalid is refused end to end (parse, key from the
/// group's JWKS, verify); valid cases with our algorithms verify.
#[test]
fn wycheproof_jws_invalid_cases_are_all_refused() {
    let v = load("wycheproof/json_web_signature_test.json");
    let (mut refused, mut accepted) = (0, 0);
    for group in v["testGroups"].as_array().into_iter().flatten() {
        let set = group
            .get("public")
            .map(|k| json!({"keys": [k]}))
            .or_else(|| group.get("publicKeyset").cloned())
            .or_else(|| group.get("publicKeys").cloned());
        let set = set.and_then(|s| KeySet::from_json(s.to_string().as_bytes()).ok());
        for t in group["tests"].as_array().into_iter().flatten() {
            let Some(jws) = t["jws"].as_str() else {
                continue;
            };
            let ok = set.as_ref().is_some_and(|set| {
                parse(jws, ALL).is_ok_and(|c| {
                    let key = c.kid().and_then(|k| set.select(k, Some(c.alg)).ok());
                    key.is_some_and(|k| c.verify_with(k).is_ok())
                })
            });
            match t["result"].as_str() {
                Some("invalid") => {
                    assert!(!ok, "tcId {} accepted: {}", t["tcId"], t["comment"]);
                    refused += 1;
                }
                Some("valid") if ok => accepted += 1,
                _ => {}
            }
        }
    }
    assert!(refused > 100, "refused {refused}");
    eprintln!("wycheproof jws: {refused} invalid refused, {accepted} valid accepted");
}

/// Wycheproof JWK: each group gives a (private) key or key set and tokens; with the public part
/// loaded as an issuer key set, every token marked invalid is refused.
#[test]
fn wycheproof_jwk_invalid_cases_are_refused() {
    let v = load("wycheproof/json_web_key_test.json");
    let public = |k: &Value| {
        let mut k = k.clone();
        if let Some(m) = k.as_object_mut() {
            for p in ["d", "p", "q", "dp", "dq", "qi"] {
                m.remove(p);
            }
        }
        k
    };
    let (mut refused, mut accepted) = (0, 0);
    for group in v["testGroups"].as_array().into_iter().flatten() {
        let private = &group["private"];
        let keys: Vec<Value> = match private.get("keys").and_then(Value::as_array) {
            Some(ks) => ks.iter().map(public).collect(),
            None => vec![public(private)],
        };
        let set = KeySet::from_json(json!({ "keys": keys }).to_string().as_bytes()).ok();
        for t in group["tests"].as_array().into_iter().flatten() {
            let Some(jws) = t["jws"].as_str() else {
                continue;
            };
            let ok = set.as_ref().is_some_and(|set| {
                parse(jws, ALL).is_ok_and(|c| {
                    c.kid()
                        .and_then(|k| set.select(k, Some(c.alg)).ok())
                        .is_some_and(|k| c.verify_with(k).is_ok())
                })
            });
            match t["result"].as_str() {
                Some("invalid") => {
                    assert!(!ok, "tcId {} accepted: {}", t["tcId"], t["comment"]);
                    refused += 1;
                }
                Some("valid") if ok => accepted += 1,
                _ => {}
            }
        }
    }
    assert!(refused >= 20, "refused {refused}");
    eprintln!("wycheproof jwk: {refused} invalid refused, {accepted} valid accepted");
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .filter_map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok())
        .collect()
}

/// The primitive files: our verify path (JWK -> pre-parsed key -> verify) agrees with every
/// Wycheproof verdict for ES256 (P1363), PS256 and Ed25519.
#[test]
fn wycheproof_primitives_agree_with_the_verify_function() {
    let files = [
        (
            "wycheproof/ecdsa_secp256r1_sha256_p1363_test.json",
            Alg::ES256,
        ),
        (
            "wycheproof/rsa_pss_2048_sha256_mgf1_32_test.json",
            Alg::PS256,
        ),
        ("wycheproof/ed25519_test.json", Alg::EdDSA),
    ];
    for (file, alg) in files {
        let v = load(file);
        let mut checked = 0;
        for group in v["testGroups"].as_array().into_iter().flatten() {
            let jwk = group
                .get("jwk")
                .or_else(|| group.get("publicKeyJwk"))
                .cloned();
            let Some(mut jwk) = jwk else { continue };
            if let Some(m) = jwk.as_object_mut() {
                m.remove("kid");
                m.remove("d");
            }
            let Ok(key) = jwk::from_jwk(jwk.as_object().unwrap()) else {
                continue;
            };
            assert_eq!(key.alg, alg);
            for t in group["tests"].as_array().into_iter().flatten() {
                let msg = hex(t["msg"].as_str().unwrap_or(""));
                let sig = hex(t["sig"].as_str().unwrap_or(""));
                let ok = key.verify(&msg, &sig);
                match t["result"].as_str() {
                    Some("valid") => assert!(ok, "{file} tcId {} valid refused", t["tcId"]),
                    Some("invalid") => assert!(!ok, "{file} tcId {} invalid accepted", t["tcId"]),
                    _ => {}
                }
                checked += 1;
            }
        }
        assert!(checked > 50, "{file}: only {checked} cases");
        eprintln!("{file}: {checked} cases agree");
    }
}

/// An RSA key that declares no `alg` (the layout of several authorization servers' RS256 key
/// sets) is PS256 and, for a signature that names RS256, RS256; a key that declares one is
/// that one only; a lookup without an algorithm still sees one key.
#[test]
fn rsa_keys_without_alg_serve_rs256_only_when_rs256_is_asked_for() {
    let rsa = keypair::KeyPair::generate(Alg::PS256, "r").unwrap();
    let mut undeclared = rsa.public_jwk();
    undeclared.as_object_mut().unwrap().remove("alg");
    let mut declared_rs = rsa.public_jwk();
    declared_rs["kid"] = json!("rs");
    declared_rs["alg"] = json!("RS256");
    let mut declared_ps = rsa.public_jwk();
    declared_ps["kid"] = json!("ps");
    let set = KeySet::from_json(
        json!({"keys": [undeclared, declared_rs, declared_ps]})
            .to_string()
            .as_bytes(),
    )
    .unwrap();
    assert_eq!(set.len(), 3);
    assert_eq!(set.select("r", Some(Alg::PS256)).unwrap().alg, Alg::PS256);
    assert_eq!(set.select("r", Some(Alg::RS256)).unwrap().alg, Alg::RS256);
    assert_eq!(set.select("r", None).unwrap().alg, Alg::PS256);
    assert_eq!(set.select("rs", Some(Alg::RS256)).unwrap().alg, Alg::RS256);
    assert_eq!(
        set.select("rs", Some(Alg::PS256)).unwrap_err(),
        KeyChoice::NoKeyForAlg
    );
    assert_eq!(set.select("ps", Some(Alg::PS256)).unwrap().alg, Alg::PS256);
    assert_eq!(
        set.select("ps", Some(Alg::RS256)).unwrap_err(),
        KeyChoice::NoKeyForAlg
    );
    // An RS256 token verifies only with an RS256 key, and is refused by an allow-list
    // without RS256.
    let input = format!(
        "{}.{}",
        b64url(json!({"alg": "RS256", "kid": "r"}).to_string().as_bytes()),
        b64url(b"{}")
    );
    let sig = rs256_sign(&rsa, input.as_bytes());
    let token = format!("{input}.{}", b64url(&sig));
    let jws = parse(&token, &[Alg::RS256]).unwrap();
    jws.verify_with(set.select("r", Some(jws.alg)).unwrap())
        .unwrap();
    assert_eq!(
        jws.verify_with(set.select("r", Some(Alg::PS256)).unwrap()),
        Err(JwsError::KeyAlgMismatch)
    );
    assert_eq!(
        parse(&token, &[Alg::PS256, Alg::ES256]).unwrap_err(),
        JwsError::AlgNotAllowed
    );
    // Under 2048 bits an RSA key is no key, whatever it declares.
    let weak = json!({"kty": "RSA", "kid": "w", "alg": "RS256",
        "n": b64url(&[0xC3; 128]), "e": "AQAB"});
    let set = KeySet::from_json(
        json!({"keys": [weak, rsa.public_jwk()]})
            .to_string()
            .as_bytes(),
    )
    .unwrap();
    assert_eq!(
        set.skipped,
        vec![(Some("w".into()), jwk::JwkError::WeakKey)]
    );
    assert_eq!(
        set.select("w", Some(Alg::RS256)).unwrap_err(),
        KeyChoice::UnknownKid
    );
}

/// RSASSA-PKCS1-v1_5 SHA-256 with a test key (portcullis never signs RS256).
fn rs256_sign(k: &keypair::KeyPair, msg: &[u8]) -> Vec<u8> {
    let pem = k.to_pkcs8_pem();
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::PrivateKeyDer::from_pem_slice(pem.as_bytes()).unwrap();
    let rsa = aws_lc_rs::rsa::KeyPair::from_pkcs8(der.secret_der()).unwrap();
    let mut sig = vec![0u8; rsa.public_modulus_len()];
    rsa.sign(
        &aws_lc_rs::signature::RSA_PKCS1_SHA256,
        &aws_lc_rs::rand::SystemRandom::new(),
        msg,
        &mut sig,
    )
    .unwrap();
    sig
}
