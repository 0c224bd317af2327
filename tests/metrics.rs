//! `/metrics` by Prometheus conventions, checked mechanically on a real scrape: a real proxy
//! (mTLS listener, recording upstream, file audit) after allowed, refused and unrouted
//! requests. The exposition text is parsed line by line; every family must have HELP and TYPE,
//! counters end in `_total`, durations and expiries are in base units, histograms are whole,
//! route labels stay within the config's routes. The example alert rules
//! (`config/alerts/portcullis.rules.yaml`) may only name metrics this scrape showed, and pass
//! `promtool check rules` where promtool is installed (`test.sh` installs it).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;

const ACCOUNTS: &str = "/open-banking/v3.1/aisp/accounts";
const WAIT: Duration = Duration::from_secs(10);

/// One parsed sample: metric name, labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

#[derive(Default, Debug)]
struct Scrape {
    /// Family name → (type, help).
    families: BTreeMap<String, (String, String)>,
    /// Family name → its samples.
    samples: BTreeMap<String, Vec<Sample>>,
}

fn parse_labels(mut rest: &str, line: &str) -> (BTreeMap<String, String>, String) {
    let mut labels = BTreeMap::new();
    if let Some(r) = rest.strip_prefix('{') {
        rest = r;
        loop {
            let eq = rest
                .find("=\"")
                .unwrap_or_else(|| panic!("label: {line:?}"));
            let key = rest[..eq].to_string();
            assert!(
                !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
                "label name {key:?} in {line:?}"
            );
            let mut value = String::new();
            let mut chars = rest[eq + 2..].char_indices();
            let end = loop {
                match chars
                    .next()
                    .unwrap_or_else(|| panic!("unterminated: {line:?}"))
                {
                    (i, '"') => break eq + 2 + i + 1,
                    (_, '\\') => match chars.next().unwrap().1 {
                        '\\' => value.push('\\'),
                        '"' => value.push('"'),
                        'n' => value.push('\n'),
                        c => panic!("escape \\{c} in {line:?}"),
                    },
                    (_, c) => value.push(c),
                }
            };
            assert!(labels.insert(key, value).is_none(), "label twice: {line:?}");
            rest = &rest[end..];
            if let Some(r) = rest.strip_prefix(',') {
                rest = r;
            } else {
                rest = rest
                    .strip_prefix('}')
                    .unwrap_or_else(|| panic!("labels not closed: {line:?}"));
                break;
            }
        }
    }
    (labels, rest.to_string())
}

/// Parses the text exposition format (0.0.4), asserting its structure on the way: a HELP and
/// then a TYPE line before the samples of each family, each family declared once, every
/// sample under the family declared last.
fn parse(text: &str) -> Scrape {
    let mut s = Scrape::default();
    let mut help: Option<(String, String)> = None;
    let mut current: Option<(String, String)> = None;
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, h) = rest.split_once(' ').unwrap_or((rest, ""));
            assert!(!h.trim().is_empty(), "empty HELP: {line:?}");
            help = Some((name.to_string(), h.to_string()));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE kind");
            let (hname, h) = help
                .take()
                .unwrap_or_else(|| panic!("no HELP before {line:?}"));
            assert_eq!(hname, name, "HELP and TYPE name different families");
            assert!(
                ["counter", "gauge", "histogram"].contains(&kind),
                "type {kind} of {name}"
            );
            assert!(
                s.families
                    .insert(name.to_string(), (kind.to_string(), h))
                    .is_none(),
                "family {name} declared twice"
            );
            s.samples.entry(name.to_string()).or_default();
            current = Some((name.to_string(), kind.to_string()));
            continue;
        }
        assert!(!line.starts_with('#'), "stray comment {line:?}");
        let name_end = line
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or_else(|| panic!("no value: {line:?}"));
        let name = &line[..name_end];
        let (labels, rest) = parse_labels(&line[name_end..], line);
        let value: f64 = rest
            .strip_prefix(' ')
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("value of {line:?}"));
        let (family, kind) = current
            .as_ref()
            .unwrap_or_else(|| panic!("sample before any TYPE: {line:?}"));
        let ok = if kind == "histogram" {
            ["_bucket", "_sum", "_count"]
                .iter()
                .any(|sfx| name.strip_suffix(sfx) == Some(family.as_str()))
        } else {
            name == family
        };
        assert!(ok, "sample {name} under family {family} ({kind})");
        s.samples.get_mut(family).unwrap().push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    s
}

/// The metric names a scrape can show (histograms with their three series).
fn names(s: &Scrape) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (f, (kind, _)) in &s.families {
        out.insert(f.clone());
        if kind == "histogram" {
            for sfx in ["_bucket", "_sum", "_count"] {
                out.insert(format!("{f}{sfx}"));
            }
        }
    }
    out
}

