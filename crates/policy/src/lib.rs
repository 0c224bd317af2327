//! Policies: the route table, loaded from YAML files in `policies/`.
//!
//! A policy file names a group of routes and the upstream they go to; each route is a method and
//! a path template (`/open-banking/v3.1/aisp/accounts/{AccountId}`). Routes compile at load into
//! one `matchit` radix tree per method plus one over all methods (to tell 404 from 405), so a
//! lookup is a tree walk, not a scan. Anything not declared is refused: default deny.
//!
//! A route also says what its requests must prove: the access token and its binding profile,
//! scopes, object rules and consent, the request signature, the rate-limit class and
//! idempotency keys.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

pub mod contract;
pub mod current;
pub mod rules;
pub mod signature;
pub mod template;

use portcullis_base::problems::{ConfigError, Problems};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePolicy {
    group: String,
    upstream: String,
    #[serde(default)]
    description: Option<String>,
    /// The error body of the group's refusals: `obie` or `problem` (see [`ErrorDialect`]).
    #[serde(default)]
    errors: Option<String>,
    routes: Vec<FileRoute>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRoute {
    id: String,
    method: String,
    path: String,
    #[serde(default)]
    body_limit: Option<u64>,
    /// `required` (default) or `optional`.
    #[serde(default)]
    client_cert: Option<String>,
    /// Overrides the group's upstream.
    #[serde(default)]
    upstream: Option<String>,
    /// Access-token requirement; absent means the route takes no token.
    #[serde(default)]
    auth: Option<FileAuth>,
    /// Required scopes (`all_of` / `any_of`).
    #[serde(default)]
    scopes: Option<rules::FileScopes>,
    /// The consent the token names must be in a given status and hold permissions.
    #[serde(default)]
    consent: Option<rules::FileConsent>,
    /// Object-level rules: request values that must be in what the token or consent grants.
    #[serde(default)]
    rules: Vec<rules::FileRule>,
    /// Values in the upstream response that must be in the granted set.
    #[serde(default)]
    response_rules: Vec<rules::FileResponseRule>,
    /// Decide and record, but do not enforce (roll a policy out safely).
    #[serde(default)]
    shadow: bool,
    /// Request signature (OBIE `x-jws-signature` or RFC 9421) and response signing.
    #[serde(default)]
    signature: Option<signature::FileSignature>,
    /// The per-client rate limit class (a key of the config's `rate_limits.classes`).
    #[serde(default)]
    rate_limit: Option<String>,
    /// `required`, `optional` or `none` (default): idempotency keys.
    #[serde(default)]
    idempotency: Option<String>,
    /// On a replayed key, answer with the resource's current state read by a GET of this path
    /// (JSON pointers into the stored first answer in braces) instead of the stored body.
    #[serde(default)]
    idempotency_current: Option<String>,
    /// Let `;` path parameters through (refused by default: servlet containers strip them, so
    /// the segment a rule read is not the one the upstream acts on).
    #[serde(default)]
    path_parameters: bool,
    /// Let a `_method` query parameter through (refused by default: Rails, Laravel and
    /// Express's method-override run the method it names).
    #[serde(default)]
    method_override: bool,
    /// Overrides the group's `errors`.
    #[serde(default)]
    errors: Option<String>,
    /// Media types the request body may have (`Content-Type`; 415 otherwise).
    #[serde(default)]
    accepts: Option<Vec<String>>,
    /// Media types the route answers with (checked against `Accept`; 406 otherwise).
    #[serde(default)]
    produces: Option<Vec<String>>,
    /// The OpenAPI operation whose parameters and body schema requests must fit.
    #[serde(default)]
    contract: Option<contract::FileContract>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAuth {
    /// `fapi2`, `fapi1-advanced` or `bearer`.
    profile: String,
    /// The issuer (a key of the config's `issuers`); optional when there is exactly one.
    #[serde(default)]
    issuer: Option<String>,
    /// Keep `Authorization` and `DPoP` on the forwarded request (default: removed).
    #[serde(default)]
    forward_credentials: bool,
    /// Require DPoP proofs to carry a server nonce (RFC 9449 §9).
    #[serde(default)]
    dpop_nonce: bool,
}

/// How a route's access token must be bound to its presenter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    /// FAPI 2.0: bound by mTLS (`cnf.x5t#S256`) or DPoP (`cnf.jkt`); never a plain bearer.
    Fapi2,
    /// FAPI 1.0 Advanced: bound by mTLS only.
    Fapi1Advanced,
    /// Not FAPI: a plain bearer token is accepted, but a bound token is still checked.
    Bearer,
}

impl Profile {
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Fapi2 => "fapi2",
            Profile::Fapi1Advanced => "fapi1-advanced",
            Profile::Bearer => "bearer",
        }
    }
}

