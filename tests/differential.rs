//! The differential harness: real upstream frameworks behind the proxy are the oracle.
//!
//! Three echo apps (tests/frameworks/): Tomcat 10 embedded with one servlet (and Jackson with
//! ACCEPT_CASE_INSENSITIVE_PROPERTIES, plus an ASP.NET-Core-like case-insensitive query
//! binder), Express 5 with `method-override`, and Flask/Werkzeug. Each answers with what it
//! parsed: the method after any override, the path as it resolved it, the handler that matched
//! and the ids it bound (path, query, JSON body, header).
//!
//! For every request of the path, query, body and header corpora, sent through the proxy to
//! each framework:
//! - if the proxy refused it, the framework must have received nothing;
//! - if the proxy forwarded it, the framework must have parsed what the proxy authorized: the
//!   handler is the proxy's matched route (audit `route_id`), the method is the route's, the
//!   path is the path the proxy matched, a path id equals the proxy's path parameter, and every
//!   other id the framework bound is one the token grants (acc-a1, pdc-a) — the proxy checked
//!   only granted ids, so any other id was read where the proxy did not look.
//!
//! Each corpus is its own test and reports every mismatch at once, with a table of all cases.
//! The frameworks start once per test binary. Node and Python dependencies are installed by the
//! test itself under target/tmp/differential when missing; the Debian packages (Tomcat's
//! libraries, Jackson, a JDK) by ./test.sh. A missing piece fails the test with the command to
//! run; PORTCULLIS_SKIP_DIFFERENTIAL=1 skips the harness (developers only: CI runs it).
//!
//! Just this harness: `cargo test --test differential -- --nocapture`.

mod common;
mod support {
    pub(crate) mod apps;
    pub(crate) mod attack;
    pub(crate) mod h2raw;
}

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use portcullis_base::clock::{Clock, ManualClock};
use portcullis_crypto::jose::sign::SigningKey;
use portcullis_crypto::jose::Alg;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::*;
use support::apps::{self, run, which};
use support::attack::{claims, parse_raw, thumb, AUD, BASE, ISS, NOW};

// ---------------------------------------------------------------------------------------------
// The policy: its routes mirror the frameworks' handlers (same ids).

const POLICY: &str = r#"
group: differential
upstream: bank
routes:
  - id: accounts.list
    method: GET
    path: /accounts
    auth: {profile: fapi2}
    scopes: {all_of: [accounts]}
    rules:
      - {id: query-account, value: {query: accountId}, in: {claim: accounts}}
  - id: accounts.get
    method: GET
    path: /accounts/{AccountId}
    auth: {profile: fapi2}
    scopes: {all_of: [accounts]}
    rules:
      - {id: path-account, value: {path: AccountId}, in: {claim: accounts}}
  - id: accounts.delete
    method: DELETE
    path: /accounts/{AccountId}
    auth: {profile: fapi2}
    scopes: {all_of: [accounts-write]}
    rules:
      - {id: path-account, value: {path: AccountId}, in: {claim: accounts}}
  - id: payments.create
    method: POST
    path: /payments
    auth: {profile: fapi2}
    scopes: {all_of: [payments]}
    rules:
      - {id: body-consent, value: {json: /Data/ConsentId}, in: {claim: openbanking_intent_id}}
  - id: payments.get
    method: GET
    path: /payments/{PaymentId}
    auth: {profile: fapi2}
    scopes: {all_of: [payments]}
  - id: payments.details
    method: GET
    path: /payments/{PaymentId}/details
    auth: {profile: fapi2}
    scopes: {all_of: [payments]}
  - id: statements.list
    method: GET
    path: /statements
    auth: {profile: fapi2}
    scopes: {all_of: [accounts]}
    rules:
      - {id: header-account, value: {header: x-account-id}, in: {claim: accounts}}
  - id: consents.get
    method: GET
    path: /consents/{ConsentId}
    auth: {profile: fapi2}
    scopes: {all_of: [payments]}
    rules:
      - {id: own-consent, value: {path: ConsentId}, in: {claim: openbanking_intent_id}, deny_status: 404}
  - id: consents.delete
    method: DELETE
    path: /consents/{ConsentId}
    auth: {profile: fapi2}
    scopes: {all_of: [payments-write]}
    rules:
      - {id: own-consent, value: {path: ConsentId}, in: {claim: openbanking_intent_id}, deny_status: 404}
"#;

