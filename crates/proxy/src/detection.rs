//! Behavioural detection on the proxy's side: every finished request is handed to the
//! detectors (`portcullis-detect`) when it is recorded, and what they raise is acted on here —
//! the alert record (composed in `crate::record`), a log line and the webhook. Quarantines are
//! enforced by the pipeline (`crate::pipeline::quarantine`) and listed and lifted from the admin
//! listener (`crate::server`).
//!
//! The webhook never sits on the request path: alerts go into a bounded queue that one task
//! drains, posting each as JSON with a few attempts. A full queue drops the alert (counted);
//! a receiver that is down or slow costs only its own attempts and the drops.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc;

use portcullis_audit::{AlertRecord, RequestRecord};
use portcullis_base::metrics::{Exposition, Kind as MetricKind};
use portcullis_crypto::pki::ClientCert;
use portcullis_detect::{Action, Alert, DetectionConfig, Event, Kind, Subject, WebhookConfig};
use portcullis_state::redis::RedisState;

/// What detection needs from the running proxy (given by the caller, so that this module and
/// the runtime do not name each other).
pub(crate) struct Detection<'a> {
    /// The request's config snapshot's `detection:`.
    pub(crate) cfg: &'a DetectionConfig,
    pub(crate) detect: &'a Arc<portcullis_detect::Detector>,
    pub(crate) webhook: Option<&'a Webhook>,
    /// The fleet's shared state, when on Redis: counts and quarantines are kept there.
    pub(crate) fleet: Option<&'a Arc<RedisState>>,
    pub(crate) audit: &'a portcullis_audit::AuditLog,
    pub(crate) now: i64,
}

/// Who a finished request was, for the detectors: taken from the connection and the token
/// before the record is composed.
pub(crate) struct Who {
    pub(crate) cert: Option<Arc<ClientCert>>,
    pub(crate) token: Option<Arc<crate::pipeline::token::AccessToken>>,
    pub(crate) peer: Option<IpAddr>,
    /// The matched route (its class keys the volume baseline).
    pub(crate) route: Option<Arc<portcullis_policy::Route>>,
}

/// Hands a finished request to the detectors and acts on what they raise; returns the alert
/// records to write after the request's. Every request feeds the volume detector (when on); a
/// refusal some detector counts feeds that one too.
pub(crate) fn after_request(
    to: &Detection<'_>,
    record: &RequestRecord,
    who: &Who,
) -> Vec<AlertRecord> {
    let cfg = to.cfg;
    let counted = record.reason.and_then(Kind::of_reason);
    if !cfg.enabled || (counted.is_none() && cfg.volume.is_none() && cfg.first_use.is_none()) {
        return Vec::new();
    }
    let client_id = who.token.as_ref().and_then(|t| t.client_id.as_deref());
    let subject = match (&who.cert, client_id, who.peer) {
        (Some(c), _, _) => Subject::Cert(&c.thumbprint),
        (None, Some(id), _) => Subject::Client(id),
        (None, None, Some(ip)) => Subject::Peer(ip),
        (None, None, None) => return Vec::new(),
    };
    let event = Event {
        subject,
        reason: record.reason,
        route: record.route_id.as_deref(),
        class: who.route.as_ref().and_then(|r| r.rate_limit.as_deref()),
        path: &record.path,
        scopes: record.scopes_required.as_deref().unwrap_or(&[]),
        now: to.now,
    };
    let mut out = Vec::new();
    // Volume is counted per instance, also on a fleet (see docs/detection.md).
    if let Some(alert) = to.detect.observe_volume(cfg, &event) {
        out.extend(act(to, &alert, record));
    }
    // First use is per instance too: each instance learns the routes it serves the client.
    if let Some(alert) = to.detect.observe_first_use(cfg, &event) {
        out.extend(act(to, &alert, record));
    }
    if counted.is_none() {
        return out;
    }
    if let Some(redis) = to.fleet {
        count_in_fleet(to, redis, &event, record);
        return out;
    }
    if let Some(alert) = to.detect.observe(cfg, &event) {
        out.extend(act(to, &alert, record));
    }
    out
}

