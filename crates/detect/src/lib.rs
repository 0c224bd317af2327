//! Behavioural detection: detectors over the stream of decisions the proxy makes, per client,
//! that notice what no single refusal shows — a client refused for twenty different account ids,
//! probing routes it may not call, failing its credentials again and again, or replaying.
//!
//! Nothing here knows HTTP: the proxy hands each finished request over as an [`Event`] (who,
//! which audited reason code, which route and object), and acts on the [`Alert`]s that come
//! back (audit record, metric, webhook) and on [`Detector::quarantined`].
//!
//! **Cost and memory.** A request whose reason code no detector counts (every allowed request)
//! costs one string classification and no lock. A counted one costs one lock of one of
//! [`SHARDS`] shards and O(1) work: each (client, detector) has a tumbling window holding a
//! count and, for the distinct-count detectors (enumeration, probing), a linear-counting sketch
//! of [`BITS`] bits (128 bytes) instead of the ids themselves, so a window's size does not grow
//! with what the client sends. Windows are kept in capped maps: `max_tracked` over all shards;
//! a full shard first drops the windows that have ended, then (when every window is live) an
//! arbitrary one — so a flood of new clients can make the detector forget, never grow.
//! Quarantines are a capped map too (`max_quarantined`); a full one drops expired entries and
//! otherwise refuses to add more (the alert is still raised, and counted as not quarantined).
//!
//! **Who.** The subject of an event is the certificate thumbprint when the connection has one,
//! else the verified token's client id, else the peer address (credential failures before any
//! identity is known).

pub mod config;

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

pub use config::{
    DetectionConfig, DetectorConfig, FileDetection, FileDetector, FileFirstUse, FileVolume,
    FileWebhook, FirstUseConfig, Hours, VolumeConfig, WebhookConfig,
};

/// Bits in a distinct-count sketch.
pub const BITS: usize = 1024;
const WORDS: usize = BITS / 64;
/// Lock shards of the window map.
pub const SHARDS: usize = 16;

/// A detector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Distinct objects refused by object rules (403, or the hidden 404).
    Enumeration = 0,
    /// Distinct routes refused for scope, or not found / method not allowed.
    Probing = 1,
    /// Token, binding and signature failures.
    CredentialAbuse = 2,
    /// DPoP proof replays, signature nonce replays, idempotency-key conflicts.
    Replay = 3,
    /// A client's requests on one route in one bucket against its own exponentially weighted
    /// baseline, after a warm-up.
    Volume = 4,
    /// A client let through on a route it has never used, after a learning period.
    FirstUse = 5,
}

impl Kind {
    /// The detectors that count refusals (threshold, window, action).
    pub const ALL: [Kind; 4] = [
        Kind::Enumeration,
        Kind::Probing,
        Kind::CredentialAbuse,
        Kind::Replay,
    ];

    /// Every detector.
    pub const EVERY: [Kind; 6] = [
        Kind::Enumeration,
        Kind::Probing,
        Kind::CredentialAbuse,
        Kind::Replay,
        Kind::Volume,
        Kind::FirstUse,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Enumeration => "enumeration",
            Kind::Probing => "probing",
            Kind::CredentialAbuse => "credential_abuse",
            Kind::Replay => "replay",
            Kind::Volume => "volume",
            Kind::FirstUse => "first_use",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::EVERY.into_iter().find(|k| k.as_str() == s)
    }

    /// Whether the detector counts distinct values (else every event).
    pub fn distinct(self) -> bool {
        matches!(self, Kind::Enumeration | Kind::Probing)
    }

