//! `portcullis audit report`: who called what, per client, from an audit log.
//!
//! A client is the triple (certificate thumbprint, organization id, OAuth client id); any part
//! may be absent (`-`): a route with optional mTLS, or a token stage that has not run. For each
//! client: routes used (allowed and refused counts), scopes granted (from tokens) against scopes
//! used (required by the routes it was allowed on), refusals by reason, first and last seen, and
//! the certificate's notAfter. With the policy (`--config` or `--policy`), routes that no request
//! matched are listed too (zombie candidates), and each client's OpenAPI operations. Failed
//! handshakes are counted by category.
//!
//! The API inventory: requests to paths (or methods) no route declares, grouped by shape — the
//! segments that look like identifiers, or that vary under one prefix, become `{id}`
//! (`/accounts/{id}/statements-v2`) — with the clients that sent them; per route, the answers that
//! drifted from the route's OpenAPI contract (`contract.response` in the record). With
//! descriptions (`--spec`), the operations no route declares and the routes no description does
//! (computed by the caller, which reads OpenAPI, into [`SpecComparison`]).
//!
//! The report reads records; it does not check them — run `audit verify` for that. Lines that
//! are not JSON are counted and skipped, and so is a line longer than [`MAX_LINE`] (no record
//! is that long), without holding it in memory.
//!
//! A request record that names its connection (`"conn":N`) is read with the members of that
//! connection's record in the same file ([`crate::resolve`]), so the report is the same as for
//! a log written with the facts inline; `connection` records themselves are not counted.
//!
//! Input is streamed: [`Builder::read`] takes any `BufRead` a line at a time, so memory grows
//! with the number of distinct clients, routes and reasons (and the connections of one file), not
//! with the number of records.
//! [`Report::html`] renders the same inventory as one self-contained page.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Write as _};
use std::io::BufRead;

use portcullis_base::html::{escape, page, unix_days, utc};

use serde::Serialize;

/// Route use by one client.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RouteUse {
    pub allowed: u64,
    pub refused: u64,
}

/// Everything the log says about one client.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ClientReport {
    pub thumbprint: Option<String>,
    pub org_id: Option<String>,
    pub client_id: Option<String>,
    pub subject: Option<String>,
    pub requests: u64,
    pub routes: BTreeMap<String, RouteUse>,
    pub scopes_granted: BTreeSet<String>,
    pub scopes_used: BTreeSet<String>,
    /// Granted but never needed: candidates for a narrower grant.
    pub scopes_unused: BTreeSet<String>,
    pub refusals: BTreeMap<String, u64>,
    /// The OpenAPI operations of the routes it called (with the policy, for routes that name
    /// one in their contract).
    #[serde(skip_serializing_if = "BTreeSet::is_empty")]
    pub operations: BTreeSet<String>,
    pub first_seen: Option<String>,
    pub last_seen: Option<String>,
    pub cert_not_after: Option<String>,
}

/// The whole report.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    pub records: u64,
    pub requests: u64,
    pub unreadable_lines: u64,
    pub clients: Vec<ClientReport>,
    pub handshake_failures: BTreeMap<String, u64>,
    /// Policy routes no request matched; `None` without a policy.
    pub routes_never_called: Option<Vec<String>>,
    /// Behavioural alerts (`kind: alert`) by subject and detector; absent when there are none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub alerts: Vec<AlertSummary>,
    /// Requests no route declares, by method and path shape, most requests first.
    pub undeclared: Vec<UndeclaredShape>,
    /// Distinct undeclared paths past [`MAX_UNDECLARED_PATHS`], counted but not shaped.
    #[serde(skip_serializing_if = "is_zero")]
    pub undeclared_overflow: u64,
    /// Per route with a contract that checks answers: how the upstream's answers fared.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub response_drift: BTreeMap<String, DriftSummary>,
    /// The policy against OpenAPI descriptions (`--spec`); `None` without one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spec: Option<SpecComparison>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Requests to one shape of undeclared path.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct UndeclaredShape {
    pub method: String,
    /// The path with identifier-like segments replaced by `{id}`.
    pub shape: String,
    pub requests: u64,
    /// How many distinct paths fell into the shape.
    pub paths: u64,
    /// Refusal reasons (`route.not_found`, `route.method_not_allowed`).
    pub reasons: BTreeSet<String>,
    /// Requests by client (the label the text report uses).
    pub clients: BTreeMap<String, u64>,
}

/// How one route's upstream answers fared against its contract.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DriftSummary {
    pub checked: u64,
    pub invalid: u64,
    pub unchecked: u64,
    /// Invalid answers by failed keyword (`status` for an undeclared status).
    pub keywords: BTreeMap<String, u64>,
    /// Unchecked answers by why.
    pub why_unchecked: BTreeMap<String, u64>,
}

/// The policy's routes against OpenAPI descriptions.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SpecComparison {
    pub specs: Vec<SpecDiff>,
    /// Policy routes no description declares (method and template), by id.
    pub routes_not_in_specs: Vec<String>,
}

/// One description against the policy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SpecDiff {
    pub file: String,
    pub operations: u64,
    /// Operations no policy route declares: `operationId (METHOD /path)`.
    pub operations_without_route: Vec<String>,
}

/// A policy route, as the report needs it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyRoute {
    pub id: String,
    /// The OpenAPI operation its contract names.
    pub operation: Option<String>,
}

/// The most distinct undeclared paths kept for shaping: a scan of random paths must not grow
/// the report without bound. Paths past it are counted in `undeclared_overflow`.
pub const MAX_UNDECLARED_PATHS: usize = 50_000;

/// The alerts one detector raised about one subject.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AlertSummary {
    /// `cert:<thumbprint>`, `client:<id>` or `peer:<address>`.
    pub subject: String,
    pub detector: String,
    pub alerts: u64,
    /// How many of them quarantined the subject.
    pub quarantines: u64,
    pub client_id: Option<String>,
    /// Reason codes that fired them.
    pub reasons: BTreeSet<String>,
    pub first: Option<String>,
    pub last: Option<String>,
}

