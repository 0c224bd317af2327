//! Configuration: `config.yaml -> FileConfig (serde) -> Config (validated)`.
//!
//! The file types in [`file`] mirror the YAML and refuse unknown fields. [`Config::load`] reads
//! the file, the policy files and every certificate, key and CRL it names, and returns a fully
//! validated [`Config`] — or every problem found, each naming the file, the field path and the
//! reason. Nothing half-applies: a caller swaps a `Config` in only once `load` returned `Ok`.
//! Relative paths are resolved against the directory of the file that names them.
//!
//! The file types are public and serializable: an embedder (or a test) can build a
//! [`file::FileConfig`] as a value, write it out (JSON is valid YAML) and load it; a serialized
//! value loads back unchanged.

mod auth;
pub mod file;
mod signatures;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

pub use auth::{Auth, DpopSettings, Issuer, JwksSource, Trust};
use file::FileConfig;
pub use portcullis_base::duration::ConfigDuration;
pub use signatures::{HttpSigSettings, JwsSettings, ResponseSigning, Signatures};

use crate::tls;
use portcullis_policy::PolicySet;

pub use portcullis_base::problems::{resolve, ConfigError, ConfigErrors, Problems};

pub use crate::tls::ClientAuth;

/// How the verified client certificate is passed upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientCertForwarding {
    /// RFC 9440 `Client-Cert: :<base64 DER>:`.
    Rfc9440,
    /// Envoy-style `X-Forwarded-Client-Cert: Hash=..;Subject="..";URI=..`.
    Xfcc,
    None,
}

/// What to do with an `x-fapi-interaction-id` that is not a UUID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InteractionIdMode {
    /// Echo a UUID; replace anything else (or nothing) with a fresh one.
    EchoOrGenerate,
    /// Echo a UUID, generate one when absent, refuse a present non-UUID with 400.
    RejectInvalid,
}

pub use portcullis_audit::{AuditSettings, AuditSink};

/// Limits enforced on every connection and request.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_uri_bytes: usize,
    pub default_body_limit: u64,
    pub header_read_timeout: Duration,
    pub request_timeout: Duration,
    pub idle_timeout: Duration,
    /// A connection older than this is closed gracefully after its in-flight requests, so a
    /// client re-handshakes (and meets the current CAs and CRLs) at least this often.
    pub max_connection_age: Option<Duration>,
    pub max_connections: usize,
    pub h2_max_concurrent_streams: u32,
    pub h2_max_pending_reset_streams: usize,
    pub h2_max_local_error_reset_streams: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 16 * 1024,
            max_headers: 100,
            max_uri_bytes: 8 * 1024,
            default_body_limit: 1024 * 1024,
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connection_age: None,
            max_connections: 10_000,
            h2_max_concurrent_streams: 100,
            h2_max_pending_reset_streams: 20,
            h2_max_local_error_reset_streams: 1024,
        }
    }
}

/// The TLS material of the listener, already parsed and checked by building a rustls config.
#[derive(Clone)]
pub struct ListenerTls {
    pub server_config: Arc<rustls::ServerConfig>,
    pub client_auth: ClientAuth,
    pub handshake_timeout: Duration,
    pub client_ca_count: usize,
    pub crl_count: usize,
    /// notAfter of the listener certificate (unix seconds), for the expiry metric.
    pub server_cert_not_after: Option<i64>,
    /// What the CRLs revoke, checked on every request (see [`portcullis_crypto::pki::Revoked`]).
    pub revoked: Arc<portcullis_crypto::pki::Revoked>,
    /// Each loaded CRL, by where it came from, for the `nextUpdate` metric.
    pub crls: Vec<LoadedCrl>,
    /// CRLs fetched from URLs; with any, the runtime rebuilds the verifier from `material`
    /// whenever one of them brings a new CRL.
    pub crl_urls: Vec<CrlUrl>,
    /// OCSP for client certificates, when configured: checked per request by the identity
    /// stage (see `portcullis_sources::ocsp`).
    pub ocsp: Option<portcullis_sources::ocsp::OcspSettings>,
    /// The CRLs client certificates name, when configured: checked per request by the identity
    /// stage (see `portcullis_sources::leafcrl`).
    pub leaf_crls: Option<portcullis_sources::leafcrl::LeafCrlSettings>,
    pub material: Arc<TlsMaterial>,
}

/// What the listener's rustls config is built from, kept to build it again with fetched CRLs.
pub struct TlsMaterial {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub client_cas: Vec<CertificateDer<'static>>,
    /// The CRLs from files.
    pub crls: Vec<CertificateRevocationListDer<'static>>,
    /// Whether the CRLs client certificates name are followed per request: the handshake then
    /// lets through a certificate whose issuer has no CRL here (see [`tls::server_config`]).
    pub leaf_crls: bool,
}

impl TlsMaterial {
    /// A rustls config and the per-request revocation set for the file CRLs plus `fetched`.
    pub(crate) fn build(
        &self,
        client_auth: ClientAuth,
        fetched: &[CertificateRevocationListDer<'static>],
    ) -> Result<(Arc<rustls::ServerConfig>, portcullis_crypto::pki::Revoked), String> {
        let crls: Vec<_> = self.crls.iter().chain(fetched).cloned().collect();
        let revoked = portcullis_crypto::pki::Revoked::from_crls(crls.iter().map(|c| c.as_ref()))?;
        let config = tls::server_config(
            self.chain.clone(),
            self.key.clone_key(),
            self.client_cas.clone(),
            crls,
            client_auth,
            self.leaf_crls.then_some(&revoked),
        )?;
        Ok((config, revoked))
    }

    /// Why a CRL is not taken for this listener (see [`crl_refusal`]), or `None`.
    pub(crate) fn crl_refusal(
        &self,
        crl: &CertificateRevocationListDer<'static>,
    ) -> Option<String> {
        crl_refusal(&self.client_cas, crl)
    }
}

/// A CRL fetched from a URL, validated.
#[derive(Clone)]
pub struct CrlUrl {
    pub remote: portcullis_sources::crl::CrlRemote,
}

impl CrlUrl {
    /// What identifies the feed across reloads: a change of any setting starts a new one.
    pub(crate) fn key(&self) -> String {
        let r = &self.remote;
        format!("{} {:?} {:?} {}", r.uri, r.refresh, r.timeout, r.max_bytes)
    }
}

/// One CRL of the listener: where it came from (a file path) and what it says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadedCrl {
    pub source: String,
    pub info: portcullis_crypto::pki::CrlInfo,
}

#[derive(Clone)]
pub struct Listener {
    /// The address as configured: what names this listener across reloads.
    pub address: SocketAddr,
    pub limits: Limits,
    /// The virtual hosts, chosen by SNI at the handshake (see [`Listener::host_for_sni`]).
    pub hosts: Vec<Arc<Host>>,
    /// The host a handshake without SNI or with an unknown name gets; `None`: refused.
    pub default_host: Option<usize>,
    /// How long the client has to send its ClientHello (the longest of the hosts'
    /// `handshake_timeout`); the rest of the handshake has its host's.
    pub hello_timeout: Duration,
    /// Data-plane threads, each running its own single-threaded event loop (see `server.rs`);
    /// the same on every listener (they share the workers).
    pub workers: usize,
}

impl Listener {
    /// The host a ClientHello naming `sni` is given: an exact name, else a wildcard, else the
    /// default host.
    pub fn host_for_sni(&self, sni: Option<&str>) -> Option<&Arc<Host>> {
        let named = sni.and_then(|n| {
            let n = n.to_ascii_lowercase();
            self.hosts
                .iter()
                .find(|h| h.names.contains(&n))
                .or_else(|| {
                    self.hosts
                        .iter()
                        .find(|h| h.names.iter().any(|x| wildcard_matches(x, &n)))
                })
        });
        named.or_else(|| self.default_host.and_then(|i| self.hosts.get(i)))
    }

    /// The host whose handshake identity is `key` (see [`Host::key`]).
    pub fn host(&self, key: &str) -> Option<&Arc<Host>> {
        self.hosts.iter().find(|h| &*h.key == key)
    }
}

/// One virtual host of a listener.
pub struct Host {
    /// What a connection remembers of the host its handshake chose: the listener and the
    /// host's names. A reload that removes the host or changes its names leaves the
    /// connection without a host: its requests are refused with 421 and the client reconnects.
    /// A reload that changes only the host's TLS (client CAs, CRLs, `client_auth`) or groups
    /// keeps it, as on a single listener: the connection keeps the identity verified at its
    /// handshake (`limits.max_connection_age` bounds how long), and every request meets the
    /// current routes and CRLs.
    pub key: Arc<str>,
    /// Lower-case DNS names, exact or `*.` wildcards; empty (the `listener:` form without
    /// `server_names`): any name.
    pub names: Vec<String>,
    pub tls: ListenerTls,
    /// The routes this host serves: its policy groups' (all of them in the `listener:` form).
    pub policies: Arc<PolicySet>,
    /// The policy groups bound to it; `None`: every group (the `listener:` form).
    pub groups: Option<Vec<String>>,
    /// Where it is in the config file, for logs (`listener`, `listeners[0].hosts[1]`).
    pub field: String,
}

