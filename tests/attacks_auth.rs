//! The attack suite, credentials side (docs/attacks.md groups A tokens, B OBIE detached JWS,
//! C RFC 9421, D DPoP, E mTLS and certificate binding, and cases it does not list: a token
//! in a cookie or a form body, Proxy-Authorization). One table run through
//! `support::attack::run` (status + reason, nothing upstream, one audit record without the
//! credential), plus key sets the loader must refuse (A27, A30–A34) and the optional-mTLS rows.

mod common;
mod support {
    pub(crate) mod attack;
    pub(crate) mod h2raw;
}

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::{dur, FileClientKeys, FileHttpSig, FileJws, FileSignatures};
use portcullis_crypto::jose::detached::{ob_header, sign_detached, signing_input, Profile, OB_IAT};
use portcullis_crypto::jose::keypair::KeyPair;
use portcullis_crypto::jose::sign::SigningKey;
use portcullis_crypto::jose::{b64url, Alg};
use serde_json::{json, Map, Value};
use support::attack::*;

const POLICY: &str = r#"
group: auth
upstream: bank
routes:
  - id: fapi2.accounts
    method: GET
    path: /accounts
    auth: {profile: fapi2}
  - id: fapi1.accounts
    method: GET
    path: /fapi1/accounts
    auth: {profile: fapi1-advanced}
  - id: bearer.accounts
    method: GET
    path: /bearer/accounts
    auth: {profile: bearer}
  - id: nonce.accounts
    method: GET
    path: /nonce/accounts
    auth: {profile: fapi2, dpop_nonce: true}
  - id: form.payments
    method: POST
    path: /form-payments
    auth: {profile: fapi2}
  - id: optional.accounts
    method: GET
    path: /optional/accounts
    client_cert: optional
    auth: {profile: fapi2}
  - id: obie314.payments
    method: POST
    path: /open-banking/v3.1.10/pisp/domestic-payments
    signature: {kind: obie-jws, profile: obie-3.1.4}
  - id: obie313.payments
    method: POST
    path: /open-banking/v3.1.2/pisp/domestic-payments
    signature: {kind: obie-jws, profile: obie-3.1.3}
  - id: fapi.payments
    method: POST
    path: /fapi/payments
    auth: {profile: fapi2}
    signature: {kind: http-sig}
  - id: fapi.accounts
    method: GET
    path: /fapi/accounts
    auth: {profile: fapi2}
    signature: {kind: http-sig}
  - id: fapi.nonce
    method: POST
    path: /fapi/nonce-payments
    auth: {profile: fapi2}
    signature: {kind: http-sig, nonce: required}
"#;

const P314: &str = "/open-banking/v3.1.10/pisp/domestic-payments";
const P313: &str = "/open-banking/v3.1.2/pisp/domestic-payments";
const FAPI: &str = "/fapi/payments";
const TPP1_ISS: &str = "PSDGB-FCA-123456/tpp-one-software-id";
const TAN: &str = "openbanking.org.uk";
const PAYMENT: &[u8] =
    br#"{"Data":{"ConsentId":"c-1","Initiation":{"InstructedAmount":{"Amount":"165.88","Currency":"GBP"},"CreditorAccount":{"Name":"ACME Inc"}}}}"#;

/// tpp1's request-signing keys (and tpp2's), registered by organization id.
struct Keys {
    ps: KeyPair,
    es: KeyPair,
    other: KeyPair,
}

fn signature_config(dir: &std::path::Path) -> (FileSignatures, Keys) {
    let clients = dir.join("clients");
    std::fs::create_dir_all(&clients).unwrap();
    let keys = Keys {
        ps: KeyPair::generate(Alg::PS256, "tpp1-ps").unwrap(),
        es: KeyPair::generate(Alg::ES256, "tpp1-es").unwrap(),
        other: KeyPair::generate(Alg::PS256, "tpp2-ps").unwrap(),
    };
    let set = json!({"keys": [keys.ps.public_jwk(), keys.es.public_jwk()]});
    std::fs::write(clients.join("PSDGB-FCA-123456.json"), set.to_string()).unwrap();
    std::fs::write(
        clients.join("PSDGB-FCA-654321.json"),
        keys.other.jwks().to_string(),
    )
    .unwrap();
    let sigs = FileSignatures {
        client: Some("{org_id}".into()),
        client_keys: Some(FileClientKeys {
            directory: Some(clients.display().to_string()),
            ..FileClientKeys::default()
        }),
        jws: FileJws {
            trust_anchors: vec![TAN.into()],
            iss: Some("{org_id}/{cert_cn}".into()),
            max_age: Some(dur("5m")),
            clock_skew: Some(dur("30s")),
            ..FileJws::default()
        },
        http: FileHttpSig {
            public_base_url: Some(BASE.into()),
            ..FileHttpSig::default()
        },
        response: None,
    };
    (sigs, keys)
}

/// A client certificate from the dev CA (or self-signed), written as `{stem}.pem`/`.key` beside
/// the dev certificates, after `tweak` edits tpp1-like parameters.
fn issue_client(stem: &str, self_signed: bool, tweak: impl FnOnce(&mut rcgen::CertificateParams)) {
    use rcgen::{DnType, ExtendedKeyUsagePurpose, KeyPair as RcKey, KeyUsagePurpose};
    let dir = common::certs();
    let now = time::OffsetDateTime::now_utc();
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name
        .push(DnType::OrganizationName, "Tpp Test Ltd");
    p.distinguished_name
        .push(DnType::CustomDnType(vec![2, 5, 4, 97]), "PSDGB-FCA-999999");
    p.distinguished_name.push(DnType::CommonName, stem);
    p.not_before = now - time::Duration::hours(1);
    p.not_after = now + time::Duration::days(30);
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.use_authority_key_identifier_extension = true;
    tweak(&mut p);
    let key = RcKey::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = if self_signed {
        p.self_signed(&key).unwrap()
    } else {
        // The dev CA, rebuilt from its key and its (known) name.
        let ca_key =
            RcKey::from_pem(&std::fs::read_to_string(dir.join("ca.key")).unwrap()).unwrap();
        let mut ca = rcgen::CertificateParams::default();
        ca.distinguished_name = rcgen::DistinguishedName::new();
        ca.distinguished_name
            .push(DnType::OrganizationName, "portcullis dev");
        ca.distinguished_name
            .push(DnType::CommonName, "portcullis dev CA");
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        p.signed_by(&key, &rcgen::Issuer::new(ca, ca_key)).unwrap()
    };
    std::fs::write(dir.join(format!("{stem}.pem")), cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{stem}.key")), key.serialize_pem()).unwrap();
}

/// The extra client certificates the E rows need.
fn make_certs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let now = time::OffsetDateTime::now_utc();
        issue_client("e-good", false, |_| {});
        issue_client("e-future", false, |p| {
            p.not_before = now + time::Duration::days(1);
            p.not_after = now + time::Duration::days(30);
        });
        issue_client("e-server-eku", false, |p| {
            p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        });
        issue_client("e-email-eku", false, |p| {
            p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::EmailProtection];
        });
        issue_client("e-self", true, |_| {});
        // tpp1's key and certificate followed by 200 copies of the CA: ~100 KiB of chain.
        let dir = common::certs();
        let ca = std::fs::read_to_string(dir.join("ca.pem")).unwrap();
        let chain = std::fs::read_to_string(dir.join("tpp1.pem")).unwrap() + &ca.repeat(200);
        std::fs::write(dir.join("e-bigchain.pem"), chain).unwrap();
        std::fs::copy(dir.join("tpp1.key"), dir.join("e-bigchain.key")).unwrap();
    });
}

fn h(v: Value) -> String {
    b64url(v.to_string().as_bytes())
}

fn hmac(key: &[u8], input: &str) -> Vec<u8> {
    let k = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key);
    aws_lc_rs::hmac::sign(&k, input.as_bytes())
        .as_ref()
        .to_vec()
}

/// A listener that counts connections: the proxy must never fetch a key from a token.
struct Canary {
    url: String,
    hits: Arc<AtomicUsize>,
}

async fn canary() -> Canary {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://127.0.0.1:{}/jwks", l.local_addr().unwrap().port());
    let hits = Arc::new(AtomicUsize::new(0));
    let n = hits.clone();
    tokio::spawn(async move {
        while l.accept().await.is_ok() {
            n.fetch_add(1, Ordering::SeqCst);
        }
    });
    Canary { url, hits }
}

fn accounts(token: &str) -> Req {
    Req::get("/accounts").bearer(token)
}

fn a401(reason: &'static str) -> Expect {
    refused(401, reason)
}

