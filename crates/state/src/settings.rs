//! The `state:` config section: which backend holds shared state (memory for one instance,
//! Redis for a fleet), how to reach Redis, how rate-limit tokens are leased, and what each
//! feature does while Redis cannot answer.
//!
//! ```yaml
//! state:
//!   backend: redis                 # memory (default) | redis
//!   redis:
//!     url: rediss://redis.bank.internal:6380/0  # redis:// or rediss://; no credentials in it
//!     ca: [../certs/redis-ca.pem]  # rediss:// needs a trust choice: ca (pinned) or trust: system
//!     client_certificate: ../certs/portcullis-redis.pem  # optional, with client_private_key
//!     client_private_key: ../certs/portcullis-redis.key
//!     username: portcullis         # ACL user (optional)
//!     password_file: ../secrets/redis-password   # optional (AUTH); re-read on reload; never logged
//!     # sentinel: {master: portcullis, addresses: ["10.0.0.1:26379", ...]}  # instead of url
//!     connect_timeout: 1s
//!     command_timeout: 200ms
//!     health_interval: 1s
//!     key_prefix: "portcullis:"
//!   rate_limit_lease:
//!     max_tokens: 10               # tokens taken from Redis per call, at most
//!     ttl: 1s                      # unspent leased tokens are dropped after this
//!   on_outage:
//!     replay: refuse               # refuse (default) | local
//!     idempotency: refuse          # refuse (the only value)
//!     rate_limits: local           # local (default) | refuse
//! ```
//!
//! Defaults fail closed where a wrong answer admits a replay or runs a payment twice; rate
//! limits may fall back to this instance's own limiter (each instance then enforces the whole
//! quota, so a fleet of N admits up to N times the quota while Redis is away).

use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use portcullis_base::{duration::ConfigDuration, problems::Problems};

/// `state:` as written.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileState {
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis: Option<FileRedis>,
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit_lease: Option<FileLease>,
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_outage: Option<FileOnOutage>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileRedis {
    /// `redis://` or `rediss://`; left out with `sentinel` (the sentinels name the master).
    #[serde(default)]
    #[serde(skip_serializing_if = "String::is_empty")]
    pub url: String,
    /// ACL user (`AUTH username password`); without it, the `default` user.
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<String>,
    /// PEM bundles trusted for `rediss://` (trust is pinned to them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ca: Vec<String>,
    /// `pinned` (default: only `ca`) or `system` (the system root store, and `ca`).
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trust: Option<String>,
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<String>,
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_private_key: Option<String>,
    /// Lets a password cross a non-loopback network over plain TCP (`redis://`).
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_plaintext: Option<bool>,
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sentinel: Option<FileSentinel>,
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<ConfigDuration>,
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command_timeout: Option<ConfigDuration>,
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_interval: Option<ConfigDuration>,
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_prefix: Option<String>,
}

/// `state.redis.sentinel`: Redis Sentinel names the master; data nodes and sentinels use TLS
/// when `state.redis` has a trust choice (`ca` or `trust: system`).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileSentinel {
    /// The monitored master's name (`sentinel monitor NAME ...`).
    pub master: String,
    /// `host:port` of each sentinel, asked in order.
    pub addresses: Vec<String>,
    /// Sentinel ACL credentials, when the sentinels require them (`requirepass`/`user`).
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<String>,
    /// The database index on the data nodes (default 0).
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<u16>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileLease {
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl: Option<ConfigDuration>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileOnOutage {
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replay: Option<String>,
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency: Option<String>,
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limits: Option<String>,
}

/// What a feature does while the shared store cannot answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnOutage {
    /// Refuse the request with 503 and a reason (fail closed).
    Refuse,
    /// Use this instance's own state (an explicit, logged, counted fail-open).
    Local,
}

impl OnOutage {
    pub fn as_str(self) -> &'static str {
        match self {
            OnOutage::Refuse => "refuse",
            OnOutage::Local => "local",
        }
    }
}