impl Host {
    /// What names the host in audit records and metrics: its first configured name, or `*`
    /// for the `listener:` form's one host, which takes any name. From the config, so a
    /// metric label of it stays bounded.
    pub fn label(&self) -> &str {
        self.names.first().map_or("*", String::as_str)
    }

    /// Whether a request naming `name` (lower-case, no port) belongs to this host.
    pub fn serves(&self, name: &str) -> bool {
        self.names.is_empty()
            || self
                .names
                .iter()
                .any(|x| x == name || wildcard_matches(x, name))
    }
}

/// `*.example.com` matches `a.example.com`, not `example.com` nor `a.b.example.com` (one
/// label, as in certificates, RFC 6125 §6.4.3).
pub(crate) fn wildcard_matches(pattern: &str, name: &str) -> bool {
    let Some(suffix) = pattern.strip_prefix("*.") else {
        return false;
    };
    name.strip_suffix(suffix)
        .and_then(|l| l.strip_suffix('.'))
        .is_some_and(|label| !label.is_empty() && !label.contains('.'))
}

/// An upstream TLS client identity and trust.
#[derive(Clone)]
pub struct UpstreamTls {
    pub client_config: Arc<rustls::ClientConfig>,
}

/// Endpoints from a DNS name resolved again on an interval (a Kubernetes headless service):
/// each address is an endpoint, reached by its address and named by `name` (TLS server name,
/// `Host`).
#[derive(Clone, Debug, PartialEq)]
pub struct DnsEndpoints {
    pub name: String,
    pub port: u16,
    pub interval: Duration,
}

/// Active health checks: a GET of `path` on each endpoint every `interval`.
#[derive(Clone, Debug, PartialEq)]
pub struct HealthCheck {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
}

/// Passive outlier detection: consecutive failures eject an endpoint for a growing time.
#[derive(Clone, Debug, PartialEq)]
pub struct OutlierDetection {
    /// 0: off.
    pub consecutive_failures: u32,
    pub base_ejection: Duration,
    pub max_ejection: Duration,
    pub max_ejected_percent: u32,
}

/// The per-endpoint circuit breaker.
#[derive(Clone, Debug, PartialEq)]
pub struct CircuitBreaker {
    /// 0: off.
    pub failure_threshold: u32,
    pub open_for: Duration,
    pub half_open_requests: u32,
}

/// The per-upstream bulkhead.
#[derive(Clone, Debug, PartialEq)]
pub struct UpstreamLimits {
    pub max_concurrent: usize,
    pub max_pending: usize,
    pub pending_timeout: Duration,
}

/// When and how often a request is tried again on another endpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct Retries {
    /// Tries in all (1: none).
    pub attempts: u32,
    pub per_try_timeout: Duration,
    pub budget_percent: u32,
    pub min_retries: u32,
    pub honours_idempotency_key: bool,
}

#[derive(Clone)]
pub struct Upstream {
    pub name: String,
    /// `http` or `https` (every endpoint's).
    pub scheme: http::uri::Scheme,
    /// The static endpoint set (`url` is a set of one); empty with `dns`.
    pub endpoints: Vec<http::uri::Authority>,
    pub dns: Option<DnsEndpoints>,
    pub health_check: Option<HealthCheck>,
    pub outlier: OutlierDetection,
    pub breaker: CircuitBreaker,
    pub limits: UpstreamLimits,
    pub retries: Retries,
    /// Path prefix prepended to the forwarded path (no trailing slash; may be empty).
    pub base_path: String,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
    pub http2: bool,
    pub tls: Option<UpstreamTls>,
}

/// OTLP trace export settings (`tracing:`); what is unset here the SDK takes from `OTEL_*`.
#[derive(Clone, Debug, PartialEq)]
pub struct Otlp {
    /// The traces URL; `None`: from `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` (+ `/v1/traces`).
    pub endpoint: Option<String>,
    pub service_name: Option<String>,
    /// `ParentBased(TraceIdRatioBased(ratio))`; `None`: `OTEL_TRACES_SAMPLER`.
    pub sample_ratio: Option<f64>,
}

/// The OTLP endpoint variables the SDK reads, most specific first.
const OTLP_ENDPOINT_VARS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

/// Whether `e` is an OTLP/HTTP URL we can post to.
fn otlp_url_ok(e: &str) -> bool {
    e.parse::<http::Uri>()
        .is_ok_and(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some())
}

/// `tracing:` and the `OTEL_*` endpoint variables: export is on when either names an endpoint
/// (and the build has the `otlp` feature); the config wins over the environment.
fn validate_tracing(p: &mut Problems<'_>, t: &file::FileTracing) -> Option<Otlp> {
    if let Some(r) = t.sample_ratio {
        if !(0.0..=1.0).contains(&r) {
            p.push(
                "tracing.sample_ratio",
                format!("{r} must be between 0.0 and 1.0"),
            );
        }
    }
    if let Some(e) = &t.otlp_endpoint {
        if !cfg!(feature = "otlp") {
            p.push(
                "tracing.otlp_endpoint",
                "this build has no OTLP export (cargo feature `otlp`)",
            );
            return None;
        }
        if !otlp_url_ok(e) {
            p.push(
                "tracing.otlp_endpoint",
                format!("`{e}` must be an http:// or https:// URL (OTLP/HTTP)"),
            );
            return None;
        }
    }
    if !cfg!(feature = "otlp") {
        return None;
    }
    let mut from_env = false;
    if t.otlp_endpoint.is_none() {
        // The SDK would read these itself; a bad one is refused here, at load, by name.
        for var in OTLP_ENDPOINT_VARS {
            let Ok(v) = std::env::var(var) else { continue };
            if v.trim().is_empty() {
                continue;
            }
            if !otlp_url_ok(v.trim()) {
                p.push(
                    format!("{var} (environment)"),
                    format!("`{v}` must be an http:// or https:// URL (OTLP/HTTP)"),
                );
                return None;
            }
            from_env = true;
        }
    }
    (t.otlp_endpoint.is_some() || from_env).then(|| Otlp {
        endpoint: t.otlp_endpoint.clone(),
        service_name: t.service_name.clone(),
        sample_ratio: t.sample_ratio,
    })
}

/// A validated configuration: everything the proxy needs to serve.
#[derive(Clone)]
pub struct Config {
    pub source: PathBuf,
    /// The first of `listeners`: what a single-listener embedder reads, and what is the same on
    /// every listener (`workers`).
    pub listener: Listener,
    /// Every listener, in file order (one for the `listener:` form).
    pub listeners: Vec<Listener>,
    pub admin: Option<SocketAddr>,
    pub upstreams: BTreeMap<String, Upstream>,
    pub client_cert_forwarding: ClientCertForwarding,
    pub interaction_id: InteractionIdMode,
    pub audit: AuditSettings,
    pub policies: Arc<PolicySet>,
    pub drain_timeout: Duration,
    /// After SIGTERM: `/readyz` 503 while still accepting, before the drain.
    pub shutdown_grace: Duration,
    /// Access-token issuers, DPoP settings, token cache and identity headers.
    pub auth: Auth,
    /// Where consent records come from, for routes that check consent.
    pub consent: Option<portcullis_sources::consent::ConsentConfig>,
    /// OTLP trace export, when on (an endpoint in the config or the environment).
    pub otlp: Option<Otlp>,
    /// Request-signature verification and response signing.
    pub signatures: Signatures,
    /// Rate limits.
    pub rate_limits: portcullis_state::ratelimit::RateLimitConfig,
    /// Idempotency keys.
    pub idempotency: portcullis_state::idempotency::IdempotencyConfig,
    /// Shared state backend and outage behaviour.
    pub state: portcullis_state::settings::StateConfig,
    /// Behavioural detection: detectors, actions, quarantine TTL, webhook.
    pub detection: portcullis_detect::DetectionConfig,
    /// The bearer token the admin listener asks for before it lists or lifts quarantines
    /// (`detection.admin_token_file`); never logged.
    pub admin_token: Option<Arc<str>>,
    /// Files and directories whose change triggers a reload.
    pub watched: Vec<PathBuf>,
}

impl Config {
    /// The earliest notAfter of the hosts' server certificates (unix seconds), for the expiry
    /// metric: the one to renew first.
    pub fn server_cert_not_after(&self) -> Option<i64> {
        self.listeners
            .iter()
            .flat_map(|l| &l.hosts)
            .filter_map(|h| h.tls.server_cert_not_after)
            .min()
    }

    /// Reads and validates `path` and everything it names.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let mut errors = Vec::new();
        let one = |field: &str, reason: String| {
            ConfigErrors(vec![ConfigError {
                file: path.to_path_buf(),
                field: field.to_string(),
                reason,
            }])
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| one("", format!("cannot read the file: {e}")))?;
        let parsed: FileConfig =
            serde_saphyr::from_str(&text).map_err(|e| one("", format!("invalid YAML: {e}")))?;
        let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let config = validate(path, &base, parsed, &mut errors);
        match config {
            Some(c) if errors.is_empty() => Ok(c),
            _ => Err(ConfigErrors(errors)),
        }
    }
}

/// The most data-plane threads a listener may ask for.
const MAX_WORKERS: usize = 256;

