//! `portcullis policy test` and `policy explain`: decide requests against policy files alone,
//! with the same functions the proxy uses (path check, route match, [`rules::evaluate`]).
//!
//! A test file (`*.test.yaml`, beside the policies) lists cases: a request (method, path with
//! query, headers, body), the verified token's claims, consent records, and the expected
//! decision — `allow`, or `{deny: {status, reason}}` (and optionally the rule id). A case may
//! also give the upstream's JSON answer (`response`), which the route's response rules then
//! check as the proxy does after an allowed request.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Map, Value};

use portcullis_policy::contract::{self, ContractMode};
use portcullis_policy::rules::{self, ConsentRecord, Facts};
use portcullis_policy::{load_files, Known, PolicySet};
use portcullis_proxy::Rejection;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub method: String,
    /// Path and optional query, as sent.
    pub path: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub body: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    request: Request,
    #[serde(default)]
    claims: Map<String, Value>,
    /// Consent records by id.
    #[serde(default)]
    consents: BTreeMap<String, Value>,
    /// Evaluation time (unix seconds); default 1 800 000 000.
    #[serde(default)]
    now: Option<i64>,
    /// The upstream's answer (a 2xx JSON body) to an allowed request, for response rules.
    #[serde(default)]
    response: Option<String>,
    expect: Expect,
}

#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum Expect {
    Allow,
    Deny {
        status: u16,
        reason: String,
        #[serde(default)]
        rule: Option<String>,
    },
}

/// The request's headers as a map (lower-cased names; unparseable ones skipped).
fn header_map(req: &Request) -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    for (k, v) in &req.headers {
        if let (Ok(k), Ok(v)) = (
            http::HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()),
            http::HeaderValue::from_str(v),
        ) {
            headers.append(k, v);
        }
    }
    headers
}

/// The decision for one request, as the proxy would make it after the token checks.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Allow {
        route: String,
    },
    Deny {
        status: u16,
        reason: &'static str,
        rule: Option<String>,
        route: Option<String>,
    },
    /// Decided deny by a shadow rule: forwarded, recorded.
    ShadowDeny {
        route: String,
        reason: &'static str,
        rule: String,
    },
}

fn deny(r: &Rejection, rule: Option<String>, route: Option<String>) -> Outcome {
    Outcome::Deny {
        status: r.wire().status.as_u16(),
        reason: r.audit_reason(),
        rule,
        route,
    }
}

fn contract_request<'a>(f: &Facts<'a>) -> contract::Request<'a> {
    contract::Request {
        params: f.params,
        query: f.query,
        headers: f.headers,
        body: f.body,
    }
}