/// A password that never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// TLS to Redis: the trusted roots (PEM: the pinned `ca` bundles, and the system roots with
/// `trust: system`) and an optional client certificate.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisTls {
    pub roots_pem: Vec<u8>,
    pub client_certificate_pem: Option<Vec<u8>>,
    pub client_private_key_pem: Option<Secret>,
}

impl fmt::Debug for RedisTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisTls")
            .field("roots_pem_bytes", &self.roots_pem.len())
            .field("client_certificate", &self.client_certificate_pem.is_some())
            .finish()
    }
}

/// Sentinel discovery of the master.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SentinelSettings {
    pub master: String,
    /// `(host, port)` of each sentinel.
    pub addresses: Vec<(String, u16)>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub database: u16,
}

/// How to reach Redis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisSettings {
    /// `redis://host:port/db` or `rediss://...`, without credentials (the loader refuses them
    /// in the URL); empty with `sentinel`.
    pub url: String,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// Set for `rediss://` (and for sentinel deployments with a trust choice).
    pub tls: Option<RedisTls>,
    pub sentinel: Option<SentinelSettings>,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    pub health_interval: Duration,
    pub key_prefix: String,
}

// One value per loaded config: its size does not matter, and a box would only add noise to
// every match on it.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    Memory,
    Redis(RedisSettings),
}

/// The validated `state:` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateConfig {
    pub backend: Backend,
    /// Tokens taken from the fleet quota per Redis call, at most (each class leases at most a
    /// tenth of its burst).
    pub lease_max_tokens: u32,
    pub lease_ttl: Duration,
    pub replay: OnOutage,
    pub idempotency: OnOutage,
    pub rate_limits: OnOutage,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            backend: Backend::Memory,
            lease_max_tokens: 10,
            lease_ttl: Duration::from_secs(1),
            replay: OnOutage::Refuse,
            idempotency: OnOutage::Refuse,
            rate_limits: OnOutage::Local,
        }
    }
}

fn between(
    p: &mut Problems<'_>,
    field: &str,
    v: Option<ConfigDuration>,
    default: Duration,
    min: Duration,
    max: Duration,
) -> Duration {
    let d = v.map_or(default, |d| d.0);
    if d < min || d > max {
        p.push(
            field,
            format!("must be between {min:?} and {max:?} (got {d:?})"),
        );
    }
    d
}

fn on_outage(
    p: &mut Problems<'_>,
    field: &str,
    v: Option<&str>,
    default: OnOutage,
    local_allowed: bool,
) -> OnOutage {
    match v {
        None => default,
        Some("refuse") => OnOutage::Refuse,
        Some("local") if local_allowed => OnOutage::Local,
        Some("local") => {
            p.push(
                field,
                "only `refuse`: with per-instance keys a retried payment could run twice",
            );
            default
        }
        Some(other) => {
            p.push(field, format!("unknown value `{other}` (refuse or local)"));
            default
        }
    }
}

/// Reads a secret file (one line; trailing newlines dropped). Errors name the path, never the
/// content.
fn read_secret(p: &mut Problems<'_>, base: &Path, field: &str, f: &str) -> Option<Secret> {
    let path = portcullis_base::problems::resolve(base, f);
    match std::fs::read_to_string(&path) {
        Ok(s) => {
            let s = s.trim_end_matches(['\r', '\n']).to_string();
            if s.is_empty() {
                p.push(field, "the file is empty");
                None
            } else {
                Some(Secret(s))
            }
        }
        Err(e) => {
            p.push(field, format!("cannot read {}: {e}", path.display()));
            None
        }
    }
}

/// An ACL user name: printable, no spaces (it goes on the wire in `AUTH`).
fn username(p: &mut Problems<'_>, field: &str, u: Option<&String>) -> Result<Option<String>, ()> {
    match u {
        None => Ok(None),
        Some(u) if !u.is_empty() && u.len() <= 128 && u.bytes().all(|b| b.is_ascii_graphic()) => {
            Ok(Some(u.clone()))
        }
        Some(_) => {
            p.push(field, "1 to 128 printable characters without spaces");
            Err(())
        }
    }
}

