//! `portcullis policy import SPEC --out DIR`: an OpenAPI description becomes a policy file —
//! one route per operation (method, the server's base path and the path template), the scopes
//! of the operation's security requirements, a body limit where the schema bounds the body,
//! and the contract (`contract:`) that checks parameters and body against the operation, and
//! the upstream's answers against its responses (`response:`, shadow unless asked otherwise). Nothing else is granted: whatever the description does not declare stays denied.
//!
//! Re-importing is safe: the file is generated deterministically (the same description gives
//! the same bytes), and each route ends with a marker line below which a security team writes
//! its own rules (consent, object rules, idempotency, ...); those lines are kept, by route id,
//! on every re-import. What changed between the old file and the new one (routes added or
//! removed, scopes, paths, limits) is reported.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

use portcullis_policy::contract::{Operation, Spec};

/// The line below which a route's hand-written fields go; kept on re-import.
pub const MARKER: &str = "    # hand-written (kept on re-import):";

/// What `policy import` was asked.
pub struct Import {
    pub spec: PathBuf,
    pub out: PathBuf,
    pub group: Option<String>,
    pub upstream: String,
    pub profile: String,
    /// `shadow`, `enforce` or `off`: what every route does with the upstream's answers.
    pub response: String,
}

/// What an import did.
#[derive(Debug)]
pub struct Imported {
    pub file: PathBuf,
    /// Whether the file's bytes changed.
    pub changed: bool,
    /// Human-readable change lines (empty on a first import or when nothing changed).
    pub changes: Vec<String>,
    /// Things a reviewer must know (an operation without security, scopes approximated).
    pub warnings: Vec<String>,
    pub routes: usize,
}

/// One generated route, as compared across imports.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Gen {
    id: String,
    method: String,
    path: String,
    body_limit: Option<u64>,
    scopes: Option<(String, Vec<String>)>,
    operation: String,
    response: String,
}

