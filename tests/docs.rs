//! Every YAML sample in README.md and docs/*.md is a complete file that the real loaders accept
//! (the convention is stated in docs/configuration.md, "Samples in these docs"):
//!
//! - ```` ```yaml config ```` — `Config::load`, from `config/` in a staged copy of the
//!   repository's layout (dev certificates in `certs/`, `policies/`, `clients/`, `secrets/`);
//! - ```` ```yaml config otlp ```` — the same; a build without the `otlp` feature must refuse it
//!   with exactly the one `tracing.otlp_endpoint` error;
//! - ```` ```yaml policy ```` — `policy::load_files` on the file alone (with the vendored
//!   OpenAPI descriptions in `openapi/` beside it, for `contract` samples);
//! - ```` ```yaml policy-test ```` — `policy::testing::run` against the repository's policies;
//!   every case must pass;
//! - ```` ```yaml scenario ```` — `loadgen::Scenario::load_with`, beside the staged `certs/`;
//! - ```` ```yaml not-loadable ```` — a deliberate fragment; there must be exactly
//!   [`NOT_LOADABLE`] of them.
//!
//! A ```` ```yaml ```` fence without a kind fails, and so does finding no samples at all.

use std::path::PathBuf;

use portcullis_proxy::config::Config;

/// How many ```` ```yaml not-loadable ```` blocks the docs may hold. None: every sample loads.
const NOT_LOADABLE: usize = 0;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One fenced YAML block.
#[derive(Debug)]
struct Sample {
    /// `README.md:123` (the line of the opening fence).
    place: String,
    /// The words of the info string after `yaml`.
    kind: Vec<String>,
    text: String,
}

/// README.md and docs/*.md, sorted.
fn markdown_files() -> Vec<PathBuf> {
    let mut files = vec![repo().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .expect("docs/")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

/// Every fenced block whose info string starts with `yaml` or `yml`, in every markdown file.
fn samples() -> Vec<Sample> {
    let mut out = Vec::new();
    for file in markdown_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        let name = file.strip_prefix(repo()).unwrap().display().to_string();
        out.extend(samples_in(&name, &text));
    }
    out
}

/// The fenced YAML blocks of one markdown text. A fence may be indented (inside a list item);
/// its body loses the same indentation.
fn samples_in(name: &str, text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    let mut open: Option<(usize, usize, Option<Vec<String>>, String)> = None;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        match &mut open {
            None => {
                if let Some(info) = trimmed.strip_prefix("```") {
                    let mut words = info.split_whitespace().map(str::to_string);
                    let yaml = match words.next() {
                        Some(w) if w == "yaml" || w == "yml" => Some(words.collect()),
                        _ => None,
                    };
                    open = Some((i + 1, indent, yaml, String::new()));
                }
            }
            Some((start, fence_indent, yaml, body)) => {
                if trimmed.trim_end() == "```" {
                    if let Some(kind) = yaml.take() {
                        out.push(Sample {
                            place: format!("{name}:{start}"),
                            kind,
                            text: std::mem::take(body),
                        });
                    }
                    open = None;
                } else {
                    let cut = line
                        .char_indices()
                        .take_while(|(n, c)| *n < *fence_indent && *c == ' ')
                        .count();
                    body.push_str(&line[cut..]);
                    body.push('\n');
                }
            }
        }
    }
    assert!(open.is_none(), "{name}: a fence is never closed");
    out
}

fn of_kind<'a>(all: &'a [Sample], kind: &str) -> Vec<&'a Sample> {
    all.iter()
        .filter(|s| s.kind.first().map(String::as_str) == Some(kind))
        .collect()
}