type Key = (Option<String>, Option<String>, Option<String>);

fn s(v: &serde_json::Value, k: &str) -> Option<String> {
    v.get(k).and_then(|x| x.as_str()).map(str::to_string)
}

fn strings(v: &serde_json::Value, k: &str) -> Vec<String> {
    v.get(k)
        .and_then(|x| x.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Longest line read as a record, in bytes. A record's attacker-controlled fields are bounded
/// (512 bytes each), so real records are far shorter; a longer line is not one of ours.
pub const MAX_LINE: usize = 1 << 20;

/// Builds the report from log contents (in any order); `policy_routes` are the route ids of
/// the configured policy, when known.
pub fn build(logs: &[&[u8]], policy_routes: Option<&[String]>) -> Report {
    let mut b = Builder::default();
    for data in logs {
        b.conns.new_file();
        for line in data.split(|&b| b == b'\n') {
            b.line(line);
        }
    }
    b.finish(policy_routes)
}

/// The report, built a record at a time.
#[derive(Default)]
pub struct Builder {
    r: Report,
    clients: BTreeMap<Key, ClientReport>,
    called: BTreeSet<String>,
    alerts: BTreeMap<(String, String), AlertSummary>,
    conns: crate::resolve::Connections,
    /// Undeclared requests by (method, path): count, reasons, clients.
    undeclared: BTreeMap<(String, String), Undeclared>,
}

#[derive(Default)]
struct Undeclared {
    requests: u64,
    reasons: BTreeSet<String>,
    clients: BTreeMap<String, u64>,
}

impl Builder {
    /// Reads `input` to its end a line at a time (logs in any order, one call per file).
    pub fn read<R: BufRead>(&mut self, mut input: R) -> std::io::Result<()> {
        // A request's connection record is in the same file.
        self.conns.new_file();
        let mut buf = Vec::new();
        loop {
            buf.clear();
            let n = std::io::Read::take(input.by_ref(), MAX_LINE as u64 + 1)
                .read_until(b'\n', &mut buf)?;
            if n == 0 {
                return Ok(());
            }
            if buf.len() > MAX_LINE && buf.last() != Some(&b'\n') {
                // Too long to be a record: skip the rest of it without keeping it.
                self.r.unreadable_lines += 1;
                skip_line(&mut input)?;
                continue;
            }
            self.line(&buf);
        }
    }

    /// One line of a log (its newline, if any, included or not).
    pub fn line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return;
        }
        let r = &mut self.r;
        let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(line) else {
            r.unreadable_lines += 1;
            return;
        };
        if self.conns.observe(&v) {
            return;
        }
        // A dangling reference leaves the request without its connection's facts; `audit
        // verify` is what says so.
        let _ = self.conns.inline(&mut v);
        r.records += 1;
        match v.get("kind").and_then(|k| k.as_str()) {
            Some("tls_handshake") => {
                let f = s(&v, "failure").unwrap_or_else(|| "unknown".into());
                *r.handshake_failures.entry(f).or_default() += 1;
            }
            Some("request") => {
                r.requests += 1;
                let key = (
                    s(&v, "client_cert_thumbprint"),
                    s(&v, "client_org_id"),
                    s(&v, "client_id"),
                );
                let c = self
                    .clients
                    .entry(key.clone())
                    .or_insert_with(|| ClientReport {
                        thumbprint: key.0,
                        org_id: key.1,
                        client_id: key.2,
                        ..ClientReport::default()
                    });
                add(c, &v, &mut self.called);
                let label = c.label();
                self.inventory(&v, label);
            }
            Some("alert") => {
                let key = (
                    s(&v, "subject").unwrap_or_else(|| "-".into()),
                    s(&v, "detector").unwrap_or_else(|| "-".into()),
                );
                let a = self
                    .alerts
                    .entry(key.clone())
                    .or_insert_with(|| AlertSummary {
                        subject: key.0,
                        detector: key.1,
                        ..AlertSummary::default()
                    });
                a.alerts += 1;
                if s(&v, "action").as_deref() == Some("quarantine") {
                    a.quarantines += 1;
                }
                if a.client_id.is_none() {
                    a.client_id = s(&v, "client_id");
                }
                if let Some(r) = s(&v, "reason") {
                    a.reasons.insert(r);
                }
                if let Some(t) = s(&v, "time") {
                    if a.first.as_ref().is_none_or(|f| t < *f) {
                        a.first = Some(t.clone());
                    }
                    if a.last.as_ref().is_none_or(|l| t > *l) {
                        a.last = Some(t);
                    }
                }
            }
            _ => {}
        }
    }

    /// What a request record adds to the inventory: an undeclared path, or an answer's check.
    fn inventory(&mut self, v: &serde_json::Value, client: String) {
        let reason = v.get("reason").and_then(|x| x.as_str());
        if let Some(reason @ ("route.not_found" | "route.method_not_allowed")) = reason {
            let key = (
                s(v, "method").unwrap_or_else(|| "-".into()),
                s(v, "path").unwrap_or_default(),
            );
            let known = self.undeclared.contains_key(&key);
            if !known && self.undeclared.len() >= MAX_UNDECLARED_PATHS {
                self.r.undeclared_overflow += 1;
            } else {
                let u = self.undeclared.entry(key).or_default();
                u.requests += 1;
                u.reasons.insert(reason.to_string());
                *u.clients.entry(client).or_default() += 1;
            }
        }
        let (Some(route), Some(answer)) = (s(v, "route_id"), v.pointer("/contract/response"))
        else {
            return;
        };
        let d = self.r.response_drift.entry(route).or_default();
        match answer.get("result").and_then(|x| x.as_str()) {
            Some("ok") => d.checked += 1,
            Some("invalid") => {
                d.checked += 1;
                d.invalid += 1;
                let k = s(answer, "keyword").unwrap_or_else(|| "-".into());
                *d.keywords.entry(k).or_default() += 1;
            }
            _ => {
                d.unchecked += 1;
                let w = s(answer, "why").unwrap_or_else(|| "-".into());
                *d.why_unchecked.entry(w).or_default() += 1;
            }
        }
    }

    /// The report; `policy_routes` are the route ids of the configured policy, when known.
    pub fn finish(self, policy_routes: Option<&[String]>) -> Report {
        let routes: Option<Vec<PolicyRoute>> = policy_routes.map(|ids| {
            ids.iter()
                .map(|id| PolicyRoute {
                    id: id.clone(),
                    operation: None,
                })
                .collect()
        });
        self.finish_with(routes.as_deref())
    }

    /// The report; `policy_routes` are the routes of the policy, when known (with the
    /// operations their contracts name).
    pub fn finish_with(self, policy_routes: Option<&[PolicyRoute]>) -> Report {
        let Builder {
            mut r,
            mut clients,
            called,
            alerts,
            conns: _,
            undeclared,
        } = self;
        r.undeclared = shapes(undeclared);
        if let Some(routes) = policy_routes {
            let ops: BTreeMap<&str, &str> = routes
                .iter()
                .filter_map(|p| Some((p.id.as_str(), p.operation.as_deref()?)))
                .collect();
            for c in clients.values_mut() {
                c.operations = c
                    .routes
                    .keys()
                    .filter_map(|id| ops.get(id.as_str()).map(|o| o.to_string()))
                    .collect();
            }
        }
        r.alerts = alerts.into_values().collect();
        for c in clients.values_mut() {
            c.scopes_unused = c
                .scopes_granted
                .difference(&c.scopes_used)
                .cloned()
                .collect();
        }
        r.clients = clients.into_values().collect();
        r.routes_never_called = policy_routes.map(|routes| {
            routes
                .iter()
                .filter(|p| !called.contains(&p.id))
                .map(|p| p.id.clone())
                .collect()
        });
        r
    }
}