/// Decides `req` with `claims` and `consents` at `now`.
pub fn decide(
    set: &PolicySet,
    req: &Request,
    claims: &Map<String, Value>,
    consents: &BTreeMap<String, ConsentRecord>,
    now: i64,
) -> Outcome {
    let (path, query) = match req.path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (req.path.as_str(), None),
    };
    if let Err(e) = portcullis_base::path::check_path(path) {
        return deny(&e.into(), None, None);
    }
    if let Some(Err(e)) = query.map(portcullis_base::path::check_query) {
        return deny(&e.into(), None, None);
    }
    let Ok(method) = req.method.parse::<http::Method>() else {
        return deny(&portcullis_policy::NoRoute::NotFound.into(), None, None);
    };
    let m = match set.lookup(&method, path) {
        Ok(m) => m,
        Err(e) => return deny(&e.into(), None, None),
    };
    let headers = header_map(req);
    let facts = Facts {
        params: &m.params,
        query,
        headers: &headers,
        body: req.body.as_deref().map(str::as_bytes),
    };
    // The contract is checked before authorization, as in the proxy.
    let mut shadow_contract = None;
    if let Some(c) = &m.route.contract {
        if let Err(v) = c.check(&contract_request(&facts)) {
            let r = Rejection::Contract(v);
            match c.mode {
                ContractMode::Enforce => return deny(&r, None, Some(m.route.id.clone())),
                ContractMode::Shadow => shadow_contract = Some(r.audit_reason()),
            }
        }
    }
    let scopes: Vec<String> = claims
        .get("scope")
        .and_then(Value::as_str)
        .map(|s| {
            s.split(' ')
                .filter(|x| !x.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let authz = &m.route.authz;
    let consent = rules::consent_id(authz, claims).and_then(|id| consents.get(id));
    let route = m.route.id.clone();
    match rules::evaluate(authz, &scopes, claims, Ok(consent), &facts, now) {
        Ok(()) => match shadow_contract {
            Some(reason) => Outcome::ShadowDeny {
                rule: format!(
                    "contract:{}",
                    m.route
                        .contract
                        .as_ref()
                        .map_or("", |c| c.operation.as_str())
                ),
                route,
                reason,
            },
            None => Outcome::Allow { route },
        },
        Err(d) if d.shadow => {
            let reason = Rejection::Authz(d.clone(), None).audit_reason();
            Outcome::ShadowDeny {
                route,
                reason,
                rule: d.rule,
            }
        }
        Err(d) => {
            let rule = Some(d.rule.clone());
            deny(&Rejection::Authz(d, None), rule, Some(route))
        }
    }
}

/// The decision on the upstream's answer `body` (a 2xx) to an allowed request, as the proxy
/// makes it: the route's response rules read it; `forbid` refuses as a foreign object (403),
/// `withhold` and a success that is not JSON as a leak (502).
pub fn decide_response(
    set: &PolicySet,
    req: &Request,
    claims: &Map<String, Value>,
    consents: &BTreeMap<String, ConsentRecord>,
    body: &str,
) -> Option<Outcome> {
    use rules::{AuthzError, Denial, ResponseAction};
    let path = req.path.split('?').next().unwrap_or("");
    let method = req.method.parse::<http::Method>().ok()?;
    let m = set.lookup(&method, path).ok()?;
    let authz = &m.route.authz;
    let first = authz.response_rules.first()?;
    let route = Some(m.route.id.clone());
    let refuse = |error, rule: &str| {
        let d = Denial {
            error,
            rule: rule.to_string(),
            hidden: false,
            shadow: false,
        };
        deny(
            &Rejection::Authz(d, None),
            Some(rule.to_string()),
            route.clone(),
        )
    };
    let Ok(mut doc) = serde_json::from_str::<Value>(body) else {
        return Some(refuse(AuthzError::ResponseLeak, &first.id));
    };
    let consent = rules::consent_id(authz, claims).and_then(|id| consents.get(id));
    Some(
        match rules::check_response(&authz.response_rules, claims, consent, &mut doc) {
            Ok(_) => Outcome::Allow {
                route: m.route.id.clone(),
            },
            Err(r) if r.action == ResponseAction::Forbid => refuse(AuthzError::Object, &r.id),
            Err(r) => refuse(AuthzError::ResponseLeak, &r.id),
        },
    )
}

fn consent_map(v: &BTreeMap<String, Value>) -> Result<BTreeMap<String, ConsentRecord>, String> {
    v.iter()
        .map(|(id, rec)| {
            portcullis_policy::rules::ConsentRecord::from_json(rec)
                .map(|r| (id.clone(), r))
                .ok_or_else(|| {
                    format!(
                        "consent {id}: needs a status, and expires/permissions of the right types"
                    )
                })
        })
        .collect()
}

/// One line of the report.
pub struct CaseResult {
    pub file: PathBuf,
    pub name: String,
    pub passed: bool,
    pub expected: String,
    pub got: String,
}

fn show_expect(e: &Expect) -> String {
    match e {
        Expect::Allow => "allow".into(),
        Expect::Deny {
            status,
            reason,
            rule,
        } => match rule {
            Some(r) => format!("deny {status} {reason} ({r})"),
            None => format!("deny {status} {reason}"),
        },
    }
}

fn show_outcome(o: &Outcome) -> String {
    match o {
        Outcome::Allow { .. } => "allow".into(),
        Outcome::ShadowDeny { reason, rule, .. } => {
            format!("allow (shadow: would deny {reason} ({rule}))")
        }
        Outcome::Deny {
            status,
            reason,
            rule: Some(r),
            ..
        } => format!("deny {status} {reason} ({r})"),
        Outcome::Deny { status, reason, .. } => format!("deny {status} {reason}"),
    }
}

fn matches(e: &Expect, o: &Outcome) -> bool {
    match (e, o) {
        (Expect::Allow, Outcome::Allow { .. } | Outcome::ShadowDeny { .. }) => true,
        (
            Expect::Deny {
                status,
                reason,
                rule,
            },
            Outcome::Deny {
                status: s,
                reason: r,
                rule: gr,
                ..
            },
        ) => {
            status == s && reason == r && rule.as_ref().is_none_or(|want| gr.as_ref() == Some(want))
        }
        _ => false,
    }
}

/// Runs every `*.test.yaml` under `dir` against the policies in `dir`.
pub fn run(dir: &Path) -> Result<Vec<CaseResult>, String> {
    let set = load_files(&[dir.to_path_buf()], &Known::standalone()).map_err(|e| e.to_string())?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".test.yaml"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(format!("{}: no *.test.yaml files", dir.display()));
    }
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).map_err(|e| format!("{}: {e}", f.display()))?;
        let tf: TestFile =
            serde_saphyr::from_str(&text).map_err(|e| format!("{}: {e}", f.display()))?;
        for c in tf.cases {
            let consents = consent_map(&c.consents)
                .map_err(|e| format!("{}: {}: {e}", f.display(), c.name))?;
            let mut got = decide(
                &set,
                &c.request,
                &c.claims,
                &consents,
                c.now.unwrap_or(1_800_000_000),
            );
            if let (Outcome::Allow { .. }, Some(body)) = (&got, &c.response) {
                got = decide_response(&set, &c.request, &c.claims, &consents, body).ok_or_else(
                    || {
                        format!(
                            "{}: {}: `response` is given but the route has no response rules",
                            f.display(),
                            c.name
                        )
                    },
                )?;
            }
            out.push(CaseResult {
                file: f.clone(),
                name: c.name,
                passed: matches(&c.expect, &got),
                expected: show_expect(&c.expect),
                got: show_outcome(&got),
            });
        }
    }
    Ok(out)
}