/// Group A: access tokens.
fn group_a(lab: &Lab, c: &Canary) -> Vec<Case> {
    let cnf = json!({"x5t#S256": thumb("tpp1")});
    let signed = |header: Value| lab.key.sign_compact(&header, &claims(json!({"cnf": cnf})));
    let with = |header: Value| {
        let mut hd = json!({"typ": "at+jwt", "kid": "as-1"});
        for (k, v) in header.as_object().unwrap() {
            hd[k] = v.clone();
        }
        signed(hd)
    };
    // ES256 signatures are random: the A16 "+ and /" case needs a signature whose base64url
    // text has a '-' or '_' to turn into the standard alphabet (about 1 in 15 has neither, and
    // that case would then send the good token unchanged).
    let good = (0..1000)
        .map(|_| lab.token(json!({})))
        .find(|t| t.rsplit('.').next().is_some_and(|s| s.contains(['-', '_'])))
        .expect("a token whose signature has '-' or '_'");
    let (good_head, rest) = good.split_once('.').unwrap();
    let (payload, good_sig) = rest.split_once('.').unwrap();
    let input_with = |alg: &str| {
        format!(
            "{}.{payload}",
            h(json!({"alg": alg, "typ": "at+jwt", "kid": "as-1"}))
        )
    };
    // A02: HS256 MACed with every byte form of the issuer's public key.
    let jwk = lab.key.public_jwk(true).to_string();
    let jwks = lab.key.jwks().to_string();
    let point = {
        let j = lab.key.public_jwk(false);
        let x = portcullis_crypto::jose::b64url_decode(j["x"].as_str().unwrap()).unwrap();
        let y = portcullis_crypto::jose::b64url_decode(j["y"].as_str().unwrap()).unwrap();
        [&[4u8][..], &x, &y].concat()
    };
    let hs = |key: &[u8]| {
        let input = input_with("HS256");
        format!("{input}.{}", b64url(&hmac(key, &input)))
    };
    let es_sig = portcullis_crypto::jose::b64url_decode(good_sig).unwrap();
    // A25: the same signature as DER.
    let der = {
        let int = |b: &[u8]| {
            let b: Vec<u8> = b.iter().copied().skip_while(|x| *x == 0).collect();
            let b = if b[0] & 0x80 != 0 {
                [&[0u8][..], &b].concat()
            } else {
                b
            };
            [&[2u8, b.len() as u8][..], &b].concat()
        };
        let body = [int(&es_sig[..32]), int(&es_sig[32..])].concat();
        [&[0x30u8, body.len() as u8][..], &body].concat()
    };
    let n = portcullis_crypto::jose::b64url_decode("_____wAAAAD__________7zm-q2nF56E87nKwvxjJVE")
        .unwrap();
    let with_sig = |sig: &[u8]| format!("{good_head}.{payload}.{}", b64url(sig));
    let other_issuer = SigningKey::generate(Alg::ES256, "as-1").unwrap();
    vec![
        case(
            "A01",
            "alg none, empty signature",
            accounts(&format!("{}.", input_with("none"))),
            a401("token.malformed"),
        ),
        case(
            "A01",
            "alg None",
            accounts(&format!("{}.AAAA", input_with("None"))),
            a401("token.alg_not_allowed"),
        ),
        case(
            "A01",
            "alg NONE",
            accounts(&format!("{}.AAAA", input_with("NONE"))),
            a401("token.alg_not_allowed"),
        ),
        case(
            "A01",
            "alg nOnE",
            accounts(&format!("{}.AAAA", input_with("nOnE"))),
            a401("token.alg_not_allowed"),
        ),
        case(
            "A02",
            "HS256 keyed with the JWK text",
            accounts(&hs(jwk.as_bytes())),
            a401("token.alg_not_allowed"),
        ),
        case(
            "A02",
            "HS256 keyed with the JWKS document",
            accounts(&hs(jwks.as_bytes())),
            a401("token.alg_not_allowed"),
        ),
        case(
            "A02",
            "HS256 keyed with the raw public point",
            accounts(&hs(&point)),
            a401("token.alg_not_allowed"),
        ),
        case(
            "A02",
            "HS256 keyed with the base64url x coordinate",
            accounts(&hs(lab.key.public_jwk(false)["x"]
                .as_str()
                .unwrap()
                .as_bytes())),
            a401("token.alg_not_allowed"),
        ),
        case(
            "A03",
            "EdDSA header on an ES256 key",
            accounts(&format!("{}.{good_sig}", input_with("EdDSA"))),
            a401("token.key_mismatch"),
        ),
        case(
            "A03",
            "PS256 header on an ES256 key",
            accounts(&format!("{}.{good_sig}", input_with("PS256"))),
            a401("token.key_mismatch"),
        ),
        case(
            "A03",
            "ES384 header (not on the allow-list)",
            accounts(&format!("{}.{good_sig}", input_with("ES384"))),
            a401("token.alg_not_allowed"),
        ),
        case(
            "A04",
            "kid path traversal",
            accounts(&with(json!({"kid": "../../../../dev/null"}))),
            a401("token.unknown_key"),
        ),
        case(
            "A05",
            "kid SQL injection",
            accounts(&with(json!({"kid": "x' UNION SELECT 'k'--"}))),
            a401("token.unknown_key"),
        ),
        case(
            "A06",
            "unknown kid",
            accounts(&with(json!({"kid": uuid::Uuid::new_v4().to_string()}))),
            a401("token.unknown_key"),
        ),
        case(
            "A07",
            "jku to a local listener",
            accounts(&with(json!({"jku": c.url}))),
            a401("token.forbidden_header"),
        ),
        case(
            "A07",
            "jku to the metadata address",
            accounts(&with(
                json!({"jku": "http://169.254.169.254/latest/meta-data"}),
            )),
            a401("token.forbidden_header"),
        ),
        case(
            "A08",
            "x5u to a local listener",
            accounts(&with(json!({"x5u": c.url}))),
            a401("token.forbidden_header"),
        ),
        case(
            "A09",
            "embedded attacker jwk",
            accounts(&other_issuer.sign_compact(
                &json!({"typ": "at+jwt", "kid": "as-1", "jwk": other_issuer.public_jwk(false)}),
                &claims(json!({"cnf": cnf})),
            )),
            a401("token.forbidden_header"),
        ),
        case(
            "A10",
            "x5c self-issued chain",
            accounts(&with(json!({"x5c": ["MIIBszCCAVmgAwIBAgIU"]}))),
            a401("token.forbidden_header"),
        ),
        case(
            "A11",
            "crit naming an unknown extension",
            accounts(&with(json!({"crit": ["urn:x"], "urn:x": 1}))),
            a401("token.forbidden_header"),
        ),
        case(
            "A12",
            "crit empty",
            accounts(&with(json!({"crit": []}))),
            a401("token.forbidden_header"),
        ),
        case(
            "A12",
            "crit naming alg",
            accounts(&with(json!({"crit": ["alg"]}))),
            a401("token.forbidden_header"),
        ),
        case(
            "A12",
            "crit naming an absent member",
            accounts(&with(json!({"crit": ["exp"]}))),
            a401("token.forbidden_header"),
        ),
        case(
            "A12",
            "crit with a duplicate",
            accounts(&with(json!({"crit": ["urn:x", "urn:x"], "urn:x": 1}))),
            a401("token.forbidden_header"),
        ),
        case(
            "A13",
            "b64 false in an access token",
            accounts(&with(json!({"b64": false, "crit": ["b64"]}))),
            a401("token.forbidden_header"),
        ),
        case(
            "A15",
            "JSON serialization",
            Req::get("/accounts").header(
                "authorization",
                format!("Bearer {{\"payload\":\"{payload}\",\"signatures\":[]}}"),
            ),
            refused(400, "token.bad_header"),
        ),
        case(
            "A16",
            "two segments",
            accounts(&format!("{good_head}.{payload}")),
            a401("token.malformed"),
        ),
        case(
            "A16",
            "four segments",
            accounts(&format!("{good}.x")),
            a401("token.malformed"),
        ),
        case(
            "A16",
            "empty token",
            Req::get("/accounts").header("authorization", "Bearer "),
            refused(400, "token.bad_header"),
        ),
        case(
            "A16",
            "= padding",
            accounts(&format!("{good}=")),
            a401("token.malformed"),
        ),
        case(
            "A16",
            "+ and / characters",
            accounts(&format!(
                "{good_head}.{payload}.{}",
                good_sig.replace('-', "+").replace('_', "/")
            )),
            a401("token.malformed"),
        ),
        case(
            "A16",
            "embedded whitespace",
            Req::get("/accounts").header("authorization", format!("Bearer {good_head}. {rest}")),
            refused(400, "token.bad_header"),
        ),
        case(
            "A17",
            "exp in the past beyond the skew",
            accounts(&lab.token(json!({"exp": NOW - 11}))),
            a401("token.expired"),
        ),
        case(
            "A17",
            "exp missing",
            accounts(&lab.token(json!({"exp": null}))),
            a401("token.exp_missing"),
        ),
        case(
            "A17",
            "exp as a string",
            accounts(&lab.token(json!({"exp": "9999999999"}))),
            a401("token.claim_type"),
        ),
        case(
            "A17",
            "exp \"never\"",
            accounts(&lab.token(json!({"exp": "never"}))),
            a401("token.claim_type"),
        ),
        case(
            "A17",
            "exp huge",
            accounts(&lab.token(json!({"exp": 1e300}))),
            a401("token.claim_type"),
        ),
        case(
            "A17",
            "exp negative",
            accounts(&lab.token(json!({"exp": -1}))),
            a401("token.expired"),
        ),
        case(
            "A18",
            "nbf in the future beyond the skew",
            accounts(&lab.token(json!({"nbf": NOW + 11}))),
            a401("token.not_yet_valid"),
        ),
        case(
            "A18",
            "nbf as a string",
            accounts(&lab.token(json!({"nbf": "0"}))),
            a401("token.claim_type"),
        ),
        case(
            "A19",
            "iat in the future",
            accounts(&lab.token(json!({"iat": NOW + 60}))),
            a401("token.issued_at"),
        ),
        case(
            "A19",
            "iat older than max_token_age",
            accounts(&lab.token(json!({"iat": NOW - 7200}))),
            a401("token.issued_at"),
        ),
        case(
            "A20",
            "exp = now - skew + 1 accepted",
            accounts(&lab.token(json!({"exp": NOW - 9, "jti": "b1"}))),
            Expect::Allowed,
        ),
        case(
            "A20",
            "exp = now - skew refused",
            accounts(&lab.token(json!({"exp": NOW - 10, "jti": "b2"}))),
            a401("token.expired"),
        ),
        case(
            "A20",
            "nbf = now + skew accepted",
            accounts(&lab.token(json!({"nbf": NOW + 10, "jti": "b3"}))),
            Expect::Allowed,
        ),
        case(
            "A20",
            "nbf = now + skew + 1 refused",
            accounts(&lab.token(json!({"nbf": NOW + 11, "jti": "b4"}))),
            a401("token.not_yet_valid"),
        ),
        case(
            "A21",
            "aud mismatch",
            accounts(&lab.token(json!({"aud": "https://other.example"}))),
            a401("token.audience"),
        ),
        case(
            "A21",
            "aud empty string",
            accounts(&lab.token(json!({"aud": ""}))),
            a401("token.audience"),
        ),
        case(
            "A21",
            "aud empty array",
            accounts(&lab.token(json!({"aud": []}))),
            a401("token.audience"),
        ),
        case(
            "A21",
            "aud array with ours and others (policy: contains)",
            accounts(&lab.token(json!({"aud": ["https://other.example", AUD], "jti": "aud-list"}))),
            Expect::Allowed,
        ),
        case(
            "A22",
            "wrong iss",
            accounts(&lab.token(json!({"iss": "https://evil.example"}))),
            a401("token.issuer"),
        ),
        // The signature is checked before any claim is read.
        case(
            "A22",
            "another issuer's token with a colliding kid",
            accounts(
                &other_issuer
                    .access_token(&claims(json!({"iss": "https://as2.example", "cnf": cnf}))),
            ),
            a401("token.bad_signature"),
        ),
        case(
            "A23",
            "typ JWT (an ID token)",
            accounts(&signed(json!({"typ": "JWT", "kid": "as-1"}))),
            a401("token.typ"),
        ),
        case(
            "A23",
            "no typ",
            accounts(&signed(json!({"kid": "as-1"}))),
            a401("token.typ"),
        ),
        case(
            "A23",
            "a DPoP proof as a token",
            accounts(&signed(json!({"typ": "dpop+jwt", "kid": "as-1"}))),
            a401("token.typ"),
        ),
        case(
            "A23",
            "a logout token",
            accounts(&signed(json!({"typ": "logout+jwt", "kid": "as-1"}))),
            a401("token.typ"),
        ),
        case(
            "A24",
            "psychic signature (r = s = 0)",
            accounts(&with_sig(&[0u8; 64])),
            a401("token.bad_signature"),
        ),
        case(
            "A24",
            "r = s = n",
            accounts(&with_sig(&[n.clone(), n.clone()].concat())),
            a401("token.bad_signature"),
        ),
        case(
            "A25",
            "DER signature",
            accounts(&with_sig(&der)),
            a401("token.bad_signature"),
        ),
        case(
            "A25",
            "63-byte signature",
            accounts(&with_sig(&es_sig[..63])),
            a401("token.bad_signature"),
        ),
        case(
            "A25",
            "65-byte signature",
            accounts(&with_sig(&[&es_sig[..], &[0]].concat())),
            a401("token.bad_signature"),
        ),
        case(
            "A28",
            "PS256 with an empty signature",
            accounts(&format!("{}.", input_with("PS256"))),
            a401("token.malformed"),
        ),
        case(
            "A35",
            "token in the query",
            Req::get(&format!("/accounts?access_token={good}")),
            refused(400, "token.in_query"),
        ),
        case(
            "A36",
            "token in the query and the header",
            Req::get(&format!("/accounts?access_token={good}")).bearer(&good),
            refused(400, "token.in_query"),
        ),
        case(
            "A36",
            "two Authorization headers",
            accounts(&good).bearer(&good),
            refused(400, "token.multiple"),
        ),
        case(
            "A37",
            "lower-case scheme accepted",
            Req::get("/accounts").header(
                "authorization",
                format!("bearer {}", lab.token(json!({"jti": "lc"}))),
            ),
            Expect::Allowed,
        ),
        case(
            "A37",
            "two spaces after the scheme",
            Req::get("/accounts").header("authorization", format!("Bearer  {good}")),
            refused(400, "token.bad_header"),
        ),
        case(
            "A37",
            "tab after the scheme",
            Req::get("/accounts").header("authorization", format!("Bearer\t{good}")),
            refused(400, "token.bad_header"),
        ),
        case(
            "A37",
            "a character outside token68",
            Req::get("/accounts").header("authorization", format!("Bearer {good}!")),
            refused(400, "token.bad_header"),
        ),
        case(
            "A37",
            "another scheme",
            Req::get("/accounts").header("authorization", "Basic dXNlcjpwYXNz"),
            a401("token.unsupported_scheme"),
        ),
        case(
            "A38",
            "9 KiB token",
            accounts(&"x".repeat(9000)),
            a401("token.too_large"),
        ),
        case(
            "A38",
            "1 MiB token: over hyper's buffer",
            accounts(&"x".repeat(1 << 20)),
            Expect::Parser(431, "http_headers_too_large"),
        ),
        case(
            "A39",
            "header JSON that is not UTF-8",
            accounts(&format!(
                "{}.{payload}.{good_sig}",
                b64url(b"{\"alg\":\"ES256\",\"kid\":\"as-1\xff\"}")
            )),
            a401("token.malformed"),
        ),
        case(
            "A40",
            "JWE (five segments)",
            accounts(&format!(
                "{}.AAAA.AAAA.AAAA.AAAA",
                h(json!({"alg": "RSA-OAEP", "enc": "A256GCM"}))
            )),
            a401("token.malformed"),
        ),
        case(
            "A40",
            "nested JWT (cty JWT)",
            accounts(&with(json!({"cty": "JWT"}))),
            a401("token.forbidden_header"),
        ),
        case(
            "A41",
            "alg RS1",
            accounts(&format!("{}.{good_sig}", input_with("RS1"))),
            a401("token.alg_not_allowed"),
        ),
        case(
            "A41",
            "alg ES256K",
            accounts(&format!("{}.{good_sig}", input_with("ES256K"))),
            a401("token.alg_not_allowed"),
        ),
        case(
            "A41",
            "alg with a trailing space",
            accounts(&format!("{}.{good_sig}", input_with("ES256 "))),
            a401("token.alg_not_allowed"),
        ),
        case(
            "Ax01",
            "token only in a cookie",
            Req::get("/accounts").header("cookie", format!("access_token={good}")),
            a401("token.missing"),
        ),
        case(
            "Ax02",
            "token only in a form body",
            Req {
                body: format!("access_token={good}").into(),
                ..Req::new("POST", "/form-payments")
                    .header("content-type", "application/x-www-form-urlencoded")
            },
            a401("token.missing"),
        ),
        case(
            "Ax03",
            "token only in Proxy-Authorization",
            Req::get("/accounts").header("proxy-authorization", format!("Bearer {good}")),
            a401("token.missing"),
        ),
        case(
            "Ax04",
            "Authorization with only a scheme",
            Req::get("/accounts").header("authorization", "Bearer"),
            refused(400, "token.bad_header"),
        ),
        case(
            "Ax05",
            "a valid token is accepted",
            accounts(&lab.token(json!({"jti": "ok-1"}))),
            Expect::Allowed,
        )
        .check(|o| match o.forwarded[0].headers.get("authorization") {
            None => Ok(()),
            Some(v) => Err(format!("credentials forwarded: {v:?}")),
        }),
    ]
}

