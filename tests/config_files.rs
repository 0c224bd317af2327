//! Every shipped config and policy file loads; bad config is refused at load with the file,
//! the field and the reason; the CLI's `check` and `demo` work as a new user would run them.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;

use portcullis_proxy::config::Config;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A copy of the repository's config/ and policies/ beside freshly generated dev certs, laid
/// out as the files expect (`../certs`, `../policies`).
fn staged() -> tempfile::TempDir {
    let d = staged_without_certs();
    portcullis_tools::devcerts::generate(&d.path().join("certs")).unwrap();
    d
}

/// The repository's config/ and policies/ copied into an empty directory, as a fresh clone has
/// them: no certificates yet.
fn staged_without_certs() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for sub in ["config", "policies", "policies/sidecar"] {
        std::fs::create_dir_all(d.path().join(sub)).unwrap();
        for e in std::fs::read_dir(repo().join(sub)).unwrap() {
            let p = e.unwrap().path();
            if p.is_file() {
                std::fs::copy(&p, d.path().join(sub).join(p.file_name().unwrap())).unwrap();
            }
        }
    }
    d
}

fn config_files() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(repo().join("config"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "yaml")
                && !p.file_name().unwrap().to_string_lossy().starts_with("k8s")
        })
        .collect();
    v.sort();
    v
}

#[test]
fn every_shipped_config_and_policy_file_loads() {
    portcullis_proxy::install_crypto_provider();
    let d = staged();
    let files = config_files();
    assert!(files.len() >= 3, "{files:?}");
    for f in files {
        let staged = d.path().join("config").join(f.file_name().unwrap());
        let c = Config::load(&staged).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert!(!c.policies.routes().is_empty());
    }
    for dir in ["policies", "policies/sidecar"] {
        let set = portcullis_policy::load_files(
            &[repo().join(dir)],
            &portcullis_policy::Known::standalone(),
        )
        .unwrap_or_else(|e| panic!("{dir}: {e}"));
        assert!(!set.routes().is_empty());
    }
}

/// The typed file config is what the test kit builds configs from: every shipped config,
/// read into it and written back as JSON, is the same value and loads the same way.
#[test]
fn every_shipped_config_written_back_from_its_typed_value_loads_the_same() {
    use portcullis_proxy::config::file::FileConfig;
    portcullis_proxy::install_crypto_provider();
    let d = staged();
    for f in config_files() {
        let staged = d.path().join("config").join(f.file_name().unwrap());
        let text = std::fs::read_to_string(&staged).unwrap();
        let typed: FileConfig = serde_saphyr::from_str(&text).unwrap();
        let json = serde_json::to_string_pretty(&typed).unwrap();
        let again: FileConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(
            serde_json::to_value(&again).unwrap(),
            serde_json::to_value(&typed).unwrap(),
            "{}",
            f.display()
        );
        let written = staged.with_extension("json.yaml");
        std::fs::write(&written, &json).unwrap();
        let a = Config::load(&staged).unwrap();
        let b = Config::load(&written).unwrap_or_else(|e| panic!("{}: {e}\n{json}", f.display()));
        assert_eq!(a.listener.address, b.listener.address);
        assert_eq!(
            a.upstreams.keys().collect::<Vec<_>>(),
            b.upstreams.keys().collect::<Vec<_>>()
        );
        assert_eq!(a.policies.routes().len(), b.policies.routes().len());
        assert_eq!(
            format!("{:?}", a.audit),
            format!("{:?}", b.audit),
            "{}",
            f.display()
        );
    }
}

fn load_err(dir: &Path, yaml: &str) -> String {
    let p = dir.join("bad.yaml");
    std::fs::write(&p, yaml).unwrap();
    Config::load(&p).err().expect("must be refused").to_string()
}

#[test]
fn bad_config_is_refused_naming_the_file_the_field_and_the_reason() {
    portcullis_proxy::install_crypto_provider();
    let d = staged();
    let cfg = d.path().join("config");
    let good = std::fs::read_to_string(cfg.join("demo.yaml")).unwrap();
    let cases = [
        (
            good.replace("address: \"127.0.0.1:8443\"", "address: \"localhost:8443\""),
            "listener.address: `localhost:8443` is not an IP:port",
        ),
        (
            good.replace(
                "address: \"127.0.0.1:8443\"",
                "address: \"127.0.0.1:8443\"\n  workers: 0",
            ),
            "listener.workers: must be between 1 and 256",
        ),
        (
            good.replace("client_auth: required", "client_auth: maybe"),
            "listener.tls.client_auth: unknown value `maybe`",
        ),
        (
            good.replace("../certs/ca.pem", "../certs/missing.pem"),
            "listener.tls.client_ca[0]: cannot read",
        ),
        (
            good.replace("../certs/server.key", "../certs/tpp1.key"),
            "listener.tls: certificate and private key do not form a usable pair",
        ),
        (
            good.replace("header_read_timeout: 10s", "header_read_timeout: 10"),
            "has no unit",
        ),
        (
            good.replace("max_headers: 100", "max_headers: 1"),
            "listener.limits.max_headers: 1 is outside",
        ),
        (
            good.replace(
                "  bank:\n    url: http://127.0.0.1:9080",
                "  bank:\n    url: ftp://127.0.0.1:9080",
            ),
            "upstreams.bank.url: scheme must be http or https",
        ),
        (
            good.replace(
                "forwarding:\n  client_cert: rfc9440",
                "forwarding:\n  client_cert: rfc9440\n  bogus: 1",
            ),
            "unknown field `bogus`",
        ),
        (
            good.replace("  client_cert: rfc9440", "  client_cert: forged"),
            "forwarding.client_cert: unknown value `forged`",
        ),
        (good.replace("  - ../policies", "  - ../nowhere"), "nowhere"),
        ("listener: [".to_string(), "invalid YAML"),
    ];
    for (yaml, want) in cases {
        let msg = load_err(&cfg, &yaml);
        assert!(msg.contains("bad.yaml"), "file named: {msg}");
        assert!(msg.contains(want), "want `{want}` in: {msg}");
    }
}