/// `policy explain`: which route matched and each rule's outcome for one request.
pub fn explain(
    dir: &Path,
    req: &Request,
    claims: &Map<String, Value>,
    consents: &BTreeMap<String, Value>,
    now: i64,
) -> Result<String, String> {
    use std::fmt::Write;
    let set = load_files(&[dir.to_path_buf()], &Known::standalone()).map_err(|e| e.to_string())?;
    let consents = consent_map(consents)?;
    let mut s = String::new();
    let path = req.path.split('?').next().unwrap_or("");
    match req
        .method
        .parse::<http::Method>()
        .ok()
        .map(|m| set.lookup(&m, path))
    {
        Some(Ok(m)) => {
            let _ = writeln!(
                s,
                "route {} ({} {}) from {}",
                m.route.id,
                m.route.method,
                m.route.template,
                m.route.file.display()
            );
            let _ = writeln!(s, "params {:?}", m.params);
            if let Some(c) = &m.route.contract {
                let headers = header_map(req);
                let facts = Facts {
                    params: &m.params,
                    query: req.path.split_once('?').map(|x| x.1),
                    headers: &headers,
                    body: req.body.as_deref().map(str::as_bytes),
                };
                let outcome = match c.check(&contract_request(&facts)) {
                    Ok(()) => "valid".to_string(),
                    Err(v) => format!(
                        "{} {} at `{}` (keyword {})",
                        if c.mode == ContractMode::Shadow {
                            "would refuse"
                        } else {
                            "refuse"
                        },
                        v.fault.reason(),
                        v.pointer,
                        v.keyword
                    ),
                };
                let _ = writeln!(
                    s,
                    "contract {} ({}{}) from {}: {outcome}",
                    c.operation,
                    c.mode.as_str(),
                    if c.strict { ", strict" } else { "" },
                    c.spec.display()
                );
            }
            let a = &m.route.authz;
            let _ = writeln!(
                s,
                "scopes all_of {:?} any_of {:?}{}",
                a.all_of,
                a.any_of,
                if a.shadow {
                    " (route in shadow mode)"
                } else {
                    ""
                }
            );
            if let Some(c) = &a.consent {
                let _ = writeln!(
                    s,
                    "consent claim {} status {:?} permissions {:?}",
                    c.claim, c.status, c.permissions
                );
            }
            // Each rule alone, so every outcome is shown, not just the first refusal.
            for r in &a.rules {
                let one = rules::Authz {
                    rules: vec![r.clone()],
                    consent: a.consent.clone(),
                    ..Default::default()
                };
                let single = Request {
                    method: req.method.clone(),
                    path: req.path.clone(),
                    headers: req.headers.clone(),
                    body: req.body.clone(),
                };
                let _ = &single;
                let headers = header_map(req);
                let facts = Facts {
                    params: &m.params,
                    query: req.path.split_once('?').map(|x| x.1),
                    headers: &headers,
                    body: req.body.as_deref().map(str::as_bytes),
                };
                let consent = rules::consent_id(&one, claims).and_then(|id| consents.get(id));
                let o = rules::evaluate(&one, &[], claims, Ok(consent), &facts, now);
                let _ = writeln!(
                    s,
                    "rule {:<24} {}",
                    r.id,
                    match o {
                        Ok(()) => "pass".to_string(),
                        Err(d) => format!(
                            "{} {:?}{}",
                            if d.shadow { "would deny" } else { "deny" },
                            d.error,
                            if d.shadow { " (shadow)" } else { "" }
                        ),
                    }
                );
            }
        }
        _ => {
            let _ = writeln!(s, "no route matches {} {}", req.method, path);
        }
    }
    let o = decide(&set, req, claims, &consents, now);
    let _ = writeln!(s, "decision {}", show_outcome(&o));
    Ok(s)
}