/// A quarantine shared with the fleet, and the alert raised.
fn act(to: &Detection<'_>, alert: &Alert, record: &RequestRecord) -> Option<AlertRecord> {
    if let (Some(until), Some(redis)) = (alert.quarantined_until, to.fleet) {
        share_quarantine(redis, alert, until);
    }
    raise(to.webhook, to.cfg, alert, record)
}

/// Counts the event in the fleet's window (Redis), off the request path, so that a client
/// cannot spread its probing over instances; the instance whose count reaches the threshold
/// raises the alert (once per window, fleet-wide). When Redis does not answer, it is counted
/// here instead.
fn count_in_fleet(
    to: &Detection<'_>,
    redis: &Arc<RedisState>,
    e: &Event<'_>,
    record: &RequestRecord,
) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let (Some(reason), Some(kind)) = (e.reason, e.reason.and_then(Kind::of_reason)) else {
        return;
    };
    let subject = e.subject.key();
    let (window, ttl) = portcullis_detect::Detector::fleet_window(to.cfg, kind, &subject, e.now);
    let item = match kind {
        Kind::Enumeration => Some(e.path.to_string()),
        Kind::Probing => Some(e.route.unwrap_or(e.path).to_string()),
        Kind::CredentialAbuse | Kind::Replay | Kind::Volume | Kind::FirstUse => None,
    };
    let owned = (
        reason.to_string(),
        e.route.map(str::to_string),
        e.path.to_string(),
        e.now,
    );
    let cfg = to.cfg.clone();
    let detect = Arc::clone(to.detect);
    let redis = Arc::clone(redis);
    let audit = to.audit.clone();
    let webhook = to.webhook.cloned();
    let request = RequestRecord {
        client_id: record.client_id.clone(),
        interaction_id: record.interaction_id.clone(),
        ..RequestRecord::default()
    };
    let threshold = cfg.detector(kind).threshold;
    rt.spawn(async move {
        let (reason, route, path, now) = owned;
        let alert = match redis
            .detect_count(&window, item.as_deref(), threshold, ttl)
            .await
        {
            Ok((n, true)) => {
                let n = u32::try_from(n).unwrap_or(u32::MAX);
                Some(detect.fired(&cfg, kind, subject, n, &reason, route.as_deref(), now))
            }
            Ok((_, false)) => None,
            Err(_) => {
                let local = Event {
                    // Not read: the key is given.
                    subject: Subject::Client(""),
                    reason: Some(&reason),
                    route: route.as_deref(),
                    class: None,
                    scopes: &[],
                    path: &path,
                    now,
                };
                // The key is already made: count it under the same name.
                detect.observe_keyed(&cfg, &local, subject.clone())
            }
        };
        let Some(alert) = alert else { return };
        if let Some(until) = alert.quarantined_until {
            share_quarantine(&redis, &alert, until);
        }
        if let Some(a) = raise(webhook.as_ref(), &cfg, &alert, &request) {
            audit.emit(portcullis_audit::Record::Alert(a));
        }
    });
}

/// Writes a quarantine made here to the fleet's set, off the request path. Until it lands (or
/// when Redis is down) it holds on this instance only.
fn share_quarantine(redis: &Arc<RedisState>, alert: &Alert, until: i64) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let q = portcullis_detect::Quarantine {
        subject: alert.subject.clone(),
        detector: alert.detector,
        since: alert.at,
        until,
    };
    let redis = Arc::clone(redis);
    rt.spawn(async move {
        if redis.quarantine_set(&q.subject, &q.encode()).await.is_err() {
            tracing::warn!(subject = %q.subject, "quarantine not shared with the fleet: Redis did not answer");
        }
    });
}

