//! The request handler: a guard that owns the request's audit trail from the first line, the
//! pipeline ([`pipeline::run`]), the exchange with the upstream, and the response.
//!
//! `handle` settles the interaction id first (every response, refusals included, carries it),
//! runs [`inner`], maps a [`Rejection`] through [`crate::pipeline::rejection::answer`] — the
//! only place responses for refusals are made — and leaves exactly one audit record, composed
//! by [`crate::record::compose`], on every path:
//!
//! - The trail lives in a [`Pending`] guard from the first line. If hyper drops the handler
//!   (the client reset the stream or closed the connection), the guard's `Drop` writes the
//!   record as `cancelled`, `client_gone`.
//! - An answered request's trail rides in the response body ([`Sealed`]) and its record is
//!   written when hyper is done with the body: in full, or dropped early because the client
//!   left (`client_gone`).
//! - A request the upstream might act on (a method that is not safe, or a reserved
//!   idempotency key) is forwarded by a detached task that owns the trail: the exchange
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
use http_body_util::{BodyExt, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::conn::ConnInfo;
use crate::pipeline::idempotency::{Outcome, Reservation, Settled};
use crate::pipeline::{self, fapi, rejection, Admitted, Rejection, Trail};
use crate::record::{self, Head, Refusal};
use crate::runtime::{Runtime, Shared};
use crate::upstream::{self, UpstreamError, Vouched};
use portcullis_audit::Record;
pub(crate) use portcullis_base::body::{full, BoxError, ProxyBody};
use portcullis_base::text::bounded;
use portcullis_policy::signature::{RouteSignature, SignatureKind};
use portcullis_policy::ErrorDialect;

/// Handles one request on a connection; never fails (refusals are responses).
pub(crate) async fn handle(
    req: Request<Incoming>,
    conn: Arc<ConnInfo>,
    shared: Arc<Shared>,
) -> Result<Response<ProxyBody>, Infallible> {
    let started = Instant::now();
    let rt = shared.runtime.load_full();
    let (interaction_id, id_refusal) =
        fapi::interaction_id(req.headers(), rt.config.interaction_id);
    // With OTLP export the SDK's span sets the ids and the sampled flag; without it the
    // incoming trace is continued under a fresh span id of ours.
    #[cfg(feature = "otlp")]
    let (trace, span) = match &shared.otlp {
        Some(x) => {
            let (trace, span) = x.begin(req.headers());
            (trace, Some(span))
        }
        None => (
            crate::telemetry::TraceContext::from_headers(req.headers()),
            None,
        ),
    };
    #[cfg(not(feature = "otlp"))]
    let trace = crate::telemetry::TraceContext::from_headers(req.headers());
    // The id is always a UUID, so this never fails; it is built once for both directions.
    let id_header = HeaderValue::from_str(&interaction_id).unwrap_or(HeaderValue::from_static(""));
    conn.host_requests
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let head = Head {
        interaction_id,
        trace_id: trace.trace_id(),
        span_id: trace.span_id(),
        conn_id: conn.id,
        conn_members: Arc::clone(&conn.audit_members),
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
        peer_ip: Some(conn.peer.ip()),
        client_cert: conn.client_cert.clone(),
    };
    let answer = Answer {
        shared: Arc::clone(&shared),
        rt: Arc::clone(&rt),
        id_header,
        version: req.version(),
        head_only: req.method() == http::Method::HEAD,
        started,
        // The routes of the host the handshake chose: a refusal before the route match is
        // answered as that host's route would be, never as another host's.
        policies: rt
            .host(conn.listener, &conn.host_key)
            .map(|(_, h)| Arc::clone(&h.host.policies)),
    };
    let mut pending = Pending::new(head, answer);
    #[cfg(feature = "otlp")]
    if let Some(open) = pending.open.as_mut() {
        open.span = span;
    }
    let result = match id_refusal {
        Some(e) => Err(e.into()),
        // Before any stage runs: under `audit.queue_full: refuse`, nothing we cannot audit.
        None if shared.audit.refusing() => Err(portcullis_audit::AuditError::Unavailable.into()),
        None => inner(req, &conn, &rt, &trace, &mut pending).await,
    };
    Ok(pending.conclude(result))
}

/// Everything needed to turn a result into the response and write the record, wherever the
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
    /// The routes of the connection's host; `None` when a reload removed it.
    policies: Option<Arc<portcullis_policy::PolicySet>>,
}

