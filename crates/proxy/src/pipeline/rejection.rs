//! The one place that turns a refusal into a response.
//!
//! Stages return typed errors; they never build responses. Here every error maps to an HTTP
//! status, a stable reason code, an optional `WWW-Authenticate` challenge and an RFC 9457
//! `application/problem+json` body that carries the reason code and the `x-fapi-interaction-id`,
//! or, on OBIE routes (`errors: obie`), the OBIE error body with the `UK.OBIE.*` error code
//! each stage's module maps its errors to ([`Rejection::obie`], [`all_obie_codes`]); there the
//! reason code is in the audit record only, since `OBErrorResponse1` admits no other members. One module per stage chooses the statuses of its
//! errors; every match is exhaustive — no catch-all arm — so a new error cannot silently become
//! a 500, and the list of reason codes ([`all_reasons`]) is derived from the error types. The
//! body says what is wrong in public words; the detail goes to the audit record.

mod authz;
mod binding;
mod contract;
mod http;
mod idempotency;
mod identity;
mod quarantine;
mod rate_limit;
mod route;
mod signature;
mod token;
mod upstream;

use ::http::header::{HeaderValue, ALLOW, CONTENT_LENGTH, CONTENT_TYPE, WWW_AUTHENTICATE};
use ::http::{Response, StatusCode};
use bytes::Bytes;

use crate::pipeline::binding::BindingError;
use crate::pipeline::contract::ResponseRefusal;
use crate::pipeline::fapi::FapiError;
use crate::pipeline::http::HttpError;
use crate::pipeline::idempotency::{Dialect, IdempotencyError};
use crate::pipeline::identity::IdentityError;
use crate::pipeline::quarantine::Quarantined;
use crate::pipeline::ratelimit::Limited;
use crate::pipeline::signature::SignatureError;
use crate::pipeline::token::{Scheme, TokenError};
use crate::upstream::UpstreamError;
use portcullis_audit::AuditError;
use portcullis_base::path::PathError;
use portcullis_base::variants::Variants;
use portcullis_policy::contract::Violation;
use portcullis_policy::rules::Denial;
use portcullis_policy::{ErrorDialect, NoRoute};

portcullis_base::variants! {
    /// Every way a request is refused.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub enum Rejection {
        Http(HttpError),
        Path(PathError),
        Route(NoRoute),
        Fapi(FapiError),
        Identity(IdentityError),
        /// A token error, with the scheme the client used (for the challenge).
        Token(TokenError, Scheme),
        Binding(BindingError),
        /// RFC 9449 §9: the proof needs (a fresh) server nonce; carries the nonce to send.
        UseDpopNonce(String),
        /// A request signature is missing or does not verify (OBIE `x-jws-signature`: 400 with the
        /// OBIE error body; RFC 9421: 401).
        Signature(SignatureError),
        /// The request does not fit the OpenAPI operation its route names (400).
        Contract(Violation),
        /// The upstream's answer does not fit the operation's responses, on a route that
        /// enforces them: withheld (502).
        ContractResponse(ResponseRefusal),
        /// A scope, consent, object or response rule denied the request; with the scheme the
        /// client's token came in, on routes that take one (for the challenge).
        Authz(Denial, Option<Scheme>),
        Upstream(UpstreamError),
        /// The audit log cannot take the record (`audit.queue_full: refuse`).
        Audit(AuditError),
        /// A rate limit refused the request.
        RateLimited(Limited),
        /// An idempotency-key refusal, in the route's error dialect (OBIE routes answer
        /// in the OBIE error body).
        Idempotency(IdempotencyError, Dialect),
        /// A detector quarantined the client (`portcullis-detect`): 403 with `Retry-After`.
        Quarantined(Quarantined),
    }
}

/// The stage a refusal came from, for the audit record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Http,
    Route,
    Fapi,
    Identity,
    Token,
    Binding,
    Signature,
    Contract,
    Authz,
    Upstream,
    Audit,
    RateLimit,
    Idempotency,
    Detect,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Http => "http",
            Stage::Route => "route",
            Stage::Fapi => "fapi",
            Stage::Identity => "identity",
            Stage::Token => "token",
            Stage::Binding => "binding",
            Stage::Signature => "signature",
            Stage::Contract => "contract",
            Stage::Authz => "authz",
            Stage::Upstream => "upstream",
            Stage::Audit => "audit",
            Stage::RateLimit => "rate_limit",
            Stage::Idempotency => "idempotency",
            Stage::Detect => "detect",
        }
    }
}