pub fn import(req: &Import) -> Result<Imported, String> {
    if !["fapi2", "fapi1-advanced", "bearer"].contains(&req.profile.as_str()) {
        return Err(format!(
            "--profile: unknown profile `{}` (fapi2, fapi1-advanced or bearer)",
            req.profile
        ));
    }
    if !["shadow", "enforce", "off"].contains(&req.response.as_str()) {
        return Err(format!(
            "--response: unknown value `{}` (shadow, enforce or off)",
            req.response
        ));
    }
    let spec = Arc::new(Spec::read(&req.spec)?);
    let group = match &req.group {
        Some(g) => g.clone(),
        None => slug(
            req.spec
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("api"),
        ),
    };
    if group.is_empty()
        || !group
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(format!(
            "--group: `{group}` must be letters, digits, `-`, `_` or `.`"
        ));
    }
    std::fs::create_dir_all(&req.out).map_err(|e| format!("{}: {e}", req.out.display()))?;
    let spec_ref = relative(&req.out, &req.spec)?;
    // Every `*.yaml` of a policy directory is read as a policy: the description cannot be one.
    if !spec_ref.contains('/') {
        return Err(format!(
            "{}: the description must not be in the policy directory --out (every *.yaml there is read as a policy)",
            req.spec.display()
        ));
    }
    let text = std::fs::read(&req.spec).map_err(|e| format!("{}: {e}", req.spec.display()))?;
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &text);
    let sha: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    let base = spec.base_path();
    let obie = is_obie(&spec);
    let mut warnings = Vec::new();
    let mut gens = Vec::new();
    for op in spec.operations() {
        let mut g = generate(&spec, &op, &group, &base, &mut warnings)?;
        g.response = req.response.clone();
        gens.push(g);
    }
    if gens.is_empty() {
        return Err(format!(
            "{}: the description has no operations",
            req.spec.display()
        ));
    }
    let file = req.out.join(format!("{group}.yaml"));
    let old = std::fs::read_to_string(&file).ok();
    let (old_routes, hand) = match &old {
        Some(t) => (parse_old(t)?, hand_blocks(t)),
        None => (BTreeMap::new(), BTreeMap::new()),
    };
    let title = spec
        .doc
        .pointer("/info/title")
        .and_then(Value::as_str)
        .unwrap_or("API");
    let version = spec
        .doc
        .pointer("/info/version")
        .and_then(Value::as_str)
        .unwrap_or("");
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Generated by `portcullis policy import` from {title} {version}"
    );
    let _ = writeln!(s, "# ({spec_ref}, SHA-256 {sha}).");
    let _ = writeln!(
        s,
        "# Re-import to follow the description: everything above each route's"
    );
    let _ = writeln!(
        s,
        "# \"hand-written\" line is regenerated, everything below it is kept."
    );
    let _ = writeln!(s, "group: {group}");
    let _ = writeln!(s, "upstream: {}", req.upstream);
    if obie {
        let _ = writeln!(s, "# An OBIE API: refusals answer in the OBIE error body.");
        let _ = writeln!(s, "errors: obie");
    }
    let _ = writeln!(
        s,
        "description: {}",
        yaml_str(&format!("{title} {version}"))
    );
    let _ = writeln!(s, "routes:");
    for g in &gens {
        let _ = writeln!(s, "  - id: {}", g.id);
        let _ = writeln!(s, "    method: {}", g.method);
        let _ = writeln!(s, "    path: {}", g.path);
        match g.body_limit {
            Some(n) => {
                let _ = writeln!(s, "    body_limit: {n}");
            }
            None => {
                let _ = writeln!(
                    s,
                    "    # The schema does not bound the body: the listener's default_body_limit applies."
                );
            }
        }
        let _ = writeln!(s, "    auth: {{profile: {}}}", req.profile);
        if let Some((kind, list)) = &g.scopes {
            let _ = writeln!(s, "    scopes: {{{kind}: [{}]}}", list.join(", "));
        }
        if obie && g.body_limit != Some(0) {
            // OBIE lists `application/json; charset=utf-8`, `application/json` and
            // `application/jose+jwe`; only JSON can be checked against the contract.
            let _ = writeln!(s, "    accepts: [application/json]");
        }
        let _ = writeln!(
            s,
            "    contract: {{spec: {}, operation: {}, strict: true, response: {}}}",
            yaml_str(&spec_ref),
            yaml_str(&g.operation),
            g.response
        );
        let _ = writeln!(s, "{MARKER}");
        if let Some(h) = hand.get(&g.id) {
            s.push_str(h);
        }
    }
    let mut changes = Vec::new();
    if old.is_some() {
        let new_ids: BTreeMap<&str, &Gen> = gens.iter().map(|g| (g.id.as_str(), g)).collect();
        for g in &gens {
            match old_routes.get(&g.id) {
                None => changes.push(format!("added   {} ({} {})", g.id, g.method, g.path)),
                Some(o) => {
                    if o.scopes != g.scopes {
                        changes.push(format!(
                            "scopes  {}: {} -> {}",
                            g.id,
                            show_scopes(&o.scopes),
                            show_scopes(&g.scopes)
                        ));
                    }
                    if (&o.method, &o.path) != (&g.method, &g.path) {
                        changes.push(format!(
                            "path    {}: {} {} -> {} {}",
                            g.id, o.method, o.path, g.method, g.path
                        ));
                    }
                    if o.response != g.response {
                        changes.push(format!(
                            "response {}: {} -> {}",
                            g.id, o.response, g.response
                        ));
                    }
                    if o.body_limit != g.body_limit {
                        changes.push(format!(
                            "limit   {}: {} -> {}",
                            g.id,
                            show_limit(o.body_limit),
                            show_limit(g.body_limit)
                        ));
                    }
                }
            }
        }
        for (id, o) in &old_routes {
            if !new_ids.contains_key(id.as_str()) {
                let kept = hand.get(id).filter(|h| !h.trim().is_empty());
                changes.push(format!(
                    "removed {id} ({} {}){}",
                    o.method,
                    o.path,
                    if kept.is_some() {
                        "; its hand-written lines are dropped with it"
                    } else {
                        ""
                    }
                ));
            }
        }
    }
    let changed = old.as_deref() != Some(s.as_str());
    if changed {
        std::fs::write(&file, &s).map_err(|e| format!("{}: {e}", file.display()))?;
    }
    if changed && old.is_some() && changes.is_empty() {
        changes.push("regenerated (the description changed, no route did)".into());
    }
    let test_file = req.out.join(format!("{group}.test.yaml"));
    if !test_file.exists() {
        std::fs::write(&test_file, test_cases(&base, &gens))
            .map_err(|e| format!("{}: {e}", test_file.display()))?;
    }
    Ok(Imported {
        file,
        changed,
        changes,
        warnings,
        routes: gens.len(),
    })
}

/// The first policy tests of a new import: what the description does not declare is refused.
/// Written once; the team adds its cases (never overwritten).
fn test_cases(base: &str, gens: &[Gen]) -> String {
    let mut s = String::from(
        "# Policy tests for the imported routes (`portcullis policy test`). Written once by\n\
         # `policy import`, never overwritten: add the cases of your own rules here.\n\
         cases:\n",
    );
    let _ = writeln!(
        s,
        "  - name: a path the description does not declare is refused\n    request: {{method: GET, path: {base}/not-in-the-description}}\n    expect: {{deny: {{status: 404, reason: route.not_found}}}}"
    );
    if let Some(g) = gens
        .iter()
        .find(|g| g.method == "GET" && !g.path.contains('{'))
    {
        let _ = writeln!(
            s,
            "  - name: a method the description does not declare is refused\n    request: {{method: DELETE, path: {}}}\n    expect: {{deny: {{status: 405, reason: route.method_not_allowed}}}}",
            g.path
        );
    }
    s
}

