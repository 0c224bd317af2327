//! Detached JWS: the RFC 7797 vectors (signing input byte for byte, the MAC reproduced, the
//! header without `crit` refused) and every OBIE header rule, one mutation at a time.

use aws_lc_rs::hmac;
use serde_json::{json, Value};

use super::*;
use crate::jose::jwk::from_jwk;
use crate::jose::keypair::KeyPair;

fn vector() -> Value {
    let p = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join("tests/vectors/rfc7797-unencoded-payload.json");
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap()
}

fn hs256(key: &[u8], input: &[u8]) -> String {
    b64url(hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), input).as_ref())
}

#[test]
fn rfc7797_unencoded_payload_signing_input_and_mac_match_the_rfc() {
    let v = vector();
    let key = b64url_decode(v["key_jwk"]["k"].as_str().unwrap()).unwrap();
    let payload = v["payload"].as_str().unwrap().as_bytes();
    let f = &v["b64_false"];
    let d = parse(f["detached"].as_str().unwrap()).unwrap();
    assert_eq!(d.protected, f["protected"].as_str().unwrap());
    assert_eq!(
        Value::Object(d.header.clone()).to_string(),
        f["protected_header_json"].as_str().unwrap()
    );
    // b64: false, listed in crit: the payload goes in unencoded.
    assert_eq!(b64_mode(&d.header), Ok(false));
    let input = signing_input(d.protected, payload, false);
    assert_eq!(input, f["signing_input"].as_str().unwrap().as_bytes());
    assert_eq!(hs256(&key, &input), f["signature"].as_str().unwrap());
    assert_eq!(b64url(&d.signature), f["signature"].as_str().unwrap());
    // The b64: true control: the same payload, base64url-encoded in the signing input.
    let compact = v["b64_true"]["compact"].as_str().unwrap();
    let (h, rest) = compact.split_once('.').unwrap();
    let (p, sig) = rest.split_once('.').unwrap();
    let input = signing_input(h, payload, true);
    assert_eq!(input, format!("{h}.{p}").as_bytes());
    assert_eq!(hs256(&key, &input), sig);
}

#[test]
fn rfc7797_b64_false_without_crit_is_refused_even_with_the_right_mac() {
    let v = vector();
    let key = b64url_decode(v["key_jwk"]["k"].as_str().unwrap()).unwrap();
    let n = &v["negative_b64_false_without_crit"];
    let protected = n["protected"].as_str().unwrap();
    let value = format!("{protected}..{}", n["signature"].as_str().unwrap());
    let d = parse(&value).unwrap();
    // The MAC is right over the unencoded input...
    let input = signing_input(protected, b"$.02", false);
    assert_eq!(hs256(&key, &input), n["signature"].as_str().unwrap());
    // ...and the header is still refused (RFC 7797 §6).
    assert_eq!(b64_mode(&d.header), Err(DetachedError::B64));
}

const NOW: i64 = 1_800_000_000;
const ISS: &str = "0015800001041REAAY/tpp-one-software-id";
const BODY: &[u8] = br#"{"Data":{"Initiation":{"InstructedAmount":{"Amount":"10.50","Currency":"GBP"}}},"Risk":{}}"#;

fn anchors() -> Vec<String> {
    vec!["openbanking.org.uk".into()]
}

fn expect(profile: Profile, anchors: &[String]) -> Expect<'_> {
    Expect {
        profile,
        algs: &[Alg::PS256],
        now: NOW,
        max_age: 300,
        skew: 5,
        iss: Some(ISS),
        trust_anchors: anchors,
    }
}

fn header(profile: Profile, kid: &str) -> Map<String, Value> {
    ob_header(
        profile,
        Alg::PS256,
        kid,
        NOW - 10,
        ISS,
        "openbanking.org.uk",
    )
}

fn check_and_verify(
    value: &str,
    body: &[u8],
    e: &Expect<'_>,
    key: &VerifyingKey,
) -> Result<(), DetachedError> {
    let d = parse(value)?;
    let c = check_header(&d, e)?;
    assert_eq!(c.kid, "k1");
    verify(&d, &c, body, key)
}

