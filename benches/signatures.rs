//! Criterion benches for request signatures over a 2 KiB body: the raw aws-lc-rs PS256 and
//! ES256 verify (the floor), an OBIE detached JWS check (parse, header rules, key by `kid`,
//! verify; both profiles), and an RFC 9421 check (parse both fields, select by tag, coverage and
//! time, Content-Digest over the body, signature base, verify) with ES256 and PS256 keys.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use http::HeaderMap;
use portcullis::httpsig::digest::{self, content_digest, DigestAlg};
use portcullis::httpsig::sign::{component, sign, Params};
use portcullis::httpsig::verify::{select, verify_with, Policy};
use portcullis::httpsig::{Message, RequestView};
use portcullis::jose::detached::{self, ob_header, sign_detached, Expect, Profile};
use portcullis::jose::jws::KeySet;
use portcullis::jose::keypair::KeyPair;
use portcullis::jose::Alg;

const NOW: i64 = 1_800_000_000;
const ISS: &str = "0015800001041REAAY/tpp-one-software-id";
const FAPI: &[&str] = &["@method", "@target-uri", "authorization", "content-digest"];

/// A 2 KiB JSON payment body.
fn body() -> Vec<u8> {
    let mut b = br#"{"Data":{"Initiation":{"InstructedAmount":{"Amount":"165.88","Currency":"GBP"},"RemittanceInformation":{"Unstructured":""#.to_vec();
    while b.len() < 2048 - 8 {
        b.push(b'x');
    }
    b.extend_from_slice(br#""}}}}"#);
    b.resize(2048, b' ');
    b
}

fn view(h: &HeaderMap) -> RequestView<'_> {
    RequestView {
        method: "POST",
        scheme: "https",
        authority: "rs.example",
        path: "/open-banking/v3.1/pisp/domestic-payments",
        query: None,
        headers: h,
    }
}

fn keys() -> (KeyPair, KeyPair, KeySet) {
    let ps = KeyPair::generate(Alg::PS256, "ps").unwrap();
    let es = KeyPair::generate(Alg::ES256, "es").unwrap();
    let set = serde_json::json!({"keys": [ps.public_jwk(), es.public_jwk()]});
    (
        ps,
        es,
        KeySet::from_json(set.to_string().as_bytes()).unwrap(),
    )
}

fn raw(c: &mut Criterion) {
    let (ps, es, set) = keys();
    let msg = body();
    for (name, k) in [("raw_verify/PS256", &ps), ("raw_verify/ES256", &es)] {
        let sig = k.sign(&msg);
        let vk = set.get(&k.kid).unwrap();
        c.bench_function(name, |b| {
            b.iter(|| assert!(vk.verify(black_box(&msg), &sig)))
        });
    }
}

fn obie(c: &mut Criterion) {
    let (ps, _, set) = keys();
    let body = body();
    let anchors = vec!["openbanking.org.uk".to_string()];
    for (name, profile) in [
        ("obie_jws_verify_2k/obie-3.1.4", Profile::Obie314),
        ("obie_jws_verify_2k/obie-3.1.3", Profile::Obie313),
    ] {
        let h = ob_header(profile, Alg::PS256, "ps", NOW, ISS, "openbanking.org.uk");
        let value = sign_detached(&h, &body, |m| ps.sign(m));
        let e = Expect {
            profile,
            algs: &[Alg::PS256],
            now: NOW,
            max_age: 300,
            skew: 30,
            iss: Some(ISS),
            trust_anchors: &anchors,
        };
        c.bench_function(name, |b| {
            b.iter(|| {
                let d = detached::parse(black_box(&value)).unwrap();
                let checked = detached::check_header(&d, &e).unwrap();
                let key = set.get(checked.kid).unwrap();
                detached::verify(&d, &checked, black_box(&body), key).unwrap();
            })
        });
    }
}

fn rfc9421(c: &mut Criterion) {
    let (ps, es, set) = keys();
    let body = body();
    for (name, k) in [
        ("rfc9421_verify_2k/ES256", &es),
        ("rfc9421_verify_2k/PS256", &ps),
    ] {
        let mut h = HeaderMap::new();
        h.insert(
            "authorization",
            "DPoP eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"
                .parse()
                .unwrap(),
        );
        h.insert(
            "content-digest",
            content_digest(DigestAlg::Sha256, &body).parse().unwrap(),
        );
        let comps = FAPI
            .iter()
            .map(|c| component(c, &[], &[]).unwrap())
            .collect();
        let (si, s) = sign(
            "sig1",
            comps,
            &Params {
                created: NOW,
                keyid: &k.kid,
                tag: Some("fapi-2-request"),
                ..Params::default()
            },
            Message::Request(&view(&h)),
            |m| k.sign(m),
        )
        .unwrap();
        h.insert("signature-input", si.parse().unwrap());
        h.insert("signature", s.parse().unwrap());
        let policy = Policy {
            tag: "fapi-2-request",
            now: NOW,
            window: 60,
            skew: 5,
            require_nonce: false,
            required: FAPI,
        };
        c.bench_function(name, |b| {
            b.iter(|| {
                let sel = select(black_box(&h), &policy).unwrap();
                assert!(digest::check(&h, black_box(&body)).unwrap());
                let key = set.get(&sel.keyid).unwrap();
                verify_with(
                    &sel,
                    Message::Request(&view(&h)),
                    key,
                    &[Alg::PS256, Alg::ES256],
                )
                .unwrap();
            })
        });
    }
}

criterion_group!(benches, raw, obie, rfc9421);
criterion_main!(benches);