/// (route id, method, path template) of [`POLICY`].
const ROUTES: &[(&str, &str, &str)] = &[
    ("accounts.list", "GET", "/accounts"),
    ("accounts.get", "GET", "/accounts/{AccountId}"),
    ("accounts.delete", "DELETE", "/accounts/{AccountId}"),
    ("payments.create", "POST", "/payments"),
    ("payments.get", "GET", "/payments/{PaymentId}"),
    ("payments.details", "GET", "/payments/{PaymentId}/details"),
    ("statements.list", "GET", "/statements"),
    ("consents.get", "GET", "/consents/{ConsentId}"),
    ("consents.delete", "DELETE", "/consents/{ConsentId}"),
];

/// What the token grants, by the name a framework binds the id under.
fn granted(name: &str) -> Option<&'static [&'static str]> {
    match name.to_ascii_lowercase().as_str() {
        "accountid" | "x-account-id" => Some(&["acc-a1"]),
        "consentid" => Some(&["pdc-a"]),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// The frameworks: prepared (compiled, dependencies installed) and started once per binary.

struct Framework {
    name: &'static str,
    addr: SocketAddr,
    /// Kept for the life of the test process: its stdin pipe closes when the process ends,
    /// and the app exits then.
    _child: Child,
}

const NAMES: [&str; 3] = ["tomcat", "express", "flask"];

fn skip() -> bool {
    std::env::var("PORTCULLIS_SKIP_DIFFERENTIAL").is_ok_and(|v| v == "1")
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/frameworks")
}

fn work_dir() -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("differential");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Copies `files` from the source dir of `app` to its work dir; true if any changed.
fn sync(app: &str, files: &[&str]) -> bool {
    apps::sync(&src_dir().join(app), &work_dir().join(app), files)
}

const APT: &str = "apt-get install -y --no-install-recommends libtomcat10-java libjackson2-databind-java default-jdk-headless";

/// The classpath of embedded Tomcat and Jackson, from Debian's packages.
fn tomcat_classpath() -> Result<String, String> {
    let mut jars: Vec<String> = [
        "catalina",
        "coyote",
        "util",
        "util-scan",
        "juli",
        "api",
        "servlet-api",
        "annotations-api",
        "jaspic-api",
        "el-api",
    ]
    .iter()
    .map(|j| format!("/usr/share/java/tomcat10-{j}.jar"))
    .collect();
    for j in ["jackson-databind", "jackson-core", "jackson-annotations"] {
        jars.push(format!("/usr/share/java/{j}.jar"));
    }
    if let Some(missing) = jars.iter().find(|j| !Path::new(j).exists()) {
        return Err(format!(
            "tomcat: {missing} is missing (Debian packages libtomcat10-java, libjackson2-databind-java); run: {APT}"
        ));
    }
    Ok(jars.join(":"))
}

/// Prepares `name` and returns the command that starts it.
fn prepare(name: &str) -> Result<Command, String> {
    let work = work_dir().join(name);
    match name {
        "tomcat" => {
            let cp = tomcat_classpath()?;
            if which("java").is_none() || which("javac").is_none() {
                return Err(format!("tomcat: java or javac is missing; run: {APT}"));
            }
            let changed = sync("tomcat", &["Echo.java"]);
            let classes = work.join("classes");
            if changed || !classes.join("Echo.class").exists() {
                let _ = std::fs::remove_dir_all(&classes);
                run(
                    Command::new("javac")
                        .arg("-d")
                        .arg(&classes)
                        .arg("-cp")
                        .arg(&cp)
                        .arg(work.join("Echo.java")),
                    "tomcat: javac",
                )?;
            }
            let mut c = Command::new("java");
            c.arg("-cp")
                .arg(format!("{}:{cp}", classes.display()))
                .arg("Echo");
            Ok(c)
        }
        "express" => {
            apps::need_node("express")?;
            let changed = sync("express", &["package.json", "package-lock.json"]);
            sync("express", &["app.js"]);
            apps::npm_ci(
                &work,
                changed,
                "node_modules/express/package.json",
                "express",
            )?;
            let mut c = Command::new("node");
            c.arg(work.join("app.js"));
            Ok(c)
        }
        "flask" => {
            let changed = sync("flask", &["requirements.txt"]);
            sync("flask", &["app.py"]);
            let venv = work.join("venv");
            let py = venv.join("bin/python");
            if changed || !py.exists() || !venv.join(".installed").exists() {
                let python = which("python3").ok_or(
                    "flask: python3 is missing; run: apt-get install -y python3 python3-venv",
                )?;
                let _ = std::fs::remove_dir_all(&venv);
                run(
                    Command::new(python).arg("-m").arg("venv").arg(&venv),
                    "flask: python3 -m venv",
                )
                .map_err(|e| format!("{e}\nrun: apt-get install -y python3-venv"))?;
                run(
                    Command::new(&py)
                        .args([
                            "-m",
                            "pip",
                            "install",
                            "-q",
                            "--disable-pip-version-check",
                            "-r",
                        ])
                        .arg(work.join("requirements.txt")),
                    "flask: pip install",
                )
                .map_err(|e| {
                    format!(
                        "{e}\nrun: {} -m pip install -r {}   (needs the Python package index)",
                        py.display(),
                        work.join("requirements.txt").display()
                    )
                })?;
                std::fs::write(venv.join(".installed"), "").unwrap();
            }
            let mut c = Command::new(py);
            c.arg(work.join("app.py"));
            Ok(c)
        }
        _ => unreachable!(),
    }
}

/// Starts a prepared app; waits for its "PORT n" line.
fn start(name: &'static str, mut cmd: Command) -> Result<Framework, String> {
    let log = work_dir().join(format!("{name}.log"));
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .map_err(|e| format!("{name}: cannot start {cmd:?}: {e}"))?;
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let port = lines.by_ref().map_while(Result::ok).find_map(|l| {
            l.strip_prefix("PORT ")
                .and_then(|p| p.trim().parse::<u16>().ok())
        });
        let _ = tx.send(port);
        // Keep draining, so that a chatty app never blocks on a full pipe.
        lines.for_each(drop);
    });
    match rx.recv_timeout(Duration::from_secs(90)) {
        Ok(Some(port)) => Ok(Framework {
            name,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            _child: child,
        }),
        _ => {
            let _ = child.kill();
            Err(format!(
                "{name} did not start; its log {}:\n{}",
                log.display(),
                std::fs::read_to_string(&log).unwrap_or_default()
            ))
        }
    }
}