impl Answer {
    /// The response for `result`, and how the record states it. `open` says what the request
    /// established before it was refused: its route chooses the error body and whether the
    /// refusal is signed.
    fn respond(
        &self,
        result: Result<Response<ProxyBody>, Rejection>,
        open: Option<&Open>,
    ) -> (Response<ProxyBody>, record::Outcome) {
        let (mut resp, refusal) = match result {
            Ok(resp) => (resp, None),
            Err(rejection) => {
                let resp = self.refusal(&rejection, open);
                (resp, Some(Refusal::of(&rejection)))
            }
        };
        resp.headers_mut()
            .insert(fapi::INTERACTION_ID, self.id_header.clone());
        let outcome = record::Outcome::Answered {
            status: resp.status().as_u16(),
            bytes_out: pipeline::http::declared_length(resp.headers()),
            took: self.started.elapsed(),
            refusal,
        };
        (resp, outcome)
    }

    /// The proxy's own refusal, in the route's error dialect and, on routes that sign their
    /// responses, signed as an upstream answer would be. A refusal made before the route was
    /// matched (framing and header checks, the FAPI headers, a full audit queue) answers as the
    /// route its method and canonical path name would; one whose path names no route (a
    /// non-canonical path, an unknown path or method) has no route to say either, and is
    /// answered in problem+json, unsigned.
    fn refusal(&self, rejection: &Rejection, open: Option<&Open>) -> Response<ProxyBody> {
        let id = self.id_header.to_str().unwrap_or_default();
        let algs = &self.rt.config.auth.dpop.challenge_algs;
        let trail = open.map(|o| &o.trail);
        let unrouted = || open.and_then(|o| self.route_named_by(&o.head));
        let route = trail.and_then(|t| t.route.clone()).or_else(unrouted);
        let route = route.as_deref();
        let dialect = route.map_or(ErrorDialect::Problem, |r| r.errors);
        let (mut parts, body) =
            rejection::answer(rejection, id, self.version, algs, dialect).into_parts();
        let signing = route
            .and_then(|r| r.signature)
            .filter(|s| s.sign_response)
            .zip(self.rt.config.signatures.response.as_ref());
        if let Some((sig, key)) = signing {
            // OBIE signs bodies: a refusal without one (an expired token) carries no
            // `x-jws-signature`. RFC 9421 signs the status, so every refusal is signed; its
            // `req` components only when the request's signature was verified.
            let bodiless_jws = body.is_empty() && matches!(sig.kind, SignatureKind::ObieJws(_));
            if !bodiless_jws {
                let verified = trail.and_then(|t| t.signature.as_ref());
                let now = self.shared.clock.now();
                // Signing a refusal cannot fail short of a header value the signer itself
                // makes being invalid; the refusal is then sent unsigned rather than replaced.
                let _ = crate::response_signing::sign_bytes(
                    &mut parts, &body, sig.kind, verified, key, now,
                );
            }
        }
        Response::from_parts(parts, full(body))
    }

    /// The route a request's method and path name, for a refusal made before the route was
    /// matched; only a canonical path is looked up, so nothing is resolved that the path check
    /// would refuse.
    fn route_named_by(&self, head: &Head) -> Option<Arc<portcullis_policy::Route>> {
        let method: http::Method = head.method.parse().ok()?;
        if head.path.ends_with(portcullis_base::text::TRUNCATED) {
            return None;
        }
        portcullis_base::path::check_path(&head.path).ok()?;
        let m = self.policies.as_ref()?.lookup(&method, &head.path).ok()?;
        Some(m.route)
    }
}

