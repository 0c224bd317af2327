//! Corpus replay: every file of `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/` goes
//! through the same entry function as the cargo-fuzz target of that name
//! (`portcullis::fuzzing`), under stable Rust, as part of the ordinary test suite. A crash the
//! fuzzer found stays fixed because its input stays in `fuzz/regressions/`.

use std::path::{Path, PathBuf};

use portcullis::fuzzing::TARGETS;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && !p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with('.') || n.ends_with(".md"))
        })
        .collect();
    out.sort();
    out
}

#[test]
fn every_seed_and_regression_input_replays_through_its_target() {
    let mut total = 0;
    for (name, run) in TARGETS {
        let seeds = files(&repo().join("fuzz/corpus").join(name));
        assert!(
            !seeds.is_empty(),
            "fuzz/corpus/{name} has no seed files: every target needs a committed seed corpus"
        );
        let regressions = files(&repo().join("fuzz/regressions").join(name));
        for f in seeds.iter().chain(&regressions) {
            let data = std::fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            let outcome = std::panic::catch_unwind(|| run(&data));
            assert!(outcome.is_ok(), "{} fails target {name}", f.display());
            total += 1;
        }
    }
    assert!(total >= TARGETS.len());
}

/// Regenerates the seed corpora from the harness keys, the repository's config and policy
/// files, the vendored test vectors (`tests/vectors/`) and the real audit writer:
/// `cargo test --test fuzz_corpus -- --ignored write_seeds`.
#[test]
#[ignore = "writes fuzz/corpus; run by hand"]
fn write_seeds() {
    let vectors = repo().join("tests/vectors");
    let n = portcullis::fuzzing::seeds::write_all(&repo(), &vectors, &repo().join("fuzz/corpus"))
        .expect("write the seeds");
    println!("wrote {n} seed files");
}
