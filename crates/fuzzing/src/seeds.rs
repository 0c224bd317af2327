//! The seed corpora in `fuzz/corpus/<target>/`: real, valid inputs (and the classic refusals)
//! made with the harness's fixed keys and the library's own signers, the repository's config and
//! policy files, the published test vectors, and an audit log written by the real writer.
//!
//! Regenerate with `cargo test --test fuzz_corpus -- --ignored write_seeds` (the files are
//! deterministic except where a signature is randomized: ES256).

use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use super::{
    compact, keys, AUDIENCE, DPOP_ACCESS_TOKEN, DPOP_NONCE, DPOP_RESOURCE_HTU, DPOP_RESOURCE_NOW,
    DPOP_TOKEN_HTU, DPOP_TOKEN_NOW, EC_KID, ED_KID, HTTPSIG_NOW, ISSUER, NOW, OBIE_ISS, OBIE_TAN,
};
use portcullis_crypto::jose::b64url;
use portcullis_crypto::jose::keypair::KeyPair;

/// The example policies, embedded so the `path` target has a real route table and the `config`
/// target finds `../policies` next to its input.
pub const POLICY_FILES: &[(&str, &str)] = &[
    (
        "obie-aisp.yaml",
        include_str!("../../../policies/obie-aisp.yaml"),
    ),
    (
        "obie-pisp.yaml",
        include_str!("../../../policies/obie-pisp.yaml"),
    ),
    (
        "fapi2-rar.yaml",
        include_str!("../../../policies/fapi2-rar.yaml"),
    ),
    (
        "sidecar/api.yaml",
        include_str!("../../../policies/sidecar/api.yaml"),
    ),
];

/// Seeds by target, then by file name.
pub type Seeds = BTreeMap<&'static str, BTreeMap<String, Vec<u8>>>;

fn add(s: &mut Seeds, target: &'static str, name: impl Into<String>, data: impl Into<Vec<u8>>) {
    s.entry(target)
        .or_default()
        .insert(name.into(), data.into());
}

fn with_mode(mode: u8, rest: &[u8]) -> Vec<u8> {
    let mut v = vec![mode];
    v.extend_from_slice(rest);
    v
}

fn pair(header: &Value, payload: &Value) -> Vec<u8> {
    format!("{header}\n{payload}").into_bytes()
}

/// Writes every seed under `out/<target>/`; `repo` is the repository root (config files) and
/// `vectors` the vendored test vectors (`tests/vectors/`).
pub fn write_all(repo: &Path, vectors: &Path, out: &Path) -> io::Result<usize> {
    let seeds = all(repo, vectors)?;
    let mut n = 0;
    for (target, files) in &seeds {
        let dir = out.join(target);
        std::fs::create_dir_all(&dir)?;
        for (name, data) in files {
            std::fs::write(dir.join(name), data)?;
            n += 1;
        }
    }
    Ok(n)
}

pub fn all(repo: &Path, vectors: &Path) -> io::Result<Seeds> {
    let mut s = Seeds::new();
    path_seeds(&mut s);
    jwt_seeds(&mut s, vectors)?;
    dpop_seeds(&mut s, vectors)?;
    detached_seeds(&mut s);
    httpsig_seeds(&mut s);
    file_seeds(&mut s, repo)?;
    audit_seeds(&mut s)?;
    head_seeds(&mut s);
    contract_seeds(&mut s);
    Ok(s)
}

/// Bodies for the `contract` target, made from the OBIE description's own schemas: for each
/// operation that takes a body, an instance with its required members (enum values, formats
/// and lengths as declared), so the fuzzer starts inside every schema.
fn contract_seeds(s: &mut Seeds) {
    let spec = super::obie_spec();
    for (i, id) in super::contract_operations().iter().enumerate() {
        let op = spec.operations().into_iter().find(|o| &o.id == id);
        let Some(schema) = op.and_then(|o| spec.body_schema(&o).ok()?.0.cloned()) else {
            continue;
        };
        let body = sample(spec, &schema, 0).to_string();
        let mut data = vec![i as u8];
        data.extend_from_slice(body.as_bytes());
        add(s, "contract", format!("contract-{id}"), data);
    }
}

fn sample(spec: &portcullis_policy::contract::Spec, v: &Value, depth: usize) -> Value {
    let Ok(v) = spec.deref(v) else {
        return Value::Null;
    };
    if depth > 16 {
        return Value::Null;
    }
    if let Some(e) = v
        .get("enum")
        .and_then(Value::as_array)
        .and_then(|e| e.first())
    {
        return e.clone();
    }
    if let Some(first) = ["oneOf", "anyOf"]
        .iter()
        .find_map(|k| v.get(*k).and_then(Value::as_array).and_then(|l| l.first()))
    {
        return sample(spec, first, depth + 1);
    }
    let ty = v.get("type").and_then(Value::as_str).unwrap_or("object");
    match ty {
        "object" => {
            let mut m = serde_json::Map::new();
            let props = v.get("properties").and_then(Value::as_object);
            for name in v
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let Some(name) = name.as_str() else { continue };
                let p = props
                    .and_then(|p| p.get(name))
                    .cloned()
                    .unwrap_or(Value::Null);
                m.insert(name.to_string(), sample(spec, &p, depth + 1));
            }
            Value::Object(m)
        }
        "array" => json!([v
            .get("items")
            .map_or(Value::Null, |i| sample(spec, i, depth + 1))]),
        "string" => match v.get("format").and_then(Value::as_str) {
            Some("date-time") => json!("2027-01-01T10:00:00+00:00"),
            Some("date") => json!("2027-01-01"),
            Some("uri") => json!("https://tpp.example/cb"),
            _ => {
                let n = v
                    .get("minLength")
                    .and_then(Value::as_u64)
                    .unwrap_or(1)
                    .max(1);
                json!("1".repeat(n as usize))
            }
        },
        "integer" | "number" => json!(1),
        "boolean" => json!(true),
        _ => Value::Null,
    }
}