/// What a request's record is composed from, until it is written.
struct Open {
    head: Head,
    trail: Trail,
    /// The request's exported span (feature `otlp`), ended with the record.
    #[cfg(feature = "otlp")]
    span: Option<crate::otlp::RequestSpan>,
}

/// A request's trail until its record is written. Exactly one of three things writes it: the
/// body of the answer once delivered or dropped ([`Sealed`]), [`Pending::abandon`] when the
/// client left a detached exchange, or `Drop` when the handler itself was dropped.
struct Pending {
    open: Option<Box<Open>>,
    answer: Answer,
}

impl Pending {
    fn new(head: Head, answer: Answer) -> Pending {
        Pending {
            open: Some(Box::new(Open {
                head,
                trail: Trail::default(),
                #[cfg(feature = "otlp")]
                span: None,
            })),
            answer,
        }
    }

    /// The trail, for the pipeline and the exchange to extend; a placeholder only if it was
    /// already handed on, which the handler never does before it is done with it.
    fn trail(&mut self) -> &mut Trail {
        &mut self
            .open
            .get_or_insert_with(|| {
                Box::new(Open {
                    head: Head::default(),
                    trail: Trail::default(),
                    #[cfg(feature = "otlp")]
                    span: None,
                })
            })
            .trail
    }

    /// Maps the result to the response; the trail travels in the response body and the record
    /// is written when hyper is done with it.
    fn conclude(mut self, result: Result<Response<ProxyBody>, Rejection>) -> Response<ProxyBody> {
        let (resp, outcome) = self.answer.respond(result, self.open.as_deref());
        let Some(open) = self.open.take() else {
            return resp;
        };
        let (parts, body) = resp.into_parts();
        let bodiless = self.answer.head_only
            || parts.status.is_informational()
            || parts.status == http::StatusCode::NO_CONTENT
            || parts.status == http::StatusCode::NOT_MODIFIED;
        let sealed = Sealed {
            body,
            open: Some(open),
            outcome: Some(outcome),
            shared: Arc::clone(&self.answer.shared),
            bodiless,
            ended: false,
        };
        Response::from_parts(parts, sealed.boxed_unsync())
    }

    /// The client is gone and the exchange finished without it: the record is composed as if
    /// answered, marked `client_gone`, and written now.
    fn abandon(mut self, result: Result<Response<ProxyBody>, Rejection>) {
        let (_, outcome) = self.answer.respond(result, self.open.as_deref());
        if let Some(mut open) = self.open.take() {
            open.trail.client_gone = true;
            seal(&self.answer.shared, open, outcome);
        }
    }

