//! Shared state on Redis for a fleet: the replay cache (DPoP `jti`, RFC 9421 nonces),
//! idempotency keys and fleet-wide rate limits, over one connection manager.
//!
//! How it works:
//!
//! - **One connection.** A redis-rs `ConnectionManager` (multiplexed, reconnects by itself) is
//!   shared by every feature; each command has a short timeout (`state.redis.command_timeout`).
//! - **Health.** A task checks Redis every `health_interval`. Any failed or timed-out command
//!   marks Redis down at once; while it is down, features do not wait on it: replay and
//!   idempotency refuse (503, fail closed) unless configured otherwise, rate limits use this
//!   instance's own limiter (or refuse). The health task marks it up again when Redis answers,
//!   so service recovers by itself. Transitions are logged (endpoint only, never credentials)
//!   and everything is counted (`portcullis_state_*` metrics).
//! - **Lost data.** A Redis restarted without persistence forgets the replay cache, and a proof
//!   used just before the restart could be used again. So Redis holds an epoch marker (`epoch`
//!   key: a random value and the time it was written). A marker younger than the replay window
//!   (the longest time a proof or nonce is accepted, plus skew) means Redis may have lost
//!   values still inside their window: replay answers are not trusted until the marker is a
//!   window old. A brand-new Redis looks the same as one that lost its data, so the first
//!   window after a fleet first meets an empty Redis refuses replay checks too.
//!   Idempotency keys live 24 h: a Redis that keeps them must persist (AOF) — see the README.
//! - **Replay** is `SET <prefix>r:<hash> 1 NX PX <ttl>`: the first `SET` wins across the fleet.
//! - **Idempotency** is three Lua scripts (begin, complete, release) on one key per
//!   client-scoped idempotency key; the value is a state byte (`F` in flight, `D` done), the
//!   32-byte fingerprint and, when done, the response (status, headers, body) in a compact
//!   binary form.
//! - **Rate limits** are a GCRA in Lua on Redis's own clock (`TIME`), taking up to `n` tokens
//!   per call. Each instance leases a batch (at most a tenth of the burst, at most
//!   `rate_limit_lease.max_tokens`) and spends it locally until it is gone or `lease ttl`
//!   passes (unspent tokens are dropped, never returned), so most requests make no round trip.
//!   A refusal is cached locally until Redis said a token would be free, so a flood over the
//!   limit does not reach Redis either. Accuracy, per key, over any interval of length W:
//!   admitted ≤ burst + rate·W + min(N·(batch−1), rate·ttl) for N instances, because every
//!   admitted request spent a token Redis granted, and a token is spent at most `ttl` after
//!   it was granted. A fixed budget (no refill within the test) is never exceeded; at most
//!   N·(batch−1) tokens may go unused (leased to an instance that got no more requests).

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::{Duration, Instant};

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{IntoConnectionInfo, Script, Value};
use bytes::Bytes;
use dashmap::DashMap;
use tokio_util::sync::CancellationToken;

use crate::idempotency::{Begin, IdempotencyStore, StoreFuture, StoreUnavailable, StoredResponse};
use crate::ratelimit::{Decision, QuotaSpec};
use crate::replay::{MemoryReplayStore, ReplayError, ReplayStore};
use crate::settings::{OnOutage, RedisSettings, Secret};
use portcullis_base::clock::Clock;
use portcullis_base::metrics::{Exposition, Kind};

/// Redis did not answer (down, timed out, or an answer we cannot read).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unavailable;

/// What a command was for (metric labels).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feature {
    Replay = 0,
    Idempotency = 1,
    RateLimit = 2,
    Health = 3,
    /// Behavioural detection's fleet quarantines (`portcullis-detect`).
    Detection = 4,
}

const FEATURES: [(Feature, &str); 5] = [
    (Feature::Replay, "replay"),
    (Feature::Idempotency, "idempotency"),
    (Feature::RateLimit, "rate_limit"),
    (Feature::Health, "health"),
    (Feature::Detection, "detection"),
];

#[derive(Default)]
struct Stats {
    ok: [AtomicU64; 5],
    failed: [AtomicU64; 5],
    /// Requests answered from this instance's state because Redis could not.
    local: [AtomicU64; 5],
    /// Requests refused because Redis could not answer.
    refused: [AtomicU64; 5],
    epoch_changes: AtomicU64,
}

/// The epoch marker: `random:created|master`. ARGV[2] names the master as Sentinel reports it
/// (empty without Sentinel): a marker written under another master means a failover happened,
/// and the promoted replica may have missed the last writes, so a new marker is written and
/// replay answers wait one window again, on every instance alike. The marker is written back
/// even when unchanged: a replica refuses the write (READONLY), so a node that is no longer the
/// master never counts as healthy.
static EPOCH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local v = redis.call('GET', KEYS[1])
if v then
  local m = string.match(v, '|(.*)$') or ''
  if ARGV[2] == '' or m == ARGV[2] then
    redis.call('SET', KEYS[1], v)
    return v
  end
end
local n = ARGV[1] .. '|' .. ARGV[2]
redis.call('SET', KEYS[1], n)
return n",
    )
});