/// One histogram's series under one label set: buckets (le, count), `_sum`, `_count`.
type Series = (Vec<(f64, f64)>, Option<f64>, Option<f64>);

async fn scrape_after_traffic() -> (Proxy, Upstream, String) {
    let up = Upstream::start(Behaviour::Ok).await;
    let p = Proxy::start(Options::new(up.addr)).await;
    assert_eq!(p.get(ACCOUNTS).await.0.status, 200);
    assert_eq!(p.get(ACCOUNTS).await.0.status, 200);
    assert_eq!(p.get("/status").await.0.status, 200);
    assert_eq!(p.get("/nope").await.0.status, 404);
    p.shared.audit.sync(WAIT);
    let (status, text) = p.admin_get("/metrics").await;
    assert_eq!(status, 200);
    (p, up, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_after_traffic_follows_the_prometheus_conventions() {
    let (p, up, text) = scrape_after_traffic().await;
    assert_eq!(up.count(), 3, "the 404 never reached the upstream");
    let s = parse(&text);

    for (name, (kind, _)) in &s.families {
        // Base units and counter suffixes.
        if kind == "counter" {
            assert!(name.ends_with("_total"), "counter {name} without _total");
        } else {
            assert!(
                !name.ends_with("_total"),
                "{kind} {name} named like a counter"
            );
        }
        for unit in [
            "_days",
            "_hours",
            "_minutes",
            "_milliseconds",
            "_ms",
            "_us",
            "_kb",
            "_mb",
        ] {
            assert!(
                !name.contains(&format!("{unit}_")) && !name.ends_with(unit),
                "{name}: not a base unit ({unit})"
            );
        }
        if name.contains("expiry") || name.contains("next_update") {
            assert!(
                name.ends_with("_timestamp_seconds"),
                "{name}: expiry as a Unix timestamp"
            );
        }
        if name.contains("duration") || name.contains("latency") {
            assert!(name.ends_with("_seconds"), "{name}: durations in seconds");
        }
        for sample in &s.samples[name] {
            assert!(
                !sample.labels.contains_key("le") || kind == "histogram",
                "{name}: le outside a histogram"
            );
            if name.ends_with("_timestamp_seconds") {
                assert!(
                    sample.value > 1e9,
                    "{name}: {} is not a timestamp",
                    sample.value
                );
            }
            if kind == "counter" {
                assert!(sample.value >= 0.0, "{name}: negative counter");
            }
        }
    }

    // Every histogram: per label set, cumulative buckets ending at +Inf = _count, and a _sum.
    let mut histograms = 0;
    for (name, (kind, _)) in &s.families {
        if kind != "histogram" {
            continue;
        }
        histograms += 1;
        let mut sets: BTreeMap<Vec<(String, String)>, Series> = BTreeMap::new();
        for sample in &s.samples[name] {
            let mut key: Vec<(String, String)> = sample
                .labels
                .iter()
                .filter(|(k, _)| *k != "le")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            key.sort();
            let e = sets.entry(key).or_default();
            match &sample.name[name.len()..] {
                "_bucket" => {
                    let le = &sample.labels["le"];
                    let le = if le == "+Inf" {
                        f64::INFINITY
                    } else {
                        le.parse().unwrap()
                    };
                    e.0.push((le, sample.value));
                }
                "_sum" => e.1 = Some(sample.value),
                "_count" => e.2 = Some(sample.value),
                other => panic!("{name}{other}"),
            }
        }
        for (labels, (buckets, sum, count)) in sets {
            let count = count.unwrap_or_else(|| panic!("{name}{labels:?}: no _count"));
            assert!(sum.is_some(), "{name}{labels:?}: no _sum");
            assert_eq!(
                buckets.last().map(|b| b.0),
                Some(f64::INFINITY),
                "{name}{labels:?}: last bucket not le=\"+Inf\""
            );
            assert_eq!(
                buckets.last().unwrap().1,
                count,
                "{name}{labels:?}: +Inf ≠ _count"
            );
            for w in buckets.windows(2) {
                assert!(
                    w[0].0 < w[1].0 && w[0].1 <= w[1].1,
                    "{name}{labels:?}: {w:?}"
                );
            }
        }
    }
    assert!(
        histograms >= 3,
        "request, upstream and audit write histograms"
    );

    // Route labels: the config's route ids and "unrouted", nothing a client sent.
    let routes: BTreeSet<String> = p
        .shared
        .runtime
        .load()
        .config
        .policies
        .routes()
        .iter()
        .map(|r| r.id.to_string())
        .collect();
    for (name, samples) in &s.samples {
        let seen: BTreeSet<&String> = samples
            .iter()
            .filter_map(|x| x.labels.get("route"))
            .collect();
        assert!(seen.len() <= routes.len() + 1, "{name}: {seen:?}");
        for r in seen {
            assert!(r == "unrouted" || routes.contains(r), "{name}: route {r:?}");
        }
    }
    let per_route: BTreeMap<&str, f64> = s.samples["portcullis_request_duration_seconds"]
        .iter()
        .filter(|x| x.name.ends_with("_count"))
        .map(|x| (x.labels["route"].as_str(), x.value))
        .collect();
    assert_eq!(
        per_route,
        BTreeMap::from([
            ("accounts.list", 2.0),
            ("public.status", 1.0),
            ("unrouted", 1.0)
        ]),
        "{text}"
    );

    // Build info and process metrics.
    let build = &s.samples["portcullis_build_info"];
    assert_eq!(build.len(), 1);
    assert_eq!(build[0].value, 1.0);
    assert_eq!(build[0].labels["version"], env!("CARGO_PKG_VERSION"));
    assert!(build[0].labels.contains_key("commit"));
    let one = |n: &str| -> f64 {
        let v = s
            .samples
            .get(n)
            .unwrap_or_else(|| panic!("{n} missing in\n{text}"));
        assert_eq!(v.len(), 1, "{n}");
        v[0].value
    };
    assert!(one("process_cpu_seconds_total") > 0.0);
    assert!(one("process_resident_memory_bytes") > 1e6);
    let (open, max) = (one("process_open_fds"), one("process_max_fds"));
    assert!(open >= 3.0 && open < max, "{open} of {max}");
    let now = time::OffsetDateTime::now_utc().unix_timestamp() as f64;
    let start = one("process_start_time_seconds");
    assert!(
        start <= now + 1.0 && start > now - 86_400.0,
        "{start} vs {now}"
    );

    // Fill of every bounded in-memory store, between 0 and 1; the audit queue has depth and
    // capacity for its ratio.
    let fill: BTreeMap<&str, f64> = s.samples["portcullis_store_fill_ratio"]
        .iter()
        .map(|x| (x.labels["store"].as_str(), x.value))
        .collect();
    for store in [
        "dpop_replay",
        "idempotency",
        "token_cache",
        "client_cert_expiry",
    ] {
        let v = fill
            .get(store)
            .unwrap_or_else(|| panic!("{store} missing: {fill:?}"));
        assert!((0.0..=1.0).contains(v), "{store}: {v}");
    }
    assert!(fill["client_cert_expiry"] > 0.0, "tpp1 is tracked");
    assert!(one("portcullis_audit_queue_capacity") > 0.0);
    // CRL nextUpdate of the listener's CRL, as a timestamp.
    assert!(
        !s.samples["portcullis_crl_next_update_timestamp_seconds"].is_empty(),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_alert_rules_name_only_metrics_a_scrape_shows() {
    let (_p, _up, text) = scrape_after_traffic().await;
    let known = names(&parse(&text));
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config/alerts/portcullis.rules.yaml");
    let rules_text = std::fs::read_to_string(&path).unwrap();
    let doc: serde_json::Value = serde_saphyr::from_str(&rules_text).unwrap();
    let mut exprs = Vec::new();
    for g in doc["groups"].as_array().expect("groups") {
        for r in g["rules"].as_array().expect("rules") {
            assert!(r["alert"].is_string(), "{r}");
            assert!(r["annotations"]["summary"].is_string(), "{r}");
            exprs.push(r["expr"].as_str().expect("expr").to_string());
        }
    }
    let mut named = BTreeSet::new();
    for e in &exprs {
        // Identifiers outside label matchers and strings; metric names are the ones with our
        // prefixes (PromQL functions and keywords have none).
        let mut rest = e.as_str();
        while let Some(i) = rest.find(|c: char| c.is_ascii_alphabetic() || c == '_') {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(tail.len());
            let ident = &tail[..end];
            if ident.starts_with("portcullis_") || ident.starts_with("process_") {
                assert!(
                    known.contains(ident),
                    "{ident} (in {e:?}) is not on /metrics"
                );
                named.insert(ident.to_string());
            }
            rest = &tail[end..];
        }
    }
    for want in [
        "portcullis_store_fill_ratio",
        "portcullis_key_source_failures_total",
        "portcullis_server_cert_expiry_timestamp_seconds",
        "portcullis_client_cert_expiry_timestamp_seconds",
        "portcullis_crl_next_update_timestamp_seconds",
        "portcullis_audit_queue_depth",
        "portcullis_audit_queue_capacity",
        "portcullis_requests_total",
    ] {
        assert!(named.contains(want), "no alert on {want}");
    }
    assert!(
        exprs.iter().any(|e| e.contains("status=~\"5..\"")),
        "5xx ratio"
    );
    // promtool's own check where it is installed (Debian's `prometheus`; test.sh installs it).
    match std::process::Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&path)
        .output()
    {
        Ok(out) => assert!(
            out.status.success(),
            "promtool check rules:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => {
            eprintln!("promtool not run ({e}): the rules were checked against the scrape only")
        }
    }
}