impl From<HttpError> for Rejection {
    fn from(e: HttpError) -> Self {
        Rejection::Http(e)
    }
}
impl From<AuditError> for Rejection {
    fn from(e: AuditError) -> Self {
        Rejection::Audit(e)
    }
}
impl From<PathError> for Rejection {
    fn from(e: PathError) -> Self {
        Rejection::Path(e)
    }
}
impl From<NoRoute> for Rejection {
    fn from(e: NoRoute) -> Self {
        Rejection::Route(e)
    }
}
impl From<FapiError> for Rejection {
    fn from(e: FapiError) -> Self {
        Rejection::Fapi(e)
    }
}
impl From<IdentityError> for Rejection {
    fn from(e: IdentityError) -> Self {
        Rejection::Identity(e)
    }
}
impl From<BindingError> for Rejection {
    fn from(e: BindingError) -> Self {
        Rejection::Binding(e)
    }
}
impl From<UpstreamError> for Rejection {
    fn from(e: UpstreamError) -> Self {
        Rejection::Upstream(e)
    }
}

impl From<Quarantined> for Rejection {
    fn from(e: Quarantined) -> Self {
        Rejection::Quarantined(e)
    }
}

impl From<Limited> for Rejection {
    fn from(e: Limited) -> Self {
        Rejection::RateLimited(e)
    }
}

/// What the audit record says was decided about a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// A shadow rule or quota would have refused it; it was let through.
    ShadowDeny,
    /// A check refused it.
    Deny,
    /// Nothing was decided about the request itself: a dependency could not answer (fail
    /// closed), the upstream failed, or the audit log could not take the record.
    Error,
    /// The client left before an answer was made.
    Cancelled,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::ShadowDeny => "shadow_deny",
            Decision::Deny => "deny",
            Decision::Error => "error",
            Decision::Cancelled => "cancelled",
        }
    }
}

/// Status, reason code and public message of one refusal.
pub struct Wire {
    pub status: StatusCode,
    pub reason: &'static str,
    pub detail: &'static str,
}

impl Wire {
    fn new(status: StatusCode, reason: &'static str, detail: &'static str) -> Wire {
        Wire {
            status,
            reason,
            detail,
        }
    }
}