fn is_loopback(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost")
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Reads PEM certificates; problems name the field and the file.
fn pem_certificates(p: &mut Problems<'_>, field: &str, path: &Path) -> Option<Vec<u8>> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => {
            p.push(field, format!("cannot read {}: {e}", path.display()));
            return None;
        }
    };
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&bytes).collect();
    match certs {
        Ok(c) if !c.is_empty() => Some(bytes),
        Ok(_) => {
            p.push(
                field,
                format!("{} holds no PEM certificate", path.display()),
            );
            None
        }
        Err(e) => {
            p.push(
                field,
                format!("{} is not a PEM certificate bundle: {e}", path.display()),
            );
            None
        }
    }
}

fn pem_of(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// The trust choice and client certificate of `rediss://` (or a sentinel deployment over TLS).
fn validate_tls(p: &mut Problems<'_>, base: &Path, r: &FileRedis) -> Result<RedisTls, ()> {
    use rustls_pki_types::pem::PemObject;
    let mut ok = true;
    let mut roots = Vec::new();
    for (i, c) in r.ca.iter().enumerate() {
        let path = portcullis_base::problems::resolve(base, c);
        match pem_certificates(p, &format!("state.redis.ca[{i}]"), &path) {
            Some(b) => {
                roots.extend_from_slice(&b);
                roots.push(b'\n');
            }
            None => ok = false,
        }
    }
    match r.trust.as_deref() {
        None | Some("pinned") => {
            if r.ca.is_empty() {
                p.push(
                    "state.redis.ca",
                    "TLS to Redis needs its CA bundle (trust is pinned), or trust: system",
                );
                ok = false;
            }
        }
        Some("system") => {
            let found = rustls_native_certs::load_native_certs();
            if found.certs.is_empty() {
                p.push(
                    "state.redis.trust",
                    "the system root store is empty or unreadable (SSL_CERT_FILE, SSL_CERT_DIR or the distribution's ca-certificates)",
                );
                ok = false;
            }
            for c in &found.certs {
                roots.extend_from_slice(pem_of(c.as_ref()).as_bytes());
            }
        }
        Some(other) => {
            p.push(
                "state.redis.trust",
                format!("unknown value `{other}` (pinned or system)"),
            );
            ok = false;
        }
    }
    let (cert, key) = match (&r.client_certificate, &r.client_private_key) {
        (None, None) => (None, None),
        (Some(c), Some(k)) => {
            let cert = pem_certificates(
                p,
                "state.redis.client_certificate",
                &portcullis_base::problems::resolve(base, c),
            );
            let path = portcullis_base::problems::resolve(base, k);
            let key = match std::fs::read(&path) {
                Ok(b) => match rustls_pki_types::PrivateKeyDer::from_pem_slice(&b) {
                    Ok(_) => String::from_utf8(b).ok().map(Secret),
                    Err(e) => {
                        p.push(
                            "state.redis.client_private_key",
                            format!("{} holds no PEM private key: {e}", path.display()),
                        );
                        None
                    }
                },
                Err(e) => {
                    p.push(
                        "state.redis.client_private_key",
                        format!("cannot read {}: {e}", path.display()),
                    );
                    None
                }
            };
            if cert.is_none() || key.is_none() {
                ok = false;
            }
            (cert, key)
        }
        (Some(_), None) => {
            p.push(
                "state.redis.client_private_key",
                "required with state.redis.client_certificate",
            );
            ok = false;
            (None, None)
        }
        (None, Some(_)) => {
            p.push(
                "state.redis.client_certificate",
                "required with state.redis.client_private_key",
            );
            ok = false;
            (None, None)
        }
    };
    if !ok {
        return Err(());
    }
    Ok(RedisTls {
        roots_pem: roots,
        client_certificate_pem: cert,
        client_private_key_pem: key,
    })
}

fn validate_sentinel(
    p: &mut Problems<'_>,
    base: &Path,
    s: &FileSentinel,
) -> Result<SentinelSettings, ()> {
    let mut ok = true;
    if s.master.is_empty()
        || s.master.len() > 128
        || !s.master.bytes().all(|b| b.is_ascii_graphic())
    {
        p.push(
            "state.redis.sentinel.master",
            "1 to 128 printable characters without spaces",
        );
        ok = false;
    }
    if s.addresses.is_empty() {
        p.push("state.redis.sentinel.addresses", "at least one host:port");
        ok = false;
    }
    let mut addresses = Vec::new();
    for (i, a) in s.addresses.iter().enumerate() {
        let parsed = a.rsplit_once(':').and_then(|(h, port)| {
            let h = h.trim_start_matches('[').trim_end_matches(']');
            let port = port.parse::<u16>().ok().filter(|p| *p > 0)?;
            (!h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic()))
                .then(|| (h.to_string(), port))
        });
        match parsed {
            Some(hp) => addresses.push(hp),
            None => {
                p.push(
                    format!("state.redis.sentinel.addresses[{i}]"),
                    format!("`{a}` is not host:port"),
                );
                ok = false;
            }
        }
    }
    let user = username(p, "state.redis.sentinel.username", s.username.as_ref());
    let password = s
        .password_file
        .as_ref()
        .map(|f| read_secret(p, base, "state.redis.sentinel.password_file", f));
    if user.is_err() || matches!(password, Some(None)) {
        ok = false;
    }
    if !ok {
        return Err(());
    }
    Ok(SentinelSettings {
        master: s.master.clone(),
        addresses,
        username: user.unwrap_or_default(),
        password: password.flatten(),
        database: s.database.unwrap_or(0),
    })
}