/// Request heads for the `head` target: a good one per HTTP version, then one of each refusal
/// the head checks make (docs/attacks.md G04, G05, G12, G14, G18–G23, Gx07–Gx14), so the fuzzer
/// starts next to every branch.
fn head_seeds(s: &mut Seeds) {
    const GOOD: &str = "GET /open-banking/v3.1/aisp/accounts?page=2&x=%2F\nhost: bank.example\n\
        x-fapi-interaction-id: 93bac548-d2de-4546-b106-880a5018460d\n\
        x-fapi-customer-ip-address: 198.51.100.7\nauthorization: Bearer a.b.c\n\n";
    let heads: &[(&str, String)] = &[
        ("good-h11", format!("1{GOOD}")),
        ("good-h10", format!("0{GOOD}")),
        (
            "good-h2",
            "2GET https://bank.example/open-banking/v3.1/aisp/accounts\nhost: bank.example\n\n"
                .into(),
        ),
        (
            "post-chunked",
            "1POST /open-banking/v3.1/pisp/domestic-payments\nhost: bank.example\n\
             transfer-encoding: chunked\n\n"
                .into(),
        ),
        (
            "post-length",
            "1POST /p\nhost: bank.example\ncontent-length: 42\n\n".into(),
        ),
        (
            "cl-and-te",
            "1POST /p\nhost: a\ncontent-length: 5\ntransfer-encoding: chunked\n\n".into(),
        ),
        (
            "two-cl",
            "1POST /p\nhost: a\ncontent-length: 5\ncontent-length: 6\n\n".into(),
        ),
        (
            "cl-plus",
            "1POST /p\nhost: a\ncontent-length: +5\n\n".into(),
        ),
        (
            "te-gzip",
            "1POST /p\nhost: a\ntransfer-encoding: gzip, chunked\n\n".into(),
        ),
        (
            "te-h10",
            "0POST /p\nhost: a\ntransfer-encoding: chunked\n\n".into(),
        ),
        (
            "underscore",
            "1GET /a\nhost: a\nx_forwarded_for: 1.2.3.4\n\n".into(),
        ),
        (
            "method-override",
            "1POST /a\nhost: a\nx-http-method-override: DELETE\n\n".into(),
        ),
        (
            "upgrade",
            "1GET /a\nhost: a\nconnection: Upgrade, HTTP2-Settings\nupgrade: h2c\n\
             http2-settings: AAMAAABkAAQAoAAAAAIAAAAA\n\n"
                .into(),
        ),
        ("no-host", "1GET /a\n\n".into()),
        ("two-hosts", "1GET /a\nhost: a\nhost: b\n\n".into()),
        ("userinfo", "1GET /a\nhost: evil@bank.example\n\n".into()),
        (
            "h2-host-mismatch",
            "2GET https://bank.example/a\nhost: other.example\n\n".into(),
        ),
        ("not-ours", "1GET /a\nhost: admin.internal\n\n".into()),
        ("host-port", "1GET /a\nhost: BANK.example:8443\n\n".into()),
        (
            "absolute-form",
            "1GET http://other.example/admin\nhost: bank.example\n\n".into(),
        ),
        (
            "bad-interaction-id",
            "1GET /a\nhost: a\nx-fapi-interaction-id: not-a-uuid\r\n\n".into(),
        ),
        (
            "two-interaction-ids",
            "1GET /a\nhost: a\nx-fapi-interaction-id: 93bac548-d2de-4546-b106-880a5018460d\n\
             x-fapi-interaction-id: 93bac548-d2de-4546-b106-880a5018460e\n\n"
                .into(),
        ),
        (
            "customer-ip-name",
            "1GET /a\nhost: a\nx-fapi-customer-ip-address: localhost\n\n".into(),
        ),
        (
            "customer-ip-v6",
            "1GET /a\nhost: a\nx-fapi-customer-ip-address: 2001:db8::1\n\n".into(),
        ),
        (
            "forwarded",
            "1GET /a\nhost: a\nx-forwarded-for: 10.0.0.1\nforwarded: for=10.0.0.1\n\n".into(),
        ),
        (
            "query-escapes",
            "1GET /a?q=%00&r=%C3%A9&s=%zz&access_token=x\nhost: a\n\n".into(),
        ),
        (
            "uri-too-long",
            format!("1GET /{}\nhost: a\n\n", "a".repeat(300)),
        ),
        (
            "too-many-headers",
            format!(
                "1GET /a\nhost: a\n{}\n",
                (0..14).map(|i| format!("x-h{i}: v\n")).collect::<String>()
            ),
        ),
        (
            "headers-too-large",
            format!("1GET /a\nhost: a\nx-big: {}\n\n", "v".repeat(600)),
        ),
    ];
    for (name, text) in heads {
        add(s, "head", format!("head-{name}"), text.as_bytes());
    }
}

