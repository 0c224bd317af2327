//! The config file as written: serde types, every struct `deny_unknown_fields`.
//!
//! Nothing here is trusted; `super::Config::load` validates each field and names it in errors.
//! Every type also serializes (optional fields left out when unset), so a value built in code
//! writes out as a file that loads back unchanged; the sections other crates own are
//! re-exported here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use super::auth::{
    FileClientCredentials, FileConsentClientAuth, FileConsentSource, FileDiscovery, FileDpop,
    FileIntrospection, FileIssuer, FileJwks, FileTokens, Trust,
};
pub use super::signatures::{FileClientKeys, FileHttpSig, FileJws, FileResponse, FileSignatures};
pub use portcullis_base::duration::ConfigDuration;
pub use portcullis_detect::{FileDetection, FileDetector, FileFirstUse, FileVolume, FileWebhook};
pub use portcullis_state::idempotency::FileIdempotency;
pub use portcullis_state::ratelimit::{FileQuota, FileRateLimits};
pub use portcullis_state::settings::{FileLease, FileOnOutage, FileRedis, FileSentinel, FileState};

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// One listener serving one host (SNI not consulted). Either this or `listeners`.
    #[serde(default, skip_serializing_if = "FileListener::is_unset")]
    pub listener: FileListener,
    /// Several listeners, each with virtual hosts chosen by SNI. Either this or `listener`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listeners: Vec<FileListenerEntry>,
    /// Data-plane threads shared by every listener of `listeners` (with `listener`, its own
    /// `workers`); default: one per available core.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin: Option<FileAdmin>,
    pub upstreams: BTreeMap<String, FileUpstream>,
    #[serde(default)]
    pub forwarding: FileForwarding,
    #[serde(default)]
    pub fapi: FileFapi,
    #[serde(default)]
    pub audit: FileAudit,
    /// Policy files or directories of `*.yaml` files, relative to this file.
    pub policies: Vec<String>,
    #[serde(default)]
    pub shutdown: FileShutdown,
    #[serde(default)]
    pub issuers: BTreeMap<String, FileIssuer>,
    #[serde(default)]
    pub dpop: FileDpop,
    #[serde(default)]
    pub tokens: FileTokens,
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consent: Option<FileConsentSource>,
    #[serde(default)]
    pub tracing: FileTracing,
    /// Request-signature verification and response signing.
    #[serde(default)]
    pub signatures: FileSignatures,
    /// Rate limits: the pre-auth limit per peer and per-client classes.
    #[serde(default)]
    pub rate_limits: FileRateLimits,
    /// Idempotency keys: TTL, capacity, release on upstream failure.
    #[serde(default)]
    pub idempotency: portcullis_state::idempotency::FileIdempotency,
    /// Shared state backend: memory or Redis, and outage behaviour.
    #[serde(default)]
    pub state: FileState,
    /// Behavioural detection (`docs/detection.md`); off when absent.
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detection: Option<FileDetection>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileListener {
    pub address: String,
    pub tls: FileTls,
    #[serde(default)]
    pub limits: FileLimits,
    /// Accepted `Host` / `:authority` names (port ignored); empty accepts any.
    #[serde(default)]
    pub server_names: Vec<String>,
    /// Data-plane threads (each its own event loop); default: one per available core.
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
}

impl FileListener {
    /// Not written in the file (the config uses `listeners` instead).
    pub fn is_unset(&self) -> bool {
        self.address.is_empty()
            && self.tls.certificate.is_empty()
            && self.tls.private_key.is_empty()
            && self.server_names.is_empty()
            && self.workers.is_none()
    }
}

/// One of `listeners`: an address, its limits, and the virtual hosts it serves.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileListenerEntry {
    pub address: String,
    #[serde(default)]
    pub limits: FileLimits,
    pub hosts: Vec<FileHost>,
}