/// How many distinct values one position may take under one prefix before it is read as an
/// identifier (`/accounts/acc-1`, `/accounts/acc-2`, `/accounts/acc-3`).
const VARYING: usize = 3;

/// Whether a path segment looks like an identifier on its own: digits, a UUID, a long hex
/// string, or a long token of letters and digits (base64url and the like).
fn looks_like_id(seg: &str) -> bool {
    let b = seg.as_bytes();
    if b.is_empty() {
        return false;
    }
    let digits = b.iter().filter(|c| c.is_ascii_digit()).count();
    if digits == b.len() {
        return true;
    }
    let uuid = b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        });
    if uuid {
        return true;
    }
    if b.len() >= 8 && digits > 0 && b.iter().all(u8::is_ascii_hexdigit) {
        return true;
    }
    let letters = b.iter().filter(|c| c.is_ascii_alphabetic()).count();
    b.len() >= 16
        && digits > 0
        && letters > 0
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"-_=+.~%".contains(c))
}

/// Groups undeclared (method, path) pairs by shape: each segment that looks like an id becomes
/// `{id}`, and then, position by position, a segment holding at least [`VARYING`] distinct
/// values with digits under one prefix (identifiers a bank made up, `acc-1`, `acc-2`, ...).
fn shapes(paths: BTreeMap<(String, String), Undeclared>) -> Vec<UndeclaredShape> {
    const ID: &str = "{id}";
    let mut rows: Vec<(String, Vec<String>, Undeclared)> = paths
        .into_iter()
        .map(|((method, path), u)| {
            let segs = path
                .split('/')
                .map(|seg| {
                    if looks_like_id(seg) {
                        ID.to_string()
                    } else {
                        seg.to_string()
                    }
                })
                .collect();
            (method, segs, u)
        })
        .collect();
    let depth = rows.iter().map(|r| r.1.len()).max().unwrap_or(0);
    for i in 1..depth {
        let mut values: BTreeMap<(&str, &[String]), BTreeSet<&str>> = BTreeMap::new();
        for (m, segs, _) in &rows {
            if let Some(v) = segs.get(i) {
                if v != ID && v.bytes().any(|c| c.is_ascii_digit()) {
                    values
                        .entry((m.as_str(), &segs[..i]))
                        .or_default()
                        .insert(v.as_str());
                }
            }
        }
        let varying: BTreeSet<(String, Vec<String>)> = values
            .into_iter()
            .filter(|(_, v)| v.len() >= VARYING)
            .map(|((m, prefix), _)| (m.to_string(), prefix.to_vec()))
            .collect();
        for (m, segs, _) in &mut rows {
            let digit = segs
                .get(i)
                .is_some_and(|v| v.bytes().any(|c| c.is_ascii_digit()));
            if digit && varying.contains(&(m.clone(), segs[..i].to_vec())) {
                segs[i] = ID.to_string();
            }
        }
    }
    let mut grouped: BTreeMap<(String, String), UndeclaredShape> = BTreeMap::new();
    for (method, segs, u) in rows {
        let shape = segs.join("/");
        let g = grouped
            .entry((method.clone(), shape.clone()))
            .or_insert_with(|| UndeclaredShape {
                method,
                shape,
                ..UndeclaredShape::default()
            });
        g.requests += u.requests;
        g.paths += 1;
        g.reasons.extend(u.reasons);
        for (c, n) in u.clients {
            *g.clients.entry(c).or_default() += n;
        }
    }
    let mut out: Vec<UndeclaredShape> = grouped.into_values().collect();
    out.sort_by(|a, b| b.requests.cmp(&a.requests).then(a.shape.cmp(&b.shape)));
    out
}

/// Consumes `input` up to and including the next newline.
fn skip_line<R: BufRead>(input: &mut R) -> std::io::Result<()> {
    loop {
        let (done, used) = {
            let buf = input.fill_buf()?;
            if buf.is_empty() {
                return Ok(());
            }
            match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (true, i + 1),
                None => (false, buf.len()),
            }
        };
        input.consume(used);
        if done {
            return Ok(());
        }
    }
}

