//! `portcullis audit …`: `verify`, `report` and `keygen`.
//!
//! Exit codes: 0 when the log verifies (or the report / key was written), 1 when `verify`
//! finds damage, 2 on a usage or I/O error.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Subcommand;

use portcullis_audit::{report, verify, AuditKey, AuditPublicKey};

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Check the hash chain and the signed checkpoints of audit files, in the order given
    /// (rotated files oldest first, then the current one: `audit.log.* audit.log`). Names the
    /// first damaged record and the kind of damage; exits 1 when there is one.
    Verify {
        /// The audit public key (SPKI PEM); repeat for logs signed by several keys.
        #[arg(long = "public-key")]
        public_key: Vec<PathBuf>,
        /// Check the chain only, not checkpoint signatures.
        #[arg(long)]
        no_signatures: bool,
        /// `SEQ:HASH` of a checkpoint recorded elsewhere (the proxy logs each one); the log
        /// must contain it, which detects a truncation back past it.
        #[arg(long)]
        anchor: Option<String>,
        /// Print the outcome as JSON.
        #[arg(long)]
        json: bool,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Summarize audit files per client: routes, scopes granted vs used, refusals by reason,
    /// first/last seen, certificate expiry; requests to undeclared paths by shape and the
    /// upstream's drift from route contracts; with --config or --policy, policy routes never
    /// called; with --spec, the descriptions against the policy. The files are read a line at
    /// a time, so any size of log fits in memory.
    Report {
        /// The proxy config, to list policy routes that were never called.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// A policy directory (instead of --config): routes never called, each client's
        /// OpenAPI operations, and what --spec compares.
        #[arg(long, value_name = "DIR", conflicts_with = "config")]
        policy: Option<PathBuf>,
        /// An OpenAPI description (repeatable): its operations no policy route declares, and
        /// the policy routes no description declares. Needs --config or --policy.
        #[arg(long, value_name = "FILE")]
        spec: Vec<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Also write the report as one self-contained HTML page to FILE.
        #[arg(long, value_name = "FILE")]
        html: Option<PathBuf>,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Write a new Ed25519 audit key: DIR/audit.key (PKCS#8 PEM, mode 0600) and
    /// DIR/audit.pub (SPKI PEM). Refuses to overwrite an existing key.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
}

/// Runs one `audit` subcommand; returns the exit code.
pub fn run(cmd: AuditCommand) -> ExitCode {
    match cmd {
        AuditCommand::Verify {
            public_key,
            no_signatures,
            anchor,
            json,
            files,
        } => run_verify(&public_key, no_signatures, anchor.as_deref(), json, &files),
        AuditCommand::Report {
            config,
            policy,
            spec,
            json,
            html,
            files,
        } => run_report(
            &Inputs {
                config,
                policy,
                specs: spec,
            },
            json,
            html.as_deref(),
            &files,
        ),
        AuditCommand::Keygen { out } => match keygen(&out) {
            Ok((key, public)) => {
                println!(
                    "wrote {} and {} (key id {})",
                    out.join("audit.key").display(),
                    public.display(),
                    key
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("audit keygen: {e}");
                ExitCode::from(2)
            }
        },
    }
}

fn run_verify(
    public_key: &[PathBuf],
    no_signatures: bool,
    anchor: Option<&str>,
    json: bool,
    files: &[PathBuf],
) -> ExitCode {
    if public_key.is_empty() && !no_signatures {
        eprintln!(
            "audit verify: give --public-key PUB (or --no-signatures to check the chain only)"
        );
        return ExitCode::from(2);
    }
    let mut keys = Vec::new();
    for p in public_key {
        match AuditPublicKey::from_file(p) {
            Ok(k) => keys.push(k),
            Err(e) => {
                eprintln!("audit verify: {}: {e}", p.display());
                return ExitCode::from(2);
            }
        }
    }
    let anchor = match anchor.map(verify::parse_anchor) {
        None => None,
        Some(Some(a)) => Some(a),
        Some(None) => {
            eprintln!(
                "audit verify: --anchor must be SEQ:HASH (the hash is 43 base64url characters)"
            );
            return ExitCode::from(2);
        }
    };
    let opts = verify::Options {
        keys,
        check_signatures: !no_signatures,
        anchor,
    };
    let outcome = match verify::verify_files(files, &opts) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("audit verify: {e}");
            return ExitCode::from(2);
        }
    };
    if json {
        println!("{}", serde_json::to_string(&outcome).unwrap_or_default());
    } else {
        print!("{outcome}");
    }
    if outcome.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// What `audit report` compares the log with.
struct Inputs {
    config: Option<PathBuf>,
    policy: Option<PathBuf>,
    specs: Vec<PathBuf>,
}

/// The policy's routes, from the config or a policy directory.
fn policy_routes(i: &Inputs) -> Result<Option<Vec<Arc<portcullis_policy::Route>>>, String> {
    if let Some(path) = &i.config {
        let c = portcullis_proxy::config::Config::load(path).map_err(|e| e.to_string())?;
        return Ok(Some(c.policies.routes().to_vec()));
    }
    if let Some(dir) = &i.policy {
        let set = portcullis_policy::load_files(
            std::slice::from_ref(dir),
            &portcullis_policy::Known::standalone(),
        )
        .map_err(|e| e.to_string())?;
        return Ok(Some(set.routes().to_vec()));
    }
    Ok(None)
}

/// A template with its parameter names dropped: `/a/{Id}` and `/a/{AccountId}` are one path.
fn template_shape(t: &str) -> String {
    t.split('/')
        .map(|seg| {
            if seg.starts_with('{') && seg.ends_with('}') {
                "{}"
            } else {
                seg
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Each description's operations against the policy's routes: an operation is declared by a
/// route with its method and path (the server's base path and the template, parameter names
/// aside), or by a route whose contract names it in that description.
fn compare_specs(
    specs: &[PathBuf],
    routes: &[Arc<portcullis_policy::Route>],
) -> Result<report::SpecComparison, String> {
    let canonical = |p: &std::path::Path| std::fs::canonicalize(p).ok();
    let mut out = report::SpecComparison::default();
    let mut in_a_spec = std::collections::BTreeSet::new();
    for file in specs {
        let spec = portcullis_policy::contract::Spec::read(file)?;
        let here = canonical(file);
        let base = spec.base_path();
        let ops = spec.operations();
        let mut diff = report::SpecDiff {
            file: file.display().to_string(),
            operations: ops.len() as u64,
            ..report::SpecDiff::default()
        };
        for op in &ops {
            let shape = template_shape(&format!("{base}{}", op.path));
            let mut found = false;
            for r in routes {
                let by_path = r.method == op.method && template_shape(&r.template) == shape;
                let by_contract = r.contract.as_ref().is_some_and(|c| {
                    c.operation == op.id && here.is_some() && canonical(&c.spec) == here
                });
                if by_path || by_contract {
                    found = true;
                    in_a_spec.insert(r.id.clone());
                }
            }
            if !found {
                diff.operations_without_route
                    .push(format!("{} ({} {base}{})", op.id, op.method, op.path));
            }
        }
        out.specs.push(diff);
    }
    out.routes_not_in_specs = routes
        .iter()
        .filter(|r| !in_a_spec.contains(&r.id))
        .map(|r| r.id.clone())
        .collect();
    Ok(out)
}

fn run_report(
    inputs: &Inputs,
    json: bool,
    html: Option<&std::path::Path>,
    files: &[PathBuf],
) -> ExitCode {
    let routes = match policy_routes(inputs) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("audit report: {e}");
            return ExitCode::from(2);
        }
    };
    let comparison = match (&routes, inputs.specs.is_empty()) {
        (_, true) => None,
        (None, false) => {
            eprintln!("audit report: --spec needs the policy (--config or --policy)");
            return ExitCode::from(2);
        }
        (Some(routes), false) => match compare_specs(&inputs.specs, routes) {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("audit report: --spec: {e}");
                return ExitCode::from(2);
            }
        },
    };
    let routes: Option<Vec<report::PolicyRoute>> = routes.map(|rs| {
        rs.iter()
            .map(|r| report::PolicyRoute {
                id: r.id.clone(),
                operation: r.contract.as_ref().map(|c| c.operation.clone()),
            })
            .collect()
    });
    let mut builder = report::Builder::default();
    for f in files {
        let read = std::fs::File::open(f)
            .and_then(|file| builder.read(std::io::BufReader::with_capacity(1 << 16, file)));
        if let Err(e) = read {
            eprintln!("audit report: {}: {e}", f.display());
            return ExitCode::from(2);
        }
    }
    let mut r = builder.finish_with(routes.as_deref());
    r.spec = comparison;
    if let Some(out) = html {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let sources: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        if let Err(e) = std::fs::write(out, r.html(&sources, now)) {
            eprintln!("audit report: cannot write {}: {e}", out.display());
            return ExitCode::from(2);
        }
    }
    if json {
        println!("{}", serde_json::to_string(&r).unwrap_or_default());
    } else {
        print!("{r}");
    }
    ExitCode::SUCCESS
}

/// Writes `audit.key` and `audit.pub` into `dir`; returns the key id and the public key path.
pub fn keygen(dir: &std::path::Path) -> Result<(String, PathBuf), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let (key, private_pem, public_pem) = AuditKey::generate().map_err(|e| e.to_string())?;
    let private = dir.join("audit.key");
    let public = dir.join("audit.pub");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut f = options
        .open(&private)
        .map_err(|e| format!("{}: {e}", private.display()))?;
    use std::io::Write as _;
    f.write_all(private_pem.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("{}: {e}", private.display()))?;
    std::fs::write(&public, public_pem).map_err(|e| format!("{}: {e}", public.display()))?;
    Ok((key.key_id().to_string(), public))
}