/// A virtual host: the names it answers to (SNI and `Host` / `:authority`), its TLS, and the
/// policy groups whose routes it serves.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileHost {
    /// DNS names, exact or `*.example.com` (one label, any name under it).
    pub names: Vec<String>,
    /// The host a handshake without SNI, or with a name no host has, is given. At most one per
    /// listener; without one such handshakes are refused.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub default: bool,
    pub tls: FileTls,
    /// The policy groups (`group:` of the policy files) this host serves; a request is matched
    /// against their routes only.
    pub policy_groups: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileTls {
    pub certificate: String,
    pub private_key: String,
    #[serde(default)]
    pub client_ca: Vec<String>,
    #[serde(default)]
    pub crl: Vec<String>,
    /// CRLs fetched from URLs (a CA's CRL distribution point), refreshed on an interval.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub crl_urls: Vec<FileCrlUrl>,
    /// OCSP (RFC 6960) for client certificates, checked per request (see `FileOcsp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ocsp: Option<FileOcsp>,
    /// The CRLs client certificates name in their CRL distribution points, fetched per
    /// certificate and checked per request (see `FileLeafCrls`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leaf_crls: Option<FileLeafCrls>,
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_auth: Option<String>,
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handshake_timeout: Option<ConfigDuration>,
}

/// A CRL fetched from a URL: `http://` (a CRL is signed, RFC 5280 §4.2.1.13) or `https://`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileCrlUrl {
    pub url: String,
    /// Trust for an `https://` URL, as for other outbound HTTPS calls.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ca: Vec<String>,
    #[serde(default, skip_serializing_if = "super::auth::is_pinned")]
    pub trust: Trust,
    /// Default 1h.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_interval: Option<ConfigDuration>,
    /// Default 10s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fetch_timeout: Option<ConfigDuration>,
    /// Default 10 MiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<usize>,
}

/// OCSP for client certificates: the responder the certificate names, or a configured one.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileOcsp {
    /// `auto` (the certificate's Authority Information Access `id-ad-ocsp` URL) or an
    /// `http://` / `https://` URL. Default `auto`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub responder: Option<String>,
    /// `closed` (default): no verified answer refuses the certificate; `open`: it passes,
    /// counted by `portcullis_ocsp_fail_open_total`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fail: Option<String>,
    /// Trust for an `https://` responder, as for other outbound HTTPS calls.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ca: Vec<String>,
    #[serde(default, skip_serializing_if = "super::auth::is_pinned")]
    pub trust: Trust,
    /// Default 5s: a request waits at most this long for the responder.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fetch_timeout: Option<ConfigDuration>,
    /// Default 1h: an answer is used until its nextUpdate, but never longer than this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_age: Option<ConfigDuration>,
    /// Default 64 KiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<usize>,
    /// Default 10000 cached answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_entries: Option<usize>,
}

