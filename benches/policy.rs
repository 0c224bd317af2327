//! Criterion bench: route match plus policy evaluation for the OBIE example set, and the same
//! lookup with 1,000 routes loaded (it must not grow with the route count).

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, Criterion};
use portcullis_policy::rules::{evaluate, ConsentRecord, Facts};
use portcullis_policy::{load_files, Known};
use serde_json::json;

fn bench(c: &mut Criterion) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("policies");
    let set = load_files(&[dir], &Known::standalone()).expect("policies");
    let claims = json!({"scope": "accounts payments", "openbanking_intent_id": "aac-1"})
        .as_object()
        .cloned()
        .unwrap();
    let consent: ConsentRecord = portcullis_policy::rules::ConsentRecord::from_json(&json!({
        "status": "Authorised", "permissions": ["ReadBalances"], "accounts": ["acc-1", "acc-2"]
    }))
    .unwrap();
    let scopes = vec!["accounts".to_string(), "payments".to_string()];
    let headers = http::HeaderMap::new();
    let get = http::Method::GET;
    let mut g = c.benchmark_group("policy");
    g.bench_function("obie_match_and_evaluate", |b| {
        b.iter(|| {
            let m = set
                .lookup(
                    &get,
                    black_box("/open-banking/v3.1/aisp/accounts/acc-1/balances"),
                )
                .unwrap();
            let facts = Facts {
                params: &m.params,
                query: None,
                headers: &headers,
                body: None,
            };
            evaluate(
                &m.route.authz,
                &scopes,
                &claims,
                Ok(Some(&consent)),
                &facts,
                1_800_000_000,
            )
            .unwrap()
        })
    });
    // 1,000 routes: the lookup is a radix-tree walk, not a scan.
    let d = tempfile::tempdir().unwrap();
    let mut text = String::from("group: big\nupstream: bank\nroutes:\n");
    for i in 0..1000 {
        text += &format!(
            "  - id: r{i}\n    method: GET\n    path: /api/v{}/resource{i}/{{Id}}/items\n    auth: {{profile: fapi2}}\n    rules:\n      - {{id: own, value: {{path: Id}}, in: {{claim: ids}}}}\n",
            i % 7
        );
    }
    std::fs::write(d.path().join("big.yaml"), text).unwrap();
    let big = load_files(&[d.path().to_path_buf()], &Known::standalone()).expect("big");
    let claims_big = json!({"ids": ["x-1"]}).as_object().cloned().unwrap();
    let none: BTreeMap<String, ConsentRecord> = BTreeMap::new();
    let _ = &none;
    g.bench_function("1000_routes_match_and_evaluate", |b| {
        b.iter(|| {
            let m = big
                .lookup(&get, black_box("/api/v5/resource999/x-1/items"))
                .unwrap();
            let facts = Facts {
                params: &m.params,
                query: None,
                headers: &headers,
                body: None,
            };
            evaluate(&m.route.authz, &[], &claims_big, Ok(None), &facts, 0).unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