    /// The detector that counts a refusal with this audited reason code, if any.
    ///
    /// Left out on purpose: refusals for our own failures (`*_unavailable`, 503), an expired
    /// token and the DPoP nonce challenge (both part of every well-behaved client's life), and
    /// everything about framing and rate limits (not about what the client may do).
    pub fn of_reason(reason: &str) -> Option<Kind> {
        if reason.ends_with("_unavailable") {
            return None;
        }
        match reason {
            "authz.object" | "authz.object_hidden" => Some(Kind::Enumeration),
            "authz.scope" | "route.not_found" | "route.method_not_allowed" => Some(Kind::Probing),
            "binding.dpop_replay"
            | "signature.http_replay"
            | "idempotency.key_reused"
            | "idempotency.in_flight" => Some(Kind::Replay),
            "token.expired" | "binding.dpop_nonce" | "token.missing" => None,
            r if r.starts_with("token.")
                || r.starts_with("binding.")
                || r.starts_with("signature.") =>
            {
                Some(Kind::CredentialAbuse)
            }
            _ => None,
        }
    }
}

/// What a detector does when it fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// A metric only.
    Observe,
    /// A metric, an audit record and the webhook.
    Alert,
    /// An alert, and the client is refused for the quarantine TTL.
    Quarantine,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Observe => "observe",
            Action::Alert => "alert",
            Action::Quarantine => "quarantine",
        }
    }

    pub fn parse(s: &str) -> Option<Action> {
        match s {
            "observe" => Some(Action::Observe),
            "alert" => Some(Action::Alert),
            "quarantine" => Some(Action::Quarantine),
            _ => None,
        }
    }
}

/// Who an event is about; its [`Subject::key`] is how alerts and quarantines name it.
#[derive(Clone, Copy, Debug)]
pub enum Subject<'a> {
    /// A verified client certificate's SHA-256 thumbprint.
    Cert(&'a str),
    /// A verified token's client id (no certificate on the connection).
    Client(&'a str),
    /// The peer address: nothing about the caller was verified.
    Peer(std::net::IpAddr),
}

impl Subject<'_> {
    pub fn key(&self) -> String {
        match self {
            Subject::Cert(t) => format!("cert:{t}"),
            Subject::Client(c) => format!("client:{c}"),
            Subject::Peer(ip) => format!("peer:{ip}"),
        }
    }
}

/// One finished request, as the detectors see it.
#[derive(Clone, Copy, Debug)]
pub struct Event<'a> {
    pub subject: Subject<'a>,
    /// The audited reason code of a refusal; `None` for a request let through.
    pub reason: Option<&'a str>,
    pub route: Option<&'a str>,
    /// The route's class (its rate-limit class, when it names one): the routes of one class
    /// share one volume baseline per client.
    pub class: Option<&'a str>,
    /// The request path: the object an object rule refused is named in it.
    pub path: &'a str,
    /// The scopes the route required (a request let through used them).
    pub scopes: &'a [String],
    /// Seconds since the Unix epoch.
    pub now: i64,
}

/// A detector fired.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Alert {
    pub detector: Kind,
    pub action: Action,
    /// [`Subject::key`].
    pub subject: String,
    /// Events (distinct, for enumeration and probing) counted in the window when it fired.
    pub count: u32,
    pub threshold: u32,
    pub window_s: u64,
    /// The reason code of the event that fired it.
    pub reason: String,
    pub route: Option<String>,
    /// First use: the scope never used before, when the request used one.
    pub scope: Option<String>,
    /// Quarantined until (Unix seconds), for `quarantine`; `None` when not quarantined (other
    /// actions, or the quarantine map was full).
    pub quarantined_until: Option<i64>,
    pub at: i64,
}

/// A quarantine in force.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quarantine {
    pub subject: String,
    pub detector: Kind,
    pub since: i64,
    pub until: i64,
}

impl Quarantine {
    /// The form a shared store keeps it in (with its subject as the key): `until since detector`.
    pub fn encode(&self) -> String {
        format!("{} {} {}", self.until, self.since, self.detector.as_str())
    }

    /// The inverse of [`Quarantine::encode`]; `None` for anything else (a store is not trusted
    /// to hold only what we wrote).
    pub fn decode(subject: &str, value: &str) -> Option<Quarantine> {
        let mut parts = value.split(' ');
        let until = parts.next()?.parse().ok()?;
        let since = parts.next()?.parse().ok()?;
        let detector = Kind::parse(parts.next()?)?;
        if parts.next().is_some() || subject.is_empty() || subject.len() > 1024 {
            return None;
        }
        Some(Quarantine {
            subject: subject.to_string(),
            detector,
            since,
            until,
        })
    }
}