fn validate(
    path: &Path,
    base: &Path,
    f: FileConfig,
    errors: &mut Vec<ConfigError>,
) -> Option<Config> {
    let mut watched = vec![path.to_path_buf()];
    let mut p = Problems::new(path, errors);

    let admin = f
        .admin
        .as_ref()
        .and_then(|a| parse_addr(&mut p, "admin.address", &a.address));
    let (pending, workers) = validate_listeners(&mut p, base, &f, &mut watched);
    let default_body_limit = pending
        .first()
        .map_or(Limits::default().default_body_limit, |l| {
            l.limits.default_body_limit
        });

    let mut upstreams = BTreeMap::new();
    if f.upstreams.is_empty() {
        p.push("upstreams", "at least one upstream is required");
    }
    for (name, u) in &f.upstreams {
        if let Some(up) = validate_upstream(&mut p, base, name, u, &mut watched) {
            upstreams.insert(name.clone(), up);
        }
    }

    let client_cert_forwarding = match f.forwarding.client_cert.as_deref() {
        None | Some("rfc9440") => ClientCertForwarding::Rfc9440,
        Some("xfcc") => ClientCertForwarding::Xfcc,
        Some("none") => ClientCertForwarding::None,
        Some(other) => {
            p.push(
                "forwarding.client_cert",
                format!("unknown value `{other}` (rfc9440, xfcc or none)"),
            );
            ClientCertForwarding::None
        }
    };
    let interaction_id = match f.fapi.interaction_id.as_deref() {
        None | Some("echo_or_generate") => InteractionIdMode::EchoOrGenerate,
        Some("reject_invalid") => InteractionIdMode::RejectInvalid,
        Some(other) => {
            p.push(
                "fapi.interaction_id",
                format!("unknown value `{other}` (echo_or_generate or reject_invalid)"),
            );
            InteractionIdMode::EchoOrGenerate
        }
    };
    let sink = match (f.audit.sink.as_deref(), f.audit.path.as_deref()) {
        (None | Some("file"), Some(path)) => AuditSink::File(resolve(base, path)),
        (None, None) => AuditSink::Stdout,
        (Some("file"), None) => {
            p.push("audit.path", "required when audit.sink is file");
            AuditSink::None
        }
        (Some("stdout"), _) => AuditSink::Stdout,
        (Some("none"), _) => AuditSink::None,
        (Some(other), _) => {
            p.push(
                "audit.sink",
                format!("unknown value `{other}` (file, stdout or none)"),
            );
            AuditSink::None
        }
    };
    let queue_capacity = f.audit.queue_capacity.unwrap_or(65_536);
    if queue_capacity == 0 {
        p.push("audit.queue_capacity", "must be at least 1");
    }
    let audit = validate_audit(&mut p, base, &f.audit, sink, queue_capacity);
    let drain_timeout = f
        .shutdown
        .drain_timeout
        .map(|d| d.0)
        .unwrap_or(Duration::from_secs(15));
    let shutdown_grace = f.shutdown.grace.map(|d| d.0).unwrap_or(Duration::ZERO);
    if shutdown_grace > Duration::from_secs(300) {
        p.push(
            "shutdown.grace",
            "at most 5m (the listener keeps accepting meanwhile)",
        );
    }

    if f.policies.is_empty() {
        p.push(
            "policies",
            "at least one policy file or directory is required",
        );
    }
    let mut policy_paths = Vec::new();
    for (i, s) in f.policies.iter().enumerate() {
        let path = resolve(base, s);
        if path.exists() {
            policy_paths.push(path);
        } else {
            p.push(
                format!("policies[{i}]"),
                format!("{} does not exist", path.display()),
            );
        }
    }
    watched.extend(policy_paths.iter().cloned());
    let auth = auth::validate(&mut p, base, &f.issuers, &f.dpop, &f.tokens, &mut watched);
    let consent = f
        .consent
        .as_ref()
        .and_then(|c| auth::validate_consent(&mut p, base, c, &mut watched));
    let otlp = validate_tracing(&mut p, &f.tracing);
    let signatures = signatures::validate(
        &mut p,
        base,
        &f.signatures,
        auth.dpop.public_base_url.as_deref(),
        &mut watched,
    );
    let rate_limits = portcullis_state::ratelimit::validate(&mut p, &f.rate_limits);
    let idempotency = portcullis_state::idempotency::validate(&mut p, &f.idempotency);
    let state = portcullis_state::settings::validate(&mut p, base, &f.state);
    let mut detection = portcullis_detect::config::validate(&mut p, f.detection.as_ref());
    if let Some(w) = detection.webhook.as_mut() {
        if let Some(ca) = w.ca.clone() {
            let path = resolve(base, &ca);
            watched.push(path.clone());
            w.ca_der = read_certs(&mut p, "detection.webhook.ca", &path)
                .into_iter()
                .map(|c| c.as_ref().to_vec())
                .collect();
        }
    }
    let admin_token = detection
        .admin_token_file
        .as_deref()
        .and_then(|t| read_admin_token(&mut p, base, t, &mut watched));
    let known = portcullis_policy::Known {
        upstreams: upstreams.keys().map(String::as_str).collect(),
        issuers: auth.issuers.keys().map(String::as_str).collect(),
        has_consent: consent.is_some(),
        standalone: false,
        default_body_limit,
    };
    let policies = portcullis_policy::load(&policy_paths, &known, errors);
    if let Some(set) = &policies {
        signatures::check_routes(&signatures, set, errors);
        auth::check_routes(&auth, set, errors);
        portcullis_state::ratelimit::check_routes(&rate_limits, set, errors);
    }

    let policies = Arc::new(policies?);
    let listeners = build_listeners(
        &mut Problems::new(path, errors),
        pending,
        &policies,
        workers,
    )?;
    Some(Config {
        source: path.to_path_buf(),
        listener: listeners.first()?.clone(),
        listeners,
        admin,
        upstreams,
        client_cert_forwarding,
        interaction_id,
        audit,
        policies,
        drain_timeout,
        shutdown_grace,
        auth,
        consent,
        signatures,
        rate_limits,
        idempotency,
        state,
        detection,
        admin_token,
        otlp,
        watched,
    })
}

/// The admin bearer token: the file's content, trimmed; at least 32 characters, so that it
/// cannot be guessed from the admin listener's network.
fn read_admin_token(
    p: &mut Problems<'_>,
    base: &Path,
    file: &str,
    watched: &mut Vec<PathBuf>,
) -> Option<Arc<str>> {
    const FIELD: &str = "detection.admin_token_file";
    let path = resolve(base, file);
    watched.push(path.clone());
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            p.push(FIELD, format!("cannot read {}: {e}", path.display()));
            return None;
        }
    };
    let token = text.trim();
    if token.len() < 32 || !token.bytes().all(|b| b.is_ascii_graphic()) {
        p.push(
            FIELD,
            format!(
                "{} must hold one token of at least 32 printable ASCII characters",
                path.display()
            ),
        );
        return None;
    }
    Some(token.into())
}

/// A listener validated up to its hosts' policy groups, which need the policy set.
struct PendingListener {
    address: Option<SocketAddr>,
    limits: Limits,
    hosts: Vec<PendingHost>,
    default_host: Option<usize>,
}

struct PendingHost {
    field: String,
    names: Vec<String>,
    tls: Option<ListenerTls>,
    /// `None`: every group (the `listener:` form).
    groups: Option<Vec<String>>,
}

/// A host name as written: a DNS name (or IP address), or `*.` and a DNS name with a dot.
fn host_name(p: &mut Problems<'_>, field: String, n: &str, wildcard: bool) -> Option<String> {
    let lower = n.to_ascii_lowercase();
    let (star, rest) = match lower.strip_prefix("*.") {
        Some(rest) if wildcard => (true, rest),
        _ => (false, lower.as_str()),
    };
    let ok = !rest.is_empty()
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && (!star || rest.contains('.'));
    if ok {
        Some(lower)
    } else if wildcard {
        p.push(
            field,
            "must be a DNS name without port, or `*.` and a domain (`*.example.com`)",
        );
        None
    } else {
        p.push(field, "must be a DNS name or IP address without port");
        None
    }
}

