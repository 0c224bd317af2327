//! `portcullis audit report`: who called what, per client, from an audit log.
//!
//! A client is the triple (certificate thumbprint, organization id, OAuth client id); any part
//! may be absent (`-`): a route with optional mTLS, or a token stage that has not run. For each
//! client: routes used (allowed and refused counts), scopes granted (from tokens) against scopes
//! used (required by the routes it was allowed on), refusals by reason, first and last seen, and
//! the certificate's notAfter. With the policy (`--config`), routes that no request matched are
//! listed too. Failed handshakes are counted by category.
//!
//! The report reads records; it does not check them — run `audit verify` for that. Lines that
//! are not JSON are counted and skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Write as _};

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

/// Builds the report from log contents (in any order); `policy_routes` are the route ids of
/// the configured policy, when known.
pub fn build(logs: &[&[u8]], policy_routes: Option<&[String]>) -> Report {
    let mut r = Report::default();
    let mut clients: BTreeMap<Key, ClientReport> = BTreeMap::new();
    let mut called: BTreeSet<String> = BTreeSet::new();
    for data in logs {
        for line in data.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) else {
                r.unreadable_lines += 1;
                continue;
            };
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
                    let c = clients.entry(key.clone()).or_insert_with(|| ClientReport {
                        thumbprint: key.0,
                        org_id: key.1,
                        client_id: key.2,
                        ..ClientReport::default()
                    });
                    add(c, &v, &mut called);
                }
                _ => {}
            }
        }
    }
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
            .filter(|id| !called.contains(*id))
            .cloned()
            .collect()
    });
    r
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
        }
        if !self.handshake_failures.is_empty() {
            writeln!(f)?;
            let mut line = String::new();
            for (cat, n) in &self.handshake_failures {
                let _ = write!(line, "{cat}={n} ");
            }
            writeln!(f, "failed handshakes  {}", line.trim_end())?;
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
                    "routes never called  (give --config to compare with the policy)"
                )
            }
        }
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
}