fn obie(path: &str, sig: Option<String>, body: &[u8]) -> Req {
    let r = Req::post(path, body);
    match sig {
        Some(s) => r.header("x-jws-signature", s),
        None => r,
    }
}

/// Group B: OBIE detached JWS (refusals in the OBIE error body; the record keeps the reason).
fn group_b(k: &Keys) -> Vec<Case> {
    let hdr = |p: Profile| ob_header(p, Alg::PS256, "tpp1-ps", NOW - 5, TPP1_ISS, TAN);
    let sign = |h: &Map<String, Value>, body: &[u8]| sign_detached(h, body, |m| k.ps.sign(m));
    let edited = |edit: &dyn Fn(&mut Map<String, Value>)| {
        let mut h = hdr(Profile::Obie314);
        edit(&mut h);
        sign(&h, PAYMENT)
    };
    let good = sign(&hdr(Profile::Obie314), PAYMENT);
    let invalid = Expect::Obie("signature.jws_invalid", "UK.OBIE.Signature.Invalid");
    let claim = |r| Expect::Obie(r, "UK.OBIE.Signature.InvalidClaim");
    let missing = |r| Expect::Obie(r, "UK.OBIE.Signature.MissingClaim");
    let text = std::str::from_utf8(PAYMENT).unwrap();
    let mismatched = |encoded: bool, p: Profile| {
        let protected = b64url(Value::Object(hdr(p)).to_string().as_bytes());
        format!(
            "{protected}..{}",
            b64url(&k.ps.sign(&signing_input(&protected, PAYMENT, encoded)))
        )
    };
    let (gh, gs) = good.split_once("..").unwrap();
    let mut v = vec![
        case(
            "B01",
            "no x-jws-signature",
            obie(P314, None, PAYMENT),
            Expect::Obie("signature.jws_missing", "UK.OBIE.Signature.Missing"),
        ),
        case(
            "B01",
            "a valid signature passes",
            obie(P314, Some(good.clone()), PAYMENT),
            Expect::Allowed,
        )
        .check(|o| {
            if o.forwarded[0].body.as_ref() == PAYMENT {
                Ok(())
            } else {
                Err("other bytes forwarded".into())
            }
        }),
    ];
    for (what, body) in [
        ("one byte", text.replacen("165.88", "965.88", 1)),
        ("trailing whitespace", format!("{text} ")),
        (
            "key order",
            text.replacen(
                r#""Amount":"165.88","Currency":"GBP""#,
                r#""Currency":"GBP","Amount":"165.88""#,
                1,
            ),
        ),
        (
            "unicode escape",
            text.replacen("ACME Inc", "ACME \\u0049nc", 1),
        ),
    ] {
        v.push(case(
            "B02",
            format!("body changed after signing: {what}"),
            obie(P314, Some(good.clone()), body.as_bytes()),
            invalid,
        ));
    }
    v.extend([
        case("B03", "b64 false header, encoded payload signed", obie(P313, Some(mismatched(true, Profile::Obie313)), PAYMENT), invalid),
        case("B03", "no b64 header, raw payload signed", obie(P314, Some(mismatched(false, Profile::Obie314)), PAYMENT), invalid),
        case("B04", "b64 false without b64 in crit", obie(P313, Some({
            let mut h = hdr(Profile::Obie313);
            h.insert("crit".into(), json!([OB_IAT, portcullis_crypto::jose::detached::OB_ISS, portcullis_crypto::jose::detached::OB_TAN]));
            sign(&h, PAYMENT)
        }), PAYMENT), claim("signature.jws_b64")),
        case("B05", "crit missing", obie(P314, Some(edited(&|h| { h.remove("crit"); })), PAYMENT), missing("signature.jws_crit_missing")),
        case("B05", "crit lacks tan", obie(P314, Some(edited(&|h| { h.insert("crit".into(), json!([OB_IAT, portcullis_crypto::jose::detached::OB_ISS])); })), PAYMENT), claim("signature.jws_crit")),
        case("B05", "crit names an unknown claim", obie(P314, Some(edited(&|h| {
            let mut c = h["crit"].as_array().unwrap().clone();
            c.push(json!("urn:x"));
            h.insert("crit".into(), Value::Array(c));
            h.insert("urn:x".into(), json!(1));
        })), PAYMENT), claim("signature.jws_crit")),
        case("B06", "iat in the future", obie(P314, Some(edited(&|h| { h.insert(OB_IAT.into(), json!(NOW + 120)); })), PAYMENT), claim("signature.jws_iat")),
        case("B06", "iat stale", obie(P314, Some(edited(&|h| { h.insert(OB_IAT.into(), json!(NOW - 301)); })), PAYMENT), claim("signature.jws_iat")),
        case("B06", "iat as a string", obie(P314, Some(edited(&|h| { h.insert(OB_IAT.into(), json!(NOW.to_string())); })), PAYMENT), claim("signature.jws_iat")),
        case("B07", "iss of another TPP", obie(P314, Some(edited(&|h| { h.insert(portcullis_crypto::jose::detached::OB_ISS.into(), json!("PSDGB-FCA-654321/tpp-two-software-id")); })), PAYMENT), claim("signature.jws_iss")),
        case("B07", "tpp2's own valid signature over tpp1's connection", obie(P314, Some(sign_detached(&ob_header(Profile::Obie314, Alg::PS256, "tpp2-ps", NOW - 5, "PSDGB-FCA-654321/tpp-two-software-id", TAN), PAYMENT, |m| k.other.sign(m))), PAYMENT), claim("signature.jws_iss")),
        case("B07", "tpp2's key with tpp1's iss", obie(P314, Some(sign_detached(&ob_header(Profile::Obie314, Alg::PS256, "tpp2-ps", NOW - 5, TPP1_ISS, TAN), PAYMENT, |m| k.other.sign(m))), PAYMENT), claim("signature.jws_unknown_key")),
        case("B08", "unknown trust anchor", obie(P314, Some(edited(&|h| { h.insert(portcullis_crypto::jose::detached::OB_TAN.into(), json!("evil.example")); })), PAYMENT), claim("signature.jws_tan")),
        case("B09", "unknown kid", obie(P314, Some(edited(&|h| { h.insert("kid".into(), json!("nope")); })), PAYMENT), claim("signature.jws_unknown_key")),
        case("B09", "traversal kid", obie(P314, Some(edited(&|h| { h.insert("kid".into(), json!("../../PSDGB-FCA-654321")); })), PAYMENT), claim("signature.jws_unknown_key")),
        case("B09", "jku in the header", obie(P314, Some(edited(&|h| { h.insert("jku".into(), json!("https://127.0.0.1/jwks")); })), PAYMENT), claim("signature.jws_header")),
        case("B10", "attached payload", obie(P314, Some(format!("{gh}.{}.{gs}", b64url(PAYMENT))), PAYMENT), Expect::Obie("signature.jws_malformed", "UK.OBIE.Signature.Malformed")),
        case("B11", "a 3.1.3 (b64 false) signature on a 3.1.4 route", obie(P314, Some(sign(&hdr(Profile::Obie313), PAYMENT)), PAYMENT), claim("signature.jws_b64")),
        case("B11", "a 3.1.4 signature on a 3.1.3 route", obie(P313, Some(sign(&hdr(Profile::Obie314), PAYMENT)), PAYMENT), missing("signature.jws_b64_missing")),
        case("B12", "alg RS256", obie(P314, Some(edited(&|h| { h.insert("alg".into(), json!("RS256")); })), PAYMENT), claim("signature.jws_alg")),
        case("B12", "alg HS256", obie(P314, Some(edited(&|h| { h.insert("alg".into(), json!("HS256")); })), PAYMENT), claim("signature.jws_alg")),
        case("B12", "alg none", obie(P314, Some(edited(&|h| { h.insert("alg".into(), json!("none")); })), PAYMENT), claim("signature.jws_alg")),
        case("B13", "a gzip body: the bytes verified are the bytes forwarded", {
            let gz = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03\xab\xae\x05\x00\x43\xbf\xa6\xa3\x02\x00\x00\x00";
            Req { body: bytes::Bytes::from_static(gz), ..obie(P314, Some(sign(&hdr(Profile::Obie314), gz)), b"").header("content-encoding", "gzip") }
        }, Expect::Allowed)
            .check(|o| if o.forwarded[0].body.starts_with(b"\x1f\x8b") { Ok(()) } else { Err("the body was changed".into()) }),
        case("B14", "two x-jws-signature headers", obie(P314, Some(good.clone()), PAYMENT).header("x-jws-signature", good.clone()), Expect::Obie("signature.jws_multiple", "UK.OBIE.Signature.Malformed")),
        case("B14", "comma-joined values", obie(P314, Some(format!("{good},{good}")), PAYMENT), Expect::Obie("signature.jws_multiple", "UK.OBIE.Signature.Malformed")),
    ]);
    v
}

