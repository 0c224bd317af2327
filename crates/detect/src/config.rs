//! `detection:` as written, and its validation. Every field names itself in errors.

use std::time::Duration;

use portcullis_base::duration::ConfigDuration;
use portcullis_base::problems::Problems;
use serde::{Deserialize, Serialize};

use crate::{Action, Kind, BITS};

/// One detector as written.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileDetector {
    /// Events (distinct ones, for enumeration and probing) in one window that fire it.
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold: Option<u32>,
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<ConfigDuration>,
    /// `observe`, `alert` or `quarantine`.
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
}

/// `detection:` as written.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileDetection {
    /// Default true once the section is present.
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Windows kept at most, over all clients and detectors (default 50000).
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tracked: Option<usize>,
    /// Quarantines held at most (default 10000).
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_quarantined: Option<usize>,
    /// How long a quarantine lasts unless lifted (default 15m).
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quarantine_ttl: Option<ConfigDuration>,
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enumeration: Option<FileDetector>,
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probing: Option<FileDetector>,
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential_abuse: Option<FileDetector>,
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replay: Option<FileDetector>,
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volume: Option<FileVolume>,
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_use: Option<FileFirstUse>,
    /// Where alerts are posted (JSON), off the request path.
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook: Option<FileWebhook>,
    /// A file holding the bearer token the admin listener asks for before it lists or lifts
    /// quarantines; without it those endpoints answer 404.
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_token_file: Option<String>,
}

/// `detection.volume:` as written.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileVolume {
    /// Default true.
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Fire when a bucket's count exceeds this multiple of the baseline (default 10).
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub multiple: Option<f64>,
    /// ... and this many requests (default 600).
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_requests: Option<u32>,
    /// Buckets seen before it may fire; also the baseline's span (default 60).
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warmup: Option<u32>,
    /// Default 1m.
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket: Option<ConfigDuration>,
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
}

/// The validated volume detector.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VolumeConfig {
    pub multiple: f64,
    pub min_requests: u32,
    pub warmup: u32,
    pub bucket: Duration,
    /// The baseline's weight for the newest bucket: 2 / (warmup + 1).
    pub alpha: f64,
    pub action: Action,
}

impl Default for VolumeConfig {
    fn default() -> Self {
        VolumeConfig {
            multiple: 10.0,
            min_requests: 600,
            warmup: 60,
            bucket: Duration::from_secs(60),
            alpha: 2.0 / 61.0,
            action: Action::Alert,
        }
    }
}

/// `detection.first_use:` as written.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileFirstUse {
    /// Default true.
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// How long after a client's first request its routes are learned, not alerted on
    /// (default 168h).
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub learning: Option<ConfigDuration>,
    /// Watch the scopes a client uses too, not only its routes (default true).
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scopes: Option<bool>,
    /// Daily hours, UTC, `HH:MM-HH:MM` (e.g. `07:00-19:00`; may wrap midnight): a first use
    /// inside them is learned silently, only one outside them fires. Default: any time fires.
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outside_hours: Option<String>,
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
}

/// Daily hours in UTC, as minutes of the day: `from` inclusive, `to` exclusive; `from > to`
/// wraps midnight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hours {
    pub from: u16,
    pub to: u16,
}

impl Hours {
    /// Parses `HH:MM-HH:MM` (00:00 to 24:00; the two ends differ).
    pub fn parse(text: &str) -> Option<Hours> {
        let minute = |t: &str| -> Option<u16> {
            let (h, m) = t.trim().split_once(':')?;
            if h.len() != 2 || m.len() != 2 {
                return None;
            }
            let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
            (m < 60 && (h < 24 || (h == 24 && m == 0))).then_some(h * 60 + m)
        };
        let (a, b) = text.split_once('-')?;
        let (from, to) = (minute(a)?, minute(b)?);
        (from != to).then_some(Hours { from, to })
    }

    /// Whether `now` (Unix seconds) falls inside these hours.
    pub fn contains(&self, now: i64) -> bool {
        let m = (now.rem_euclid(86_400) / 60) as u16;
        if self.from < self.to {
            (self.from..self.to).contains(&m)
        } else {
            m >= self.from || m < self.to
        }
    }
}

/// The validated first-use detector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FirstUseConfig {
    pub learning: Duration,
    /// Scopes are watched as well as routes.
    pub scopes: bool,
    /// Only a first use outside these hours fires.
    pub hours: Option<Hours>,
    pub action: Action,
}

impl Default for FirstUseConfig {
    fn default() -> Self {
        FirstUseConfig {
            learning: Duration::from_secs(7 * 24 * 3600),
            scopes: true,
            hours: None,
            action: Action::Alert,
        }
    }
}

/// `detection.webhook:` as written.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileWebhook {
    /// An http:// or https:// URL.
    pub url: String,
    /// https:// only: a PEM file of the CA certificates the receiver's certificate must chain
    /// to (pinned trust). Default: the system's roots.
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// Alerts waiting to be posted at most (default 1000); more are dropped and counted.
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<usize>,
    /// Attempts per alert (default 3).
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// Per attempt (default 2s).
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<ConfigDuration>,
}