/// `Request` from command-line pieces.
pub fn request(method: &str, path: &str, headers: &[String], body: Option<String>) -> Request {
    Request {
        method: method.to_string(),
        path: path.to_string(),
        headers: headers
            .iter()
            .filter_map(|h| h.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect(),
        body,
    }
}

#[derive(clap::Subcommand)]
pub enum PolicyCommand {
    /// Run the `*.test.yaml` cases beside the policies; print a table; exit 1 on any mismatch.
    Test {
        /// The policy directory.
        #[arg(default_value = "policies")]
        dir: PathBuf,
    },
    /// Write (or update) a policy file from an OpenAPI 3.0/3.1 description: one route per
    /// operation, its scopes, body limit and request contract; prints what changed.
    Import {
        /// The OpenAPI description (YAML or JSON).
        spec: PathBuf,
        /// The policy directory to write `GROUP.yaml` (and, once, `GROUP.test.yaml`) into.
        #[arg(long)]
        out: PathBuf,
        /// The policy group (default: the description's file name).
        #[arg(long)]
        group: Option<String>,
        /// The upstream the routes go to (a name of the config's `upstreams`).
        #[arg(long, default_value = "bank")]
        upstream: String,
        /// The token profile of every route: fapi2, fapi1-advanced or bearer.
        #[arg(long, default_value = "fapi2")]
        profile: String,
        /// What every route does with the upstream's answers: shadow (checked against the
        /// operation's responses, drift recorded), enforce (a non-conforming answer is
        /// withheld, 502) or off.
        #[arg(long, default_value = "shadow")]
        response: String,
    },
    /// For one request and token claims: the route that matches, the contract's outcome and
    /// each rule's outcome.
    Explain {
        #[arg(long, default_value = "policies")]
        policies: PathBuf,
        #[arg(long, default_value = "GET")]
        method: String,
        /// Path and optional query.
        #[arg(long)]
        path: String,
        /// A request header, `name: value` (repeatable).
        #[arg(long = "header", short = 'H')]
        headers: Vec<String>,
        #[arg(long)]
        body: Option<String>,
        /// The token claims as JSON.
        #[arg(long, default_value = "{}")]
        claims: String,
        /// Consent records by id, as JSON.
        #[arg(long, default_value = "{}")]
        consents: String,
    },
}

pub fn run_command(cmd: PolicyCommand) -> std::process::ExitCode {
    use std::process::ExitCode;
    match cmd {
        PolicyCommand::Import {
            spec,
            out,
            group,
            upstream,
            profile,
            response,
        } => crate::openapi::run(&crate::openapi::Import {
            spec,
            out,
            group,
            upstream,
            profile,
            response,
        }),
        PolicyCommand::Test { dir } => match run(&dir) {
            Err(e) => {
                eprintln!("policy test: {e}");
                ExitCode::from(2)
            }
            Ok(results) => {
                let failed = results.iter().filter(|r| !r.passed).count();
                for r in &results {
                    let file = r
                        .file
                        .file_name()
                        .map(|f| f.to_string_lossy().to_string())
                        .unwrap_or_default();
                    println!(
                        "{} {file:<28} {:<52} {}",
                        if r.passed { "ok  " } else { "FAIL" },
                        r.name,
                        r.got
                    );
                    if !r.passed {
                        println!(
                            "       expected: {}\n       got:      {}",
                            r.expected, r.got
                        );
                    }
                }
                println!("{} passed, {} failed", results.len() - failed, failed);
                if failed == 0 {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                }
            }
        },
        PolicyCommand::Explain {
            policies,
            method,
            path,
            headers,
            body,
            claims,
            consents,
        } => {
            let parse = |what: &str, s: &str| -> Result<Map<String, Value>, String> {
                serde_json::from_str::<Value>(s)
                    .ok()
                    .and_then(|v| v.as_object().cloned())
                    .ok_or_else(|| format!("--{what} must be a JSON object"))
            };
            let out = parse("claims", &claims).and_then(|c| {
                let consents: BTreeMap<String, Value> =
                    parse("consents", &consents)?.into_iter().collect();
                explain(
                    &policies,
                    &request(&method, &path, &headers, body),
                    &c,
                    &consents,
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs() as i64),
                )
            });
            match out {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("policy explain: {e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}