/// Keeps this instance's quarantines in step with the fleet's set in Redis, once a second:
/// quarantines made elsewhere start here, lifted or ended ones stop; expired fields are removed
/// from the set. `config` gives the current `detection:` (`None`: the proxy is gone, stop).
/// While Redis does not answer, the quarantines held here stay as they are.
pub(crate) async fn fleet_sync(
    detect: Arc<portcullis_detect::Detector>,
    redis: Arc<RedisState>,
    clock: Arc<dyn portcullis_base::clock::Clock>,
    config: impl Fn() -> Option<DetectionConfig>,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let Some(cfg) = config() else { return };
        if !cfg.enabled {
            continue;
        }
        let Ok(all) = redis
            .quarantine_all(cfg.max_quarantined.saturating_mul(2))
            .await
        else {
            continue;
        };
        let now = clock.now();
        let mut live = Vec::with_capacity(all.len());
        let mut ended = Vec::new();
        for (subject, value) in all {
            match portcullis_detect::Quarantine::decode(&subject, &value) {
                Some(q) if q.until > now => live.push(q),
                _ => ended.push(subject),
            }
        }
        detect.merge_fleet(&cfg, live, now);
        let _ = redis.quarantine_del(ended).await;
    }
}

/// Lifts `subject`'s quarantine here and in the fleet's set; whether it was quarantined.
pub(crate) async fn lift(
    detect: &portcullis_detect::Detector,
    fleet: Option<&Arc<RedisState>>,
    subject: &str,
) -> Result<bool, portcullis_state::redis::Unavailable> {
    let here = detect.lift(subject);
    match fleet {
        None => Ok(here),
        Some(r) => Ok(r.quarantine_del(vec![subject.to_string()]).await? > 0 || here),
    }
}

/// Acts on one alert: `observe` is the metric only (counted by the detector); `alert` and
/// `quarantine` also write the record, log and post.
fn raise(
    webhook: Option<&Webhook>,
    cfg: &DetectionConfig,
    alert: &Alert,
    record: &RequestRecord,
) -> Option<AlertRecord> {
    if alert.action == Action::Observe {
        return None;
    }
    let a = crate::record::alert(alert, record);
    tracing::warn!(
        detector = a.detector,
        action = a.action,
        subject = %a.subject,
        count = a.count,
        threshold = a.threshold,
        "behavioural detector fired"
    );
    if let (Some(w), Some(_)) = (webhook, &cfg.webhook) {
        w.post(webhook_body(&a));
    }
    Some(a)
}

/// The webhook's JSON: the members of the alert record, and `kind: alert`.
fn webhook_body(a: &portcullis_audit::AlertRecord) -> Bytes {
    let v = serde_json::json!({
        "kind": "alert",
        "detector": a.detector,
        "action": a.action,
        "subject": a.subject,
        "count": a.count,
        "threshold": a.threshold,
        "window_s": a.window_s,
        "reason": a.reason,
        "route_id": a.route_id,
        "scope": a.scope,
        "client_id": a.client_id,
        "quarantined_until": a.quarantined_until,
        "interaction_id": a.interaction_id,
    });
    Bytes::from(v.to_string())
}

/// The webhook's queue and its counters.
#[derive(Clone)]
pub(crate) struct Webhook {
    tx: mpsc::Sender<Bytes>,
    stats: Arc<WebhookStats>,
}

#[derive(Default)]
struct WebhookStats {
    sent: AtomicU64,
    /// The queue was full: the alert was never posted.
    dropped: AtomicU64,
    /// Every attempt failed (the receiver down, slow or refusing).
    failed: AtomicU64,
}