/// A quarantine held here, and whether the fleet's set has shown it (see
/// [`Detector::merge_fleet`]).
struct Held {
    q: Quarantine,
    in_fleet: bool,
}

#[derive(Clone)]
struct Window {
    start: i64,
    count: u32,
    fired: bool,
    bits: [u64; WORDS],
}

impl Window {
    fn new(start: i64) -> Window {
        Window {
            start,
            count: 0,
            fired: false,
            bits: [0; WORDS],
        }
    }

    /// Linear counting (Whang et al.): n ≈ −m·ln(V/m), V the share of zero bits; exact for
    /// small counts but for the odd collision, which it corrects for on average.
    fn distinct(&self) -> u32 {
        let set: u32 = self.bits.iter().map(|w| w.count_ones()).sum();
        let m = BITS as f64;
        let zero = (m - f64::from(set)).max(1.0);
        (-m * (zero / m).ln()).round() as u32
    }
}

/// One client's rate on one route: the current bucket's count and the baseline.
struct Rate {
    bucket: i64,
    count: u32,
    /// Exponentially weighted mean of past buckets' counts.
    ewma: f64,
    /// Buckets seen since the first request (the warm-up).
    buckets: u32,
    fired_bucket: i64,
}

/// The routes a client has been let through on and the scopes it used (tagged hashes, at most
/// [`MAX_ROUTES_KNOWN`] together) and when it was first seen.
struct Known {
    first: i64,
    routes: Vec<u64>,
}

/// Routes remembered per client for first use: a linear scan of at most this many is the
/// per-request cost; a client beyond it stops being watched for first use (counted as evicted).
pub const MAX_ROUTES_KNOWN: usize = 64;

/// Counters the proxy renders as metrics.
#[derive(Debug, Default)]
pub struct Stats {
    /// Fired, by [`Kind`] index.
    pub fired: [AtomicU64; 6],
    /// Windows forgotten while still live because a shard was full.
    pub evicted: AtomicU64,
    /// Quarantines not made because the map was full.
    pub quarantine_full: AtomicU64,
}

/// The detectors' state for one process (memory backend).
pub struct Detector {
    shards: Vec<Mutex<HashMap<(String, Kind), Window>>>,
    /// Volume baselines by a hash of (subject, route class): no allocation per request.
    rates: Vec<Mutex<HashMap<u64, Rate>>>,
    /// First use: routes known per client, by a hash of the subject.
    known: Vec<Mutex<HashMap<u64, Known>>>,
    hasher: RandomState,
    quarantines: Mutex<HashMap<String, Held>>,
    /// How many quarantines are held: the request path skips the lock when none is.
    quarantined_n: AtomicUsize,
    pub stats: Stats,
}

impl Default for Detector {
    fn default() -> Self {
        Detector::new()
    }
}

impl Detector {
    pub fn new() -> Detector {
        Detector {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            rates: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            known: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            quarantines: Mutex::new(HashMap::new()),
            quarantined_n: AtomicUsize::new(0),
            stats: Stats::default(),
        }
    }

    fn hash(&self, s: &str) -> u64 {
        self.hasher.hash_one(s)
    }

    /// Counts one finished request; returns the alert when a detector fires (once per window
    /// per client and detector).
    pub fn observe(&self, cfg: &DetectionConfig, e: &Event<'_>) -> Option<Alert> {
        if !cfg.enabled {
            return None;
        }
        self.observe_keyed(cfg, e, e.subject.key())
    }

