//! The `state:` config section: which backend holds shared state (memory for one instance,
//! Redis for a fleet), how to reach Redis, how rate-limit tokens are leased, and what each
//! feature does while Redis cannot answer.
//!
//! ```yaml
//! state:
//!   backend: redis                 # memory (default) | redis
//!   redis:
//!     url: redis://10.0.0.5:6379/0 # redis:// only; no password in the URL
//!     password_file: ../secrets/redis-password   # optional (AUTH); never logged
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
    pub url: String,
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<String>,
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

/// How to reach Redis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisSettings {
    /// `redis://host:port/db`, without credentials (the loader refuses a password in it).
    pub url: String,
    pub password: Option<Secret>,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    pub health_interval: Duration,
    pub key_prefix: String,
}

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

fn validate_redis(p: &mut Problems<'_>, base: &Path, r: &FileRedis) -> Option<RedisSettings> {
    use redis::IntoConnectionInfo;
    let mut ok = true;
    // Never echo the URL back: it may hold a password.
    if !r.url.starts_with("redis://") {
        p.push(
            "state.redis.url",
            "must be a redis:// URL (TLS to Redis is not built in: use a local TLS tunnel)",
        );
        ok = false;
    } else {
        match r.url.as_str().into_connection_info() {
            Ok(info) if info.redis_settings().password().is_some() => {
                p.push(
                    "state.redis.url",
                    "must not hold a password: put it in state.redis.password_file",
                );
                ok = false;
            }
            Ok(_) => {}
            Err(_) => {
                p.push("state.redis.url", "is not a valid redis:// URL");
                ok = false;
            }
        }
    }
    let password = r.password_file.as_ref().and_then(|f| {
        let path = portcullis_base::problems::resolve(base, f);
        match std::fs::read_to_string(&path) {
            Ok(s) => {
                let s = s.trim_end_matches(['\r', '\n']).to_string();
                if s.is_empty() {
                    p.push("state.redis.password_file", "the file is empty");
                    None
                } else {
                    Some(Secret(s))
                }
            }
            Err(e) => {
                p.push(
                    "state.redis.password_file",
                    format!("cannot read {}: {e}", path.display()),
                );
                None
            }
        }
    });
    if r.password_file.is_some() && password.is_none() {
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
        password,
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
    fn bad_values_name_the_field_and_never_echo_a_password() {
        let cases = [
            ("backend: etcd", "state.backend: unknown value `etcd`"),
            ("backend: redis", "state.redis: required when"),
            (
                "redis: {url: 'redis://h:1'}",
                "state.redis: is only used with `backend: redis`",
            ),
            (
                "backend: redis\nredis: {url: 'rediss://h:1'}",
                "state.redis.url: must be a redis:// URL",
            ),
            (
                "backend: redis\nredis: {url: 'redis://:hunter2@h:1'}",
                "state.redis.url: must not hold a password",
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