/// Panics with every failure at once, so one broken sample does not hide another.
fn report(what: &str, failures: Vec<String>) {
    assert!(
        failures.is_empty(),
        "{} {what} failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// A directory laid out as the samples expect (docs/configuration.md): the repository's config/
/// and policies/, dev certificates in certs/ (plus response.key and k1.key), an empty clients/
/// and the secret files the samples name in secrets/.
fn staged() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for sub in ["config", "policies", "policies/sidecar"] {
        std::fs::create_dir_all(d.path().join(sub)).unwrap();
        for e in std::fs::read_dir(repo().join(sub)).unwrap() {
            let p = e.unwrap().path();
            if p.is_file() {
                std::fs::copy(&p, d.path().join(sub).join(p.file_name().unwrap())).unwrap();
            }
        }
    }
    let certs = d.path().join("certs");
    portcullis_tools::devcerts::generate(&certs).unwrap();
    // Signing keys the samples name: a response signing key (config) and a client's JWS key
    // (scenario). P-256 keys, so ES256; any PEM key of a supported kind would do.
    std::fs::copy(certs.join("as.key"), certs.join("response.key")).unwrap();
    std::fs::copy(certs.join("dpop.key"), certs.join("k1.key")).unwrap();
    std::fs::create_dir_all(d.path().join("clients")).unwrap();
    let secrets = d.path().join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    std::fs::write(
        secrets.join("introspection"),
        "introspection-client-secret\n",
    )
    .unwrap();
    std::fs::write(secrets.join("redis-password"), "redis-password\n").unwrap();
    std::fs::write(secrets.join("consent-token"), "consent-api-token\n").unwrap();
    std::fs::write(secrets.join("consent-client"), "consent-client-secret\n").unwrap();
    std::fs::write(secrets.join("dpop-nonce"), [7u8; 32]).unwrap();
    std::fs::write(
        secrets.join("admin-token"),
        "admin-token-for-the-docs-samples-0123456789\n",
    )
    .unwrap();
    d
}

fn file_name(s: &Sample, ext: &str) -> String {
    format!("docs-{}.{ext}", s.place.replace(['/', ':', '.'], "-"))
}

#[test]
fn every_yaml_sample_is_marked_and_there_are_samples() {
    let all = samples();
    let known = [
        "config",
        "policy",
        "policy-test",
        "scenario",
        "not-loadable",
    ];
    let unmarked: Vec<String> = all
        .iter()
        .filter(|s| s.kind.first().is_none_or(|k| !known.contains(&k.as_str())))
        .map(|s| format!("{}: ```yaml {}", s.place, s.kind.join(" ")))
        .collect();
    assert!(
        unmarked.is_empty(),
        "YAML samples without a known kind ({}) in the fence's info string:\n{}",
        known.join(", "),
        unmarked.join("\n")
    );
    let odd_flags: Vec<&str> = all
        .iter()
        .filter(|s| match s.kind.first().map(String::as_str) {
            Some("config") => s.kind[1..].iter().any(|f| f != "otlp"),
            _ => s.kind.len() > 1,
        })
        .map(|s| s.place.as_str())
        .collect();
    assert!(odd_flags.is_empty(), "unknown flags at {odd_flags:?}");
    let not_loadable = of_kind(&all, "not-loadable");
    // Exactly as many as allowed: more is a sample that does not load, fewer a stale count.
    assert_eq!(
        not_loadable.len(),
        NOT_LOADABLE,
        "`yaml not-loadable` blocks: {:?}",
        not_loadable.iter().map(|s| &s.place).collect::<Vec<_>>()
    );
    for kind in ["config", "policy", "policy-test", "scenario"] {
        assert!(
            !of_kind(&all, kind).is_empty(),
            "no `yaml {kind}` sample found in README.md or docs/"
        );
    }
}

#[test]
fn every_config_sample_loads() {
    portcullis_proxy::install_crypto_provider();
    let all = samples();
    let configs = of_kind(&all, "config");
    assert!(!configs.is_empty(), "no config samples found");
    let d = staged();
    let mut failures = Vec::new();
    for s in &configs {
        let path = d.path().join("config").join(file_name(s, "yaml"));
        std::fs::write(&path, &s.text).unwrap();
        let needs_otlp = s.kind.iter().any(|f| f == "otlp");
        match (Config::load(&path), needs_otlp && !cfg!(feature = "otlp")) {
            (Ok(c), false) if c.policies.routes().is_empty() => {
                failures.push(format!("{}: no routes", s.place))
            }
            (Ok(_), false) => {}
            (Err(e), false) => failures.push(format!("{}:\n{e}", s.place)),
            (Ok(_), true) => failures.push(format!(
                "{}: loaded without the otlp feature, but is marked `otlp`",
                s.place
            )),
            (Err(e), true) => {
                let only_otlp = e.0.len() == 1
                    && e.0[0].field == "tracing.otlp_endpoint"
                    && e.0[0].reason.contains("no OTLP export");
                if !only_otlp {
                    failures.push(format!("{}:\n{e}", s.place));
                }
            }
        }
    }
    report("config samples", failures);
}

#[test]
fn every_policy_sample_loads() {
    let all = samples();
    let policies = of_kind(&all, "policy");
    assert!(!policies.is_empty(), "no policy samples found");
    let mut failures = Vec::new();
    for s in &policies {
        let d = tempfile::tempdir().unwrap();
        // The OpenAPI descriptions a `contract` sample names, beside it.
        let openapi = d.path().join("openapi");
        std::fs::create_dir_all(&openapi).unwrap();
        for f in [
            "obie-payment-initiation-v4.0.0.yaml",
            "obie-account-info-v4.0.0.yaml",
        ] {
            std::fs::copy(
                repo().join("tests/vectors/openapi").join(f),
                openapi.join(f),
            )
            .unwrap();
        }
        let path = d.path().join(file_name(s, "yaml"));
        std::fs::write(&path, &s.text).unwrap();
        match portcullis_policy::load_files(&[path], &portcullis_policy::Known::standalone()) {
            Ok(set) if !set.routes().is_empty() => {}
            Ok(_) => failures.push(format!("{}: no routes", s.place)),
            Err(e) => failures.push(format!("{}:\n{e}", s.place)),
        }
    }
    report("policy samples", failures);
}

#[test]
fn every_policy_test_sample_passes_against_the_repository_policies() {
    let all = samples();
    let tests = of_kind(&all, "policy-test");
    assert!(!tests.is_empty(), "no policy-test samples found");
    let mut failures = Vec::new();
    for s in &tests {
        let d = tempfile::tempdir().unwrap();
        for e in std::fs::read_dir(repo().join("policies")).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            if p.is_file() && name.ends_with(".yaml") && !name.ends_with(".test.yaml") {
                std::fs::copy(&p, d.path().join(&name)).unwrap();
            }
        }
        std::fs::write(d.path().join(file_name(s, "test.yaml")), &s.text).unwrap();
        match portcullis_tools::policytest::run(d.path()) {
            Err(e) => failures.push(format!("{}: {e}", s.place)),
            Ok(cases) if cases.is_empty() => failures.push(format!("{}: no cases", s.place)),
            Ok(cases) => {
                for c in cases.iter().filter(|c| !c.passed) {
                    failures.push(format!(
                        "{}: case `{}`: expected {}, got {}",
                        s.place, c.name, c.expected, c.got
                    ));
                }
            }
        }
    }
    report("policy-test samples", failures);
}