/// `listener:` (one host, SNI not consulted) or `listeners:` (hosts chosen by SNI), and the
/// number of data-plane workers they share.
fn validate_listeners(
    p: &mut Problems<'_>,
    base: &Path,
    f: &FileConfig,
    watched: &mut Vec<PathBuf>,
) -> (Vec<PendingListener>, usize) {
    let workers_of = |p: &mut Problems<'_>, field: &str, w: Option<usize>| match w {
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        Some(n) if (1..=MAX_WORKERS).contains(&n) => n,
        Some(_) => {
            p.push(field, format!("must be between 1 and {MAX_WORKERS}"));
            1
        }
    };
    if f.listeners.is_empty() {
        let l = &f.listener;
        if l.is_unset() {
            p.push(
                "listener",
                "a listener is required (`listener` or `listeners`)",
            );
            return (Vec::new(), 1);
        }
        if f.workers.is_some() {
            p.push(
                "workers",
                "applies to `listeners`; with `listener` use `listener.workers`",
            );
        }
        let address = parse_addr(p, "listener.address", &l.address);
        let limits = validate_limits(p, "listener", &l.limits);
        let tls = validate_listener_tls(p, "listener.tls", base, &l.tls, watched);
        let names = l
            .server_names
            .iter()
            .enumerate()
            .filter_map(|(i, n)| host_name(p, format!("listener.server_names[{i}]"), n, false))
            .collect();
        let workers = workers_of(p, "listener.workers", l.workers);
        let host = PendingHost {
            field: "listener".into(),
            names,
            tls,
            groups: None,
        };
        return (
            vec![PendingListener {
                address,
                limits,
                hosts: vec![host],
                default_host: Some(0),
            }],
            workers,
        );
    }
    if !f.listener.is_unset() {
        p.push(
            "listener",
            "use either `listener` (one host) or `listeners` (virtual hosts), not both",
        );
    }
    let workers = workers_of(p, "workers", f.workers);
    let mut out: Vec<PendingListener> = Vec::new();
    for (i, l) in f.listeners.iter().enumerate() {
        let at = format!("listeners[{i}]");
        let address = parse_addr(p, &format!("{at}.address"), &l.address);
        if let Some(a) = address {
            if let Some(j) = out.iter().position(|o| o.address == Some(a)) {
                p.push(
                    format!("{at}.address"),
                    format!("{a} is already the address of listeners[{j}]"),
                );
            }
        }
        let limits = validate_limits(p, &at, &l.limits);
        if l.hosts.is_empty() {
            p.push(format!("{at}.hosts"), "a listener needs at least one host");
        }
        let mut hosts: Vec<PendingHost> = Vec::new();
        let mut default_host = None;
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for (j, h) in l.hosts.iter().enumerate() {
            let hf = format!("{at}.hosts[{j}]");
            if h.names.is_empty() {
                p.push(format!("{hf}.names"), "a host needs at least one name");
            }
            let mut names = Vec::new();
            for (k, n) in h.names.iter().enumerate() {
                let Some(name) = host_name(p, format!("{hf}.names[{k}]"), n, true) else {
                    continue;
                };
                // A name on two hosts would leave the handshake's choice, and so the client
                // CAs that apply, to file order.
                match seen.get(&name) {
                    Some(&other) => p.push(
                        format!("{hf}.names[{k}]"),
                        format!("`{name}` is already a name of {at}.hosts[{other}]"),
                    ),
                    None => {
                        seen.insert(name.clone(), j);
                        names.push(name);
                    }
                }
            }
            if h.default {
                match default_host {
                    Some(other) => p.push(
                        format!("{hf}.default"),
                        format!("{at}.hosts[{other}] is already the default host of this listener"),
                    ),
                    None => default_host = Some(j),
                }
            }
            if h.policy_groups.is_empty() {
                p.push(
                    format!("{hf}.policy_groups"),
                    "a host serves at least one policy group",
                );
            }
            let tls = validate_listener_tls(p, &format!("{hf}.tls"), base, &h.tls, watched);
            hosts.push(PendingHost {
                field: hf,
                names,
                tls,
                groups: Some(h.policy_groups.clone()),
            });
        }
        out.push(PendingListener {
            address,
            limits,
            hosts,
            default_host,
        });
    }
    (out, workers)
}

/// The listeners with their hosts' routes: every policy group a host names must exist, and in
/// the `listeners:` form every group must be served by some host (a group bound to none would
/// be policy that silently applies nowhere).
fn build_listeners(
    p: &mut Problems<'_>,
    pending: Vec<PendingListener>,
    policies: &Arc<PolicySet>,
    workers: usize,
) -> Option<Vec<Listener>> {
    let groups = policies.groups();
    let mut bound: std::collections::BTreeSet<&str> = std::collections::BTreeSet::new();
    let mut every = false;
    let mut ok = true;
    let mut out = Vec::new();
    for l in pending {
        let mut hosts = Vec::new();
        let mut hello_timeout = Duration::ZERO;
        for h in l.hosts {
            let host_policies = match &h.groups {
                None => {
                    every = true;
                    Arc::clone(policies)
                }
                Some(g) => {
                    for (k, name) in g.iter().enumerate() {
                        match groups.iter().find(|x| **x == name.as_str()) {
                            Some(x) => {
                                bound.insert(x);
                            }
                            None => {
                                p.push(
                                    format!("{}.policy_groups[{k}]", h.field),
                                    format!(
                                        "no policy file has `group: {name}` (groups: {})",
                                        groups.join(", ")
                                    ),
                                );
                                ok = false;
                            }
                        }
                    }
                    Arc::new(policies.subset(g))
                }
            };
            let (Some(tls), Some(address)) = (h.tls, l.address) else {
                ok = false;
                continue;
            };
            hello_timeout = hello_timeout.max(tls.handshake_timeout);
            let key = match &h.groups {
                // The `listener:` form has one host, whatever its names.
                None => address.to_string(),
                Some(_) => format!("{address} {}", h.names.join(",")),
            };
            hosts.push(Arc::new(Host {
                key: Arc::from(key),
                names: h.names,
                tls,
                policies: host_policies,
                groups: h.groups,
                field: h.field,
            }));
        }
        let Some(address) = l.address else {
            ok = false;
            continue;
        };
        out.push(Listener {
            address,
            limits: l.limits,
            hosts,
            default_host: l.default_host,
            hello_timeout,
            workers,
        });
    }
    if !every {
        for g in groups.iter().filter(|g| !bound.contains(*g)) {
            p.push(
                "listeners",
                format!(
                    "policy group `{g}` is bound to no host (list it in a host's policy_groups)"
                ),
            );
            ok = false;
        }
    }
    (ok && !out.is_empty()).then_some(out)
}

fn validate_audit(
    p: &mut Problems<'_>,
    base: &Path,
    f: &file::FileAudit,
    sink: AuditSink,
    queue_capacity: usize,
) -> AuditSettings {
    use portcullis_audit::QueueFull;
    let mut a = AuditSettings::new(sink);
    a.queue_capacity = queue_capacity;
    a.queue_full = match f.queue_full.as_deref() {
        None | Some("block") => QueueFull::Block,
        Some("refuse") => QueueFull::Refuse,
        Some("drop") => QueueFull::Drop,
        Some(other) => {
            p.push(
                "audit.queue_full",
                format!("unknown value `{other}` (block, refuse or drop)"),
            );
            QueueFull::Block
        }
    };
    if let Some(d) = f.fsync_interval {
        a.fsync_interval = Some(d.0);
    }
    let is_file = matches!(a.sink, AuditSink::File(_));
    for (field, set) in [
        ("audit.rotate_bytes", f.rotate_bytes.is_some()),
        ("audit.rotate_age", f.rotate_age.is_some()),
        ("audit.retain", f.retain.is_some()),
    ] {
        if set && !is_file {
            p.push(field, "applies only to audit.sink: file");
        }
    }
    if let Some(b) = f.rotate_bytes {
        if b < 4096 {
            p.push(
                "audit.rotate_bytes",
                format!("{b} is below the minimum of 4096"),
            );
        }
    }
    if f.rotate_age.is_some_and(|d| d.0 < Duration::from_secs(1)) {
        p.push("audit.rotate_age", "must be at least 1s");
    }
    a.connection_records = f.connection_records.unwrap_or(true);
    a.rotation = portcullis_audit::Rotation {
        max_bytes: f.rotate_bytes,
        max_age: f.rotate_age.map(|d| d.0),
        retain: f.retain.unwrap_or(0),
    };
    if let Some(k) = &f.signing_key {
        let path = resolve(base, k);
        match portcullis_audit::AuditKey::from_file(&path) {
            Ok(key) => a.signing_key = Some(Arc::new(key)),
            Err(e) => p.push("audit.signing_key", format!("{}: {e}", path.display())),
        }
        a.checkpoint_every = f.checkpoint_every.unwrap_or(1000);
        a.checkpoint_interval = Some(
            f.checkpoint_interval
                .map_or(Duration::from_secs(60), |d| d.0),
        );
        if f.checkpoint_interval.is_some_and(|d| d.0.is_zero()) {
            p.push("audit.checkpoint_interval", "must be greater than 0");
        }
    } else {
        for (field, set) in [
            ("audit.checkpoint_every", f.checkpoint_every.is_some()),
            ("audit.checkpoint_interval", f.checkpoint_interval.is_some()),
        ] {
            if set {
                p.push(field, "checkpoints are signed: set audit.signing_key too");
            }
        }
    }
    a
}

fn parse_addr(p: &mut Problems<'_>, field: &str, text: &str) -> Option<SocketAddr> {
    match text.parse() {
        Ok(a) => Some(a),
        Err(_) => {
            p.push(field, format!("`{text}` is not an IP:port socket address"));
            None
        }
    }
}