/// Detection: counts one event in a fleet window and says whether this call is the first to
/// reach the threshold. KEYS[1] the window's counter (a HyperLogLog for distinct counts),
/// KEYS[2] its fired marker; ARGV[1] the item ('' for a plain count), ARGV[2] the TTL (s),
/// ARGV[3] the threshold. Returns {count, fired}.
static DETECT_COUNT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local n
if ARGV[1] ~= '' then
  redis.call('PFADD', KEYS[1], ARGV[1])
  n = redis.call('PFCOUNT', KEYS[1])
else
  n = redis.call('INCR', KEYS[1])
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
local fired = 0
if n >= tonumber(ARGV[3]) then
  if redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[2]) then fired = 1 end
end
return {n, fired}",
    )
});

static IDEM_BEGIN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], 'F' .. ARGV[1], 'PX', ARGV[2])
  return {0}
end
if string.sub(v, 2, 33) ~= ARGV[1] then return {2} end
if string.sub(v, 1, 1) == 'F' then return {1} end
return {3, string.sub(v, 34)}",
    )
});

static IDEM_COMPLETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local v = redis.call('GET', KEYS[1])
if v and v ~= ('F' .. ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], 'D' .. ARGV[1] .. ARGV[2], 'PX', ARGV[3])
return 1",
    )
});

static IDEM_RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, 1) == 'F' then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0",
    )
});

/// GCRA taking up to ARGV[3] tokens: returns {granted, remaining, µs}: µs is the time until
/// the bucket is full again when granted, or until one token is free when refused.
static GCRA: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local T = tonumber(ARGV[1])
local B = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local avail = math.floor((B * T - (tat - now)) / T)
if avail < 1 then
  return {0, 0, tat - now - (B - 1) * T}
end
local n = math.min(want, avail)
tat = tat + n * T
redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', string.format('%.0f', math.ceil((tat - now) / 1000) + 1000))
return {n, avail - n, tat - now}",
    )
});

fn hex(b: &[u8]) -> String {
    use std::fmt::Write;
    b.iter()
        .fold(String::with_capacity(b.len() * 2), |mut s, x| {
            let _ = write!(s, "{x:02x}");
            s
        })
}

/// A bounded, credential-free category for a Redis error (logs and metrics).
fn category(e: &::redis::RedisError) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connection_refusal() {
        "connection_refused"
    } else if e.is_connection_dropped() || e.is_io_error() {
        "connection_lost"
    } else {
        "error"
    }
}

/// Builds a client for one node: `addr` overrides the URL's host and port (a master named by
/// Sentinel, or a sentinel itself); credentials and TLS come from the settings.
fn client_for(
    s: &RedisSettings,
    addr: Option<(&str, u16)>,
    db: u16,
    username: Option<&String>,
    password: Option<&Secret>,
) -> Result<::redis::Client, ::redis::RedisError> {
    let info = match addr {
        None => s.url.as_str().into_connection_info()?,
        Some((host, port)) => {
            let scheme = if s.tls.is_some() { "rediss" } else { "redis" };
            let host = if host.contains(':') {
                format!("[{host}]")
            } else {
                host.to_string()
            };
            format!("{scheme}://{host}:{port}/{db}").into_connection_info()?
        }
    };
    let mut rs = info.redis_settings().clone();
    if let Some(u) = username {
        rs = rs.set_username(u);
    }
    if let Some(p) = password {
        rs = rs.set_password(&p.0);
    }
    let info = info.set_redis_settings(rs);
    match &s.tls {
        // Our roots only (the pinned bundle, or the system roots read at load), never
        // webpki-roots.
        Some(t) => ::redis::Client::build_with_tls(
            info,
            ::redis::TlsCertificates {
                client_tls: match (&t.client_certificate_pem, &t.client_private_key_pem) {
                    (Some(c), Some(k)) => Some(::redis::ClientTlsConfig {
                        client_cert: c.clone(),
                        client_key: k.0.as_bytes().to_vec(),
                    }),
                    _ => None,
                },
                root_cert: Some(t.roots_pem.clone()),
            },
        ),
        None => ::redis::Client::open(info),
    }
}

fn endpoint_of(s: &RedisSettings) -> String {
    match &s.sentinel {
        Some(sn) => format!("sentinel master {}", sn.master),
        None => s
            .url
            .as_str()
            .into_connection_info()
            .map_or_else(|_| "invalid".to_string(), |i| i.addr().to_string()),
    }
}

/// What the health task knows about the connection it built (one task per state).
#[derive(Default)]
struct Link {
    generation: u64,
    /// The master Sentinel named last (`host:port`), empty without Sentinel.
    master: String,
    /// A connection to the sentinel that answered last, and its index.
    sentinel: Option<(usize, ::redis::aio::MultiplexedConnection)>,
    /// Whether the last "no sentinel answers" was logged (once per outage).
    sentinel_failure_logged: bool,
}

/// The connection to Redis and what we know about its health; shared by every feature and
/// kept across config reloads (a reload with new credentials or TLS material reconnects).
pub struct RedisState {
    conn: std::sync::RwLock<Option<ConnectionManager>>,
    settings: Mutex<Arc<RedisSettings>>,
    /// Bumped when the settings change: the health task then rebuilds the connection.
    generation: AtomicU64,
    /// Whether a connection can be made at all (a Tokio runtime runs the health task).
    connectable: bool,
    prefix: String,
    /// `host:port` for logs: never the URL (credentials stay out of logs).
    endpoint: Mutex<String>,
    connect_timeout: Duration,
    command_timeout: Duration,
    health_interval: Duration,
    clock: Arc<dyn Clock>,
    up: AtomicBool,
    epoch: Mutex<Option<String>>,
    /// Replay answers are trusted from this time on (clock seconds).
    trusted_from: AtomicI64,
    /// The longest replay window seen or configured (seconds).
    replay_window: AtomicI64,
    /// When an error answer was last logged (clock seconds).
    last_error_log: AtomicI64,
    stats: Stats,
}