/// A route's token requirement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteAuth {
    pub profile: Profile,
    pub issuer: String,
    pub forward_credentials: bool,
    pub dpop_nonce: bool,
}

/// Names a policy may refer to, from the config.
pub struct Known<'a> {
    pub upstreams: Vec<&'a str>,
    pub issuers: Vec<&'a str>,
    pub default_body_limit: u64,
    /// Whether the config has a consent source (routes with `consent` need one).
    pub has_consent: bool,
    /// Policy files alone (`policy test`, `policy explain`): any upstream, issuer and consent
    /// source name is accepted, since no config is loaded.
    pub standalone: bool,
}

impl Known<'_> {
    /// For checking policy files without a config.
    pub fn standalone() -> Known<'static> {
        Known {
            upstreams: Vec::new(),
            issuers: Vec::new(),
            default_body_limit: 1024 * 1024,
            has_consent: true,
            standalone: true,
        }
    }
}

/// Whether a route needs a verified client certificate on the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertRequirement {
    Required,
    Optional,
}

/// The body a route's refusals are answered in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ErrorDialect {
    /// RFC 9457 `application/problem+json` with the portcullis reason code.
    #[default]
    Problem,
    /// The UK Open Banking error body (`OBErrorResponse1`, `UK.OBIE.*` error codes).
    Obie,
}

impl ErrorDialect {
    pub fn parse(s: &str) -> Option<ErrorDialect> {
        match s {
            "problem" => Some(ErrorDialect::Problem),
            "obie" => Some(ErrorDialect::Obie),
            _ => None,
        }
    }
}

/// The media type a JSON API takes and answers with.
pub const JSON: &str = "application/json";

/// Checks a media type of `accepts` / `produces`: `type/subtype` in RFC 9110 token characters,
/// without parameters (a `charset` is judged by the request check, not configured); lowercased.
fn media_type(s: &str) -> Result<String, String> {
    let token = |t: &str| {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    match s.split_once('/') {
        Some((t, st)) if token(t) && token(st) && t != "*" && st != "*" => {
            Ok(s.to_ascii_lowercase())
        }
        _ => Err(format!(
            "`{s}` is not a media type `type/subtype` (no wildcards, no parameters)"
        )),
    }
}

/// A route's `idempotency:` setting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IdempotencyMode {
    /// A key is required (400 without one).
    Required,
    /// A key is honoured when sent.
    Optional,
    /// Keys are ignored (default).
    #[default]
    None,
}

impl IdempotencyMode {
    pub fn parse(s: &str) -> Option<IdempotencyMode> {
        match s {
            "required" => Some(IdempotencyMode::Required),
            "optional" => Some(IdempotencyMode::Optional),
            "none" => Some(IdempotencyMode::None),
            _ => None,
        }
    }
}

/// One compiled route.
#[derive(Debug)]
pub struct Route {
    pub id: String,
    pub group: String,
    pub method: http::Method,
    pub template: String,
    pub upstream: String,
    pub body_limit: u64,
    pub client_cert: CertRequirement,
    pub auth: Option<RouteAuth>,
    /// Scopes, consent, object and response rules (empty: any bound token will do).
    pub authz: rules::Authz,
    /// The request signature the route needs and whether responses are signed.
    pub signature: Option<signature::RouteSignature>,
    /// The per-client rate limit class, checked against the config.
    pub rate_limit: Option<String>,
    /// Idempotency keys on this route.
    pub idempotency: crate::IdempotencyMode,
    /// Where a replay reads the resource's current state (`None`: the stored answer as it is).
    pub idempotency_current: Option<current::CurrentFrom>,
    /// Whether `;` path parameters are accepted on this route.
    pub path_parameters: bool,
    /// Whether a `_method` query parameter is accepted on this route.
    pub method_override: bool,
    /// The body its refusals are answered in.
    pub errors: ErrorDialect,
    /// Media types a request body may have, lowercased; empty: any (no 415).
    pub accepts: Vec<String>,
    /// Media types the route answers with, lowercased; empty: any (no 406).
    pub produces: Vec<String>,
    /// The OpenAPI operation requests must fit, compiled at load. Shared, so a response check
    /// can reach the same operation's compiled schemas from the route.
    pub contract: Option<Arc<contract::Contract>>,
    pub file: PathBuf,
}

