//! Criterion benches for the audit log: what a request pays (format + enqueue one record), and
//! how many records per second the writer thread seals and writes (hash chain, batching), to a
//! discarding sink, to a file, and with signed checkpoints.
//!
//! `cargo bench --bench audit`. The writer benches report elements/s = records/s.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use portcullis_audit::{AuditKey, AuditLog, Record, RequestRecord};
use portcullis_proxy::config::{AuditSettings, AuditSink};

const WAIT: Duration = Duration::from_secs(60);

/// A record as a forwarded request leaves it.
fn record() -> Record {
    Record::Request(Box::new(RequestRecord {
        interaction_id: "93bac548-d2de-4546-b106-880a5018460d".into(),
        trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
        span_id: Some("00f067aa0ba902b7".into()),
        listener: Some("10.0.0.1:8443".into()),
        conn_id: 42,
        peer: "203.0.113.7:51234".into(),
        tls_version: "TLSv1.3",
        cipher: "TLS13_AES_128_GCM_SHA256",
        http_version: "HTTP/1.1",
        client_cert_thumbprint: Some("ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0".into()),
        client_subject: Some(
            "CN=tpp-one-software-id,2.5.4.97=PSDGB-FCA-123456,O=Tpp One Ltd,C=GB".into(),
        ),
        client_org_id: Some("PSDGB-FCA-123456".into()),
        client_cert_not_after: Some("2028-01-01T00:00:00Z".into()),
        method: "GET".into(),
        path: "/open-banking/v3.1/aisp/accounts/acc-0001234/transactions".into(),
        has_query: true,
        route_id: Some("aisp.transactions.get".into()),
        decision: "allow",
        status: 200,
        bytes_out: Some(1834),
        upstream_status: Some(200),
        upstream_latency_us: Some(2150),
        total_latency_us: 2480,
        policy_version: "sha256:5f1c2a".into(),
        ..RequestRecord::default()
    }))
}

fn settings(sink: AuditSink) -> AuditSettings {
    let mut s = AuditSettings::new(sink);
    s.queue_capacity = 65_536;
    s
}

fn enqueue(c: &mut Criterion) {
    let mut g = c.benchmark_group("audit_request_path");
    g.bench_function("encode_one_record", |b| {
        let r = record();
        b.iter(|| portcullis_audit::encode(black_box(&r)))
    });
    let log = AuditLog::start_with_writer(&settings(AuditSink::Stdout), Box::new(std::io::sink()))
        .expect("writer");
    g.bench_function("format_and_enqueue_one_record", |b| {
        b.iter_batched(record, |r| log.emit(r), BatchSize::SmallInput)
    });
    assert!(log.close(WAIT));
    g.finish();
}

fn throughput(c: &mut Criterion) {
    const N: u64 = 20_000;
    let mut g = c.benchmark_group("audit_writer");
    g.throughput(Throughput::Elements(N));
    g.sample_size(10);
    let run = |log: &AuditLog| {
        for _ in 0..N {
            log.emit(record());
        }
        assert!(log.sync(WAIT));
    };
    let discard =
        AuditLog::start_with_writer(&settings(AuditSink::Stdout), Box::new(std::io::sink()))
            .expect("writer");
    g.bench_function("records_to_a_discarding_sink", |b| b.iter(|| run(&discard)));
    assert!(discard.close(WAIT));

    let dir = tempfile::tempdir().expect("tempdir");
    let file = AuditLog::start(&settings(AuditSink::File(dir.path().join("audit.log"))))
        .expect("file writer");
    g.bench_function("records_to_a_file_fsync_1s", |b| b.iter(|| run(&file)));
    assert!(file.close(WAIT));

    let (key, _, _) = AuditKey::generate().expect("key");
    let mut signed = settings(AuditSink::File(dir.path().join("signed.log")));
    signed.signing_key = Some(Arc::new(key));
    signed.checkpoint_every = 1000;
    let signed = AuditLog::start(&signed).expect("signed writer");
    g.bench_function("records_to_a_file_checkpoint_every_1000", |b| {
        b.iter(|| run(&signed))
    });
    assert!(signed.close(WAIT));
    g.finish();
}

criterion_group!(benches, enqueue, throughput);
criterion_main!(benches);
