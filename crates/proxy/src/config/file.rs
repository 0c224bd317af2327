//! The config file as written: serde types, every struct `deny_unknown_fields`.
//!
//! Nothing here is trusted; `super::Config::load` validates each field and names it in errors.

use std::collections::BTreeMap;

use serde::Deserialize;

use portcullis_base::duration::ConfigDuration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConfig {
    pub listener: FileListener,
    #[serde(default)]
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
    pub issuers: BTreeMap<String, super::auth::FileIssuer>,
    #[serde(default)]
    pub dpop: super::auth::FileDpop,
    #[serde(default)]
    pub tokens: super::auth::FileTokens,
    #[serde(default)]
    pub consent: Option<super::auth::FileConsentSource>,
    #[serde(default)]
    pub tracing: FileTracing,
    /// Request-signature verification and response signing.
    #[serde(default)]
    pub signatures: super::signatures::FileSignatures,
    /// Rate limits: the pre-auth limit per peer and per-client classes.
    #[serde(default)]
    pub rate_limits: portcullis_state::ratelimit::FileRateLimits,
    /// Idempotency keys: TTL, capacity, release on upstream failure.
    #[serde(default)]
    pub idempotency: portcullis_state::idempotency::FileIdempotency,
    /// Shared state backend: memory or Redis, and outage behaviour.
    #[serde(default)]
    pub state: portcullis_state::settings::FileState,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileListener {
    pub address: String,
    pub tls: FileTls,
    #[serde(default)]
    pub limits: FileLimits,
    /// Accepted `Host` / `:authority` names (port ignored); empty accepts any.
    #[serde(default)]
    pub server_names: Vec<String>,
    /// Data-plane threads (each its own event loop); default: one per available core.
    #[serde(default)]
    pub workers: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileTls {
    pub certificate: String,
    pub private_key: String,
    #[serde(default)]
    pub client_ca: Vec<String>,
    #[serde(default)]
    pub crl: Vec<String>,
    #[serde(default)]
    pub client_auth: Option<String>,
    #[serde(default)]
    pub handshake_timeout: Option<ConfigDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileLimits {
    pub max_header_bytes: Option<usize>,
    pub max_headers: Option<usize>,
    pub max_uri_bytes: Option<usize>,
    pub default_body_limit: Option<u64>,
    pub header_read_timeout: Option<ConfigDuration>,
    pub request_timeout: Option<ConfigDuration>,
    pub idle_timeout: Option<ConfigDuration>,
    pub max_connection_age: Option<ConfigDuration>,
    pub max_connections: Option<usize>,
    pub h2_max_concurrent_streams: Option<u32>,
    pub h2_max_pending_reset_streams: Option<usize>,
    pub h2_max_local_error_reset_streams: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileAdmin {
    pub address: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileUpstream {
    pub url: String,
    pub connect_timeout: Option<ConfigDuration>,
    pub response_timeout: Option<ConfigDuration>,
    pub pool_idle_timeout: Option<ConfigDuration>,
    pub pool_max_idle_per_host: Option<usize>,
    #[serde(default)]
    pub http2: bool,
    #[serde(default)]
    pub tls: Option<FileUpstreamTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileUpstreamTls {
    #[serde(default)]
    pub ca: Vec<String>,
    pub client_certificate: Option<String>,
    pub client_private_key: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileForwarding {
    /// `rfc9440` (default), `xfcc` or `none`.
    pub client_cert: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileFapi {
    /// `echo_or_generate` (default) or `reject_invalid`.
    pub interaction_id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileAudit {
    /// `file` (default), `stdout` or `none`.
    pub sink: Option<String>,
    pub path: Option<String>,
    pub queue_capacity: Option<usize>,
    /// `block` (default), `refuse` or `drop`.
    pub queue_full: Option<String>,
    /// fsync the file at most this long after a write; `0ms` = after every batch.
    pub fsync_interval: Option<ConfigDuration>,
    /// Rotate the file once it reaches this many bytes (file sink only).
    pub rotate_bytes: Option<u64>,
    /// Rotate the file once it is this old (file sink only).
    pub rotate_age: Option<ConfigDuration>,
    /// Rotated files to keep; 0 keeps all (file sink only).
    pub retain: Option<usize>,
    /// Ed25519 PKCS#8 PEM key that signs checkpoints.
    pub signing_key: Option<String>,
    /// Records between signed checkpoints; 0 = by time only.
    pub checkpoint_every: Option<u64>,
    /// Longest time between signed checkpoints (when records were written).
    pub checkpoint_interval: Option<ConfigDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileShutdown {
    pub drain_timeout: Option<ConfigDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileTracing {
    /// OTLP/HTTP traces endpoint, e.g. `http://127.0.0.1:4318/v1/traces` (needs the `otlp`
    /// cargo feature).
    pub otlp_endpoint: Option<String>,
    pub service_name: Option<String>,
}