impl Rejection {
    /// The reason recorded in the audit log and metrics: the wire reason, except that a denial
    /// hidden as 404 records why it was denied.
    pub fn audit_reason(&self) -> &'static str {
        match self {
            Rejection::Authz(d, _) if d.hidden => "authz.object_hidden",
            other => other.wire().reason,
        }
    }

    /// Deny, or error when nothing could be decided: an unavailable dependency is refused with
    /// 503 by the stage that needed it, and the upstream's and the audit log's failures are
    /// errors too.
    pub fn decision(&self) -> Decision {
        match self {
            Rejection::Upstream(_) | Rejection::Audit(_) => Decision::Error,
            Rejection::Token(..)
            | Rejection::Binding(_)
            | Rejection::Signature(_)
            | Rejection::Authz(..)
            | Rejection::RateLimited(_)
            | Rejection::Idempotency(..)
                if self.wire().status == StatusCode::SERVICE_UNAVAILABLE =>
            {
                Decision::Error
            }
            Rejection::Http(_)
            | Rejection::Path(_)
            | Rejection::Route(_)
            | Rejection::Fapi(_)
            | Rejection::Identity(_)
            | Rejection::Token(..)
            | Rejection::Binding(_)
            | Rejection::UseDpopNonce(_)
            | Rejection::Signature(_)
            | Rejection::Contract(_)
            | Rejection::ContractResponse(_)
            | Rejection::Authz(..)
            | Rejection::RateLimited(_)
            | Rejection::Idempotency(..)
            | Rejection::Quarantined(_) => Decision::Deny,
        }
    }

    /// The policy rule that refused, where one did.
    pub fn rule(&self) -> Option<&str> {
        match self {
            Rejection::Authz(d, _) => Some(&d.rule),
            Rejection::Http(_)
            | Rejection::Path(_)
            | Rejection::Route(_)
            | Rejection::Fapi(_)
            | Rejection::Identity(_)
            | Rejection::Token(..)
            | Rejection::Binding(_)
            | Rejection::UseDpopNonce(_)
            | Rejection::Signature(_)
            | Rejection::Contract(_)
            | Rejection::ContractResponse(_)
            | Rejection::Upstream(_)
            | Rejection::Audit(_)
            | Rejection::RateLimited(_)
            | Rejection::Idempotency(..)
            | Rejection::Quarantined(_) => None,
        }
    }

    pub fn stage(&self) -> Stage {
        match self {
            Rejection::Http(_) => Stage::Http,
            Rejection::Path(_) | Rejection::Route(_) => Stage::Route,
            Rejection::Fapi(_) => Stage::Fapi,
            Rejection::Identity(_) => Stage::Identity,
            Rejection::Token(..) => Stage::Token,
            Rejection::Binding(_) | Rejection::UseDpopNonce(_) => Stage::Binding,
            Rejection::Signature(_) => Stage::Signature,
            Rejection::Contract(_) | Rejection::ContractResponse(_) => Stage::Contract,
            Rejection::Authz(..) => Stage::Authz,
            Rejection::Upstream(_) => Stage::Upstream,
            Rejection::Audit(_) => Stage::Audit,
            Rejection::RateLimited(_) => Stage::RateLimit,
            Rejection::Idempotency(..) => Stage::Idempotency,
            Rejection::Quarantined(_) => Stage::Detect,
        }
    }

    /// Whether the connection should be closed after this response (framing is in doubt).
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            Rejection::Http(
                HttpError::ConflictingFraming
                    | HttpError::BadContentLength
                    | HttpError::BadTransferEncoding
                    | HttpError::BodyTooLarge
                    | HttpError::BodyTimeout
                    | HttpError::BodyRead
            ) | Rejection::Identity(
                IdentityError::ClientCertExpired
                    | IdentityError::ClientCertRevoked
                    | IdentityError::ClientCertRevocationUnknown
            )
        )
    }

    pub fn wire(&self) -> Wire {
        match self {
            Rejection::Http(e) => http::wire(*e),
            Rejection::Path(e) => route::path(*e),
            Rejection::Route(e) => route::wire(e),
            Rejection::Fapi(e) => http::fapi(*e),
            Rejection::Identity(e) => identity::wire(*e),
            Rejection::Token(e, _) => token::wire(*e),
            Rejection::Binding(e) => binding::wire(*e),
            Rejection::UseDpopNonce(_) => binding::use_nonce(),
            Rejection::Signature(e) => signature::wire(*e),
            Rejection::Contract(v) => contract::wire(v),
            Rejection::ContractResponse(r) => contract::response(*r),
            Rejection::Authz(d, _) => authz::wire(d),
            Rejection::Upstream(e) => upstream::wire(*e),
            Rejection::Audit(e) => upstream::audit(*e),
            Rejection::RateLimited(l) => rate_limit::wire(l),
            Rejection::Idempotency(e, dialect) => idempotency::wire(*e, *dialect),
            Rejection::Quarantined(_) => quarantine::wire(),
        }
    }

    /// The `WWW-Authenticate` challenge, where the refusal is about credentials
    /// (RFC 6750 §3, RFC 9449 §7.1).
    /// `dpop_algs` are the DPoP proof algorithms this server accepts, space-separated: the
    /// `algs` parameter must name what the verifier really takes.
    pub fn challenge(&self, dpop_algs: &str) -> Option<String> {
        let algs = format!("algs=\"{dpop_algs}\"");
        match self {
            Rejection::Token(e, scheme) => token::challenge(*e, *scheme, &algs),
            Rejection::Binding(e) => binding::challenge(*e, &algs),
            Rejection::UseDpopNonce(_) => Some(format!("DPoP error=\"use_dpop_nonce\", {algs}")),
            Rejection::Authz(d, scheme) => authz::challenge(d, *scheme, &algs),
            // A missing client certificate is a TLS-level credential; there is no HTTP auth
            // scheme for it, so no challenge (RFC 9110 §11.6.1 requires one only for schemes).
            // OBIE answers in its error body, without a challenge; RFC 9421 defines no
            // authentication scheme to challenge with (its `Accept-Signature` is not sent).
            Rejection::Http(_)
            | Rejection::Path(_)
            | Rejection::Route(_)
            | Rejection::Fapi(_)
            | Rejection::Identity(_)
            | Rejection::Signature(_)
            | Rejection::Contract(_)
            | Rejection::ContractResponse(_)
            | Rejection::Upstream(_)
            | Rejection::Audit(_)
            | Rejection::RateLimited(_)
            | Rejection::Idempotency(..)
            | Rejection::Quarantined(_) => None,
        }
    }
}

