//! Criterion benches for the audit log: what a request pays (format + enqueue one record), and
//! how many records per second the writer thread seals and writes (hash chain, batching), to a
//! discarding sink, to a file, and with signed checkpoints.
//!
//! Each comes in the two forms of a request record: `inline` (the connection's facts in every
//! record, `audit.connection_records: false`) and `by_reference` (the default: the record names
//! its connection, whose `connection` record the writer writes once per file). The request
//! records are spread over 50 keep-alive connections, as `portcullis loadgen` sends them; the
//! bytes per record of each form are printed once.
//!
//! `cargo bench --bench audit`. The writer benches report elements/s = records/s.

use std::hint::black_box;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use portcullis_audit::{connection_members, AuditKey, AuditLog, Record, RequestRecord};
use portcullis_proxy::config::{AuditSettings, AuditSink};

const WAIT: Duration = Duration::from_secs(60);

/// Connections the records are spread over.
const CONNS: u64 = 50;

/// The members `connection_members` encodes once per connection, as the proxy does for a
/// connection with a client certificate.
fn conn_members(conn: u64) -> Arc<str> {
    let m = connection_members(&portcullis_audit::ConnectionFacts {
        local: "10.0.0.1:8443".parse().expect("addr"),
        peer: format!("203.0.113.7:{}", 51000 + conn)
            .parse()
            .expect("addr"),
        host: "api.bank.example",
        tls_version: "TLSv1.3",
        cipher: "TLS13_AES_128_GCM_SHA256",
        client_cert: None,
    });
    format!(
        "{m},\"client_cert_thumbprint\":\"ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0\",\"client_subject\":\"CN=tpp-one-software-id,2.5.4.97=PSDGB-FCA-123456,O=Tpp One Ltd,C=GB\",\"client_org_id\":\"PSDGB-FCA-123456\",\"client_cert_not_after\":\"2028-01-01T00:00:00Z\""
    )
    .into()
}

/// A record as a forwarded request leaves it.
fn record() -> Record {
    record_on(42, &conn_members(42))
}

/// A record of a forwarded request on connection `conn`.
fn record_on(conn: u64, members: &Arc<str>) -> Record {
    Record::Request(Box::new(RequestRecord {
        interaction_id: "93bac548-d2de-4546-b106-880a5018460d".into(),
        trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
        span_id: Some("00f067aa0ba902b7".into()),
        conn_id: conn,
        conn_members: Some(Arc::clone(members)),
        http_version: "HTTP/1.1",
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

const FORMS: [(&str, bool); 2] = [("inline", false), ("by_reference", true)];

/// A sink that counts the bytes written.
#[derive(Clone, Default)]
struct Counting(Arc<AtomicU64>);

impl Write for Counting {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.fetch_add(b.len() as u64, Ordering::Relaxed);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Prints the bytes per request record each form writes (connection records included) for
/// 20,000 requests over [`CONNS`] connections.
fn bytes_per_record() {
    let members: Vec<Arc<str>> = (0..CONNS).map(conn_members).collect();
    for (name, by_ref) in FORMS {
        let bytes = Counting::default();
        let mut s = settings(AuditSink::Stdout);
        s.connection_records = by_ref;
        let log = AuditLog::start_with_writer(&s, Box::new(bytes.clone())).expect("writer");
        const N: u64 = 20_000;
        for i in 0..N {
            log.emit(record_on(i % CONNS, &members[(i % CONNS) as usize]));
        }
        assert!(log.close(WAIT));
        let total = bytes.0.load(Ordering::Relaxed);
        eprintln!(
            "audit bytes per request record ({name}): {:.1} ({total} bytes for {N} requests on {CONNS} connections)",
            total as f64 / N as f64
        );
    }
}

fn enqueue(c: &mut Criterion) {
    bytes_per_record();
    let mut g = c.benchmark_group("audit_request_path");
    for (name, by_ref) in FORMS {
        g.bench_function(format!("encode_one_record_{name}"), |b| {
            let r = record();
            b.iter(|| portcullis_audit::encode_with(black_box(&r), by_ref))
        });
        let mut s = settings(AuditSink::Stdout);
        s.connection_records = by_ref;
        let log = AuditLog::start_with_writer(&s, Box::new(std::io::sink())).expect("writer");
        g.bench_function(format!("format_and_enqueue_one_record_{name}"), |b| {
            b.iter_batched(record, |r| log.emit(r), BatchSize::SmallInput)
        });
        assert!(log.close(WAIT));
    }
    g.finish();
}

fn throughput(c: &mut Criterion) {
    const N: u64 = 20_000;
    let mut g = c.benchmark_group("audit_writer");
    g.throughput(Throughput::Elements(N));
    g.sample_size(10);
    let members: Vec<Arc<str>> = (0..CONNS).map(conn_members).collect();
    let run = |log: &AuditLog| {
        for i in 0..N {
            log.emit(record_on(i % CONNS, &members[(i % CONNS) as usize]));
        }
        assert!(log.sync(WAIT));
    };
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, by_ref) in FORMS {
        let mut s = settings(AuditSink::Stdout);
        s.connection_records = by_ref;
        let discard = AuditLog::start_with_writer(&s, Box::new(std::io::sink())).expect("writer");
        g.bench_function(format!("records_to_a_discarding_sink_{name}"), |b| {
            b.iter(|| run(&discard))
        });
        assert!(discard.close(WAIT));

        let mut s = settings(AuditSink::File(
            dir.path().join(format!("audit-{name}.log")),
        ));
        s.connection_records = by_ref;
        let file = AuditLog::start(&s).expect("file writer");
        g.bench_function(format!("records_to_a_file_fsync_1s_{name}"), |b| {
            b.iter(|| run(&file))
        });
        assert!(file.close(WAIT));
    }

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
