//! Metrics in Prometheus text format, and the tracing subscriber.
//!
//! The registry is hand-rolled and lock-light: request counters are keyed by (route, status,
//! reason) — all bounded sets from the config and the rejection table — in a `DashMap` of
//! atomics; latency is one fixed-bucket histogram. Nothing attacker-controlled becomes a label.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;

const BUCKETS_SECONDS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Default)]
pub struct Metrics {
    requests: DashMap<(String, u16, &'static str), AtomicU64>,
    latency_buckets: [AtomicU64; BUCKETS_SECONDS.len()],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
    handshake_failures: DashMap<&'static str, AtomicU64>,
    connections_total: AtomicU64,
    connections_active: AtomicU64,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
}

impl Metrics {
    pub fn request(&self, route: Option<&str>, status: u16, reason: &'static str, took: Duration) {
        let key = (route.unwrap_or("none").to_string(), status, reason);
        if let Some(c) = self.requests.get(&key) {
            c.fetch_add(1, Ordering::Relaxed);
        } else {
            self.requests
                .entry(key)
                .or_default()
                .fetch_add(1, Ordering::Relaxed);
        }
        let secs = took.as_secs_f64();
        for (i, b) in BUCKETS_SECONDS.iter().enumerate() {
            if secs <= *b {
                self.latency_buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn handshake_failure(&self, category: &'static str) {
        self.handshake_failures
            .entry(category)
            .or_default()
            .fetch_add(1, Ordering::Relaxed);
    }

    pub fn connection_opened(&self) {
        self.connections_total.fetch_add(1, Ordering::Relaxed);
        self.connections_active.fetch_add(1, Ordering::Relaxed);
    }

    pub fn connection_closed(&self) {
        self.connections_active.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn reload(&self, ok: bool) {
        let c = if ok {
            &self.reloads_ok
        } else {
            &self.reloads_failed
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn reloads(&self) -> (u64, u64) {
        (
            self.reloads_ok.load(Ordering::Relaxed),
            self.reloads_failed.load(Ordering::Relaxed),
        )
    }

    /// Renders the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        out.push_str("# HELP portcullis_requests_total Requests by route, status and reason.\n");
        out.push_str("# TYPE portcullis_requests_total counter\n");
        let mut rows: Vec<_> = self
            .requests
            .iter()
            .map(|e| (e.key().clone(), e.value().load(Ordering::Relaxed)))
            .collect();
        rows.sort();
        for ((route, status, reason), n) in rows {
            let _ = writeln!(
                out,
                "portcullis_requests_total{{route=\"{route}\",status=\"{status}\",reason=\"{reason}\"}} {n}"
            );
        }
        out.push_str("# HELP portcullis_request_duration_seconds Time to response headers.\n");
        out.push_str("# TYPE portcullis_request_duration_seconds histogram\n");
        for (i, b) in BUCKETS_SECONDS.iter().enumerate() {
            let _ = writeln!(
                out,
                "portcullis_request_duration_seconds_bucket{{le=\"{b}\"}} {}",
                self.latency_buckets[i].load(Ordering::Relaxed)
            );
        }
        let count = self.latency_count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "portcullis_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "portcullis_request_duration_seconds_sum {}",
            self.latency_sum_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "portcullis_request_duration_seconds_count {count}");
        out.push_str(
            "# HELP portcullis_tls_handshake_failures_total Failed handshakes by category.\n",
        );
        out.push_str("# TYPE portcullis_tls_handshake_failures_total counter\n");
        let mut hs: Vec<_> = self
            .handshake_failures
            .iter()
            .map(|e| (*e.key(), e.value().load(Ordering::Relaxed)))
            .collect();
        hs.sort();
        for (cat, n) in hs {
            let _ = writeln!(
                out,
                "portcullis_tls_handshake_failures_total{{failure=\"{cat}\"}} {n}"
            );
        }
        let gauge = |out: &mut String, name: &str, kind: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        };
        gauge(
            &mut out,
            "portcullis_connections_total",
            "counter",
            "Accepted TLS connections.",
            self.connections_total.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "portcullis_connections_active",
            "gauge",
            "Open TLS connections.",
            self.connections_active.load(Ordering::Relaxed),
        );
        let (ok, failed) = self.reloads();
        let _ = writeln!(
            out,
            "# HELP portcullis_config_reloads_total Config reloads by result.\n# TYPE portcullis_config_reloads_total counter\nportcullis_config_reloads_total{{result=\"ok\"}} {ok}\nportcullis_config_reloads_total{{result=\"failed\"}} {failed}"
        );
        out
    }
}

/// Installs the tracing subscriber: JSON lines on stderr, level from `RUST_LOG` (default info).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .json()
        .try_init();
}
