//! The command line: `run`, `check`, `demo`, `dev-certs`, `mock-bank`, `loadgen`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use portcullis_audit::AuditLog;
use portcullis_proxy::config::Config;
use portcullis_proxy::Shared;

#[derive(Parser)]
#[command(
    name = "portcullis",
    version,
    about = "A security inspection reverse proxy for financial APIs (mTLS, FAPI, open banking).",
    long_about = None
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Run the proxy with a config file; reloads on SIGHUP and on file change, drains on
    /// SIGTERM/SIGINT.
    Run {
        /// The YAML config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file with its policies, certificates and keys; print a summary or
    /// every error (file, field, reason), and any load-time warning on stderr. Exits 1 on error.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run the proxy on the embedded demo config with dev certificates and a built-in mock bank,
    /// and print ready-to-paste curl commands with their results.
    Demo {
        /// Where to write the demo's certificates, config and audit log
        /// (default: $TMPDIR/portcullis-demo).
        #[arg(long)]
        dir: Option<PathBuf>,
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: SocketAddr,
        /// Run the examples, print them and exit.
        #[arg(long)]
        once: bool,
    },
    /// Write development certificates (a dev CA, a localhost server certificate, two TPP client
    /// certificates with PSD2 roles, an expired one, a revoked one with its CRL, and one from an
    /// untrusted CA). Never use them in production.
    DevCerts {
        /// The directory to write to. The default, `certs` under the current directory, is the
        /// repository's git-ignored `certs/` when run from the repository root: where the
        /// example configs in `config/` look (`../certs/...`).
        #[arg(long, default_value = "certs")]
        out: PathBuf,
    },
    /// Serve the built-in mock bank API over plain HTTP (for benchmarks and local trials).
    MockBank {
        /// An address to listen on; repeat for several (one bank behind them all).
        #[arg(long, default_value = "127.0.0.1:9080")]
        listen: Vec<SocketAddr>,
        /// Append one line per request received to FILE: method, path, body SHA-256 (hex),
        /// `x-idempotency-key` (`-`: none), `Host` (`-`: none), written before the answer.
        #[arg(long, value_name = "FILE")]
        record: Option<PathBuf>,
        /// Milliseconds each answer waits.
        #[arg(long, default_value_t = 0)]
        delay_ms: u64,
    },
    /// Audit log tools: verify the hash chain and signed checkpoints, report per client,
    /// make an audit signing key.
    Audit {
        #[command(subcommand)]
        command: portcullis_tools::auditcmd::AuditCommand,
    },
    /// Policy tools: run the policy test files, or explain one decision.
    Policy {
        #[command(subcommand)]
        command: portcullis_tools::policytest::PolicyCommand,
    },
    /// Inspect an access token against a config: every check the proxy runs, with its outcome.
    Token {
        #[command(subcommand)]
        command: portcullis_tools::tokentool::TokenCommand,
    },
    /// Dev keys, access tokens and DPoP proofs for trying a setup (never for production).
    DevToken {
        #[command(subcommand)]
        command: portcullis_tools::tokentool::DevTokenCommand,
    },
    /// Sign a body as OBIE x-jws-signature or a request as RFC 9421 with a dev key, or make a
    /// dev signing key and its JWK set (never for production).
    Sign {
        #[command(subcommand)]
        command: portcullis_tools::sign::SignCommand,
    },
    /// Drive an HTTPS target with load and report throughput, latency and errors: a FAPI
    /// scenario file (`--scenario`: client certificates, bound tokens, DPoP proofs, signed
    /// bodies, a weighted mix, closed or open loop, thresholds), or one route from flags.
    /// Exits 1 when a scenario threshold is missed, 2 when the scenario or a flag is invalid.
    Loadgen {
        /// A scenario YAML file (see README, Load testing); the route flags do not apply.
        #[arg(long, conflicts_with_all = ["server_name", "path", "ca", "cert", "key", "connections", "duration", "http2", "headers"])]
        scenario: Option<PathBuf>,
        /// Target address, e.g. 127.0.0.1:8443 (with --scenario: instead of target.address).
        #[arg(long, required_unless_present = "scenario")]
        addr: Option<SocketAddr>,
        /// TLS server name and Host header.
        #[arg(long, default_value = "localhost")]
        server_name: String,
        #[arg(long, default_value = "/open-banking/v3.1/aisp/accounts")]
        path: String,
        #[arg(long, required_unless_present = "scenario")]
        ca: Option<PathBuf>,
        #[arg(long, required_unless_present = "scenario")]
        cert: Option<PathBuf>,
        #[arg(long, required_unless_present = "scenario")]
        key: Option<PathBuf>,
        #[arg(long, default_value_t = 32)]
        connections: usize,
        /// Duration, e.g. 10s.
        #[arg(long, default_value = "10s")]
        duration: String,
        #[arg(long)]
        http2: bool,
        /// An extra request header, `name: value` (repeatable), e.g. an Authorization header.
        #[arg(long = "header", short = 'H')]
        headers: Vec<String>,
        /// Write the report as JSON to FILE (`-` or no value: standard output, and the text
        /// report, if any, goes to standard error).
        #[arg(long, num_args = 0..=1, default_missing_value = "-", value_name = "FILE")]
        json: Option<PathBuf>,
        /// Also write a self-contained HTML report (plots, checks, parameters) to FILE.
        #[arg(long, value_name = "FILE")]
        html: Option<PathBuf>,
        /// Print a progress line every second on standard error even when it is not a
        /// terminal (by default only on a terminal, so CI logs stay quiet).
        #[arg(long, conflicts_with = "quiet")]
        progress: bool,
        /// No progress line, even on a terminal.
        #[arg(long)]
        quiet: bool,
    },
}