#[test]
fn every_scenario_sample_loads() {
    portcullis_proxy::install_crypto_provider();
    let all = samples();
    let scenarios = of_kind(&all, "scenario");
    assert!(!scenarios.is_empty(), "no scenario samples found");
    let d = staged();
    let mut failures = Vec::new();
    for s in &scenarios {
        let path = d.path().join(file_name(s, "yaml"));
        std::fs::write(&path, &s.text).unwrap();
        // `${VAR:-default}` takes its default: the test does not depend on the environment.
        if let Err(e) = portcullis_loadgen::Scenario::load_with(&path, &|_| None) {
            failures.push(format!("{}:\n{e}", s.place));
        }
    }
    report("scenario samples", failures);
}

#[test]
fn the_fence_reader_finds_indented_blocks_and_skips_other_languages() {
    let text = "intro\n\n```sh\nls\n```\n\n- item\n\n  ```yaml policy\n  group: g\n  ```\n\n```yaml\na: 1\n```\n";
    let s = samples_in("t.md", text);
    assert_eq!(s.len(), 2, "{s:?}");
    assert_eq!(s[0].place, "t.md:9");
    assert_eq!(s[0].kind, ["policy"]);
    assert_eq!(s[0].text, "group: g\n");
    assert!(s[1].kind.is_empty());
    assert_eq!(s[1].text, "a: 1\n");
}
