//! Policies: the route table, loaded from YAML files in `policies/`.
//!
//! A policy file names a group of routes and the upstream they go to; each route is a method and
//! a path template (`/open-banking/v3.1/aisp/accounts/{AccountId}`). Routes compile at load into
//! one `matchit` radix tree per method plus one over all methods (to tell 404 from 405), so a
//! lookup is a tree walk, not a scan. Anything not declared is refused: default deny.
//!
//! This first format is deliberately small; later issues add scopes, bindings, signatures,
//! object rules and consent to the same `routes` entries.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use crate::config::{ConfigError, Problems};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePolicy {
    group: String,
    upstream: String,
    #[serde(default)]
    description: Option<String>,
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
}

/// Whether a route needs a verified client certificate on the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertRequirement {
    Required,
    Optional,
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
    pub file: PathBuf,
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

/// Why no route matched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NoRoute {
    NotFound,
    MethodNotAllowed { allow: Vec<http::Method> },
}

impl PolicySet {
    /// Finds the route for an already checked path (see [`crate::path::check_path`]).
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
        } else if crate::path::check_path(&format!("/{seg}")).is_err() {
            return Err(format!(
                "segment `{seg}` is not a canonical literal or a {{Name}} parameter"
            ));
        }
    }
    Ok(())
}

/// Loads and compiles every policy file; problems go to `errors`.
pub(crate) fn load(
    paths: &[PathBuf],
    upstreams: &[&str],
    default_body_limit: u64,
    errors: &mut Vec<ConfigError>,
) -> Option<PolicySet> {
    let files = policy_files(paths, errors);
    let mut digest = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut routes: Vec<Arc<Route>> = Vec::new();
    let mut by_method: HashMap<http::Method, matchit::Router<Arc<Route>>> = HashMap::new();
    let mut templates: BTreeMap<String, Vec<http::Method>> = BTreeMap::new();
    let mut ids: HashMap<String, PathBuf> = HashMap::new();
    let start_errors = errors.len();
    if files.is_empty() && errors.len() == start_errors {
        if let Some(first) = paths.first() {
            Problems::new(first, errors).push("", "no policy files found");
        }
    }
    for file in &files {
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
        for (i, r) in parsed.routes.iter().enumerate() {
            let field = |s: &str| format!("routes[{i}].{s}");
            let upstream = r
                .upstream
                .clone()
                .unwrap_or_else(|| parsed.upstream.clone());
            if !upstreams.contains(&upstream.as_str()) {
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
            let Some(method) = method else { continue };
            let route = Arc::new(Route {
                id: r.id.clone(),
                group: parsed.group.clone(),
                method: method.clone(),
                template: r.path.clone(),
                upstream,
                body_limit: r.body_limit.unwrap_or(default_body_limit),
                client_cert,
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
    upstreams: &[&str],
    default_body_limit: u64,
) -> Result<PolicySet, crate::config::ConfigErrors> {
    let mut errors = Vec::new();
    match load(paths, upstreams, default_body_limit, &mut errors) {
        Some(p) if errors.is_empty() => Ok(p),
        _ => Err(crate::config::ConfigErrors(errors)),
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