impl RedisState {
    /// Connects lazily (the first health check opens the connection) and starts the health
    /// task, which stops when `stop` is cancelled or the state is dropped. `replay_window`: the
    /// longest time, in seconds, a proof or nonce is accepted (plus skew).
    pub fn start(
        s: &RedisSettings,
        clock: Arc<dyn Clock>,
        replay_window: i64,
        stop: CancellationToken,
    ) -> Arc<RedisState> {
        let connectable = tokio::runtime::Handle::try_current().is_ok()
            && (s.sentinel.is_some() || client_for(s, None, 0, None, None).is_ok());
        let state = Arc::new(RedisState {
            conn: std::sync::RwLock::new(None),
            settings: Mutex::new(Arc::new(s.clone())),
            generation: AtomicU64::new(0),
            connectable,
            prefix: s.key_prefix.clone(),
            endpoint: Mutex::new(endpoint_of(s)),
            connect_timeout: s.connect_timeout,
            command_timeout: s.command_timeout,
            health_interval: s.health_interval,
            clock,
            up: AtomicBool::new(false),
            epoch: Mutex::new(None),
            trusted_from: AtomicI64::new(i64::MAX),
            replay_window: AtomicI64::new(replay_window.max(1)),
            last_error_log: AtomicI64::new(i64::MIN),
            stats: Stats::default(),
        });
        if state.connectable {
            let weak = Arc::downgrade(&state);
            tokio::spawn(health_loop(weak, stop));
        } else {
            tracing::error!(
                endpoint = %state.endpoint(),
                "shared state: no Redis connection can be made; state checks will refuse"
            );
        }
        state
    }

    /// Whether the last contact with Redis succeeded.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Whether replay answers can be trusted at `now`: Redis is up and has not lost values that
    /// may still be inside their window.
    pub fn replay_trusted(&self, now: i64) -> bool {
        self.is_up() && now >= self.trusted_from.load(Ordering::Acquire)
    }

    /// Where Redis is, for logs (`host:port`, or the Sentinel master name and address).
    pub fn endpoint(&self) -> String {
        self.endpoint
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Applies settings read by a config reload: new credentials, TLS material or sentinels
    /// take effect at the next health check, which reconnects. The key prefix and timeouts
    /// stay as they were at start-up.
    pub fn reconfigure(&self, s: &RedisSettings) {
        let mut cur = self.settings.lock().unwrap_or_else(|e| e.into_inner());
        if **cur != *s {
            *cur = Arc::new(s.clone());
            self.generation.fetch_add(1, Ordering::AcqRel);
            tracing::info!(
                endpoint = %endpoint_of(s),
                "shared state: Redis connection settings changed; reconnecting"
            );
        }
    }

    fn manager(&self, client: ::redis::Client) -> Option<ConnectionManager> {
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.command_timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        ConnectionManager::new_lazy_with_config(client, cfg).ok()
    }

    /// Asks the sentinels, in order, which node is the master; keeps a connection to the one
    /// that answered.
    async fn ask_sentinels(&self, s: &RedisSettings, link: &mut Link) -> Option<(String, u16)> {
        let sn = s.sentinel.as_ref()?;
        let n = sn.addresses.len();
        let start = link.sentinel.as_ref().map_or(0, |(i, _)| *i);
        for k in 0..n {
            let i = (start + k) % n;
            let conn = match link.sentinel.take() {
                Some((j, c)) if j == i => Some(c),
                _ => {
                    let (h, p) = &sn.addresses[i];
                    let client = client_for(
                        s,
                        Some((h, *p)),
                        0,
                        sn.username.as_ref(),
                        sn.password.as_ref(),
                    )
                    .ok();
                    let cfg = ::redis::AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(self.connect_timeout))
                        .set_response_timeout(Some(self.command_timeout));
                    match client {
                        Some(c) => tokio::time::timeout(
                            self.connect_timeout + self.command_timeout,
                            c.get_multiplexed_async_connection_with_config(&cfg),
                        )
                        .await
                        .ok()
                        .and_then(Result::ok),
                        None => None,
                    }
                }
            };
            let Some(mut c) = conn else { continue };
            let r = tokio::time::timeout(
                self.command_timeout,
                ::redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg(&sn.master)
                    .query_async::<Option<(String, u16)>>(&mut c),
            )
            .await;
            if let Ok(Ok(Some(addr))) = r {
                link.sentinel = Some((i, c));
                link.sentinel_failure_logged = false;
                return Some(addr);
            }
        }
        if !link.sentinel_failure_logged {
            link.sentinel_failure_logged = true;
            tracing::warn!(
                master = %sn.master,
                "shared state: no sentinel named the Redis master; keeping the last one known"
            );
        }
        None
    }