fn validate_redis(p: &mut Problems<'_>, base: &Path, r: &FileRedis) -> Option<RedisSettings> {
    use redis::IntoConnectionInfo;
    let mut ok = true;
    let trust_chosen = !r.ca.is_empty()
        || r.trust.is_some()
        || r.client_certificate.is_some()
        || r.client_private_key.is_some();
    // Where the password would travel: the URL's host, or every sentinel (and the masters
    // they name, which we cannot know at load).
    let mut hosts: Vec<String> = Vec::new();
    let tls_wanted;
    let sentinel = match (&r.sentinel, r.url.is_empty()) {
        (Some(_), false) => {
            p.push(
                "state.redis.url",
                "not used with state.redis.sentinel (the sentinels name the master): remove it",
            );
            ok = false;
            tls_wanted = trust_chosen;
            None
        }
        (None, true) => {
            p.push("state.redis.url", "required (or state.redis.sentinel)");
            ok = false;
            tls_wanted = false;
            None
        }
        (Some(s), true) => {
            tls_wanted = trust_chosen;
            let s = validate_sentinel(p, base, s);
            if let Ok(s) = &s {
                hosts.extend(s.addresses.iter().map(|(h, _)| h.clone()));
            }
            ok &= s.is_ok();
            s.ok()
        }
        (None, false) => {
            tls_wanted = r.url.starts_with("rediss://");
            // Never echo the URL back: it may hold a password.
            if !(r.url.starts_with("redis://") || r.url.starts_with("rediss://")) {
                p.push("state.redis.url", "must be a redis:// or rediss:// URL");
                ok = false;
            } else if r.url.contains('#') {
                // `#insecure` would turn off host name verification.
                p.push(
                    "state.redis.url",
                    "must not have a #fragment (host name verification stays on)",
                );
                ok = false;
            } else {
                match r.url.as_str().into_connection_info() {
                    Ok(info)
                        if info.redis_settings().password().is_some()
                            || info.redis_settings().username().is_some() =>
                    {
                        p.push(
                            "state.redis.url",
                            "must not hold credentials: use state.redis.username and state.redis.password_file",
                        );
                        ok = false;
                    }
                    Ok(info) => match info.addr() {
                        redis::ConnectionAddr::Tcp(h, _)
                        | redis::ConnectionAddr::TcpTls { host: h, .. } => hosts.push(h.clone()),
                        _ => {}
                    },
                    Err(_) => {
                        p.push(
                            "state.redis.url",
                            "is not a valid redis:// or rediss:// URL",
                        );
                        ok = false;
                    }
                }
            }
            if !tls_wanted && trust_chosen {
                p.push(
                    "state.redis.ca",
                    "ca, trust and the client certificate apply to rediss:// only",
                );
                ok = false;
            }
            None
        }
    };
    let tls = if tls_wanted {
        let t = validate_tls(p, base, r);
        ok &= t.is_ok();
        t.ok()
    } else {
        None
    };
    let user = username(p, "state.redis.username", r.username.as_ref());
    ok &= user.is_ok();
    let password = r
        .password_file
        .as_ref()
        .and_then(|f| read_secret(p, base, "state.redis.password_file", f));
    if r.password_file.is_some() && password.is_none() {
        ok = false;
    }
    let sentinel_password = sentinel.as_ref().is_some_and(|s| s.password.is_some());
    if (password.is_some() || sentinel_password)
        && !tls_wanted
        && !r.allow_plaintext.unwrap_or(false)
        && (hosts.is_empty() || !hosts.iter().all(|h| is_loopback(h)))
    {
        // Plain TCP sends AUTH in clear: anyone on the path could read the password.
        p.push(
            "state.redis.password_file",
            "a password over plain redis:// to a host that is not loopback travels in clear: use rediss:// (or allow_plaintext: true)",
        );
        ok = false;
    }
    let ms = Duration::from_millis;
    let connect_timeout = between(
        p,
        "state.redis.connect_timeout",
        r.connect_timeout,
        ms(1000),
        ms(10),
        ms(30_000),
    );
    let command_timeout = between(
        p,
        "state.redis.command_timeout",
        r.command_timeout,
        ms(200),
        ms(1),
        ms(10_000),
    );
    let health_interval = between(
        p,
        "state.redis.health_interval",
        r.health_interval,
        ms(1000),
        ms(50),
        ms(60_000),
    );
    let key_prefix = r.key_prefix.clone().unwrap_or_else(|| "portcullis:".into());
    if key_prefix.len() > 64 || !key_prefix.bytes().all(|b| b.is_ascii_graphic()) {
        p.push(
            "state.redis.key_prefix",
            "at most 64 printable characters without spaces",
        );
        ok = false;
    }
    ok.then(|| RedisSettings {
        url: r.url.clone(),
        username: user.unwrap_or_default(),
        password,
        tls,
        sentinel,
        connect_timeout,
        command_timeout,
        health_interval,
        key_prefix,
    })
}

