use std::sync::OnceLock;

use super::*;

/// Dev certificates (with the AS and DPoP keys) made once for these tests.
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

fn vars(name: &str) -> Option<String> {
    (name == "CERTS").then(|| certs().display().to_string())
}

const GOOD: &str = r#"
name: t
target:
  address: 127.0.0.1:8443
  ca: ${CERTS}/ca.pem
clients:
  - name: one
    cert: ${CERTS}/tpp1.pem
    key: ${CERTS}/tpp1.key
    token:
      signing_key: ${CERTS}/as.key
      issuer: https://as.example
      audience: https://rs.example
      scopes: [accounts]
      claims: {openbanking_intent_id: aac-1}
      binding: dpop
      dpop_key: ${CERTS}/dpop.key
  - name: two
    cert: ${CERTS}/tpp2.pem
    key: ${CERTS}/tpp2.key
    weight: 3
    token:
      signing_key: ${CERTS}/as.key
      issuer: https://as.example
      audience: https://rs.example
      binding: cert
routes:
  - name: accounts
    path: /accounts?x=1
    headers: {x-fapi-interaction-id: "{uuid}", accept: application/json}
    weight: 2
  - name: pay
    method: POST
    path: /payments
    body: {inline: '{"Data":{"id":"{uuid}"}}'}
    jws: {format: obie, key: "${CERTS}/dpop.key", kid: k1, iss: org/ssa}
    clients: [one]
    expect: [201]
load:
  mode: open
  rate: 50
  requests: 100
  warmup: 1s
thresholds: {max_p99_ms: 20, max_error_rate: 0.01}
"#;

fn load(text: &str) -> Result<Scenario, ConfigErrors> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.yaml");
    std::fs::write(&path, text).unwrap();
    Scenario::load_with(&path, &vars)
}

/// The (field, reason) pairs of a refused scenario.
fn errors(text: &str) -> Vec<(String, String)> {
    match load(text) {
        Ok(_) => panic!("scenario accepted:\n{text}"),
        Err(e) => e.0.into_iter().map(|e| (e.field, e.reason)).collect(),
    }
}

fn has(errs: &[(String, String)], field: &str, reason_part: &str) -> bool {
    errs.iter()
        .any(|(f, r)| f == field && r.contains(reason_part))
}

#[test]
fn a_full_scenario_loads_with_every_part_validated() {
    let s = load(GOOD).unwrap();
    assert_eq!(s.name, "t");
    assert_eq!(s.target.host, "localhost");
    assert_eq!(s.target.base_url, "https://localhost");
    assert_eq!(s.routes[0].htu, "https://localhost/accounts");
    assert_eq!(s.routes[0].path, "/accounts?x=1");
    assert_eq!(s.routes[1].method, http::Method::POST);
    assert_eq!(s.routes[1].expect.as_deref(), Some(&[201][..]));
    assert!(s.routes[1].jws.is_some());
    assert!(matches!(
        s.clients[0].token.as_ref().unwrap().binding,
        Binding::Dpop(_)
    ));
    assert_eq!(s.clients[0].token.as_ref().unwrap().client_id, "one");
    // Route weight 2 split 1:3 between the clients; the payment goes to `one` only.
    let w: Vec<(usize, usize, u64)> = s
        .mix
        .iter()
        .map(|p| (p.route, p.client, p.weight))
        .collect();
    assert_eq!(w, vec![(0, 0, 500), (0, 1, 1500), (1, 0, 1000)]);
    assert_eq!(
        s.load.mode,
        Mode::Open {
            rate: 50.0,
            max_outstanding: 1000
        }
    );
    assert_eq!(s.load.stop, Stop::Requests(100));
    assert_eq!(s.thresholds.max_p99_ms, Some(20.0));
}