/// The CRL distribution points of client certificates, followed per certificate.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileLeafCrls {
    /// `closed` (default): no verified CRL refuses the certificate; `open`: it passes,
    /// counted by `portcullis_leaf_crl_fail_open_total`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fail: Option<String>,
    /// Trust for an `https://` distribution point, as for other outbound HTTPS calls.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ca: Vec<String>,
    #[serde(default, skip_serializing_if = "super::auth::is_pinned")]
    pub trust: Trust,
    /// Default 5s: a request waits at most this long for a CRL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fetch_timeout: Option<ConfigDuration>,
    /// Default 1h: a CRL is used until its nextUpdate, but never longer than this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_age: Option<ConfigDuration>,
    /// Default 1 MiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<usize>,
    /// Default 100 cached CRLs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_entries: Option<usize>,
    /// When set, only distribution points starting with one of these http(s) URL prefixes are
    /// fetched.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_urls: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileLimits {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_header_bytes: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_headers: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_uri_bytes: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_body_limit: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header_read_timeout: Option<ConfigDuration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_timeout: Option<ConfigDuration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<ConfigDuration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connection_age: Option<ConfigDuration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub h2_max_concurrent_streams: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub h2_max_pending_reset_streams: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub h2_max_local_error_reset_streams: Option<usize>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileAdmin {
    pub address: String,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileUpstream {
    /// One endpoint (the common case). Exactly one of `url`, `endpoints` and `dns` is set.
    #[serde(default)]
    #[serde(skip_serializing_if = "String::is_empty")]
    pub url: String,
    /// A static set of endpoints: URLs that differ only in their authority.
    #[serde(default)]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<String>,
    /// Endpoints from a DNS name, resolved again on an interval (a headless service).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns: Option<FileUpstreamDns>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_check: Option<FileHealthCheck>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<FileOutlierDetection>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<FileCircuitBreaker>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limits: Option<FileUpstreamLimits>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retries: Option<FileRetries>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<ConfigDuration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_timeout: Option<ConfigDuration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool_idle_timeout: Option<ConfigDuration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool_max_idle_per_host: Option<usize>,
    #[serde(default)]
    pub http2: bool,
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<FileUpstreamTls>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileUpstreamDns {
    pub name: String,
    pub port: u16,
    /// `http` (default) or `https`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// Path prefix prepended to forwarded paths.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_path: Option<String>,
    /// How often the name is resolved again (default 10s).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<ConfigDuration>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileHealthCheck {
    /// The path probed with a GET; any 2xx is healthy.
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<ConfigDuration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<ConfigDuration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub healthy_threshold: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unhealthy_threshold: Option<u32>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileOutlierDetection {
    /// Consecutive 5xx answers, connect failures or timeouts that eject an endpoint; 0: off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consecutive_failures: Option<u32>,
    /// The first ejection's length; each further one doubles it, up to `max_ejection`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_ejection: Option<ConfigDuration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_ejection: Option<ConfigDuration>,
    /// The largest share of the set ejected at once, in percent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_ejected_percent: Option<u32>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileCircuitBreaker {
    /// Consecutive connect failures, timeouts or broken exchanges that open it; 0: off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<u32>,
    /// How long it stays open before trial requests are let through (half-open).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open_for: Option<ConfigDuration>,
    /// Trial requests at once while half-open.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub half_open_requests: Option<u32>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileUpstreamLimits {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_pending: Option<usize>,
    /// How long a pending request waits for a slot before it is refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending_timeout: Option<ConfigDuration>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileRetries {
    /// Tries in all, the first included (1: no retries).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<ConfigDuration>,
    /// Retries allowed as a share of requests, in percent, over a 10 s window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget_percent: Option<u32>,
    /// Retries allowed per window whatever the share (so a quiet upstream can retry at all).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_retries: Option<u32>,
    /// The upstream answers a repeated idempotency key with the first answer, so a request
    /// the route reserved a key for may be sent again.
    #[serde(default)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub honours_idempotency_key: bool,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileUpstreamTls {
    #[serde(default)]
    pub ca: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_private_key: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileForwarding {
    /// `rfc9440` (default), `xfcc` or `none`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileFapi {
    /// `echo_or_generate` (default) or `reject_invalid`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interaction_id: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileAudit {
    /// `file` (default), `stdout` or `none`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sink: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_capacity: Option<usize>,
    /// `block` (default), `refuse` or `drop`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_full: Option<String>,
    /// fsync the file at most this long after a write; `0ms` = after every batch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fsync_interval: Option<ConfigDuration>,
    /// Rotate the file once it reaches this many bytes (file sink only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotate_bytes: Option<u64>,
    /// Rotate the file once it is this old (file sink only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotate_age: Option<ConfigDuration>,
    /// Rotated files to keep; 0 keeps all (file sink only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retain: Option<usize>,
    /// Ed25519 PKCS#8 PEM key that signs checkpoints.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signing_key: Option<String>,
    /// Records between signed checkpoints; 0 = by time only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint_every: Option<u64>,
    /// Longest time between signed checkpoints (when records were written).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint_interval: Option<ConfigDuration>,
    /// `true` (default): a connection's facts in one `connection` record per file that request
    /// records name; `false`: the facts inline in every request record (the format before).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection_records: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileShutdown {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain_timeout: Option<ConfigDuration>,
    /// After SIGTERM, how long `/readyz` says 503 while the listener still accepts, so load
    /// balancers and Kubernetes endpoints stop sending before connections are refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grace: Option<ConfigDuration>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileTracing {
    /// OTLP/HTTP traces endpoint, e.g. `http://127.0.0.1:4318/v1/traces` (needs the `otlp`
    /// cargo feature). Wins over `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `..._ENDPOINT`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the exported spans; wins over `OTEL_SERVICE_NAME`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
    /// Sampling `ParentBased(TraceIdRatioBased(ratio))`, 0.0 to 1.0; wins over
    /// `OTEL_TRACES_SAMPLER` (whose default is `parentbased_always_on`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample_ratio: Option<f64>,
}