/// Introspection client authentication: a secret needs its client id, and mTLS client
/// authentication (`tls_client_auth`) needs one too, because RFC 8705 §2 has the client send it.
#[test]
fn introspection_client_authentication_is_complete_or_refused() {
    portcullis_proxy::install_crypto_provider();
    let d = staged();
    let cfg = d.path().join("config");
    std::fs::write(cfg.join("rs-secret"), "s3cret\n").unwrap();
    let good = std::fs::read_to_string(cfg.join("demo.yaml")).unwrap();
    let with = |auth: &str| {
        good.replace(
            "    jwks: {file: ../certs/as-jwks.json}\n",
            &format!(
                "    jwks: {{file: ../certs/as-jwks.json}}\n    introspection:\n      url: https://as.bank.example/introspect\n      ca: [../certs/ca.pem]\n{auth}"
            ),
        )
    };
    let cert = "      client_certificate: ../certs/tpp1.pem\n      client_private_key: ../certs/tpp1.key\n";
    for (auth, want) in [
        (
            cert.to_string(),
            "issuers.as.introspection.client_id: mTLS client authentication (RFC 8705 §2) sends the client_id",
        ),
        (
            "      client_secret_file: rs-secret\n".to_string(),
            "issuers.as.introspection.client_id: client_secret_file needs the client_id",
        ),
        (
            "      client_id: rs\n".to_string(),
            "issuers.as.introspection.client_id: the proxy must authenticate",
        ),
    ] {
        let msg = load_err(&cfg, &with(&auth));
        assert!(msg.contains("bad.yaml"), "file named: {msg}");
        assert!(msg.contains(want), "want `{want}` in: {msg}");
    }
    // Introspecting JWTs needs JWTs: an issuer without jwks has none.
    let opaque_only = with(&format!("      client_id: rs\n{cert}      jwts: true\n"))
        .replace("    jwks: {file: ../certs/as-jwks.json}\n", "");
    let msg = load_err(&cfg, &opaque_only);
    assert!(
        msg.contains(
            "issuers.as.introspection.jwts: applies to JWT access tokens, which need jwks"
        ),
        "{msg}"
    );
    for auth in [
        format!("      client_id: rs\n{cert}"),
        "      client_id: rs\n      client_secret_file: rs-secret\n".to_string(),
    ] {
        let p = cfg.join("good.yaml");
        std::fs::write(&p, with(&auth)).unwrap();
        if let Err(e) = Config::load(&p) {
            panic!("{auth}: {e}");
        }
    }
}