#[test]
fn uuid_holes_are_filled_per_render() {
    let t = Text::parse(br#"{"a":"{uuid}","b":"{uuid}"}"#);
    let (x, y) = (t.render(), t.render());
    assert_ne!(x, y);
    assert_eq!(x.len(), br#"{"a":"","b":""}"#.len() + 72);
    assert_eq!(Text::parse(b"plain {x}").render(), &b"plain {x}"[..]);
}

#[test]
fn environment_variables_expand_with_defaults() {
    let v = |n: &str| (n == "A").then(|| "x".to_string());
    assert_eq!(expand("${A}/f ${B:-d}", &v).unwrap(), "x/f d");
    assert!(expand("${B}", &v).unwrap_err().contains("B is not set"));
    assert!(expand("${A", &v).is_err());
    assert!(expand("${a-b}", &v).is_err());
}

#[test]
fn unknown_fields_and_bad_yaml_are_refused_with_the_file_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        GOOD.replace("  warmup: 1s", "  warmup: 1s\n  ramp: 2s"),
    )
    .unwrap();
    let e = Scenario::load_with(&path, &vars).unwrap_err();
    let text = e.to_string();
    assert!(text.contains("bad.yaml"), "{text}");
    assert!(text.contains("ramp"), "{text}");
    let e = Scenario::load_with(&dir.path().join("missing.yaml"), &vars).unwrap_err();
    assert!(e.to_string().contains("cannot read the file"), "{e}");
}

#[test]
fn each_invalid_field_is_named_with_its_reason() {
    let cases: &[(&str, &str, &str, &str)] = &[
        ("127.0.0.1:8443", "localhost:8443", "target.address", "not an IP:port"),
        ("${CERTS}/ca.pem", "${NOPE}/ca.pem", "target.ca", "NOPE is not set"),
        ("${CERTS}/ca.pem", "${CERTS}/nope.pem", "target.ca", "cannot read"),
        ("${CERTS}/ca.pem", "${CERTS}/as-jwks.json", "target.ca", "no PEM certificate"),
        ("cert: ${CERTS}/tpp2.pem", "cert: ${CERTS}/none.pem", "clients[1].cert", "none.pem"),
        ("weight: 3", "weight: 0", "clients[1].weight", "between 1 and 1000"),
        ("signing_key: ${CERTS}/as.key\n      issuer: https://as.example\n      audience: https://rs.example\n      binding: cert",
         "signing_key: ${CERTS}/tpp1.pem\n      issuer: https://as.example\n      audience: https://rs.example\n      binding: cert",
         "clients[1].token.signing_key", "no PEM private key"),
        ("{openbanking_intent_id: aac-1}", "{cnf: {jkt: x}}", "clients[0].token.claims.cnf", "set by the token settings"),
        ("      binding: cert", "      binding: cert\n      dpop_key: x.key", "clients[1].token.dpop_key", "only with binding: dpop"),
        ("scopes: [accounts]", "scopes: [\"a b\"]", "clients[0].token.scopes[0]", "one non-empty word"),
        ("path: /accounts?x=1", "path: accounts", "routes[0].path", "absolute path"),
        ("method: POST", "method: post", "routes[1].method", "upper-case"),
        ("accept: application/json", "authorization: x", "routes[0].headers.authorization", "set by the load generator"),
        ("clients: [one]", "clients: [three]", "routes[1].clients[0]", "no client is named `three`"),
        ("expect: [201]", "expect: [42]", "routes[1].expect", "HTTP statuses"),
        ("format: obie", "format: jades", "routes[1].jws.format", "not known"),
        ("kid: k1, iss", "kid: k1, profile: obie-9, iss", "routes[1].jws.profile", "obie-3.1.3 or obie-3.1.4"),
        ("    body: {inline: '{\"Data\":{\"id\":\"{uuid}\"}}'}\n", "", "routes[1].jws", "needs a `body`"),
        ("body: {inline:", "body: {file: nothing.json, inline:", "routes[1].body", "exactly one of"),
        ("  rate: 50\n", "", "load.rate", "required with mode: open"),
        ("  requests: 100\n", "", "load", "exactly one of `duration` and `requests`"),
        ("  requests: 100\n", "  requests: 100\n  duration: 5s\n", "load", "exactly one of"),
        ("mode: open", "mode: closed", "load.rate", "only with mode: open"),
        ("max_error_rate: 0.01", "max_error_rate: 5", "thresholds.max_error_rate", "between 0 and 1"),
        ("name: two", "name: one", "clients[1].name", "used by another client"),
        ("  ca: ${CERTS}/ca.pem\n", "", "target.ca", "required (unless plaintext: true)"),
        ("    cert: ${CERTS}/tpp2.pem\n", "", "clients[1].cert", "required (unless target.plaintext"),
        ("expect: [201]", "expect: [201]\n    dpop_proof: replay\n  - name: x\n    path: /x\n    clients: [two]\n    dpop_proof: none",
         "routes[2].dpop_proof", "client `two` sends no DPoP proofs"),
        ("expect: [201]", "expect: [201]\n    dpop_proof: again", "", "again"),
    ];
    for (from, to, field, reason) in cases {
        assert!(
            GOOD.contains(from),
            "case text {from:?} not in the scenario"
        );
        let errs = errors(&GOOD.replacen(from, to, 1));
        assert!(
            has(&errs, field, reason),
            "{field}: expected a reason with {reason:?}, got {errs:?}"
        );
    }
}