fn show_scopes(s: &Option<(String, Vec<String>)>) -> String {
    match s {
        None => "none".into(),
        Some((k, l)) => format!("{k} [{}]", l.join(", ")),
    }
}

fn show_limit(l: Option<u64>) -> String {
    l.map_or_else(|| "default".into(), |n| n.to_string())
}

/// Whether the description is an OBIE API: its operations take the FAPI interaction id.
fn is_obie(spec: &Spec) -> bool {
    spec.doc
        .pointer("/components/parameters")
        .and_then(Value::as_object)
        .is_some_and(|m| {
            m.values()
                .any(|p| p.get("name").and_then(Value::as_str) == Some("x-fapi-interaction-id"))
        })
}

fn generate(
    spec: &Spec,
    op: &Operation<'_>,
    group: &str,
    base: &str,
    warnings: &mut Vec<String>,
) -> Result<Gen, String> {
    let path = format!("{base}{}", op.path);
    let template_ok = path.split('/').skip(1).all(|seg| {
        match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            Some(n) => !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
            None => !seg.is_empty() && !seg.contains(['{', '}']),
        }
    });
    if !template_ok {
        return Err(format!(
            "operation `{}`: path `{path}` is not a template portcullis routes (segments that are literals or one {{Name}})",
            op.id
        ));
    }
    let id_ok = op
        .id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !id_ok {
        return Err(format!(
            "operation `{}`: an operationId of letters, digits, `-`, `_` or `.` is needed for the route id",
            op.id
        ));
    }
    let scopes = match spec.scopes(op) {
        None => {
            warnings.push(format!(
                "{}: declares no security requirement; the route still requires a token (fail closed)",
                op.id
            ));
            None
        }
        Some(list) => scope_rule(spec, op, list, warnings),
    };
    let (schema, _) = spec.body_schema(op)?;
    let body_limit = match (op.op.get("requestBody"), schema) {
        (None, _) => Some(0),
        (Some(_), None) => None,
        (Some(_), Some(s)) => bound(spec, s, 0).map(round_up),
    };
    Ok(Gen {
        id: format!("{group}.{}", op.id),
        method: op.method.to_string(),
        path,
        body_limit,
        scopes,
        operation: op.id.clone(),
        response: String::new(),
    })
}

/// The route's scope rule from the operation's security requirements (alternatives, each a set
/// of schemes with scopes): one requirement, or several with the same scopes, is `all_of`;
/// alternatives of one scope each are `any_of`; anything else is approximated by requiring all
/// of them (stricter, never looser) and reported.
fn scope_rule(
    spec: &Spec,
    op: &Operation<'_>,
    union: Vec<String>,
    warnings: &mut Vec<String>,
) -> Option<(String, Vec<String>)> {
    let reqs = op
        .op
        .get("security")
        .or_else(|| spec.doc.get("security"))
        .and_then(Value::as_array)?;
    let sets: Vec<Vec<String>> = reqs
        .iter()
        .map(|r| {
            let mut v: Vec<String> = r
                .as_object()
                .into_iter()
                .flat_map(|m| m.values())
                .flat_map(|s| s.as_array().cloned().unwrap_or_default())
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect();
            v.sort();
            v.dedup();
            v
        })
        .collect();
    if union.is_empty() {
        return None;
    }
    if sets.iter().all(|s| *s == sets[0]) {
        return Some(("all_of".into(), union));
    }
    if sets.iter().all(|s| s.len() == 1) {
        return Some(("any_of".into(), union));
    }
    warnings.push(format!(
        "{}: alternative security requirements with different scope sets; all their scopes are required",
        op.id
    ));
    Some(("all_of".into(), union))
}

