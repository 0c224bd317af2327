//! Criterion benches for the token path: the raw aws-lc-rs verify (the floor), an access-token
//! check on a cache miss and a hit (ES256, PS256), and a DPoP proof check.

use std::future::Future;
use std::hint::black_box;
use std::path::PathBuf;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, KeyPair, RsaKeyPair};
use criterion::{criterion_group, criterion_main, Criterion};
use portcullis_crypto::jose::dpop::{self, Expect};
use portcullis_crypto::jose::jws::KeySet;
use portcullis_crypto::jose::sign::SigningKey;
use portcullis_crypto::jose::{b64url, Alg};
use portcullis_proxy::config::{Issuer, JwksSource};
use portcullis_proxy::internals::token::{verify, TokenCache};
use portcullis_sources::keys::KeySource;
use serde_json::json;

const NOW: i64 = 1_800_000_000;

/// Polls a future that completes without waiting (a known `kid` never awaits).
fn ready<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("the token check waited"),
    }
}

fn issuer(keys: KeySet) -> (Issuer, KeySource) {
    let keys = Arc::new(keys);
    let i = Issuer {
        name: "as".into(),
        issuer: "https://as.example".into(),
        audience: "https://rs.example".into(),
        discovery: None,
        jwks: Some(JwksSource::File {
            path: PathBuf::from("bench"),
            keys: Arc::clone(&keys),
        }),
        introspection: None,
        algorithms: vec![Alg::PS256, Alg::ES256, Alg::EdDSA],
        require_typ: true,
        skew: 30,
        max_token_bytes: 8192,
        max_age: None,
        scope_claim: "scope".into(),
        client_claim: "client_id".into(),
    };
    (i, KeySource::fixed("as", keys))
}

fn claims() -> serde_json::Value {
    json!({"iss": "https://as.example", "aud": "https://rs.example", "exp": NOW + 300, "iat": NOW,
           "client_id": "tpp-one", "sub": "psu-1", "scope": "accounts payments", "jti": "j",
           "cnf": {"x5t#S256": "4NFZ0TfOxohLHAC_kMoBMcV4odh6TMseWvZwYTh-Y1A"}})
}

/// A PS256 token signed with a fresh RSA-2048 key, and that key's JWKS.
fn ps256() -> (String, KeySet) {
    let kp = RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    // PKCS#1 RSAPublicKey: SEQUENCE { INTEGER n, INTEGER e }.
    let der = kp.public_key().as_ref().to_vec();
    let (_, seq) = x509_parser::der_parser::parse_der(&der).unwrap();
    let items = seq.as_sequence().unwrap();
    let strip = |b: &[u8]| {
        b.iter()
            .skip_while(|x| **x == 0)
            .copied()
            .collect::<Vec<u8>>()
    };
    let n = strip(items[0].as_slice().unwrap());
    let e = strip(items[1].as_slice().unwrap());
    let jwk = json!({"kty": "RSA", "kid": "rsa-1", "alg": "PS256", "use": "sig", "n": b64url(&n), "e": b64url(&e)});
    let input = format!(
        "{}.{}",
        b64url(
            json!({"alg": "PS256", "typ": "at+jwt", "kid": "rsa-1"})
                .to_string()
                .as_bytes()
        ),
        b64url(claims().to_string().as_bytes())
    );
    let mut sig = vec![0u8; kp.public_modulus_len()];
    kp.sign(
        &signature::RSA_PSS_SHA256,
        &SystemRandom::new(),
        input.as_bytes(),
        &mut sig,
    )
    .unwrap();
    let token = format!("{input}.{}", b64url(&sig));
    let set = KeySet::from_json(json!({"keys": [jwk]}).to_string().as_bytes()).unwrap();
    (token, set)
}

fn token_checks(c: &mut Criterion) {
    let es = SigningKey::generate(Alg::ES256, "es-1").unwrap();
    let es_token = es.access_token(&claims());
    let (es_issuer, es_keys) = issuer(KeySet::from_json(es.jwks().to_string().as_bytes()).unwrap());
    let (ps_token, ps_set) = ps256();
    let (ps_issuer, ps_keys) = issuer(ps_set);

    let mut g = c.benchmark_group("token");
    // The floor: one raw ES256 verify over the same signing input, key pre-parsed.
    let (input, sig) = es_token.rsplit_once('.').unwrap();
    let sig = portcullis_crypto::jose::b64url_decode(sig).unwrap();
    let jwk = es.public_jwk(false);
    let vk = portcullis_crypto::jose::jwk::from_jwk(jwk.as_object().unwrap()).unwrap();
    g.bench_function("raw_es256_verify", |b| {
        b.iter(|| assert!(vk.verify(black_box(input.as_bytes()), black_box(&sig))))
    });
    let no_cache = TokenCache::new(0);
    g.bench_function("es256_miss", |b| {
        b.iter(|| {
            ready(verify(
                black_box(&es_token),
                &es_issuer,
                Some(&es_keys),
                None,
                &no_cache,
                NOW,
            ))
            .unwrap()
        })
    });
    g.bench_function("ps256_miss", |b| {
        b.iter(|| {
            ready(verify(
                black_box(&ps_token),
                &ps_issuer,
                Some(&ps_keys),
                None,
                &no_cache,
                NOW,
            ))
            .unwrap()
        })
    });
    let cache = TokenCache::new(1024);
    ready(verify(
        &es_token,
        &es_issuer,
        Some(&es_keys),
        None,
        &cache,
        NOW,
    ))
    .unwrap();
    ready(verify(
        &ps_token,
        &ps_issuer,
        Some(&ps_keys),
        None,
        &cache,
        NOW,
    ))
    .unwrap();
    g.bench_function("es256_hit", |b| {
        b.iter(|| {
            ready(verify(
                black_box(&es_token),
                &es_issuer,
                Some(&es_keys),
                None,
                &cache,
                NOW,
            ))
            .unwrap()
        })
    });
    g.bench_function("ps256_hit", |b| {
        b.iter(|| {
            ready(verify(
                black_box(&ps_token),
                &ps_issuer,
                Some(&ps_keys),
                None,
                &cache,
                NOW,
            ))
            .unwrap()
        })
    });

    // A DPoP proof check (everything in RFC 9449 §4.3 but the replay store).
    let client = SigningKey::generate(Alg::ES256, "c").unwrap();
    let htu = "https://rs.example/open-banking/v3.1/aisp/accounts";
    let proof = client.dpop_proof("GET", htu, Some(&es_token), NOW, "proof-jti-1", None);
    let algs = [Alg::ES256, Alg::PS256, Alg::EdDSA];
    g.bench_function("dpop_proof_es256", |b| {
        b.iter(|| {
            dpop::verify(
                black_box(&proof),
                &Expect {
                    method: "GET",
                    htu,
                    access_token: Some(&es_token),
                    now: NOW,
                    max_age: 60,
                    skew: 5,
                    algs: &algs,
                    nonce: None,
                },
            )
            .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, token_checks);
criterion_main!(benches);