#[test]
fn the_example_scenarios_load() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../benches/scenarios");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let v =
                |name: &str| (name == "PORTCULLIS_CERTS").then(|| certs().display().to_string());
            if let Err(e) = Scenario::load_with(&path, &v) {
                panic!("{}: {e}", path.display());
            }
            n += 1;
        }
    }
    assert!(n >= 2, "example scenarios in {}", dir.display());
}

const PLAIN: &str = r#"
target:
  address: 127.0.0.1:8080
  plaintext: true
clients:
  - name: direct
  - name: dpop
    token:
      signing_key: ${CERTS}/as.key
      issuer: https://as.example
      audience: https://rs.example
      binding: dpop
routes:
  - name: accounts
    path: /open-banking/v3.1/aisp/accounts
    clients: [direct]
  - name: dpop
    path: /dpop
    clients: [dpop]
    dpop_proof: replay
load: {mode: open, rate: 10, requests: 10}
"#;

#[test]
fn a_plaintext_target_needs_no_certificates() {
    let s = load(PLAIN).unwrap();
    assert!(s.target.plaintext);
    assert_eq!(s.target.ca, None);
    assert_eq!(s.target.base_url, "http://localhost");
    assert_eq!(
        s.routes[0].htu,
        "http://localhost/open-banking/v3.1/aisp/accounts"
    );
    assert!(s
        .clients
        .iter()
        .all(|c| c.tls.is_none() && c.cert.is_none()));
    assert_eq!(s.routes[0].dpop_proof, ProofMode::Fresh);
    assert_eq!(s.routes[1].dpop_proof, ProofMode::Replay);
    // TLS settings make no sense without TLS, and a certificate-bound token has no certificate.
    let bad = PLAIN
        .replace(
            "  plaintext: true\n",
            "  plaintext: true\n  ca: ${CERTS}/ca.pem\n",
        )
        .replace(
            "  - name: direct\n",
            "  - name: direct\n    cert: ${CERTS}/tpp1.pem\n    key: ${CERTS}/tpp1.key\n",
        )
        .replace("binding: dpop", "binding: cert");
    let errs = errors(&bad);
    assert!(
        has(&errs, "target.ca", "not used with plaintext"),
        "{errs:?}"
    );
    assert!(
        has(&errs, "clients[0].cert", "not used with target.plaintext"),
        "{errs:?}"
    );
    assert!(
        has(&errs, "clients[0].key", "not used with target.plaintext"),
        "{errs:?}"
    );
    assert!(
        has(
            &errs,
            "clients[1].token.binding",
            "needs a client certificate"
        ),
        "{errs:?}"
    );
}