    /// Builds the connection when there is none, when the settings changed, or when Sentinel
    /// names another master; returns the master's name for the epoch marker.
    async fn refresh_connection(&self, link: &mut Link) -> String {
        let generation = self.generation.load(Ordering::Acquire);
        let s = Arc::clone(&self.settings.lock().unwrap_or_else(|e| e.into_inner()));
        let stale = generation != link.generation;
        if stale {
            *link = Link {
                generation,
                ..Link::default()
            };
        }
        let have = self
            .conn
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_some();
        let Some(sn) = &s.sentinel else {
            if stale || !have {
                let m = client_for(&s, None, 0, s.username.as_ref(), s.password.as_ref())
                    .ok()
                    .and_then(|c| self.manager(c));
                *self.conn.write().unwrap_or_else(|e| e.into_inner()) = m;
                *self.endpoint.lock().unwrap_or_else(|e| e.into_inner()) = endpoint_of(&s);
            }
            return String::new();
        };
        if let Some((host, port)) = self.ask_sentinels(&s, link).await {
            let name = if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            };
            if name != link.master || !have {
                let m = client_for(
                    &s,
                    Some((&host, port)),
                    sn.database,
                    s.username.as_ref(),
                    s.password.as_ref(),
                )
                .ok()
                .and_then(|c| self.manager(c));
                if !link.master.is_empty() && name != link.master {
                    tracing::warn!(
                        master = %sn.master,
                        from = %link.master,
                        to = %name,
                        "shared state: Sentinel names a new Redis master (failover); replay checks refuse until its history covers one window"
                    );
                }
                *self.conn.write().unwrap_or_else(|e| e.into_inner()) = m;
                *self.endpoint.lock().unwrap_or_else(|e| e.into_inner()) =
                    format!("sentinel master {} at {name}", sn.master);
                link.master = name;
            }
        }
        link.master.clone()
    }

    fn key(&self, kind: &str, rest: &str) -> String {
        let mut k = String::with_capacity(self.prefix.len() + kind.len() + rest.len());
        k.push_str(&self.prefix);
        k.push_str(kind);
        k.push_str(rest);
        k
    }

    fn mark_down(&self, feature: Feature, why: &'static str) {
        self.stats.failed[feature as usize].fetch_add(1, Ordering::Relaxed);
        if self.up.swap(false, Ordering::AcqRel) {
            tracing::warn!(
                endpoint = %self.endpoint(),
                failure = why,
                "shared state: Redis is unavailable; replay and idempotency checks refuse, rate limits follow state.on_outage"
            );
        }
    }

    /// A request met an unavailable store and was refused (or answered locally).
    pub fn count_outage(&self, feature: Feature, action: OnOutage) {
        let c = match action {
            OnOutage::Refuse => &self.stats.refused,
            OnOutage::Local => &self.stats.local,
        };
        c[feature as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Runs one command or script with the command timeout; failures mark Redis down.
    async fn call<T, F>(&self, feature: Feature, f: F) -> Result<T, Unavailable>
    where
        F: FnOnce(ConnectionManager) -> ::redis::RedisFuture<'static, T>,
    {
        let conn = self
            .conn
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(Unavailable)?;
        match tokio::time::timeout(self.command_timeout, f(conn)).await {
            Ok(Ok(v)) => {
                self.stats.ok[feature as usize].fetch_add(1, Ordering::Relaxed);
                Ok(v)
            }
            // Connection trouble marks Redis down for every feature; an error answer (a script
            // or command error) fails this call only.
            // A node that is no longer (or not yet) a writable master is down for us too: a
            // replica left behind by a failover answers READONLY, a master cut off from its
            // replicas MASTERDOWN, a restarting one LOADING. The health check fails on any
            // error.
            Ok(Err(e))
                if e.is_unrecoverable_error()
                    || e.is_io_error()
                    || e.is_timeout()
                    || feature == Feature::Health
                    || matches!(e.code(), Some("READONLY" | "MASTERDOWN" | "LOADING")) =>
            {
                self.mark_down(feature, category(&e));
                Err(Unavailable)
            }
            Ok(Err(e)) => {
                self.stats.failed[feature as usize].fetch_add(1, Ordering::Relaxed);
                // At most one line per 10 s: a persistent error must not flood the log.
                let now = self.clock.now();
                let last = self.last_error_log.load(Ordering::Relaxed);
                if now.saturating_sub(last) < 10
                    || self
                        .last_error_log
                        .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                        .is_err()
                {
                    return Err(Unavailable);
                }
                tracing::warn!(
                    endpoint = %self.endpoint(),
                    failure = category(&e),
                    code = e.code().unwrap_or("none"),
                    "shared state: Redis refused a command"
                );
                Err(Unavailable)
            }
            Err(_) => {
                self.mark_down(feature, "timeout");
                Err(Unavailable)
            }
        }
    }

    /// Reads (or writes, when absent) the epoch marker; marks Redis up when it answers.
    async fn check_health(&self, master: String) {
        let now = self.clock.now();
        let mut fresh = [0u8; 16];
        let _ = aws_lc_rs::rand::fill(&mut fresh);
        let candidate = format!("{}:{now}", hex(&fresh));
        let key = self.key("epoch", "");
        let r: Result<String, Unavailable> = self
            .call(Feature::Health, move |mut c| {
                Box::pin(async move {
                    EPOCH
                        .key(key)
                        .arg(candidate)
                        .arg(master)
                        .invoke_async::<String>(&mut c)
                        .await
                })
            })
            .await;
        let Ok(epoch) = r else { return };
        let created = epoch
            .split('|')
            .next()
            .unwrap_or_default()
            .rsplit_once(':')
            .and_then(|(_, t)| t.parse::<i64>().ok())
            .unwrap_or(now);
        let window = self.replay_window.load(Ordering::Acquire);
        let changed = {
            let mut seen = self.epoch.lock().unwrap_or_else(|e| e.into_inner());
            let changed = seen.as_deref() != Some(epoch.as_str());
            if changed {
                let first = seen.is_none();
                *seen = Some(epoch);
                if !first {
                    self.stats.epoch_changes.fetch_add(1, Ordering::Relaxed);
                }
            }
            changed
        };
        if changed {
            let from = created.saturating_add(window);
            self.trusted_from.store(from, Ordering::Release);
            if from > now {
                tracing::warn!(
                    endpoint = %self.endpoint(),
                    seconds = from - now,
                    "shared state: Redis holds no replay history older than one replay window (new or restarted without its data); replay checks refuse until then"
                );
            }
        }
        if !self.up.swap(true, Ordering::AcqRel) {
            tracing::info!(endpoint = %self.endpoint(), "shared state: Redis is available");
        }
    }

    /// Prometheus text for the shared state alone (tests; `/metrics` uses
    /// [`RedisState::write_metrics`]).
    pub fn render_metrics(&self, now: i64) -> String {
        let mut out = Exposition::new();
        self.write_metrics(now, &mut out);
        out.finish()
    }

    /// Writes the shared state's families.
    pub fn write_metrics(&self, now: i64, out: &mut Exposition) {
        let per = |out: &mut Exposition, name: &str, help: &str, arr: &[AtomicU64; 5]| {
            let mut f = out.family(name, Kind::Counter, help);
            for (feature, n) in FEATURES {
                f.sample(
                    &[("feature", n)],
                    arr[feature as usize].load(Ordering::Relaxed),
                );
            }
        };
        out.family(
            "portcullis_state_backend_up",
            Kind::Gauge,
            "1 when the shared state backend (Redis) answers.",
        )
        .sample(&[("backend", "redis")], u64::from(self.is_up()));
        out.single(
            "portcullis_state_replay_trusted",
            Kind::Gauge,
            "1 when replay checks are answered (Redis up and its replay history covers the window).",
            u64::from(self.replay_trusted(now)),
        );
        per(
            out,
            "portcullis_state_commands_total",
            "Redis commands that answered, by feature.",
            &self.stats.ok,
        );
        per(
            out,
            "portcullis_state_command_failures_total",
            "Redis commands that failed or timed out, by feature.",
            &self.stats.failed,
        );
        per(
            out,
            "portcullis_state_unavailable_refusals_total",
            "Requests refused because the shared state could not answer, by feature.",
            &self.stats.refused,
        );
        per(
            out,
            "portcullis_state_local_fallbacks_total",
            "Requests answered from this instance's own state because Redis could not, by feature.",
            &self.stats.local,
        );
        out.single(
            "portcullis_state_epoch_changes_total",
            Kind::Counter,
            "Times Redis was found to have lost its data (a new epoch marker).",
            self.stats.epoch_changes.load(Ordering::Relaxed),
        );
    }

    /// Detection: counts one event of `window` (the detector, window number and subject) for
    /// the fleet — `item` counted distinct (HyperLogLog) when given — and returns the count and
    /// whether this call is the one that reached `threshold` (once per window, fleet-wide).
    pub async fn detect_count(
        &self,
        window: &str,
        item: Option<&str>,
        threshold: u32,
        ttl_s: u64,
    ) -> Result<(u64, bool), Unavailable> {
        let (count, fired) = (self.key("d:", window), self.key("f:", window));
        let item = item.unwrap_or("").to_string();
        let r: Vec<i64> = self
            .call(Feature::Detection, move |mut c| {
                Box::pin(async move {
                    DETECT_COUNT
                        .key(count)
                        .key(fired)
                        .arg(item)
                        .arg(ttl_s.max(1))
                        .arg(threshold)
                        .invoke_async::<Vec<i64>>(&mut c)
                        .await
                })
            })
            .await?;
        match r.as_slice() {
            [n, f] => Ok((u64::try_from(*n).unwrap_or(0), *f == 1)),
            _ => Err(Unavailable),
        }
    }

    /// Detection: sets one field of the fleet's quarantine hash (`<prefix>quarantine`): the
    /// subject, and `value` as the detector crate encodes it.
    pub async fn quarantine_set(&self, subject: &str, value: &str) -> Result<(), Unavailable> {
        let (k, f, v) = (
            self.key("quarantine", ""),
            subject.to_string(),
            value.to_string(),
        );
        self.call(Feature::Detection, move |mut c| {
            Box::pin(async move {
                ::redis::cmd("HSET")
                    .arg(k)
                    .arg(f)
                    .arg(v)
                    .query_async::<i64>(&mut c)
                    .await
            })
        })
        .await
        .map(|_| ())
    }

    /// Detection: removes subjects from the fleet's quarantine hash; how many were there.
    pub async fn quarantine_del(&self, subjects: Vec<String>) -> Result<u64, Unavailable> {
        if subjects.is_empty() {
            return Ok(0);
        }
        let k = self.key("quarantine", "");
        self.call(Feature::Detection, move |mut c| {
            Box::pin(async move {
                ::redis::cmd("HDEL")
                    .arg(k)
                    .arg(subjects)
                    .query_async::<u64>(&mut c)
                    .await
            })
        })
        .await
    }

    /// Detection: the fleet's quarantine hash, at most `max` fields (`HSCAN` would page a
    /// larger one; the detector caps quarantines well below what one reply carries).
    pub async fn quarantine_all(&self, max: usize) -> Result<Vec<(String, String)>, Unavailable> {
        let k = self.key("quarantine", "");
        let all = self
            .call(Feature::Detection, move |mut c| {
                Box::pin(async move {
                    ::redis::cmd("HGETALL")
                        .arg(k)
                        .query_async::<Vec<(String, String)>>(&mut c)
                        .await
                })
            })
            .await?;
        Ok(all.into_iter().take(max).collect())
    }

    async fn set_nx(&self, key: [u8; 32], ttl_ms: i64) -> Result<bool, Unavailable> {
        let k = self.key("r:", &hex(&key));
        self.call(Feature::Replay, move |mut c| {
            Box::pin(async move {
                ::redis::cmd("SET")
                    .arg(k)
                    .arg(1)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl_ms)
                    .query_async::<Option<String>>(&mut c)
                    .await
            })
        })
        .await
        .map(|r| r.is_some())
    }

    /// Takes up to `want` tokens from the fleet quota of `key`.
    async fn take(&self, key: String, spec: &QuotaSpec, want: u32) -> Result<Grant, Unavailable> {
        let t_us = (spec.per.as_micros() / u128::from(spec.rate.max(1))).max(1);
        let t_us = u64::try_from(t_us).unwrap_or(u64::MAX);
        let burst = spec.burst.max(1);
        let r: Vec<i64> = self
            .call(Feature::RateLimit, move |mut c| {
                Box::pin(async move {
                    GCRA.key(key)
                        .arg(t_us)
                        .arg(burst)
                        .arg(want)
                        .invoke_async::<Vec<i64>>(&mut c)
                        .await
                })
            })
            .await?;
        match r.as_slice() {
            [n, remaining, us] => Ok(Grant {
                granted: u32::try_from(*n).unwrap_or(0).min(want),
                remaining: u64::try_from(*remaining).unwrap_or(0),
                micros: u64::try_from(*us).unwrap_or(0),
            }),
            _ => Err(Unavailable),
        }
    }
}

