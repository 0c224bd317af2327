//! `portcullis loadgen`: a closed-loop HTTPS load generator with a client certificate.
//!
//! N connections each send requests back to back until the duration ends; every latency is
//! kept (microseconds) and reported as throughput, p50/p90/p99/p99.9 and errors by status.
//! (Issue #8 grows this into the FAPI scenario generator.)

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use serde::Serialize;

use crate::client::{tls_config, BoxError, Conn};

pub struct LoadOptions {
    pub addr: SocketAddr,
    pub server_name: String,
    pub path: String,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub connections: usize,
    pub duration: Duration,
    pub http2: bool,
    /// Extra headers sent on every request.
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub requests: u64,
    pub seconds: f64,
    pub rps: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub statuses: BTreeMap<u16, u64>,
    pub errors: u64,
}

fn percentile(sorted: &[u32], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    u64::from(sorted[i.min(sorted.len() - 1)])
}

pub async fn run(o: LoadOptions) -> Result<Report, BoxError> {
    let config = tls_config(&o.ca, Some((&o.cert, &o.key)), o.http2)?;
    let start = Instant::now();
    let deadline = start + o.duration;
    let mut tasks = Vec::new();
    for _ in 0..o.connections.max(1) {
        let config = config.clone();
        let (addr, name, path) = (o.addr, o.server_name.clone(), o.path.clone());
        let extra = o.headers.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat: Vec<u32> = Vec::with_capacity(100_000);
            let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
            let mut errors = 0u64;
            let mut conn: Option<Conn> = None;
            while Instant::now() < deadline {
                if conn.as_ref().is_none_or(|c| !c.is_open()) {
                    match Conn::connect(addr, &name, config.clone()).await {
                        Ok(c) => conn = Some(c),
                        Err(_) => {
                            errors += 1;
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    }
                }
                let Some(c) = conn.as_mut() else { continue };
                let req = http::Request::get(path.as_str())
                    .header(http::header::HOST, name.as_str())
                    .body(Full::new(Bytes::new()));
                let Ok(mut req) = req else { break };
                for (n, v) in &extra {
                    req.headers_mut().append(n.clone(), v.clone());
                }
                let t = Instant::now();
                match c.send(req).await {
                    Ok(a) => {
                        lat.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                        *statuses.entry(a.status.as_u16()).or_default() += 1;
                    }
                    Err(_) => {
                        errors += 1;
                        conn = None;
                    }
                }
            }
            (lat, statuses, errors)
        }));
    }
    let mut all = Vec::new();
    let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
    let mut errors = 0;
    for t in tasks {
        let (lat, st, e) = t.await?;
        all.extend(lat);
        for (k, v) in st {
            *statuses.entry(k).or_default() += v;
        }
        errors += e;
    }
    let seconds = start.elapsed().as_secs_f64();
    all.sort_unstable();
    Ok(Report {
        requests: all.len() as u64,
        seconds,
        rps: all.len() as f64 / seconds,
        p50_us: percentile(&all, 0.50),
        p90_us: percentile(&all, 0.90),
        p99_us: percentile(&all, 0.99),
        p999_us: percentile(&all, 0.999),
        max_us: all.last().copied().map_or(0, u64::from),
        statuses,
        errors,
    })
}

impl Report {
    pub fn text(&self) -> String {
        format!(
            "requests {} in {:.1}s = {:.0} req/s | p50 {} us p90 {} us p99 {} us p99.9 {} us max {} us | statuses {:?} | errors {}",
            self.requests,
            self.seconds,
            self.rps,
            self.p50_us,
            self.p90_us,
            self.p99_us,
            self.p999_us,
            self.max_us,
            self.statuses,
            self.errors
        )
    }
}