fn add(c: &mut ClientReport, v: &serde_json::Value, called: &mut BTreeSet<String>) {
    c.requests += 1;
    if c.subject.is_none() {
        c.subject = s(v, "client_subject");
    }
    let allowed = v.get("decision").and_then(|d| d.as_str()) == Some("allow");
    if let Some(route) = s(v, "route_id") {
        called.insert(route.clone());
        let u = c.routes.entry(route).or_default();
        if allowed {
            u.allowed += 1;
        } else {
            u.refused += 1;
        }
    }
    c.scopes_granted.extend(strings(v, "scopes"));
    if allowed {
        c.scopes_used.extend(strings(v, "scopes_required"));
    } else {
        let reason = s(v, "reason").unwrap_or_else(|| "unknown".into());
        *c.refusals.entry(reason).or_default() += 1;
    }
    if let Some(t) = s(v, "time") {
        // RFC 3339 UTC timestamps from one writer compare as strings.
        if c.first_seen.as_ref().is_none_or(|f| t < *f) {
            c.first_seen = Some(t.clone());
        }
        if c.last_seen.as_ref().is_none_or(|l| t > *l) {
            c.last_seen = Some(t);
        }
    }
    if let Some(n) = s(v, "client_cert_not_after") {
        c.cert_not_after = Some(n);
    }
}

/// `a=2 b=1`, or `-`.
fn counts(m: &BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        return "-".into();
    }
    m.iter()
        .map(|(k, n)| format!("{k}={n}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn opt(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("-")
}

fn list<'a>(items: impl IntoIterator<Item = &'a String>) -> String {
    let v: Vec<&str> = items.into_iter().map(String::as_str).collect();
    if v.is_empty() {
        "-".into()
    } else {
        v.join(" ")
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} record(s), {} request(s), {} client(s){}",
            self.records,
            self.requests,
            self.clients.len(),
            if self.unreadable_lines > 0 {
                format!(", {} unreadable line(s) skipped", self.unreadable_lines)
            } else {
                String::new()
            }
        )?;
        for c in &self.clients {
            writeln!(f)?;
            writeln!(
                f,
                "client  thumbprint {}  org {}  client_id {}",
                opt(&c.thumbprint),
                opt(&c.org_id),
                opt(&c.client_id)
            )?;
            if let Some(subject) = &c.subject {
                writeln!(f, "  subject      {subject}")?;
            }
            writeln!(
                f,
                "  seen         {} .. {}  ({} request(s))",
                opt(&c.first_seen),
                opt(&c.last_seen),
                c.requests
            )?;
            writeln!(f, "  cert expiry  {}", opt(&c.cert_not_after))?;
            writeln!(
                f,
                "  routes       {:<40} {:>8} {:>8}",
                "", "allowed", "refused"
            )?;
            for (route, u) in &c.routes {
                writeln!(f, "    {route:<50} {:>8} {:>8}", u.allowed, u.refused)?;
            }
            writeln!(f, "  scopes       granted {}", list(&c.scopes_granted))?;
            writeln!(f, "               used    {}", list(&c.scopes_used))?;
            writeln!(f, "               unused  {}", list(&c.scopes_unused))?;
            let mut refusals = String::new();
            for (reason, n) in &c.refusals {
                let _ = write!(refusals, "{reason}={n} ");
            }
            writeln!(
                f,
                "  refusals     {}",
                if refusals.is_empty() {
                    "-"
                } else {
                    refusals.trim_end()
                }
            )?;
            if !c.operations.is_empty() {
                writeln!(f, "  operations   {}", list(&c.operations))?;
            }
        }
        if !self.undeclared.is_empty() {
            writeln!(f)?;
            writeln!(
                f,
                "undeclared requests  {:<56} {:>8} {:>6}  clients",
                "method and path shape", "requests", "paths"
            )?;
            for u in &self.undeclared {
                writeln!(
                    f,
                    "  {:<75} {:>8} {:>6}  {}",
                    format!("{} {}", u.method, u.shape),
                    u.requests,
                    u.paths,
                    counts(&u.clients)
                )?;
            }
            if self.undeclared_overflow > 0 {
                writeln!(
                    f,
                    "  ({} more request(s) to paths past the first {MAX_UNDECLARED_PATHS}, not shaped)",
                    self.undeclared_overflow
                )?;
            }
        }
        if !self.response_drift.is_empty() {
            writeln!(f)?;
            writeln!(
                f,
                "response drift  {:<50} {:>8} {:>8} {:>9}  keywords",
                "route", "checked", "invalid", "unchecked"
            )?;
            for (route, d) in &self.response_drift {
                writeln!(
                    f,
                    "  {route:<63} {:>8} {:>8} {:>9}  {}",
                    d.checked,
                    d.invalid,
                    d.unchecked,
                    counts(&d.keywords)
                )?;
            }
        }
        if let Some(spec) = &self.spec {
            writeln!(f)?;
            for d in &spec.specs {
                writeln!(
                    f,
                    "spec {}  {} operation(s), {} without a route",
                    d.file,
                    d.operations,
                    d.operations_without_route.len()
                )?;
                for o in &d.operations_without_route {
                    writeln!(f, "  no route     {o}")?;
                }
            }
            writeln!(
                f,
                "routes in no description  {}",
                list(&spec.routes_not_in_specs)
            )?;
        }
        if !self.handshake_failures.is_empty() {
            writeln!(f)?;
            let mut line = String::new();
            for (cat, n) in &self.handshake_failures {
                let _ = write!(line, "{cat}={n} ");
            }
            writeln!(f, "failed handshakes  {}", line.trim_end())?;
        }
        if !self.alerts.is_empty() {
            writeln!(f)?;
            writeln!(
                f,
                "alerts  {:<60} {:<18} {:>6} {:>11}  client_id",
                "subject", "detector", "alerts", "quarantines"
            )?;
            for a in &self.alerts {
                writeln!(
                    f,
                    "  {:<66} {:<18} {:>6} {:>11}  {}  ({} .. {}; {})",
                    a.subject,
                    a.detector,
                    a.alerts,
                    a.quarantines,
                    opt(&a.client_id),
                    opt(&a.first),
                    opt(&a.last),
                    list(&a.reasons)
                )?;
            }
        }
        match &self.routes_never_called {
            Some(r) => {
                writeln!(f)?;
                writeln!(f, "routes never called  {}", list(r))
            }
            None => {
                writeln!(f)?;
                writeln!(
                    f,
                    "routes never called  (give --config or --policy to compare with the policy)"
                )
            }
        }
    }
}