fn path_seeds(s: &mut Seeds) {
    let paths = [
        "/",
        "/open-banking/v3.1/aisp/accounts",
        "/open-banking/v3.1/aisp/accounts/acc-1",
        "/open-banking/v3.1/aisp/accounts/acc-1/balances",
        "/open-banking/v3.1/aisp/accounts/acc-1/transactions?fromBookingDateTime=2024-01-01",
        "/open-banking/v3.1/pisp/domestic-payment-consents",
        "/open-banking/v3.1/pisp/domestic-payments/p-1",
        "/a/b:c@d/e~f_g.h",
        "/x/a%20b",
        "/x/a%3Ab",
        "/x/..a",
        "/x/.well-known",
        "/accounts/123/../../admin",
        "/accounts/./123",
        "/%2e%2e/admin",
        "/accounts%2F456",
        "/accounts%5c456",
        "/accounts/%252e%252e/x",
        "/accounts\\..\\admin",
        "//accounts",
        "/accounts/123/",
        "/accounts/%00",
        "/accounts/1#x",
        "/accounts/%c0%ae",
        "/accounts/%41",
        "/accounts/%zz",
        "/accounts/{id}",
        "http://other.example/accounts",
        "*",
        "/x?a=1&b=%2F..%2e/x?y",
        "/x?access_token=abc",
    ];
    for (i, p) in paths.iter().enumerate() {
        add(s, "path", format!("path-{i:02}"), p.as_bytes());
    }
    // Every route template of the example policies, instantiated.
    let mut i = 0;
    for (_, text) in POLICY_FILES {
        for line in text.lines() {
            if let Some(t) = line.trim().strip_prefix("path: ") {
                add(
                    s,
                    "path",
                    format!("route-{i:02}"),
                    super::instantiate(t).as_bytes(),
                );
                i += 1;
            }
        }
    }
}

fn claims(extra: Value) -> Value {
    let mut c = json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "exp": NOW + 600,
        "iat": NOW - 10,
        "nbf": NOW - 10,
        "sub": "user-1",
        "client_id": "tpp-one",
        "jti": "j-1",
        "scope": "accounts payments",
        "cnf": {"x5t#S256": "50uagznq5kDwfvgev5BY0_50Mi3DLLPTKsk8fYYvwNo"},
    });
    if let (Some(c), Some(e)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            if v.is_null() {
                c.remove(k);
            } else {
                c.insert(k.clone(), v.clone());
            }
        }
    }
    c
}

fn load_json(vectors: &Path, name: &str) -> io::Result<Value> {
    let text = std::fs::read_to_string(vectors.join(name))?;
    serde_json::from_str(&text).map_err(io::Error::other)
}