/// Consent service client authentication: exactly one way, each complete; refusals name the
/// file, the field and the reason.
#[test]
fn consent_client_authentication_is_exactly_one_way_and_complete_or_refused() {
    portcullis_proxy::install_crypto_provider();
    let d = staged();
    let cfg = d.path().join("config");
    std::fs::write(cfg.join("consent-token"), "abc.def-123\n").unwrap();
    std::fs::write(cfg.join("empty"), "\n").unwrap();
    std::fs::write(cfg.join("not-a-token"), "two words\n").unwrap();
    std::fs::write(cfg.join("client-secret"), "s3cret\n").unwrap();
    let good = std::fs::read_to_string(cfg.join("edge.yaml")).unwrap();
    let section =
        "consent:\n  url: https://consents.bank.internal/consents/{id}\n  ca: [../certs/ca.pem]\n";
    assert!(good.contains(section));
    let with = |auth: &str| good.replace(section, &format!("{section}  client_auth:\n{auth}"));
    let cert =
        "    client_certificate: ../certs/tpp1.pem\n    client_private_key: ../certs/tpp1.key\n";
    let cc = |extra: &str| {
        format!("    client_credentials:\n      token_url: https://as.bank.example/token\n      client_id: portcullis\n{extra}")
    };
    let secret = "      client_secret_file: client-secret\n";
    for (auth, want) in [
        ("    {}\n".to_string(), "consent.client_auth: set one of client_certificate"),
        (
            "    client_certificate: ../certs/tpp1.pem\n".to_string(),
            "consent.client_auth.client_certificate: client_certificate and client_private_key go together",
        ),
        (
            format!("{cert}    bearer_token_file: consent-token\n"),
            "consent.client_auth.bearer_token_file: a bearer token file and a client certificate",
        ),
        (
            format!("    bearer_token_file: consent-token\n{}", cc(secret)),
            "consent.client_auth.bearer_token_file: set one of bearer_token_file and client_credentials",
        ),
        (
            "    bearer_token_file: missing\n".to_string(),
            "consent.client_auth.bearer_token_file: cannot read",
        ),
        (
            "    bearer_token_file: empty\n".to_string(),
            "consent.client_auth.bearer_token_file: ",
        ),
        (
            "    bearer_token_file: not-a-token\n".to_string(),
            "holds no bearer token (RFC 6750 b64token)",
        ),
        (
            cc(""),
            "consent.client_auth.client_credentials.client_secret_file: the token endpoint needs client authentication",
        ),
        (
            format!("{cert}{}", cc(secret)),
            "consent.client_auth.client_credentials.client_secret_file: the token endpoint takes client_secret_file or the client certificate, not both",
        ),
        (
            cc(secret).replace("https://as.bank.example/token", "http://as.bank.example/token"),
            "consent.client_auth.client_credentials.token_url: `http://as.bank.example/token` is not an https:// URL",
        ),
        (
            cc(secret).replace("client_id: portcullis", "client_id: \"\""),
            "consent.client_auth.client_credentials.client_id: must not be empty",
        ),
        (
            cc(&format!("{secret}      scope: \"a  b\"\n")),
            "consent.client_auth.client_credentials.scope: must be space-separated scope tokens",
        ),
        (
            cc("      client_secret_file: empty\n"),
            "consent.client_auth.client_credentials.client_secret_file: the secret file is empty",
        ),
        (
            "    bearer_token: abc\n".to_string(),
            "unknown field `bearer_token`",
        ),
    ] {
        let msg = load_err(&cfg, &with(&auth));
        assert!(msg.contains("bad.yaml"), "file named: {msg}");
        assert!(msg.contains(want), "want `{want}` in: {msg}");
    }
    // A client authentication for a consent file is a mistake, not something to ignore.
    let demo = std::fs::read_to_string(cfg.join("demo.yaml")).unwrap();
    let msg = load_err(
        &cfg,
        &demo.replace(
            "  file: dev-consents.json\n",
            "  file: dev-consents.json\n  client_auth:\n    bearer_token_file: consent-token\n",
        ),
    );
    assert!(
        msg.contains("consent.client_auth: client authentication is for a consent url"),
        "{msg}"
    );
    // The token file is re-read on its own: a rotation must not reload the whole config.
    let p = cfg.join("good.yaml");
    std::fs::write(&p, with("    bearer_token_file: consent-token\n")).unwrap();
    let loaded = Config::load(&p).unwrap();
    assert!(
        !loaded.watched.iter().any(|w| w.ends_with("consent-token")),
        "{:?}",
        loaded.watched
    );
    for auth in [
        cert.to_string(),
        "    bearer_token_file: consent-token\n".to_string(),
        cc(&format!("{secret}      scope: consents:read accounts\n")),
        format!("{cert}{}", cc("")),
    ] {
        let p = cfg.join("good.yaml");
        std::fs::write(&p, with(&auth)).unwrap();
        if let Err(e) = Config::load(&p) {
            panic!("{auth}: {e}");
        }
    }
}

/// Scope and client claims an issuer maps (`scp`, `azp`, ...) are plain member names, never a
/// registered claim that already means something else.
#[test]
fn mapped_claims_are_plain_names_and_not_registered_claims() {
    portcullis_proxy::install_crypto_provider();
    let d = staged();
    let cfg = d.path().join("config");
    let good = std::fs::read_to_string(cfg.join("demo.yaml")).unwrap();
    let with = |extra: &str| {
        good.replace(
            "    jwks: {file: ../certs/as-jwks.json}\n",
            &format!("    jwks: {{file: ../certs/as-jwks.json}}\n{extra}"),
        )
    };
    for (extra, want) in [
        (
            "    scope_claim: aud\n",
            "issuers.as.scope_claim: `aud` is a registered claim",
        ),
        (
            "    client_claim: sub\n",
            "issuers.as.client_claim: `sub` is a registered claim",
        ),
        (
            "    scope_claim: \"\"\n",
            "issuers.as.scope_claim: `` is not a claim name",
        ),
        (
            "    client_claim: \"a b\"\n",
            "issuers.as.client_claim: `a b` is not a claim name",
        ),
    ] {
        let msg = load_err(&cfg, &with(extra));
        assert!(msg.contains("bad.yaml"), "file named: {msg}");
        assert!(msg.contains(want), "want `{want}` in: {msg}");
    }
    let p = cfg.join("good.yaml");
    std::fs::write(&p, with("    scope_claim: scp\n    client_claim: azp\n")).unwrap();
    Config::load(&p).unwrap();
}

