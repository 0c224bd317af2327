//! `docs/conformance.md` cannot drift from the code: one row per standards duty, numbered in
//! order, each with a known status; every test a row names exists (a `fn` of that name in that
//! file); every `implemented` row names at least one; the counts at the top are the rows'
//! (`PORTCULLIS_WRITE_DOCS=1` rewrites them).

use std::collections::BTreeMap;
use std::path::Path;

/// The duties of the standards research, in its order.
const DUTIES: usize = 70;

const STATUSES: [&str; 4] = ["implemented", "partial", "not the proxy's", "not doing"];

struct Row {
    number: usize,
    status: String,
    tests: Vec<(String, String)>,
}

fn rows(doc: &str) -> Vec<Row> {
    doc.lines()
        .filter(|l| {
            l.starts_with("| ") && l[2..].chars().next().is_some_and(|c| c.is_ascii_digit())
        })
        .map(|l| {
            let cells: Vec<&str> = l.trim().trim_matches('|').split(" | ").collect();
            assert!(cells.len() >= 5, "a row needs five cells: {l}");
            let proof = cells[4..].join(" | ");
            Row {
                number: cells[0].trim().parse().expect("a row number"),
                status: cells[3].trim().to_string(),
                tests: references(&proof),
            }
        })
        .collect()
}

/// Every `` `path/file.rs::function` `` in a cell.
fn references(cell: &str) -> Vec<(String, String)> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .filter_map(|code| code.split_once(".rs::"))
        .map(|(file, function)| {
            let function = function.split([' ', '[']).next().unwrap_or_default();
            (format!("{file}.rs"), function.to_string())
        })
        .collect()
}

fn counts(rows: &[Row]) -> String {
    let mut by: BTreeMap<&str, usize> = BTreeMap::new();
    for r in rows {
        *by.entry(r.status.as_str()).or_default() += 1;
    }
    let parts: Vec<String> = STATUSES
        .iter()
        .map(|s| format!("{s}: {}", by.get(s).copied().unwrap_or(0)))
        .collect();
    format!("{} duties — {}.\n", rows.len(), parts.join(", "))
}

#[test]
fn the_conformance_table_names_tests_that_exist_and_counts_itself() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let path = repo.join("docs/conformance.md");
    let doc = std::fs::read_to_string(&path).unwrap();
    let rows = rows(&doc);
    assert_eq!(rows.len(), DUTIES, "one row per duty");
    let mut failures = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        if r.number != i + 1 {
            failures.push(format!("row {} is numbered {}", i + 1, r.number));
        }
        if !STATUSES.contains(&r.status.as_str()) {
            failures.push(format!("row {}: unknown status `{}`", r.number, r.status));
        }
        if r.status == "implemented" && r.tests.is_empty() {
            failures.push(format!("row {}: implemented, but names no test", r.number));
        }
        for (file, function) in &r.tests {
            let text = std::fs::read_to_string(repo.join(file)).unwrap_or_default();
            let defined = [format!("fn {function}("), format!("fn {function}<")]
                .iter()
                .any(|d| text.contains(d.as_str()));
            if !defined {
                failures.push(format!("row {}: no `fn {function}` in {file}", r.number));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    let generated = counts(&rows);
    let (begin, end) = (
        "<!-- conformance counts: begin -->\n",
        "<!-- conformance counts: end -->",
    );
    let a = doc.find(begin).expect("the begin marker") + begin.len();
    let b = doc.find(end).expect("the end marker");
    if doc[a..b] != generated && std::env::var_os("PORTCULLIS_WRITE_DOCS").is_some() {
        std::fs::write(&path, format!("{}{generated}{}", &doc[..a], &doc[b..])).unwrap();
        return;
    }
    assert_eq!(
        doc[a..b],
        generated,
        "docs/conformance.md counts are stale: run this test with PORTCULLIS_WRITE_DOCS=1"
    );
}

#[test]
fn references_are_read_from_code_spans() {
    let refs = references(
        "`tests/a.rs::one [A1]`, `crates/x/src/y.rs::two` (400 `token.in_query`), `SECURITY.md`",
    );
    assert_eq!(
        refs,
        [
            ("tests/a.rs".to_string(), "one".to_string()),
            ("crates/x/src/y.rs".to_string(), "two".to_string())
        ]
    );
}