impl Route {
    /// The template's parameter names, in order.
    pub fn params(&self) -> Vec<String> {
        template_params(&self.template)
    }
}

fn template_params(t: &str) -> Vec<String> {
    t.split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(str::to_string)
        .collect()
}

/// All routes, compiled for lookup.
#[derive(Debug)]
pub struct PolicySet {
    by_method: HashMap<http::Method, matchit::Router<Arc<Route>>>,
    /// Template -> methods declared for it (for 405 and `Allow`).
    any_method: matchit::Router<Vec<http::Method>>,
    routes: Vec<Arc<Route>>,
    /// SHA-256 (hex, first 16 chars) over every policy file's bytes, in load order.
    pub version: String,
}

/// A matched route and its path parameters, in template order.
#[derive(Debug)]
pub struct RouteMatch {
    pub route: Arc<Route>,
    pub params: Vec<(String, String)>,
}

portcullis_base::variants! {
    /// Why no route matched.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub enum NoRoute {
        NotFound,
        MethodNotAllowed { allow: Vec<http::Method> },
    }
}

impl PolicySet {
    /// Finds the route for an already checked path (see [`portcullis_base::path::check_path`]).
    pub fn lookup(&self, method: &http::Method, path: &str) -> Result<RouteMatch, NoRoute> {
        if let Some(m) = self.by_method.get(method).and_then(|r| r.at(path).ok()) {
            return Ok(RouteMatch {
                route: Arc::clone(m.value),
                params: m
                    .params
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            });
        }
        match self.any_method.at(path) {
            Ok(m) => Err(NoRoute::MethodNotAllowed {
                allow: m.value.clone(),
            }),
            Err(_) => Err(NoRoute::NotFound),
        }
    }

    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }

    /// The groups of this set, sorted, each once.
    pub fn groups(&self) -> Vec<&str> {
        let mut g: Vec<&str> = self.routes.iter().map(|r| r.group.as_str()).collect();
        g.sort_unstable();
        g.dedup();
        g
    }

    /// The routes of `groups` only, compiled for lookup: what a virtual host serves. A path of
    /// another group is then unknown (404), never a 405 naming that group's methods. The
    /// version is the whole set's: the files loaded are the same.
    pub fn subset(&self, groups: &[String]) -> PolicySet {
        let mut by_method: HashMap<http::Method, matchit::Router<Arc<Route>>> = HashMap::new();
        let mut templates: BTreeMap<String, Vec<http::Method>> = BTreeMap::new();
        let mut routes = Vec::new();
        for r in self.routes.iter().filter(|r| groups.contains(&r.group)) {
            // Every route was inserted into the whole set without conflict, so a subset of
            // them inserts without conflict too.
            let _ = by_method
                .entry(r.method.clone())
                .or_default()
                .insert(r.template.clone(), Arc::clone(r));
            templates
                .entry(r.template.clone())
                .or_default()
                .push(r.method.clone());
            routes.push(Arc::clone(r));
        }
        let mut any_method = matchit::Router::new();
        for (t, methods) in templates {
            let _ = any_method.insert(t, methods);
        }
        PolicySet {
            by_method,
            any_method,
            routes,
            version: self.version.clone(),
        }
    }
}

const METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// Expands files and directories (their `*.yaml` / `*.yml` files, sorted) into policy files.
fn policy_files(paths: &[PathBuf], errors: &mut Vec<ConfigError>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            match std::fs::read_dir(p) {
                Ok(rd) => {
                    let mut files: Vec<PathBuf> = rd
                        .filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|f| {
                            f.is_file()
                                && matches!(
                                    f.extension().and_then(|e| e.to_str()),
                                    Some("yaml" | "yml")
                                )
                                && !f
                                    .file_name()
                                    .and_then(|n| n.to_str())
                                    .is_some_and(|n| n.ends_with(".test.yaml"))
                        })
                        .collect();
                    files.sort();
                    out.extend(files);
                }
                Err(e) => Problems::new(p, errors).push("", format!("cannot read directory: {e}")),
            }
        } else {
            out.push(p.clone());
        }
    }
    out
}