#[test]
fn a_signed_body_verifies_under_both_profiles_and_one_changed_byte_fails() {
    let k = KeyPair::generate(Alg::PS256, "k1").unwrap();
    let vk = from_jwk(k.public_jwk().as_object().unwrap()).unwrap();
    let a = anchors();
    for profile in [Profile::Obie313, Profile::Obie314] {
        let sig = sign_detached(&header(profile, "k1"), BODY, |m| k.sign(m));
        let e = expect(profile, &a);
        check_and_verify(&sig, BODY, &e, &vk).unwrap();
        let mut changed = BODY.to_vec();
        changed[40] ^= 1;
        assert_eq!(
            check_and_verify(&sig, &changed, &e, &vk),
            Err(DetachedError::BadSignature)
        );
        // Same meaning, other bytes: bytes are signed, not meaning.
        let reserialized = serde_json::to_vec(&serde_json::from_slice::<Value>(BODY).unwrap())
            .unwrap()
            .into_iter()
            .chain(*b" ")
            .collect::<Vec<u8>>();
        assert_eq!(
            check_and_verify(&sig, &reserialized, &e, &vk),
            Err(DetachedError::BadSignature)
        );
        // The other profile refuses the header (b64 present or absent).
        let other = match profile {
            Profile::Obie313 => Profile::Obie314,
            Profile::Obie314 => Profile::Obie313,
        };
        let want = match other {
            Profile::Obie313 => DetachedError::B64Missing,
            Profile::Obie314 => DetachedError::B64,
        };
        assert_eq!(
            check_and_verify(&sig, BODY, &expect(other, &a), &vk),
            Err(want)
        );
    }
}

#[test]
fn a_b64_mismatch_between_header_and_signing_input_fails() {
    let k = KeyPair::generate(Alg::PS256, "k1").unwrap();
    let vk = from_jwk(k.public_jwk().as_object().unwrap()).unwrap();
    let a = anchors();
    // Header says b64: false but the signer signed base64url(body) (B03), and the reverse.
    for (profile, encoded_input) in [(Profile::Obie313, true), (Profile::Obie314, false)] {
        let h = header(profile, "k1");
        let protected = b64url(Value::Object(h).to_string().as_bytes());
        let sig = k.sign(&signing_input(&protected, BODY, encoded_input));
        let value = format!("{protected}..{}", b64url(&sig));
        assert_eq!(
            check_and_verify(&value, BODY, &expect(profile, &a), &vk),
            Err(DetachedError::BadSignature),
            "{profile:?}"
        );
    }
}

