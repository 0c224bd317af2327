//! Criterion benches for the per-request hot functions of the core: the path check and the
//! route lookup (with the repository's OBIE policies).

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, Criterion};

fn path_check(c: &mut Criterion) {
    let mut g = c.benchmark_group("path");
    for (name, p) in [
        ("short", "/open-banking/v3.1/aisp/accounts"),
        (
            "param",
            "/open-banking/v3.1/aisp/accounts/acc-0001234/transactions",
        ),
        (
            "escaped",
            "/open-banking/v3.1/aisp/accounts/a%20b%3Ac/transactions",
        ),
        (
            "refused_dot",
            "/open-banking/v3.1/aisp/accounts/acc-1/../../admin",
        ),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| portcullis_base::path::check_path(black_box(p)))
        });
    }
    g.finish();
}

fn route_lookup(c: &mut Criterion) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("policies");
    let set = portcullis_policy::load_files(
        &[dir],
        &portcullis_policy::Known {
            upstreams: vec!["bank"],
            issuers: vec![],
            default_body_limit: 1024,
            has_consent: false,
            standalone: false,
        },
    )
    .expect("policies load");
    let get = http::Method::GET;
    let mut g = c.benchmark_group("route");
    for (name, p) in [
        ("static", "/open-banking/v3.1/aisp/accounts"),
        ("param", "/open-banking/v3.1/aisp/accounts/acc-1/balances"),
        ("not_found", "/open-banking/v3.1/aisp/nothing/here"),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| set.lookup(black_box(&get), black_box(p)).is_ok())
        });
    }
    g.finish();
}

criterion_group!(benches, path_check, route_lookup);
criterion_main!(benches);