async fn health_loop(weak: Weak<RedisState>, stop: CancellationToken) {
    let mut link = Link::default();
    loop {
        let Some(s) = weak.upgrade() else { return };
        let every = s.health_interval;
        let master = s.refresh_connection(&mut link).await;
        s.check_health(master).await;
        drop(s);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// The replay cache on Redis. With `on_outage.replay: local`, every value is also kept in this
/// instance's memory, which answers alone while Redis cannot.
pub struct RedisReplayStore {
    state: Arc<RedisState>,
    local: Option<Arc<MemoryReplayStore>>,
}

impl RedisReplayStore {
    pub fn new(state: Arc<RedisState>, on_outage: OnOutage, capacity: usize) -> RedisReplayStore {
        RedisReplayStore {
            state,
            local: (on_outage == OnOutage::Local)
                .then(|| Arc::new(MemoryReplayStore::new(capacity))),
        }
    }
}

impl ReplayStore for RedisReplayStore {
    fn first_use(
        &self,
        key: [u8; 32],
        expires_at: i64,
        now: i64,
    ) -> StoreFuture<'static, Result<bool, ReplayError>> {
        let state = Arc::clone(&self.state);
        let local = self.local.clone();
        let ttl = (expires_at - now).max(1);
        state.replay_window.fetch_max(ttl, Ordering::AcqRel);
        Box::pin(async move {
            // Write-through: the local copy answers during an outage.
            let local_fresh = local.as_ref().map(|l| l.check(key, expires_at, now));
            if state.replay_trusted(now) {
                if let Ok(fresh) = state.set_nx(key, ttl.saturating_mul(1000)).await {
                    // Seen here before (Redis may have lost it): still a replay.
                    return Ok(fresh && local_fresh.is_none_or(|l| l != Ok(false)));
                }
            }
            match local_fresh {
                Some(r) => {
                    state.count_outage(Feature::Replay, OnOutage::Local);
                    r
                }
                None => {
                    state.count_outage(Feature::Replay, OnOutage::Refuse);
                    Err(ReplayError::Unavailable)
                }
            }
        })
    }
}

/// Idempotency keys on Redis (always fail closed).
pub struct RedisIdempotencyStore {
    state: Arc<RedisState>,
}

impl RedisIdempotencyStore {
    pub fn new(state: Arc<RedisState>) -> RedisIdempotencyStore {
        RedisIdempotencyStore { state }
    }
}

/// `status u16 | header count u16 | (name len u16, name, value len u32, value)* | body`.
pub fn encode_response(r: &StoredResponse) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        4 + r.body.len()
            + r.headers
                .iter()
                .map(|(n, v)| 6 + n.len() + v.len())
                .sum::<usize>(),
    );
    let headers: Vec<_> = r
        .headers
        .iter()
        .filter(|(n, v)| n.len() <= usize::from(u16::MAX) && u32::try_from(v.len()).is_ok())
        .take(usize::from(u16::MAX))
        .collect();
    out.extend_from_slice(&r.status.to_be_bytes());
    out.extend_from_slice(&(headers.len() as u16).to_be_bytes());
    for (n, v) in headers {
        out.extend_from_slice(&(n.len() as u16).to_be_bytes());
        out.extend_from_slice(n.as_bytes());
        out.extend_from_slice(&(v.len() as u32).to_be_bytes());
        out.extend_from_slice(v);
    }
    out.extend_from_slice(&r.body);
    out
}