/// FAPI 1 Part 2 §8.5 (every interaction over TLS): keys, issuer metadata, consent records,
/// introspection answers and client keys are fetched only over https. A plain `http://` URL for any of them is refused at load,
/// naming the file, the field and the reason (and so is a look-alike scheme).
#[test]
fn http_urls_for_keys_consent_introspection_and_client_keys_are_refused_at_load() {
    portcullis_proxy::install_crypto_provider();
    let d = staged();
    let cfg = d.path().join("config");
    let good = std::fs::read_to_string(cfg.join("edge.yaml")).unwrap();
    let jwks = "url: https://as.bank.example/.well-known/jwks.json";
    let consent = "url: https://consents.bank.internal/consents/{id}";
    let audience = "    audience: https://api.bank.example\n";
    assert!(good.contains(jwks) && good.contains(consent) && good.contains(audience));
    let introspection = |url: &str| {
        good.replace(
            audience,
            &format!(
                "{audience}    introspection:\n      url: {url}\n      ca: [../certs/ca.pem]\n      client_id: rs\n      client_certificate: ../certs/tpp1.pem\n      client_private_key: ../certs/tpp1.key\n"
            ),
        )
    };
    let client_keys = |url: &str| {
        format!("{good}\nsignatures:\n  client_keys:\n    url: {url}\n    ca: [../certs/ca.pem]\n")
    };
    // The https forms load: each refusal below is the scheme's alone.
    for ok in [
        introspection("https://as.bank.example/introspect"),
        client_keys("https://keystore.bank.example/{client}/jwks.json"),
    ] {
        let p = cfg.join("ok.yaml");
        std::fs::write(&p, &ok).unwrap();
        if let Err(e) = Config::load(&p) {
            panic!("the https form must load: {e}");
        }
    }
    let cases = [
        (
            good.replace(jwks, "url: http://as.bank.example/.well-known/jwks.json"),
            "issuers.as.jwks.url: `http://as.bank.example/.well-known/jwks.json` is not an https:// URL",
        ),
        (
            good.replace(consent, "url: http://consents.bank.internal/consents/{id}"),
            "consent.url: `http://consents.bank.internal/consents/{id}` must be an https:// URL",
        ),
        (
            introspection("http://as.bank.example/introspect"),
            "issuers.as.introspection.url: `http://as.bank.example/introspect` is not an https:// URL",
        ),
        (
            client_keys("http://keystore.bank.example/{client}/jwks.json"),
            "signatures.client_keys.url: `http://keystore.bank.example/{client}/jwks.json` must be an https:// URL",
        ),
        (
            good.replace(
                audience,
                &format!("{audience}    discovery: {{url: http://as.bank.example/.well-known/openid-configuration, ca: [../certs/ca.pem]}}\n"),
            ),
            "issuers.as.discovery.url: `http://as.bank.example/.well-known/openid-configuration` is not an https:// URL",
        ),
        (
            good.replace(jwks, "url: httpss://as.bank.example/jwks.json"),
            "issuers.as.jwks.url: `httpss://as.bank.example/jwks.json` is not an https:// URL",
        ),
    ];
    for (yaml, want) in cases {
        let msg = load_err(&cfg, &yaml);
        assert!(msg.contains("bad.yaml"), "file named: {msg}");
        assert!(msg.contains(want), "want `{want}` in: {msg}");
    }
}

/// RS256 is not a FAPI algorithm: an issuer may list it only if no FAPI route uses it, and no
/// other algorithm list may.
#[test]
fn rs256_is_refused_wherever_a_fapi_check_would_meet_it() {
    portcullis_proxy::install_crypto_provider();
    let d = staged();
    let cfg = d.path().join("config");
    let good = std::fs::read_to_string(cfg.join("demo.yaml")).unwrap();
    let issuer_rs256 = good.replace(
        "    jwks: {file: ../certs/as-jwks.json}\n",
        "    jwks: {file: ../certs/as-jwks.json}\n    algorithms: [PS256, RS256]\n",
    );
    let msg = load_err(&cfg, &issuer_rs256);
    assert!(
        msg.contains(": auth: profile fapi") && msg.contains("but issuer `as` allows RS256"),
        "{msg}"
    );
    assert!(msg.contains(".yaml"), "the policy file is named: {msg}");
    let msg = load_err(
        &cfg,
        &format!("{good}\ndpop:\n  algorithms: [ES256, RS256]\n"),
    );
    assert!(
        msg.contains("dpop.algorithms[1]: RS256 is not a FAPI algorithm"),
        "{msg}"
    );
}