    /// As [`Detector::observe`], with the subject's key already made (`e.subject` is not read).
    pub fn observe_keyed(
        &self,
        cfg: &DetectionConfig,
        e: &Event<'_>,
        subject: String,
    ) -> Option<Alert> {
        let reason = e.reason?;
        let kind = Kind::of_reason(reason)?;
        let d = cfg.detector(kind);
        let window_s = d.window.as_secs().max(1) as i64;
        let item = match kind {
            Kind::Enumeration => Some(e.path),
            Kind::Probing => Some(e.route.unwrap_or(e.path)),
            Kind::CredentialAbuse | Kind::Replay | Kind::Volume | Kind::FirstUse => None,
        };
        let bit = item.map(|i| (self.hash(i) % BITS as u64) as usize);
        let shard_of = (self.hash(&subject) as usize) % SHARDS;
        let per_shard = (cfg.max_tracked / SHARDS).max(1);
        let count = {
            let mut shard = self.shards[shard_of]
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let key = (subject, kind);
            if !shard.contains_key(&key) && shard.len() >= per_shard {
                let before = shard.len();
                shard
                    .retain(|(_, k), w| e.now - w.start < cfg.detector(*k).window.as_secs() as i64);
                if shard.len() == before {
                    if let Some(k) = shard.keys().next().cloned() {
                        shard.remove(&k);
                        self.stats.evicted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            let w = shard
                .entry(key.clone())
                .or_insert_with(|| Window::new(e.now));
            if e.now - w.start >= window_s || e.now < w.start {
                *w = Window::new(e.now);
            }
            w.count = w.count.saturating_add(1);
            let n = match bit {
                Some(b) => {
                    w.bits[b / 64] |= 1 << (b % 64);
                    w.distinct()
                }
                None => w.count,
            };
            if w.fired || n < d.threshold {
                return None;
            }
            w.fired = true;
            (key.0, n)
        };
        let (subject, n) = count;
        Some(self.fired(cfg, kind, subject, n, reason, e.route, e.now))
    }

    /// Counts one request of `e.subject` on `e.route` (its class) against its baseline: fires when the
    /// current bucket's count exceeds `multiple` × the baseline (and `min_requests`), after
    /// `warmup` buckets; once per bucket. Every request (allowed or not) is counted; one lock
    /// of one shard, no allocation unless it fires or the client is new.
    pub fn observe_volume(&self, cfg: &DetectionConfig, e: &Event<'_>) -> Option<Alert> {
        let v = cfg.volume?;
        if !cfg.enabled {
            return None;
        }
        let route = e.route?;
        // Per route class: a client that spreads its reads over the routes of one class (an
        // account's balances, transactions, ...) is one rate, as the operator's rate limits
        // already see it; a route without a class is its own.
        let (tag, name) = match e.class {
            Some(c) => (1u8, c),
            None => (0u8, route),
        };
        let key = match e.subject {
            Subject::Cert(t) => self.hasher.hash_one((0u8, t, tag, name)),
            Subject::Client(c) => self.hasher.hash_one((1u8, c, tag, name)),
            Subject::Peer(ip) => self.hasher.hash_one((2u8, ip, tag, name)),
        };
        let bucket_s = v.bucket.as_secs().max(1) as i64;
        let b = e.now.div_euclid(bucket_s);
        let per_shard = (cfg.max_tracked / SHARDS).max(1);
        let (count, baseline) = {
            let mut shard = self.rates[(key as usize) % SHARDS]
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if !shard.contains_key(&key) && shard.len() >= per_shard {
                // Full: forget the idlest bucket's owners first (O(shard), rare), else one.
                let before = shard.len();
                shard.retain(|_, r| b - r.bucket <= 1);
                if shard.len() == before {
                    if let Some(k) = shard.keys().next().copied() {
                        shard.remove(&k);
                    }
                }
                self.stats.evicted.fetch_add(1, Ordering::Relaxed);
            }
            let r = shard.entry(key).or_insert(Rate {
                bucket: b,
                count: 0,
                ewma: 0.0,
                buckets: 0,
                fired_bucket: i64::MIN,
            });
            if b > r.bucket {
                let gap = (b - r.bucket).min(1_000) as i32;
                let a = v.alpha;
                r.ewma = a * f64::from(r.count) + (1.0 - a) * r.ewma;
                // Buckets without a request count as zeros.
                r.ewma *= (1.0 - a).powi(gap - 1);
                r.buckets = r.buckets.saturating_add(gap as u32);
                r.count = 0;
                r.bucket = b;
            }
            r.count = r.count.saturating_add(1);
            let limit = (v.multiple * r.ewma).max(f64::from(v.min_requests));
            if r.buckets < v.warmup || f64::from(r.count) <= limit || r.fired_bucket == b {
                return None;
            }
            r.fired_bucket = b;
            (r.count, limit)
        };
        let mut a = self.fired(
            cfg,
            Kind::Volume,
            e.subject.key(),
            count,
            "volume",
            e.route,
            e.now,
        );
        a.threshold = baseline.ceil() as u32;
        a.window_s = bucket_s as u64;
        Some(a)
    }

    /// First use: a request let through on a route, or with a scope, the client was never let
    /// through on (with) before, once its first request is `learning` old, fires (once per
    /// route or scope: it is known from then on; one alert per request, naming the route and
    /// the first new scope). With `outside_hours`, only a first use outside those daily hours
    /// fires; one inside them is learned silently. Only verified clients (certificate or
    /// client id) are watched.
    pub fn observe_first_use(&self, cfg: &DetectionConfig, e: &Event<'_>) -> Option<Alert> {
        let f = cfg.first_use?;
        if !cfg.enabled || e.reason.is_some() {
            return None;
        }
        let route = e.route?;
        let key = match e.subject {
            Subject::Cert(t) => self.hasher.hash_one((0u8, t)),
            Subject::Client(c) => self.hasher.hash_one((1u8, c)),
            Subject::Peer(_) => return None,
        };
        // Routes and scopes share the client's list, tagged apart.
        let r = self.hasher.hash_one((0u8, route));
        let per_shard = (cfg.max_tracked / SHARDS).max(1);
        let (new_route, new_scope) = {
            let mut shard = self.known[(key as usize) % SHARDS]
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if !shard.contains_key(&key) && shard.len() >= per_shard {
                if let Some(k) = shard.keys().next().copied() {
                    shard.remove(&k);
                }
                self.stats.evicted.fetch_add(1, Ordering::Relaxed);
            }
            let k = shard.entry(key).or_insert(Known {
                first: e.now,
                routes: Vec::new(),
            });
            let mut learn = |h: u64| -> bool {
                if k.routes.contains(&h) {
                    return false;
                }
                if k.routes.len() >= MAX_ROUTES_KNOWN {
                    self.stats.evicted.fetch_add(1, Ordering::Relaxed);
                    return false;
                }
                k.routes.push(h);
                true
            };
            let new_route = learn(r);
            let mut new_scope = None;
            if f.scopes {
                for sc in e.scopes {
                    if learn(self.hasher.hash_one((1u8, sc.as_str()))) && new_scope.is_none() {
                        new_scope = Some(sc.as_str());
                    }
                }
            }
            let learned = e.now.saturating_sub(k.first) >= f.learning.as_secs() as i64;
            if !learned || !(new_route || new_scope.is_some()) {
                return None;
            }
            (new_route, new_scope)
        };
        if f.hours.is_some_and(|h| h.contains(e.now)) {
            return None;
        }
        let reason = if new_route {
            "first_use"
        } else {
            "first_use.scope"
        };
        let mut a = self.fired(
            cfg,
            Kind::FirstUse,
            e.subject.key(),
            1,
            reason,
            e.route,
            e.now,
        );
        a.scope = new_scope.map(str::to_string);
        a.window_s = f.learning.as_secs();
        Some(a)
    }

    /// The fleet's window of `kind` for `subject` at `now` (windows aligned on multiples of
    /// their length, so every instance names the same one), and how long to keep it (s).
    pub fn fleet_window(
        cfg: &DetectionConfig,
        kind: Kind,
        subject: &str,
        now: i64,
    ) -> (String, u64) {
        let w = cfg.detector(kind).window.as_secs().max(1);
        let n = now.max(0) as u64 / w;
        (format!("{}:{n}:{subject}", kind.as_str()), w)
    }

    /// A detector fired with `count` (counted here, or by the fleet): the alert, with the
    /// quarantine made here when that is its action.
    #[allow(clippy::too_many_arguments)]
    pub fn fired(
        &self,
        cfg: &DetectionConfig,
        kind: Kind,
        subject: String,
        count: u32,
        reason: &str,
        route: Option<&str>,
        now: i64,
    ) -> Alert {
        let d = cfg.detector(kind);
        self.stats.fired[kind as usize].fetch_add(1, Ordering::Relaxed);
        let quarantined_until = (d.action == Action::Quarantine)
            .then(|| self.quarantine(cfg, &subject, kind, now))
            .flatten();
        Alert {
            detector: kind,
            action: d.action,
            subject,
            count,
            threshold: d.threshold,
            window_s: d.window.as_secs().max(1),
            reason: reason.to_string(),
            route: route.map(str::to_string),
            scope: None,
            quarantined_until,
            at: now,
        }
    }

    /// Quarantines `subject` for the configured TTL; `None` when the map is full of live ones.
    pub fn quarantine(
        &self,
        cfg: &DetectionConfig,
        subject: &str,
        detector: Kind,
        now: i64,
    ) -> Option<i64> {
        let until = now.saturating_add(cfg.quarantine_ttl.as_secs() as i64);
        let mut q = self.quarantines.lock().unwrap_or_else(|p| p.into_inner());
        if !q.contains_key(subject) && q.len() >= cfg.max_quarantined {
            q.retain(|_, v| v.q.until > now);
            if q.len() >= cfg.max_quarantined {
                self.stats.quarantine_full.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        }
        q.insert(
            subject.to_string(),
            Held {
                q: Quarantine {
                    subject: subject.to_string(),
                    detector,
                    since: now,
                    until,
                },
                in_fleet: false,
            },
        );
        self.quarantined_n.store(q.len(), Ordering::Relaxed);
        Some(until)
    }

    /// Seconds left of `subject`'s quarantine, if it is quarantined now.
    pub fn quarantined(&self, subject: &Subject<'_>, now: i64) -> Option<u64> {
        if self.quarantined_n.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let key = subject.key();
        let q = self.quarantines.lock().unwrap_or_else(|p| p.into_inner());
        let until = q.get(&key)?.q.until;
        (until > now).then(|| (until - now) as u64)
    }

    /// Lifts `subject`'s quarantine early; whether there was one.
    pub fn lift(&self, subject: &str) -> bool {
        let mut q = self.quarantines.lock().unwrap_or_else(|p| p.into_inner());
        let had = q.remove(subject).is_some();
        self.quarantined_n.store(q.len(), Ordering::Relaxed);
        had
    }

    /// Takes the fleet's quarantines (a shared store's whole set) as the truth: the map becomes
    /// those in force, plus the ones made here that the set has never shown (not written yet,
    /// or Redis refused the write: they hold here until they end). One the set showed before
    /// and no longer does was lifted on another instance (or ended), and goes. At most
    /// `max_quarantined` are kept.
    pub fn merge_fleet(&self, cfg: &DetectionConfig, fleet: Vec<Quarantine>, now: i64) {
        let mut q = self.quarantines.lock().unwrap_or_else(|p| p.into_inner());
        let mut next: HashMap<String, Held> = q
            .drain()
            .filter(|(_, v)| v.q.until > now && !v.in_fleet)
            .collect();
        for f in fleet {
            if next.len() >= cfg.max_quarantined && !next.contains_key(&f.subject) {
                self.stats.quarantine_full.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if f.until > now {
                next.insert(
                    f.subject.clone(),
                    Held {
                        q: f,
                        in_fleet: true,
                    },
                );
            }
        }
        *q = next;
        self.quarantined_n.store(q.len(), Ordering::Relaxed);
    }

    /// The quarantines in force now, by subject.
    pub fn list(&self, now: i64) -> Vec<Quarantine> {
        let q = self.quarantines.lock().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<Quarantine> = q
            .values()
            .filter(|v| v.q.until > now)
            .map(|v| v.q.clone())
            .collect();
        all.sort_by(|a, b| a.subject.cmp(&b.subject));
        all
    }
}

#[cfg(test)]
mod tests;