fn jwt_seeds(s: &mut Seeds, vectors: &Path) -> io::Result<()> {
    let k = keys();
    let at = |key: &KeyPair| json!({"typ": "at+jwt", "kid": key.kid, "alg": key.alg.name()});
    let cases: Vec<(&str, Value, Value)> = vec![
        ("valid-ed25519", at(&k.ed), claims(json!({}))),
        (
            "valid-aud-array",
            at(&k.ed),
            claims(json!({"aud": ["x", AUDIENCE]})),
        ),
        (
            "valid-dpop-bound",
            at(&k.ed),
            claims(json!({"cnf": {"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"}})),
        ),
        (
            "valid-float-exp",
            at(&k.ed),
            claims(json!({"exp": (NOW + 600) as f64 + 0.5})),
        ),
        (
            "exp-string",
            at(&k.ed),
            claims(json!({"exp": "9999999999"})),
        ),
        ("exp-missing", at(&k.ed), claims(json!({"exp": null}))),
        ("expired", at(&k.ed), claims(json!({"exp": NOW - 100}))),
        ("nbf-future", at(&k.ed), claims(json!({"nbf": NOW + 1000}))),
        ("iat-future", at(&k.ed), claims(json!({"iat": NOW + 1000}))),
        ("aud-empty-array", at(&k.ed), claims(json!({"aud": []}))),
        (
            "wrong-iss",
            at(&k.ed),
            claims(json!({"iss": "https://evil.example"})),
        ),
        (
            "typ-dpop",
            json!({"typ": "dpop+jwt", "kid": ED_KID, "alg": "EdDSA"}),
            claims(json!({})),
        ),
        (
            "alg-none",
            json!({"typ": "at+jwt", "kid": ED_KID, "alg": "none"}),
            claims(json!({})),
        ),
        (
            "alg-case",
            json!({"typ": "at+jwt", "kid": ED_KID, "alg": "eddsa"}),
            claims(json!({})),
        ),
        (
            "crit",
            json!({"typ": "at+jwt", "kid": ED_KID, "alg": "EdDSA", "crit": ["urn:x"], "urn:x": 1}),
            claims(json!({})),
        ),
        (
            "b64-false",
            json!({"typ": "at+jwt", "kid": ED_KID, "alg": "EdDSA", "b64": false}),
            claims(json!({})),
        ),
        (
            "embedded-jwk",
            json!({"typ": "at+jwt", "kid": ED_KID, "alg": "EdDSA", "jwk": k.ed.public_jwk()}),
            claims(json!({})),
        ),
        (
            "kid-traversal",
            json!({"typ": "at+jwt", "kid": "../../../../dev/null", "alg": "EdDSA"}),
            claims(json!({})),
        ),
        (
            "scope-not-string",
            at(&k.ed),
            claims(json!({"scope": ["accounts"]})),
        ),
    ];
    for (name, header, payload) in &cases {
        let signer = if header["alg"] == "ES256" {
            &k.ec
        } else {
            &k.ed
        };
        let token = compact(
            header.to_string().as_bytes(),
            payload.to_string().as_bytes(),
            signer,
        );
        add(
            s,
            "jwt",
            format!("raw-{name}"),
            with_mode(b'0', token.as_bytes()),
        );
        add(
            s,
            "jwt",
            format!("signed-{name}"),
            with_mode(b'1', &pair(header, payload)),
        );
    }
    // ES256, alg/key mismatch, duplicate header member, and malformed structures.
    let es = compact(
        at(&k.ec).to_string().as_bytes(),
        claims(json!({})).to_string().as_bytes(),
        &k.ec,
    );
    add(s, "jwt", "raw-valid-es256", with_mode(b'0', es.as_bytes()));
    let mismatch = json!({"typ": "at+jwt", "kid": EC_KID, "alg": "EdDSA"});
    add(
        s,
        "jwt",
        "signed-key-alg-mismatch",
        with_mode(b'1', &pair(&mismatch, &claims(json!({})))),
    );
    add(
        s,
        "jwt",
        "signed-duplicate-member",
        with_mode(
            b'1',
            format!(
                "{{\"alg\":\"EdDSA\",\"typ\":\"at+jwt\",\"kid\":\"{ED_KID}\",\"kid\":\"x\"}}\n{}",
                claims(json!({}))
            )
            .as_bytes(),
        ),
    );
    let valid = compact(
        at(&k.ed).to_string().as_bytes(),
        claims(json!({})).to_string().as_bytes(),
        &k.ed,
    );
    for (name, t) in [
        ("padded", format!("{valid}=")),
        ("four-segments", format!("{valid}.x")),
        (
            "empty-signature",
            valid
                .rsplit_once('.')
                .map(|(a, _)| format!("{a}."))
                .unwrap_or_default(),
        ),
        (
            "json-serialization",
            format!("{{\"payload\":\"{}\"}}", b64url(b"{}")),
        ),
    ] {
        add(
            s,
            "jwt",
            format!("raw-{name}"),
            with_mode(b'0', t.as_bytes()),
        );
    }
    // Authorization header values.
    for (name, v) in [
        ("bearer", format!("Bearer {valid}")),
        ("lowercase-scheme", format!("bearer {valid}")),
        ("dpop-scheme", format!("DPoP {valid}")),
        ("double-space", format!("Bearer  {valid}")),
        ("basic", "Basic dXNlcjpwYXNz".to_string()),
        ("token68-padding", "Bearer abc.def-_~+/=".to_string()),
    ] {
        add(
            s,
            "jwt",
            format!("authorization-{name}"),
            with_mode(b'2', v.as_bytes()),
        );
    }
    // JWKS: ours, and Wycheproof's key sets (private, mixed, weak, duplicate kid...).
    add(
        s,
        "jwt",
        "jwks-harness",
        with_mode(b'3', k.jwks.to_string().as_bytes()),
    );
    let jwk_tests = load_json(vectors, "wycheproof/json_web_key_test.json")?;
    for g in jwk_tests["testGroups"].as_array().into_iter().flatten() {
        let id = g["tests"][0]["tcId"].as_u64().unwrap_or(0);
        add(
            s,
            "jwt",
            format!("jwks-wycheproof-{id:02}"),
            with_mode(b'3', g["private"].to_string().as_bytes()),
        );
    }
    // Wycheproof JWS cases: one per distinct comment (alg none, JSON serialization, padding...).
    let jws_tests = load_json(vectors, "wycheproof/json_web_signature_test.json")?;
    let mut seen = std::collections::HashSet::new();
    for g in jws_tests["testGroups"].as_array().into_iter().flatten() {
        if let Some(public) = g.get("public") {
            let id = g["tests"][0]["tcId"].as_u64().unwrap_or(0);
            add(
                s,
                "jwt",
                format!("jwks-wycheproof-jws-{id:03}"),
                with_mode(b'3', json!({"keys": [public]}).to_string().as_bytes()),
            );
        }
        for t in g["tests"].as_array().into_iter().flatten() {
            let comment = t["comment"].as_str().unwrap_or("");
            let Some(jws) = t["jws"].as_str() else {
                continue;
            };
            if seen.insert(comment.to_string()) && seen.len() <= 40 {
                let id = t["tcId"].as_u64().unwrap_or(0);
                add(
                    s,
                    "jwt",
                    format!("wycheproof-{id:03}"),
                    with_mode(b'0', jws.as_bytes()),
                );
            }
        }
    }
    Ok(())
}