#[test]
fn check_prints_a_summary_or_every_error_with_a_nonzero_exit() {
    let d = staged();
    let bin = env!("CARGO_BIN_EXE_portcullis");
    let ok = Command::new(bin)
        .args(["check", "--config"])
        .arg(d.path().join("config/edge.yaml"))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{out} {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(
        out.contains("listener 0.0.0.0:8443 (mTLS Required, 1 client CA(s), 1 CRL(s))"),
        "{out}"
    );
    assert!(
        out.contains("upstream bank -> https://localhost:9443 (pinned TLS)"),
        "{out}"
    );
    assert!(
        out.contains("/open-banking/v3.1/aisp/accounts/{AccountId}"),
        "{out}"
    );

    let bad = d.path().join("config/bad.yaml");
    let text = std::fs::read_to_string(d.path().join("config/edge.yaml"))
        .unwrap()
        .replace("client_auth: required", "client_auth: nope")
        .replace("max_connections: 10000", "max_connections: 0");
    std::fs::write(&bad, text).unwrap();
    let failed = Command::new(bin)
        .args(["check", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(failed.status.code(), Some(1));
    let err = String::from_utf8_lossy(&failed.stderr);
    assert!(err.contains("2 error(s)"), "{err}");
    assert!(
        err.contains("listener.tls.client_auth") && err.contains("listener.limits.max_connections"),
        "{err}"
    );
}

#[test]
fn the_demo_runs_its_examples_with_the_promised_outcomes() {
    let d = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_portcullis");
    let out = Command::new(bin)
        .args([
            "demo",
            "--once",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--dir",
        ])
        .arg(d.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "=> 200 OK",
        "=> 201 Created",
        "=> 403 authz.object",
        "=> 401 token.missing",
        "=> 401 binding.cert_mismatch",
        "export TOKEN=",
        "-H \"Authorization: Bearer $TOKEN\"",
        "=> TLS handshake refused; audit record says failure=cert_revoked",
        "failure=no_client_cert",
        "failure=cert_expired",
        "failure=unknown_ca",
        "=> 400 path.dot_segment",
        "=> 400 path.encoded_separator",
        "=> 404 route.not_found",
        "=> 405 route.method_not_allowed",
        "=> 400 fapi.customer_ip_invalid",
        "=> 400 http.header_underscore",
        "=> 413 http.body_too_large",
        "curl -sS --cacert",
    ] {
        assert!(
            text.contains(want),
            "missing `{want}` in demo output:\n{text}"
        );
    }
    assert_eq!(
        text.matches("=> TLS handshake refused").count(),
        4,
        "{text}"
    );
    let audit = std::fs::read_to_string(d.path().join("audit.log")).unwrap();
    assert!(audit.lines().count() >= 14, "{audit}");
}

/// The reason code table in docs/reason-codes.md is exactly the one the error types give, both
/// ways: no code is missing from it and it lists no code the proxy cannot produce.
/// `PORTCULLIS_WRITE_DOCS=1` rewrites it.
#[test]
fn the_reason_code_table_is_generated_from_the_error_types() {
    let mut table = String::from("| reason | status | meaning |\n|---|---|---|\n");
    let reasons = portcullis_proxy::all_reasons();
    assert!(reasons.len() > 100, "{}", reasons.len());
    for (status, reason, detail) in &reasons {
        table.push_str(&format!("| `{reason}` | {status} | {detail} |\n"));
    }
    common::check_generated("docs/reason-codes.md", "reasons", &table);
}

/// The OBIE error-code table in docs/reason-codes.md is exactly the mapping the error types
/// give, so a new reason code cannot go undocumented on OBIE routes.
/// `PORTCULLIS_WRITE_DOCS=1` rewrites it.
#[test]
fn the_obie_error_code_table_is_generated_from_the_error_types() {
    let mut table =
        String::from("| reason | status | OBIE `ErrorCode` | `Path` |\n|---|---|---|---|\n");
    let rows = portcullis_proxy::all_obie_codes();
    assert!(rows.len() > 100, "{}", rows.len());
    for (reason, status, ob) in &rows {
        let (code, path) = match ob {
            Some(ob) => {
                assert!(ob.code.starts_with("UK.OBIE."), "{reason}: {}", ob.code);
                let path = ob.path.map(|p| format!("`{p}`")).unwrap_or_default();
                (format!("`{}`", ob.code), path)
            }
            None => ("no body".to_string(), String::new()),
        };
        table.push_str(&format!("| `{reason}` | {status} | {code} | {path} |\n"));
    }
    common::check_generated("docs/reason-codes.md", "obie", &table);
}

#[test]
fn the_kubernetes_sidecar_manifest_points_at_files_and_ports_that_exist() {
    let m = Manifest::check("config/k8s-sidecar.yaml", "Deployment", "sidecar.yaml");
    // The Service exposes the listener port and only it.
    let svc = m.of("Service");
    let ports: Vec<u64> = svc["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["port"].as_u64())
        .collect();
    assert_eq!(ports, [u64::from(m.listener_port)]);
}

#[test]
fn the_kubernetes_edge_manifest_points_at_files_and_ports_that_exist() {
    let m = Manifest::check("config/k8s-edge.yaml", "StatefulSet", "edge.yaml");
    // The load balancer sends 443 to the listener, and keeps the client's address (the peer
    // portcullis rate-limits and records).
    let svc = m.of("Service");
    assert_eq!(svc["spec"]["type"], "LoadBalancer");
    assert_eq!(svc["spec"]["externalTrafficPolicy"], "Local");
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], m.listener_port);
    // Each pod keeps its own audit chain on its own volume.
    let claims = m.workload["spec"]["volumeClaimTemplates"]
        .as_array()
        .unwrap();
    assert!(claims.iter().any(|c| c["metadata"]["name"] == "audit"));
    let pdb = m.of("PodDisruptionBudget");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    let replicas = m.workload["spec"]["replicas"].as_u64().unwrap();
    assert!(replicas >= 2, "an edge of one pod is down on every drain");
}

/// A Kubernetes manifest of the repository, checked against the portcullis config it embeds.
struct Manifest {
    docs: Vec<serde_json::Value>,
    workload: serde_json::Value,
    listener_port: u16,
}

impl Manifest {
    /// Loads `file`, finds the `kind` workload running portcullis, and checks: the embedded
    /// config `key` loads once its mount paths point at dev certificates; the probes hit the
    /// admin port; the pod's termination grace covers `shutdown.grace` and the drain; every
    /// path the config names is under a volume mount and, for Secret and ConfigMap volumes,
    /// projected into it (paths under `/etc/portcullis/policies` come with the image); the
    /// NetworkPolicy opens the listener, the admin port only to a named source, nothing else.
    fn check(file: &str, kind: &str, key: &str) -> Manifest {
        portcullis_proxy::install_crypto_provider();
        let text = std::fs::read_to_string(repo().join(file)).unwrap();
        let docs: Vec<serde_json::Value> = text
            .split("\n---")
            .filter(|d| d.lines().any(|l| l.starts_with("kind:")))
            .map(|d| serde_saphyr::from_str(d).unwrap_or_else(|e| panic!("{file} document: {e}")))
            .collect();
        let of = |k: &str| -> serde_json::Value {
            docs.iter()
                .find(|d| d["kind"] == k)
                .unwrap_or_else(|| panic!("{file}: no {k}"))
                .clone()
        };
        let cm = of("ConfigMap")["data"].clone();
        let workload = of(kind);
        let pod = &workload["spec"]["template"]["spec"];
        let container = pod["containers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "portcullis")
            .expect("a portcullis container")
            .clone();
        let embedded = cm[key].as_str().unwrap();

        let d = tempfile::tempdir().unwrap();
        let certs = d.path().join("certs");
        portcullis_tools::devcerts::generate(&certs).unwrap();
        // The edge's upstream client certificate: any dev client certificate will do.
        std::fs::copy(certs.join("tpp1.pem"), certs.join("upstream.pem")).unwrap();
        std::fs::copy(certs.join("tpp1.key"), certs.join("upstream.key")).unwrap();
        if let Some(policies) = cm["policies.yaml"].as_str() {
            std::fs::write(d.path().join("policies.yaml"), policies).unwrap();
        }
        let local = embedded
            .replace("/etc/portcullis/certs", &certs.display().to_string())
            .replace("/etc/portcullis/config", &d.path().display().to_string())
            .replace(
                "/etc/portcullis/policies",
                &repo().join("policies").display().to_string(),
            )
            .replace("/var/lib/portcullis/audit", &d.path().display().to_string());
        std::fs::write(d.path().join(key), &local).unwrap();
        let c = Config::load(&d.path().join(key))
            .unwrap_or_else(|e| panic!("{file}: embedded config: {e}"));

        // Probes hit the admin port; the container exposes the listener port.
        let admin = c.admin.expect("admin listener").port();
        for probe in ["livenessProbe", "readinessProbe"] {
            assert_eq!(container[probe]["httpGet"]["port"], admin, "{probe}");
        }
        assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
        assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
        let listener_port = c.listener.address.port();
        let ports: Vec<u64> = container["ports"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p["containerPort"].as_u64())
            .collect();
        assert!(ports.contains(&u64::from(listener_port)), "{ports:?}");
        // The kubelet kills the pod after terminationGracePeriodSeconds: the grace (readiness
        // off, still serving) and the drain must both fit.
        let pod_grace = pod["terminationGracePeriodSeconds"]
            .as_u64()
            .expect("terminationGracePeriodSeconds");
        assert!(
            !c.shutdown_grace.is_zero(),
            "{file}: the config sets a grace"
        );
        assert!(
            std::time::Duration::from_secs(pod_grace) > c.shutdown_grace + c.drain_timeout,
            "{file}: terminationGracePeriodSeconds {pod_grace} must exceed grace + drain"
        );

        // Every path the embedded config names is under a volume mount, and every file the
        // config needs is projected into its volume.
        let mounts: Vec<(&str, &str)> = container["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|m| Some((m["mountPath"].as_str()?, m["name"].as_str()?)))
            .collect();
        let named: Vec<&str> = embedded
            .split(|c: char| c.is_whitespace() || c == '[' || c == ']' || c == ',')
            .filter(|w| w.starts_with("/etc/portcullis/") || w.starts_with("/var/lib/"))
            .collect();
        assert!(named.len() >= 5, "{named:?}");
        let projected: Vec<String> = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|v| {
                let items = v["configMap"]["items"]
                    .as_array()
                    .or(v["secret"]["items"].as_array())
                    .cloned()
                    .unwrap_or_default();
                let name = v["name"].as_str().unwrap_or("").to_string();
                items
                    .into_iter()
                    .map(move |i| format!("{name}/{}", i["path"].as_str().unwrap_or("")))
            })
            .collect();
        let claimed: Vec<&str> = workload["spec"]["volumeClaimTemplates"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|c| c["metadata"]["name"].as_str())
                    .collect()
            })
            .unwrap_or_default();
        let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
        for path in named {
            if path.starts_with("/etc/portcullis/policies") {
                assert!(dockerfile.contains("COPY policies /etc/portcullis/policies"));
                continue;
            }
            let (mount, volume) = mounts
                .iter()
                .find(|(m, _)| path.starts_with(&format!("{m}/")))
                .unwrap_or_else(|| panic!("{file}: {path} is not under a mount {mounts:?}"));
            if claimed.contains(volume) {
                continue;
            }
            let inside = &path[mount.len() + 1..];
            assert!(
                projected.contains(&format!("{volume}/{inside}")),
                "{file}: {path}: {volume}/{inside} not in {projected:?}"
            );
        }

        // The NetworkPolicy opens the listener port, the admin port only to a named source,
        // and nothing else (not an application's own port).
        let rules = of("NetworkPolicy")["spec"]["ingress"]
            .as_array()
            .unwrap()
            .clone();
        let port_of = |r: &serde_json::Value| r["ports"][0]["port"].as_u64().unwrap();
        let open = rules
            .iter()
            .find(|r| port_of(r) == u64::from(listener_port))
            .expect("a rule for the listener");
        assert!(
            open["from"].is_null(),
            "the listener is open to the cluster"
        );
        let admin_rule = rules
            .iter()
            .find(|r| port_of(r) == u64::from(admin))
            .expect("a rule for the admin listener");
        assert!(
            admin_rule["from"].as_array().is_some_and(|f| !f.is_empty()),
            "the admin listener is open only to a named source"
        );
        assert_eq!(rules.len(), 2, "{file}: no other port is opened");
        Manifest {
            docs,
            workload,
            listener_port,
        }
    }

    fn of(&self, kind: &str) -> &serde_json::Value {
        self.docs
            .iter()
            .find(|d| d["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind}"))
    }
}

/// `portcullis check --config <file>` run from `dir`: (success, stdout, stderr).
fn check(dir: &Path, config: &Path) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .current_dir(dir)
        .args(["check", "--config"])
        .arg(config)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn after_dev_certs_every_shipped_config_passes_check() {
    // What a new user does in a fresh clone: `portcullis dev-certs` from the top directory
    // (default output `certs/`), then `check` on each example config, whose paths say
    // `../certs/...`. Run in a copy of the layout, so the repository's own certs/ is never
    // written by the tests.
    let d = staged_without_certs();
    let before = std::fs::read_dir(repo().join("certs"))
        .map(|r| r.count())
        .unwrap_or(0);
    let (c, _, _) = check(d.path(), &d.path().join("config/demo.yaml"));
    assert!(!c, "without certificates the example configs cannot pass");
    let gen = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .current_dir(d.path())
        .arg("dev-certs")
        .output()
        .unwrap();
    assert!(
        gen.status.success(),
        "{}",
        String::from_utf8_lossy(&gen.stderr)
    );
    for f in portcullis_tools::devcerts::FILES {
        assert!(
            d.path().join("certs").join(f).is_file(),
            "certs/{f} not written"
        );
    }
    let configs = config_files();
    assert!(configs.len() >= 4, "{configs:?}");
    for f in configs {
        let name = f.file_name().unwrap();
        // Checked from another directory too: relative paths are the config file's, not the
        // working directory's.
        for cwd in [d.path().to_path_buf(), d.path().join("policies")] {
            let (ok, out, err) = check(&cwd, &d.path().join("config").join(name));
            assert!(ok, "{}: {out}{err}", f.display());
            assert!(out.contains("listener "), "{}: {out}", f.display());
            assert!(
                !err.contains("WARN"),
                "{}: unexpected warning: {err}",
                f.display()
            );
        }
    }
    let after = std::fs::read_dir(repo().join("certs"))
        .map(|r| r.count())
        .unwrap_or(0);
    assert_eq!(
        before, after,
        "the tests must not write into the repository's certs/"
    );
}

/// DER: tag, definite length, content.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = content.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes: Vec<u8> = n
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

/// A version 1 CRL (no `version`, no extensions, so no CRL Number), properly signed by the
/// dev CA: what an old `openssl ca -gencrl` without a `crlnumber` file and extensions writes.
fn v1_crl_signed_by_the_dev_ca(certs: &Path) -> String {
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
    use rustls_pki_types::pem::PemObject;

    let ca = rustls_pki_types::CertificateDer::from_pem_file(certs.join("ca.pem")).unwrap();
    let (_, ca) = x509_parser::parse_x509_certificate(ca.as_ref()).unwrap();
    let key = rustls_pki_types::PrivatePkcs8KeyDer::from_pem_file(certs.join("ca.key")).unwrap();
    let key =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, key.secret_pkcs8_der()).unwrap();
    // ecdsa-with-SHA256, 1.2.840.10045.4.3.2
    let alg = der(
        0x30,
        &der(0x06, &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02]),
    );
    let utc = |t: time::OffsetDateTime| {
        let s = format!(
            "{:02}{:02}{:02}{:02}{:02}{:02}Z",
            t.year() % 100,
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        );
        der(0x17, s.as_bytes())
    };
    let now = time::OffsetDateTime::now_utc();
    let tbs = der(
        0x30,
        &[
            alg.clone(),
            ca.subject().as_raw().to_vec(),
            utc(now - time::Duration::hours(1)),
            utc(now + time::Duration::days(30)),
        ]
        .concat(),
    );
    let sig = key.sign(&SystemRandom::new(), &tbs).unwrap();
    let mut bits = vec![0u8];
    bits.extend_from_slice(sig.as_ref());
    let crl = der(0x30, &[tbs, alg, der(0x03, &bits)].concat());
    // The CRL itself is well-formed: an independent parser reads it, and the signature
    // checks against the CA's public key.
    let (_, parsed) = x509_parser::parse_x509_crl(&crl).unwrap();
    assert!(parsed.crl_number().is_none());
    aws_lc_rs::signature::UnparsedPublicKey::new(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1,
        ca.public_key().subject_public_key.data.as_ref(),
    )
    .verify(
        parsed.tbs_cert_list.as_ref(),
        parsed.signature_value.data.as_ref(),
    )
    .unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&crl);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN X509 CRL-----\n{}\n-----END X509 CRL-----\n",
        lines.join("\n")
    )
}

