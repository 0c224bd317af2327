//! The request handler: an outer `handle` that owns the audit record and turns refusals into
//! responses, and an inner handler that runs the pipeline and forwards.
//!
//! `handle` settles the interaction id first (every response, refusals included, carries it),
//! calls [`inner`], maps a [`Rejection`] through [`crate::rejection::respond`] — the only place
//! responses for refusals are made — and leaves exactly one audit record, on every path:
//!
//! - The record lives in a [`Pending`] guard from the first line. If hyper drops the handler
//!   (the client reset the stream or closed the connection), the guard's `Drop` writes the
//!   record as `cancelled`, `client_gone`.
//! - An answered record rides in the response body ([`Sealed`]) and is written when hyper is
//!   done with the body: in full, or dropped early because the client left (`client_gone`).
//! - A request the upstream might act on (a method that is not safe, or a reserved
//!   idempotency key) is forwarded by a detached task that owns the record: the exchange
//!   finishes, the answer is stored under the key, and the record is written, whether or not
//!   the client is still there. A safe request whose client left is cancelled.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_LENGTH};
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::conn::ConnInfo;
use crate::pipeline::idempotency::{Outcome, Reservation, Settled};
use crate::pipeline::{self, fapi, http::HttpError};
use crate::rejection::{self, Rejection};
use crate::runtime::{Runtime, Shared};
use crate::upstream::{self, UpstreamError, Vouched};
use portcullis_audit::{bounded, Record, RequestRecord};

pub use portcullis_base::body::{empty, full, BoxError, ProxyBody};

/// The status recorded for a request whose client left before any answer was made (the
/// convention of nginx's logs, which operators know).
const CLIENT_CLOSED: u16 = 499;

/// Handles one request on a connection; never fails (refusals are responses).
pub async fn handle(
    req: Request<Incoming>,
    conn: Arc<ConnInfo>,
    shared: Arc<Shared>,
) -> Result<Response<ProxyBody>, Infallible> {
    let started = Instant::now();
    let rt = shared.runtime.load_full();
    let (interaction_id, id_refusal) =
        fapi::interaction_id(req.headers(), rt.config.interaction_id);
    let mut record = start_record(&req, &conn, &rt, &interaction_id);
    let trace = crate::telemetry::TraceContext::from_headers(req.headers());
    record.trace_id = Some(trace.trace_id());
    record.span_id = Some(trace.span_id());
    // The id is always a UUID, so this never fails; it is built once for both directions.
    let id_header = HeaderValue::from_str(&interaction_id).unwrap_or(HeaderValue::from_static(""));
    let answer = Answer {
        shared: Arc::clone(&shared),
        rt: Arc::clone(&rt),
        id_header,
        version: req.version(),
        head_only: req.method() == http::Method::HEAD,
        started,
    };
    let mut pending = Pending::new(record, answer);
    let result = match id_refusal {
        Some(e) => Err(e.into()),
        // Before any stage runs: under `audit.queue_full: refuse`, nothing we cannot audit.
        None if shared.audit.refusing() => Err(portcullis_audit::AuditError::Unavailable.into()),
        None => inner(req, &conn, &rt, &trace, &mut pending).await,
    };
    Ok(pending.conclude(result))
}

/// Everything needed to turn a result into the response and seal the record, wherever the
/// request ends (the handler, or a detached exchange).
#[derive(Clone)]
struct Answer {
    shared: Arc<Shared>,
    /// The config snapshot this request runs on, start to end.
    rt: Arc<Runtime>,
    id_header: HeaderValue,
    version: http::Version,
    /// HEAD: hyper sends no body, so an unread body is no sign that the client left.
    head_only: bool,
    started: Instant,
}

/// A request's record until it is written. Exactly one of three things writes it: the body of
/// the answer once delivered or dropped ([`Sealed`]), [`Pending::abandon`] when the client left
/// a detached exchange, or `Drop` when the handler itself was dropped.
struct Pending {
    record: Option<Box<RequestRecord>>,
    answer: Answer,
    /// Set once the request was handed to the upstream: a cancelled record says so.
    forwarded: bool,
}

impl Pending {
    fn new(record: RequestRecord, answer: Answer) -> Pending {
        Pending {
            record: Some(Box::new(record)),
            answer,
            forwarded: false,
        }
    }

