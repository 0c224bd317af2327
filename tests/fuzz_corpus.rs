//! Corpus replay: every file of `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/` goes
//! through the same entry function as the cargo-fuzz target of that name
//! (`portcullis_fuzzing`), under stable Rust, as part of the ordinary test suite. A crash the
//! fuzzer found stays fixed because its input stays in `fuzz/regressions/`.

use std::path::{Path, PathBuf};

use portcullis_fuzzing::TARGETS;

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
    let n = portcullis_fuzzing::seeds::write_all(&repo(), &vectors, &repo().join("fuzz/corpus"))
        .expect("write the seeds");
    println!("wrote {n} seed files");
}

/// The `head` seeds sit on both sides of the request head checks, so the invariants the target
/// asserts after an accepted head run from the first input on: the good heads pass (a host of
/// ours too), each refusal seed is refused.
#[test]
fn the_head_seeds_reach_both_sides_of_the_head_checks() {
    let dir = repo().join("fuzz/corpus/head");
    let outcome = |name: &str| {
        let data = std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        portcullis_fuzzing::head_accepted(&data).unwrap_or_else(|| panic!("{name} is no head"))
    };
    for good in [
        "head-good-h11",
        "head-good-h10",
        "head-good-h2",
        "head-post-chunked",
    ] {
        assert_eq!(outcome(good), [true, true], "{good}");
    }
    assert_eq!(
        outcome("head-not-ours"),
        [true, false],
        "a host that is not ours"
    );
    for bad in [
        "head-cl-and-te",
        "head-two-cl",
        "head-cl-plus",
        "head-te-gzip",
        "head-te-h10",
        "head-underscore",
        "head-method-override",
        "head-upgrade",
        "head-no-host",
        "head-two-hosts",
        "head-userinfo",
        "head-h2-host-mismatch",
        "head-uri-too-long",
        "head-too-many-headers",
        "head-headers-too-large",
    ] {
        assert_eq!(outcome(bad), [false, false], "{bad}");
    }
}