#[test]
fn a_crl_rustls_cannot_use_is_refused_naming_the_file_the_field_and_the_reason() {
    portcullis_proxy::install_crypto_provider();
    let d = staged();
    let certs = d.path().join("certs");
    std::fs::write(certs.join("v1.crl"), v1_crl_signed_by_the_dev_ca(&certs)).unwrap();
    let cfg = d.path().join("config/bad-crl.yaml");
    let text = std::fs::read_to_string(d.path().join("config/demo.yaml"))
        .unwrap()
        .replace(
            "crl: [../certs/ca.crl]",
            "crl: [../certs/ca.crl, ../certs/v1.crl]",
        );
    std::fs::write(&cfg, text).unwrap();
    let msg = Config::load(&cfg)
        .err()
        .expect("must be refused")
        .to_string();
    for want in [
        "bad-crl.yaml",
        "listener.tls.crl[1]",
        "v1.crl: CRL 1 of 1",
        "portcullis dev CA",
        "the CRL Number extension is absent (RFC 5280 §5.2.3",
        "field `version` is not v2",
        "rustls: provided CRL could not be parsed: ParseError",
    ] {
        assert!(msg.contains(want), "want `{want}` in: {msg}");
    }
    // Only the bad file is blamed: the dev CA's own CRL (v2, numbered) is fine.
    assert!(!msg.contains("crl[0]"), "{msg}");
    assert!(!msg.contains("listener.tls: cannot build"), "{msg}");

    let (ok, _, err) = check(d.path(), &cfg);
    assert!(!ok);
    assert!(
        err.contains("listener.tls.crl[1]") && err.contains("v1.crl") && err.contains("CRL Number"),
        "{err}"
    );
}

