//! `portcullis demo`: the proxy on the embedded demo config, with dev certificates it makes
//! itself and the built-in mock bank upstream. It runs every example request once against
//! itself, prints the result beside a ready-to-paste `curl` command, then serves until Ctrl-C.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::client::{tls_config, Conn};
use portcullis_audit::AuditLog;
use portcullis_proxy::config::Config;
use portcullis_proxy::Shared;

const DEMO_CONFIG: &str = include_str!("../../../config/demo.yaml");
const DEV_CONSENTS: &str = include_str!("../../../config/dev-consents.json");
const POLICIES: &[(&str, &str)] = &[
    (
        "obie-aisp.yaml",
        include_str!("../../../policies/obie-aisp.yaml"),
    ),
    (
        "obie-pisp.yaml",
        include_str!("../../../policies/obie-pisp.yaml"),
    ),
];

pub struct DemoOptions {
    pub dir: Option<PathBuf>,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    /// Run the examples, print them and exit instead of serving.
    pub once: bool,
}

/// Who makes a request: which certificate it presents.
#[derive(Clone, Copy)]
enum Caller {
    Tpp1,
    Tpp2,
    NoCert,
    Revoked,
    Expired,
    Rogue,
}

struct Example {
    what: &'static str,
    caller: Caller,
    method: &'static str,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    body: Option<&'static str>,
    /// Sends the demo's access token (certificate-bound to TPP One, consent aac-demo).
    token: bool,
}

const ACC: &str = "/open-banking/v3.1/aisp/accounts";
const PAYMENT: &str = r#"{"Data":{"Initiation":{"InstructionIdentification":"ID412","EndToEndIdentification":"E2E123","InstructedAmount":{"Amount":"10.50","Currency":"GBP"},"CreditorAccount":{"SchemeName":"UK.OBIE.SortCodeAccountNumber","Identification":"08080021325698","Name":"ACME Inc"}}},"Risk":{}}"#;

fn examples() -> Vec<Example> {
    let e = |what, caller, method, path| Example {
        what,
        caller,
        method,
        path,
        headers: &[],
        body: None,
        token: true,
    };
    vec![
        e("list accounts as TPP One", Caller::Tpp1, "GET", ACC),
        e(
            "BOLA: an account outside the consent (aac-demo grants acc-1 and acc-2)",
            Caller::Tpp1,
            "GET",
            "/open-banking/v3.1/aisp/accounts/acc-3/balances",
        ),
        Example {
            token: false,
            ..e("no access token", Caller::Tpp1, "GET", ACC)
        },
        e(
            "TPP One's certificate-bound token presented by TPP Two",
            Caller::Tpp2,
            "GET",
            ACC,
        ),
        e(
            "read a balance",
            Caller::Tpp1,
            "GET",
            "/open-banking/v3.1/aisp/accounts/acc-1/balances",
        ),
        Example {
            body: Some(PAYMENT),
            headers: &[
                ("content-type", "application/json"),
                ("x-idempotency-key", "demo-consent-1"),
            ],
            ..e(
                "create a domestic payment consent",
                Caller::Tpp1,
                "POST",
                "/open-banking/v3.1/pisp/domestic-payment-consents",
            )
        },
        e(
            "no client certificate: refused in the TLS handshake",
            Caller::NoCert,
            "GET",
            ACC,
        ),
        e(
            "a revoked certificate (in the CRL): refused in the TLS handshake",
            Caller::Revoked,
            "GET",
            ACC,
        ),
        e(
            "an expired certificate: refused in the TLS handshake",
            Caller::Expired,
            "GET",
            ACC,
        ),
        e(
            "a certificate from an unknown CA: refused in the TLS handshake",
            Caller::Rogue,
            "GET",
            ACC,
        ),
        e(
            "path traversal: refused, never normalized into another route",
            Caller::Tpp1,
            "GET",
            "/open-banking/v3.1/aisp/accounts/acc-1/../../pisp/domestic-payments",
        ),
        e(
            "encoded slash in an id: refused",
            Caller::Tpp1,
            "GET",
            "/open-banking/v3.1/aisp/accounts/acc-1%2Fbalances",
        ),
        e(
            "an undeclared path: default deny",
            Caller::Tpp1,
            "GET",
            "/admin",
        ),
        e(
            "a method the route does not declare",
            Caller::Tpp1,
            "DELETE",
            ACC,
        ),
        Example {
            headers: &[("x-fapi-customer-ip-address", "not-an-ip")],
            ..e(
                "x-fapi-customer-ip-address that is not an IP",
                Caller::Tpp1,
                "GET",
                ACC,
            )
        },
        Example {
            headers: &[("x_forwarded_for", "10.0.0.1")],
            ..e(
                "a header name with an underscore (spoofing vector)",
                Caller::Tpp1,
                "GET",
                ACC,
            )
        },
        Example {
            body: Some("{}"),
            headers: &[("content-type", "application/json")],
            ..e(
                "a body on a route whose body limit is 0",
                Caller::Tpp1,
                "GET",
                ACC,
            )
        },
    ]
}