    /// Moves the trail (and the duty to write the record) into a new guard, for a detached
    /// exchange.
    fn hand_over(&mut self) -> Pending {
        Pending {
            open: self.open.take(),
            answer: self.answer.clone(),
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(open) = self.open.take() {
            let took = self.answer.started.elapsed();
            seal(
                &self.answer.shared,
                open,
                record::Outcome::Cancelled { took },
            );
        }
    }
}

/// Writes a finished request: metrics, the trace span and the audit record, together.
fn seal(shared: &Shared, open: Box<Open>, outcome: record::Outcome) {
    let open = *open;
    #[cfg(feature = "otlp")]
    let span = open.span;
    let Open { head, trail, .. } = open;
    if let Some((Rejection::RateLimited(_), _)) = &trail.shadow {
        shared.metrics.rate_limit_refused("shadow");
    }
    if let record::Outcome::Answered {
        refusal: Some(Refusal {
            limited: Some(scope),
            ..
        }),
        ..
    } = &outcome
    {
        shared.metrics.rate_limit_refused(scope);
    }
    if let Some(crate::pipeline::contract::Answered {
        outcome: crate::pipeline::contract::AnswerOutcome::Drift(d),
        ..
    }) = &trail.contract_answer
    {
        shared
            .metrics
            .contract_response_drift(trail.route_id.as_deref(), d.keyword());
    }
    let rt = shared.runtime.load();
    // Who the detectors count against; nothing to copy when detection is off.
    let who = rt.config.detection.enabled.then(|| crate::detection::Who {
        cert: head.client_cert.clone(),
        token: trail.token.clone(),
        peer: head.peer_ip,
        route: trail.route.clone(),
    });
    let record = Box::new(record::compose(head, trail, outcome));
    let took = Duration::from_micros(record.total_latency_us);
    if record.decision == "shadow_deny" {
        shared
            .metrics
            .would_deny(record.route_id.as_deref(), record.reason.unwrap_or(""));
    }
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
    if let (Some(x), Some(span)) = (&shared.otlp, span) {
        x.end(
            span,
            &crate::otlp::Finished {
                route: record.route_id.as_deref(),
                method: &record.method,
                status: record.status,
                decision: record.decision,
                reason: record.reason,
            },
        );
    }
    // An alert's record follows the record of the request that fired it.
    let alerts = if let Some(who) = who {
        let to = crate::detection::Detection {
            cfg: &rt.config.detection,
            detect: &shared.detect,
            webhook: shared.webhook.as_ref(),
            fleet: shared.redis.as_ref(),
            audit: &shared.audit,
            now: shared.clock.now(),
        };
        crate::detection::after_request(&to, &record, &who)
    } else {
        Vec::new()
    };
    shared.audit.emit(Record::Request(record));
    for a in alerts {
        shared.audit.emit(Record::Alert(a));
    }
}

/// The response body with the request's trail: the record is written when hyper drops the
/// body, marked `client_gone` when the body had not been sent in full.
struct Sealed {
    body: ProxyBody,
    open: Option<Box<Open>>,
    outcome: Option<record::Outcome>,
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
        if let (Some(mut open), Some(outcome)) = (self.open.take(), self.outcome.take()) {
            if !self.bodiless && !self.ended && !self.body.is_end_stream() {
                open.trail.client_gone = true;
            }
            seal(&self.shared, open, outcome);
        }
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
    let (parts, body) = req.into_parts();
    let peer = pipeline::Peer {
        ip: conn.peer.ip(),
        cert: conn.client_cert.as_ref(),
    };
    // The host the handshake chose, as this config has it. A reload that removed it or
    // changed its names (see `Host::key`) leaves the connection with no host to be served as:
    // refused like a request for a host we do not serve, and the client reconnects.
    let Some((listener, host)) = rt.host(conn.listener, &conn.host_key) else {
        pipeline::body::discard(body).await;
        return Err(pipeline::http::HttpError::MisdirectedHost.into());
    };
    let cx = rt.context(&shared, listener, host);
    let admitted = pipeline::run(&parts, body, &peer, &cx, pending.trail()).await?;
    let route = Arc::clone(&admitted.route.route);
    // The config loader refuses routes that name an unknown upstream, so this is unreachable;
    // it still fails closed rather than panicking.
    let upstream = rt
        .upstreams
        .get(&route.upstream)
        .cloned()
        .ok_or(UpstreamError::Connect)?;
    let (evidence, idempotency, body) = Evidence::of(admitted);
    let reservation = match idempotency {
        Outcome::None => None,
        Outcome::Reserved(r) => Some(r),
        Outcome::Replay(stored) => {
            let (mut answer, bytes) = pipeline::idempotency::replay(&stored).into_parts();
            let mut body = full(bytes);
            if let Some(from) = &route.idempotency_current {
                let interaction_id = pending.answer.id_header.clone();
                let to = Forwarding {
                    conn,
                    evidence: &evidence,
                    rt,
                    interaction_id: &interaction_id,
                    trace,
                };
                let trail = pending.trail();
                trail.idempotency = Some("replayed_stored");
                if let Some((head, current)) =
                    current_state(from, &stored, &parts, &upstream, &to, trail).await
                {
                    trail.idempotency = Some("replayed_current");
                    let (h, mut current_head) = (&mut answer.headers, head);
                    // The stored status (201 for a created payment) with the state as it is now.
                    h.remove(CONTENT_LENGTH);
                    match current_head.headers.remove(http::header::CONTENT_TYPE) {
                        Some(ct) => h.insert(http::header::CONTENT_TYPE, ct),
                        None => h.remove(http::header::CONTENT_TYPE),
                    };
                    h.insert(
                        pipeline::idempotency::REPLAY_HEADER,
                        HeaderValue::from_static("current"),
                    );
                    body = if route.authz.response_rules.is_empty() {
                        full(current)
                    } else {
                        check_response_bytes(&mut answer, current, &route, &evidence)?
                    };
                }
            }
            return finish(answer, body, &evidence, rt, &shared).await;
        }
    };
    let uri = upstream
        .uri(parts.uri.path(), parts.uri.query())
        .map_err(|_| UpstreamError::Protocol)?;
    let host = pipeline::http::host(&parts);
    // Safe methods change nothing upstream, so they may be cancelled with their client.
    let detach = reservation.is_some() || !parts.method.is_safe();
    // Executing twice does no harm: a safe method without a body, or a reserved idempotency
    // key on an upstream declared to answer a repeated key with its first answer.
    let repeatable = (parts.method.is_safe() && body.is_end_stream())
        || (reservation.is_some() && upstream.config.retries.honours_idempotency_key);
    let mut out = Request::new(body);
    *out.method_mut() = parts.method;
    *out.uri_mut() = uri;
    *out.headers_mut() = parts.headers;
    Forwarding {
        conn,
        evidence: &evidence,
        rt,
        interaction_id: &pending.answer.id_header,
        trace,
    }
    .headers(out.headers_mut(), host.as_deref());
    let exchange = Exchange {
        out,
        repeatable,
        upstream,
        reservation,
        evidence,
        rt: Arc::clone(rt),
        shared,
    };
    if !detach {
        pending.trail().forwarded = true;
        return exchange.run(pending.trail()).await;
    }
    // Once forwarded, a request the upstream may act on is finished by the proxy: the task
    // owns the trail, so the record is written (and a reserved key completed) even if this
    // handler is dropped because the client left.
    let Ok(permit) = Arc::clone(&conn.detached).acquire_owned().await else {
        return Err(UpstreamError::Connect.into());
    };
    let mut owned = pending.hand_over();
    owned.trail().forwarded = true;
    let (tx, rx) = tokio::sync::oneshot::channel();
    conn.tasks.spawn(async move {
        let result = exchange.run(owned.trail()).await;
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

/// What a request sent upstream on the caller's behalf carries besides its own headers.
struct Forwarding<'a> {
    conn: &'a ConnInfo,
    evidence: &'a Evidence,
    rt: &'a Runtime,
    interaction_id: &'a HeaderValue,
    trace: &'a crate::telemetry::TraceContext,
}

impl Forwarding<'_> {
    /// Cleans the client's headers and adds what the proxy vouches for: peer, host, client
    /// certificate, interaction id, trace context and the verified token's identity headers.
    fn headers(&self, h: &mut HeaderMap, host: Option<&str>) {
        let forwarding = self.rt.config.client_cert_forwarding;
        upstream::prepare_headers(
            h,
            &Vouched {
                peer_ip: &self.conn.peer_ip_header,
                host,
                client_cert: self
                    .evidence
                    .has_client_cert
                    .then(|| self.conn.forwarded_cert(forwarding))
                    .flatten(),
                forwarding,
                interaction_id: self.interaction_id,
            },
        );
        self.trace.inject(h);
        vouch_for_token(h, self.evidence, &self.rt.config.auth.identity_headers);
    }
}

/// The request headers a current-state GET keeps: who is asking and in what terms, never the
/// replayed request's body, signature or key.
const CURRENT_STATE_HEADERS: [&str; 8] = [
    "host",
    "accept",
    "authorization",
    "dpop",
    "x-fapi-financial-id",
    "x-fapi-auth-date",
    "x-fapi-customer-ip-address",
    "x-customer-user-agent",
];

/// A replay on a route with `idempotency_current`: the resource's current state, read by a GET
/// on the route's upstream that carries the caller's identity as a forwarded request does.
/// `None` — the stored answer is sent as it is — when the stored answer does not name the
/// resource, or the upstream does not answer 200 with a body within the store's size limit:
/// the first answer is still a true answer, a second execution is never an option.
async fn current_state(
    from: &portcullis_policy::current::CurrentFrom,
    stored: &portcullis_state::idempotency::StoredResponse,
    request: &http::request::Parts,
    upstream: &upstream::UpstreamClient,
    to: &Forwarding<'_>,
    trail: &mut Trail,
) -> Option<(http::response::Parts, Bytes)> {
    let answer: serde_json::Value = serde_json::from_slice(&stored.body).ok()?;
    let path = from.render(&answer)?;
    let mut get = Request::new(full(Bytes::new()));
    *get.uri_mut() = upstream.uri(&path, None).ok()?;
    for name in CURRENT_STATE_HEADERS {
        for v in request.headers.get_all(name) {
            get.headers_mut().append(name, v.clone());
        }
    }
    to.headers(get.headers_mut(), pipeline::http::host(request).as_deref());
    let mut tries = upstream::Tries::default();
    let sent = upstream.send(get, true, &mut tries).await;
    trail.tries = Some(tries);
    let (resp, took) = sent.ok()?;
    trail.upstream = Some((resp.status().as_u16(), took));
    if resp.status() != http::StatusCode::OK {
        return None;
    }
    let (mut head, body) = resp.into_parts();
    upstream::clean_response_headers(&mut head.headers);
    let limit = to.rt.config.idempotency.max_response_bytes;
    let bytes = Limited::new(body, limit).collect().await.ok()?.to_bytes();
    Some((head, bytes))
}

/// What the answer of an admitted request still needs of its evidence: response rules, the
/// response signature and the DPoP nonce.
struct Evidence {
    route: Arc<portcullis_policy::Route>,
    /// The caller presented a verified client certificate (forwarded upstream).
    has_client_cert: bool,
    signature_route: Option<RouteSignature>,
    signature: pipeline::signature::Checked,
    claims: Option<Arc<pipeline::token::AccessToken>>,
    /// The scheme the token came in, for the challenge of a refusal the answer causes.
    scheme: Option<pipeline::token::Scheme>,
    consent: Option<portcullis_policy::rules::ConsentRecord>,
    dpop_nonce: Option<String>,
}

impl Evidence {
    /// The evidence, the idempotency outcome and the body of an admitted request.
    fn of(a: Admitted) -> (Evidence, Outcome, ProxyBody) {
        let evidence = Evidence {
            signature_route: a.route.route.signature,
            route: a.route.route,
            has_client_cert: a.identity.cert().is_some(),
            signature: a.signature,
            scheme: a.token.as_ref().map(|t| t.scheme()),
            claims: a.token.map(|t| Arc::clone(t.token())),
            consent: a.permit.into_consent(),
            dpop_nonce: a.dpop_nonce,
        };
        (evidence, a.idempotency, a.body)
    }
}

/// A request ready for the upstream, with what its answer needs: the reserved idempotency key,
/// the evidence for response rules and response signing. Owns everything, so it can run
/// detached from the client's connection.
struct Exchange {
    out: Request<ProxyBody>,
    /// The request may be sent again (to another endpoint) even after it may have arrived.
    repeatable: bool,
    upstream: Arc<upstream::UpstreamClient>,
    reservation: Option<Reservation>,
    evidence: Evidence,
    rt: Arc<Runtime>,
    shared: Arc<Shared>,
}

impl Exchange {
    async fn run(self, trail: &mut Trail) -> Result<Response<ProxyBody>, Rejection> {
        let Exchange {
            out,
            repeatable,
            upstream,
            reservation,
            evidence,
            rt,
            shared,
        } = self;
        let route = &evidence.route;
        let head = out.method() == http::Method::HEAD;
        let mut tries = upstream::Tries::default();
        let sent = upstream.send(out, repeatable, &mut tries).await;
        trail.tries = Some(tries);
        let (resp, took) = match sent {
            Ok(sent) => sent,
            Err(e) => {
                // No answer: release the key so the client may retry, or keep it reserved
                // (the upstream may have acted) when so configured.
                if let Some(r) = reservation {
                    if r.release_on_upstream_error {
                        trail.idempotency = Some("released");
                    } else {
                        trail.idempotency = Some("kept");
                        r.keep();
                    }
                }
                return Err(e.into());
            }
        };
        trail.upstream = Some((resp.status().as_u16(), took));
        let (mut parts, body) = resp.into_parts();
        upstream::clean_response_headers(&mut parts.headers);
        // The contract's responses first: the upstream's own bytes are what drift is about,
        // before any response rule changes them.
        let contract = route.contract.as_ref().filter(|c| c.checks_responses());
        let body = match contract {
            None => body,
            Some(c) => {
                let (answered, read) =
                    pipeline::contract::check_answer(c, &parts, body, head).await;
                let refusal = answered.refusal();
                trail.contract_answer = Some(answered);
                if let Some(r) = refusal {
                    return Err(r);
                }
                match read {
                    Err(body) => body,
                    Ok(pipeline::contract::Body::Failed) => {
                        return Err(UpstreamError::Protocol.into())
                    }
                    Ok(pipeline::contract::Body::Read(bytes)) => {
                        let body = if route.authz.response_rules.is_empty() {
                            full(bytes)
                        } else {
                            check_response_bytes(&mut parts, bytes, route, &evidence)?
                        };
                        return settle_and_finish(
                            parts,
                            body,
                            reservation,
                            trail,
                            &evidence,
                            &rt,
                            &shared,
                        )
                        .await;
                    }
                }
            }
        };
        let body = if route.authz.response_rules.is_empty() {
            body.map_err(BoxError::from).boxed_unsync()
        } else {
            check_response(&mut parts, body, route, &evidence).await?
        };
        settle_and_finish(parts, body, reservation, trail, &evidence, &rt, &shared).await
    }
}

/// Completes a reserved idempotency key with the answer, then [`finish`].
async fn settle_and_finish(
    parts: http::response::Parts,
    body: ProxyBody,
    reservation: Option<Reservation>,
    trail: &mut Trail,
    evidence: &Evidence,
    rt: &Runtime,
    shared: &Shared,
) -> Result<Response<ProxyBody>, Rejection> {
    let body = match reservation {
        None => body,
        Some(r) => {
            let max = rt.config.idempotency.max_response_bytes;
            let now = shared.clock.now();
            let (settled, label) = pipeline::idempotency::settle(r, &parts, body, max, now).await;
            trail.idempotency = Some(label);
            match settled {
                Settled::Send(bytes) => full(bytes),
                Settled::Withheld => return Err(UpstreamError::Protocol.into()),
            }
        }
    };
    finish(parts, body, evidence, rt, shared).await
}

/// The last steps of every response that passed the pipeline, forwarded or replayed: the
/// route's response signature, and a fresh DPoP nonce on nonce routes.
async fn finish(
    mut parts: http::response::Parts,
    body: ProxyBody,
    sealed: &Evidence,
    rt: &Runtime,
    shared: &Shared,
) -> Result<Response<ProxyBody>, Rejection> {
    // Routes with `sign_response` sign what they send; only they buffer responses.
    let body = match (sealed.signature_route, &rt.config.signatures.response) {
        (Some(s), Some(key)) if s.sign_response => {
            crate::response_signing::sign_response(
                &mut parts,
                body,
                s.kind,
                sealed.signature.verified(),
                key,
                shared.clock.now(),
            )
            .await?
        }
        _ => body,
    };
    // RFC 9449 §8.2: a fresh nonce rides on successful responses of nonce routes too.
    if let Some(n) = sealed
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
/// granted set; a `withhold` rule refuses the response (502), a `forbid` rule refuses the
/// request for a foreign object (403), a `remove` rule drops offending array elements. A
/// successful response that is not JSON cannot be checked and is withheld.
async fn check_response(
    parts: &mut http::response::Parts,
    body: Incoming,
    route: &portcullis_policy::Route,
    evidence: &Evidence,
) -> Result<ProxyBody, Rejection> {
    let bytes = match Limited::new(body, MAX_CHECKED_RESPONSE).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Err(response_leak(&route.authz.response_rules[0].id)),
    };
    check_response_bytes(parts, bytes, route, evidence)
}

/// A withheld response (502) is no refusal of the token: no challenge, so no scheme.
fn response_leak(rule: &str) -> Rejection {
    use portcullis_policy::rules::{AuthzError, Denial};
    Rejection::Authz(
        Denial {
            error: AuthzError::ResponseLeak,
            rule: rule.to_string(),
            hidden: false,
            shadow: false,
        },
        None,
    )
}

/// [`check_response`] on a body already read in full.
fn check_response_bytes(
    parts: &mut http::response::Parts,
    bytes: Bytes,
    route: &portcullis_policy::Route,
    evidence: &Evidence,
) -> Result<ProxyBody, Rejection> {
    use portcullis_policy::rules::{AuthzError, Denial, ResponseAction};
    let claims = evidence.claims.as_ref().map(|t| &t.claims);
    let consent = evidence.consent.as_ref();
    let leak = response_leak;
    let first_rule = route.authz.response_rules[0].id.as_str();
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
    .map_err(|rule| match rule.action {
        ResponseAction::Forbid => Rejection::Authz(
            Denial {
                error: AuthzError::Object,
                rule: rule.id.clone(),
                hidden: false,
                shadow: false,
            },
            evidence.scheme,
        ),
        ResponseAction::Withhold | ResponseAction::Remove => leak(&rule.id),
    })?;
    if !changed {
        return Ok(full(bytes));
    }
    let out = Bytes::from(doc.to_string());
    parts.headers.remove(CONTENT_LENGTH);
    Ok(full(out))
}

/// Identity headers from the bound token's claims (client copies are always removed first), and
/// the credentials removed unless the route forwards them.
fn vouch_for_token(
    h: &mut HeaderMap,
    evidence: &Evidence,
    identity_headers: &[(String, http::HeaderName)],
) {
    for (_, name) in identity_headers {
        h.remove(name);
    }
    let Some(token) = &evidence.claims else {
        return;
    };
    let forward = evidence
        .route
        .auth
        .as_ref()
        .is_some_and(|a| a.forward_credentials);
    if !forward {
        h.remove(http::header::AUTHORIZATION);
        h.remove("dpop");
    }
    for (claim, name) in identity_headers {
        // `client_id` and `scope` are the verified client and scopes, wherever the issuer puts
        // them (`azp`, `scp`, ...); other names are read from the claims as they are.
        let value = match (claim.as_str(), token.claims.get(claim)) {
            ("client_id", _) => match &token.client_id {
                Some(c) => c.clone(),
                None => continue,
            },
            ("scope", _) if token.scopes.is_empty() => continue,
            ("scope", _) => token.scopes.join(" "),
            (_, Some(serde_json::Value::String(s))) => s.clone(),
            (_, Some(serde_json::Value::Number(n))) => n.to_string(),
            (_, Some(serde_json::Value::Array(a))) => a
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