fn validate_limits(p: &mut Problems<'_>, prefix: &str, f: &file::FileLimits) -> Limits {
    let d = Limits::default();
    let l = Limits {
        max_header_bytes: f.max_header_bytes.unwrap_or(d.max_header_bytes),
        max_headers: f.max_headers.unwrap_or(d.max_headers),
        max_uri_bytes: f.max_uri_bytes.unwrap_or(d.max_uri_bytes),
        default_body_limit: f.default_body_limit.unwrap_or(d.default_body_limit),
        header_read_timeout: f.header_read_timeout.map_or(d.header_read_timeout, |x| x.0),
        request_timeout: f.request_timeout.map_or(d.request_timeout, |x| x.0),
        idle_timeout: f.idle_timeout.map_or(d.idle_timeout, |x| x.0),
        max_connection_age: f.max_connection_age.map(|x| x.0),
        max_connections: f.max_connections.unwrap_or(d.max_connections),
        h2_max_concurrent_streams: f
            .h2_max_concurrent_streams
            .unwrap_or(d.h2_max_concurrent_streams),
        h2_max_pending_reset_streams: f
            .h2_max_pending_reset_streams
            .unwrap_or(d.h2_max_pending_reset_streams),
        h2_max_local_error_reset_streams: f
            .h2_max_local_error_reset_streams
            .unwrap_or(d.h2_max_local_error_reset_streams),
    };
    let range = |p: &mut Problems<'_>, name: &str, v: usize, lo: usize, hi: usize| {
        if v < lo || v > hi {
            p.push(
                format!("{prefix}.limits.{name}"),
                format!("{v} is outside {lo}..={hi}"),
            );
        }
    };
    range(p, "max_header_bytes", l.max_header_bytes, 1024, 1024 * 1024);
    range(p, "max_headers", l.max_headers, 8, 1000);
    range(p, "max_uri_bytes", l.max_uri_bytes, 256, 64 * 1024);
    range(p, "max_connections", l.max_connections, 1, 1_000_000);
    range(
        p,
        "h2_max_concurrent_streams",
        l.h2_max_concurrent_streams as usize,
        1,
        1000,
    );
    let nonzero = |p: &mut Problems<'_>, name: &str, v: Duration| {
        if v.is_zero() {
            p.push(format!("{prefix}.limits.{name}"), "must be greater than 0");
        }
    };
    nonzero(p, "header_read_timeout", l.header_read_timeout);
    nonzero(p, "request_timeout", l.request_timeout);
    nonzero(p, "idle_timeout", l.idle_timeout);
    if let Some(age) = l.max_connection_age {
        nonzero(p, "max_connection_age", age);
    }
    l
}

/// The roots an outbound HTTPS call trusts: the `ca` bundles listed under `prefix`, the
/// system's root store when `trust` says so, else `fallback` (the metadata document's roots,
/// for an endpoint the metadata names). Nothing to trust is a config error: trust is pinned
/// unless the system store is asked for by name.
#[allow(clippy::too_many_arguments)]
pub(crate) fn trust_roots(
    p: &mut Problems<'_>,
    base: &Path,
    prefix: &str,
    ca: &[String],
    trust: auth::Trust,
    fallback: Option<&rustls::RootCertStore>,
    what: &str,
    watched: &mut Vec<PathBuf>,
) -> Option<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for (i, c) in ca.iter().enumerate() {
        let path = resolve(base, c);
        watched.push(path.clone());
        for cert in read_certs(p, &format!("{prefix}ca[{i}]"), &path) {
            let _ = roots.add(cert);
        }
    }
    if trust == auth::Trust::System {
        let system = system_roots();
        if system.is_empty() {
            p.push(
                format!("{prefix}trust"),
                "the system root store is empty or unreadable (SSL_CERT_FILE, SSL_CERT_DIR or the distribution's ca-certificates)",
            );
            return None;
        }
        roots.add_parsable_certificates(system.iter().cloned());
    }
    if roots.is_empty() {
        if let Some(f) = fallback.filter(|_| ca.is_empty()) {
            return Some(f.clone());
        }
        p.push(
            format!("{prefix}ca"),
            format!("{what} needs its CA bundle (trust is pinned), or trust: system"),
        );
        return None;
    }
    Some(roots)
}

/// The system's root certificates, read once per process.
fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: std::sync::OnceLock<Vec<CertificateDer<'static>>> = std::sync::OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::warn!(error = %e, "part of the system root store could not be read");
        }
        found.certs
    })
}

pub(crate) fn read_certs(
    p: &mut Problems<'_>,
    field: &str,
    path: &Path,
) -> Vec<CertificateDer<'static>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => {
            p.push(field, format!("cannot read {}: {e}", path.display()));
            return Vec::new();
        }
    };
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&bytes).collect();
    match certs {
        Ok(c) if !c.is_empty() => c,
        Ok(_) => {
            p.push(
                field,
                format!("{} holds no PEM certificate", path.display()),
            );
            Vec::new()
        }
        Err(e) => {
            p.push(field, format!("{} is not valid PEM: {e}", path.display()));
            Vec::new()
        }
    }
}

pub(crate) fn read_key(
    p: &mut Problems<'_>,
    field: &str,
    path: &Path,
) -> Option<PrivateKeyDer<'static>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => {
            p.push(field, format!("cannot read {}: {e}", path.display()));
            return None;
        }
    };
    match PrivateKeyDer::from_pem_slice(&bytes) {
        Ok(k) => Some(k),
        Err(e) => {
            p.push(
                field,
                format!("{} holds no usable PEM private key: {e}", path.display()),
            );
            None
        }
    }
}

fn validate_listener_tls(
    p: &mut Problems<'_>,
    t: &str,
    base: &Path,
    f: &file::FileTls,
    watched: &mut Vec<PathBuf>,
) -> Option<ListenerTls> {
    let client_auth = match f.client_auth.as_deref() {
        None | Some("required") => ClientAuth::Required,
        Some("optional") => ClientAuth::Optional,
        Some("none") => ClientAuth::None,
        Some(other) => {
            p.push(
                format!("{t}.client_auth"),
                format!("unknown value `{other}` (required, optional or none)"),
            );
            return None;
        }
    };
    if client_auth == ClientAuth::None {
        // No certificate is asked for: a CA, CRL, OCSP or leaf CRL setting would suggest a
        // check that never happens.
        for (field, set) in [
            ("client_ca", !f.client_ca.is_empty()),
            ("crl", !f.crl.is_empty()),
            ("crl_urls", !f.crl_urls.is_empty()),
            ("ocsp", f.ocsp.is_some()),
            ("leaf_crls", f.leaf_crls.is_some()),
        ] {
            if set {
                p.push(
                    format!("{t}.{field}"),
                    "client_auth: none asks for no client certificate; remove this or use optional",
                );
            }
        }
    }
    let cert_path = resolve(base, &f.certificate);
    let key_path = resolve(base, &f.private_key);
    watched.push(cert_path.clone());
    watched.push(key_path.clone());
    let chain = read_certs(p, &format!("{t}.certificate"), &cert_path);
    let key = read_key(p, &format!("{t}.private_key"), &key_path);
    let mut cas = Vec::new();
    for (i, ca) in f.client_ca.iter().enumerate() {
        let path = resolve(base, ca);
        watched.push(path.clone());
        cas.extend(read_certs(p, &format!("{t}.client_ca[{i}]"), &path));
    }
    if f.client_ca.is_empty() && client_auth != ClientAuth::None {
        p.push(
            format!("{t}.client_ca"),
            "at least one client CA bundle is required (portcullis always verifies client certificates)",
        );
    }
    let mut crls = Vec::new();
    let mut loaded_crls = Vec::new();
    let mut crl_refused = false;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    for (i, crl) in f.crl.iter().enumerate() {
        let path = resolve(base, crl);
        watched.push(path.clone());
        let field = format!("{t}.crl[{i}]");
        match std::fs::read(&path) {
            Ok(bytes) => {
                let parsed: Result<Vec<_>, _> =
                    CertificateRevocationListDer::pem_slice_iter(&bytes).collect();
                match parsed {
                    Ok(list) if !list.is_empty() => {
                        // rustls parses every CRL only when the verifier is built, and then
                        // says "could not be parsed: ParseError" for all of them at once: find
                        // the one it refuses here, so the error names its file and its defect.
                        for (n, crl) in list.iter().enumerate() {
                            if let Some(why) = crl_refusal(&cas, crl) {
                                p.push(
                                    field.clone(),
                                    format!(
                                        "{}: CRL {} of {}: {why}",
                                        path.display(),
                                        n + 1,
                                        list.len()
                                    ),
                                );
                                crl_refused = true;
                            }
                            if let Ok(info) = portcullis_crypto::pki::CrlInfo::from_der(crl) {
                                warn_if_stale(&path, n, list.len(), &info, now);
                                loaded_crls.push(LoadedCrl {
                                    source: path.display().to_string(),
                                    info,
                                });
                            }
                        }
                        crls.extend(list)
                    }
                    Ok(_) => p.push(field, format!("{} holds no PEM CRL", path.display())),
                    Err(e) => p.push(field, format!("{} is not valid PEM: {e}", path.display())),
                }
            }
            Err(e) => p.push(field, format!("cannot read {}: {e}", path.display())),
        }
    }
    let crl_urls = validate_crl_urls(p, t, base, &f.crl_urls, &cas, watched);
    let ocsp = match &f.ocsp {
        None => Some(None),
        Some(o) => validate_ocsp(p, t, base, o, watched).map(Some),
    };
    let leaf_crls = match &f.leaf_crls {
        None => Some(None),
        Some(l) => validate_leaf_crls(p, t, base, l, watched).map(Some),
    };
    let key = key?;
    if chain.is_empty() || (cas.is_empty() && client_auth != ClientAuth::None) || crl_refused {
        return None;
    }
    let crl_urls = crl_urls?;
    let ocsp = ocsp?;
    let leaf_crls = leaf_crls?;
    let (client_ca_count, crl_count) = (cas.len(), crls.len());
    let revoked = match portcullis_crypto::pki::Revoked::from_crls(crls.iter().map(|c| c.as_ref()))
    {
        Ok(r) => Arc::new(r),
        Err(e) => {
            p.push(format!("{t}.crl"), e);
            return None;
        }
    };
    let server_cert_not_after = chain
        .first()
        .and_then(|c| portcullis_crypto::pki::ClientCert::from_der(c.as_ref()).ok())
        .map(|c| c.not_after);
    // An expired server certificate would fail every handshake: refuse it (at start-up, and at
    // reload, where the current one keeps serving).
    if let Some(expired) = server_cert_not_after.filter(|at| *at < now) {
        let when = portcullis_audit::unix_to_rfc3339(expired).unwrap_or_default();
        p.push(
            format!("{t}.certificate"),
            format!("the server certificate expired at {when}; renew it"),
        );
        return None;
    }
    let material = Arc::new(TlsMaterial {
        chain,
        key,
        client_cas: cas,
        crls,
        leaf_crls: leaf_crls.is_some(),
    });
    match material.build(client_auth, &[]) {
        Ok((server_config, _)) => Some(ListenerTls {
            server_config,
            client_auth,
            handshake_timeout: f.handshake_timeout.map_or(Duration::from_secs(10), |d| d.0),
            client_ca_count,
            crl_count,
            server_cert_not_after,
            revoked,
            crls: loaded_crls,
            crl_urls,
            ocsp,
            leaf_crls,
            material,
        }),
        Err(e) => {
            p.push(t, e);
            None
        }
    }
}