fn identity(c: Caller) -> Option<&'static str> {
    match c {
        Caller::Tpp1 => Some("tpp1"),
        Caller::Tpp2 => Some("tpp2"),
        Caller::NoCert => None,
        Caller::Revoked => Some("revoked"),
        Caller::Expired => Some("expired"),
        Caller::Rogue => Some("rogue"),
    }
}

fn curl(ex: &Example, certs: &Path, port: u16) -> String {
    let mut c = format!("curl -sS --cacert {}", certs.join("ca.pem").display());
    if let Some(id) = identity(ex.caller) {
        c += &format!(
            " --cert {} --key {}",
            certs.join(format!("{id}.pem")).display(),
            certs.join(format!("{id}.key")).display()
        );
    }
    if ex.path.contains("..") {
        c += " --path-as-is";
    }
    // curl turns --data into a POST; say the method whenever it is not what curl would pick.
    let curl_default = if ex.body.is_some() { "POST" } else { "GET" };
    if ex.method != curl_default {
        c += &format!(" -X {}", ex.method);
    }
    if ex.token {
        c += " -H \"Authorization: Bearer $TOKEN\"";
    }
    for (k, v) in ex.headers {
        c += &format!(" -H '{k}: {v}'");
    }
    if let Some(b) = ex.body {
        c += &format!(" --data '{b}'");
    }
    c + &format!(" https://localhost:{port}{}", ex.path)
}

/// The failure category of the newest failed handshake in the audit log (the server's view of
/// why a TLS refusal happened; the client only sees an alert or a closed channel).
fn last_handshake_failure(audit: &Path) -> String {
    std::fs::read_to_string(audit)
        .unwrap_or_default()
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["kind"] == "tls_handshake")
        .and_then(|v| v["failure"].as_str().map(str::to_string))
        .unwrap_or_else(|| "unknown".to_string())
}