/// Builds the refusal response in the route's error dialect, with its body as bytes (what a
/// response signature covers). `interaction_id` is already validated or generated; `version`
/// is the request's HTTP version.
///
/// On OBIE routes the body is the OBIE error body (`OBErrorResponse1`), except for an expired
/// access token: OBIE answers that with 401 and no body, the challenge alone saying what to do.
/// Other 401s on OBIE routes keep the error body, which names the header at fault: OBIE's
/// OpenAPI defines no body for a 401 and its clients ignore one, while an operator debugging a
/// binding or signature failure needs the code. Elsewhere the body is RFC 9457 problem+json
/// with the reason code.
pub(crate) fn answer(
    rejection: &Rejection,
    interaction_id: &str,
    version: ::http::Version,
    dpop_algs: &str,
    dialect: ErrorDialect,
) -> Response<Bytes> {
    let w = rejection.wire();
    let body = match dialect {
        ErrorDialect::Obie if !rejection.obie_has_body() => None,
        ErrorDialect::Obie => {
            let mut b = obie_body(&w, &rejection.obie(), interaction_id);
            // A contract refusal names the member at fault (`Path`, a JSON pointer) and the
            // keyword it broke; nothing of its value.
            if let Rejection::Contract(v) = rejection {
                b["Errors"][0]["Path"] = serde_json::Value::String(v.pointer.clone());
                b["Errors"][0]["Message"] =
                    serde_json::Value::String(format!("{} ({})", w.detail, v.keyword));
            }
            Some((b, "application/json"))
        }
        ErrorDialect::Problem => {
            let mut b = serde_json::json!({
                "type": format!("urn:portcullis:problem:{}", w.reason),
                "title": w.status.canonical_reason().unwrap_or("Error"),
                "status": w.status.as_u16(),
                "detail": w.detail,
                "reason": w.reason,
                "interaction_id": interaction_id,
            });
            // RFC 9457 §3.2 extension members: where, and which keyword.
            if let Rejection::Contract(v) = rejection {
                b["pointer"] = serde_json::Value::String(v.pointer.clone());
                b["keyword"] = serde_json::Value::String(v.keyword.clone());
            }
            Some((b, "application/problem+json"))
        }
    };
    let mut resp = Response::new(match &body {
        Some((b, _)) => Bytes::from(b.to_string()),
        None => Bytes::new(),
    });
    *resp.status_mut() = w.status;
    let h = resp.headers_mut();
    match body {
        Some((_, content_type)) => {
            h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        }
        None => {
            h.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
        }
    }
    if let Some(c) = rejection
        .challenge(dpop_algs)
        .and_then(|c| HeaderValue::from_str(&c).ok())
    {
        h.insert(WWW_AUTHENTICATE, c);
    }
    if let Rejection::UseDpopNonce(n) = rejection {
        if let Ok(n) = HeaderValue::from_str(n) {
            h.insert("dpop-nonce", n);
        }
    }
    // RFC 6585 §4 / RFC 9110 §10.2.3, and draft-ietf-httpapi-ratelimit-headers.
    if let Rejection::RateLimited(l) = rejection {
        let t = l.retry_after_s;
        let rows = [
            (::http::header::RETRY_AFTER.as_str(), t.to_string()),
            ("ratelimit-policy", l.policy.clone()),
            ("ratelimit", format!("\"{}\";r=0;t={t}", l.name)),
        ];
        for (name, v) in rows {
            if let Ok(v) = HeaderValue::from_str(&v) {
                h.insert(name, v);
            }
        }
    }
    if let Rejection::Quarantined(q) = rejection {
        h.insert(
            ::http::header::RETRY_AFTER,
            HeaderValue::from(q.retry_after_s),
        );
    }
    if let Rejection::Route(NoRoute::MethodNotAllowed { allow }) = rejection {
        let list: Vec<&str> = allow.iter().map(|m| m.as_str()).collect();
        if let Ok(v) = HeaderValue::from_str(&list.join(", ")) {
            h.insert(ALLOW, v);
        }
    }
    // HTTP/1 only: `Connection` is a connection-specific header that HTTP/2 forbids
    // (RFC 9113 §8.2.2); there the stream simply ends.
    if rejection.closes_connection() && version < ::http::Version::HTTP_2 {
        h.insert(
            ::http::header::CONNECTION,
            HeaderValue::from_static("close"),
        );
    }
    resp
}