/// `listener.tls.crl_urls`: http:// is allowed here, and only here, because a CRL is signed by
/// the CA it speaks for (RFC 5280 §4.2.1.13): whoever serves it cannot forge it.
fn validate_crl_urls(
    p: &mut Problems<'_>,
    t: &str,
    base: &Path,
    urls: &[file::FileCrlUrl],
    cas: &[CertificateDer<'static>],
    watched: &mut Vec<PathBuf>,
) -> Option<Vec<CrlUrl>> {
    let mut out = Vec::new();
    let mut ok = true;
    let http_uri = |s: &str| {
        s.parse::<http::Uri>()
            .ok()
            .filter(|x| x.host().is_some())
            .filter(|x| {
                x.scheme() == Some(&http::uri::Scheme::HTTP)
                    || x.scheme() == Some(&http::uri::Scheme::HTTPS)
            })
    };
    for (i, u) in urls.iter().enumerate() {
        let field = |s: &str| format!("{t}.crl_urls[{i}]{s}");
        // `distribution_points`: the CRL URLs the client CA certificates name. A certificate's
        // distribution point serves the CRL that covers that certificate, so these are the
        // CRLs of the CAs above the configured ones (an intermediate's, from its root); the
        // points inside client certificates cannot be known at load and are not followed.
        let uris: Vec<http::Uri> = if u.url == "distribution_points" {
            let found: Vec<String> = cas
                .iter()
                .flat_map(|c| portcullis_crypto::pki::crl_distribution_points(c.as_ref()))
                .collect();
            let mut uris: Vec<http::Uri> = Vec::new();
            for f in found.iter().filter_map(|f| http_uri(f)) {
                if !uris.contains(&f) {
                    uris.push(f);
                }
            }
            if uris.is_empty() {
                p.push(
                    field(".url"),
                    "`distribution_points`: no client_ca certificate names an http:// or https:// CRL distribution point",
                );
                ok = false;
                continue;
            }
            uris
        } else {
            match http_uri(&u.url) {
                Some(uri) => vec![uri],
                None => {
                    p.push(
                        field(".url"),
                        format!(
                            "`{}` is not an http:// or https:// URL (or `distribution_points`)",
                            u.url
                        ),
                    );
                    ok = false;
                    continue;
                }
            }
        };
        for uri in uris {
            let roots = if uri.scheme() == Some(&http::uri::Scheme::HTTPS) {
                match trust_roots(
                    p,
                    base,
                    &field("."),
                    &u.ca,
                    u.trust,
                    None,
                    "an https:// CRL URL",
                    watched,
                ) {
                    Some(r) => r,
                    None => {
                        ok = false;
                        continue;
                    }
                }
            } else {
                rustls::RootCertStore::empty()
            };
            let tls = match tls::upstream_client_config(roots, None) {
                Ok(t) => t,
                Err(e) => {
                    p.push(field(""), e);
                    ok = false;
                    continue;
                }
            };
            let refresh = u
                .refresh_interval
                .map_or(Duration::from_secs(3600), |d| d.0);
            let timeout = u.fetch_timeout.map_or(Duration::from_secs(10), |d| d.0);
            let max_bytes = u.max_bytes.unwrap_or(10 * 1024 * 1024);
            if refresh.is_zero() || timeout.is_zero() || max_bytes == 0 {
                p.push(
                    field(""),
                    "refresh_interval, fetch_timeout and max_bytes must be above zero",
                );
                ok = false;
                continue;
            }
            out.push(CrlUrl {
                remote: portcullis_sources::crl::CrlRemote {
                    uri,
                    tls,
                    refresh,
                    timeout,
                    max_bytes,
                },
            });
        }
    }
    ok.then_some(out)
}

/// `listener.tls.ocsp`. http:// is allowed, as for CRLs: an OCSP answer is signed by the CA (or
/// its delegated responder), and whoever relays it cannot forge it (RFC 6960 §4.2.2.2).
fn validate_ocsp(
    p: &mut Problems<'_>,
    t: &str,
    base: &Path,
    o: &file::FileOcsp,
    watched: &mut Vec<PathBuf>,
) -> Option<portcullis_sources::ocsp::OcspSettings> {
    use portcullis_sources::ocsp::{OcspSettings, Responder};
    let mut ok = true;
    let responder = match o.responder.as_deref() {
        None | Some("auto") => Some(Responder::Auto),
        Some(url) => match url
            .parse::<http::Uri>()
            .ok()
            .filter(|x| x.host().is_some())
            .filter(|x| {
                x.scheme() == Some(&http::uri::Scheme::HTTP)
                    || x.scheme() == Some(&http::uri::Scheme::HTTPS)
            }) {
            Some(u) => Some(Responder::Url(u)),
            None => {
                p.push(
                    format!("{t}.ocsp.responder"),
                    format!("`{url}` is neither `auto` nor an http:// or https:// URL"),
                );
                ok = false;
                None
            }
        },
    };
    // An https:// responder needs trust; with `auto` the certificate decides the scheme, so
    // trust is built when a CA bundle or the system store is named, and otherwise an https://
    // AIA responder cannot be reached (fail as configured).
    let https = matches!(&responder, Some(Responder::Url(u)) if u.scheme() == Some(&http::uri::Scheme::HTTPS));
    let fetch = validate_signed_fetch(
        p,
        base,
        &format!("{t}.ocsp."),
        SignedFetch {
            fail: o.fail.as_deref(),
            ca: &o.ca,
            trust: o.trust,
            needs_trust: https,
            what: "an https:// OCSP responder",
            fetch_timeout: o.fetch_timeout,
            max_age: o.max_age,
            max_bytes: o.max_bytes.unwrap_or(64 * 1024),
            max_entries: o.max_entries.unwrap_or(10_000),
        },
        watched,
    );
    let fetch = fetch?;
    if !ok {
        return None;
    }
    Some(OcspSettings {
        responder: responder?,
        fail: fetch.fail,
        tls: fetch.tls,
        timeout: fetch.timeout,
        max_age: fetch.max_age,
        max_bytes: fetch.max_bytes,
        max_entries: fetch.max_entries,
    })
}

/// The settings OCSP and `leaf_crls` share, as the file says them.
struct SignedFetch<'a> {
    fail: Option<&'a str>,
    ca: &'a [String],
    trust: auth::Trust,
    /// The configured URL is https://: trust is required.
    needs_trust: bool,
    what: &'a str,
    fetch_timeout: Option<ConfigDuration>,
    max_age: Option<ConfigDuration>,
    max_bytes: usize,
    max_entries: usize,
}

/// [`SignedFetch`] checked: the fail mode, trust, and bounds above zero.
struct SignedFetchSettings {
    fail: portcullis_sources::revocation::FailMode,
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
    max_age: Duration,
    max_bytes: usize,
    max_entries: usize,
}

/// The fetch settings of a per-request revocation check (`listener.tls.ocsp`,
/// `listener.tls.leaf_crls`), each problem under `prefix` + its field. Without a CA bundle or
/// the system store an https:// URL a certificate names cannot be reached (its check fails as
/// configured), unless `needs_trust`, which requires one.
fn validate_signed_fetch(
    p: &mut Problems<'_>,
    base: &Path,
    prefix: &str,
    f: SignedFetch<'_>,
    watched: &mut Vec<PathBuf>,
) -> Option<SignedFetchSettings> {
    use portcullis_sources::revocation::FailMode;
    let mut ok = true;
    let fail = match f.fail {
        None | Some("closed") => FailMode::Closed,
        Some("open") => FailMode::Open,
        Some(other) => {
            p.push(
                format!("{prefix}fail"),
                format!("unknown value `{other}` (closed or open)"),
            );
            ok = false;
            FailMode::Closed
        }
    };
    let wants_trust = f.needs_trust || !f.ca.is_empty() || f.trust == auth::Trust::System;
    let roots = if wants_trust {
        trust_roots(p, base, prefix, f.ca, f.trust, None, f.what, watched)?
    } else {
        rustls::RootCertStore::empty()
    };
    let tls = match tls::upstream_client_config(roots, None) {
        Ok(t) => t,
        Err(e) => {
            p.push(prefix.trim_end_matches('.'), e);
            return None;
        }
    };
    let timeout = f.fetch_timeout.map_or(Duration::from_secs(5), |d| d.0);
    let max_age = f.max_age.map_or(Duration::from_secs(3600), |d| d.0);
    for (field, zero) in [
        ("fetch_timeout", timeout.is_zero()),
        ("max_age", max_age < Duration::from_secs(1)),
        ("max_bytes", f.max_bytes == 0),
        ("max_entries", f.max_entries == 0),
    ] {
        if zero {
            p.push(
                format!("{prefix}{field}"),
                "must be above zero (max_age: at least 1s)",
            );
            ok = false;
        }
    }
    ok.then_some(SignedFetchSettings {
        fail,
        tls,
        timeout,
        max_age,
        max_bytes: f.max_bytes,
        max_entries: f.max_entries,
    })
}