/// The 1-based line of each item of the top-level `routes:` list (block style).
fn route_lines(text: &str) -> Vec<usize> {
    let mut out = Vec::new();
    let mut in_routes = false;
    let mut indent: Option<usize> = None;
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let col = line.len() - trimmed.len();
        if col == 0 {
            in_routes = trimmed.starts_with("routes:");
            indent = None;
            continue;
        }
        if in_routes && trimmed.starts_with("- ") && indent.is_none_or(|i| i == col) {
            indent = Some(col);
            out.push(n + 1);
        }
    }
    out
}

/// Validates a path template: `/` then segments that are literals or one `{Name}`.
fn check_template(t: &str) -> Result<(), String> {
    if !t.starts_with('/') {
        return Err("must start with /".into());
    }
    if t == "/" {
        return Ok(());
    }
    for seg in t[1..].split('/') {
        if seg.is_empty() {
            return Err("must not contain empty segments (// or a trailing /)".into());
        }
        if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(format!(
                    "parameter `{seg}` must be {{Name}} with letters, digits or _"
                ));
            }
        } else if seg == "." || seg == ".." {
            return Err("must not contain dot segments".into());
        } else if portcullis_base::path::check_path(&format!("/{seg}")).is_err() {
            return Err(format!(
                "segment `{seg}` is not a canonical literal or a {{Name}} parameter"
            ));
        }
    }
    Ok(())
}