/// The inverse of [`encode_response`]; `None` for anything malformed (never panics).
pub fn decode_response(b: &[u8]) -> Option<StoredResponse> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if b.len() < n {
            return None;
        }
        let (h, t) = b.split_at(n);
        *b = t;
        Some(h)
    }
    let mut b = b;
    let status = u16::from_be_bytes(take(&mut b, 2)?.try_into().ok()?);
    let count = u16::from_be_bytes(take(&mut b, 2)?.try_into().ok()?);
    let mut headers = Vec::with_capacity(usize::from(count.min(256)));
    for _ in 0..count {
        let nl = u16::from_be_bytes(take(&mut b, 2)?.try_into().ok()?);
        let name = std::str::from_utf8(take(&mut b, usize::from(nl))?).ok()?;
        let vl = u32::from_be_bytes(take(&mut b, 4)?.try_into().ok()?);
        let value = take(&mut b, usize::try_from(vl).ok()?)?;
        headers.push((name.to_string(), value.to_vec()));
    }
    Some(StoredResponse {
        status,
        headers,
        body: Bytes::copy_from_slice(b),
    })
}

fn begin_reply(v: Value) -> Option<Begin> {
    let Value::Array(items) = v else { return None };
    let code = match items.first()? {
        Value::Int(i) => *i,
        _ => return None,
    };
    Some(match code {
        0 => Begin::Reserved,
        1 => Begin::InFlight,
        2 => Begin::Mismatch,
        3 => {
            let body = match items.get(1)? {
                Value::BulkString(b) => decode_response(b)?,
                _ => return None,
            };
            Begin::Completed(Arc::new(body))
        }
        _ => return None,
    })
}