/// The largest serialized size a body fitting `schema` can have, when the schema bounds it:
/// strings by `maxLength` (each character escaped, six bytes), arrays by `maxItems`, objects
/// closed by their declared members. `None`: unbounded.
fn bound(spec: &Spec, schema: &Value, depth: usize) -> Option<u64> {
    if depth > 32 {
        return None;
    }
    let s = spec.deref(schema).ok()?;
    if let Some(e) = s.get("enum").and_then(Value::as_array) {
        return e.iter().map(|v| v.to_string().len() as u64).max();
    }
    for alt in ["oneOf", "anyOf"] {
        if let Some(list) = s.get(alt).and_then(Value::as_array) {
            let mut max = 0;
            for x in list {
                max = max.max(bound(spec, x, depth + 1)?);
            }
            return Some(max);
        }
    }
    let ty = s
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or(if s.get("properties").is_some() {
            "object"
        } else {
            ""
        });
    match ty {
        "string" => {
            let n = s.get("maxLength").and_then(Value::as_u64).or_else(|| {
                match s.get("format").and_then(Value::as_str) {
                    Some("date-time") => Some(64),
                    Some("date") => Some(16),
                    _ => None,
                }
            })?;
            Some(n.saturating_mul(6).saturating_add(2))
        }
        "number" | "integer" => Some(32),
        "boolean" => Some(5),
        "array" => {
            let n = s.get("maxItems").and_then(Value::as_u64)?;
            let item = bound(spec, s.get("items")?, depth + 1)?;
            Some(n.saturating_mul(item.saturating_add(1)).saturating_add(2))
        }
        "object" => {
            // Open objects take any member; strict contracts close them, and the proxy's
            // strict check is what the limit is made for.
            let props = s.get("properties").and_then(Value::as_object)?;
            let mut total: u64 = 2;
            for (k, v) in props {
                let member = bound(spec, v, depth + 1)?;
                total = total
                    .saturating_add(k.len() as u64 * 6 + 4)
                    .saturating_add(member);
            }
            Some(total)
        }
        _ => None,
    }
}

/// Limits in whole KiB: a reviewer reads 16384, not 15877.
fn round_up(n: u64) -> u64 {
    n.div_ceil(1024).saturating_mul(1024).max(1024)
}

/// A route-id-friendly name from a file name.
fn slug(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

/// A YAML scalar: plain when it is safe, else double-quoted JSON (which YAML reads).
fn yaml_str(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./ ".contains(&b))
        && !s.starts_with(['-', ' ', '.'])
        && !s.ends_with(' ');
    if plain && !s.contains(" ") {
        s.to_string()
    } else {
        Value::String(s.to_string()).to_string()
    }
}

/// `target` relative to `dir` (both made absolute), with `/` separators: what the policy
/// file names, so the output directory and the description can move together.
fn relative(dir: &Path, target: &Path) -> Result<String, String> {
    let abs = |p: &Path| std::fs::canonicalize(p).map_err(|e| format!("{}: {e}", p.display()));
    let (d, t) = (abs(dir)?, abs(target)?);
    let dc: Vec<Component> = d.components().collect();
    let tc: Vec<Component> = t.components().collect();
    let common = dc.iter().zip(&tc).take_while(|(a, b)| a == b).count();
    let mut parts: Vec<String> = vec!["..".to_string(); dc.len() - common];
    parts.extend(
        tc[common..]
            .iter()
            .map(|c| c.as_os_str().to_string_lossy().to_string()),
    );
    Ok(parts.join("/"))
}

/// The generated fields of each route of an earlier import, by id.
fn parse_old(text: &str) -> Result<BTreeMap<String, Gen>, String> {
    let v: Value = serde_saphyr::from_str(text)
        .map_err(|e| format!("the existing policy file is not YAML: {e}"))?;
    let mut out = BTreeMap::new();
    for r in v
        .get("routes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let s = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        let scopes = r.get("scopes").and_then(Value::as_object).and_then(|m| {
            m.iter().next().map(|(k, l)| {
                (
                    k.clone(),
                    l.as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect(),
                )
            })
        });
        let id = s("id");
        out.insert(
            id.clone(),
            Gen {
                id,
                method: s("method"),
                path: s("path"),
                body_limit: r.get("body_limit").and_then(Value::as_u64),
                scopes,
                operation: r
                    .pointer("/contract/operation")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                // An earlier import without the field: the proxy's default.
                response: r
                    .pointer("/contract/response")
                    .and_then(Value::as_str)
                    .unwrap_or("shadow")
                    .to_string(),
            },
        );
    }
    Ok(out)
}

/// Each route's lines below its marker, by route id, as written.
fn hand_blocks(text: &str) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    let mut current: Option<String> = None;
    let mut below = false;
    for line in text.split_inclusive('\n') {
        if let Some(id) = line.strip_prefix("  - id: ") {
            current = Some(id.trim().to_string());
            below = false;
            continue;
        }
        if line.trim_end() == MARKER {
            below = true;
            continue;
        }
        if below {
            if let Some(id) = &current {
                out.entry(id.clone()).or_default().push_str(line);
            }
        }
    }
    out
}

/// Prints the outcome of an import; exit status 0 on success, 2 on an error.
pub fn run(req: &Import) -> std::process::ExitCode {
    match import(req) {
        Err(e) => {
            eprintln!("policy import: {e}");
            std::process::ExitCode::from(2)
        }
        Ok(r) => {
            for w in &r.warnings {
                println!("warning {w}");
            }
            for c in &r.changes {
                println!("{c}");
            }
            println!(
                "{}: {} routes, {}",
                r.file.display(),
                r.routes,
                if r.changed { "written" } else { "unchanged" }
            );
            std::process::ExitCode::SUCCESS
        }
    }
}