/// Every (status, reason code, public message) a refusal can have, in stage order, derived from
/// the error types: the reason code table in the documentation is made from it.
pub fn all_reasons() -> Vec<(u16, &'static str, &'static str)> {
    let mut all: Vec<(u16, &'static str, &'static str)> = Vec::new();
    for r in Rejection::variants() {
        let w = r.wire();
        let row = (w.status.as_u16(), w.reason, w.detail);
        if !all
            .iter()
            .any(|(s, reason, _)| (*s, *reason) == (row.0, row.1))
        {
            all.push(row);
        }
    }
    all
}

/// The OBIE error code of a refusal on an OBIE route, and the header, claim or field it
/// concerns (`Path`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObieError {
    pub code: &'static str,
    pub path: Option<&'static str>,
}

impl ObieError {
    fn new(code: &'static str, path: Option<&'static str>) -> ObieError {
        ObieError { code, path }
    }
}

// The OBIE Read/Write API "Standard Error Codes" (v3.1) this module answers with, besides the
// `UK.OBIE.Signature.*` codes of the signature module.
const HEADER_MISSING: &str = "UK.OBIE.Header.Missing";
const HEADER_INVALID: &str = "UK.OBIE.Header.Invalid";
const FIELD_INVALID: &str = "UK.OBIE.Field.Invalid";
const FIELD_MISSING: &str = "UK.OBIE.Field.Missing";
const FIELD_UNEXPECTED: &str = "UK.OBIE.Field.Unexpected";
const NOT_FOUND: &str = "UK.OBIE.Resource.NotFound";
const INVALID_FORMAT: &str = "UK.OBIE.Resource.InvalidFormat";
const CONSENT_MISMATCH: &str = "UK.OBIE.Resource.ConsentMismatch";
const CONSENT_STATUS: &str = "UK.OBIE.Resource.InvalidConsentStatus";
const UNEXPECTED: &str = "UK.OBIE.UnexpectedError";

impl Rejection {
    /// Whether the refusal has an error body on an OBIE route: all but an expired access token,
    /// which OBIE answers with 401 and no body (the challenge says what to do).
    pub fn obie_has_body(&self) -> bool {
        !matches!(self, Rejection::Token(TokenError::Expired, _))
    }

    /// The OBIE error code every refusal answers with on an OBIE route; each stage's module
    /// chooses the codes of its errors, exhaustively.
    pub fn obie(&self) -> ObieError {
        match self {
            Rejection::Http(e) => http::obie(*e),
            // The request target is the one field every request has.
            Rejection::Path(_) => ObieError::new(FIELD_INVALID, None),
            Rejection::Route(e) => route::obie(e),
            Rejection::Fapi(e) => http::fapi_obie(*e),
            Rejection::Identity(e) => identity::obie(*e),
            Rejection::Token(e, _) => token::obie(*e),
            Rejection::Binding(e) => binding::obie(*e),
            Rejection::UseDpopNonce(_) => binding::use_nonce_obie(),
            Rejection::Signature(SignatureError::Jws(e)) => signature::obie(*e),
            Rejection::Signature(SignatureError::Http(e)) => signature::http_obie(*e),
            Rejection::Contract(v) => contract::obie(v),
            Rejection::ContractResponse(_) => ObieError::new(UNEXPECTED, None),
            Rejection::Authz(d, _) => authz::obie(d),
            Rejection::Upstream(e) => upstream::obie(*e),
            Rejection::Audit(e) => upstream::audit_obie(*e),
            Rejection::RateLimited(l) => rate_limit::obie(l),
            Rejection::Idempotency(e, _) => idempotency::obie(*e),
            Rejection::Quarantined(_) => quarantine::obie(),
        }
    }
}