impl IdempotencyStore for RedisIdempotencyStore {
    fn begin(
        &self,
        key: [u8; 32],
        fingerprint: [u8; 32],
        _now: i64,
        ttl: i64,
    ) -> StoreFuture<'static, Result<Begin, StoreUnavailable>> {
        let state = Arc::clone(&self.state);
        Box::pin(async move {
            if !state.is_up() {
                state.count_outage(Feature::Idempotency, OnOutage::Refuse);
                return Err(StoreUnavailable);
            }
            let k = state.key("i:", &hex(&key));
            let ttl_ms = ttl.max(1).saturating_mul(1000);
            let r = state
                .call(Feature::Idempotency, move |mut c| {
                    Box::pin(async move {
                        IDEM_BEGIN
                            .key(k)
                            .arg(&fingerprint[..])
                            .arg(ttl_ms)
                            .invoke_async::<Value>(&mut c)
                            .await
                    })
                })
                .await;
            match r.ok().and_then(begin_reply) {
                Some(b) => Ok(b),
                None => {
                    state.count_outage(Feature::Idempotency, OnOutage::Refuse);
                    Err(StoreUnavailable)
                }
            }
        })
    }

    fn complete(
        &self,
        key: [u8; 32],
        fingerprint: [u8; 32],
        response: StoredResponse,
        _now: i64,
        ttl: i64,
    ) -> StoreFuture<'static, Result<(), StoreUnavailable>> {
        let state = Arc::clone(&self.state);
        Box::pin(async move {
            let k = state.key("i:", &hex(&key));
            let ttl_ms = ttl.max(1).saturating_mul(1000);
            let body = encode_response(&response);
            state
                .call(Feature::Idempotency, move |mut c| {
                    Box::pin(async move {
                        IDEM_COMPLETE
                            .key(k)
                            .arg(&fingerprint[..])
                            .arg(body)
                            .arg(ttl_ms)
                            .invoke_async::<i64>(&mut c)
                            .await
                    })
                })
                .await
                .map(|_| ())
                .map_err(|_| StoreUnavailable)
        })
    }

    fn release(&self, key: [u8; 32]) -> StoreFuture<'static, Result<(), StoreUnavailable>> {
        let state = Arc::clone(&self.state);
        Box::pin(async move {
            let k = state.key("i:", &hex(&key));
            state
                .call(Feature::Idempotency, move |mut c| {
                    Box::pin(async move { IDEM_RELEASE.key(k).invoke_async::<i64>(&mut c).await })
                })
                .await
                .map(|_| ())
                .map_err(|_| StoreUnavailable)
        })
    }
}

struct Grant {
    granted: u32,
    remaining: u64,
    micros: u64,
}

/// Tokens of one key leased from Redis, or a refusal cached until a token is free.
struct Lease {
    tokens: u32,
    expires: Instant,
    /// Fleet tokens left in the burst when the lease was taken.
    remaining: u64,
    /// When the bucket is full again (for the `reset` of an allowed decision).
    full_at: Instant,
    denied_until: Option<Instant>,
}