/// A certificate's notAfter against `today` (days since the Unix epoch).
fn expiry(not_after: Option<&str>, today: i64) -> (i64, String) {
    let Some(n) = not_after else {
        return (
            i64::MAX,
            "<span class=\"muted\">no certificate</span>".into(),
        );
    };
    match unix_days(n) {
        Some(d) if d < today => (
            d,
            format!("{} <span class=\"fail\">expired</span>", escape(n)),
        ),
        Some(d) if d - today <= 30 => (
            d,
            format!(
                "{} <span class=\"warn\">in {} day(s)</span>",
                escape(n),
                d - today
            ),
        ),
        Some(d) => (
            d,
            format!(
                "{} <span class=\"muted\">in {} days</span>",
                escape(n),
                d - today
            ),
        ),
        None => (i64::MAX - 1, escape(n)),
    }
}

fn cell(v: &Option<String>) -> String {
    v.as_deref().map_or_else(|| "-".into(), escape)
}

fn names<'a>(items: impl IntoIterator<Item = &'a String>) -> String {
    let v: Vec<String> = items.into_iter().map(|s| escape(s)).collect();
    if v.is_empty() {
        "-".into()
    } else {
        v.join(", ")
    }
}

impl ClientReport {
    fn label(&self) -> String {
        match (&self.org_id, &self.client_id, &self.thumbprint) {
            (None, None, None) => "(no client identity)".into(),
            (o, c, _) if o.is_some() || c.is_some() => format!(
                "{} / {}",
                o.as_deref().unwrap_or("-"),
                c.as_deref().unwrap_or("-")
            ),
            (_, _, Some(t)) => format!("certificate {t}"),
            _ => "-".into(),
        }
    }

    fn refused(&self) -> u64 {
        self.refusals.values().sum()
    }
}