fn dpop_seeds(s: &mut Seeds, vectors: &Path) -> io::Result<()> {
    let v = load_json(vectors, "rfc9449-dpop-examples.json")?;
    for name in ["token_endpoint_proof", "resource_proof"] {
        if let Some(p) = v[name]["proof"].as_str() {
            add(
                s,
                "dpop",
                format!("rfc9449-{name}"),
                with_mode(b'0', p.as_bytes()),
            );
        }
    }
    let k = keys();
    let mut jwk = k.ed.public_jwk();
    if let Some(m) = jwk.as_object_mut() {
        for meta in ["kid", "alg", "use"] {
            m.remove(meta);
        }
    }
    let header = |alg: &str, jwk: &Value| json!({"typ": "dpop+jwt", "alg": alg, "jwk": jwk});
    let ath = portcullis_crypto::jose::sha256_b64url(DPOP_ACCESS_TOKEN.as_bytes());
    let token_claims =
        json!({"jti": "j-1", "htm": "POST", "htu": DPOP_TOKEN_HTU, "iat": DPOP_TOKEN_NOW});
    let resource_claims = json!({"jti": "j-2", "htm": "GET", "htu": DPOP_RESOURCE_HTU, "iat": DPOP_RESOURCE_NOW, "ath": ath, "nonce": DPOP_NONCE});
    let mut ec_jwk = k.ec.public_jwk();
    if let Some(m) = ec_jwk.as_object_mut() {
        m.remove("kid");
    }
    let cases: Vec<(&str, Value, Value)> = vec![
        ("token", header("EdDSA", &jwk), token_claims.clone()),
        (
            "resource-nonce",
            header("EdDSA", &jwk),
            resource_claims.clone(),
        ),
        (
            "resource-es256",
            header("ES256", &ec_jwk),
            resource_claims.clone(),
        ),
        (
            "htu-variant",
            header("EdDSA", &jwk),
            json!({"jti": "j-3", "htm": "POST", "htu": "HTTPS://Server.Example.COM:443/%74oken", "iat": DPOP_TOKEN_NOW}),
        ),
        (
            "htu-ipv6",
            header("EdDSA", &jwk),
            json!({"jti": "j-4", "htm": "POST", "htu": "https://[::1]:443/token", "iat": DPOP_TOKEN_NOW}),
        ),
        (
            "iat-string",
            header("EdDSA", &jwk),
            json!({"jti": "j-5", "htm": "POST", "htu": DPOP_TOKEN_HTU, "iat": "1562262616"}),
        ),
        (
            "typ-jwt",
            json!({"typ": "JWT", "alg": "EdDSA", "jwk": jwk}),
            token_claims.clone(),
        ),
        (
            "private-jwk",
            header(
                "EdDSA",
                &json!({"kty": "OKP", "crv": "Ed25519", "x": jwk["x"], "d": "n4Ni-HpISpVObnQMW0wOhCKROaIKqKtW_2ZYb2p9KcU"}),
            ),
            token_claims.clone(),
        ),
        (
            "rsa-jwk-empty-n",
            header("PS256", &json!({"kty": "RSA", "n": "", "e": "AQAB"})),
            token_claims.clone(),
        ),
        (
            "jku",
            json!({"typ": "dpop+jwt", "alg": "EdDSA", "jwk": jwk, "jku": "http://127.0.0.1/jwks"}),
            token_claims,
        ),
    ];
    for (name, h, c) in &cases {
        let signer = if h["alg"] == "ES256" { &k.ec } else { &k.ed };
        let proof = compact(h.to_string().as_bytes(), c.to_string().as_bytes(), signer);
        add(
            s,
            "dpop",
            format!("raw-{name}"),
            with_mode(b'0', proof.as_bytes()),
        );
        add(
            s,
            "dpop",
            format!("signed-{name}"),
            with_mode(b'1', &pair(h, c)),
        );
    }
    add(
        s,
        "dpop",
        "htu-list",
        with_mode(
            b'0',
            b"https://a.example/x%7e\nhttps://[::1]:8443/x\nHTTPS://A.EXAMPLE:443\nhttp://a:80/%2f",
        ),
    );
    Ok(())
}