/// `listener.tls.leaf_crls`. http:// distribution points are fetched, as for CRL URLs: a CRL
/// is signed by its CA, and whoever serves it cannot forge it.
fn validate_leaf_crls(
    p: &mut Problems<'_>,
    t: &str,
    base: &Path,
    l: &file::FileLeafCrls,
    watched: &mut Vec<PathBuf>,
) -> Option<portcullis_sources::leafcrl::LeafCrlSettings> {
    let mut ok = true;
    for (i, a) in l.allowed_urls.iter().enumerate() {
        let http = a
            .parse::<http::Uri>()
            .ok()
            .filter(|x| x.host().is_some())
            .is_some_and(|x| {
                x.scheme() == Some(&http::uri::Scheme::HTTP)
                    || x.scheme() == Some(&http::uri::Scheme::HTTPS)
            });
        if !http {
            p.push(
                format!("{t}.leaf_crls.allowed_urls[{i}]"),
                format!("`{a}` is not an http:// or https:// URL prefix with a host"),
            );
            ok = false;
        }
    }
    let needs_trust = l.allowed_urls.iter().any(|a| a.starts_with("https://"));
    let fetch = validate_signed_fetch(
        p,
        base,
        &format!("{t}.leaf_crls."),
        SignedFetch {
            fail: l.fail.as_deref(),
            ca: &l.ca,
            trust: l.trust,
            needs_trust,
            what: "an https:// CRL distribution point in allowed_urls",
            fetch_timeout: l.fetch_timeout,
            max_age: l.max_age,
            max_bytes: l.max_bytes.unwrap_or(1024 * 1024),
            max_entries: l.max_entries.unwrap_or(100),
        },
        watched,
    )?;
    ok.then_some(portcullis_sources::leafcrl::LeafCrlSettings {
        fail: fetch.fail,
        tls: fetch.tls,
        timeout: fetch.timeout,
        max_age: fetch.max_age,
        max_bytes: fetch.max_bytes,
        max_entries: fetch.max_entries,
        allowed_urls: l.allowed_urls.clone(),
    })
}

/// A CRL already past its `nextUpdate` is taken (it is still the best list of what is revoked),
/// but every client certificate of its issuer is then refused, at the handshake and on open
/// connections, until a current CRL replaces it: say so at load, naming the file, so that
/// `check` shows it and the proxy logs it.
fn warn_if_stale(
    path: &Path,
    n: usize,
    of: usize,
    info: &portcullis_crypto::pki::CrlInfo,
    now: i64,
) {
    let Some(t) = info.next_update.filter(|t| *t < now) else {
        return;
    };
    let when = portcullis_audit::unix_to_rfc3339(t).unwrap_or_default();
    tracing::warn!(
        file = %path.display(),
        issuer = %info.issuer,
        "CRL {} of {of} in {} is past its nextUpdate ({when}): client certificates of `{}` are \
         refused until a current CRL replaces it",
        n + 1,
        path.display(),
        info.issuer,
    );
}

/// Why this CRL is not taken, or `None` when it is: not signed by one of the client CAs (see
/// [`portcullis_crypto::pki::check_crl_signer`]), or refused by rustls, whose verdict is its own
/// (a verifier built over the configured CAs and this one CRL, as the listener will be); the
/// reason adds the field at fault where it is one of the RFC 5280 requirements rustls enforces
/// when parsing, since rustls reports those only as `ParseError`. Without a usable CA there is
/// nothing to probe with, and the CA's own error is reported instead.
fn crl_refusal(
    cas: &[CertificateDer<'static>],
    crl: &CertificateRevocationListDer<'static>,
) -> Option<String> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in cas {
        roots.add(ca.clone()).ok()?;
    }
    if roots.is_empty() {
        return None;
    }
    // rustls checks a CRL's signature only at a handshake, and then refuses every certificate
    // of its issuer: a CRL that is not its CA's own is refused here, before it is used.
    let err = match rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        tls::crypto_provider(),
    )
    .with_crls([crl.clone()])
    .build()
    {
        Ok(_) => {
            return portcullis_crypto::pki::check_crl_signer(
                crl.as_ref(),
                cas.iter().map(|c| c.as_ref()),
            )
            .err()
            .map(|why| format!("{why}; use the CRL its CA publishes"));
        }
        Err(e) => e,
    };
    let why = match x509_parser::parse_x509_crl(crl.as_ref()) {
        Err(e) => format!("not a DER X.509 CertificateList ({e})"),
        Ok((_, c)) => {
            let tbs = &c.tbs_cert_list;
            let mut defects = Vec::new();
            if tbs.version != Some(x509_parser::x509::X509Version::V2) {
                defects.push("field `version` is not v2 (RFC 5280 §5.1.2.1)");
            }
            if tbs.next_update.is_none() {
                defects.push("field `nextUpdate` is absent (RFC 5280 §5.1.2.5 requires it)");
            }
            if c.crl_number().is_none() {
                defects.push(
                    "the CRL Number extension is absent (RFC 5280 §5.2.3 requires it in every CRL)",
                );
            }
            if defects.is_empty() {
                format!("issuer `{}`", tbs.issuer)
            } else {
                format!("issuer `{}`: {}", tbs.issuer, defects.join("; "))
            }
        }
    };
    Some(format!("{why}; reissue the CRL (rustls: {err})"))
}

fn validate_upstream(
    p: &mut Problems<'_>,
    base: &Path,
    name: &str,
    f: &file::FileUpstream,
    watched: &mut Vec<PathBuf>,
) -> Option<Upstream> {
    let field = |s: &str| format!("upstreams.{name}.{s}");
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        p.push(
            format!("upstreams.{name}"),
            "names use letters, digits, `-` and `_` only",
        );
    }
    let (scheme, endpoints, dns, base_path) = upstream_endpoints(p, name, f)?;
    let tls = match (&f.tls, scheme == http::uri::Scheme::HTTPS) {
        (Some(_), false) => {
            p.push(field("tls"), "only applies to an https:// url");
            None
        }
        (t, true) => {
            let mut roots = rustls::RootCertStore::empty();
            let mut identity = None;
            if let Some(t) = t {
                for (i, ca) in t.ca.iter().enumerate() {
                    let path = resolve(base, ca);
                    watched.push(path.clone());
                    for c in read_certs(p, &field(&format!("tls.ca[{i}]")), &path) {
                        if let Err(e) = roots.add(c) {
                            p.push(field(&format!("tls.ca[{i}]")), format!("bad CA: {e}"));
                        }
                    }
                }
                match (&t.client_certificate, &t.client_private_key) {
                    (Some(c), Some(k)) => {
                        let cp = resolve(base, c);
                        let kp = resolve(base, k);
                        watched.push(cp.clone());
                        watched.push(kp.clone());
                        let chain = read_certs(p, &field("tls.client_certificate"), &cp);
                        let key = read_key(p, &field("tls.client_private_key"), &kp);
                        identity = key.map(|k| (chain, k));
                    }
                    (None, None) => {}
                    _ => p.push(
                        field("tls"),
                        "client_certificate and client_private_key go together",
                    ),
                }
            }
            if roots.is_empty() {
                p.push(
                    field("tls.ca"),
                    "an https upstream needs its CA bundle (portcullis pins upstream trust)",
                );
                None
            } else {
                match tls::upstream_client_config(roots, identity) {
                    Ok(c) => Some(UpstreamTls { client_config: c }),
                    Err(e) => {
                        p.push(field("tls"), e);
                        None
                    }
                }
            }
        }
        (None, false) => None,
    };
    let connect_timeout = f.connect_timeout.map_or(Duration::from_secs(2), |d| d.0);
    let response_timeout = f.response_timeout.map_or(Duration::from_secs(30), |d| d.0);
    // A set of one keeps what `url` always did: no breaker, no ejection, no retries, unless
    // asked for; a real set gets them by default, since that is what a set is for.
    let set = dns.is_some() || endpoints.len() > 1;
    let resilience = upstream_resilience(p, name, f, set, response_timeout);
    Some(Upstream {
        name: name.to_string(),
        scheme,
        endpoints,
        dns,
        health_check: resilience.0,
        outlier: resilience.1,
        breaker: resilience.2,
        limits: resilience.3,
        retries: resilience.4,
        base_path,
        connect_timeout,
        response_timeout,
        pool_idle_timeout: f.pool_idle_timeout.map_or(Duration::from_secs(30), |d| d.0),
        pool_max_idle_per_host: f.pool_max_idle_per_host.unwrap_or(256),
        http2: f.http2,
        tls,
    })
}