    /// The record, for the stages to fill; a placeholder only if it was already handed on,
    /// which the handler never does before it is done with the stages.
    fn record(&mut self) -> &mut RequestRecord {
        self.record
            .get_or_insert_with(|| Box::new(RequestRecord::default()))
    }

    /// Maps the result to the response; the record travels in the response body and is
    /// written when hyper is done with it.
    fn conclude(mut self, result: Result<Response<ProxyBody>, Rejection>) -> Response<ProxyBody> {
        let Some(mut record) = self.record.take() else {
            return compose(&mut RequestRecord::default(), &self.answer, result);
        };
        let resp = compose(&mut record, &self.answer, result);
        let (parts, body) = resp.into_parts();
        let bodiless = self.answer.head_only
            || parts.status.is_informational()
            || parts.status == http::StatusCode::NO_CONTENT
            || parts.status == http::StatusCode::NOT_MODIFIED;
        let sealed = Sealed {
            body,
            record: Some(record),
            shared: Arc::clone(&self.answer.shared),
            bodiless,
            ended: false,
        };
        Response::from_parts(parts, sealed.boxed_unsync())
    }

    /// The client is gone and the exchange finished without it: the record is composed as if
    /// answered, marked `client_gone`, and written now.
    fn abandon(mut self, result: Result<Response<ProxyBody>, Rejection>) {
        if let Some(mut record) = self.record.take() {
            drop(compose(&mut record, &self.answer, result));
            record.client_gone = true;
            seal(&self.answer.shared, record);
        }
    }