/// Validates `state:`; problems go to `p`.
pub fn validate(p: &mut Problems<'_>, base: &Path, f: &FileState) -> StateConfig {
    let d = StateConfig::default();
    let backend = match (f.backend.as_deref(), &f.redis) {
        (None | Some("memory"), None) => Backend::Memory,
        (None | Some("memory"), Some(_)) => {
            p.push(
                "state.redis",
                "is only used with `backend: redis` (say which backend you mean)",
            );
            Backend::Memory
        }
        (Some("redis"), None) => {
            p.push("state.redis", "required when state.backend is redis");
            Backend::Memory
        }
        (Some("redis"), Some(r)) => {
            validate_redis(p, base, r).map_or(Backend::Memory, Backend::Redis)
        }
        (Some(other), _) => {
            p.push(
                "state.backend",
                format!("unknown value `{other}` (memory or redis)"),
            );
            Backend::Memory
        }
    };
    let lease = f.rate_limit_lease.as_ref();
    let lease_max_tokens = lease
        .and_then(|l| l.max_tokens)
        .unwrap_or(d.lease_max_tokens);
    if !(1..=1000).contains(&lease_max_tokens) {
        p.push(
            "state.rate_limit_lease.max_tokens",
            "must be between 1 and 1000",
        );
    }
    let lease_ttl = between(
        p,
        "state.rate_limit_lease.ttl",
        lease.and_then(|l| l.ttl),
        d.lease_ttl,
        Duration::from_millis(10),
        Duration::from_secs(60),
    );
    let o = f.on_outage.as_ref();
    let replay = on_outage(
        p,
        "state.on_outage.replay",
        o.and_then(|o| o.replay.as_deref()),
        d.replay,
        true,
    );
    let idempotency = on_outage(
        p,
        "state.on_outage.idempotency",
        o.and_then(|o| o.idempotency.as_deref()),
        d.idempotency,
        false,
    );
    let rate_limits = on_outage(
        p,
        "state.on_outage.rate_limits",
        o.and_then(|o| o.rate_limits.as_deref()),
        d.rate_limits,
        true,
    );
    StateConfig {
        backend,
        lease_max_tokens,
        lease_ttl,
        replay,
        idempotency,
        rate_limits,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(yaml: &str) -> (StateConfig, Vec<String>) {
        let f: FileState = serde_saphyr::from_str(yaml).unwrap();
        let mut errors = Vec::new();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pw"), "s3cret\n").unwrap();
        let c = {
            let mut p = Problems::new(Path::new("c.yaml"), &mut errors);
            validate(&mut p, dir.path(), &f)
        };
        (c, errors.iter().map(|e| e.to_string()).collect())
    }

    #[test]
    fn defaults_are_memory_and_fail_closed() {
        let (c, e) = check("{}");
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(c, StateConfig::default());
        assert_eq!(c.replay, OnOutage::Refuse);
        assert_eq!(c.idempotency, OnOutage::Refuse);
        assert_eq!(c.rate_limits, OnOutage::Local);
    }

    #[test]
    fn a_redis_backend_with_every_setting() {
        let (c, e) = check(
            "backend: redis\nredis: {url: 'redis://127.0.0.1:6390/2', password_file: pw, command_timeout: 50ms, key_prefix: 'x:'}\nrate_limit_lease: {max_tokens: 5, ttl: 500ms}\non_outage: {replay: local, rate_limits: refuse}\n",
        );
        assert!(e.is_empty(), "{e:?}");
        let Backend::Redis(r) = &c.backend else {
            panic!("redis")
        };
        assert_eq!(r.password, Some(Secret("s3cret".into())));
        assert_eq!(format!("{:?}", r.password), "Some(Secret(..))");
        assert_eq!(r.command_timeout, Duration::from_millis(50));
        assert_eq!(r.key_prefix, "x:");
        assert_eq!(c.lease_max_tokens, 5);
        assert_eq!(c.replay, OnOutage::Local);
        assert_eq!(c.rate_limits, OnOutage::Refuse);
    }

    #[test]
    fn plaintext_passwords_only_on_loopback_or_when_allowed() {
        for yaml in [
            "backend: redis\nredis: {url: 'redis://127.0.0.1:1', password_file: pw}",
            "backend: redis\nredis: {url: 'redis://localhost:1', username: app, password_file: pw}",
            "backend: redis\nredis: {url: 'redis://10.0.0.5:1', password_file: pw, allow_plaintext: true}",
            "backend: redis\nredis: {url: 'redis://10.0.0.5:1'}",
            "backend: redis\nredis: {url: 'rediss://redis.bank.example:6380', trust: system, username: app, password_file: pw}",
            "backend: redis\nredis: {sentinel: {master: m, addresses: ['127.0.0.1:26379', '[::1]:26380'], database: 2}, password_file: pw}",
        ] {
            let (c, e) = check(yaml);
            assert!(e.is_empty(), "{yaml}: {e:?}");
            assert!(matches!(c.backend, Backend::Redis(_)), "{yaml}");
        }
        let (c, _) = check(
            "backend: redis\nredis: {sentinel: {master: m, addresses: ['127.0.0.1:26379', '[::1]:26380'], database: 2}}",
        );
        let Backend::Redis(r) = c.backend else {
            panic!("redis")
        };
        let s = r.sentinel.unwrap();
        assert_eq!(
            s.addresses,
            vec![("127.0.0.1".to_string(), 26379), ("::1".to_string(), 26380)]
        );
        assert_eq!(s.database, 2);
    }

    #[test]
    fn bad_values_name_the_field_and_never_echo_a_password() {
        let cases = [
            ("backend: etcd", "state.backend: unknown value `etcd`"),
            ("backend: redis", "state.redis: required when"),
            (
                "redis: {url: 'redis://h:1'}",
                "state.redis: is only used with `backend: redis`",
            ),
            (
                "backend: redis\nredis: {url: 'http://h:1'}",
                "state.redis.url: must be a redis:// or rediss:// URL",
            ),
            (
                "backend: redis\nredis: {url: 'rediss://h:1'}",
                "state.redis.ca: TLS to Redis needs its CA bundle",
            ),
            (
                "backend: redis\nredis: {url: 'rediss://h:1/#insecure', ca: [pw]}",
                "state.redis.url: must not have a #fragment",
            ),
            (
                "backend: redis\nredis: {url: 'rediss://h:1', ca: [pw]}",
                "state.redis.ca[0]: ",
            ),
            (
                "backend: redis\nredis: {url: 'rediss://h:1', trust: everyone}",
                "state.redis.trust: unknown value `everyone`",
            ),
            (
                "backend: redis\nredis: {url: 'redis://h:1', ca: [pw]}",
                "state.redis.ca: ca, trust and the client certificate apply to rediss:// only",
            ),
            (
                "backend: redis\nredis: {url: 'rediss://h:1', trust: system, client_certificate: pw}",
                "state.redis.client_private_key: required with",
            ),
            (
                "backend: redis\nredis: {url: 'redis://10.0.0.5:6379', password_file: pw}",
                "state.redis.password_file: a password over plain redis://",
            ),
            (
                "backend: redis\nredis: {url: 'redis://u:hunter2@h:1'}",
                "state.redis.url: must not hold credentials",
            ),
            (
                "backend: redis\nredis: {url: 'redis://h:1', username: 'a b'}",
                "state.redis.username",
            ),
            (
                "backend: redis\nredis: {sentinel: {master: m, addresses: ['127.0.0.1:26379']}, url: 'redis://h:1'}",
                "state.redis.url: not used with state.redis.sentinel",
            ),
            (
                "backend: redis\nredis: {}",
                "state.redis.url: required (or state.redis.sentinel)",
            ),
            (
                "backend: redis\nredis: {sentinel: {master: m, addresses: ['nope']}}",
                "state.redis.sentinel.addresses[0]: `nope` is not host:port",
            ),
            (
                "backend: redis\nredis: {sentinel: {master: m, addresses: []}}",
                "state.redis.sentinel.addresses: at least one",
            ),
            (
                "backend: redis\nredis: {sentinel: {master: m, addresses: ['127.0.0.1:1'], password_file: missing}}",
                "state.redis.sentinel.password_file: cannot read",
            ),
            (
                "backend: redis\nredis: {url: 'redis://:hunter2@h:1'}",
                "state.redis.url: must not hold credentials",
            ),
            (
                "backend: redis\nredis: {url: 'redis://h:1', password_file: missing}",
                "state.redis.password_file: cannot read",
            ),
            (
                "backend: redis\nredis: {url: 'redis://h:1', command_timeout: 0ms}",
                "state.redis.command_timeout: must be between",
            ),
            (
                "backend: redis\nredis: {url: 'redis://h:1', key_prefix: 'a b'}",
                "state.redis.key_prefix",
            ),
            (
                "rate_limit_lease: {max_tokens: 0}",
                "state.rate_limit_lease.max_tokens",
            ),
            (
                "on_outage: {idempotency: local}",
                "state.on_outage.idempotency: only `refuse`",
            ),
            (
                "on_outage: {replay: open}",
                "state.on_outage.replay: unknown value `open`",
            ),
        ];
        for (yaml, want) in cases {
            let (_, e) = check(yaml);
            assert!(
                e.iter().any(|e| e.contains(want)),
                "{yaml}: want {want}, got {e:?}"
            );
            assert!(e.iter().all(|e| !e.contains("hunter2")), "{e:?}");
            assert!(e.iter().all(|e| e.starts_with("c.yaml: ")), "{e:?}");
        }
    }
}