/// One validated detector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DetectorConfig {
    pub threshold: u32,
    pub window: Duration,
    pub action: Action,
}

/// The validated webhook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookConfig {
    pub url: String,
    /// `webhook.ca` as written (the proxy's config reads it into `ca_der`).
    pub ca: Option<String>,
    /// The CA certificates (DER) an https:// receiver must chain to; empty: the system's.
    pub ca_der: Vec<Vec<u8>>,
    pub queue: usize,
    pub attempts: u32,
    pub timeout: Duration,
}

/// The validated `detection:` section.
#[derive(Clone, Debug, PartialEq)]
pub struct DetectionConfig {
    pub enabled: bool,
    pub max_tracked: usize,
    pub max_quarantined: usize,
    pub quarantine_ttl: Duration,
    /// By [`Kind`] index.
    pub detectors: [DetectorConfig; Kind::ALL.len()],
    /// The volume detector; `None` when off.
    pub volume: Option<VolumeConfig>,
    /// The first-use detector; `None` when off.
    pub first_use: Option<FirstUseConfig>,
    pub webhook: Option<WebhookConfig>,
    /// The admin bearer token's file, resolved by the caller against the config file.
    pub admin_token_file: Option<String>,
}

impl Default for DetectionConfig {
    /// Off: no `detection:` section.
    fn default() -> Self {
        DetectionConfig {
            enabled: false,
            max_tracked: 50_000,
            max_quarantined: 10_000,
            quarantine_ttl: Duration::from_secs(15 * 60),
            detectors: Kind::ALL.map(Kind::default_config),
            volume: Some(VolumeConfig::default()),
            first_use: Some(FirstUseConfig::default()),
            webhook: None,
            admin_token_file: None,
        }
    }
}

impl DetectionConfig {
    /// A detector's threshold, window and action (for volume: its minimum, bucket and action).
    pub fn detector(&self, kind: Kind) -> DetectorConfig {
        match (kind, self.volume) {
            (Kind::Volume, v) => {
                let v = v.unwrap_or_default();
                DetectorConfig {
                    threshold: v.min_requests,
                    window: v.bucket,
                    action: v.action,
                }
            }
            (Kind::FirstUse, _) => {
                let f = self.first_use.unwrap_or_default();
                DetectorConfig {
                    threshold: 1,
                    window: f.learning,
                    action: f.action,
                }
            }
            _ => self
                .detectors
                .get(kind as usize)
                .copied()
                .unwrap_or(kind.default_config()),
        }
    }
}

impl Kind {
    /// The shipped defaults; `docs/detection.md` gives their reasoning.
    pub fn default_config(self) -> DetectorConfig {
        let five_minutes = Duration::from_secs(300);
        let threshold = match self {
            Kind::Enumeration => 20,
            Kind::Probing => 10,
            Kind::CredentialAbuse => 30,
            Kind::Replay => 10,
            Kind::Volume => VolumeConfig::default().min_requests,
            Kind::FirstUse => 1,
        };
        DetectorConfig {
            threshold,
            window: five_minutes,
            action: Action::Alert,
        }
    }
}

/// The largest distinct-count threshold: the sketch (see [`crate`]) counts well below its size.
pub const MAX_DISTINCT_THRESHOLD: u32 = (BITS / 4) as u32;