/// Every (reason code as audited, status, OBIE error code and `Path`) a refusal on an OBIE
/// route can have, derived from the error types: the table in the documentation is made from
/// it. `None`: answered without a body. Idempotency refusals appear with their OBIE statuses
/// only.
pub fn all_obie_codes() -> Vec<(&'static str, u16, Option<ObieError>)> {
    let mut all = Vec::new();
    for r in Rejection::variants() {
        if matches!(r, Rejection::Idempotency(_, Dialect::Ietf)) {
            continue;
        }
        let ob = r.obie_has_body().then(|| r.obie());
        let row = (r.audit_reason(), r.wire().status.as_u16(), ob);
        if !all.contains(&row) {
            all.push(row);
        }
    }
    all
}

/// OBErrorResponse1: `Code` (status and phrase), `Id` (the interaction id), `Message`, and
/// `Errors[{ErrorCode, Message, Path}]`.
fn obie_body(w: &Wire, ob: &ObieError, interaction_id: &str) -> serde_json::Value {
    let phrase: String = w
        .status
        .canonical_reason()
        .unwrap_or("Error")
        .split_whitespace()
        .collect();
    let mut err = serde_json::json!({"ErrorCode": ob.code, "Message": w.detail});
    if let Some(p) = ob.path {
        err["Path"] = serde_json::Value::String(p.into());
    }
    serde_json::json!({
        "Code": format!("{} {phrase}", w.status.as_u16()),
        "Id": interaction_id,
        "Message": w.detail,
        "Errors": [err],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::idempotency::{Dialect, IdempotencyError as I};

    fn respond(
        r: &Rejection,
        id: &str,
        version: ::http::Version,
        algs: &str,
        d: ErrorDialect,
    ) -> Response<Bytes> {
        answer(r, id, version, algs, d)
    }

    async fn answer_in(r: &Rejection, d: ErrorDialect) -> (u16, serde_json::Value) {
        let resp = respond(r, "id-1", ::http::Version::HTTP_11, "ES256", d);
        let status = resp.status().as_u16();
        (status, serde_json::from_slice(resp.body()).unwrap())
    }

    #[test]
    fn dpop_challenges_name_the_configured_algorithms() {
        let r = Rejection::Token(TokenError::Missing, Scheme::Bearer);
        let resp = respond(
            &r,
            "id-1",
            ::http::Version::HTTP_11,
            "ES256",
            ErrorDialect::Problem,
        );
        let c = resp.headers()[WWW_AUTHENTICATE].to_str().unwrap();
        assert_eq!(c, "Bearer, DPoP algs=\"ES256\"");
        let r = Rejection::Token(TokenError::Expired, Scheme::DPoP);
        let c = r.challenge("PS256 EdDSA").unwrap();
        assert_eq!(c, "DPoP error=\"invalid_token\", algs=\"PS256 EdDSA\"");
    }

    /// RFC 6750 §3.1 / RFC 9449 §7.1: every 403 denial challenges with `insufficient_scope`
    /// in the client's scheme; no other denial (400, 502, 503, a hidden 404) and no denial on a
    /// route without a token carries a challenge.
    #[test]
    fn denials_challenge_with_insufficient_scope_exactly_when_they_are_403() {
        let mut seen = 0;
        for r in Rejection::variants() {
            let Rejection::Authz(d, scheme) = &r else {
                continue;
            };
            let c = r.challenge("ES256 PS256");
            let status = r.wire().status;
            match (status == StatusCode::FORBIDDEN, scheme, &c) {
                (true, Some(Scheme::Bearer), Some(c)) => {
                    assert!(c.starts_with("Bearer error=\"insufficient_scope\""), "{c}");
                    assert!(!c.contains("algs"), "{c}");
                }
                (true, Some(Scheme::DPoP), Some(c)) => {
                    assert!(c.starts_with("DPoP error=\"insufficient_scope\""), "{c}");
                    assert!(c.ends_with(", algs=\"ES256 PS256\""), "{c}");
                }
                (true, None, None) | (false, _, None) => {}
                other => panic!("{d:?} {status}: {other:?}"),
            }
            if d.hidden {
                assert_eq!((status, &c), (StatusCode::NOT_FOUND, &None), "{d:?}");
            }
            seen += 1;
        }
        assert!(seen > 40, "{seen}");
        let scope = |s: Option<Scheme>| {
            let d = Denial {
                error: portcullis_policy::rules::AuthzError::Scope("accounts".into()),
                rule: "scopes".into(),
                hidden: false,
                shadow: false,
            };
            Rejection::Authz(d, s).challenge("ES256")
        };
        assert_eq!(
            scope(Some(Scheme::Bearer)).as_deref(),
            Some("Bearer error=\"insufficient_scope\", scope=\"accounts\"")
        );
        assert_eq!(
            scope(Some(Scheme::DPoP)).as_deref(),
            Some("DPoP error=\"insufficient_scope\", scope=\"accounts\", algs=\"ES256\"")
        );
        assert_eq!(scope(None), None);
    }

    #[tokio::test]
    async fn idempotency_refusals_on_obie_routes_use_the_obie_error_body() {
        let (s, b) = answer_in(
            &Rejection::Idempotency(I::Mismatch, Dialect::Ietf),
            ErrorDialect::Problem,
        )
        .await;
        assert_eq!(
            (s, b["reason"].as_str()),
            (422, Some("idempotency.key_reused"))
        );
        let cases = [
            (I::Mismatch, 400, "UK.OBIE.Header.Invalid"),
            (I::KeyMissing, 400, "UK.OBIE.Header.Missing"),
            (I::KeyInvalid, 400, "UK.OBIE.Header.Invalid"),
            (I::InFlight, 409, "UK.OBIE.Header.Invalid"),
            (I::Unavailable, 503, "UK.OBIE.UnexpectedError"),
        ];
        for (e, status, code) in cases {
            let (s, b) = answer_in(
                &Rejection::Idempotency(e, Dialect::Obie),
                ErrorDialect::Obie,
            )
            .await;
            assert_eq!(s, status, "{e:?}");
            assert_eq!(b["Errors"][0]["ErrorCode"], code, "{e:?}");
            assert_eq!(b["Id"], "id-1");
        }
    }

    /// Every refusal, in the OBIE dialect: the OBIE body with a `UK.OBIE.*` code and the
    /// interaction id, except the expired token (401, no body, a challenge).
    #[tokio::test]
    async fn every_refusal_answers_in_the_obie_body_on_obie_routes() {
        let mut seen = 0;
        for r in Rejection::variants() {
            let resp = respond(
                &r,
                "id-1",
                ::http::Version::HTTP_11,
                "ES256",
                ErrorDialect::Obie,
            );
            let status = resp.status();
            let ct = resp.headers().get(CONTENT_TYPE).cloned();
            let body = resp.into_body();
            if matches!(r, Rejection::Token(TokenError::Expired, _)) {
                assert_eq!((status.as_u16(), ct, body.len()), (401, None, 0));
                assert!(r.challenge("ES256").is_some());
                continue;
            }
            assert_eq!(ct.unwrap(), "application/json", "{r:?}");
            let b: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let code = b["Errors"][0]["ErrorCode"].as_str().unwrap();
            assert!(code.starts_with("UK.OBIE."), "{r:?}: {code}");
            assert_eq!(b["Id"], "id-1");
            assert!(b["Code"]
                .as_str()
                .unwrap()
                .starts_with(&status.as_u16().to_string()));
            let members: Vec<&String> = b.as_object().unwrap().keys().collect();
            assert_eq!(members, ["Code", "Errors", "Id", "Message"], "{r:?}");
            seen += 1;
        }
        assert!(seen > 100, "{seen}");
        let table = all_obie_codes();
        let row = |reason: &str| table.iter().find(|r| r.0 == reason).copied();
        assert_eq!(
            row("authz.object_hidden"),
            Some((
                "authz.object_hidden",
                404,
                Some(ObieError::new(NOT_FOUND, None))
            ))
        );
        assert_eq!(
            row("http.unsupported_media_type"),
            Some((
                "http.unsupported_media_type",
                415,
                Some(ObieError::new(HEADER_INVALID, Some("Content-Type")))
            ))
        );
        assert_eq!(row("token.expired"), Some(("token.expired", 401, None)));
    }
}