/// The three frameworks, started once (in parallel); panics with what to run when one cannot
/// be prepared.
fn frameworks() -> &'static [Framework] {
    static FW: OnceLock<Result<Vec<Framework>, String>> = OnceLock::new();
    let r = FW.get_or_init(|| {
        let t = Instant::now();
        let handles: Vec<_> = NAMES
            .iter()
            .map(|&n| std::thread::spawn(move || prepare(n).and_then(|c| start(n, c))))
            .collect();
        let mut ok = Vec::new();
        let mut errors = Vec::new();
        for h in handles {
            match h.join().unwrap() {
                Ok(f) => ok.push(f),
                Err(e) => errors.push(e),
            }
        }
        eprintln!(
            "differential: frameworks ready in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        if errors.is_empty() {
            Ok(ok)
        } else {
            Err(errors.join("\n\n"))
        }
    });
    match r {
        Ok(v) => v,
        Err(e) => panic!(
            "the differential harness could not prepare its frameworks (PORTCULLIS_SKIP_DIFFERENTIAL=1 skips it, for developers only):\n{e}"
        ),
    }
}

/// How many requests with interaction id `id` the framework's app code saw (asked directly,
/// not via the proxy; the tests share the frameworks, so a global count would not do).
async fn seen(fw: &Framework, id: &str) -> u64 {
    let mut tcp = tokio::net::TcpStream::connect(fw.addr).await.unwrap();
    let req = format!("GET /__seen/{id} HTTP/1.0\r\nHost: localhost\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tcp.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    body.trim()
        .parse()
        .unwrap_or_else(|_| panic!("{}: /__seen answered {text}", fw.name))
}

// ---------------------------------------------------------------------------------------------
// The proxy in front of one framework, and a token for the caller's own objects.

struct Gate {
    p: Proxy,
    token: String,
    _clock: Arc<ManualClock>,
    _dir: tempfile::TempDir,
}

async fn gate(fw: &Framework) -> Gate {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate(Alg::ES256, "as-1").unwrap();
    let jwks = dir.path().join("as-jwks.json");
    std::fs::write(&jwks, key.jwks().to_string()).unwrap();
    let mut opts = Options::new(fw.addr);
    opts.policy = POLICY.to_string();
    let issuer = FileIssuer {
        clock_skew: Some(dur("10s")),
        ..file_issuer(ISS, AUD, &jwks)
    };
    opts.config.issuers.insert("as".into(), issuer);
    opts.config.dpop.public_base_url = Some(BASE.into());
    let clock = Arc::new(ManualClock::new(NOW));
    opts.clock = Some(clock.clone() as Arc<dyn Clock>);
    let p = Proxy::start(opts).await;
    let mut c = claims(json!({
        "scope": "accounts payments",
        "accounts": ["acc-a1"],
        "openbanking_intent_id": "pdc-a",
    }));
    c["cnf"] = json!({"x5t#S256": thumb("tpp1")});
    let token = key.access_token(&c);
    Gate {
        p,
        token,
        _clock: clock,
        _dir: dir,
    }
}

// ---------------------------------------------------------------------------------------------
// Cases.

#[derive(Clone, Debug)]
struct Case {
    name: String,
    method: &'static str,
    /// The request target exactly as written on the wire (raw bytes allowed).
    target: Vec<u8>,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn get(target: impl AsRef<[u8]>) -> Case {
    let target = target.as_ref().to_vec();
    Case {
        name: String::from_utf8_lossy(&target).to_string(),
        method: "GET",
        target,
        headers: Vec::new(),
        body: Vec::new(),
    }
}

fn post(target: &str, body: impl AsRef<[u8]>) -> Case {
    let body = body.as_ref().to_vec();
    Case {
        name: format!(
            "POST {target} {}",
            String::from_utf8_lossy(&body).escape_debug()
        ),
        method: "POST",
        target: target.as_bytes().to_vec(),
        headers: vec![("Content-Type".into(), "application/json".into())],
        body,
    }
}

impl Case {
    fn method(mut self, m: &'static str) -> Case {
        self.method = m;
        self.name = format!("{m} {}", self.name);
        self
    }
    fn header(mut self, k: &str, v: &str) -> Case {
        self.headers.push((k.into(), v.into()));
        self.name = format!("{} + {k}: {v}", self.name);
        self
    }
    fn named(mut self, n: &str) -> Case {
        self.name = n.into();
        self
    }
}

/// What happened to one case at one framework.
enum Verdict {
    /// The proxy refused it (status, reason) and the framework received nothing.
    Refused(u16, String),
    /// Forwarded; the framework parsed what the proxy authorized.
    Agreed(String),
    /// Forwarded; the framework (or its server) answered without running any app code.
    NotDispatched(u16),
    Mismatch(String),
}

fn percent_decode(s: &[u8]) -> String {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if s[i] == b'%' && i + 2 < s.len() {
            if let (Some(h), Some(l)) = (hex(s[i + 1]), hex(s[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(s[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).to_string()
}

/// The path parameters the proxy matched: the raw segments under the template's `{names}`.
fn proxy_params(template: &str, path: &[u8]) -> BTreeMap<String, String> {
    let t: Vec<&str> = template.split('/').collect();
    let p: Vec<&[u8]> = path.split(|b| *b == b'/').collect();
    let mut out = BTreeMap::new();
    if t.len() == p.len() {
        for (ts, ps) in t.iter().zip(p) {
            if let Some(name) = ts.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                out.insert(name.to_string(), percent_decode(ps));
            }
        }
    }
    out
}

/// Writes `bytes` on a fresh TLS connection as tpp1 and reads the answer until the proxy
/// closes (the request says `Connection: close`).
async fn send_raw(p: &Proxy, bytes: &[u8]) -> Result<Vec<u8>, String> {
    let mut tls = p.tls(Some("tpp1"), false).await?;
    tls.write_all(bytes).await.map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut out)).await;
    Ok(out)
}

/// The audit record of interaction `id` (`null` when none appears).
async fn record(g: &Gate, id: &str) -> Value {
    g.p.audit_where(1, |r| r["interaction_id"] == id)
        .await
        .into_iter()
        .next()
        .unwrap_or(Value::Null)
}

fn wire(c: &Case, token: &str, id: &str) -> Vec<u8> {
    let mut w = Vec::new();
    w.extend_from_slice(c.method.as_bytes());
    w.push(b' ');
    w.extend_from_slice(&c.target);
    w.extend_from_slice(b" HTTP/1.1\r\nHost: localhost\r\n");
    w.extend_from_slice(
        format!("Authorization: Bearer {token}\r\nX-Fapi-Interaction-Id: {id}\r\n").as_bytes(),
    );
    let mut connection = "close".to_string();
    for (k, v) in &c.headers {
        if k.eq_ignore_ascii_case("connection") {
            connection = format!("close, {v}");
        } else {
            w.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
        }
    }
    if !c.body.is_empty() || c.method == "POST" {
        w.extend_from_slice(format!("Content-Length: {}\r\n", c.body.len()).as_bytes());
    }
    w.extend_from_slice(format!("Connection: {connection}\r\n\r\n").as_bytes());
    w.extend_from_slice(&c.body);
    w
}

async fn run_case(g: &Gate, fw: &Framework, c: &Case) -> Verdict {
    let id = uuid::Uuid::new_v4().to_string();
    let out = match send_raw(&g.p, &wire(c, &g.token, &id)).await {
        Ok(o) => o,
        Err(e) => return Verdict::Mismatch(format!("could not send: {e}")),
    };
    let (status, headers, body, _) = parse_raw(&out);
    // The answer came after the framework's (or instead of it): what it saw is settled.
    let forwarded = seen(fw, &id).await > 0;
    let problem = headers
        .get("content-type")
        .is_some_and(|v| v.as_bytes() == b"application/problem+json");
    let echo: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let answer: Value = if problem { echo.clone() } else { Value::Null };
    if echo["framework"] != fw.name {
        if forwarded {
            return Verdict::Mismatch(format!(
                "the framework received it but the answer is not its echo: {status} {}",
                String::from_utf8_lossy(&body)
            ));
        }
        // The proxy's own refusal names its reason; nothing to wait for.
        if let Some(reason) = answer["reason"].as_str() {
            return Verdict::Refused(status, reason.to_string());
        }
        let rec = record(g, &id).await;
        // Forwarded (an `allow` record), and refused by the framework's server before any app
        // code ran.
        if rec["decision"] == "allow" {
            return Verdict::NotDispatched(status);
        }
        // Refused by the proxy's HTTP parser (no handler ran, so no record of this id) or with
        // an answer in another format (OBIE errors).
        let reason = rec["reason"]
            .as_str()
            .unwrap_or("http parser, no request record");
        return Verdict::Refused(status, reason.to_string());
    }
    if !forwarded {
        return Verdict::Mismatch("an echo answer, but the framework counted no request".into());
    }
    // What the proxy authorized.
    let rec = record(g, &id).await;
    let route_id = rec["route_id"].as_str().unwrap_or("?").to_string();
    let route = ROUTES.iter().find(|r| r.0 == route_id);
    // The path the proxy matched: the target before any query (and fragment, which hyper's URI
    // parser drops before the proxy sees the target).
    let raw_path = c
        .target
        .split(|b| *b == b'?' || *b == b'#')
        .next()
        .unwrap_or(&[]);
    let params = route.map_or_else(BTreeMap::new, |r| proxy_params(r.2, raw_path));
    let mut diffs = Vec::new();
    let handler = echo["handler"].as_str().unwrap_or("?");
    if handler != route_id {
        diffs.push(format!("handler {handler} (proxy route {route_id})"));
    }
    let method = echo["method"].as_str().unwrap_or("?");
    let want_method = route.map_or(c.method, |r| r.1);
    if method != want_method {
        diffs.push(format!("method {method} (proxy {want_method})"));
    }
    let path = echo["path"].as_str().unwrap_or("?");
    let proxy_path = percent_decode(raw_path);
    if percent_decode(path.as_bytes()) != proxy_path {
        diffs.push(format!("path {path} (proxy {proxy_path})"));
    }
    let mut bound = Vec::new();
    for i in echo["ids"].as_array().cloned().unwrap_or_default() {
        let (name, from, value) = (
            i["name"].as_str().unwrap_or("?"),
            i["from"].as_str().unwrap_or("?"),
            i["value"].as_str().unwrap_or("?"),
        );
        bound.push(format!("{from}:{name}={value}"));
        if from == "path" {
            if let Some(p) = params.get(name) {
                if p != value {
                    diffs.push(format!("{from} {name}={value:?} (proxy {name}={p:?})"));
                }
                continue;
            }
        }
        match granted(name) {
            Some(g) if g.contains(&value) => {}
            Some(g) => diffs.push(format!(
                "{from} {name}={value:?} (not granted: the token grants {g:?})"
            )),
            None => diffs.push(format!(
                "{from} {name}={value:?} (an id the proxy never matched)"
            )),
        }
    }
    let parsed = format!("{method} {path} -> {handler} [{}]", bound.join(", "));
    if diffs.is_empty() {
        Verdict::Agreed(parsed)
    } else {
        Verdict::Mismatch(format!("{}; framework parsed {parsed}", diffs.join("; ")))
    }
}

/// Runs a corpus against every framework (one proxy each, in parallel); prints a table of all
/// outcomes; fails listing every mismatch.
async fn corpus(category: &str, cases: Vec<Case>) {
    if skip() {
        eprintln!("differential_{category}: skipped (PORTCULLIS_SKIP_DIFFERENTIAL=1)");
        return;
    }
    let fws = tokio::task::spawn_blocking(frameworks).await.unwrap();
    let t = Instant::now();
    let runs = fws.iter().map(|fw| {
        let cases = &cases;
        async move {
            let g = gate(fw).await;
            let mut rows = Vec::new();
            for c in cases {
                let v = tokio::time::timeout(Duration::from_secs(30), run_case(&g, fw, c))
                    .await
                    .unwrap_or_else(|_| Verdict::Mismatch("timed out".into()));
                rows.push((fw.name, c.name.clone(), v));
            }
            rows
        }
    });
    let mut all = Vec::new();
    for rows in join_all(runs).await {
        all.extend(rows);
    }
    let mut table = String::new();
    let mut mismatches = Vec::new();
    let (mut refused, mut agreed, mut undispatched) = (0, 0, 0);
    for (fw, name, v) in &all {
        let (tag, text) = match v {
            Verdict::Refused(s, r) => {
                refused += 1;
                ("refused", format!("{s} {r}"))
            }
            Verdict::Agreed(p) => {
                agreed += 1;
                ("agreed", p.clone())
            }
            Verdict::NotDispatched(s) => {
                undispatched += 1;
                (
                    "not dispatched",
                    format!("the framework's server answered {s}"),
                )
            }
            Verdict::Mismatch(m) => {
                mismatches.push(format!("  {fw:<8} {name}\n           {m}"));
                ("MISMATCH", m.clone())
            }
        };
        table.push_str(&format!("{fw:<8} {tag:<15} {name}\n{:26}{text}\n", ""));
    }
    eprintln!(
        "differential_{category}: {} cases x {} frameworks in {:.1} s: {agreed} agreed, {refused} refused by the proxy, {undispatched} not dispatched by the framework, {} mismatches\n{table}",
        cases.len(),
        fws.len(),
        t.elapsed().as_secs_f64(),
        mismatches.len()
    );
    assert!(
        mismatches.is_empty(),
        "differential_{category}: {} mismatches (the framework parsed something other than what the proxy authorized):\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

/// Polls futures together on the test's runtime (no extra dependency).
async fn join_all<F: std::future::Future>(fs: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let handles: Vec<_> = fs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = handles.iter().map(|_| None).collect();
    let mut handles: Vec<Option<std::pin::Pin<Box<F>>>> = handles.into_iter().map(Some).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, h) in handles.iter_mut().enumerate() {
            if let Some(f) = h {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        out[i] = Some(v);
                        *h = None;
                    }
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(Option::unwrap).collect()
}

// ---------------------------------------------------------------------------------------------
// The corpora.

fn path_corpus() -> Vec<Case> {
    let mut v: Vec<Case> = [
        // Baselines: the caller's own account, and another's.
        "/accounts/acc-a1",
        "/accounts/acc-b1",
        "/payments/p1/details",
        "/consents/pdc-a",
        // Path parameters (`;`): servlet containers strip them before resolving dot segments.
        "/payments/..;/details",
        "/payments/.;/details",
        "/payments/..;a=b/details",
        "/payments/p1;jsessionid=x/details",
        "/payments/p1;/details",
        "/payments/;/details",
        "/payments/;x=/details",
        "/accounts/acc-a1;jsessionid=x",
        "/accounts/acc-b1;x=acc-a1",
        "/consents/pdc-a;v=1",
        "/payments;x/p1/details",
        "/payments/p1/details;x=y",
        "/accounts/acc-a1%3Bx",
        "/payments/p1%3B/details",
        "/payments/%3B/details",
        // Dot segments, raw and encoded.
        "/accounts/./acc-a1",
        "/accounts/acc-b1/../acc-a1",
        "/payments/%2e%2e/details",
        "/payments/%2E%2E/details",
        "/payments/.%2E/details",
        "/payments/%2e%2e;/details",
        "/accounts/acc-a1%2F..%2Facc-b1",
        "/accounts/acc-a1%2f..%2facc-b1",
        "/payments/p1%2Fdetails",
        // Empty segments, trailing slash and dot.
        "//accounts/acc-a1",
        "/accounts//acc-a1",
        "/accounts/acc-a1/",
        "/accounts/acc-a1.",
        "/payments/p1./details",
        "/payments/p1/details.",
        "/payments/p1/details.json",
        // Backslash, raw and encoded.
        "/accounts\\acc-a1",
        "/payments/p1\\..\\/details",
        "/payments/p1%5C..%5C/details",
        // Overlong UTF-8 and Unicode look-alikes.
        "/payments/%C0%AE%C0%AE/details",
        "/payments/%EF%BC%8E%EF%BC%8E/details",
        "/accounts/acc-a1%C0%AF..%C0%AFacc-b1",
        // Case variants and other encodings of the id or the route.
        "/ACCOUNTS/acc-b1",
        "/Accounts/acc-a1",
        "/accounts/ACC-A1",
        "/accounts/acc%2Da1",
        "/accounts/acc-a1%20",
        "/accounts/acc-a1+",
        "/payments/p1+p2/details",
        "/payments/p%201/details",
        "/accounts/acc-a1%00",
        "/accounts/acc-a1#x",
    ]
    .iter()
    .map(get)
    .collect();
    v.push(
        get(b"/payments/\xc3\xa9/details".as_slice())
            .named("/payments/<raw UTF-8 e-acute>/details"),
    );
    v.push(
        get(b"/payments/\xc0\xae\xc0\xae/details".as_slice())
            .named("/payments/<raw overlong ..>/details"),
    );
    v
}

fn query_corpus() -> Vec<Case> {
    let mut v: Vec<Case> = [
        "/accounts?accountId=acc-a1",
        "/accounts?accountId=acc-b1",
        // Case twins (ASP.NET Core and case-insensitive binders merge them).
        "/accounts?accountid=acc-b1&accountId=acc-a1",
        "/accounts?accountId=acc-a1&accountid=acc-b1",
        "/accounts?AccountId=acc-b1&accountId=acc-a1",
        "/accounts?ACCOUNTID=acc-b1&accountId=acc-a1",
        "/accounts?AccountId=acc-b1",
        // Duplicates.
        "/accounts?accountId=acc-a1&accountId=acc-b1",
        "/accounts?accountId=acc-b1&accountId=acc-a1",
        "/accounts?accountId=acc-a1&accountId",
        "/accounts?accountId=acc-a1&accountId=",
        // Array and object syntax (qs, PHP, Rails).
        "/accounts?accountId[]=acc-b1&accountId=acc-a1",
        "/accounts?accountId=acc-a1&accountId[]=acc-b1",
        "/accounts?accountId[0]=acc-b1&accountId=acc-a1",
        "/accounts?accountId%5B%5D=acc-b1&accountId=acc-a1",
        "/accounts?accountId.x=acc-b1&accountId=acc-a1",
        // Percent-encoded names.
        "/accounts?%61ccountId=acc-b1",
        "/accounts?accountId=acc-a1&%61ccountId=acc-b1",
        "/accounts?account%49d=acc-b1&accountId=acc-a1",
        "/accounts?accountId=acc-a1&access%5Ftoken=x",
        "/accounts?accountId=acc-a1&%61ccess_token=x",
        "/accounts?accountId=acc-a1&access_token=x",
        // Encodings of the value, `+` and `%20`.
        "/accounts?accountId=acc%2Da1",
        "/accounts?accountId=acc-a1+",
        "/accounts?accountId=acc-a1%20",
        "/accounts?accountId+=acc-b1&accountId=acc-a1",
        "/accounts?accountId%20=acc-b1&accountId=acc-a1",
        "/accounts?+accountId=acc-b1&accountId=acc-a1",
        "/accounts?accountId=acc-a1%00",
        "/accounts?accountId=acc-b1%26accountId%3Dacc-a1",
        // Other separators.
        "/accounts?accountId=acc-a1;accountId=acc-b1",
        "/accounts?accountId=acc-a1?accountId=acc-b1",
        "/accounts?accountId=acc-a1&&accountId=acc-b1",
        // Method override in the query (Rails, Laravel, Spring's HiddenHttpMethodFilter,
        // Express's method-override): it acts on POST.
        "/accounts?accountId=acc-a1&_method=DELETE",
        "/accounts/acc-a1?_method=DELETE",
    ]
    .iter()
    .map(get)
    .collect();
    let pay = br#"{"Data":{"ConsentId":"pdc-a"}}"#;
    for q in [
        "/payments?_method=DELETE",
        "/payments?_method=delete",
        "/payments?_METHOD=DELETE",
        "/payments?%5Fmethod=DELETE",
        "/payments?_method=PUT",
    ] {
        v.push(post(q, pay));
    }
    v.push(get("/accounts/acc-a1?_method=DELETE").method("POST"));
    v
}

fn body_corpus() -> Vec<Case> {
    let mut v: Vec<Case> = [
        r#"{"Data":{"ConsentId":"pdc-a"}}"#,
        r#"{"Data":{"ConsentId":"pdc-b"}}"#,
        // Case twins, at each level.
        r#"{"Data":{"ConsentId":"pdc-a","consentId":"pdc-b"}}"#,
        r#"{"Data":{"consentId":"pdc-b","ConsentId":"pdc-a"}}"#,
        r#"{"Data":{"ConsentId":"pdc-a","CONSENTID":"pdc-b"}}"#,
        r#"{"Data":{"ConsentId":"pdc-a"},"data":{"ConsentId":"pdc-b"}}"#,
        r#"{"data":{"ConsentId":"pdc-b"},"Data":{"ConsentId":"pdc-a"}}"#,
        r#"{"Data":{"ConsentId":"pdc-a"},"DATA":{"consentid":"pdc-b"}}"#,
        r#"{"Data":{"ConsentId":"pdc-a"},"data":{"consentId":"pdc-b"}}"#,
        r#"{"data":{"consentId":"pdc-b"}}"#,
        // Duplicate members.
        r#"{"Data":{"ConsentId":"pdc-a","ConsentId":"pdc-b"}}"#,
        r#"{"Data":{"ConsentId":"pdc-b","ConsentId":"pdc-a"}}"#,
        r#"{"Data":{"ConsentId":"pdc-a"},"Data":{"ConsentId":"pdc-b"}}"#,
        // Escaped keys.
        r#"{"Data":{"\u0043onsentId":"pdc-b","ConsentId":"pdc-a"}}"#,
        r#"{"Data":{"ConsentId":"pdc-a","\u0063onsentId":"pdc-b"}}"#,
        r#"{"\u0044ata":{"ConsentId":"pdc-a"}}"#,
        r#"{"Data":{"ConsentId":"pdc-a"},"\u0064ata":{"ConsentId":"pdc-b"}}"#,
        r#"{"Data":{"ConsentId":"pdc\u002da"}}"#,
        // Other shapes.
        r#"{"Data":{"ConsentId":["pdc-a"]}}"#,
        r#"{"Data":{"ConsentId":"pdc-a"}} {"Data":{"ConsentId":"pdc-b"}}"#,
        r#"{"Data":{"ConsentId":"pdc-a",}}"#,
        r#"{"Data":{"ConsentId":"pdc-a"/*x*/}}"#,
        r#"{"Data":{"ConsentId":"pdc-a\u0000"}}"#,
        r#"{"Data":{"ConsentId":"pdc-a","ConsentId ":"pdc-b"}}"#,
    ]
    .iter()
    .map(|b| post("/payments", b))
    .collect();
    // A byte order mark before the document.
    for b in [
        r#"{"Data":{"ConsentId":"pdc-a"}}"#,
        r#"{"Data":{"ConsentId":"pdc-b"}}"#,
    ] {
        let mut bytes = b"\xef\xbb\xbf".to_vec();
        bytes.extend_from_slice(b.as_bytes());
        v.push(post("/payments", bytes).named(&format!("POST /payments <BOM>{b}")));
    }
    // Not declared as JSON, read as JSON anyway by a lenient app.
    let mut c = post(
        "/payments",
        r#"{"Data":{"ConsentId":"pdc-a","consentId":"pdc-b"}}"#,
    );
    c.headers = vec![("Content-Type".into(), "text/plain".into())];
    v.push(c.named("POST /payments (text/plain) case twins"));
    v
}

fn header_corpus() -> Vec<Case> {
    let pay = || post("/payments", br#"{"Data":{"ConsentId":"pdc-a"}}"#);
    let mut v = vec![
        get("/statements").header("X-Account-Id", "acc-a1"),
        get("/statements").header("X-Account-Id", "acc-b1"),
        get("/statements")
            .header("X-Account-Id", "acc-a1")
            .header("X-Account-Id", "acc-b1"),
        get("/statements").header("X-Account-Id", "acc-a1, acc-b1"),
        get("/statements")
            .header("X-Account-Id", "acc-a1")
            .header("X_Account_Id", "acc-b1"),
        get("/statements")
            .header("X-Account-Id", "acc-a1")
            .header("Connection", "X-Account-Id"),
        get("/statements").header("X-ACCOUNT-ID", "acc-a1"),
    ];
    for h in [
        "X-HTTP-Method-Override",
        "X-HTTP-Method",
        "X-Method-Override",
        "X-Original-Method",
    ] {
        v.push(pay().header(h, "DELETE"));
        v.push(get("/accounts/acc-a1").header(h, "DELETE"));
    }
    v.push(pay().header("x-http-method-override", "delete"));
    v.push(
        pay()
            .header("X-HTTP-Method-Override", "DELETE")
            .header("Connection", "X-HTTP-Method-Override"),
    );
    for h in ["X-Original-URL", "X-Rewrite-URL"] {
        v.push(get("/accounts/acc-a1").header(h, "/accounts/acc-b1"));
        v.push(get("/payments/p1/details").header(h, "/details"));
    }
    v.push(get("/accounts/acc-a1").header("X-Forwarded-Prefix", "/accounts/acc-b1"));
    v.push(get("/accounts/acc-a1").header("Connection", "Authorization"));
    v
}

#[tokio::test]
async fn differential_path() {
    corpus("path", path_corpus()).await;
}

#[tokio::test]
async fn differential_query() {
    corpus("query", query_corpus()).await;
}

#[tokio::test]
async fn differential_body() {
    corpus("body", body_corpus()).await;
}

#[tokio::test]
async fn differential_headers() {
    corpus("headers", header_corpus()).await;
}