    /// Moves the record (and the duty to write it) into a new guard, for a detached exchange.
    fn hand_over(&mut self) -> Pending {
        Pending {
            record: self.record.take(),
            answer: self.answer.clone(),
            forwarded: true,
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let Some(mut record) = self.record.take() else {
            return;
        };
        // The handler was dropped before it answered: the client reset the stream or closed
        // the connection.
        record.client_gone = true;
        if record.decision.is_empty() {
            record.decision = "cancelled";
        }
        if record.reason.is_none() {
            record.reason = Some("client_gone");
        }
        if record.stage.is_none() && self.forwarded {
            record.stage = Some("upstream");
        }
        if record.status == 0 {
            record.status = CLIENT_CLOSED;
        }
        record.total_latency_us = self.answer.started.elapsed().as_micros() as u64;
        seal(&self.answer.shared, record);
    }
}

/// The one place a request's result becomes its response and its record's decision, stage,
/// reason and status.
fn compose(
    record: &mut RequestRecord,
    a: &Answer,
    result: Result<Response<ProxyBody>, Rejection>,
) -> Response<ProxyBody> {
    let mut resp = match result {
        Ok(resp) => {
            // A shadow denial was recorded by the authorization stage and not enforced.
            record.decision = if record.rule_id.is_some() && record.reason.is_some() {
                a.shared
                    .metrics
                    .would_deny(record.route_id.as_deref(), record.reason.unwrap_or(""));
                "shadow_deny"
            } else {
                "allow"
            };
            resp
        }
        Err(rejection) => {
            record.decision = match rejection {
                Rejection::Upstream(_) | Rejection::Audit(_) => "error",
                _ => "deny",
            };
            record.stage = Some(rejection.stage().as_str());
            record.reason = Some(rejection.audit_reason());
            if let Rejection::Authz(d) = &rejection {
                record.rule_id = Some(d.rule.clone());
            }
            let id = a.id_header.to_str().unwrap_or_default();
            let algs = &a.rt.config.auth.dpop.challenge_algs;
            rejection::respond(&rejection, id, a.version, algs)
        }
    };
    resp.headers_mut()
        .insert(fapi::INTERACTION_ID, a.id_header.clone());
    record.status = resp.status().as_u16();
    record.total_latency_us = a.started.elapsed().as_micros() as u64;
    record.bytes_out = pipeline::http::declared_length(resp.headers());
    resp
}

/// Writes a finished record: metrics, the trace span and the audit log, together.
fn seal(shared: &Shared, record: Box<RequestRecord>) {
    let took = Duration::from_micros(record.total_latency_us);
    let reason = match (record.reason, record.client_gone) {
        (Some(r), _) => r,
        (None, true) => "client_gone",
        (None, false) => "ok",
    };
    shared
        .metrics
        .request(record.route_id.as_deref(), record.status, reason, took);
    shared
        .metrics
        .request_outcome(record.decision, record.upstream_latency_us);
    #[cfg(feature = "otlp")]
    if let Some(x) = &shared.otlp {
        let end = std::time::SystemTime::now();
        x.record(crate::otlp::Span {
            trace_id: record.trace_id.clone().unwrap_or_default(),
            span_id: record.span_id.clone().unwrap_or_default(),
            name: record.route_id.clone().unwrap_or_else(|| "unrouted".into()),
            start: end - took,
            end,
            method: record.method.clone(),
            status: record.status,
            decision: record.decision,
            reason: record.reason,
        });
    }
    shared.audit.emit(Record::Request(record));
}

/// The response body with the request's record: written when hyper drops the body, marked
/// `client_gone` when the body had not been sent in full.
struct Sealed {
    body: ProxyBody,
    record: Option<Box<RequestRecord>>,
    shared: Arc<Shared>,
    bodiless: bool,
    /// The body reached its end (or failed upstream): hyper had all there was to send.
    ended: bool,
}

impl Body for Sealed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) || self.body.is_end_stream() {
            self.ended = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Sealed {
    fn drop(&mut self) {
        if let Some(mut record) = self.record.take() {
            if !self.bodiless && !self.ended && !self.body.is_end_stream() {
                record.client_gone = true;
            }
            seal(&self.shared, record);
        }
    }
}

fn start_record(
    req: &Request<Incoming>,
    conn: &ConnInfo,
    rt: &Runtime,
    interaction_id: &str,
) -> RequestRecord {
    RequestRecord {
        interaction_id: interaction_id.to_string(),
        conn_id: conn.id,
        conn_members: Some(Arc::clone(&conn.audit_members)),
        http_version: match req.version() {
            http::Version::HTTP_2 => "HTTP/2",
            http::Version::HTTP_10 => "HTTP/1.0",
            _ => "HTTP/1.1",
        },
        bytes_in: pipeline::http::declared_length(req.headers()),
        method: bounded(req.method().as_str()),
        path: bounded(req.uri().path()),
        has_query: req.uri().query().is_some(),
        policy_version: rt.config.policies.version.clone(),
        ..RequestRecord::default()
    }
}

async fn inner(
    req: Request<Incoming>,
    conn: &ConnInfo,
    rt: &Arc<Runtime>,
    trace: &crate::telemetry::TraceContext,
    pending: &mut Pending,
) -> Result<Response<ProxyBody>, Rejection> {
    let shared = Arc::clone(&pending.answer.shared);
    let record = pending.record();
    let (parts, body) = req.into_parts();
    let inspected = match pipeline::inspect(&parts, conn, rt, &shared, record).await {
        Ok(i) => i,
        Err(e) => return Err(refuse_unread(e, body).await),
    };
    let route = Arc::clone(&inspected.route.route);
    let declared = pipeline::http::declared_length(&parts.headers);
    // The config loader refuses routes that name an unknown upstream, so this is unreachable;
    // it still fails closed rather than panicking.
    let upstream = rt
        .upstreams
        .get(&route.upstream)
        .cloned()
        .ok_or(UpstreamError::Connect)?;
    let timeout = rt.config.listener.limits.request_timeout;
    // Stages that read the body get it buffered once, up to the route limit; the bytes they
    // checked are the bytes forwarded.
    let (body, buffered) = if pipeline::needs_body(&route) {
        let bytes = buffer_body(body, route.body_limit, timeout, record).await?;
        (full(bytes.clone()), Some(bytes))
    } else {
        (
            request_body(
                body,
                declared,
                parts.version,
                route.body_limit,
                timeout,
                record,
            )
            .await?,
            None,
        )
    };
    let verified =
        pipeline::verify_signature(&inspected, &parts, buffered.as_deref(), rt, &shared, record)
            .await?;
    let permit =
        pipeline::authorize(&inspected, &parts, buffered.as_deref(), rt, &shared, record).await?;
    // 11. Idempotency: last, so a refused request never reserves a key.
    let reservation = match pipeline::idempotency::reserve(
        &inspected,
        &parts,
        buffered.as_deref(),
        &shared,
        record,
    )
    .await?
    {
        Outcome::None => None,
        Outcome::Reserved(r) => Some(r),
        Outcome::Replay(stored) => {
            let (parts, bytes) = pipeline::idempotency::replay(&stored).into_parts();
            return finish(
                parts,
                full(bytes),
                &inspected,
                verified.as_ref(),
                rt,
                &shared,
            )
            .await;
        }
    };

    let uri = upstream
        .uri(parts.uri.path(), parts.uri.query())
        .map_err(|_| UpstreamError::Protocol)?;
    let host = pipeline::http::host(&parts);
    // Safe methods change nothing upstream, so they may be cancelled with their client.
    let detach = reservation.is_some() || !parts.method.is_safe();
    let mut out = Request::new(body);
    *out.method_mut() = parts.method;
    *out.uri_mut() = uri;
    *out.headers_mut() = parts.headers;
    let forwarding = rt.config.client_cert_forwarding;
    upstream::prepare_headers(
        out.headers_mut(),
        &Vouched {
            peer_ip: &conn.peer_ip_header,
            host: host.as_deref(),
            client_cert: inspected
                .identity
                .cert
                .as_ref()
                .and_then(|_| conn.forwarded_cert(forwarding)),
            forwarding,
            interaction_id: &pending.answer.id_header,
        },
    );
    trace.inject(out.headers_mut());
    vouch_for_token(
        out.headers_mut(),
        &inspected,
        &rt.config.auth.identity_headers,
    );
    let exchange = Exchange {
        out,
        upstream,
        reservation,
        inspected,
        verified,
        consent: permit.consent,
        rt: Arc::clone(rt),
        shared,
    };
    if !detach {
        pending.forwarded = true;
        return exchange.run(pending.record()).await;
    }
    // Once forwarded, a request the upstream may act on is finished by the proxy: the task
    // owns the record, so it is written (and a reserved key completed) even if this handler is
    // dropped because the client left.
    let Ok(permit) = Arc::clone(&conn.detached).acquire_owned().await else {
        return Err(UpstreamError::Connect.into());
    };
    let mut owned = pending.hand_over();
    let (tx, rx) = tokio::sync::oneshot::channel();
    conn.tasks.spawn(async move {
        let result = exchange.run(owned.record()).await;
        drop(permit);
        if let Err((owned, result)) = tx.send((owned, result)) {
            owned.abandon(result);
        }
    });
    match rx.await {
        Ok((owned, result)) => {
            *pending = owned;
            result
        }
        // The task ended without an answer (it cannot, short of a panic); its guard wrote the
        // record.
        Err(_) => Err(UpstreamError::Protocol.into()),
    }
}

/// A request ready for the upstream, with what its answer needs: the reserved idempotency key,
/// the evidence for response rules and response signing. Owns everything, so it can run
/// detached from the client's connection.
struct Exchange {
    out: Request<ProxyBody>,
    upstream: Arc<upstream::UpstreamClient>,
    reservation: Option<Reservation>,
    inspected: pipeline::Inspected,
    verified: Option<crate::signature::VerifiedSignature>,
    consent: Option<portcullis_policy::rules::ConsentRecord>,
    rt: Arc<Runtime>,
    shared: Arc<Shared>,
}

impl Exchange {
    async fn run(self, record: &mut RequestRecord) -> Result<Response<ProxyBody>, Rejection> {
        let Exchange {
            out,
            upstream,
            reservation,
            inspected,
            verified,
            consent,
            rt,
            shared,
        } = self;
        let route = &inspected.route.route;
        let (resp, took) = match upstream.send(out).await {
            Ok(sent) => sent,
            Err(e) => {
                // No answer: release the key so the client may retry, or keep it reserved
                // (the upstream may have acted) when so configured.
                if let Some(r) = reservation {
                    if r.release_on_upstream_error {
                        record.idempotency = Some("released");
                    } else {
                        record.idempotency = Some("kept");
                        r.keep();
                    }
                }
                return Err(e.into());
            }
        };
        record.upstream_status = Some(resp.status().as_u16());
        record.upstream_latency_us = Some(took.as_micros() as u64);
        let (mut parts, body) = resp.into_parts();
        upstream::clean_response_headers(&mut parts.headers);
        let body = if route.authz.response_rules.is_empty() {
            body.map_err(BoxError::from).boxed_unsync()
        } else {
            let claims = inspected.token.as_ref().map(|t| &t.token.claims);
            check_response(&mut parts, body, route, claims, consent.as_ref()).await?
        };
        let body = match reservation {
            None => body,
            Some(r) => {
                let max = rt.config.idempotency.max_response_bytes;
                let now = shared.clock.now();
                match pipeline::idempotency::settle(r, &parts, body, max, now, record).await {
                    Settled::Send(bytes) => full(bytes),
                    Settled::Withheld => return Err(UpstreamError::Protocol.into()),
                }
            }
        };
        finish(parts, body, &inspected, verified.as_ref(), &rt, &shared).await
    }
}

/// The last steps of every response that passed the pipeline, forwarded or replayed: the
/// route's response signature, and a fresh DPoP nonce on nonce routes.
async fn finish(
    mut parts: http::response::Parts,
    body: ProxyBody,
    inspected: &pipeline::Inspected,
    verified: Option<&crate::signature::VerifiedSignature>,
    rt: &Runtime,
    shared: &Shared,
) -> Result<Response<ProxyBody>, Rejection> {
    // Routes with `sign_response` sign what they send (issue #4); only they buffer responses.
    let body = match (
        inspected.route.route.signature,
        &rt.config.signatures.response,
    ) {
        (Some(s), Some(key)) if s.sign_response => {
            crate::signature::response::sign_response(
                &mut parts,
                body,
                s.kind,
                verified,
                key,
                shared.clock.now(),
            )
            .await?
        }
        _ => body,
    };
    // RFC 9449 §8.2: a fresh nonce rides on successful responses of nonce routes too.
    if let Some(n) = inspected
        .dpop_nonce
        .as_deref()
        .and_then(|n| HeaderValue::from_str(n).ok())
    {
        parts.headers.insert("dpop-nonce", n);
    }
    Ok(Response::from_parts(parts, body))
}

const MAX_CHECKED_RESPONSE: usize = 16 * 1024 * 1024;

/// Response rules: the JSON response is buffered and every value the rules name must be in the
/// granted set; a `withhold` rule refuses the response (502), a `remove` rule drops offending
/// array elements. A successful response that is not JSON cannot be checked and is withheld.
async fn check_response(
    parts: &mut http::response::Parts,
    body: Incoming,
    route: &portcullis_policy::Route,
    claims: Option<&serde_json::Map<String, serde_json::Value>>,
    consent: Option<&portcullis_policy::rules::ConsentRecord>,
) -> Result<ProxyBody, Rejection> {
    use portcullis_policy::rules::{AuthzError, Denial};
    let leak = |rule: &str| {
        Rejection::Authz(Denial {
            error: AuthzError::ResponseLeak,
            rule: rule.to_string(),
            status: 502,
            shadow: false,
        })
    };
    let first_rule = route.authz.response_rules[0].id.as_str();
    let bytes = Limited::new(body, MAX_CHECKED_RESPONSE)
        .collect()
        .await
        .map_err(|_| leak(first_rule))?
        .to_bytes();
    let mut doc: serde_json::Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(_) if !parts.status.is_success() => return Ok(full(bytes)),
        Err(_) => return Err(leak(first_rule)),
    };
    let empty = serde_json::Map::new();
    let changed = portcullis_policy::rules::check_response(
        &route.authz.response_rules,
        claims.unwrap_or(&empty),
        consent,
        &mut doc,
    )
    .map_err(|rule| leak(&rule))?;
    if !changed {
        return Ok(full(bytes));
    }
    let out = Bytes::from(doc.to_string());
    parts.headers.remove(CONTENT_LENGTH);
    Ok(full(out))
}

