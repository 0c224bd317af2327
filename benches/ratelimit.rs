//! Criterion bench: one rate-limit check — the local GCRA (governor) on a hot key, and the
//! fleet check on Redis with a lease of 10 tokens (one round trip per 10 requests) and with no
//! lease (a round trip per request), beside a replay `SET NX` round trip. The Redis benches start
//! a private `redis-server` on a free port (no persistence) and are skipped when it is missing.
//!
//! `cargo bench --bench ratelimit`

use std::hint::black_box;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use portcullis_base::clock::{Clock, SystemClock};
use portcullis_state::ratelimit::{Limiter, QuotaSpec};
use portcullis_state::redis::{FleetLimiter, RedisReplayStore, RedisState};
use portcullis_state::replay::ReplayStore;
use portcullis_state::settings::{OnOutage, RedisSettings};

fn spec() -> QuotaSpec {
    // Never runs out within a bench: a billion per second, burst 100 (lease = burst / 10).
    QuotaSpec {
        name: "bench".into(),
        rate: 1_000_000_000,
        per: Duration::from_secs(1),
        burst: 100,
        shadow: false,
    }
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis_server(dir: &std::path::Path) -> Option<(Server, u16)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--dir"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let server = Server(child);
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some((server, port));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    None
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("ratelimit");
    let local: Limiter<String> = Limiter::new(spec());
    let key = "x5t:bench-client-thumbprint".to_string();
    g.bench_function("local_check_hot_key", |b| {
        b.iter(|| black_box(local.check(black_box(&key))))
    });

    let dir = tempfile::tempdir().unwrap();
    let Some((_server, port)) = redis_server(dir.path()) else {
        eprintln!("redis-server is not installed: skipping the Redis benches");
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let settings = RedisSettings {
        url: format!("redis://127.0.0.1:{port}/0"),
        username: None,
        tls: None,
        sentinel: None,
        password: None,
        connect_timeout: Duration::from_secs(1),
        command_timeout: Duration::from_secs(1),
        health_interval: Duration::from_millis(200),
        key_prefix: "bench:".into(),
    };
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let stop = tokio_util::sync::CancellationToken::new();
    let state = rt.block_on(async {
        let s = RedisState::start(&settings, clock.clone(), 1, stop.clone());
        for _ in 0..200 {
            if s.replay_trusted(clock.now()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        s
    });
    let spec = spec();
    for (name, lease) in [("redis_lease_10", 10), ("redis_no_lease", 1)] {
        let fleet = FleetLimiter::new(
            state.clone(),
            lease,
            Duration::from_secs(1),
            OnOutage::Refuse,
        );
        g.bench_function(name, |b| {
            b.iter(|| {
                let d = rt.block_on(fleet.check(&spec, black_box(&key))).unwrap();
                assert!(d.allowed);
            })
        });
    }
    let replay = RedisReplayStore::new(state.clone(), OnOutage::Refuse, 1);
    let mut n = 0u64;
    g.bench_function("redis_replay_set_nx", |b| {
        b.iter(|| {
            n += 1;
            let mut k = [0u8; 32];
            k[..8].copy_from_slice(&n.to_be_bytes());
            let now = clock.now();
            assert_eq!(rt.block_on(replay.first_use(k, now + 60, now)), Ok(true));
        })
    });
    g.finish();
    stop.cancel();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(50)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