use portcullis_crypto::httpsig::digest::{content_digest, DigestAlg};
use portcullis_crypto::httpsig::sign::{component, sign as http_sign, Params};
use portcullis_crypto::httpsig::{Message, RequestView};

type Item = portcullis_crypto::httpsig::sign::ComponentItem;

fn comps(names: &[&str]) -> Vec<Item> {
    names
        .iter()
        .map(|n| component(n, &[], &[]).unwrap())
        .collect()
}

const FAPI_COMPONENTS: &[&str] = &["@method", "@target-uri", "authorization", "content-digest"];

/// An RFC 9421 request as tpp1: `Authorization` with a bound token, `Content-Digest` when there
/// is a body, `extra` headers, then `Signature-Input`/`Signature` under `label` over
/// `components` with `tag="fapi-2-request"` (after `edit`).
#[allow(clippy::too_many_arguments)]
fn http_signed(
    token: &str,
    key: &KeyPair,
    method: &str,
    target: &str,
    body: &[u8],
    components: Vec<Item>,
    extra: &[(&str, &str)],
    edit: impl FnOnce(&mut Params<'_>),
) -> Req {
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let mut map = http::HeaderMap::new();
    map.insert("authorization", format!("Bearer {token}").parse().unwrap());
    if !body.is_empty() {
        let d = content_digest(DigestAlg::Sha256, body);
        map.insert("content-digest", d.parse().unwrap());
    }
    for (k, v) in extra {
        map.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let mut p = Params {
        created: NOW,
        keyid: &key.kid,
        tag: Some("fapi-2-request"),
        ..Params::default()
    };
    edit(&mut p);
    let view = RequestView {
        method,
        scheme: "https",
        authority: "rs.example",
        path,
        query,
        headers: &map,
    };
    let (si, s) = http_sign("sig1", components, &p, Message::Request(&view), |m| {
        key.sign(m)
    })
    .unwrap();
    let mut r = Req::new(method, target);
    r.body = bytes::Bytes::copy_from_slice(body);
    for (k, v) in &map {
        r = r.header(k.as_str(), v.to_str().unwrap());
    }
    r.header("signature-input", si).header("signature", s)
}

/// `r` with every `name` header replaced by `value` (or removed when `None`).
fn set(mut r: Req, name: &str, value: Option<String>) -> Req {
    r.headers.retain(|(k, _)| k != name);
    match value {
        Some(v) => r.header(name, v),
        None => r,
    }
}

fn value(r: &Req, name: &str) -> String {
    r.headers.iter().find(|(k, _)| k == name).unwrap().1.clone()
}

/// Group C: RFC 9421 message signatures (FAPI 2.0).
fn group_c(lab: &Lab, k: &Keys) -> Vec<Case> {
    let token = lab.token(json!({"jti": "c-token"}));
    let signed = |key: &KeyPair, names: &[&str], edit: &dyn Fn(&mut Params<'_>)| {
        http_signed(&token, key, "POST", FAPI, PAYMENT, comps(names), &[], |p| {
            edit(p)
        })
    };
    let good = signed(&k.es, FAPI_COMPONENTS, &|_| {});
    let c401 = |r| refused(401, r);
    let attacker = {
        // A second, untagged signature by tpp2's key beside tpp1's good one.
        let extra = http_signed(
            &token,
            &k.other,
            "POST",
            FAPI,
            PAYMENT,
            comps(&["@method"]),
            &[],
            |p| p.tag = None,
        );
        let si = value(&good, "signature-input")
            + ", "
            + &value(&extra, "signature-input").replacen("sig1=", "evil=", 1);
        let s = value(&good, "signature")
            + ", "
            + &value(&extra, "signature").replacen("sig1=", "evil=", 1);
        set(
            set(good.clone(), "signature-input", Some(si)),
            "signature",
            Some(s),
        )
    };
    let two_tagged = {
        let extra = signed(&k.ps, FAPI_COMPONENTS, &|_| {});
        let si = value(&good, "signature-input")
            + ", "
            + &value(&extra, "signature-input").replacen("sig1=", "sig2=", 1);
        let s = value(&good, "signature")
            + ", "
            + &value(&extra, "signature").replacen("sig1=", "sig2=", 1);
        set(
            set(good.clone(), "signature-input", Some(si)),
            "signature",
            Some(s),
        )
    };
    let nonce_req = http_signed(
        &token,
        &k.es,
        "POST",
        "/fapi/nonce-payments",
        PAYMENT,
        comps(FAPI_COMPONENTS),
        &[],
        |p| p.nonce = Some("n-1"),
    );
    let changed = std::str::from_utf8(PAYMENT)
        .unwrap()
        .replacen("165.88", "965.88", 1);
    let with_ref = http_signed(
        &token,
        &k.es,
        "POST",
        FAPI,
        PAYMENT,
        comps(&[FAPI_COMPONENTS, &["x-payment-ref"]].concat()),
        &[("x-payment-ref", "ref-1")],
        |_| {},
    );
    let query_sig = {
        let mut c = comps(&FAPI_COMPONENTS[..3]);
        c.push(component("@query-param", &[("name", "AccountId")], &[]).unwrap());
        http_signed(
            &token,
            &k.es,
            "GET",
            "/fapi/accounts?AccountId=1",
            b"",
            c,
            &[],
            |_| {},
        )
    };
    vec![
        case("C01", "ES256 signature passes", good.clone(), Expect::Allowed)
            .check(|o| if o.record["signature"]["kid"] == "tpp1-es" { Ok(()) } else { Err(format!("evidence {}", o.record["signature"])) }),
        case("C01", "PS256 signature passes over HTTP/2", signed(&k.ps, FAPI_COMPONENTS, &|_| {}).h2(), Expect::Allowed),
        case("C02", "a signature over ()", signed(&k.es, &[], &|_| {}), c401("signature.http_coverage")),
        case("C02", "content-digest not covered", signed(&k.es, &FAPI_COMPONENTS[..3], &|_| {}), c401("signature.http_coverage")),
        case("C02", "no signature at all", Req::post(FAPI, PAYMENT).bearer(&token), c401("signature.http_missing")),
        case("C03", "Signature label differs from Signature-Input", set(good.clone(), "signature", Some(value(&good, "signature").replacen("sig1=", "sig2=", 1))), c401("signature.http_label")),
        case("C04", "an attacker's extra untagged signature grants nothing", attacker, Expect::Allowed)
            .check(|o| if o.record["signature"]["kid"] == "tpp1-es" { Ok(()) } else { Err(format!("evidence {}", o.record["signature"])) }),
        case("C04", "two signatures with the required tag", two_tagged, c401("signature.http_ambiguous")),
        case("C04", "another client's key", signed(&k.other, FAPI_COMPONENTS, &|_| {}), c401("signature.http_unknown_key")),
        case("C05", "created in the future", signed(&k.es, FAPI_COMPONENTS, &|p| p.created = NOW + 6), c401("signature.http_created")),
        case("C05", "created too long ago", signed(&k.es, FAPI_COMPONENTS, &|p| p.created = NOW - 61), c401("signature.http_created")),
        case("C05", "expired", signed(&k.es, FAPI_COMPONENTS, &|p| { p.created = NOW - 10; p.expires = Some(NOW - 1); }), c401("signature.http_expired")),
        case("C06", "nonce missing on a nonce route", http_signed(&token, &k.es, "POST", "/fapi/nonce-payments", PAYMENT, comps(FAPI_COMPONENTS), &[], |_| {}), c401("signature.http_nonce_missing")),
        case("C06", "nonce replayed", nonce_req.clone(), c401("signature.http_replay")).before(nonce_req, 200),
        case("C07", "alg hmac-sha256 with an EC key", signed(&k.es, FAPI_COMPONENTS, &|p| p.alg = Some("hmac-sha256")), c401("signature.http_alg")),
        case("C07", "alg rsa-pss-sha512 with a PS256 key", signed(&k.ps, FAPI_COMPONENTS, &|p| p.alg = Some("rsa-pss-sha512")), c401("signature.http_alg")),
        case("C08", "unknown keyid", signed(&k.es, FAPI_COMPONENTS, &|p| p.keyid = "nope"), c401("signature.http_unknown_key")),
        case("C09", "body altered", Req { body: changed.clone().into(), ..good.clone() }, c401("signature.digest_mismatch")),
        case("C09", "body and digest altered together", set(Req { body: changed.clone().into(), ..good.clone() }, "content-digest", Some(content_digest(DigestAlg::Sha256, changed.as_bytes()))), c401("signature.http_invalid")),
        case("C09", "digest missing", set(good.clone(), "content-digest", None), c401("signature.digest_missing")),
        case("C10", "a covered field sent twice", with_ref.clone().header("x-payment-ref", "ref-2"), c401("signature.http_invalid")),
        raw("C11", "obs-fold inside a covered field", format!("POST {FAPI} HTTP/1.1\r\nHost: localhost\r\nx-fapi-interaction-id: {{id}}\r\nx-payment-ref: ref-1\r\n ref-2\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"), Expect::Parser(400, "http_malformed")),
        case("C12", "a signed query parameter duplicated", Req { path: "/fapi/accounts?AccountId=1&AccountId=2".into(), ..query_sig.clone() }, c401("signature.http_component_invalid")),
        case("C12", "the signed query parameter once passes", query_sig, Expect::Allowed),
        case("C13", "@target-uri over HTTP/2 is the external URI", signed(&k.es, FAPI_COMPONENTS, &|_| {}).h2(), Expect::Allowed),
        case("C14", "signed over the internal authority", {
            let mut map = http::HeaderMap::new();
            map.insert("authorization", format!("Bearer {token}").parse().unwrap());
            map.insert("content-digest", content_digest(DigestAlg::Sha256, PAYMENT).parse().unwrap());
            let view = RequestView { method: "POST", scheme: "https", authority: "localhost", path: FAPI, query: None, headers: &map };
            let p = Params { created: NOW, keyid: &k.es.kid, tag: Some("fapi-2-request"), ..Params::default() };
            let (si, s) = http_sign("sig1", comps(FAPI_COMPONENTS), &p, Message::Request(&view), |m| k.es.sign(m)).unwrap();
            set(set(good.clone(), "signature-input", Some(si)), "signature", Some(s))
        }, c401("signature.http_invalid")),
        case("C15", "unterminated inner list", set(good.clone(), "signature-input", Some("sig1=(\"@method\"".into())), c401("signature.http_malformed")),
        case("C15", "signature not a byte sequence", set(good.clone(), "signature", Some("sig1=not-base64".into())), c401("signature.http_malformed")),
        case("C15", "created as a string", set(good, "signature-input", Some("sig1=(\"@method\");created=\"now\";tag=\"fapi-2-request\"".into())), c401("signature.http_malformed")),
    ]
}

/// A proof by `key` with this header and these claims, signed by `signer`.
fn proof_with(signer: &SigningKey, header: Value, claims: Value) -> String {
    signer.sign_compact(&header, &claims)
}

/// Group D: DPoP.
fn group_d(lab: &Lab) -> Vec<Case> {
    let client = SigningKey::generate(Alg::ES256, "c").unwrap();
    let other = SigningKey::generate(Alg::ES256, "o").unwrap();
    let t = lab.dpop_token(&client, json!({"jti": "dpop-token"}));
    let auth = |r: Req| r.header("authorization", format!("DPoP {t}"));
    let dpop = |p: String| auth(Req::get("/accounts")).header("dpop", p);
    let jti = || uuid::Uuid::new_v4().to_string();
    let p = |method: &str, url: &str| client.dpop_proof(method, url, Some(&t), NOW, &jti(), None);
    let ath = portcullis_crypto::jose::sha256_b64url(t.as_bytes());
    let base_claims = |extra: Value| {
        let mut c = json!({"jti": jti(), "htm": "GET", "htu": format!("{BASE}/accounts"), "iat": NOW, "ath": ath});
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    };
    let hdr = |extra: Value| {
        let mut hd = json!({"typ": "dpop+jwt", "jwk": client.public_jwk(false)});
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                hd.as_object_mut().unwrap().remove(k);
            } else {
                hd[k] = v.clone();
            }
        }
        hd
    };
    let d401 = |r| refused(401, r);
    let url = format!("{BASE}/accounts");
    let replayed = p("GET", &url);
    let reused_jti = jti();
    let nonce_url = format!("{BASE}/nonce/accounts");
    let nonce_auth = |pf: String| auth(Req::get("/nonce/accounts")).header("dpop", pf);
    let mut private = client.public_jwk(false);
    private["d"] = json!("AAAA");
    let foreign_nonce = b64url(&[7u8; 40]);
    let cert_bound = lab.token(json!({"jti": "cb"}));
    vec![
        case(
            "D01",
            "no DPoP header",
            auth(Req::get("/accounts")),
            d401("binding.dpop_proof_missing"),
        )
        .check(|o| {
            match o
                .headers
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok())
            {
                Some(v) if v.starts_with("DPoP") => Ok(()),
                v => Err(format!("WWW-Authenticate {v:?}")),
            }
        }),
        case(
            "D01",
            "a fresh proof passes",
            dpop(p("GET", &url)),
            Expect::Allowed,
        ),
        case(
            "D02",
            "two DPoP headers",
            dpop(p("GET", &url)).header("dpop", p("GET", &url)),
            refused(400, "binding.dpop_proof_multiple"),
        ),
        case(
            "D02",
            "comma-joined proofs",
            dpop(format!("{},{}", p("GET", &url), p("GET", &url))),
            refused(400, "binding.dpop_proof_multiple"),
        ),
        case(
            "D03",
            "typ JWT",
            dpop(proof_with(
                &client,
                hdr(json!({"typ": "JWT"})),
                base_claims(json!({})),
            )),
            d401("binding.dpop_typ"),
        ),
        case(
            "D03",
            "typ at+jwt",
            dpop(proof_with(
                &client,
                hdr(json!({"typ": "at+jwt"})),
                base_claims(json!({})),
            )),
            d401("binding.dpop_typ"),
        ),
        case(
            "D03",
            "no typ",
            dpop(proof_with(
                &client,
                hdr(json!({"typ": null})),
                base_claims(json!({})),
            )),
            d401("binding.dpop_typ"),
        ),
        case(
            "D04",
            "alg none",
            dpop(format!(
                "{}.{}.",
                h(json!({"typ": "dpop+jwt", "alg": "none", "jwk": client.public_jwk(false)})),
                h(base_claims(json!({})))
            )),
            d401("binding.dpop_malformed"),
        ),
        case(
            "D04",
            "alg HS256",
            dpop(format!(
                "{}.{}.AAAA",
                h(json!({"typ": "dpop+jwt", "alg": "HS256", "jwk": client.public_jwk(false)})),
                h(base_claims(json!({})))
            )),
            d401("binding.dpop_alg"),
        ),
        case(
            "D05",
            "jwk with a private part",
            dpop(proof_with(
                &client,
                hdr(json!({"jwk": private})),
                base_claims(json!({})),
            )),
            d401("binding.dpop_key"),
        ),
        case(
            "D06",
            "no jwk",
            dpop(proof_with(
                &client,
                hdr(json!({"jwk": null})),
                base_claims(json!({})),
            )),
            d401("binding.dpop_key"),
        ),
        case(
            "D06",
            "kid instead of jwk",
            dpop(proof_with(
                &client,
                hdr(json!({"jwk": null, "kid": "c"})),
                base_claims(json!({})),
            )),
            d401("binding.dpop_key"),
        ),
        case(
            "D06",
            "x5c instead of jwk",
            dpop(proof_with(
                &client,
                hdr(json!({"jwk": null, "x5c": ["MIIB"]})),
                base_claims(json!({})),
            )),
            d401("binding.dpop_key"),
        ),
        case(
            "D06",
            "malformed jwk",
            dpop(proof_with(
                &client,
                hdr(json!({"jwk": {"kty": "EC", "crv": "P-256", "x": "AA"}})),
                base_claims(json!({})),
            )),
            d401("binding.dpop_key"),
        ),
        case(
            "D07",
            "signed by another key than the embedded one",
            dpop(proof_with(&other, hdr(json!({})), base_claims(json!({})))),
            d401("binding.dpop_signature"),
        ),
        case(
            "D08",
            "POST proof on a GET",
            dpop(p("POST", &url)),
            d401("binding.dpop_htm"),
        ),
        case(
            "D08",
            "lower-case htm",
            dpop(p("get", &url)),
            d401("binding.dpop_htm"),
        ),
        case(
            "D09",
            "htu of another host",
            dpop(p("GET", "https://evil.example/accounts")),
            d401("binding.dpop_htu"),
        ),
        case(
            "D09",
            "htu of another path",
            dpop(p("GET", &format!("{BASE}/payments"))),
            d401("binding.dpop_htu"),
        ),
        case(
            "D09",
            "htu with http",
            dpop(p("GET", "http://rs.example/accounts")),
            d401("binding.dpop_htu"),
        ),
        case(
            "D10",
            "htu with :443, upper case and an escaped letter",
            dpop(p("GET", "HTTPS://RS.EXAMPLE:443/%61ccounts")),
            Expect::Allowed,
        ),
        case(
            "D10",
            "htu with a query",
            dpop(p("GET", &format!("{url}?a=1"))),
            d401("binding.dpop_htu"),
        ),
        case(
            "D10",
            "htu with a fragment",
            dpop(p("GET", &format!("{url}#x"))),
            d401("binding.dpop_htu"),
        ),
        case(
            "D11",
            "htu of the internal name",
            dpop(p("GET", "https://localhost/accounts")),
            d401("binding.dpop_htu"),
        ),
        case(
            "D12",
            "iat too old",
            dpop(client.dpop_proof("GET", &url, Some(&t), NOW - 120, &jti(), None)),
            d401("binding.dpop_iat"),
        ),
        case(
            "D12",
            "iat in the future",
            dpop(client.dpop_proof("GET", &url, Some(&t), NOW + 60, &jti(), None)),
            d401("binding.dpop_iat"),
        ),
        case(
            "D13",
            "the same proof again",
            dpop(replayed.clone()),
            d401("binding.dpop_replay"),
        )
        .before(dpop(replayed), 200),
        case(
            "D13",
            "a used jti at another URI",
            auth(Req::get("/bearer/accounts")).header(
                "dpop",
                client.dpop_proof(
                    "GET",
                    &format!("{BASE}/bearer/accounts"),
                    Some(&t),
                    NOW,
                    &reused_jti,
                    None,
                ),
            ),
            d401("binding.dpop_replay"),
        )
        .before(
            dpop(client.dpop_proof("GET", &url, Some(&t), NOW, &reused_jti, None)),
            200,
        ),
        case(
            "D14",
            "64 KiB jti: over hyper's buffer",
            dpop(client.dpop_proof("GET", &url, Some(&t), NOW, &"j".repeat(64 * 1024), None)),
            Expect::Parser(431, "http_headers_too_large"),
        ),
        case(
            "D14",
            "20 KiB jti: over the header limit",
            dpop(client.dpop_proof("GET", &url, Some(&t), NOW, &"j".repeat(20 * 1024), None)),
            refused(431, "http.headers_too_large"),
        ),
        case(
            "D14",
            "8 KiB jti (within the header limit)",
            dpop(client.dpop_proof("GET", &url, Some(&t), NOW, &"k".repeat(8 * 1024), None)),
            Expect::Allowed,
        ),
        case(
            "D15",
            "no ath",
            dpop(client.dpop_proof("GET", &url, None, NOW, &jti(), None)),
            d401("binding.dpop_ath"),
        ),
        case(
            "D16",
            "ath of another token",
            dpop(client.dpop_proof("GET", &url, Some("another"), NOW, &jti(), None)),
            d401("binding.dpop_ath"),
        ),
        case(
            "D16",
            "ath with padding",
            dpop(proof_with(
                &client,
                hdr(json!({})),
                base_claims(json!({"ath": format!("{ath}=")})),
            )),
            d401("binding.dpop_ath"),
        ),
        case(
            "D16",
            "ath over \"DPoP <at>\"",
            dpop(proof_with(
                &client,
                hdr(json!({})),
                base_claims(
                    json!({"ath": portcullis_crypto::jose::sha256_b64url(format!("DPoP {t}").as_bytes())}),
                ),
            )),
            d401("binding.dpop_ath"),
        ),
        case(
            "D17",
            "proof key is not the token's cnf.jkt",
            dpop(other.dpop_proof("GET", &url, Some(&t), NOW, &jti(), None)),
            d401("binding.jkt_mismatch"),
        ),
        case(
            "D19",
            "nonce route, proof without a nonce",
            nonce_auth(client.dpop_proof("GET", &nonce_url, Some(&t), NOW, &jti(), None)),
            d401("binding.dpop_nonce"),
        )
        .check(|o| {
            let www = o
                .headers
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if www.contains("use_dpop_nonce") && o.headers.contains_key("dpop-nonce") {
                Ok(())
            } else {
                Err(format!("{:?}", o.headers))
            }
        }),
        case(
            "D20",
            "a nonce we never issued",
            nonce_auth(client.dpop_proof(
                "GET",
                &nonce_url,
                Some(&t),
                NOW,
                &jti(),
                Some(&foreign_nonce),
            )),
            d401("binding.dpop_nonce"),
        ),
        case(
            "D21",
            "a nonce was issued; the next proof omits it",
            nonce_auth(client.dpop_proof("GET", &nonce_url, Some(&t), NOW, &jti(), None)),
            d401("binding.dpop_nonce"),
        )
        .before(
            nonce_auth(client.dpop_proof("GET", &nonce_url, Some(&t), NOW, &jti(), None)),
            401,
        ),
        case(
            "D22",
            "DPoP-bound token as Bearer",
            Req::get("/accounts")
                .bearer(&t)
                .header("dpop", p("GET", &url)),
            d401("binding.dpop_required"),
        ),
        case(
            "D22",
            "certificate-bound token with the DPoP scheme",
            Req::get("/accounts")
                .header("authorization", format!("DPoP {cert_bound}"))
                .header(
                    "dpop",
                    client.dpop_proof("GET", &url, Some(&cert_bound), NOW, &jti(), None),
                ),
            d401("binding.not_dpop_bound"),
        ),
        case(
            "D23",
            "both Bearer and DPoP Authorization",
            dpop(p("GET", &url)).bearer(&t),
            refused(400, "token.multiple"),
        ),
        case(
            "D25",
            "DPoP in Proxy-Authorization",
            Req::get("/accounts")
                .header("proxy-authorization", format!("DPoP {t}"))
                .header("dpop", p("GET", &url)),
            d401("token.missing"),
        ),
    ]
}