fn detached_seeds(s: &mut Seeds) {
    use portcullis_crypto::jose::detached::{ob_header, sign_detached, Profile};
    let k = keys();
    let body = br#"{"Data":{"Initiation":{"InstructionIdentification":"ACME412","InstructedAmount":{"Amount":"165.88","Currency":"GBP"}}},"Risk":{}}"#;
    for (pname, profile) in [("313", Profile::Obie313), ("314", Profile::Obie314)] {
        for key in [&k.ed, &k.ec] {
            let h = ob_header(profile, key.alg, &key.kid, NOW - 5, OBIE_ISS, OBIE_TAN);
            let value = sign_detached(&h, body, |m| key.sign(m));
            let mut raw = value.into_bytes();
            raw.push(b'\n');
            raw.extend_from_slice(body);
            let alg = key.alg.name();
            add(
                s,
                "detached",
                format!("raw-{pname}-{alg}"),
                with_mode(b'0', &raw),
            );
            let encoded = if profile == Profile::Obie314 {
                b'1'
            } else {
                b'0'
            };
            let mut signed = vec![encoded];
            signed.extend_from_slice(Value::Object(h.clone()).to_string().as_bytes());
            signed.push(b'\n');
            signed.extend_from_slice(body);
            add(
                s,
                "detached",
                format!("signed-{pname}-{alg}"),
                with_mode(b'1', &signed),
            );
            // The b64 confusion: signed the other way round.
            signed[0] = if encoded == b'1' { b'0' } else { b'1' };
            add(
                s,
                "detached",
                format!("signed-{pname}-{alg}-b64-swapped"),
                with_mode(b'1', &signed),
            );
        }
    }
    let mut h = ob_header(Profile::Obie313, k.ed.alg, ED_KID, NOW, OBIE_ISS, OBIE_TAN);
    h.remove("crit");
    add(
        s,
        "detached",
        "signed-313-no-crit",
        with_mode(b'1', format!("0{}\n{{}}", Value::Object(h)).as_bytes()),
    );
    // RFC 7797's own examples (HS256: refused here, but real shapes).
    add(s, "detached", "rfc7797-b64-false", with_mode(b'0', b"eyJhbGciOiJIUzI1NiIsImI2NCI6ZmFsc2UsImNyaXQiOlsiYjY0Il19..A5dxf2s96_n5FLueVuW1Z_vh161FwXZC4YLPff6dmDY\n$.02"));
    add(
        s,
        "detached",
        "rfc7797-attached",
        with_mode(
            b'0',
            b"eyJhbGciOiJIUzI1NiJ9.JC4wMg.5mvfOroL-g7HyqJoozehmsaqmvTYGEq5jTI1gVvoEoQ\n$.02",
        ),
    );
}