fn load_or_report(path: &std::path::Path) -> Option<Config> {
    match Config::load(path) {
        Ok(c) => Some(c),
        Err(errors) => {
            eprintln!("{} error(s) in the configuration:", errors.0.len());
            for e in &errors.0 {
                eprintln!("  {e}");
            }
            None
        }
    }
}

/// Runs a parsed command; returns the process exit code.
pub(crate) async fn run(cli: Cli) -> ExitCode {
    portcullis_proxy::install_crypto_provider();
    match cli.command {
        Command::Run { config } => {
            portcullis_proxy::init_tracing();
            let Some(c) = load_or_report(&config) else {
                return ExitCode::from(2);
            };
            let audit = match AuditLog::start(&c.audit) {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("cannot open the audit sink: {e}");
                    return ExitCode::from(2);
                }
            };
            let shared = Arc::new(Shared::new(c, audit, Some(config)));
            let running = match portcullis_proxy::start(Arc::clone(&shared)).await {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("cannot start: {e}");
                    return ExitCode::from(2);
                }
            };
            let token = running.shutdown_token();
            if let Err(e) = portcullis_proxy::watch(Arc::clone(&shared), token.clone()) {
                tracing::warn!(error = %e, "file watching is off; SIGHUP still reloads");
            }
            #[cfg(unix)]
            if let Err(e) = portcullis_proxy::on_sighup(Arc::clone(&shared), token) {
                tracing::warn!(error = %e, "SIGHUP reload is off");
            }
            portcullis_proxy::wait_for_signal().await;
            tracing::info!("draining");
            if running.shutdown().await {
                tracing::info!("drained; bye");
            } else {
                tracing::warn!("drain timeout reached; closing remaining connections");
            }
            shared.audit.close(std::time::Duration::from_secs(10));
            ExitCode::SUCCESS
        }
        Command::Check { config } => {
            portcullis_proxy::init_check_tracing();
            let Some(c) = load_or_report(&config) else {
                return ExitCode::from(1);
            };
            print!("{}", summary(&c));
            ExitCode::SUCCESS
        }
        Command::Demo {
            dir,
            listen,
            admin,
            once,
        } => {
            let opts = portcullis_tools::demo::DemoOptions {
                dir,
                listen,
                admin,
                once,
            };
            match portcullis_tools::demo::run(opts).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("demo failed: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::DevCerts { out } => match portcullis_tools::devcerts::generate(&out) {
            Ok(d) => {
                println!("wrote development certificates to {}", d.dir.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("dev-certs failed: {e}");
                ExitCode::from(1)
            }
        },
        Command::MockBank {
            listen,
            record,
            delay_ms,
        } => {
            let mut listeners = Vec::new();
            for a in &listen {
                match tokio::net::TcpListener::bind(a).await {
                    Ok(l) => listeners.push(l),
                    Err(e) => {
                        eprintln!("cannot bind {a}: {e}");
                        return ExitCode::from(1);
                    }
                }
            }
            let record = match record {
                Some(p) => match std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&p)
                {
                    Ok(f) => Some(f),
                    Err(e) => {
                        eprintln!("cannot open {}: {e}", p.display());
                        return ExitCode::from(1);
                    }
                },
                None => None,
            };
            for a in &listen {
                eprintln!("mock bank on http://{a}");
            }
            let token = tokio_util::sync::CancellationToken::new();
            let options = portcullis_tools::mockbank::Options {
                record,
                delay: std::time::Duration::from_millis(delay_ms),
            };
            tokio::spawn(portcullis_tools::mockbank::serve_with(
                listeners,
                token.clone(),
                options,
            ));
            portcullis_proxy::wait_for_signal().await;
            token.cancel();
            ExitCode::SUCCESS
        }
        Command::Audit { command } => portcullis_tools::auditcmd::run(command),
        Command::Token { command } => portcullis_tools::tokentool::run_token(command).await,
        Command::Policy { command } => portcullis_tools::policytest::run_command(command),
        Command::DevToken { command } => portcullis_tools::tokentool::run_dev(command),
        Command::Sign { command } => portcullis_tools::sign::run(command),
        Command::Loadgen {
            scenario: Some(file),
            addr,
            json,
            html,
            progress,
            quiet,
            ..
        } => {
            let progress = show_progress(progress, quiet);
            run_scenario(&file, addr, json.as_deref(), html.as_deref(), progress).await
        }
        Command::Loadgen {
            scenario: None,
            addr,
            server_name,
            path,
            ca,
            cert,
            key,
            connections,
            duration,
            http2,
            headers,
            json,
            html,
            progress,
            quiet,
        } => {
            let (Some(addr), Some(ca), Some(cert), Some(key)) = (addr, ca, cert, key) else {
                eprintln!("loadgen: give --scenario FILE, or --addr, --ca, --cert and --key");
                return ExitCode::from(2);
            };
            let mut parsed = Vec::new();
            for h in &headers {
                let pair = h.split_once(':').and_then(|(n, v)| {
                    Some((
                        http::HeaderName::from_bytes(n.trim().as_bytes()).ok()?,
                        http::HeaderValue::from_str(v.trim()).ok()?,
                    ))
                });
                match pair {
                    Some(p) => parsed.push(p),
                    None => {
                        eprintln!("--header: `{h}` is not `name: value`");
                        return ExitCode::from(2);
                    }
                }
            }
            let duration = match portcullis_base::duration::ConfigDuration::parse(&duration) {
                Ok(d) => d,
                Err(e) => {
                    eprintln!("--duration: {e}");
                    return ExitCode::from(2);
                }
            };
            let opts = portcullis_loadgen::LoadOptions {
                addr,
                server_name,
                path,
                ca,
                cert,
                key,
                connections,
                duration,
                http2,
                headers: parsed,
                progress: show_progress(progress, quiet),
            };
            match portcullis_loadgen::run(opts).await {
                Ok((r, summary)) => match json {
                    _ if html.as_deref().is_some_and(|f| !write_html(f, &summary)) => {
                        ExitCode::from(1)
                    }
                    Some(file) => {
                        let text = serde_json::to_string(&r).unwrap_or_default();
                        if write_out(&file, &text) {
                            ExitCode::SUCCESS
                        } else {
                            ExitCode::from(1)
                        }
                    }
                    None => {
                        println!("{}", r.text());
                        ExitCode::SUCCESS
                    }
                },
                Err(e) => {
                    eprintln!("loadgen failed: {e}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

/// Writes `text` to `file`, or prints it when `file` is `-`; reports a failure.
fn write_out(file: &std::path::Path, text: &str) -> bool {
    if file == std::path::Path::new("-") {
        println!("{text}");
        return true;
    }
    match std::fs::write(file, format!("{text}\n")) {
        Ok(()) => true,
        Err(e) => {
            eprintln!("cannot write {}: {e}", file.display());
            false
        }
    }
}

fn show_progress(progress: bool, quiet: bool) -> portcullis_loadgen::ShowProgress {
    match (progress, quiet) {
        (true, _) => portcullis_loadgen::ShowProgress::Always,
        (_, true) => portcullis_loadgen::ShowProgress::Never,
        _ => portcullis_loadgen::ShowProgress::Auto,
    }
}

/// Writes the HTML report; reports a failure.
fn write_html(file: &std::path::Path, summary: &portcullis_loadgen::Summary) -> bool {
    match std::fs::write(file, portcullis_loadgen::html::render(summary)) {
        Ok(()) => true,
        Err(e) => {
            eprintln!("cannot write {}: {e}", file.display());
            false
        }
    }
}

/// `loadgen --scenario`: 0 when every threshold holds, 1 when one is missed (or the run
/// failed), 2 when the scenario file is invalid.
async fn run_scenario(
    file: &std::path::Path,
    addr: Option<SocketAddr>,
    json: Option<&std::path::Path>,
    html: Option<&std::path::Path>,
    progress: portcullis_loadgen::ShowProgress,
) -> ExitCode {
    let mut s = match portcullis_loadgen::Scenario::load(file) {
        Ok(s) => s,
        Err(errors) => {
            eprintln!("{} error(s) in the scenario:", errors.0.len());
            for e in &errors.0 {
                eprintln!("  {e}");
            }
            return ExitCode::from(2);
        }
    };
    if let Some(a) = addr {
        s.target.address = a;
    }
    let summary = match portcullis_loadgen::run_scenario(s, progress).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("loadgen failed: {e}");
            return ExitCode::from(1);
        }
    };
    let to_stdout = json.is_some_and(|f| f == std::path::Path::new("-"));
    if to_stdout {
        eprint!("{}", summary.text());
    } else {
        print!("{}", summary.text());
    }
    if let Some(f) = json {
        let text = serde_json::to_string_pretty(&summary).unwrap_or_default();
        if !write_out(f, &text) {
            return ExitCode::from(1);
        }
    }
    if html.is_some_and(|f| !write_html(f, &summary)) {
        return ExitCode::from(1);
    }
    if summary.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// The `check` summary: listener, upstreams, routes.
pub(crate) fn summary(c: &Config) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "config {} is valid", c.source.display());
    let tls_summary = |t: &portcullis_proxy::config::ListenerTls| {
        format!(
            "mTLS {:?}, {} client CA(s), {} CRL(s){}{}{}",
            t.client_auth,
            t.client_ca_count,
            t.crl_count,
            match t.crl_urls.len() {
                0 => String::new(),
                n => format!(", {n} CRL URL(s)"),
            },
            match &t.ocsp {
                None => String::new(),
                Some(o) => format!(", OCSP {} fail {}", o.responder, o.fail),
            },
            match &t.leaf_crls {
                None => String::new(),
                Some(lc) => format!(", certificates' CRL distribution points fail {}", lc.fail),
            }
        )
    };
    for l in &c.listeners {
        match l.hosts.as_slice() {
            // The `listener:` form: one host, SNI not consulted.
            [h] if h.groups.is_none() => {
                let _ = writeln!(s, "listener {} ({})", l.address, tls_summary(&h.tls));
            }
            hosts => {
                let _ = writeln!(s, "listener {} ({} host(s))", l.address, hosts.len());
                for (i, h) in hosts.iter().enumerate() {
                    let _ = writeln!(
                        s,
                        "  host   {}{} ({}; groups {})",
                        h.names.join(", "),
                        if l.default_host == Some(i) {
                            " [default]"
                        } else {
                            ""
                        },
                        tls_summary(&h.tls),
                        h.groups.as_deref().unwrap_or_default().join(", "),
                    );
                }
            }
        }
    }
    if let Some(a) = c.admin {
        let _ = writeln!(s, "admin    {a}");
    }
    for (name, u) in &c.upstreams {
        let _ = writeln!(
            s,
            "upstream {name} -> {}://{}{}{}",
            u.scheme,
            match &u.dns {
                Some(d) => format!("{}:{} (DNS, every {:?})", d.name, d.port, d.interval),
                None => u
                    .endpoints
                    .iter()
                    .map(|a| a.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            },
            u.base_path,
            if u.tls.is_some() { " (pinned TLS)" } else { "" }
        );
    }
    let _ = writeln!(
        s,
        "routes   {} (policy version {})",
        c.policies.routes().len(),
        c.policies.version
    );
    for r in c.policies.routes() {
        let _ = writeln!(
            s,
            "  {:<7} {:<62} -> {:<8} {}",
            r.method.as_str(),
            r.template,
            r.upstream,
            r.id
        );
    }
    s
}
