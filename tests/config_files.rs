//! Every shipped config and policy file loads; bad config is refused at load with the file,
//! the field and the reason; the CLI's `check` and `demo` work as a new user would run them.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use portcullis::config::Config;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A copy of the repository's config/ and policies/ beside freshly generated dev certs, laid
/// out as the files expect (`../certs`, `../policies`).
fn staged() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    portcullis::pki::devcerts::generate(&d.path().join("certs")).unwrap();
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
    portcullis::tls::install_crypto_provider();
    let d = staged();
    let files = config_files();
    assert!(files.len() >= 3, "{files:?}");
    for f in files {
        let staged = d.path().join("config").join(f.file_name().unwrap());
        let c = Config::load(&staged).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert!(!c.policies.routes().is_empty());
    }
    for dir in ["policies", "policies/sidecar"] {
        let set = portcullis::policy::load_files(
            &[repo().join(dir)],
            &portcullis::policy::Known::standalone(),
        )
        .unwrap_or_else(|e| panic!("{dir}: {e}"));
        assert!(!set.routes().is_empty());
    }
}

fn load_err(dir: &Path, yaml: &str) -> String {
    let p = dir.join("bad.yaml");
    std::fs::write(&p, yaml).unwrap();
    Config::load(&p).err().expect("must be refused").to_string()
}

#[test]
fn bad_config_is_refused_naming_the_file_the_field_and_the_reason() {
    portcullis::tls::install_crypto_provider();
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

#[test]
fn the_readme_lists_every_reason_code_with_its_status() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    for (status, reason, _) in portcullis::rejection::all_reasons() {
        let row = format!("| `{reason}` | {status} |");
        assert!(readme.contains(&row), "README lacks the row `{row}`");
    }
}

#[test]
fn the_kubernetes_sidecar_manifest_points_at_files_and_ports_that_exist() {
    portcullis::tls::install_crypto_provider();
    let text = std::fs::read_to_string(repo().join("config/k8s-sidecar.yaml")).unwrap();
    let docs: Vec<serde_json::Value> = text
        .split("\n---")
        .filter(|d| d.lines().any(|l| l.starts_with("kind:")))
        .map(|d| serde_saphyr::from_str(d).unwrap_or_else(|e| panic!("manifest document: {e}")))
        .collect();
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(kinds, ["ConfigMap", "Deployment", "Service"]);
    let cm = &docs[0]["data"];
    let deploy = &docs[1];
    let pod = &deploy["spec"]["template"]["spec"];
    let sidecar = pod["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "portcullis")
        .expect("sidecar");
    let embedded = cm["sidecar.yaml"].as_str().unwrap();

    // The embedded config loads once its mount paths point at dev certificates.
    let d = tempfile::tempdir().unwrap();
    portcullis::pki::devcerts::generate(&d.path().join("certs")).unwrap();
    std::fs::write(
        d.path().join("policies.yaml"),
        cm["policies.yaml"].as_str().unwrap(),
    )
    .unwrap();
    let local = embedded
        .replace(
            "/etc/portcullis/certs",
            &d.path().join("certs").display().to_string(),
        )
        .replace("/etc/portcullis/config", &d.path().display().to_string());
    std::fs::write(d.path().join("sidecar.yaml"), &local).unwrap();
    let c = Config::load(&d.path().join("sidecar.yaml"))
        .unwrap_or_else(|e| panic!("embedded config: {e}"));

    // Probes hit the admin port; the container exposes the listener port.
    let admin = c.admin.expect("admin listener").port();
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(sidecar[probe]["httpGet"]["port"], admin, "{probe}");
    }
    assert_eq!(sidecar["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(sidecar["livenessProbe"]["httpGet"]["path"], "/healthz");
    let ports: Vec<u64> = sidecar["ports"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["containerPort"].as_u64())
        .collect();
    assert!(
        ports.contains(&u64::from(c.listener.address.port())),
        "{ports:?}"
    );

    // Every path the embedded config names is under a volume mount, and every file the config
    // needs is projected into its volume.
    let mounts: Vec<&str> = sidecar["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["mountPath"].as_str())
        .collect();
    let named: Vec<&str> = embedded
        .split(|c: char| c.is_whitespace() || c == '[' || c == ']' || c == ',')
        .filter(|w| w.starts_with("/etc/portcullis/"))
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
    for path in named {
        let mount = mounts
            .iter()
            .find(|m| path.starts_with(&format!("{m}/")))
            .unwrap_or_else(|| panic!("{path} is not under a mount {mounts:?}"));
        let file = &path[mount.len() + 1..];
        let volume = sidecar["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["mountPath"] == *mount)
            .unwrap()["name"]
            .as_str()
            .unwrap();
        assert!(
            projected.contains(&format!("{volume}/{file}")),
            "{path}: {volume}/{file} not in {projected:?}"
        );
    }
    // The Service exposes the listener port and only it.
    let svc_ports: Vec<u64> = docs[2]["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["port"].as_u64())
        .collect();
    assert_eq!(svc_ports, [u64::from(c.listener.address.port())]);
}