async fn try_example(
    ex: &Example,
    certs: &Path,
    addr: SocketAddr,
    audit: &Path,
    token: &str,
) -> String {
    let before = handshake_failures(audit);
    let answer = send_example(ex, certs, addr, audit, token).await;
    if answer.starts_with("TLS refused") {
        // Wait for this refusal's own record, then name its category.
        for _ in 0..50 {
            if handshake_failures(audit) > before {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        return format!(
            "TLS handshake refused; audit record says failure={}",
            last_handshake_failure(audit)
        );
    }
    answer
}

/// The reason code of the request record with interaction id `id`, once it is written.
async fn audited_reason(audit: &Path, id: &str) -> String {
    for _ in 0..100 {
        let found = std::fs::read_to_string(audit)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["interaction_id"] == id)
            .and_then(|v| v["reason"].as_str().map(str::to_string));
        if let Some(r) = found {
            return r;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    "unknown".to_string()
}

fn handshake_failures(audit: &Path) -> usize {
    std::fs::read_to_string(audit)
        .unwrap_or_default()
        .matches("\"kind\":\"tls_handshake\"")
        .count()
}

async fn send_example(
    ex: &Example,
    certs: &Path,
    addr: SocketAddr,
    audit: &Path,
    token: &str,
) -> String {
    let ca = certs.join("ca.pem");
    let id = identity(ex.caller).map(|i| {
        (
            certs.join(format!("{i}.pem")),
            certs.join(format!("{i}.key")),
        )
    });
    let config = match tls_config(
        &ca,
        id.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
        false,
    ) {
        Ok(c) => c,
        Err(e) => return format!("client setup failed: {e}"),
    };
    let mut conn = match Conn::connect(addr, "localhost", config).await {
        Ok(c) => c,
        Err(e) => return format!("TLS refused: {e}"),
    };
    let mut req = http::Request::builder()
        .method(ex.method)
        .uri(ex.path)
        .header("host", format!("localhost:{}", addr.port()));
    if ex.token {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    for (k, v) in ex.headers {
        req = req.header(*k, *v);
    }
    let body = Bytes::from(ex.body.unwrap_or("").to_string());
    let Ok(req) = req.body(Full::new(body)) else {
        return "bad example".into();
    };
    match conn.send(req).await {
        Ok(a) => {
            let j = a.json();
            // OBIE routes answer in the OBIE error body, which has no room for the reason code:
            // the demo shows the one the audit record holds, and the OBIE code.
            if let Some(code) = j["Errors"][0]["ErrorCode"].as_str() {
                let id = a
                    .headers
                    .get("x-fapi-interaction-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                return format!(
                    "{} {}: {} (OBIE {code})",
                    a.status.as_u16(),
                    audited_reason(audit, id).await,
                    j["Message"].as_str().unwrap_or("")
                );
            }
            match j.get("reason").and_then(|r| r.as_str()) {
                Some(reason) => format!(
                    "{} {reason}: {}",
                    a.status.as_u16(),
                    j["detail"].as_str().unwrap_or("")
                ),
                None => format!(
                    "{} {}",
                    a.status.as_u16(),
                    a.status.canonical_reason().unwrap_or("")
                ),
            }
        }
        // TLS 1.3: a refused client certificate shows up on the first read, not in connect().
        Err(e) => format!("TLS refused: {e}"),
    }
}

/// A one-hour access token for TPP One from the dev AS key.
fn demo_token(certs: &Path) -> anyhow::Result<String> {
    use rustls_pki_types::pem::PemObject;
    let key = portcullis_crypto::jose::sign::SigningKey::from_pkcs8_pem(
        &std::fs::read_to_string(certs.join("as.key"))?,
        "as-1",
    )?;
    let der = rustls_pki_types::CertificateDer::from_pem_file(certs.join("tpp1.pem"))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    Ok(key.access_token(&serde_json::json!({
        "iss": "https://as.bank.example", "aud": "https://api.bank.example",
        "iat": now, "nbf": now, "exp": now + 3600, "jti": uuid::Uuid::new_v4().to_string(),
        "client_id": "tpp-one", "sub": "psu-demo", "scope": "accounts payments",
        "openbanking_intent_id": "aac-demo",
        "cnf": {"x5t#S256": portcullis_crypto::pki::thumbprint_s256(der.as_ref())},
    })))
}

/// Prepares the demo directory and returns the loaded config.
fn prepare(dir: &Path) -> anyhow::Result<Config> {
    crate::devcerts::write_if_missing(&dir.join("certs"))?;
    std::fs::create_dir_all(dir.join("config"))?;
    std::fs::create_dir_all(dir.join("policies"))?;
    std::fs::write(dir.join("config/demo.yaml"), DEMO_CONFIG)?;
    std::fs::write(dir.join("config/dev-consents.json"), DEV_CONSENTS)?;
    for (name, text) in POLICIES {
        std::fs::write(dir.join("policies").join(name), text)?;
    }
    Config::load(&dir.join("config/demo.yaml")).map_err(|e| anyhow::anyhow!("{e}"))
}

pub async fn run(opts: DemoOptions) -> anyhow::Result<()> {
    let dir = opts
        .dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("portcullis-demo"));
    let mut config = prepare(&dir)?;
    let shutdown = CancellationToken::new();
    let bank = TcpListener::bind("127.0.0.1:0").await?;
    let bank_addr = bank.local_addr()?;
    tokio::spawn(crate::mockbank::serve(bank, shutdown.clone()));
    config.listener.address = opts.listen;
    config.admin = Some(opts.admin);
    if let Some(up) = config.upstreams.get_mut("bank") {
        up.endpoints = vec![bank_addr.to_string().parse()?];
    }
    let audit = AuditLog::start(&config.audit)?;
    let shared = Arc::new(Shared::new(config, audit, None));
    let running = portcullis_proxy::start(Arc::clone(&shared)).await?;
    let certs = dir.join("certs");
    println!("portcullis demo");
    println!(
        "  proxy   https://localhost:{}  (mTLS required)",
        running.addr.port()
    );
    if let Some(a) = running.admin_addr {
        println!("  admin   http://{a}/healthz /readyz /metrics");
    }
    println!("  bank    http://{bank_addr}  (built-in mock, behind the proxy)");
    println!(
        "  files   {}  (certs/, config/demo.yaml, policies/)",
        dir.display()
    );
    println!("  audit   {}", dir.join("audit.log").display());
    let token = demo_token(&certs)?;
    println!();
    println!("The access token the examples use (certificate-bound to TPP One, scope");
    println!("\"accounts payments\", consent aac-demo), signed by the dev authorization server:");
    println!("export TOKEN={token}");
    println!();
    println!("Each example was just run against the proxy; its result is shown under it.");
    for ex in examples() {
        let got = try_example(&ex, &certs, running.addr, &dir.join("audit.log"), &token).await;
        println!();
        println!("# {}", ex.what);
        println!("{}", curl(&ex, &certs, running.addr.port()));
        println!("  => {got}");
    }
    println!();
    if opts.once {
        shutdown.cancel();
        running.shutdown().await;
        shared.audit.close(std::time::Duration::from_secs(5));
        return Ok(());
    }
    println!("Serving; press Ctrl-C to stop.");
    portcullis_proxy::wait_for_signal().await;
    shutdown.cancel();
    running.shutdown().await;
    shared.audit.close(std::time::Duration::from_secs(5));
    Ok(())
}
