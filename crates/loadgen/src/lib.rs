//! `portcullis loadgen`: a load generator that makes valid FAPI traffic.
//!
//! Each request can carry what a FAPI resource server demands: the client's certificate (mTLS),
//! an access token minted from a given authorization-server key and bound to that certificate
//! or to a DPoP key, a fresh DPoP proof, and an OBIE detached JWS of the body. A scenario file
//! says what to send ([`scenario`]); [`fapi`] builds the requests; [`engine`] drives them closed
//! loop (N connections back to back) or open loop (a fixed arrival rate, latency measured from
//! the intended send time); [`report`] turns the measurements into throughput, percentiles and
//! errors by status and reason, checks the scenario's thresholds, and prints text or JSON.
//!
//! The flag mode (`--addr --path --cert ...`, used by `benches/compare_haproxy.sh`) is a
//! one-route, one-client scenario without a token, run by the same engine and printed in its
//! original report shape ([`Report`]).

pub mod engine;
pub mod fapi;
pub mod html;
pub mod report;
pub mod scenario;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

pub use engine::ShowProgress;
pub use report::Summary;
pub use scenario::Scenario;

use portcullis_tools::client::{tls_config, BoxError};
use scenario::{Client, Load, Mode, Pair, Route, Stop, Target, Text, Thresholds};

/// The flag mode's options.
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
    pub progress: ShowProgress,
}

/// The flag mode's report (the shape `benches/compare_haproxy.sh` reads).
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
    /// Requests without an answer (connection failures, timeouts); statuses are not errors here.
    pub errors: u64,
}

/// Runs a validated scenario.
pub async fn run_scenario(s: Scenario, progress: ShowProgress) -> Result<Summary, BoxError> {
    engine::run(Arc::new(s), progress).await
}

/// The flag mode: closed loop, one GET route, one client certificate, no token. Returns the
/// flag mode's report and the full summary (for `--html`).
pub async fn run(o: LoadOptions) -> Result<(Report, Summary), BoxError> {
    let tls = tls_config(&o.ca, Some((&o.cert, &o.key)), o.http2)?;
    let der = {
        use rustls_pki_types::pem::PemObject;
        rustls_pki_types::CertificateDer::from_pem_file(&o.cert)?
    };
    let pq = http::uri::PathAndQuery::try_from(o.path.as_str())?;
    let base_url = format!("https://{}", o.server_name);
    let s = Scenario {
        name: "flags".into(),
        file: PathBuf::new(),
        target: Target {
            address: o.addr,
            server_name: o.server_name.clone(),
            host: o.server_name.clone(),
            ca: Some(o.ca.clone()),
            plaintext: false,
            base_url: base_url.clone(),
            timeout: Duration::from_secs(30),
        },
        clients: vec![Client {
            name: "client".into(),
            cert: Some(o.cert.clone()),
            key: Some(o.key.clone()),
            tls: Some(tls),
            cert_thumbprint: Some(portcullis_crypto::pki::thumbprint_s256(der.as_ref())),
            weight: 1,
            token: None,
        }],
        routes: vec![Route {
            name: o.path.clone(),
            method: http::Method::GET,
            path: pq.as_str().to_string(),
            numbered: false,
            htu: format!("{base_url}{}", pq.path()),
            headers: o
                .headers
                .iter()
                .map(|(n, v)| (n.clone(), Text::literal(v.as_bytes())))
                .collect(),
            body: None,
            jws: None,
            expect: None,
            dpop_proof: scenario::ProofMode::Fresh,
        }],
        mix: vec![Pair {
            route: 0,
            client: 0,
            weight: 1,
        }],
        load: Load {
            http2: o.http2,
            mode: Mode::Closed,
            connections: o.connections.max(1),
            stop: Stop::After(o.duration),
            warmup: Duration::ZERO,
        },
        thresholds: Thresholds::default(),
    };
    let sum = run_scenario(s, o.progress).await?;
    let t = &sum.total;
    let failures = t.errors - t.errors_by_status.values().sum::<u64>();
    let report = Report {
        requests: t.requests,
        seconds: sum.seconds,
        rps: t.rps,
        p50_us: t.latency.p50_us,
        p90_us: t.latency.p90_us,
        p99_us: t.latency.p99_us,
        p999_us: t.latency.p999_us,
        max_us: t.latency.max_us,
        statuses: t.statuses.clone(),
        errors: failures,
    };
    Ok((report, sum))
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