/// One endpoint URL: scheme, authority and base path (no query).
fn endpoint_url(
    p: &mut Problems<'_>,
    field: &str,
    text: &str,
) -> Option<(http::uri::Scheme, http::uri::Authority, String)> {
    let uri: http::Uri = match text.parse() {
        Ok(u) => u,
        Err(e) => {
            p.push(field, format!("`{text}` is not a URL: {e}"));
            return None;
        }
    };
    let (Some(scheme), Some(authority)) = (uri.scheme().cloned(), uri.authority().cloned()) else {
        p.push(field, "must be an absolute http:// or https:// URL");
        return None;
    };
    if scheme != http::uri::Scheme::HTTP && scheme != http::uri::Scheme::HTTPS {
        p.push(field, "scheme must be http or https");
        return None;
    }
    if uri.query().is_some() {
        p.push(field, "must not carry a query");
    }
    if authority.as_str().contains('@') {
        p.push(field, "must not carry user information");
        return None;
    }
    Some((
        scheme,
        authority,
        uri.path().trim_end_matches('/').to_string(),
    ))
}

/// Where an upstream's endpoints come from: exactly one of `url`, `endpoints` and `dns`.
#[allow(clippy::type_complexity)]
fn upstream_endpoints(
    p: &mut Problems<'_>,
    name: &str,
    f: &file::FileUpstream,
) -> Option<(
    http::uri::Scheme,
    Vec<http::uri::Authority>,
    Option<DnsEndpoints>,
    String,
)> {
    let field = |s: &str| format!("upstreams.{name}.{s}");
    let given = usize::from(!f.url.is_empty())
        + usize::from(!f.endpoints.is_empty())
        + usize::from(f.dns.is_some());
    if given != 1 {
        p.push(
            format!("upstreams.{name}"),
            "exactly one of `url`, `endpoints` and `dns` names the endpoints",
        );
        return None;
    }
    if !f.url.is_empty() {
        let (scheme, authority, base) = endpoint_url(p, &field("url"), &f.url)?;
        return Some((scheme, vec![authority], None, base));
    }
    if let Some(d) = &f.dns {
        let scheme = match d.scheme.as_deref().unwrap_or("http") {
            "http" => http::uri::Scheme::HTTP,
            "https" => http::uri::Scheme::HTTPS,
            other => {
                p.push(
                    field("dns.scheme"),
                    format!("`{other}` must be http or https"),
                );
                return None;
            }
        };
        let host_ok = !d.name.is_empty()
            && d.name.len() <= 253
            && d.name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if !host_ok {
            p.push(field("dns.name"), format!("`{}` is not a DNS name", d.name));
            return None;
        }
        if d.port == 0 {
            p.push(field("dns.port"), "must be 1 to 65535");
            return None;
        }
        let interval = d.interval.map_or(Duration::from_secs(10), |i| i.0);
        if interval < Duration::from_millis(100) {
            p.push(field("dns.interval"), "must be at least 100ms");
        }
        let base = d.base_path.as_deref().unwrap_or("");
        if !base.is_empty() && (!base.starts_with('/') || base.contains(['?', '#', ' '])) {
            p.push(field("dns.base_path"), "must be a path starting with `/`");
        }
        return Some((
            scheme,
            Vec::new(),
            Some(DnsEndpoints {
                name: d.name.to_ascii_lowercase(),
                port: d.port,
                interval,
            }),
            base.trim_end_matches('/').to_string(),
        ));
    }
    let mut first: Option<(http::uri::Scheme, String)> = None;
    let mut set: Vec<http::uri::Authority> = Vec::new();
    for (i, url) in f.endpoints.iter().enumerate() {
        let at = field(&format!("endpoints[{i}]"));
        let Some((scheme, authority, base)) = endpoint_url(p, &at, url) else {
            continue;
        };
        match &first {
            None => first = Some((scheme, base)),
            Some((s, b)) if *s != scheme || *b != base => {
                // One TLS setting and one path prefix serve the whole set.
                p.push(at, "every endpoint has the first one's scheme and path");
                continue;
            }
            Some(_) => {}
        }
        if set.contains(&authority) {
            p.push(at, format!("`{authority}` is listed twice"));
            continue;
        }
        set.push(authority);
    }
    let (scheme, base) = first?;
    Some((scheme, set, None, base))
}

/// Health checks, outlier detection, the breaker, the bulkhead and retries, with their
/// defaults: on for a set (`set`), off for a single `url` unless configured.
#[allow(clippy::type_complexity)]
fn upstream_resilience(
    p: &mut Problems<'_>,
    name: &str,
    f: &file::FileUpstream,
    set: bool,
    response_timeout: Duration,
) -> (
    Option<HealthCheck>,
    OutlierDetection,
    CircuitBreaker,
    UpstreamLimits,
    Retries,
) {
    let field = |s: &str| format!("upstreams.{name}.{s}");
    let d = |v: Option<file::ConfigDuration>, default: Duration| v.map_or(default, |x| x.0);
    let health = f.health_check.as_ref().map(|h| {
        if !h.path.starts_with('/') || h.path.contains(['#', ' ']) {
            p.push(
                field("health_check.path"),
                "must be a path starting with `/`",
            );
        }
        let interval = d(h.interval, Duration::from_secs(5));
        let timeout = d(h.timeout, Duration::from_secs(1));
        if interval < Duration::from_millis(50) {
            p.push(field("health_check.interval"), "must be at least 50ms");
        }
        if timeout.is_zero() || timeout > interval {
            p.push(
                field("health_check.timeout"),
                "must be more than 0 and at most the interval",
            );
        }
        for (k, v) in [
            ("healthy_threshold", h.healthy_threshold),
            ("unhealthy_threshold", h.unhealthy_threshold),
        ] {
            if v == Some(0) {
                p.push(field(&format!("health_check.{k}")), "must be at least 1");
            }
        }
        HealthCheck {
            path: h.path.clone(),
            interval,
            timeout,
            healthy_threshold: h.healthy_threshold.unwrap_or(2),
            unhealthy_threshold: h.unhealthy_threshold.unwrap_or(3),
        }
    });
    let o = f.outlier_detection.clone().unwrap_or_default();
    let on = set || f.outlier_detection.is_some();
    let outlier = OutlierDetection {
        consecutive_failures: o.consecutive_failures.unwrap_or(if on { 5 } else { 0 }),
        base_ejection: d(o.base_ejection, Duration::from_secs(30)),
        max_ejection: d(o.max_ejection, Duration::from_secs(300)),
        max_ejected_percent: o.max_ejected_percent.unwrap_or(50),
    };
    if outlier.max_ejected_percent > 100 {
        p.push(
            field("outlier_detection.max_ejected_percent"),
            "must be 0 to 100",
        );
    }
    if outlier.base_ejection.is_zero() || outlier.max_ejection < outlier.base_ejection {
        p.push(
            field("outlier_detection.max_ejection"),
            "base_ejection must be more than 0 and max_ejection at least base_ejection",
        );
    }
    let b = f.circuit_breaker.clone().unwrap_or_default();
    let on = set || f.circuit_breaker.is_some();
    let breaker = CircuitBreaker {
        failure_threshold: b.failure_threshold.unwrap_or(if on { 5 } else { 0 }),
        open_for: d(b.open_for, Duration::from_secs(5)),
        half_open_requests: b.half_open_requests.unwrap_or(1),
    };
    if breaker.open_for.is_zero() {
        p.push(field("circuit_breaker.open_for"), "must be more than 0");
    }
    if breaker.half_open_requests == 0 {
        p.push(
            field("circuit_breaker.half_open_requests"),
            "must be at least 1",
        );
    }
    let l = f.limits.clone().unwrap_or_default();
    let limits = UpstreamLimits {
        max_concurrent: l.max_concurrent.unwrap_or(4096),
        max_pending: l.max_pending.unwrap_or(1024),
        pending_timeout: d(l.pending_timeout, Duration::from_secs(1)),
    };
    if limits.max_concurrent == 0 {
        p.push(field("limits.max_concurrent"), "must be at least 1");
    }
    if limits.max_concurrent > tokio::sync::Semaphore::MAX_PERMITS {
        p.push(field("limits.max_concurrent"), "is too large");
    }
    let r = f.retries.clone().unwrap_or_default();
    let retries = Retries {
        attempts: r.attempts.unwrap_or(if set { 3 } else { 1 }),
        per_try_timeout: d(r.per_try_timeout, response_timeout),
        budget_percent: r.budget_percent.unwrap_or(20),
        min_retries: r.min_retries.unwrap_or(3),
        honours_idempotency_key: r.honours_idempotency_key,
    };
    if retries.attempts == 0 || retries.attempts > 10 {
        p.push(field("retries.attempts"), "must be 1 to 10");
    }
    if retries.per_try_timeout.is_zero() || retries.per_try_timeout > response_timeout {
        p.push(
            field("retries.per_try_timeout"),
            "must be more than 0 and at most response_timeout",
        );
    }
    if retries.budget_percent > 100 {
        p.push(field("retries.budget_percent"), "must be 0 to 100");
    }
    (health, outlier, breaker, limits, retries)
}