/// Loads and compiles every policy file; problems go to `errors`.
pub fn load(
    paths: &[PathBuf],
    known: &Known<'_>,
    errors: &mut Vec<ConfigError>,
) -> Option<PolicySet> {
    let (upstreams, default_body_limit) = (&known.upstreams, known.default_body_limit);
    let files = policy_files(paths, errors);
    let mut digest = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut routes: Vec<Arc<Route>> = Vec::new();
    let mut by_method: HashMap<http::Method, matchit::Router<Arc<Route>>> = HashMap::new();
    let mut templates: BTreeMap<String, Vec<http::Method>> = BTreeMap::new();
    let mut ids: HashMap<String, PathBuf> = HashMap::new();
    let start_errors = errors.len();
    let mut specs = contract::Specs::default();
    if files.is_empty() && errors.len() == start_errors {
        if let Some(first) = paths.first() {
            Problems::new(first, errors).push("", "no policy files found");
        }
    }
    for file in &files {
        let file_start = errors.len();
        let mut p = Problems::new(file, errors);
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) => {
                p.push("", format!("cannot read the file: {e}"));
                continue;
            }
        };
        digest.update(file.file_name().map_or(&[][..], |n| n.as_encoded_bytes()));
        digest.update(text.as_bytes());
        let parsed: FilePolicy = match serde_saphyr::from_str(&text) {
            Ok(f) => f,
            Err(e) => {
                p.push("", format!("invalid YAML: {e}"));
                continue;
            }
        };
        let _ = &parsed.description;
        if parsed.group.is_empty() {
            p.push("group", "must not be empty");
        }
        if parsed.routes.is_empty() {
            p.push("routes", "at least one route is required");
        }
        let group_errors = match parsed
            .errors
            .as_deref()
            .map(|e| (e, ErrorDialect::parse(e)))
        {
            None => None,
            Some((_, Some(d))) => Some(d),
            Some((e, None)) => {
                p.push("errors", format!("unknown value `{e}` (obie or problem)"));
                None
            }
        };
        for (i, r) in parsed.routes.iter().enumerate() {
            let field = |s: &str| format!("routes[{i}].{s}");
            let upstream = r
                .upstream
                .clone()
                .unwrap_or_else(|| parsed.upstream.clone());
            if !known.standalone && !upstreams.contains(&upstream.as_str()) {
                let f = if r.upstream.is_some() {
                    field("upstream")
                } else {
                    "upstream".to_string()
                };
                p.push(f, format!("unknown upstream `{upstream}`"));
            }
            if r.id.is_empty() {
                p.push(field("id"), "must not be empty");
            } else if let Some(prev) = ids.insert(r.id.clone(), file.clone()) {
                p.push(
                    field("id"),
                    format!("`{}` is already used in {}", r.id, prev.display()),
                );
            }
            let method = if METHODS.contains(&r.method.as_str()) {
                r.method.parse::<http::Method>().ok()
            } else {
                p.push(
                    field("method"),
                    format!("`{}` is not one of {}", r.method, METHODS.join(", ")),
                );
                None
            };
            if let Err(e) = check_template(&r.path) {
                p.push(field("path"), e);
                continue;
            }
            let client_cert = match r.client_cert.as_deref() {
                None | Some("required") => CertRequirement::Required,
                Some("optional") => CertRequirement::Optional,
                Some(o) => {
                    p.push(
                        field("client_cert"),
                        format!("unknown value `{o}` (required or optional)"),
                    );
                    CertRequirement::Required
                }
            };
            let auth = r.auth.as_ref().and_then(|a| {
                let profile = match a.profile.as_str() {
                    "fapi2" => Profile::Fapi2,
                    "fapi1-advanced" => Profile::Fapi1Advanced,
                    "bearer" => Profile::Bearer,
                    o => {
                        p.push(
                            field("auth.profile"),
                            format!("unknown profile `{o}` (fapi2, fapi1-advanced or bearer)"),
                        );
                        return None;
                    }
                };
                let issuer = match (&a.issuer, known.issuers.as_slice()) {
                    (Some(i), _) if known.standalone => i.clone(),
                    (None, _) if known.standalone => "default".to_string(),
                    (Some(i), all) if all.contains(&i.as_str()) => i.clone(),
                    (Some(i), _) => {
                        p.push(field("auth.issuer"), format!("unknown issuer `{i}`"));
                        return None;
                    }
                    (None, [only]) => only.to_string(),
                    (None, []) => {
                        p.push(field("auth"), "the config defines no issuers");
                        return None;
                    }
                    (None, _) => {
                        p.push(field("auth.issuer"), "required when the config defines several issuers");
                        return None;
                    }
                };
                if profile == Profile::Fapi1Advanced && client_cert == CertRequirement::Optional {
                    p.push(field("client_cert"), "fapi1-advanced binds tokens to the client certificate; it cannot be optional");
                }
                Some(RouteAuth {
                    profile,
                    issuer,
                    forward_credentials: a.forward_credentials,
                    dpop_nonce: a.dpop_nonce,
                })
            });
            let authz = rules::compile(
                &mut p,
                &field,
                rules::FileAuthz {
                    scopes: &r.scopes,
                    consent: &r.consent,
                    rules: &r.rules,
                    response_rules: &r.response_rules,
                    shadow: r.shadow,
                },
                &template_params(&r.path),
                r.auth.is_some(),
            );
            if r.consent.is_some() && !known.has_consent {
                p.push(field("consent"), "the config has no `consent` source");
            }
            let signature = match &r.signature {
                None => None,
                Some(s) => match signature::validate(s, &mut p, &field) {
                    Some(s) => Some(s),
                    None => continue,
                },
            };
            let idempotency = match r.idempotency.as_deref() {
                None => crate::IdempotencyMode::None,
                Some(v) => match crate::IdempotencyMode::parse(v) {
                    Some(mode) => mode,
                    None => {
                        p.push(
                            field("idempotency"),
                            format!("unknown value `{v}` (required, optional or none)"),
                        );
                        continue;
                    }
                },
            };
            let idempotency_current = match r.idempotency_current.as_deref() {
                None => None,
                Some(_) if idempotency == crate::IdempotencyMode::None => {
                    p.push(
                        field("idempotency_current"),
                        "needs `idempotency: required` or `optional` (a replay is what it answers)",
                    );
                    continue;
                }
                Some(v) => match current::CurrentFrom::parse(v) {
                    Ok(c) => Some(c),
                    Err(e) => {
                        p.push(field("idempotency_current"), e);
                        continue;
                    }
                },
            };
            // OBIE routes answer in the OBIE error body; a route that requires an OBIE
            // `x-jws-signature` is one even when its group does not say so.
            let obie_signed = matches!(
                signature,
                Some(signature::RouteSignature {
                    kind: signature::SignatureKind::ObieJws(_),
                    ..
                })
            );
            let errors = match r.errors.as_deref().map(|e| (e, ErrorDialect::parse(e))) {
                Some((_, Some(d))) => d,
                Some((e, None)) => {
                    p.push(
                        field("errors"),
                        format!("unknown value `{e}` (obie or problem)"),
                    );
                    continue;
                }
                None => match group_errors {
                    Some(d) => d,
                    None if obie_signed => ErrorDialect::Obie,
                    None => ErrorDialect::Problem,
                },
            };
            let mut media = |name: &str, list: &Option<Vec<String>>, default: Vec<String>| {
                let Some(list) = list else {
                    return Some(default);
                };
                let mut out = Vec::new();
                for (j, m) in list.iter().enumerate() {
                    match media_type(m) {
                        Ok(m) => out.push(m),
                        Err(e) => {
                            p.push(field(&format!("{name}[{j}]")), e);
                            return None;
                        }
                    }
                }
                if out.is_empty() {
                    p.push(
                        field(name),
                        "must name at least one media type (leave it out to accept any)",
                    );
                    return None;
                }
                Some(out)
            };
            // An OBIE API takes and answers JSON: that is the default there. Elsewhere the proxy
            // does not know what the upstream takes or makes, so nothing is assumed.
            let json = |yes: bool| {
                if yes {
                    vec![JSON.to_string()]
                } else {
                    Vec::new()
                }
            };
            let obie = errors == ErrorDialect::Obie;
            let Some(accepts) = media("accepts", &r.accepts, json(obie)) else {
                continue;
            };
            let Some(produces) = media("produces", &r.produces, json(obie)) else {
                continue;
            };
            let contract = match &r.contract {
                None => None,
                Some(c) => match contract::compile(c, file, &mut specs) {
                    Ok(c) => Some(Arc::new(c)),
                    Err((f, e)) => {
                        p.push(field(&format!("contract.{f}")), e);
                        continue;
                    }
                },
            };
            let Some(method) = method else { continue };
            let Some(authz) = authz else { continue };
            let route = Arc::new(Route {
                id: r.id.clone(),
                group: parsed.group.clone(),
                method: method.clone(),
                template: r.path.clone(),
                upstream,
                body_limit: r.body_limit.unwrap_or(default_body_limit),
                client_cert,
                auth,
                authz,
                signature,
                rate_limit: r.rate_limit.clone(),
                idempotency,
                idempotency_current,
                path_parameters: r.path_parameters,
                method_override: r.method_override,
                errors,
                accepts,
                produces,
                contract,
                file: file.clone(),
            });
            let router = by_method.entry(method.clone()).or_default();
            if let Err(e) = router.insert(r.path.clone(), Arc::clone(&route)) {
                p.push(
                    field("path"),
                    format!("conflicts with another {method} route: {e}"),
                );
                continue;
            }
            templates.entry(r.path.clone()).or_default().push(method);
            routes.push(route);
        }
        // Point each route's problems at its line as well as its field path.
        let lines = route_lines(&text);
        for e in errors[file_start..].iter_mut() {
            let Some(i) = e
                .field
                .strip_prefix("routes[")
                .and_then(|r| r.split(']').next())
                .and_then(|n| n.parse::<usize>().ok())
            else {
                continue;
            };
            if let Some(line) = lines.get(i) {
                e.reason = format!("{} (route at line {line})", e.reason);
            }
        }
    }
    let mut any_method = matchit::Router::new();
    for (t, methods) in templates {
        if let Err(e) = any_method.insert(t.clone(), methods) {
            if let Some(f) = files.first() {
                Problems::new(f, errors).push("routes", format!("path `{t}`: {e}"));
            }
        }
    }
    if errors.len() > start_errors {
        return None;
    }
    // A changed description is a changed policy: its bytes are part of the version.
    for text in specs.texts() {
        digest.update(text.as_bytes());
    }
    let hash = digest.finish();
    let version: String = hash.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Some(PolicySet {
        by_method,
        any_method,
        routes,
        version,
    })
}

/// Loads a policy set from files alone (used by tests and `check`).
pub fn load_files(
    paths: &[PathBuf],
    known: &Known<'_>,
) -> Result<PolicySet, portcullis_base::problems::ConfigErrors> {
    let mut errors = Vec::new();
    match load(paths, known, &mut errors) {
        Some(p) if errors.is_empty() => Ok(p),
        _ => Err(portcullis_base::problems::ConfigErrors(errors)),
    }
}

/// The directory a policy path names, for watchers.
pub fn watch_root(p: &Path) -> &Path {
    if p.is_dir() {
        p
    } else {
        p.parent().unwrap_or(Path::new("."))
    }
}

#[cfg(test)]
mod tests;