/// Group E: mTLS and certificate-bound tokens (listener with `client_auth: required`).
fn group_e(lab: &Lab) -> Vec<Case> {
    let t = lab.token(json!({"jti": "e-token"}));
    let right = thumb("tpp1");
    let raw = portcullis_crypto::jose::b64url_decode(&right).unwrap();
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let std_b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &raw);
    let variant = |v: String| lab.token(json!({"cnf": {"x5t#S256": v}}));
    let e401 = |r| refused(401, r);
    vec![
        handshake(
            "E01",
            "no client certificate",
            None,
            Expect::Handshake("no_client_cert"),
        ),
        handshake(
            "E02",
            "expired certificate",
            Some("expired"),
            Expect::Handshake("cert_expired"),
        ),
        handshake(
            "E02",
            "not yet valid certificate",
            Some("e-future"),
            Expect::Handshake("bad_cert"),
        ),
        handshake(
            "E03",
            "certificate from another CA",
            Some("rogue"),
            Expect::Handshake("unknown_ca"),
        ),
        handshake(
            "E03",
            "self-signed certificate",
            Some("e-self"),
            Expect::Handshake("unknown_ca"),
        ),
        handshake(
            "E04",
            "EKU serverAuth only",
            Some("e-server-eku"),
            Expect::Handshake("bad_cert"),
        ),
        handshake(
            "E04",
            "EKU emailProtection only",
            Some("e-email-eku"),
            Expect::Handshake("bad_cert"),
        ),
        handshake(
            "E06",
            "revoked certificate",
            Some("revoked"),
            Expect::Handshake("cert_revoked"),
        ),
        case(
            "E07",
            "token bound to tpp1 over tpp2's connection",
            Req::get("/accounts").bearer(&t).as_(Some("tpp2")),
            e401("binding.cert_mismatch"),
        )
        .check(|o| match o.headers.get("www-authenticate") {
            Some(v) if v == "Bearer error=\"invalid_token\"" => Ok(()),
            v => Err(format!("WWW-Authenticate {v:?}")),
        }),
        case(
            "E07",
            "a token for a fresh certificate of the same CA over tpp1",
            Req::get("/accounts").bearer(&lab.token_for("e-good", json!({}))),
            e401("binding.cert_mismatch"),
        ),
        case(
            "E08",
            "x5t#S256 padded",
            accounts(&variant(format!("{right}="))),
            e401("binding.cert_mismatch"),
        ),
        case(
            "E08",
            "x5t#S256 standard base64",
            accounts(&variant(std_b64)),
            e401("binding.cert_mismatch"),
        ),
        case(
            "E08",
            "x5t#S256 hex",
            accounts(&variant(hex.clone())),
            e401("binding.cert_mismatch"),
        ),
        case(
            "E08",
            "x5t#S256 upper-case hex",
            accounts(&variant(hex.to_uppercase())),
            e401("binding.cert_mismatch"),
        ),
        case(
            "E08",
            "x5t#S256 upper-cased",
            accounts(&variant(right.to_uppercase())),
            e401("binding.cert_mismatch"),
        ),
        case(
            "E08",
            "the right thumbprint passes",
            accounts(&lab.token(json!({"jti": "e-right"}))),
            Expect::Allowed,
        ),
        case(
            "E09",
            "an unbound token on a FAPI route",
            accounts(&lab.token(json!({"cnf": {}}))),
            e401("binding.unbound_token"),
        ),
        case(
            "E13",
            "HTTP/2 request for another host on this connection",
            Req {
                path: "https://other.example/accounts".into(),
                ..accounts(&t).h2()
            },
            refused(421, "http.misdirected"),
        ),
        case(
            "E14",
            "client-supplied certificate headers are replaced",
            Req::get("/accounts")
                .bearer(&lab.token(json!({"jti": "e14"})))
                .header("client-cert", ":Zm9yZ2Vk:")
                .header("x-forwarded-client-cert", "Hash=forged"),
            Expect::Allowed,
        )
        .check(|o| {
            let h = &o.forwarded[0].headers;
            match (h.get("client-cert"), h.get("x-forwarded-client-cert")) {
                (Some(c), None) if c != ":Zm9yZ2Vk:" => Ok(()),
                other => Err(format!("{other:?}")),
            }
        }),
        handshake(
            "E15",
            "a 100 KiB client chain",
            Some("e-bigchain"),
            Expect::Handshake("protocol"),
        ),
    ]
}

