//! Criterion benches for request signatures over a 2 KiB body: the raw aws-lc-rs PS256 and
//! ES256 verify (the floor), an OBIE detached JWS check (parse, header rules, key by `kid`,
//! verify; both profiles), and an RFC 9421 check (parse both fields, select by tag, coverage and
//! time, Content-Digest over the body, signature base, verify) with ES256 and PS256 keys.
//!
//! `signed_payment_roundtrip` runs the whole proxy in process (mTLS over loopback, HTTP/1.1
//! keep-alive, the built-in mock bank upstream, audit on) and sends the same 2 KiB payment
//! POST to three proxies that differ only in the route's signature requirement: none, OBIE
//! `x-jws-signature` (PS256), RFC 9421 (ES256). The difference is the per-request cost of a
//! signed route (buffering, parsing, key lookup, verify).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use http::HeaderMap;
use portcullis_crypto::httpsig::digest::{self, content_digest, DigestAlg};
use portcullis_crypto::httpsig::sign::{component, sign, Params};
use portcullis_crypto::httpsig::verify::{select, verify_with, Policy};
use portcullis_crypto::httpsig::{Message, RequestView};
use portcullis_crypto::jose::detached::{self, ob_header, sign_detached, Expect, Profile};
use portcullis_crypto::jose::jws::KeySet;
use portcullis_crypto::jose::keypair::KeyPair;
use portcullis_crypto::jose::Alg;

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
        let vk = set.select(&k.kid, Some(k.alg)).unwrap();
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
                let key = set.select(checked.kid, Some(checked.alg)).unwrap();
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
                let key = set.select(&sel.keyid, None).unwrap();
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

struct Bed {
    rt: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
    upstream: std::net::SocketAddr,
    _shutdown: tokio_util::sync::CancellationToken,
}

fn bed() -> Bed {
    portcullis_proxy::install_crypto_provider();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    portcullis_tools::devcerts::generate(dir.path()).unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let upstream = rt.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        tokio::spawn(portcullis_tools::mockbank::serve(l, shutdown.clone()));
        a
    });
    Bed {
        rt,
        dir,
        upstream,
        _shutdown: shutdown,
    }
}

const PAY: &str = "/open-banking/v3.1/pisp/domestic-payments";

/// A proxy whose one route is `POST PAY` with `signature` (YAML, or empty for none).
fn proxy(b: &Bed, name: &str, signature: &str) -> std::net::SocketAddr {
    let d = b.dir.path();
    let pol = d.join(format!("policies-{name}"));
    std::fs::create_dir_all(&pol).unwrap();
    std::fs::write(
        pol.join("p.yaml"),
        format!(
            "group: g\nupstream: bank\nroutes:\n  - id: pay\n    method: POST\n    path: {PAY}\n    body_limit: 4096\n{signature}"
        ),
    )
    .unwrap();
    let c = |f: &str| d.join(f).display().to_string();
    let config = format!(
        r#"listener:
  address: "127.0.0.1:0"
  tls: {{certificate: {server}, private_key: {key}, client_ca: [{ca}]}}
upstreams:
  bank: {{url: "http://{up}"}}
audit: {{sink: file, path: {audit}}}
policies: [{pol}]
signatures:
  client: "{{org_id}}"
  client_keys: {{directory: {clients}}}
  jws: {{trust_anchors: [openbanking.org.uk], iss: "{{org_id}}/{{cert_cn}}", max_age: 1h}}
  http: {{public_base_url: "https://rs.example", window: 1h}}
"#,
        server = c("server.pem"),
        key = c("server.key"),
        ca = c("ca.pem"),
        up = b.upstream,
        audit = c(&format!("audit-{name}.log")),
        pol = pol.display(),
        clients = c("clients"),
    );
    let path = d.join(format!("{name}.yaml"));
    std::fs::write(&path, config).unwrap();
    let config = portcullis_proxy::config::Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    b.rt.block_on(async {
        let audit = portcullis_audit::AuditLog::start(&config.audit).unwrap();
        let shared = std::sync::Arc::new(portcullis_proxy::Shared::new(config, audit, None));
        let running = portcullis_proxy::start(shared).await.unwrap();
        let addr = running.addr;
        std::mem::forget(running);
        addr
    })
}

fn roundtrip(c: &mut Criterion) {
    let b = bed();
    let d = b.dir.path();
    let (ps, es, _) = keys();
    std::fs::create_dir_all(d.join("clients")).unwrap();
    let set = serde_json::json!({"keys": [ps.public_jwk(), es.public_jwk()]});
    std::fs::write(d.join("clients/PSDGB-FCA-123456.json"), set.to_string()).unwrap();
    let body = bytes::Bytes::from(body());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let obie_sig = sign_detached(
        &ob_header(
            Profile::Obie314,
            Alg::PS256,
            "ps",
            now,
            "PSDGB-FCA-123456/tpp-one-software-id",
            "openbanking.org.uk",
        ),
        &body,
        |m| ps.sign(m),
    );
    let http_sig = portcullis_tools::sign::http_headers(
        &es,
        "POST",
        &format!("https://rs.example{PAY}"),
        Some(&body),
        &HeaderMap::new(),
        "fapi-2-request",
        None,
        "sig1",
        now,
    )
    .unwrap();
    type Case<'a> = (&'a str, String, Vec<(String, String)>);
    let cases: Vec<Case> = vec![
        ("unsigned", String::new(), vec![]),
        (
            "obie_jws_ps256",
            "    signature: {kind: obie-jws, profile: obie-3.1.4}\n".into(),
            vec![("x-jws-signature".into(), obie_sig)],
        ),
        (
            "rfc9421_es256",
            "    signature: {kind: http-sig}\n".into(),
            http_sig,
        ),
    ];
    let tls = portcullis_tools::client::tls_config(
        &d.join("ca.pem"),
        Some((&d.join("tpp1.pem"), &d.join("tpp1.key"))),
        false,
    )
    .unwrap();
    let mut g = c.benchmark_group("signed_payment_roundtrip");
    for (name, signature, headers) in cases {
        let addr = proxy(&b, name, &signature);
        let mut conn =
            b.rt.block_on(portcullis_tools::client::Conn::connect(
                addr,
                "localhost",
                tls.clone(),
            ))
            .unwrap();
        let make = || {
            let mut r = http::Request::post(PAY)
                .header("host", "localhost")
                .header("content-type", "application/json");
            for (k, v) in &headers {
                r = r.header(k.as_str(), v.as_str());
            }
            r.body(http_body_util::Full::new(body.clone())).unwrap()
        };
        let a = b.rt.block_on(conn.send(make())).unwrap();
        assert!(a.status.is_success(), "{name}: {} {:?}", a.status, a.body);
        g.bench_function(name, |bench| {
            bench.iter(|| {
                let a = b.rt.block_on(conn.send(make())).unwrap();
                assert!(a.status.is_success());
            })
        });
    }
    g.finish();
}

criterion_group!(benches, raw, obie, rfc9421, roundtrip);
criterion_main!(benches);