/// Reads the whole body, up to `limit` bytes and within `timeout`.
async fn buffer_body(
    body: Incoming,
    limit: u64,
    timeout: Duration,
    record: &mut RequestRecord,
) -> Result<Bytes, HttpError> {
    let limited = Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX));
    match tokio::time::timeout(timeout, limited.collect()).await {
        Err(_) => Err(HttpError::BodyTimeout),
        Ok(Err(e)) => Err(read_error(&e, record)),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

/// Why a request body could not be read; a body that ended because the client closed the
/// connection or reset the stream marks the record `client_gone` (no answer will reach it).
fn read_error(e: &BoxError, record: &mut RequestRecord) -> HttpError {
    if e.is::<LengthLimitError>() {
        return HttpError::BodyTooLarge;
    }
    if peer_left(e.as_ref()) {
        record.client_gone = true;
    }
    HttpError::BodyRead
}

/// Whether an error (or one of its sources) says the client went away: the connection ended
/// before the declared length (HTTP/1.1), or the peer reset the stream (HTTP/2).
fn peer_left(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            if matches!(
                io.kind(),
                K::UnexpectedEof | K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe
            ) {
                return true;
            }
        }
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            if h.is_incomplete_message() || h.is_canceled() {
                return true;
            }
        }
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            if h2.is_remote() && h2.is_reset() {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

/// Identity headers from the bound token's claims (client copies are always removed first), and
/// the credentials removed unless the route forwards them.
fn vouch_for_token(
    h: &mut HeaderMap,
    inspected: &pipeline::Inspected,
    identity_headers: &[(String, http::HeaderName)],
) {
    for (_, name) in identity_headers {
        h.remove(name);
    }
    let Some(bound) = &inspected.token else {
        return;
    };
    let forward = inspected
        .route
        .route
        .auth
        .as_ref()
        .is_some_and(|a| a.forward_credentials);
    if !forward {
        h.remove(http::header::AUTHORIZATION);
        h.remove("dpop");
    }
    for (claim, name) in identity_headers {
        let value = match bound.token.claims.get(claim) {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Number(n)) => n.to_string(),
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_str())
                .collect::<Vec<_>>()
                .join(" "),
            _ => continue,
        };
        // A claim that cannot be a header value is not forwarded rather than mangled.
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(name.clone(), v);
        }
    }
}