#[test]
fn a_crl_not_signed_by_its_client_ca_is_refused_at_load() {
    // rustls checks a CRL's signature only at a handshake, and would then refuse every client
    // certificate of that CA; the load refuses the file instead, naming it.
    portcullis_proxy::install_crypto_provider();
    let d = staged();
    let certs = d.path().join("certs");
    std::fs::write(certs.join("forged.crl"), common::forged_dev_ca_crl()).unwrap();
    let cfg = d.path().join("config/forged-crl.yaml");
    let text = std::fs::read_to_string(d.path().join("config/demo.yaml"))
        .unwrap()
        .replace(
            "crl: [../certs/ca.crl]",
            "crl: [../certs/ca.crl, ../certs/forged.crl]",
        );
    std::fs::write(&cfg, text).unwrap();
    let msg = Config::load(&cfg)
        .err()
        .expect("must be refused")
        .to_string();
    for want in [
        "listener.tls.crl[1]",
        "forged.crl: CRL 1 of 1",
        "signature does not verify with the key of the client CA",
    ] {
        assert!(msg.contains(want), "want `{want}` in: {msg}");
    }
    assert!(!msg.contains("crl[0]"), "{msg}");
}

#[test]
fn check_warns_about_a_crl_past_its_next_update() {
    // The demo's CRL, reissued by the same CA with a nextUpdate an hour ago: still taken (it is
    // the best list there is), but `check` names the file, because every client certificate of
    // that CA is refused until a current CRL replaces it.
    let d = staged();
    let certs = d.path().join("certs");
    let stale = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    std::fs::write(
        certs.join("ca.crl"),
        common::dev_ca_crl(&certs, &["revoked"], stale),
    )
    .unwrap();
    let (ok, out, err) = check(d.path(), &d.path().join("config/demo.yaml"));
    assert!(ok, "{out}{err}");
    assert!(
        err.contains("WARN") && err.contains("past its nextUpdate") && err.contains("ca.crl"),
        "{err}"
    );
    // A current CRL: no such warning.
    let current = time::OffsetDateTime::now_utc() + time::Duration::days(1);
    std::fs::write(
        certs.join("ca.crl"),
        common::dev_ca_crl(&certs, &["revoked"], current),
    )
    .unwrap();
    let (ok, out, err) = check(d.path(), &d.path().join("config/demo.yaml"));
    assert!(ok, "{out}{err}");
    assert!(!err.contains("nextUpdate"), "{err}");
}

#[test]
fn check_prints_the_warnings_of_the_load() {
    // A JWKS key the proxy will skip (an encryption key) is a warning at load; `check` shows it
    // and still passes.
    let d = staged();
    let jwks_path = d.path().join("certs/as-jwks.json");
    let mut jwks: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&jwks_path).unwrap()).unwrap();
    let mut enc = jwks["keys"][0].clone();
    enc["kid"] = "enc-1".into();
    enc["use"] = "enc".into();
    jwks["keys"].as_array_mut().unwrap().push(enc);
    std::fs::write(&jwks_path, jwks.to_string()).unwrap();
    let (ok, out, err) = check(d.path(), &d.path().join("config/demo.yaml"));
    assert!(ok, "{out}{err}");
    assert!(
        err.contains("WARN") && err.contains("JWKS key skipped") && err.contains("enc-1"),
        "{err}"
    );
    // Plain lines for a person, not JSON.
    assert!(!err.trim_start().starts_with('{'), "{err}");
}