fn request_text(method: &str, target: &str, headers: &[(String, String)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {target}\n").into_bytes();
    for (n, v) in headers {
        out.extend_from_slice(format!("{n}: {v}\n").as_bytes());
    }
    out.push(b'\n');
    out.extend_from_slice(body);
    out
}

fn httpsig_seeds(s: &mut Seeds) {
    use portcullis_crypto::httpsig::base::RequestView;
    use portcullis_crypto::httpsig::digest::{content_digest, DigestAlg};
    use portcullis_crypto::httpsig::sign::{component, sign, Params};
    use portcullis_crypto::httpsig::Message;

    // RFC 9421 test-request, signed as in B.2.6 (test-key-ed25519: verifies here) and B.2.1
    // (minimal, RSA-PSS key we do not hold).
    let rfc_headers = |extra: &[(&str, &str)]| {
        let mut h: Vec<(String, String)> = vec![
            ("Host".into(), "example.com".into()),
            ("Date".into(), "Tue, 20 Apr 2021 02:07:55 GMT".into()),
            ("Content-Type".into(), "application/json".into()),
            ("Content-Digest".into(), "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:".into()),
            ("Content-Length".into(), "18".into()),
        ];
        h.extend(extra.iter().map(|(a, b)| (a.to_string(), b.to_string())));
        h
    };
    let body = br#"{"hello": "world"}"#;
    add(s, "httpsig", "rfc9421-b26-ed25519", request_text("POST", "/foo?param=Value&Pet=dog", &rfc_headers(&[
        ("Signature-Input", r#"sig-b26=("date" "@method" "@path" "@authority" "content-type" "content-length");created=1618884473;keyid="test-key-ed25519""#),
        ("Signature", "sig-b26=:wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw==:"),
    ]), body));
    add(s, "httpsig", "rfc9421-b21-minimal", request_text("POST", "/foo?param=Value&Pet=dog", &rfc_headers(&[
        ("Signature-Input", r#"sig-b21=();created=1618884473;keyid="test-key-rsa-pss";nonce="b3k2pp5k7z-50gnwp.yemd""#),
        ("Signature", "sig-b21=:d2pmTvmbncD3xQm8E9ZV2828BjQWGgiwAaw5bAkgibUopemLJcWDy/lkbbHAve4cRAtx31Iq786U7it++wgGxbtRxf8Udx7zFZsckzXaJMkA7ChG52eSkFxykJeNqsrWH5S+oxNFlD4dzVuwe8DhTSja8xxbR/Z2cOGdCbzR72rgFWhzx2VjBqJzsPLMIQKhO4DGezXehhWwE56YCE+O6c0mKZsfxVrogUvA4HELjVKWmAvtl6UnCh8jYzuVG5WSb/QEVPnP5TmcAnLH1g+s++v6d4s8m0gCw1fV5/SITLq9mhho8K3+7EPYTU8IU1bLhdxO5Nyt8C8ssinQ98Xw9Q==:"),
    ]), body));
    add(s, "httpsig", "rfc9421-b22-selective", request_text("POST", "/foo?param=Value&Pet=dog", &rfc_headers(&[
        ("Signature-Input", r#"sig-b22=("@authority" "content-digest" "@query-param";name="Pet");created=1618884473;keyid="test-key-rsa-pss";tag="header-example""#),
        ("Signature", "sig-b22=:LjbtqUbfmvjj5C5kr1Ugj4PmLYvx9wVjZvD9GsTT4F7GrcQEdJzgI9qHxICagShLRiLMlAJjtq6N4CDfKtjvuJyE5qH7KT8UCMkSowOB4+ECxCmT8rtAmj/0PIXxi0A0nxKyB09RNrCQibbUjsLS/2YyFYXEu4TRJQzRw1rLEuEfY17SARYhpTlaqwZVtR8NV7+4UKkjqpcAoFqWFQh62s7Cl+H2fjBSpqfZUJcsIk4N6wiKYd4je2U/lankenQ99PZfB4jY3I5rSV2DSBVkSFsURIjYErOs0tFTQosMTAoxk//0RoKUqiYY8Bh0aaUEb0rQl3/XaVe4bXTugEjHSw==:"),
    ]), body));
    // FAPI 2.0 message signing: the tag, @method, @target-uri, authorization, dpop and
    // content-digest, signed by our keys with the library's signer.
    let k = keys();
    for (name, key, with_dpop, nonce) in [
        ("fapi-ed25519", &k.ed, false, None),
        ("fapi-es256-dpop-nonce", &k.ec, true, Some("n-1")),
    ] {
        let mut headers: Vec<(String, String)> = vec![
            ("host".into(), "api.bank.example".into()),
            (
                "authorization".into(),
                "DPoP eyJhbGciOiJFZERTQSJ9.e30.c2ln".into(),
            ),
            ("content-type".into(), "application/json".into()),
            (
                "content-digest".into(),
                content_digest(DigestAlg::Sha256, body),
            ),
        ];
        if with_dpop {
            headers.push(("dpop".into(), "eyJ0eXAiOiJkcG9wK2p3dCJ9.e30.c2ln".into()));
        }
        let mut map = http::HeaderMap::new();
        for (n, v) in &headers {
            if let (Ok(n), Ok(v)) = (
                http::HeaderName::from_bytes(n.as_bytes()),
                http::HeaderValue::from_str(v),
            ) {
                map.append(n, v);
            }
        }
        let view = RequestView {
            method: "POST",
            scheme: "https",
            authority: "api.bank.example",
            path: "/open-banking/v3.1/pisp/domestic-payments",
            query: Some("x=1"),
            headers: &map,
        };
        let mut comps = vec![
            component("@method", &[], &[]),
            component("@target-uri", &[], &[]),
            component("authorization", &[], &[]),
            component("content-digest", &[], &[]),
            component("content-type", &[], &["sf"]),
            component("@query-param", &[("name", "x")], &[]),
        ];
        if with_dpop {
            comps.push(component("dpop", &[], &[]));
        }
        let comps: Vec<_> = comps.into_iter().filter_map(Result::ok).collect();
        let params = Params {
            created: HTTPSIG_NOW - 5,
            expires: Some(HTTPSIG_NOW + 300),
            keyid: &key.kid,
            alg: portcullis_crypto::httpsig::registry_name(key.alg),
            nonce,
            tag: Some("fapi-2-request"),
        };
        let Ok((input, sig)) = sign("sig1", comps, &params, Message::Request(&view), |b| {
            key.sign(b)
        }) else {
            continue;
        };
        headers.push(("signature-input".into(), input));
        headers.push(("signature".into(), sig));
        add(
            s,
            "httpsig",
            name,
            request_text(
                "POST",
                "/open-banking/v3.1/pisp/domestic-payments?x=1",
                &headers,
                body,
            ),
        );
    }
    // Structured-field edge cases (no valid signature needed to reach the parsers).
    for (i, (si, sig)) in [
        (r#"a=("@method" "@method");created=1;keyid="k""#, "a=:AAAA:"),
        (r#"a=("@query-param";name="x" "content-digest";sf "x-dict";key="a" "x-bin";bs);created=1618884470;keyid="test-key-ed25519";tag="fapi-2-request""#, "a=:AAAA:"),
        (r#"a=("@status" "@request-target" "@scheme" "@query" "date";req);created=1618884470;keyid="test-key-ecc-p256";tag="fapi-2-request""#, "a=:AAAA:, b=:BBBB:"),
        (r#"a=();created="1";keyid=1"#, "a=?1"),
        ("a=(\"@method\");created=1618884470;keyid=\"test-key-ed25519\";tag=\"fapi-2-request\", a=();created=1", "a=:AAAA:"),
    ]
    .iter()
    .enumerate()
    {
        let headers: Vec<(String, String)> = vec![
            ("host".into(), "Example.COM:443".into()),
            ("x-dict".into(), "a=1, b=(2 3);p".into()),
            ("x-bin".into(), "raw value".into()),
            ("date".into(), "Tue, 20 Apr 2021 02:07:55 GMT".into()),
            ("signature-input".into(), si.to_string()),
            ("signature".into(), sig.to_string()),
        ];
        add(s, "httpsig", format!("fields-{i}"), request_text("GET", "/a/b?x=1&x=2&y=%20", &headers, b""));
    }
}

fn file_seeds(s: &mut Seeds, repo: &Path) -> io::Result<()> {
    for (name, text) in POLICY_FILES {
        add(s, "policy", name.replace('/', "-"), text.as_bytes());
    }
    let minimal = "group: g\nupstream: bank\nroutes:\n  - id: r1\n    method: GET\n    path: /a/{Id}\n    auth: {profile: fapi2, issuer: as}\n    scopes: {any_of: [accounts]}\n    rules:\n      - {id: in-token, value: {path: Id}, in: {token: accounts}}\n    signature: {kind: obie-jws, profile: obie-3.1.4}\n";
    add(s, "policy", "minimal-with-rules", minimal.as_bytes());
    add(s, "policy", "conflicting-routes", "group: g\nupstream: bank\nroutes:\n  - {id: a, method: GET, path: /x/{A}}\n  - {id: b, method: GET, path: /x/{B}}\n  - {id: c, method: GET, path: /x/lit}\n".as_bytes());
    for entry in std::fs::read_dir(repo.join("config"))? {
        let p = entry?.path();
        if p.extension().and_then(|e| e.to_str()) == Some("yaml") {
            let name = p
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("config")
                .to_string();
            add(s, "config", name, std::fs::read(&p)?);
        }
    }
    Ok(())
}

/// A byte sink the audit writer can own while the seed generator reads it.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl io::Write for Shared {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| io::Error::other("poisoned"))?
            .extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn audit_seeds(s: &mut Seeds) -> io::Result<()> {
    use portcullis_audit::{
        AuditKey, AuditLog, HandshakeRecord, HttpErrorRecord, Record, RequestRecord,
    };
    use portcullis_proxy::config::{AuditSettings, AuditSink};
    let key_pem = {
        use base64::Engine;
        let der = base64::engine::general_purpose::STANDARD
            .decode(super::ED25519_PKCS8_B64)
            .map_err(io::Error::other)?;
        portcullis_crypto::jose::pem("PRIVATE KEY", &der)
    };
    let key = AuditKey::from_pem(key_pem.as_bytes()).map_err(io::Error::other)?;
    let mut settings = AuditSettings::new(AuditSink::Stdout);
    settings.signing_key = Some(Arc::new(key));
    settings.checkpoint_every = 3;
    settings.fsync_interval = None;
    let sink = Shared::default();
    let log = AuditLog::start_with_writer(&settings, Box::new(sink.clone()))?;
    let request = |i: u64, decision: &'static str, reason: Option<&'static str>| {
        let mut r = RequestRecord {
            interaction_id: format!("00000000-0000-4000-8000-{i:012}"),
            conn_id: i,
            peer: "127.0.0.1:50000".into(),
            tls_version: "TLSv1.3",
            cipher: "TLS13_AES_128_GCM_SHA256",
            http_version: "HTTP/1.1",
            method: "GET".into(),
            path: format!("/open-banking/v3.1/aisp/accounts/acc-{i}"),
            route_id: Some("aisp.accounts.get".into()),
            decision,
            status: if reason.is_some() { 403 } else { 200 },
            ..RequestRecord::default()
        };
        r.reason = reason;
        if i == 6 {
            r.path.push_str("/\u{2028}\"\\\u{1b}[31m");
        }
        Record::Request(Box::new(r))
    };
    log.emit(request(1, "allow", None));
    log.emit(request(2, "deny", Some("authz.object_not_granted")));
    log.emit(Record::TlsHandshake(HandshakeRecord {
        peer: "10.0.0.2:4000".into(),
        failure: "no_client_cert",
    }));
    log.emit(Record::HttpError(HttpErrorRecord {
        peer: "10.0.0.3:4000".into(),
        conn_id: 9,
        failure: "header_timeout",
    }));
    log.emit(request(5, "allow", None));
    log.emit(request(6, "deny", Some("path.dot_segment")));
    log.emit(request(7, "allow", None));
    if !log.close(Duration::from_secs(10)) {
        return Err(io::Error::other("the audit writer did not close"));
    }
    let bytes = sink
        .0
        .lock()
        .map_err(|_| io::Error::other("poisoned"))?
        .clone();
    let lines: Vec<&[u8]> = bytes.split_inclusive(|&b| b == b'\n').collect();
    add(s, "audit", "log", with_mode(b'0', &bytes));
    add(s, "audit", "log-anchored", with_mode(b'2', &bytes));
    add(s, "audit", "log-resealed-anchored", with_mode(b'3', &bytes));
    // Two files (rotation), and the classic damage: a torn tail, an edit, a deletion, a swap,
    // each raw and re-sealed (so the chain logic, not the hash, has to notice).
    let split = lines.len() / 2;
    let two = [
        &lines[..split].concat()[..],
        b"\0",
        &lines[split..].concat()[..],
    ]
    .concat();
    add(s, "audit", "rotated", with_mode(b'0', &two));
    let torn = [&bytes[..], &lines[0][..lines[0].len() / 2]].concat();
    add(s, "audit", "torn-tail", with_mode(b'0', &torn));
    let edited = String::from_utf8_lossy(&bytes).replacen("\"deny\"", "\"allow\"", 1);
    add(s, "audit", "edited", with_mode(b'0', edited.as_bytes()));
    add(
        s,
        "audit",
        "edited-resealed",
        with_mode(b'1', edited.as_bytes()),
    );
    let mut deleted = lines.clone();
    deleted.remove(1);
    add(
        s,
        "audit",
        "deleted-resealed",
        with_mode(b'1', &deleted.concat()),
    );
    let mut swapped = lines.clone();
    swapped.swap(1, 2);
    add(
        s,
        "audit",
        "swapped-resealed",
        with_mode(b'1', &swapped.concat()),
    );
    let jumped = String::from_utf8_lossy(&bytes).replacen(
        "{\"seq\":3,",
        "{\"seq\":18446744073709551615,",
        1,
    );
    add(
        s,
        "audit",
        "seq-jump-resealed",
        with_mode(b'1', jumped.as_bytes()),
    );
    Ok(())
}