fn lab_options(policy: &str, dir: &std::path::Path) -> (LabOptions, Keys) {
    let (sigs, keys) = signature_config(dir);
    let mut o = LabOptions::new(policy);
    o.issuer().max_token_age = Some(dur("1h"));
    o.config.listener.server_names = vec!["localhost".into()];
    o.config.signatures = sigs;
    (o, keys)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auth_attack_table() {
    make_certs();
    let dir = tempfile::tempdir().unwrap();
    let (o, keys) = lab_options(POLICY, dir.path());
    let lab = Lab::start(o).await;
    let c = canary().await;
    let mut cases = group_a(&lab, &c);
    cases.extend(group_b(&keys));
    cases.extend(group_c(&lab, &keys));
    cases.extend(group_d(&lab));
    cases.extend(group_e(&lab));
    run(&lab, cases).await;
    assert_eq!(
        c.hits.load(Ordering::SeqCst),
        0,
        "a key URL from a token header was fetched (A07/A08)"
    );
}

/// E16, E17 (FAPI 1 Part 2 §8.5, BCP 195 / RFC 9325 §4.1–4.2): TLS 1.0 and 1.1, and TLS 1.2
/// suites without both ECDHE and AEAD, are refused at the handshake. rustls clients cannot offer
/// them, so `openssl s_client` does (at `@SECLEVEL=0`, so that openssl itself offers them); a
/// refusal counts only with the proxy's own `tls_handshake` record saying why. The controls show
/// the same client completing a handshake with the suites that are allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_tls_versions_and_weak_suites_are_refused_at_the_handshake() {
    let lab = Lab::start(LabOptions::new(common::POLICY)).await;
    for args in [
        &["-tls1_3"][..],
        &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"],
        &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES256-GCM-SHA384"],
    ] {
        let h = s_client(lab.p.addr, args).await.unwrap();
        assert!(h.completed, "control {args:?} must complete: {}", h.output);
    }
    let old = |args: &[&'static str]| {
        let mut v = args.to_vec();
        v.extend(["-cipher", "DEFAULT:@SECLEVEL=0"]);
        v
    };
    let version = Expect::Handshake("protocol_version");
    let cipher = Expect::Handshake("no_common_cipher");
    let suite = |s: &'static str| ["-tls1_2", "-cipher", s];
    let cases = vec![
        openssl("E16", "TLS 1.0", &old(&["-tls1"]), version),
        openssl("E16", "TLS 1.1", &old(&["-tls1_1"]), version),
        openssl(
            "E17",
            "TLS 1.2, RSA key exchange and CBC",
            &suite("AES128-SHA256:@SECLEVEL=0"),
            cipher,
        ),
        openssl(
            "E17",
            "TLS 1.2, RSA key exchange with AES-GCM (AEAD without ECDHE)",
            &suite("AES128-GCM-SHA256:@SECLEVEL=0"),
            cipher,
        ),
        openssl(
            "E17",
            "TLS 1.2, finite-field DHE with AES-GCM",
            &suite("DHE-RSA-AES128-GCM-SHA256:@SECLEVEL=0"),
            cipher,
        ),
        openssl(
            "E17",
            "TLS 1.2, ECDHE with CBC and SHA-256",
            &suite("ECDHE-ECDSA-AES128-SHA256:@SECLEVEL=0"),
            cipher,
        ),
        openssl(
            "E17",
            "TLS 1.2, ECDHE with CBC and SHA-1",
            &suite("ECDHE-ECDSA-AES256-SHA:@SECLEVEL=0"),
            cipher,
        ),
    ];
    run(&lab, cases).await;
    // FAPI 2.0 SP: TLS-only endpoints. Plain HTTP on the API listener gets no HTTP answer and
    // reaches nothing.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let before = lab.up.count();
    let mut tcp = tokio::net::TcpStream::connect(lab.p.addr).await.unwrap();
    tcp.write_all(b"GET /accounts HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let wait = std::time::Duration::from_secs(5);
    let _ = tokio::time::timeout(wait, tcp.read_to_end(&mut got)).await;
    assert!(
        !got.starts_with(b"HTTP/"),
        "plain HTTP must not be answered: {}",
        String::from_utf8_lossy(&got)
    );
    assert_eq!(lab.up.count(), before, "plain HTTP must reach nothing");
}

/// E01 and E09 with `client_auth: optional`: the handshake passes without a certificate and
/// the route decides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optional_mtls_rows() {
    let dir = tempfile::tempdir().unwrap();
    let (mut o, _) = lab_options(POLICY, dir.path());
    o.config.listener.tls.client_auth = Some("optional".into());
    let lab = Lab::start(o).await;
    let t = lab.token(json!({"jti": "opt"}));
    let cases = vec![
        case(
            "E01",
            "optional mTLS: a route that needs a certificate",
            Req::get("/accounts").bearer(&t).as_(None),
            refused(401, "identity.client_cert_required"),
        ),
        case(
            "E09",
            "certificate-bound token without a certificate",
            Req::get("/optional/accounts").bearer(&t).as_(None),
            refused(401, "binding.no_client_cert"),
        ),
        case(
            "E09",
            "the same token with the certificate passes",
            Req::get("/optional/accounts").bearer(&t),
            Expect::Allowed,
        ),
    ];
    run(&lab, cases).await;
}

