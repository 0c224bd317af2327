//! The architecture stays what docs/architecture.md says: the crate graph there is the one
//! `cargo metadata` gives (cargo itself forbids cycles between crates), and no module imports,
//! at any level of any crate, a sibling module that imports it back.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The workspace's crates and the workspace crates each depends on (normal dependencies).
fn crate_graph() -> BTreeMap<String, BTreeSet<String>> {
    let out = std::process::Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(repo())
        .output()
        .expect("cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let packages = m["packages"].as_array().unwrap();
    let names: BTreeSet<String> = packages
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();
    packages
        .iter()
        .map(|p| {
            let deps = p["dependencies"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| d["kind"].is_null())
                .map(|d| d["name"].as_str().unwrap().to_string())
                .filter(|d| names.contains(d))
                .collect();
            (p["name"].as_str().unwrap().to_string(), deps)
        })
        .collect()
}

/// The graph as docs/architecture.md shows it: a Mermaid chart, one edge a line.
fn render(graph: &BTreeMap<String, BTreeSet<String>>) -> String {
    let mut out = String::from("```mermaid\ngraph TD\n");
    for (name, deps) in graph {
        if deps.is_empty() {
            out.push_str(&format!("  {name}\n"));
        }
        for d in deps {
            out.push_str(&format!("  {name} --> {d}\n"));
        }
    }
    out.push_str("```\n");
    out
}

#[test]
fn the_crate_graph_in_the_docs_is_the_one_cargo_metadata_gives() {
    let graph = crate_graph();
    assert!(graph.len() >= 10, "{graph:?}");
    common::check_generated("docs/architecture.md", "crates", &render(&graph));
}

/// A module's path from its file: `src/a/b.rs` and `src/a/b/mod.rs` are `a::b`; `lib.rs`,
/// `main.rs` the crate root.
fn module_of(root: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(root).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("lib" | "main" | "mod")
    ) {
        parts.pop();
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The paths a file names through `crate::`, `super::` and `self::`, use-groups expanded one
/// level, line comments dropped.
fn named_paths(text: &str) -> Vec<Vec<String>> {
    let code: String = text
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let bytes = code.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if !code.is_char_boundary(i) {
            i += 1;
            continue;
        }
        let start_ok = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        let rest = &code[i..];
        let head = ["crate::", "super::", "self::"]
            .into_iter()
            .find(|h| rest.starts_with(h));
        let (true, Some(h)) = (start_ok, head) else {
            i += 1;
            continue;
        };
        let mut path = vec![h.trim_end_matches("::").to_string()];
        let mut j = i + h.len();
        loop {
            let seg: String = code[j..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if seg.is_empty() {
                break;
            }
            j += seg.len();
            path.push(seg);
            if code[j..].starts_with("::") {
                j += 2;
            } else {
                break;
            }
        }
        if code[j..].starts_with('{') {
            let close = code[j..].find('}').map_or(code.len(), |k| j + k);
            for item in code[j + 1..close].split(',') {
                let item = item.split(" as ").next().unwrap_or("").trim();
                if item.is_empty() || item.contains('{') {
                    continue;
                }
                let mut p = path.clone();
                p.extend(item.split("::").map(|s| s.trim().to_string()));
                out.push(p);
            }
            i = close;
        } else {
            out.push(path);
            i = j.max(i + 1);
        }
    }
    out
}

/// Cycles between sibling modules of one crate: for every module, the graph of its children,
/// with an edge when code in one child (or below it) names another child (or below it).
fn module_cycles(root: &Path) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(root, &mut files);
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| module_of(root, f)).collect();
    let mut edges: BTreeSet<(Vec<String>, Vec<String>)> = BTreeSet::new();
    for f in &files {
        let from = module_of(root, f);
        let text = std::fs::read_to_string(f).unwrap();
        for p in named_paths(&text) {
            let mut target = if p[0] == "crate" {
                Vec::new()
            } else {
                from.clone()
            };
            let mut k = 0;
            if p[0] == "super" {
                while k < p.len() && p[k] == "super" {
                    target.pop();
                    k += 1;
                }
            } else {
                k = 1;
            }
            target.extend(p[k..].iter().cloned());
            let resolved = (0..=target.len())
                .rev()
                .map(|n| target[..n].to_vec())
                .find(|m| modules.contains(m))
                .unwrap_or_default();
            if resolved != from {
                edges.insert((from.clone(), resolved));
            }
        }
    }
    let mut cycles = Vec::new();
    for parent in &modules {
        let depth = parent.len();
        let child = |m: &Vec<String>| -> Option<String> {
            (m.len() > depth && m[..depth] == parent[..])
                .then(|| m[depth].clone())
                .filter(|c| c != "tests")
        };
        let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (a, b) in &edges {
            if let (Some(ca), Some(cb)) = (child(a), child(b)) {
                if ca != cb {
                    g.entry(ca).or_default().insert(cb);
                }
            }
        }
        // A cycle exists when some child reaches itself again.
        for start in g.keys() {
            let mut seen = BTreeSet::new();
            let mut stack: Vec<&String> = g[start].iter().collect();
            while let Some(n) = stack.pop() {
                if n == start {
                    cycles.push(format!("{}::{start}", parent.join("::")));
                    break;
                }
                if seen.insert(n.clone()) {
                    stack.extend(g.get(n).into_iter().flatten());
                }
            }
        }
    }
    cycles
}

#[test]
fn no_module_imports_a_sibling_that_imports_it_back() {
    let mut roots = vec![repo().join("src")];
    for e in std::fs::read_dir(repo().join("crates")).unwrap() {
        roots.push(e.unwrap().path().join("src"));
    }
    assert!(roots.len() >= 10);
    let mut found = Vec::new();
    for root in &roots {
        for c in module_cycles(root) {
            found.push(format!("{}: {c}", root.display()));
        }
    }
    assert!(found.is_empty(), "modules on a cycle: {found:#?}");
}

#[test]
fn the_cycle_check_finds_a_cycle() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    std::fs::create_dir_all(src.join("b")).unwrap();
    std::fs::write(src.join("lib.rs"), "mod a;\nmod b;\n").unwrap();
    std::fs::write(src.join("a.rs"), "use crate::b::inner::X;\n").unwrap();
    std::fs::write(src.join("b/mod.rs"), "mod inner;\n").unwrap();
    std::fs::write(src.join("b/inner.rs"), "use super::super::a::Y;\n").unwrap();
    let cycles = module_cycles(&src);
    assert_eq!(cycles, vec!["::a".to_string(), "::b".to_string()]);
}