impl Webhook {
    /// Starts the sender task; `None` outside a Tokio runtime (nothing could drain the queue).
    pub(crate) fn start(cfg: &WebhookConfig) -> Option<Webhook> {
        let handle = tokio::runtime::Handle::try_current().ok()?;
        let (tx, mut rx) = mpsc::channel::<Bytes>(cfg.queue);
        let stats = Arc::new(WebhookStats::default());
        let cfg = cfg.clone();
        let task_stats = Arc::clone(&stats);
        let tls = webhook_tls(&cfg)?;
        handle.spawn(async move {
            let mut connector = HttpConnector::new();
            connector.set_connect_timeout(Some(cfg.timeout));
            connector.enforce_http(false);
            let connector = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls)
                .https_or_http()
                .enable_http1()
                .wrap_connector(connector);
            let client: HookClient = Client::builder(TokioExecutor::new()).build(connector);
            while let Some(body) = rx.recv().await {
                if deliver(&client, &cfg, body).await {
                    task_stats.sent.fetch_add(1, Ordering::Relaxed);
                } else {
                    task_stats.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Some(Webhook { tx, stats })
    }

    /// Queues one alert; never waits.
    fn post(&self, body: Bytes) {
        if self.tx.try_send(body).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

type HookClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The TLS the webhook's client uses for an https:// receiver: the roots of `webhook.ca`, or
/// the system's; no client certificate. `None` when no root is usable (then no alert could be
/// delivered: the webhook is not started, and the error is logged).
fn webhook_tls(cfg: &WebhookConfig) -> Option<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    if cfg.ca_der.is_empty() {
        // Roots that fail to parse are skipped: an unusable root can only make a receiver
        // unreachable, never trusted.
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
    } else {
        for der in &cfg.ca_der {
            let _ = roots.add(rustls_pki_types::CertificateDer::from(der.clone()));
        }
    }
    if roots.is_empty() && cfg.url.starts_with("https://") {
        tracing::error!("detection.webhook: no usable CA certificate; alerts are not posted");
        return None;
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .ok()
    .map(|b| b.with_root_certificates(roots).with_no_client_auth())
}

/// Posts `body`, retrying with a doubling pause; true on a 2xx answer.
async fn deliver(client: &HookClient, cfg: &WebhookConfig, body: Bytes) -> bool {
    let mut pause = Duration::from_millis(100);
    for attempt in 0..cfg.attempts {
        if attempt > 0 {
            tokio::time::sleep(pause).await;
            pause = pause.saturating_mul(2);
        }
        let Ok(req) = http::Request::post(cfg.url.as_str())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body.clone()))
        else {
            return false;
        };
        match tokio::time::timeout(cfg.timeout, client.request(req)).await {
            Ok(Ok(resp)) if resp.status().is_success() => return true,
            _ => continue,
        }
    }
    false
}

/// The detection metrics: fired per detector, quarantines in force, windows forgotten early,
/// and the webhook's outcomes.
pub(crate) fn write_metrics(
    detect: &portcullis_detect::Detector,
    webhook: Option<&Webhook>,
    now: i64,
    out: &mut Exposition,
) {
    let stats = &detect.stats;
    let mut f = out.family(
        "portcullis_detection_fired_total",
        MetricKind::Counter,
        "Behavioural detectors fired, by detector (each once per window and client).",
    );
    for k in Kind::EVERY {
        f.sample(
            &[("detector", k.as_str())],
            stats.fired[k as usize].load(Ordering::Relaxed),
        );
    }
    out.single(
        "portcullis_detection_quarantined",
        MetricKind::Gauge,
        "Clients quarantined now.",
        detect.list(now).len(),
    );
    out.single(
        "portcullis_detection_evicted_total",
        MetricKind::Counter,
        "Live detection windows forgotten because the window map was full (detection.max_tracked).",
        stats.evicted.load(Ordering::Relaxed),
    );
    out.single(
        "portcullis_detection_quarantine_full_total",
        MetricKind::Counter,
        "Quarantines not made because the quarantine map was full (detection.max_quarantined).",
        stats.quarantine_full.load(Ordering::Relaxed),
    );
    if let Some(w) = webhook {
        let mut f = out.family(
            "portcullis_detection_webhook_total",
            MetricKind::Counter,
            "Alerts for the webhook: sent, dropped (queue full) or failed (every attempt).",
        );
        for (outcome, n) in [
            ("sent", &w.stats.sent),
            ("dropped", &w.stats.dropped),
            ("failed", &w.stats.failed),
        ] {
            f.sample(&[("outcome", outcome)], n.load(Ordering::Relaxed));
        }
    }
}