/// A27, A30–A34: unusable keys in the issuer's set are skipped at load (a token naming one is
/// `token.unknown_key`, never verified with it). A32 (RFC 7517 §4.5, FAPI 1 Part 2 §8.11,
/// FAPI 2.0 SP): keys sharing a `kid` are all kept and the token's `alg` chooses one — an
/// encryption key beside the signing key `as-1`, an EC and an RSA key under one `kid`; only
/// two keys of one algorithm under one `kid` refuse the tokens that name them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_issuer_keys_are_never_used() {
    let enc = SigningKey::generate(Alg::ES256, "enc-key").unwrap();
    let ops = SigningKey::generate(Alg::ES256, "ops-key").unwrap();
    let private = SigningKey::generate(Alg::ES256, "private-key").unwrap();
    let curve = SigningKey::generate(Alg::ES256, "curve-key").unwrap();
    let rsa = KeyPair::generate(Alg::PS256, "rsa").unwrap();
    let with = |k: &SigningKey, extra: Value| {
        let mut j = k.public_jwk(true);
        for (n, v) in extra.as_object().unwrap() {
            if v.is_null() {
                j.as_object_mut().unwrap().remove(n);
            } else {
                j[n] = v.clone();
            }
        }
        j
    };
    let mut off_curve = curve.public_jwk(true);
    off_curve["kid"] = json!("off-curve");
    off_curve["y"] = json!(b64url(&[1u8; 32]));
    let mut e1 = rsa.public_jwk();
    e1["kid"] = json!("rsa-e1");
    e1["e"] = json!("AQ");
    let mut rsa1024 = rsa.public_jwk();
    rsa1024["kid"] = json!("rsa-1024");
    let n = portcullis_crypto::jose::b64url_decode(rsa1024["n"].as_str().unwrap()).unwrap();
    rsa1024["n"] = json!(b64url(&n[..128]));
    let mut private_jwk = with(&private, json!({}));
    private_jwk["d"] = json!(b64url(&[9u8; 32]));
    // A32: an encryption key under the lab key's own kid; an EC and an RSA key under "mixed";
    // two ES256 keys and an EdDSA key under "twin".
    let as1_enc = SigningKey::generate(Alg::ES256, "as-1").unwrap();
    let mixed_ec = SigningKey::generate(Alg::ES256, "mixed").unwrap();
    let mixed_rsa = KeyPair::generate(Alg::PS256, "mixed").unwrap();
    let twin_a = SigningKey::generate(Alg::ES256, "twin").unwrap();
    let twin_b = SigningKey::generate(Alg::ES256, "twin").unwrap();
    let twin_ed = SigningKey::generate(Alg::EdDSA, "twin").unwrap();
    let extra_keys = vec![
        with(&as1_enc, json!({"use": "enc", "alg": null})),
        mixed_ec.public_jwk(true),
        mixed_rsa.public_jwk(),
        twin_a.public_jwk(true),
        twin_b.public_jwk(true),
        twin_ed.public_jwk(true),
        off_curve,
        with(&curve, json!({"kid": "wrong-crv", "crv": "P-384"})),
        with(&curve, json!({"kid": "wrong-kty", "kty": "OKP"})),
        e1,
        rsa1024,
        json!({"kty": "oct", "kid": "hmac", "k": "c2VjcmV0", "alg": "HS256"}),
        json!({"kty": "oct", "kid": "hmac-empty", "k": "", "alg": "HS256"}),
        with(&enc, json!({"use": "enc"})),
        with(&ops, json!({"use": null, "key_ops": ["encrypt"]})),
        private_jwk,
    ];
    let mut o = LabOptions::new(
        "group: k\nupstream: bank\nroutes:\n  - id: a\n    method: GET\n    path: /accounts\n    auth: {profile: fapi2}\n",
    );
    o.extra_keys = extra_keys;
    let lab = Lab::start(o).await;
    let cnf = json!({"x5t#S256": thumb("tpp1")});
    let by = |k: &SigningKey| accounts(&k.access_token(&claims(json!({"cnf": cnf}))));
    let kid = |kid: &str| {
        accounts(&lab.key.sign_compact(
            &json!({"typ": "at+jwt", "kid": kid}),
            &claims(json!({"cnf": cnf})),
        ))
    };
    let hs = {
        let input = format!(
            "{}.{}",
            h(json!({"alg": "HS256", "typ": "at+jwt", "kid": "hmac"})),
            h(claims(json!({"cnf": cnf})))
        );
        format!("{input}.{}", b64url(&hmac(b"secret", &input)))
    };
    let ps256 = {
        let input = format!(
            "{}.{}",
            h(json!({"alg": "PS256", "typ": "at+jwt", "kid": "mixed"})),
            h(claims(json!({"cnf": cnf})))
        );
        format!("{input}.{}", b64url(&mixed_rsa.sign(input.as_bytes())))
    };
    let u = a401("token.unknown_key");
    let cases = vec![
        case(
            "A32",
            "a use:enc key shares the signing key's kid: the signing key verifies",
            accounts(&lab.token(json!({"jti": "beside-enc"}))),
            Expect::Allowed,
        ),
        case(
            "A32",
            "a token signed by the use:enc key under that kid",
            by(&as1_enc),
            a401("token.bad_signature"),
        ),
        case(
            "A32",
            "an EC and an RSA key under one kid: ES256 chooses the EC key",
            by(&mixed_ec),
            Expect::Allowed,
        ),
        case(
            "A32",
            "an EC and an RSA key under one kid: PS256 chooses the RSA key",
            accounts(&ps256),
            Expect::Allowed,
        ),
        case(
            "A32",
            "two ES256 keys under one kid: a token by the first",
            by(&twin_a),
            a401("token.ambiguous_key"),
        ),
        case(
            "A32",
            "two ES256 keys under one kid: a token by the second",
            by(&twin_b),
            a401("token.ambiguous_key"),
        ),
        case(
            "A32",
            "an EdDSA key beside the ambiguous ES256 pair is chosen by its alg",
            by(&twin_ed),
            Expect::Allowed,
        ),
        case(
            "A32",
            "a kid naming only an RSA and an EC key, with EdDSA",
            accounts(
                &SigningKey::generate(Alg::EdDSA, "mixed")
                    .unwrap()
                    .access_token(&claims(json!({"cnf": cnf}))),
            ),
            a401("token.key_mismatch"),
        ),
        case(
            "A27",
            "a key whose point is off the curve",
            kid("off-curve"),
            u,
        ),
        case(
            "A27",
            "a key whose crv does not fit ES256",
            kid("wrong-crv"),
            u,
        ),
        case(
            "A27",
            "a key whose kty does not fit its members",
            kid("wrong-kty"),
            u,
        ),
        case("A30", "RSA exponent 1", kid("rsa-e1"), u),
        case("A30", "RSA 1024-bit modulus", kid("rsa-1024"), u),
        case(
            "A31",
            "a symmetric key (HS256 is never allowed)",
            accounts(&hs),
            a401("token.alg_not_allowed"),
        ),
        case(
            "A31",
            "an empty symmetric key, named by an ES256 token",
            kid("hmac-empty"),
            u,
        ),
        case("A33", "use enc", by(&enc), u),
        case("A33", "key_ops without verify", by(&ops), u),
        case(
            "A34",
            "a key set entry with private material",
            by(&private),
            u,
        ),
        case(
            "A34",
            "the good key in the same set still works",
            accounts(&lab.token(json!({"jti": "good"}))),
            Expect::Allowed,
        ),
    ];
    run(&lab, cases).await;
}