#[test]
fn each_header_rule_refuses_with_its_own_error() {
    let k = KeyPair::generate(Alg::PS256, "k1").unwrap();
    let vk = from_jwk(k.public_jwk().as_object().unwrap()).unwrap();
    let a = anchors();
    type Edit = fn(&mut Map<String, Value>);
    let cases: Vec<(Profile, Edit, DetachedError)> = vec![
        (
            Profile::Obie314,
            |h| {
                h.remove("alg");
            },
            DetachedError::AlgNotAllowed,
        ),
        (
            Profile::Obie314,
            |h| {
                h.insert("alg".into(), json!("RS256"));
            },
            DetachedError::AlgNotAllowed,
        ),
        (
            Profile::Obie314,
            |h| {
                h.insert("alg".into(), json!("none"));
            },
            DetachedError::AlgNotAllowed,
        ),
        (
            Profile::Obie314,
            |h| {
                h.insert("alg".into(), json!("HS256"));
            },
            DetachedError::AlgNotAllowed,
        ),
        (
            Profile::Obie314,
            |h| {
                h.insert("alg".into(), json!("ES256"));
            },
            DetachedError::AlgNotAllowed,
        ),
        (
            Profile::Obie314,
            |h| {
                h.remove("kid");
            },
            DetachedError::KidMissing,
        ),
        (
            Profile::Obie314,
            |h| {
                h.remove("crit");
            },
            DetachedError::CritMissing,
        ),
        (
            Profile::Obie314,
            |h| {
                h.insert("crit".into(), json!([OB_IAT, OB_ISS]));
            },
            DetachedError::Crit,
        ),
        (
            Profile::Obie314,
            |h| {
                h.insert("crit".into(), json!([OB_IAT, OB_ISS, OB_TAN, "urn:x"]));
            },
            DetachedError::Crit,
        ),
        (
            Profile::Obie314,
            |h| {
                h.insert("crit".into(), json!([OB_IAT, OB_ISS, OB_TAN, OB_TAN]));
            },
            DetachedError::Crit,
        ),
        (
            Profile::Obie314,
            |h| {
                h.insert("crit".into(), json!("x"));
            },
            DetachedError::Crit,
        ),
        (
            Profile::Obie314,
            |h| {
                h.insert("b64".into(), json!(true));
            },
            DetachedError::B64,
        ),
        (
            Profile::Obie313,
            |h| {
                h.remove("b64");
            },
            DetachedError::B64Missing,
        ),
        (
            Profile::Obie313,
            |h| {
                h.insert("b64".into(), json!(true));
            },
            DetachedError::B64,
        ),
        (
            Profile::Obie313,
            |h| {
                h.insert("b64".into(), json!("false"));
            },
            DetachedError::B64,
        ),
        // b64: false without b64 in crit (RFC 7797 §6).
        (
            Profile::Obie313,
            |h| {
                h.insert("crit".into(), json!([OB_IAT, OB_ISS, OB_TAN]));
            },
            DetachedError::B64,
        ),
        (
            Profile::Obie314,
            |h| {
                h.remove(OB_IAT);
            },
            DetachedError::IatMissing,
        ),
        (
            Profile::Obie314,
            |h| {
                h.insert(OB_IAT.into(), json!("1800000000"));
            },
            DetachedError::Iat,
        ),
        (
            Profile::Obie314,
            |h| {
                h.insert(OB_IAT.into(), json!(NOW + 60));
            },
            DetachedError::Iat,
        ),
        (
            Profile::Obie314,
            |h| {
                h.insert(OB_IAT.into(), json!(NOW - 301));
            },
            DetachedError::Iat,
        ),
        (
            Profile::Obie314,
            |h| {
                h.remove(OB_ISS);
            },
            DetachedError::IssMissing,
        ),
        (
            Profile::Obie314,
            |h| {
                h.insert(OB_ISS.into(), json!("other-org/other-ssa"));
            },
            DetachedError::Iss,
        ),
        (
            Profile::Obie314,
            |h| {
                h.insert(OB_ISS.into(), json!(7));
            },
            DetachedError::Iss,
        ),
        (
            Profile::Obie314,
            |h| {
                h.remove(OB_TAN);
            },
            DetachedError::TanMissing,
        ),
        (
            Profile::Obie314,
            |h| {
                h.insert(OB_TAN.into(), json!("evil.example"));
            },
            DetachedError::Tan,
        ),
        (
            Profile::Obie314,
            |h| {
                h.insert("typ".into(), json!("JWT"));
            },
            DetachedError::Header,
        ),
        (
            Profile::Obie314,
            |h| {
                h.insert("cty".into(), json!("text/plain"));
            },
            DetachedError::Header,
        ),
        (
            Profile::Obie314,
            |h| {
                h.insert("jku".into(), json!("https://evil.example/jwks"));
            },
            DetachedError::Header,
        ),
        (
            Profile::Obie314,
            |h| {
                h.insert("jwk".into(), json!({}));
            },
            DetachedError::Header,
        ),
    ];
    for (i, (profile, edit, want)) in cases.into_iter().enumerate() {
        let mut h = header(profile, "k1");
        edit(&mut h);
        let sig = sign_detached(&h, BODY, |m| k.sign(m));
        assert_eq!(
            check_and_verify(&sig, BODY, &expect(profile, &a), &vk),
            Err(want),
            "case {i}: {}",
            Value::Object(h)
        );
    }
    // A key of another algorithm for the header's alg.
    let ec = KeyPair::generate(Alg::ES256, "k1").unwrap();
    let ec_vk = from_jwk(ec.public_jwk().as_object().unwrap()).unwrap();
    let sig = sign_detached(&header(Profile::Obie314, "k1"), BODY, |m| k.sign(m));
    assert_eq!(
        check_and_verify(&sig, BODY, &expect(Profile::Obie314, &a), &ec_vk),
        Err(DetachedError::KeyMismatch)
    );
    // Signed by another key with the same kid.
    let other = KeyPair::generate(Alg::PS256, "k1").unwrap();
    let forged = sign_detached(&header(Profile::Obie314, "k1"), BODY, |m| other.sign(m));
    assert_eq!(
        check_and_verify(&forged, BODY, &expect(Profile::Obie314, &a), &vk),
        Err(DetachedError::BadSignature)
    );
    // No expected iss (the caller cannot be named): refused.
    let e = Expect {
        iss: None,
        ..expect(Profile::Obie314, &a)
    };
    assert_eq!(
        check_and_verify(&sig, BODY, &e, &vk),
        Err(DetachedError::Iss)
    );
}

#[test]
fn only_the_detached_compact_form_parses() {
    let k = KeyPair::generate(Alg::PS256, "k1").unwrap();
    let sig = sign_detached(&header(Profile::Obie314, "k1"), BODY, |m| k.sign(m));
    let (h, s) = sig.split_once("..").unwrap();
    for bad in [
        format!("{h}.{}.{s}", b64url(BODY)),
        format!("{h}.{s}"),
        format!("{h}...{s}"),
        format!("{h}.."),
        format!("..{s}"),
        format!("{h}=..{s}"),
        format!("{h}..{s} "),
        format!("{}..{s}", b64url(b"[1]")),
        format!("{}..{s}", b64url(br#"{"alg":"PS256","alg":"PS256"}"#)),
        String::new(),
    ] {
        assert_eq!(parse(&bad).unwrap_err(), DetachedError::Malformed, "{bad}");
    }
}