/// Validates `detection:`; `None` means the section is absent (detection off).
pub fn validate(p: &mut Problems<'_>, f: Option<&FileDetection>) -> DetectionConfig {
    let mut c = DetectionConfig::default();
    let Some(f) = f else { return c };
    c.enabled = f.enabled.unwrap_or(true);
    if let Some(n) = f.max_tracked {
        if !(1..=10_000_000).contains(&n) {
            p.push("detection.max_tracked", "must be between 1 and 10000000");
        }
        c.max_tracked = n.max(1);
    }
    if let Some(n) = f.max_quarantined {
        if !(1..=1_000_000).contains(&n) {
            p.push("detection.max_quarantined", "must be between 1 and 1000000");
        }
        c.max_quarantined = n.max(1);
    }
    if let Some(t) = f.quarantine_ttl {
        if t.0 < Duration::from_secs(1) || t.0 > Duration::from_secs(7 * 24 * 3600) {
            p.push("detection.quarantine_ttl", "must be between 1s and 168h");
        }
        c.quarantine_ttl = t.0;
    }
    for kind in Kind::ALL {
        let file = match kind {
            Kind::Enumeration => &f.enumeration,
            Kind::Probing => &f.probing,
            Kind::CredentialAbuse => &f.credential_abuse,
            Kind::Replay => &f.replay,
            Kind::Volume | Kind::FirstUse => &None,
        };
        let Some(d) = file else { continue };
        let at = |field: &str| format!("detection.{}.{field}", kind.as_str());
        let mut v = kind.default_config();
        if let Some(t) = d.threshold {
            let max = if kind.distinct() {
                MAX_DISTINCT_THRESHOLD
            } else {
                1_000_000
            };
            if t == 0 || t > max {
                p.push(at("threshold"), format!("must be between 1 and {max}"));
            }
            v.threshold = t.clamp(1, max);
        }
        if let Some(w) = d.window {
            if w.0 < Duration::from_secs(1) || w.0 > Duration::from_secs(24 * 3600) {
                p.push(at("window"), "must be between 1s and 24h");
            }
            v.window = w.0.max(Duration::from_secs(1));
        }
        if let Some(a) = d.action.as_deref() {
            match Action::parse(a) {
                Some(a) => v.action = a,
                None => p.push(
                    at("action"),
                    format!("unknown value `{a}` (observe, alert or quarantine)"),
                ),
            }
        }
        c.detectors[kind as usize] = v;
    }
    if let Some(v) = &f.volume {
        let mut c_v = VolumeConfig::default();
        if let Some(m) = v.multiple {
            if !(m.is_finite() && (1.5..=1000.0).contains(&m)) {
                p.push("detection.volume.multiple", "must be between 1.5 and 1000");
            } else {
                c_v.multiple = m;
            }
        }
        if let Some(n) = v.min_requests {
            if n == 0 {
                p.push("detection.volume.min_requests", "must be at least 1");
            }
            c_v.min_requests = n.max(1);
        }
        if let Some(w) = v.warmup {
            if !(1..=10_000).contains(&w) {
                p.push(
                    "detection.volume.warmup",
                    "must be between 1 and 10000 buckets",
                );
            }
            c_v.warmup = w.clamp(1, 10_000);
        }
        c_v.alpha = 2.0 / (f64::from(c_v.warmup) + 1.0);
        if let Some(b) = v.bucket {
            if b.0 < Duration::from_secs(1) || b.0 > Duration::from_secs(3600) {
                p.push("detection.volume.bucket", "must be between 1s and 1h");
            }
            c_v.bucket = b.0.max(Duration::from_secs(1));
        }
        if let Some(a) = v.action.as_deref() {
            match Action::parse(a) {
                Some(a) => c_v.action = a,
                None => p.push(
                    "detection.volume.action",
                    format!("unknown value `{a}` (observe, alert or quarantine)"),
                ),
            }
        }
        c.volume = v.enabled.unwrap_or(true).then_some(c_v);
    }
    if let Some(u) = &f.first_use {
        let mut c_f = FirstUseConfig::default();
        if let Some(l) = u.learning {
            if l.0 > Duration::from_secs(365 * 24 * 3600) {
                p.push("detection.first_use.learning", "must be at most 8760h");
            }
            c_f.learning = l.0;
        }
        c_f.scopes = u.scopes.unwrap_or(true);
        if let Some(h) = u.outside_hours.as_deref() {
            match Hours::parse(h) {
                Some(h) => c_f.hours = Some(h),
                None => p.push(
                    "detection.first_use.outside_hours",
                    format!("`{h}` is not daily hours `HH:MM-HH:MM` (UTC, two different times)"),
                ),
            }
        }
        if let Some(a) = u.action.as_deref() {
            match Action::parse(a) {
                Some(a) => c_f.action = a,
                None => p.push(
                    "detection.first_use.action",
                    format!("unknown value `{a}` (observe, alert or quarantine)"),
                ),
            }
        }
        c.first_use = u.enabled.unwrap_or(true).then_some(c_f);
    }
    if let Some(w) = &f.webhook {
        let https = w.url.starts_with("https://");
        let ok = w
            .url
            .strip_prefix("http://")
            .or_else(|| w.url.strip_prefix("https://"))
            .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'));
        if !ok {
            p.push(
                "detection.webhook.url",
                format!("`{}` must be an http:// or https:// URL with a host", w.url),
            );
        }
        if w.ca.is_some() && !https {
            p.push(
                "detection.webhook.ca",
                "only with an https:// url (it names whom the receiver's certificate must chain to)",
            );
        }
        let queue = w.queue.unwrap_or(1000);
        if !(1..=1_000_000).contains(&queue) {
            p.push("detection.webhook.queue", "must be between 1 and 1000000");
        }
        let attempts = w.attempts.unwrap_or(3);
        if !(1..=10).contains(&attempts) {
            p.push("detection.webhook.attempts", "must be between 1 and 10");
        }
        let timeout = w.timeout.map_or(Duration::from_secs(2), |t| t.0);
        if timeout < Duration::from_millis(10) || timeout > Duration::from_secs(60) {
            p.push("detection.webhook.timeout", "must be between 10ms and 60s");
        }
        c.webhook = Some(WebhookConfig {
            url: w.url.clone(),
            ca: w.ca.clone(),
            ca_der: Vec::new(),
            queue: queue.max(1),
            attempts: attempts.max(1),
            timeout,
        });
    }
    if let Some(t) = &f.admin_token_file {
        if t.trim().is_empty() {
            p.push("detection.admin_token_file", "must name a file");
        }
        c.admin_token_file = Some(t.clone());
    }
    c
}