/// Fleet-wide rate limits: leases from the Redis GCRA, spent locally.
pub struct FleetLimiter {
    state: Arc<RedisState>,
    leases: DashMap<String, Lease>,
    max_tokens: u32,
    ttl: Duration,
    pub on_outage: OnOutage,
}

fn secs_ceil(d: Duration) -> u64 {
    let s = d.as_secs();
    if d.subsec_nanos() > 0 {
        s + 1
    } else {
        s
    }
}

impl FleetLimiter {
    pub fn new(
        state: Arc<RedisState>,
        max_tokens: u32,
        ttl: Duration,
        on_outage: OnOutage,
    ) -> FleetLimiter {
        FleetLimiter {
            state,
            leases: DashMap::new(),
            max_tokens: max_tokens.max(1),
            ttl,
            on_outage,
        }
    }

    pub fn state(&self) -> &RedisState {
        &self.state
    }

    /// The lease size of a quota: a tenth of its burst, at least 1, at most `max_tokens`.
    pub fn batch(&self, spec: &QuotaSpec) -> u32 {
        (spec.burst / 10).clamp(1, self.max_tokens)
    }

    /// Counts one request for `key` against the fleet quota of `spec`.
    pub async fn check(&self, spec: &QuotaSpec, key: &str) -> Result<Decision, Unavailable> {
        let mut id = String::with_capacity(spec.name.len() + 1 + key.len());
        id.push_str(&spec.name);
        id.push('\0');
        id.push_str(key);
        let now = Instant::now();
        if let Some(mut l) = self.leases.get_mut(&id) {
            if let Some(until) = l.denied_until.filter(|u| *u > now) {
                return Ok(Decision {
                    allowed: false,
                    remaining: 0,
                    reset_s: secs_ceil(until - now).max(1),
                });
            }
            if l.tokens > 0 && l.expires > now {
                l.tokens -= 1;
                return Ok(Decision {
                    allowed: true,
                    remaining: l.remaining + u64::from(l.tokens),
                    reset_s: secs_ceil(l.full_at.saturating_duration_since(now)),
                });
            }
        }
        if !self.state.is_up() {
            return Err(Unavailable);
        }
        let want = self.batch(spec);
        // Keys in Redis: the class and a hash of the client key (bounded length).
        let rkey = self.state.key(
            "l:",
            &format!(
                "{}:{}",
                spec.name,
                hex(&portcullis_crypto::jose::sha256(key.as_bytes())[..16])
            ),
        );
        let g = self.state.take(rkey, spec, want).await?;
        let now = Instant::now();
        let wait = Duration::from_micros(g.micros);
        if g.granted == 0 {
            let until = now + wait;
            self.leases
                .entry(id)
                .and_modify(|l| l.denied_until = Some(until))
                .or_insert(Lease {
                    tokens: 0,
                    expires: now,
                    remaining: 0,
                    full_at: now,
                    denied_until: Some(until),
                });
            return Ok(Decision {
                allowed: false,
                remaining: 0,
                reset_s: secs_ceil(wait).max(1),
            });
        }
        let spare = g.granted - 1;
        let expires = now + self.ttl;
        let mut left = spare;
        self.leases
            .entry(id)
            .and_modify(|l| {
                // Another request of this key leased too: keep both batches' live tokens.
                let live = if l.expires > now { l.tokens } else { 0 };
                l.tokens = live.saturating_add(spare);
                l.expires = expires;
                l.remaining = g.remaining;
                l.full_at = now + wait;
                l.denied_until = None;
                left = l.tokens;
            })
            .or_insert(Lease {
                tokens: spare,
                expires,
                remaining: g.remaining,
                full_at: now + wait,
                denied_until: None,
            });
        Ok(Decision {
            allowed: true,
            remaining: g.remaining + u64::from(left),
            reset_s: secs_ceil(wait),
        })
    }

    /// Leases held (maintenance drops the spent and expired ones).
    pub fn len(&self) -> usize {
        self.leases.len()
    }

    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }

    /// Drops expired leases and refusals that have run out.
    pub fn retain_recent(&self) {
        let now = Instant::now();
        self.leases
            .retain(|_, l| l.expires > now || l.denied_until.is_some_and(|u| u > now));
        self.leases.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_round_trip_and_garbage_is_refused() {
        let r = StoredResponse {
            status: 201,
            headers: vec![
                ("content-type".into(), b"application/json".to_vec()),
                ("location".into(), b"/p/1".to_vec()),
            ],
            body: Bytes::from_static(b"{\"Data\":{}}"),
        };
        let e = encode_response(&r);
        assert_eq!(decode_response(&e), Some(r));
        for n in 0..12 {
            // Truncated headers never panic and never decode.
            assert_eq!(decode_response(&e[..n]), None, "{n}");
        }
        assert_eq!(decode_response(&[0, 200, 0xff, 0xff]), None);
        let empty = StoredResponse {
            status: 204,
            headers: vec![],
            body: Bytes::new(),
        };
        assert_eq!(decode_response(&encode_response(&empty)), Some(empty));
    }

    proptest::proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            let _ = decode_response(&b);
        }
    }
}