/// Refuses a request whose body has not been read. A small declared remainder is read and
/// dropped first (never forwarded), so HTTP/2 ends the stream cleanly instead of resetting it
/// while the client is still sending, and HTTP/1 keeps the connection in sync. A large or
/// unknown-length body is not read: the stream is reset or the connection closed instead.
async fn refuse_unread(rejection: Rejection, body: Incoming) -> Rejection {
    const DRAIN_MAX: u64 = 64 * 1024;
    if !body.is_end_stream() && body.size_hint().upper().is_some_and(|n| n <= DRAIN_MAX) {
        let drain = Limited::new(body, DRAIN_MAX as usize).collect();
        let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
    }
    rejection
}

/// The body to forward, for a request whose declared length (if any) is within `limit`. A
/// declared length is streamed (hyper enforces it). A body of unknown length (chunked, or
/// HTTP/2 without content-length) is buffered up to the limit first, so an oversize body is
/// refused with 413 before anything reaches the upstream.
///
/// HTTP/2 bodies are buffered too: the length an HTTP/2 request declares is only checked
/// against its DATA frames when the stream ends, and an answer sent before then would let
/// excess data follow a request the upstream already took. Client trailers are never forwarded
/// (they could carry fields the header checks never saw).
async fn request_body(
    body: Incoming,
    declared: Option<u64>,
    version: http::Version,
    limit: u64,
    timeout: Duration,
    record: &mut RequestRecord,
) -> Result<ProxyBody, HttpError> {
    if let Some(len) = declared {
        if len == 0 && body.is_end_stream() {
            return Ok(empty());
        }
        if version != http::Version::HTTP_2 {
            return Ok(NoTrailers(body).boxed_unsync());
        }
    }
    if body.is_end_stream() {
        return Ok(empty());
    }
    let limited = Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX));
    match tokio::time::timeout(timeout, limited.collect()).await {
        Err(_) => Err(HttpError::BodyTimeout),
        Ok(Err(e)) => Err(read_error(&e, record)),
        Ok(Ok(collected)) => Ok(full(collected.to_bytes())),
    }
}

/// A streamed request body without its trailers.
struct NoTrailers(Incoming);

impl Body for NoTrailers {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            return match Pin::new(&mut self.0).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) if !frame.is_data() => continue,
                Poll::Ready(other) => Poll::Ready(other.map(|r| r.map_err(BoxError::from))),
                Poll::Pending => Poll::Pending,
            };
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.0.size_hint()
    }
}