impl Report {
    /// The report as one self-contained HTML page. `sources` names the input files and `now`
    /// is the Unix time the report is made (for certificate expiry). Every string from the log
    /// is escaped.
    pub fn html(&self, sources: &[String], now_unix_s: f64) -> String {
        let today = (now_unix_s / 86_400.0).floor() as i64;
        let mut b = String::new();
        let refused: u64 = self.clients.iter().map(ClientReport::refused).sum();
        let _ = write!(
            b,
            "<h1>Audit report</h1><p class=\"muted\">portcullis audit report, made {} from {}. \
It reads the records and does not check them: run <code>portcullis audit verify</code> for the \
hash chain and signatures.</p>\
<p><b>{}</b> record(s), <b>{}</b> request(s) of which <b>{}</b> refused, <b>{}</b> client(s), \
{} failed handshake(s){}.</p>",
            utc(now_unix_s),
            names(sources),
            self.records,
            self.requests,
            refused,
            self.clients.len(),
            self.handshake_failures.values().sum::<u64>(),
            if self.unreadable_lines > 0 {
                format!(
                    ", <span class=\"warn\">{} unreadable line(s) skipped</span>",
                    self.unreadable_lines
                )
            } else {
                String::new()
            }
        );

        // Clients at a glance.
        b.push_str(
            "<h2>Clients</h2><table><tr><th>organization / client id</th><th>subject</th>\
<th>requests</th><th>refused</th><th>first seen</th><th>last seen</th>\
<th>certificate expiry</th><th>scopes granted but never used</th></tr>",
        );
        for (i, c) in self.clients.iter().enumerate() {
            let _ = write!(
                b,
                "<tr><td><a href=\"#c{i}\">{}</a></td><td>{}</td><td class=\"n\">{}</td>\
<td class=\"n\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&c.label()),
                cell(&c.subject),
                c.requests,
                c.refused(),
                cell(&c.first_seen),
                cell(&c.last_seen),
                expiry(c.cert_not_after.as_deref(), today).1,
                names(&c.scopes_unused)
            );
        }
        b.push_str("</table>");

        // Refusals by reason, all clients.
        let mut reasons: BTreeMap<&str, u64> = BTreeMap::new();
        for c in &self.clients {
            for (r, n) in &c.refusals {
                *reasons.entry(r).or_default() += n;
            }
        }
        let mut reasons: Vec<(&str, u64)> = reasons.into_iter().collect();
        reasons.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        b.push_str("<h2>Refusals by reason</h2>");
        if reasons.is_empty() {
            b.push_str("<p class=\"muted\">No request was refused.</p>");
        } else {
            b.push_str("<table><tr><th>reason</th><th>refusals</th></tr>");
            for (r, n) in reasons {
                let _ = write!(
                    b,
                    "<tr><td><code>{}</code></td><td class=\"n\">{n}</td></tr>",
                    escape(r)
                );
            }
            b.push_str("</table>");
        }

        // Behavioural alerts, by subject and detector.
        if !self.alerts.is_empty() {
            b.push_str(
                "<h2>Alerts</h2><table><tr><th>subject</th><th>detector</th><th>alerts</th>\
<th>quarantines</th><th>client id</th><th>reasons</th><th>first</th><th>last</th></tr>",
            );
            for a in &self.alerts {
                let _ = write!(
                    b,
                    "<tr><td><code>{}</code></td><td>{}</td><td class=\"n\">{}</td>\
<td class=\"n\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    escape(&a.subject),
                    escape(&a.detector),
                    a.alerts,
                    a.quarantines,
                    cell(&a.client_id),
                    names(&a.reasons),
                    cell(&a.first),
                    cell(&a.last)
                );
            }
            b.push_str("</table>");
        }

        // Certificate expiry, soonest first.
        let mut certs: Vec<(i64, String, &ClientReport)> = self
            .clients
            .iter()
            .filter(|c| c.cert_not_after.is_some())
            .map(|c| {
                let (d, text) = expiry(c.cert_not_after.as_deref(), today);
                (d, text, c)
            })
            .collect();
        certs.sort_by_key(|c| c.0);
        b.push_str("<h2>Certificate expiry</h2>");
        if certs.is_empty() {
            b.push_str("<p class=\"muted\">No record carries a client certificate.</p>");
        } else {
            b.push_str(
                "<table><tr><th>notAfter</th><th>organization / client id</th>\
<th>certificate thumbprint (SHA-256)</th></tr>",
            );
            for (_, text, c) in certs {
                let _ = write!(
                    b,
                    "<tr><td>{text}</td><td>{}</td><td><code>{}</code></td></tr>",
                    escape(&c.label()),
                    cell(&c.thumbprint)
                );
            }
            b.push_str("</table>");
        }

        // The API inventory: undeclared requests by shape, drift, the descriptions.
        b.push_str("<h2>Undeclared requests</h2>");
        if self.undeclared.is_empty() {
            b.push_str("<p class=\"muted\">Every request named a declared route.</p>");
        } else {
            b.push_str(
                "<p>Requests to paths or methods no route declares (probing, or an API nobody \
declared), grouped by shape.</p><table><tr><th>method</th><th>path shape</th><th>requests</th>\
<th>distinct paths</th><th>reasons</th><th>clients</th></tr>",
            );
            for u in &self.undeclared {
                let _ = write!(
                    b,
                    "<tr><td>{}</td><td><code>{}</code></td><td class=\"n\">{}</td>\
<td class=\"n\">{}</td><td>{}</td><td>{}</td></tr>",
                    escape(&u.method),
                    escape(&u.shape),
                    u.requests,
                    u.paths,
                    names(&u.reasons),
                    escape(&counts(&u.clients))
                );
            }
            b.push_str("</table>");
        }
        if !self.response_drift.is_empty() {
            b.push_str(
                "<h2>Response drift</h2><p>Upstream answers checked against the route's OpenAPI \
contract.</p><table><tr><th>route</th><th>checked</th><th>invalid</th><th>unchecked</th>\
<th>keywords</th><th>why unchecked</th></tr>",
            );
            for (route, d) in &self.response_drift {
                let _ = write!(
                    b,
                    "<tr><td><code>{}</code></td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
<td class=\"n\">{}</td><td>{}</td><td>{}</td></tr>",
                    escape(route),
                    d.checked,
                    d.invalid,
                    d.unchecked,
                    escape(&counts(&d.keywords)),
                    escape(&counts(&d.why_unchecked))
                );
            }
            b.push_str("</table>");
        }
        if let Some(spec) = &self.spec {
            b.push_str("<h2>Descriptions and policy</h2>");
            for d in &spec.specs {
                let _ = write!(
                    b,
                    "<p><code>{}</code>: {} operation(s), {} without a policy route.</p>",
                    escape(&d.file),
                    d.operations,
                    d.operations_without_route.len()
                );
                if !d.operations_without_route.is_empty() {
                    b.push_str("<ul>");
                    for o in &d.operations_without_route {
                        let _ = write!(b, "<li><code>{}</code></li>", escape(o));
                    }
                    b.push_str("</ul>");
                }
            }
            let _ = write!(
                b,
                "<p>Policy routes in no description: {}</p>",
                if spec.routes_not_in_specs.is_empty() {
                    "none".to_string()
                } else {
                    spec.routes_not_in_specs
                        .iter()
                        .map(|x| format!("<code>{}</code>", escape(x)))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            );
        }

        // Routes never called.
        b.push_str("<h2>Routes never called</h2>");
        match &self.routes_never_called {
            Some(r) if r.is_empty() => b.push_str("<p>Every route of the policy was called.</p>"),
            Some(r) => {
                let _ = write!(
                    b,
                    "<p>Policy routes no request matched (candidates for removal): {}</p>",
                    r.iter()
                        .map(|x| format!("<code>{}</code>", escape(x)))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            None => b.push_str(
                "<p class=\"muted\">Unknown: give <code>--config</code> or <code>--policy</code> \
to compare with the policy.</p>",
            ),
        }

        // Failed handshakes.
        b.push_str("<h2>Failed TLS handshakes</h2>");
        if self.handshake_failures.is_empty() {
            b.push_str("<p class=\"muted\">None.</p>");
        } else {
            b.push_str("<table><tr><th>category</th><th>count</th></tr>");
            for (k, n) in &self.handshake_failures {
                let _ = write!(
                    b,
                    "<tr><td><code>{}</code></td><td class=\"n\">{n}</td></tr>",
                    escape(k)
                );
            }
            b.push_str("</table>");
        }

        // Each client in full.
        b.push_str("<h2>Clients in detail</h2>");
        for (i, c) in self.clients.iter().enumerate() {
            let _ = write!(
                b,
                "<h3 id=\"c{i}\">{}</h3><table>\
<tr><th>certificate thumbprint</th><td><code>{}</code></td></tr>\
<tr><th>organization id</th><td>{}</td></tr><tr><th>client id</th><td>{}</td></tr>\
<tr><th>subject</th><td>{}</td></tr><tr><th>seen</th><td>{} .. {} ({} request(s))</td></tr>\
<tr><th>certificate expiry</th><td>{}</td></tr>\
<tr><th>scopes granted</th><td>{}</td></tr><tr><th>scopes used</th><td>{}</td></tr>\
<tr><th>granted, never used</th><td>{}</td></tr><tr><th>refusals</th><td>{}</td></tr>\
<tr><th>operations</th><td>{}</td></tr></table>",
                escape(&c.label()),
                cell(&c.thumbprint),
                cell(&c.org_id),
                cell(&c.client_id),
                cell(&c.subject),
                cell(&c.first_seen),
                cell(&c.last_seen),
                c.requests,
                expiry(c.cert_not_after.as_deref(), today).1,
                names(&c.scopes_granted),
                names(&c.scopes_used),
                names(&c.scopes_unused),
                if c.refusals.is_empty() {
                    "-".to_string()
                } else {
                    c.refusals
                        .iter()
                        .map(|(r, n)| format!("<code>{}</code> {n}", escape(r)))
                        .collect::<Vec<_>>()
                        .join(", ")
                },
                names(&c.operations)
            );
            b.push_str("<table><tr><th>route</th><th>allowed</th><th>refused</th></tr>");
            for (route, u) in &c.routes {
                let _ = write!(
                    b,
                    "<tr><td><code>{}</code></td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
                    escape(route),
                    u.allowed,
                    u.refused
                );
            }
            b.push_str("</table>");
        }
        page("portcullis audit report", &b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_are_summarized_with_scopes_refusals_and_unused_routes() {
        let log = br#"{"seq":1,"time":"2026-01-01T00:00:02Z","kind":"request","client_cert_thumbprint":"T1","client_org_id":"ORG1","route_id":"a","decision":"allow","scopes":["accounts","payments"],"scopes_required":["accounts"],"client_cert_not_after":"2027-01-01T00:00:00Z"}
{"seq":2,"time":"2026-01-01T00:00:01Z","kind":"request","client_cert_thumbprint":"T1","client_org_id":"ORG1","route_id":"a","decision":"deny","reason":"route.method_not_allowed"}
{"seq":3,"time":"2026-01-01T00:00:03Z","kind":"request","decision":"deny","reason":"route.not_found"}
not json
{"seq":4,"time":"2026-01-01T00:00:04Z","kind":"tls_handshake","failure":"unknown_ca"}
"#;
        let routes = vec!["a".to_string(), "b".to_string()];
        let r = build(&[log], Some(&routes));
        assert_eq!(r.requests, 3);
        assert_eq!(r.unreadable_lines, 1);
        assert_eq!(r.clients.len(), 2);
        let t1 = r
            .clients
            .iter()
            .find(|c| c.thumbprint.as_deref() == Some("T1"))
            .unwrap();
        assert_eq!(
            t1.routes["a"],
            RouteUse {
                allowed: 1,
                refused: 1
            }
        );
        assert_eq!(t1.first_seen.as_deref(), Some("2026-01-01T00:00:01Z"));
        assert_eq!(t1.last_seen.as_deref(), Some("2026-01-01T00:00:02Z"));
        assert_eq!(t1.scopes_unused.iter().collect::<Vec<_>>(), ["payments"]);
        assert_eq!(t1.refusals["route.method_not_allowed"], 1);
        assert_eq!(r.handshake_failures["unknown_ca"], 1);
        assert_eq!(r.routes_never_called, Some(vec!["b".to_string()]));
        let text = r.to_string();
        assert!(
            text.contains("thumbprint T1  org ORG1  client_id -"),
            "{text}"
        );
        assert!(text.contains("routes never called  b"), "{text}");
    }

    #[test]
    fn alerts_are_listed_by_subject_and_detector_in_text_json_and_html() {
        let log = br#"{"time":"2026-01-01T00:00:05Z","kind":"alert","detector":"enumeration","action":"quarantine","subject":"cert:T1","client_id":"c1","reason":"authz.object_hidden"}
{"time":"2026-01-01T00:00:09Z","kind":"alert","detector":"enumeration","action":"alert","subject":"cert:T1","reason":"authz.object"}
{"time":"2026-01-01T00:00:07Z","kind":"alert","detector":"probing","action":"alert","subject":"peer:<b>","reason":"route.not_found"}
{"kind":"request","client_id":"c1","route_id":"a","decision":"allow"}
"#;
        let r = build(&[log], None);
        assert_eq!(r.alerts.len(), 2);
        let e = &r.alerts[0];
        assert_eq!(
            (
                e.subject.as_str(),
                e.detector.as_str(),
                e.alerts,
                e.quarantines
            ),
            ("cert:T1", "enumeration", 2, 1)
        );
        assert_eq!(e.client_id.as_deref(), Some("c1"));
        assert_eq!(e.first.as_deref(), Some("2026-01-01T00:00:05Z"));
        assert_eq!(e.last.as_deref(), Some("2026-01-01T00:00:09Z"));
        assert_eq!(e.reasons.len(), 2);
        let text = r.to_string();
        assert!(
            text.contains("cert:T1") && text.contains("enumeration"),
            "{text}"
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["alerts"][1]["detector"], "probing");
        let html = r.html(&[], 1_767_225_600.0);
        assert!(
            html.contains("<h2>Alerts</h2>") && html.contains("peer:&lt;b&gt;"),
            "{html}"
        );
        // No alerts: the report is what it was before alerts existed.
        let quiet = build(&[br#"{"kind":"request","decision":"allow"}"#], None);
        assert!(serde_json::to_value(&quiet)
            .unwrap()
            .get("alerts")
            .is_none());
        assert!(!quiet.to_string().contains("alerts"));
    }

    #[test]
    fn undeclared_paths_are_grouped_by_shape_with_their_clients() {
        let rec = |client: &str, method: &str, path: &str, reason: &str| {
            format!(
                r#"{{"kind":"request","client_id":"{client}","method":"{method}","path":"{path}","decision":"deny","reason":"{reason}"}}"#
            )
        };
        let mut lines = vec![
            rec(
                "c1",
                "GET",
                "/accounts/acc-1/statements-v2",
                "route.not_found",
            ),
            rec(
                "c1",
                "GET",
                "/accounts/acc-2/statements-v2",
                "route.not_found",
            ),
            rec(
                "c2",
                "GET",
                "/accounts/acc-3/statements-v2",
                "route.not_found",
            ),
            rec(
                "c2",
                "GET",
                "/accounts/12345/beneficiaries",
                "route.not_found",
            ),
            rec(
                "c2",
                "GET",
                "/accounts/2f1c9c1e-7d2b-4d8e-9c3a-2b1e0f9a8d7c/beneficiaries",
                "route.not_found",
            ),
            rec("c3", "DELETE", "/admin", "route.method_not_allowed"),
            rec("c3", "GET", "/v2/status", "route.not_found"),
            rec(
                "c3",
                "GET",
                "/tokens/eyJhbGciOiJIUzI1NiJ9abc123",
                "route.not_found",
            ),
        ];
        lines.push(r#"{"kind":"request","client_id":"c1","route_id":"r","decision":"allow","contract":{"operation":"op","mode":"enforce","result":"valid","response":{"mode":"shadow","result":"invalid","status":200,"pointer":"/Data","keyword":"required"}}}"#.into());
        lines.push(r#"{"kind":"request","client_id":"c1","route_id":"r","decision":"allow","contract":{"operation":"op","mode":"enforce","result":"valid","response":{"mode":"shadow","result":"ok","status":200}}}"#.into());
        lines.push(r#"{"kind":"request","client_id":"c1","route_id":"r","decision":"allow","contract":{"operation":"op","mode":"enforce","result":"valid","response":{"mode":"shadow","result":"unchecked","status":200,"why":"streamed"}}}"#.into());
        let log = lines.join("\n");
        let routes = [
            PolicyRoute {
                id: "r".into(),
                operation: Some("op".into()),
            },
            PolicyRoute {
                id: "zombie".into(),
                operation: None,
            },
        ];
        let mut b = Builder::default();
        b.read(log.as_bytes()).unwrap();
        let r = b.finish_with(Some(&routes));
        let shape = |m: &str, p: &str| {
            r.undeclared
                .iter()
                .find(|u| u.method == m && u.shape == p)
                .unwrap_or_else(|| panic!("{m} {p} in {:#?}", r.undeclared))
        };
        let s = shape("GET", "/accounts/{id}/statements-v2");
        assert_eq!((s.requests, s.paths), (3, 3));
        assert_eq!(
            s.clients
                .iter()
                .map(|(c, n)| (c.as_str(), *n))
                .collect::<Vec<_>>(),
            [("- / c1", 2), ("- / c2", 1)]
        );
        let b = shape("GET", "/accounts/{id}/beneficiaries");
        assert_eq!(b.requests, 2);
        let a = shape("DELETE", "/admin");
        assert!(a.reasons.contains("route.method_not_allowed"));
        shape("GET", "/v2/status");
        shape("GET", "/tokens/{id}");
        assert_eq!(r.undeclared.len(), 5, "{:#?}", r.undeclared);
        assert_eq!(r.undeclared[0].shape, "/accounts/{id}/statements-v2");
        let d = &r.response_drift["r"];
        assert_eq!((d.checked, d.invalid, d.unchecked), (2, 1, 1));
        assert_eq!(d.keywords["required"], 1);
        assert_eq!(d.why_unchecked["streamed"], 1);
        assert_eq!(r.routes_never_called, Some(vec!["zombie".to_string()]));
        let c1 = r
            .clients
            .iter()
            .find(|c| c.client_id.as_deref() == Some("c1"))
            .unwrap();
        assert_eq!(c1.operations.iter().collect::<Vec<_>>(), ["op"]);
        let text = r.to_string();
        assert!(text.contains("GET /accounts/{id}/statements-v2"), "{text}");
        assert!(text.contains("response drift"), "{text}");
        let html = r.html(&[], 1_767_225_600.0);
        assert!(html.contains("<h2>Undeclared requests</h2>"), "{html}");
        assert!(html.contains("/accounts/{id}/statements-v2"), "{html}");
        assert!(html.contains("<h2>Response drift</h2>"), "{html}");
    }

    #[test]
    fn a_stream_gives_the_same_report_and_skips_an_overlong_line() {
        let log = concat!(
            r#"{"kind":"request","client_id":"c1","route_id":"a","decision":"allow"}"#,
            "\n",
            r#"{"kind":"request","client_id":"c1","route_id":"a","decision":"deny","reason":"x"}"#,
        );
        let mut long = vec![b'x'; MAX_LINE + 10];
        long.push(b'\n');
        long.extend_from_slice(log.as_bytes());
        // A small buffer, so lines cross buffer boundaries.
        let mut b = Builder::default();
        b.read(std::io::BufReader::with_capacity(7, &long[..]))
            .unwrap();
        let streamed = b.finish(None);
        let whole = build(&[log.as_bytes()], None);
        assert_eq!(streamed.unreadable_lines, 1);
        assert_eq!(streamed.requests, 2);
        assert_eq!(streamed.clients, whole.clients);
    }

    #[test]
    fn the_html_report_escapes_what_the_log_says() {
        let log = br#"{"time":"2026-01-01T00:00:00Z","kind":"request","client_id":"<script>alert(1)</script>","route_id":"<img src=x>","decision":"deny","reason":"r<&>","client_cert_thumbprint":"T","client_cert_not_after":"2026-01-10T00:00:00Z"}
{"kind":"request","client_id":"ok","route_id":"a","decision":"allow","client_cert_not_after":"2020-01-01T00:00:00Z"}
"#;
        let routes = vec!["a".to_string(), "never\"x".to_string()];
        let mut log = log.to_vec();
        log.extend_from_slice(
            br#"{"kind":"request","method":"GET","path":"/<svg onload=x>/1","decision":"deny","reason":"route.not_found"}"#,
        );
        let r = build(&[&log], Some(&routes));
        // 2026-01-01: the first certificate expires in 9 days, the second has expired.
        let html = r.html(&["<f>.log".to_string()], 1_767_225_600.0);
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(
            !html.contains("<script") && !html.contains("<img"),
            "{html}"
        );
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains("&lt;img src=x&gt;") && html.contains("r&lt;&amp;&gt;"));
        assert!(html.contains("&lt;f&gt;.log") && html.contains("never&quot;x"));
        assert!(
            !html.contains("<svg") && html.contains("/&lt;svg onload=x&gt;/{id}"),
            "{html}"
        );
        assert!(
            html.contains("in 9 day(s)") && html.contains("expired"),
            "{html}"
        );
        for section in [
            "Clients",
            "Refusals by reason",
            "Certificate expiry",
            "Routes never called",
        ] {
            assert!(html.contains(&format!("<h2>{section}</h2>")), "{section}");
        }
    }
}
