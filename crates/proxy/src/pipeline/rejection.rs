//! The one place that turns a refusal into a response.
//!
//! Stages return typed errors; they never build responses. Here every error maps to an HTTP
//! status, a stable reason code, an optional `WWW-Authenticate` challenge and an RFC 9457
//! `application/problem+json` body that carries the reason code and the
//! `x-fapi-interaction-id`. The matches are exhaustive — no catch-all arm — so a new error cannot
//! silently become a 500. The body says what is wrong in public words; the detail goes to the
//! audit record.

use bytes::Bytes;
use http::header::{HeaderValue, ALLOW, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{Response, StatusCode};

use crate::pipeline::binding::BindingError;
use crate::pipeline::fapi::FapiError;
use crate::pipeline::http::HttpError;
use crate::pipeline::identity::IdentityError;
use crate::pipeline::signature::{JwsSigError, SignatureError};
use crate::pipeline::token::{Scheme, TokenError};
use crate::upstream::UpstreamError;
use portcullis_audit::AuditError;
use portcullis_base::body::{full, ProxyBody};
use portcullis_base::path::PathError;
use portcullis_crypto::httpsig::{ComponentError, HttpSigError};
use portcullis_crypto::jose::detached::{DetachedError, OB_IAT, OB_ISS, OB_TAN};
use portcullis_crypto::jose::dpop::DpopError;
use portcullis_policy::rules::{AuthzError, Denial};
use portcullis_policy::NoRoute;

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
    /// A scope, consent, object or response rule denied the request.
    Authz(Denial),
    Upstream(UpstreamError),
    /// The audit log cannot take the record (`audit.queue_full: refuse`).
    Audit(AuditError),
    /// A rate limit refused the request (issue #6).
    RateLimited(crate::pipeline::ratelimit::Limited),
    /// An idempotency-key refusal (issue #6), in the route's error dialect (OBIE routes answer
    /// in the OBIE error body).
    Idempotency(
        crate::pipeline::idempotency::IdempotencyError,
        crate::pipeline::idempotency::Dialect,
    ),
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
    Authz,
    Upstream,
    Audit,
    RateLimit,
    Idempotency,
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
            Stage::Authz => "authz",
            Stage::Upstream => "upstream",
            Stage::Audit => "audit",
            Stage::RateLimit => "rate_limit",
            Stage::Idempotency => "idempotency",
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

impl From<crate::pipeline::ratelimit::Limited> for Rejection {
    fn from(e: crate::pipeline::ratelimit::Limited) -> Self {
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

fn wire(status: StatusCode, reason: &'static str, detail: &'static str) -> Wire {
    Wire {
        status,
        reason,
        detail,
    }
}

impl Rejection {
    /// The reason recorded in the audit log and metrics: the wire reason, except that a denial
    /// hidden as 404 records why it was denied.
    pub fn audit_reason(&self) -> &'static str {
        match self {
            Rejection::Authz(d) if d.status == 404 => "authz.object_hidden",
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
            | Rejection::Authz(_)
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
            | Rejection::Authz(_)
            | Rejection::RateLimited(_)
            | Rejection::Idempotency(..) => Decision::Deny,
        }
    }

    /// The policy rule that refused, where one did.
    pub fn rule(&self) -> Option<&str> {
        match self {
            Rejection::Authz(d) => Some(&d.rule),
            Rejection::Http(_)
            | Rejection::Path(_)
            | Rejection::Route(_)
            | Rejection::Fapi(_)
            | Rejection::Identity(_)
            | Rejection::Token(..)
            | Rejection::Binding(_)
            | Rejection::UseDpopNonce(_)
            | Rejection::Signature(_)
            | Rejection::Upstream(_)
            | Rejection::Audit(_)
            | Rejection::RateLimited(_)
            | Rejection::Idempotency(..) => None,
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
            Rejection::Authz(_) => Stage::Authz,
            Rejection::Upstream(_) => Stage::Upstream,
            Rejection::Audit(_) => Stage::Audit,
            Rejection::RateLimited(_) => Stage::RateLimit,
            Rejection::Idempotency(..) => Stage::Idempotency,
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
                IdentityError::ClientCertExpired | IdentityError::ClientCertRevoked
            )
        )
    }

    pub fn wire(&self) -> Wire {
        use StatusCode as S;
        match self {
            Rejection::Http(e) => match e {
                // RFC 9112 §6.1: a message with both Transfer-Encoding and Content-Length "ought
                // to be handled as an error"; we refuse it and close (request smuggling).
                HttpError::ConflictingFraming => wire(
                    S::BAD_REQUEST,
                    "http.conflicting_framing",
                    "the request has both Content-Length and Transfer-Encoding",
                ),
                // RFC 9110 §8.6: differing or malformed Content-Length is unrecoverable.
                HttpError::BadContentLength => wire(
                    S::BAD_REQUEST,
                    "http.bad_content_length",
                    "the Content-Length header is malformed or repeated",
                ),
                // RFC 9112 §6.1: chunked must be the final and only coding we accept.
                HttpError::BadTransferEncoding => wire(
                    S::BAD_REQUEST,
                    "http.bad_transfer_encoding",
                    "the Transfer-Encoding header is not exactly chunked",
                ),
                // RFC 9110 §15.5.15.
                HttpError::UriTooLong => wire(
                    S::URI_TOO_LONG,
                    "http.uri_too_long",
                    "the request target is too long",
                ),
                // RFC 6585 §5.
                HttpError::TooManyHeaders => wire(
                    S::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    "http.too_many_headers",
                    "the request has too many header fields",
                ),
                // RFC 6585 §5.
                HttpError::HeadersTooLarge => wire(
                    S::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    "http.headers_too_large",
                    "the request header fields are too large",
                ),
                // RFC 9110 §5.1 allows `_`; proxies that map `_` to `-` make it a spoofing
                // vector (Envoy headers_with_underscores_action), so we refuse it.
                HttpError::HeaderUnderscore => wire(
                    S::BAD_REQUEST,
                    "http.header_underscore",
                    "header names with underscores are not accepted",
                ),
                // Method-override headers would let the upstream run a method we did not check.
                HttpError::MethodOverride => wire(
                    S::BAD_REQUEST,
                    "http.method_override",
                    "method overrides (headers or a _method parameter) are not accepted",
                ),
                // A hop would strip the nominated field after we checked it.
                HttpError::ConnectionNominates => wire(
                    S::BAD_REQUEST,
                    "http.connection_nominates",
                    "Connection may nominate only hop-by-hop options (close, keep-alive, te)",
                ),
                // RFC 9110 §7.8: no protocol switch around per-request inspection.
                HttpError::UpgradeRefused => wire(
                    S::BAD_REQUEST,
                    "http.upgrade_refused",
                    "protocol upgrades are not accepted",
                ),
                // RFC 9110 §15.5.20.
                HttpError::MisdirectedHost => wire(
                    S::MISDIRECTED_REQUEST,
                    "http.misdirected",
                    "this server does not serve the requested host",
                ),
                // RFC 9112 §3.2: a client MUST send Host in HTTP/1.1.
                HttpError::MissingHost => wire(
                    S::BAD_REQUEST,
                    "http.missing_host",
                    "the request must carry exactly one valid Host",
                ),
                // RFC 9110 §15.5.14.
                HttpError::BodyTooLarge => wire(
                    S::PAYLOAD_TOO_LARGE,
                    "http.body_too_large",
                    "the request body exceeds the limit of this route",
                ),
                // RFC 9110 §15.5.9.
                HttpError::BodyTimeout => wire(
                    S::REQUEST_TIMEOUT,
                    "http.body_timeout",
                    "the request body was not received in time",
                ),
                // RFC 9110 §15.5.1.
                HttpError::BodyRead => wire(
                    S::BAD_REQUEST,
                    "http.body_read",
                    "the request body could not be read",
                ),
            },
            // RFC 3986 §6 / RFC 9110 §4.2.3: we accept only the canonical form (see path.rs).
            Rejection::Path(e) => Wire {
                status: S::BAD_REQUEST,
                reason: e.reason(),
                detail: e.detail(),
            },
            Rejection::Route(e) => match e {
                // Default deny: an undeclared path does not exist (RFC 9110 §15.5.5).
                NoRoute::NotFound => wire(S::NOT_FOUND, "route.not_found", "no such resource"),
                // RFC 9110 §15.5.6, with Allow.
                NoRoute::MethodNotAllowed { .. } => wire(
                    S::METHOD_NOT_ALLOWED,
                    "route.method_not_allowed",
                    "the method is not allowed on this resource",
                ),
            },
            Rejection::Fapi(e) => match e {
                // FAPI 1.0 Part 1 §6.2.1-11: the interaction id is a RFC 4122 UUID.
                FapiError::InteractionIdInvalid => wire(
                    S::BAD_REQUEST,
                    "fapi.interaction_id_invalid",
                    "x-fapi-interaction-id must be a UUID",
                ),
                // FAPI 1.0 Part 1 §6.2.2-4: x-fapi-customer-ip-address carries an IP address.
                FapiError::CustomerIpInvalid => wire(
                    S::BAD_REQUEST,
                    "fapi.customer_ip_invalid",
                    "x-fapi-customer-ip-address must be an IPv4 or IPv6 address",
                ),
            },
            Rejection::Identity(e) => match e {
                // RFC 8705 §2 / FAPI: the route needs a mutually authenticated client.
                IdentityError::ClientCertRequired => wire(
                    S::UNAUTHORIZED,
                    "identity.client_cert_required",
                    "this resource requires a client certificate",
                ),
                // The certificate was valid at the handshake and has expired since.
                IdentityError::ClientCertExpired => wire(
                    S::UNAUTHORIZED,
                    "identity.client_cert_expired",
                    "the client certificate has expired; connect again with a valid one",
                ),
                // The CRLs were reloaded since the handshake and now revoke it.
                IdentityError::ClientCertRevoked => wire(
                    S::UNAUTHORIZED,
                    "identity.client_cert_revoked",
                    "the client certificate has been revoked",
                ),
            },
            Rejection::Token(e, _) => token_wire(*e),
            Rejection::Binding(e) => binding_wire(*e),
            Rejection::Signature(e) => signature_wire(*e),
            Rejection::Authz(d) => authz_wire(d),
            // RFC 9449 §9: 401 with `use_dpop_nonce` and a `DPoP-Nonce` header.
            Rejection::UseDpopNonce(_) => wire(
                StatusCode::UNAUTHORIZED,
                "binding.dpop_nonce",
                "the DPoP proof must carry the server nonce in DPoP-Nonce",
            ),
            Rejection::Upstream(e) => match e {
                // RFC 9110 §15.6.3.
                UpstreamError::Connect => wire(
                    S::BAD_GATEWAY,
                    "upstream.connect_failed",
                    "the upstream service is unavailable",
                ),
                // RFC 9110 §15.6.3.
                UpstreamError::Protocol => wire(
                    S::BAD_GATEWAY,
                    "upstream.bad_response",
                    "the upstream service failed to answer",
                ),
                // RFC 9110 §15.6.5.
                UpstreamError::Timeout => wire(
                    S::GATEWAY_TIMEOUT,
                    "upstream.timeout",
                    "the upstream service did not answer in time",
                ),
            },
            // RFC 6585 §4: 429 with Retry-After; draft-ietf-httpapi-ratelimit-headers.
            Rejection::RateLimited(l) => match l.scope {
                "peer" => wire(
                    S::TOO_MANY_REQUESTS,
                    "rate_limit.peer",
                    "too many requests from this address; retry after the time in Retry-After",
                ),
                // The fleet quota (Redis) cannot be checked and state.on_outage.rate_limits is
                // `refuse`: RFC 9110 §15.6.4, with Retry-After.
                "unavailable" => wire(
                    S::SERVICE_UNAVAILABLE,
                    "rate_limit.unavailable",
                    "rate limits cannot be checked now; try again later",
                ),
                _ => wire(
                    S::TOO_MANY_REQUESTS,
                    "rate_limit.client",
                    "too many requests from this client; retry after the time in Retry-After",
                ),
            },
            Rejection::Idempotency(e, dialect) => {
                use crate::pipeline::idempotency::{Dialect, IdempotencyError as I};
                match e {
                    // OBIE answers request validation failures with 400 and an error code;
                    // a key reused for another payload is an invalid x-idempotency-key.
                    I::Mismatch if *dialect == Dialect::Obie => wire(
                        S::BAD_REQUEST,
                        "idempotency.key_reused",
                        "this idempotency key was used for a different request",
                    ),
                    // draft-ietf-httpapi-idempotency-key-header §2.7: missing key: 400.
                    I::KeyMissing => wire(
                        S::BAD_REQUEST,
                        "idempotency.key_missing",
                        "this resource requires an x-idempotency-key or Idempotency-Key header",
                    ),
                    // OBIE: x-idempotency-key is at most 40 characters; one key only.
                    I::KeyInvalid => wire(
                        S::BAD_REQUEST,
                        "idempotency.key_invalid",
                        "the idempotency key must be one value of 1 to 40 printable characters",
                    ),
                    // draft-ietf-httpapi-idempotency-key-header §2.7: concurrent retry: 409.
                    I::InFlight => wire(
                        S::CONFLICT,
                        "idempotency.in_flight",
                        "a request with this idempotency key is still being processed",
                    ),
                    // draft-ietf-httpapi-idempotency-key-header §2.7: key reused with another
                    // payload: 422.
                    I::Mismatch => wire(
                        S::UNPROCESSABLE_ENTITY,
                        "idempotency.key_reused",
                        "this idempotency key was used for a different request",
                    ),
                    // Fail closed rather than risk a duplicate payment (RFC 9110 §15.6.4).
                    I::Unavailable => wire(
                        S::SERVICE_UNAVAILABLE,
                        "idempotency.unavailable",
                        "idempotency keys cannot be checked now; try again later",
                    ),
                }
            }
            // RFC 9110 §15.6.4: a temporary condition; we fail closed rather than serve a
            // request we cannot audit.
            Rejection::Audit(AuditError::Unavailable) => wire(
                S::SERVICE_UNAVAILABLE,
                portcullis_audit::UNAVAILABLE_REASON,
                "the service cannot record this request now; try again later",
            ),
        }
    }

    /// The `WWW-Authenticate` challenge, where the refusal is about credentials
    /// (RFC 6750 §3, RFC 9449 §7.1).
    /// `dpop_algs` are the DPoP proof algorithms this server accepts, space-separated: the
    /// `algs` parameter must name what the verifier really takes.
    pub fn challenge(&self, dpop_algs: &str) -> Option<String> {
        let algs = format!("algs=\"{dpop_algs}\"");
        let bearer = |err: &str| Some(format!("Bearer error=\"{err}\""));
        let dpop = |err: &str| Some(format!("DPoP error=\"{err}\", {algs}"));
        match self {
            Rejection::Http(_)
            | Rejection::Path(_)
            | Rejection::Route(_)
            | Rejection::Fapi(_)
            | Rejection::Upstream(_)
            | Rejection::Audit(_)
            | Rejection::RateLimited(_)
            | Rejection::Idempotency(..) => None,
            // A missing client certificate is a TLS-level credential; there is no HTTP auth
            // scheme for it, so no challenge (RFC 9110 §11.6.1 requires one only for schemes).
            Rejection::Identity(_) => None,
            // RFC 6750 §3.1: no error code when no credentials were sent; both schemes offered.
            Rejection::Token(TokenError::Missing | TokenError::UnsupportedScheme, _) => {
                Some(format!("Bearer, DPoP {algs}"))
            }
            Rejection::Token(
                TokenError::KeysUnavailable | TokenError::IntrospectionUnavailable,
                _,
            ) => None,
            Rejection::Token(
                TokenError::InQuery | TokenError::Multiple | TokenError::BadHeader,
                Scheme::Bearer,
            ) => bearer("invalid_request"),
            Rejection::Token(
                TokenError::InQuery | TokenError::Multiple | TokenError::BadHeader,
                Scheme::DPoP,
            ) => dpop("invalid_request"),
            Rejection::Token(_, Scheme::Bearer) => bearer("invalid_token"),
            Rejection::Token(_, Scheme::DPoP) => dpop("invalid_token"),
            Rejection::Binding(b) => match b {
                BindingError::Unbound
                | BindingError::MtlsRequired
                | BindingError::CertMismatch
                | BindingError::NoClientCert => bearer("invalid_token"),
                // RFC 9449 §7.2: the client must use the DPoP scheme for this token.
                BindingError::BearerForDpopToken
                | BindingError::SchemeWithoutJkt
                | BindingError::JktMismatch => dpop("invalid_token"),
                BindingError::ProofMultiple => dpop("invalid_request"),
                BindingError::ProofMissing | BindingError::Proof(_) | BindingError::Replay => {
                    dpop("invalid_dpop_proof")
                }
                BindingError::ReplayStoreFull => None,
            },
            Rejection::UseDpopNonce(_) => dpop("use_dpop_nonce"),
            // RFC 6750 §3.1: insufficient_scope names the scope the request needs.
            Rejection::Authz(Denial {
                error: AuthzError::Scope(scope),
                ..
            }) => Some(format!(
                "Bearer error=\"insufficient_scope\", scope=\"{scope}\""
            )),
            // OBIE answers in its error body, without a challenge; RFC 9421 defines no
            // authentication scheme to challenge with (its `Accept-Signature` is not sent).
            Rejection::Signature(_) => None,
            Rejection::Authz(_) => None,
        }
    }
}

fn token_wire(e: TokenError) -> Wire {
    use StatusCode as S;
    let (status, reason, detail) = match e {
        // RFC 6750 §3.1: no credentials: 401 without an error code.
        TokenError::Missing => (
            S::UNAUTHORIZED,
            "token.missing",
            "an access token is required",
        ),
        // FAPI 2.0 SP §5.3.4 / RFC 6750 §2.3: tokens are never accepted in the query.
        TokenError::InQuery => (
            S::BAD_REQUEST,
            "token.in_query",
            "access tokens are not accepted in the query",
        ),
        // RFC 6750 §2: exactly one method of sending the token.
        TokenError::Multiple => (
            S::BAD_REQUEST,
            "token.multiple",
            "more than one credential was sent",
        ),
        // RFC 9110 §11.4 / RFC 6750 §2.1: `scheme SP token68`.
        TokenError::BadHeader => (
            S::BAD_REQUEST,
            "token.bad_header",
            "the Authorization header is malformed",
        ),
        // RFC 9110 §11.6.2: only Bearer and DPoP.
        TokenError::UnsupportedScheme => (
            S::UNAUTHORIZED,
            "token.unsupported_scheme",
            "use the Bearer or DPoP scheme",
        ),
        // Bound before any parsing or crypto.
        TokenError::TooLarge => (
            S::UNAUTHORIZED,
            "token.too_large",
            "the access token is too large",
        ),
        // RFC 7515 §7.1 / RFC 8725 §3.11.
        TokenError::Malformed => (
            S::UNAUTHORIZED,
            "token.malformed",
            "the access token is not a valid JWT",
        ),
        // RFC 8725 §3.1: an allow-list, never none or HMAC with public keys.
        TokenError::AlgNotAllowed => (
            S::UNAUTHORIZED,
            "token.alg_not_allowed",
            "the token algorithm is not allowed",
        ),
        // RFC 8725 §3.10 / RFC 7515 §4.1.11: no self-carried keys, no unknown crit.
        TokenError::ForbiddenHeader => (
            S::UNAUTHORIZED,
            "token.forbidden_header",
            "the token header is not acceptable",
        ),
        // RFC 7515 §4.1.4: keys only from the issuer's key set.
        TokenError::UnknownKey => (
            S::UNAUTHORIZED,
            "token.unknown_key",
            "the token was not signed by a known key",
        ),
        // RFC 8725 §3.1: each key is used with exactly one algorithm.
        TokenError::KeyMismatch => (
            S::UNAUTHORIZED,
            "token.key_mismatch",
            "the token algorithm does not match its key",
        ),
        // RFC 7515 §5.2.
        TokenError::BadSignature => (
            S::UNAUTHORIZED,
            "token.bad_signature",
            "the token signature is invalid",
        ),
        // RFC 9068 §4 / RFC 8725 §3.11: `typ: at+jwt`.
        TokenError::Typ => (
            S::UNAUTHORIZED,
            "token.typ",
            "the token is not an access token (typ)",
        ),
        // RFC 9068 §4 / RFC 8725 §3.8.
        TokenError::Issuer => (
            S::UNAUTHORIZED,
            "token.issuer",
            "the token issuer is not trusted",
        ),
        // RFC 9068 §4 / RFC 8725 §3.9.
        TokenError::Audience => (
            S::UNAUTHORIZED,
            "token.audience",
            "the token is not for this audience",
        ),
        // RFC 9068 §2.2: exp is required.
        TokenError::ExpMissing => (
            S::UNAUTHORIZED,
            "token.exp_missing",
            "the token has no expiry",
        ),
        // RFC 7519 §4.1.4.
        TokenError::Expired => (S::UNAUTHORIZED, "token.expired", "the token has expired"),
        // RFC 7519 §4.1.5.
        TokenError::NotYetValid => (
            S::UNAUTHORIZED,
            "token.not_yet_valid",
            "the token is not valid yet",
        ),
        // RFC 7519 §4.1.6 with the configured skew and maximum age.
        TokenError::IssuedAt => (
            S::UNAUTHORIZED,
            "token.issued_at",
            "the token issue time is not acceptable",
        ),
        // RFC 7800 §3: a confirmation method we cannot verify is not ignored.
        TokenError::ConfirmationUnsupported => (
            S::UNAUTHORIZED,
            "token.cnf_unsupported",
            "the token is bound by a confirmation method this server does not support",
        ),
        // RFC 7662 §2.1: introspection finds refresh tokens too.
        TokenError::NotAccessToken => (
            S::UNAUTHORIZED,
            "token.not_access_token",
            "the token is not an access token",
        ),
        // RFC 7519 §2: NumericDate and string claims have fixed types (CVE-2026-25537).
        TokenError::ClaimType => (
            S::UNAUTHORIZED,
            "token.claim_type",
            "a token claim has the wrong type",
        ),
        // Fail closed: no key set for the issuer yet (RFC 9110 §15.6.4).
        TokenError::KeysUnavailable => (
            S::SERVICE_UNAVAILABLE,
            "token.keys_unavailable",
            "token keys are not available",
        ),
        // RFC 7662 §2.2: `active: false`.
        TokenError::Inactive => (
            S::UNAUTHORIZED,
            "token.inactive",
            "the access token is not active",
        ),
        // Fail closed: introspection gave no decision (RFC 9110 §15.6.4).
        TokenError::IntrospectionUnavailable => (
            S::SERVICE_UNAVAILABLE,
            "token.introspection_unavailable",
            "token introspection is unavailable",
        ),
    };
    wire(status, reason, detail)
}

fn binding_wire(e: BindingError) -> Wire {
    use StatusCode as S;
    let dpop = |reason, detail| wire(S::UNAUTHORIZED, reason, detail);
    match e {
        // FAPI 2.0 SP §5.3.4: sender-constrained tokens only.
        BindingError::Unbound => wire(
            S::UNAUTHORIZED,
            "binding.unbound_token",
            "this resource requires a sender-constrained token",
        ),
        // FAPI 1.0 Part 2 §6.2.1-1: certificate-bound tokens.
        BindingError::MtlsRequired => wire(
            S::UNAUTHORIZED,
            "binding.mtls_required",
            "this resource requires a certificate-bound token",
        ),
        // RFC 8705 §3: the thumbprint must match the presented certificate.
        BindingError::CertMismatch => wire(
            S::UNAUTHORIZED,
            "binding.cert_mismatch",
            "the token is bound to another certificate",
        ),
        // RFC 8705 §3.
        BindingError::NoClientCert => wire(
            S::UNAUTHORIZED,
            "binding.no_client_cert",
            "the token is certificate-bound but no certificate was presented",
        ),
        // RFC 9449 §7.2.
        BindingError::BearerForDpopToken => wire(
            S::UNAUTHORIZED,
            "binding.dpop_required",
            "a DPoP-bound token must use the DPoP scheme",
        ),
        // RFC 9449 §7.1.
        BindingError::SchemeWithoutJkt => wire(
            S::UNAUTHORIZED,
            "binding.not_dpop_bound",
            "the DPoP scheme needs a DPoP-bound token",
        ),
        // RFC 9449 §7.1.
        BindingError::ProofMissing => {
            dpop("binding.dpop_proof_missing", "a DPoP proof is required")
        }
        // RFC 9449 §4.3 check 1.
        BindingError::ProofMultiple => wire(
            S::BAD_REQUEST,
            "binding.dpop_proof_multiple",
            "exactly one DPoP proof is allowed",
        ),
        // RFC 9449 §4.3, each check.
        BindingError::Proof(p) => match p {
            DpopError::Malformed => dpop(
                "binding.dpop_malformed",
                "the DPoP proof is not a valid JWT",
            ),
            DpopError::Typ => dpop("binding.dpop_typ", "the DPoP proof typ must be dpop+jwt"),
            DpopError::AlgNotAllowed => dpop(
                "binding.dpop_alg",
                "the DPoP proof algorithm is not allowed",
            ),
            DpopError::Key => dpop("binding.dpop_key", "the DPoP proof key is not acceptable"),
            DpopError::BadSignature => dpop(
                "binding.dpop_signature",
                "the DPoP proof signature is invalid",
            ),
            DpopError::MissingClaim => dpop(
                "binding.dpop_claims",
                "the DPoP proof lacks a required claim",
            ),
            DpopError::Method => dpop("binding.dpop_htm", "the DPoP proof is for another method"),
            DpopError::Uri => dpop("binding.dpop_htu", "the DPoP proof is for another URI"),
            DpopError::Iat => dpop(
                "binding.dpop_iat",
                "the DPoP proof is too old or from the future",
            ),
            DpopError::Ath => dpop(
                "binding.dpop_ath",
                "the DPoP proof is not bound to this token",
            ),
            DpopError::NonceRequired | DpopError::NonceStale => dpop(
                "binding.dpop_nonce",
                "the DPoP proof nonce is missing or stale",
            ),
        },
        // RFC 9449 §6.1: the proof key must be the one the token is bound to.
        BindingError::JktMismatch => wire(
            S::UNAUTHORIZED,
            "binding.jkt_mismatch",
            "the DPoP key does not match the token binding",
        ),
        // RFC 9449 §11.1.
        BindingError::Replay => dpop("binding.dpop_replay", "the DPoP proof was already used"),
        // Fail closed rather than forget a jti (RFC 9110 §15.6.4).
        BindingError::ReplayStoreFull => wire(
            S::SERVICE_UNAVAILABLE,
            "binding.replay_store_unavailable",
            "replay protection is unavailable",
        ),
    }
}

fn authz_wire(d: &Denial) -> Wire {
    use StatusCode as S;
    // A rule that hides existence answers exactly like an unknown resource; the audit record
    // keeps the real reason ([`Rejection::audit_reason`]).
    if d.status == 404 {
        return wire(S::NOT_FOUND, "route.not_found", "no such resource");
    }
    let (status, reason, detail) = match &d.error {
        // RFC 6750 §3.1.
        AuthzError::Scope(_) => (
            S::FORBIDDEN,
            "authz.scope",
            "the token lacks a required scope",
        ),
        // OBIE: the consent named by the token governs access (403).
        AuthzError::ConsentMissing => (
            S::FORBIDDEN,
            "authz.consent_missing",
            "the token names no consent",
        ),
        AuthzError::ConsentNotFound => (
            S::FORBIDDEN,
            "authz.consent_not_found",
            "the consent does not exist",
        ),
        AuthzError::ConsentStatus => (
            S::FORBIDDEN,
            "authz.consent_status",
            "the consent is not authorised",
        ),
        AuthzError::ConsentExpired => (
            S::FORBIDDEN,
            "authz.consent_expired",
            "the consent has expired",
        ),
        AuthzError::ConsentPermission => (
            S::FORBIDDEN,
            "authz.consent_permission",
            "the consent lacks a required permission",
        ),
        // Fail closed: no decision without the consent record (RFC 9110 §15.6.4).
        AuthzError::ConsentUnavailable => (
            S::SERVICE_UNAVAILABLE,
            "authz.consent_unavailable",
            "consent cannot be checked now",
        ),
        // OWASP API1:2023 (BOLA): the object is not one the caller was granted.
        AuthzError::Object => (
            S::FORBIDDEN,
            "authz.object",
            "the requested object is not covered by the grant",
        ),
        AuthzError::ObjectMissing => (
            S::FORBIDDEN,
            "authz.object_missing",
            "the request does not name the object a rule checks",
        ),
        // RFC 9110 §15.5.1: ambiguous requests are refused, never resolved.
        AuthzError::Ambiguous => (
            S::BAD_REQUEST,
            "authz.ambiguous",
            "a value the policy checks is repeated or ambiguous",
        ),
        AuthzError::Mismatch => (
            S::BAD_REQUEST,
            "authz.mismatch",
            "identifiers in the request disagree",
        ),
        AuthzError::BodyNotJson => (
            S::BAD_REQUEST,
            "authz.body_not_json",
            "the body must be a JSON object",
        ),
        // RFC 9110 §15.6.3: the upstream answered with objects outside the grant.
        AuthzError::ResponseLeak => (
            S::BAD_GATEWAY,
            "authz.response_leak",
            "the upstream response was withheld",
        ),
    };
    wire(status, reason, detail)
}

/// Builds the refusal response. `interaction_id` is already validated or generated; `version`
/// is the request's HTTP version.
pub fn respond(
    rejection: &Rejection,
    interaction_id: &str,
    version: http::Version,
    dpop_algs: &str,
) -> Response<ProxyBody> {
    let w = rejection.wire();
    let (body, content_type) = match rejection.obie_error() {
        // OBIE routes answer in the OBIE error body (OBErrorResponse1).
        Some(ob) => (obie_body(&w, &ob, interaction_id), "application/json"),
        None => (
            serde_json::json!({
                "type": format!("urn:portcullis:problem:{}", w.reason),
                "title": w.status.canonical_reason().unwrap_or("Error"),
                "status": w.status.as_u16(),
                "detail": w.detail,
                "reason": w.reason,
                "interaction_id": interaction_id,
            }),
            "application/problem+json",
        ),
    };
    let mut resp = Response::new(full(Bytes::from(body.to_string())));
    *resp.status_mut() = w.status;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Some(c) = rejection
        .challenge(dpop_algs)
        .and_then(|c| HeaderValue::from_str(&c).ok())
    {
        h.insert(WWW_AUTHENTICATE, c);
    }
    if let Some(n) = match rejection {
        Rejection::UseDpopNonce(n) => HeaderValue::from_str(n).ok(),
        _ => None,
    } {
        h.insert("dpop-nonce", n);
    }
    // RFC 6585 §4 / RFC 9110 §10.2.3, and draft-ietf-httpapi-ratelimit-headers.
    if let Rejection::RateLimited(l) = rejection {
        let t = l.retry_after_s;
        let rows = [
            (http::header::RETRY_AFTER.as_str(), t.to_string()),
            ("ratelimit-policy", l.policy.clone()),
            ("ratelimit", format!("\"{}\";r=0;t={t}", l.name)),
        ];
        for (name, v) in rows {
            if let Ok(v) = HeaderValue::from_str(&v) {
                h.insert(name, v);
            }
        }
    }
    if let Rejection::Route(NoRoute::MethodNotAllowed { allow }) = rejection {
        let list: Vec<&str> = allow.iter().map(|m| m.as_str()).collect();
        if let Ok(v) = HeaderValue::from_str(&list.join(", ")) {
            h.insert(ALLOW, v);
        }
    }
    // HTTP/1 only: `Connection` is a connection-specific header that HTTP/2 forbids
    // (RFC 9113 §8.2.2); there the stream simply ends.
    if rejection.closes_connection() && version < http::Version::HTTP_2 {
        h.insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// Every reason code with its status, for the README table and the test that keeps it true.
pub fn all_reasons() -> Vec<(u16, &'static str, &'static str)> {
    let limited = |scope| {
        Rejection::RateLimited(crate::pipeline::ratelimit::Limited {
            scope,
            policy: String::new(),
            name: String::new(),
            retry_after_s: 1,
        })
    };
    use crate::pipeline::idempotency::{Dialect as D, IdempotencyError as I};
    let mut all: Vec<Rejection> = vec![
        limited("peer"),
        limited("client"),
        limited("unavailable"),
        Rejection::Idempotency(I::KeyMissing, D::Ietf),
        Rejection::Idempotency(I::KeyInvalid, D::Ietf),
        Rejection::Idempotency(I::InFlight, D::Ietf),
        Rejection::Idempotency(I::Mismatch, D::Ietf),
        Rejection::Idempotency(I::Unavailable, D::Ietf),
        HttpError::ConflictingFraming.into(),
        HttpError::BadContentLength.into(),
        HttpError::BadTransferEncoding.into(),
        HttpError::UriTooLong.into(),
        HttpError::TooManyHeaders.into(),
        HttpError::HeadersTooLarge.into(),
        HttpError::HeaderUnderscore.into(),
        HttpError::MethodOverride.into(),
        HttpError::ConnectionNominates.into(),
        HttpError::UpgradeRefused.into(),
        HttpError::MisdirectedHost.into(),
        HttpError::MissingHost.into(),
        HttpError::BodyTooLarge.into(),
        HttpError::BodyTimeout.into(),
        HttpError::BodyRead.into(),
        NoRoute::NotFound.into(),
        NoRoute::MethodNotAllowed { allow: vec![] }.into(),
        FapiError::InteractionIdInvalid.into(),
        FapiError::CustomerIpInvalid.into(),
        IdentityError::ClientCertRequired.into(),
        IdentityError::ClientCertExpired.into(),
        IdentityError::ClientCertRevoked.into(),
        UpstreamError::Connect.into(),
        UpstreamError::Protocol.into(),
        BindingError::Unbound.into(),
        BindingError::MtlsRequired.into(),
        BindingError::CertMismatch.into(),
        BindingError::NoClientCert.into(),
        BindingError::BearerForDpopToken.into(),
        BindingError::SchemeWithoutJkt.into(),
        BindingError::ProofMissing.into(),
        BindingError::ProofMultiple.into(),
        BindingError::JktMismatch.into(),
        BindingError::Replay.into(),
        BindingError::ReplayStoreFull.into(),
        UpstreamError::Timeout.into(),
        AuditError::Unavailable.into(),
    ];
    all.extend(
        [
            PathError::NotOriginForm,
            PathError::DotSegment,
            PathError::EncodedSeparator,
            PathError::EncodedDot,
            PathError::DoubleEncoding,
            PathError::NeedlessEncoding,
            PathError::BadEscape,
            PathError::Backslash,
            PathError::ControlChar,
            PathError::Fragment,
            PathError::NonAscii,
            PathError::EmptySegment,
            PathError::InvalidChar,
            PathError::Parameter,
        ]
        .map(Rejection::Path),
    );
    all.extend(
        [
            TokenError::Missing,
            TokenError::InQuery,
            TokenError::Multiple,
            TokenError::BadHeader,
            TokenError::UnsupportedScheme,
            TokenError::TooLarge,
            TokenError::Malformed,
            TokenError::AlgNotAllowed,
            TokenError::ForbiddenHeader,
            TokenError::UnknownKey,
            TokenError::KeyMismatch,
            TokenError::BadSignature,
            TokenError::Typ,
            TokenError::Issuer,
            TokenError::Audience,
            TokenError::ExpMissing,
            TokenError::Expired,
            TokenError::NotYetValid,
            TokenError::IssuedAt,
            TokenError::ClaimType,
            TokenError::KeysUnavailable,
            TokenError::Inactive,
            TokenError::IntrospectionUnavailable,
            TokenError::ConfirmationUnsupported,
            TokenError::NotAccessToken,
        ]
        .map(|e| Rejection::Token(e, Scheme::Bearer)),
    );
    all.extend(
        [
            DpopError::Malformed,
            DpopError::Typ,
            DpopError::AlgNotAllowed,
            DpopError::Key,
            DpopError::BadSignature,
            DpopError::MissingClaim,
            DpopError::Method,
            DpopError::Uri,
            DpopError::Iat,
            DpopError::Ath,
            DpopError::NonceRequired,
        ]
        .map(|e| Rejection::Binding(BindingError::Proof(e))),
    );
    let denial = |error| {
        Rejection::Authz(Denial {
            error,
            rule: String::new(),
            status: 403,
            shadow: false,
        })
    };
    all.extend(
        [
            AuthzError::Scope(String::new()),
            AuthzError::ConsentMissing,
            AuthzError::ConsentNotFound,
            AuthzError::ConsentStatus,
            AuthzError::ConsentExpired,
            AuthzError::ConsentPermission,
            AuthzError::ConsentUnavailable,
            AuthzError::Object,
            AuthzError::ObjectMissing,
            AuthzError::Ambiguous,
            AuthzError::Mismatch,
            AuthzError::BodyNotJson,
            AuthzError::ResponseLeak,
        ]
        .map(denial),
    );
    all.extend(
        [
            JwsSigError::Missing,
            JwsSigError::Multiple,
            JwsSigError::UnknownClient,
            JwsSigError::UnknownKey,
            JwsSigError::KeysUnavailable,
        ]
        .into_iter()
        .chain(
            [
                DetachedError::Malformed,
                DetachedError::AlgNotAllowed,
                DetachedError::KidMissing,
                DetachedError::CritMissing,
                DetachedError::Crit,
                DetachedError::B64Missing,
                DetachedError::B64,
                DetachedError::IatMissing,
                DetachedError::Iat,
                DetachedError::IssMissing,
                DetachedError::Iss,
                DetachedError::TanMissing,
                DetachedError::Tan,
                DetachedError::Header,
                DetachedError::KeyMismatch,
                DetachedError::BadSignature,
            ]
            .map(JwsSigError::Detached),
        )
        .map(|e| Rejection::Signature(SignatureError::Jws(e))),
    );
    all.extend(
        [
            HttpSigError::Missing,
            HttpSigError::Malformed,
            HttpSigError::Label,
            HttpSigError::Ambiguous,
            HttpSigError::Coverage,
            HttpSigError::Component(ComponentError::Missing),
            HttpSigError::Component(ComponentError::Unsupported),
            HttpSigError::Component(ComponentError::Duplicate),
            HttpSigError::Component(ComponentError::Invalid),
            HttpSigError::CreatedMissing,
            HttpSigError::Created,
            HttpSigError::Expired,
            HttpSigError::KeyidMissing,
            HttpSigError::NonceMissing,
            HttpSigError::Replay,
            HttpSigError::ReplayUnavailable,
            HttpSigError::UnknownClient,
            HttpSigError::UnknownKey,
            HttpSigError::KeysUnavailable,
            HttpSigError::Alg,
            HttpSigError::BadSignature,
            HttpSigError::DigestMissing,
            HttpSigError::DigestMalformed,
            HttpSigError::DigestMismatch,
        ]
        .map(|e| Rejection::Signature(SignatureError::Http(e))),
    );
    all.iter()
        .map(|r| {
            let w = r.wire();
            (w.status.as_u16(), w.reason, w.detail)
        })
        .collect()
}

/// The OBIE error code (and the header member it concerns) of a refusal on an OBIE route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObieError {
    pub code: &'static str,
    pub path: Option<&'static str>,
}

impl Rejection {
    /// Refusals answered in the OBIE error body (OBIE Read/Write API "Standard Error Codes"):
    /// `x-jws-signature` failures (`UK.OBIE.Signature.*`) and idempotency-key refusals on
    /// OBIE routes (`UK.OBIE.Header.*`).
    pub fn obie_error(&self) -> Option<ObieError> {
        let ob = |code, path| Some(ObieError { code, path });
        if let Rejection::Idempotency(e, crate::pipeline::idempotency::Dialect::Obie) = self {
            use crate::pipeline::idempotency::IdempotencyError as I;
            const KEY: Option<&str> = Some("x-idempotency-key");
            return match e {
                I::KeyMissing => ob("UK.OBIE.Header.Missing", KEY),
                I::KeyInvalid | I::Mismatch | I::InFlight => ob("UK.OBIE.Header.Invalid", KEY),
                I::Unavailable => ob("UK.OBIE.UnexpectedError", None),
            };
        }
        let Rejection::Signature(SignatureError::Jws(e)) = self else {
            return None;
        };
        const MISSING: &str = "UK.OBIE.Signature.Missing";
        const MALFORMED: &str = "UK.OBIE.Signature.Malformed";
        const INVALID: &str = "UK.OBIE.Signature.Invalid";
        const INVALID_CLAIM: &str = "UK.OBIE.Signature.InvalidClaim";
        const MISSING_CLAIM: &str = "UK.OBIE.Signature.MissingClaim";
        match e {
            JwsSigError::Missing => ob(MISSING, None),
            JwsSigError::Multiple => ob(MALFORMED, None),
            JwsSigError::UnknownClient | JwsSigError::UnknownKey => ob(INVALID_CLAIM, Some("kid")),
            JwsSigError::KeysUnavailable => ob("UK.OBIE.UnexpectedError", None),
            JwsSigError::Detached(d) => match d {
                DetachedError::Malformed => ob(MALFORMED, None),
                // OBIE has no algorithm code: a disallowed alg is an invalid header claim.
                DetachedError::AlgNotAllowed | DetachedError::KeyMismatch => {
                    ob(INVALID_CLAIM, Some("alg"))
                }
                DetachedError::KidMissing => ob(MISSING_CLAIM, Some("kid")),
                DetachedError::CritMissing => ob(MISSING_CLAIM, Some("crit")),
                DetachedError::Crit => ob(INVALID_CLAIM, Some("crit")),
                DetachedError::B64Missing => ob(MISSING_CLAIM, Some("b64")),
                DetachedError::B64 => ob(INVALID_CLAIM, Some("b64")),
                DetachedError::IatMissing => ob(MISSING_CLAIM, Some(OB_IAT)),
                DetachedError::Iat => ob(INVALID_CLAIM, Some(OB_IAT)),
                DetachedError::IssMissing => ob(MISSING_CLAIM, Some(OB_ISS)),
                DetachedError::Iss => ob(INVALID_CLAIM, Some(OB_ISS)),
                DetachedError::TanMissing => ob(MISSING_CLAIM, Some(OB_TAN)),
                DetachedError::Tan => ob(INVALID_CLAIM, Some(OB_TAN)),
                DetachedError::Header => ob(INVALID_CLAIM, None),
                DetachedError::BadSignature => ob(INVALID, None),
            },
        }
    }
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

fn signature_wire(e: SignatureError) -> Wire {
    use StatusCode as S;
    let bad = |reason, detail| wire(S::BAD_REQUEST, reason, detail);
    let unauth = |reason, detail| wire(S::UNAUTHORIZED, reason, detail);
    match e {
        SignatureError::Jws(j) => match j {
            // OBIE Read/Write Data API profile, message signing: a missing or failed
            // signature where one is required is 400.
            JwsSigError::Missing => bad(
                "signature.jws_missing",
                "the request must carry an x-jws-signature",
            ),
            // RFC 9110 §5.3: one field line only; a comma-joined JWS is ambiguous.
            JwsSigError::Multiple => bad(
                "signature.jws_multiple",
                "exactly one x-jws-signature is allowed",
            ),
            // OBIE: the signing key must resolve for this client at the trust anchor.
            JwsSigError::UnknownClient => bad(
                "signature.jws_unknown_client",
                "no signing keys are registered for this client",
            ),
            JwsSigError::UnknownKey => bad(
                "signature.jws_unknown_key",
                "the x-jws-signature kid is not a key of this client",
            ),
            // Fail closed (RFC 9110 §15.6.4).
            JwsSigError::KeysUnavailable => wire(
                S::SERVICE_UNAVAILABLE,
                "signature.jws_keys_unavailable",
                "signing keys cannot be checked now",
            ),
            JwsSigError::Detached(d) => match d {
                // RFC 7515 Appendix F: `header..signature`, the payload is the body.
                DetachedError::Malformed => bad(
                    "signature.jws_malformed",
                    "the x-jws-signature is not a detached JWS",
                ),
                // OBIE: PS256 (RFC 8725 §3.1: an allow-list).
                DetachedError::AlgNotAllowed => bad(
                    "signature.jws_alg",
                    "the x-jws-signature algorithm is not allowed",
                ),
                // RFC 7515 §4.1.4.
                DetachedError::KidMissing => bad(
                    "signature.jws_kid_missing",
                    "the x-jws-signature header has no kid",
                ),
                // RFC 7515 §4.1.11 and OBIE: crit lists exactly the OB claims.
                DetachedError::CritMissing => bad(
                    "signature.jws_crit_missing",
                    "the x-jws-signature header has no crit",
                ),
                DetachedError::Crit => bad(
                    "signature.jws_crit",
                    "the x-jws-signature crit is not the required set",
                ),
                // RFC 7797 §3 and OBIE 3.1.3: b64 false.
                DetachedError::B64Missing => bad(
                    "signature.jws_b64_missing",
                    "this API version requires b64: false",
                ),
                // RFC 7797 §6 and OBIE 3.1.4: no b64.
                DetachedError::B64 => bad(
                    "signature.jws_b64",
                    "the x-jws-signature b64 header does not fit this API version",
                ),
                // OBIE: http://openbanking.org.uk/iat, a JSON number in the past.
                DetachedError::IatMissing => bad(
                    "signature.jws_iat_missing",
                    "the x-jws-signature has no iat claim",
                ),
                DetachedError::Iat => bad(
                    "signature.jws_iat",
                    "the x-jws-signature iat is too old, in the future or not a number",
                ),
                // OBIE: http://openbanking.org.uk/iss names the signer.
                DetachedError::IssMissing => bad(
                    "signature.jws_iss_missing",
                    "the x-jws-signature has no iss claim",
                ),
                DetachedError::Iss => bad(
                    "signature.jws_iss",
                    "the x-jws-signature iss is not the calling client",
                ),
                // OBIE: http://openbanking.org.uk/tan is a trust anchor we accept.
                DetachedError::TanMissing => bad(
                    "signature.jws_tan_missing",
                    "the x-jws-signature has no tan claim",
                ),
                DetachedError::Tan => bad(
                    "signature.jws_tan",
                    "the x-jws-signature trust anchor is not accepted",
                ),
                // RFC 8725 §3.10: no key-carrying headers; OBIE typ JOSE, cty json.
                DetachedError::Header => bad(
                    "signature.jws_header",
                    "the x-jws-signature header has a member that is not accepted",
                ),
                // RFC 8725 §3.1: a key verifies one algorithm.
                DetachedError::KeyMismatch => bad(
                    "signature.jws_key_mismatch",
                    "the x-jws-signature algorithm does not match its key",
                ),
                // RFC 7515 §5.2 over the body exactly as received.
                DetachedError::BadSignature => bad(
                    "signature.jws_invalid",
                    "the x-jws-signature does not verify over the body",
                ),
            },
        },
        SignatureError::Http(h) => match h {
            // FAPI 2.0 Message Signing: missing or invalid signatures are rejected with 401.
            HttpSigError::Missing => unauth(
                "signature.http_missing",
                "a request signature (RFC 9421) with the required tag is required",
            ),
            // RFC 9421 §4 / RFC 8941: both fields are dictionaries.
            HttpSigError::Malformed => unauth(
                "signature.http_malformed",
                "Signature-Input or Signature is malformed",
            ),
            // RFC 9421 §3.2 step 1.
            HttpSigError::Label => unauth(
                "signature.http_label",
                "Signature-Input names a signature that Signature does not carry",
            ),
            // RFC 9421 §7.2.6: multiple signature confusion.
            HttpSigError::Ambiguous => unauth(
                "signature.http_ambiguous",
                "more than one signature carries the required tag",
            ),
            // RFC 9421 §3.2.1 / FAPI 2.0: @method, @target-uri, authorization, dpop, content-digest.
            HttpSigError::Coverage => unauth(
                "signature.http_coverage",
                "the signature does not cover a required component",
            ),
            // RFC 9421 §2 and §7.5: components that are absent or could be read two ways.
            HttpSigError::Component(c) => match c {
                ComponentError::Missing => unauth(
                    "signature.http_component_missing",
                    "a covered component is not in the request",
                ),
                ComponentError::Unsupported => unauth(
                    "signature.http_component_unsupported",
                    "a covered component is not supported",
                ),
                ComponentError::Duplicate => unauth(
                    "signature.http_component_duplicate",
                    "a component is covered twice",
                ),
                ComponentError::Invalid => unauth(
                    "signature.http_component_invalid",
                    "a covered component value is ambiguous or not ASCII",
                ),
            },
            // FAPI 2.0: created is required and within the window (RFC 9421 §3.2.1).
            HttpSigError::CreatedMissing => unauth(
                "signature.http_created_missing",
                "the signature has no created parameter",
            ),
            HttpSigError::Created => unauth(
                "signature.http_created",
                "the signature is too old or from the future",
            ),
            // RFC 9421 §2.3 expires.
            HttpSigError::Expired => unauth("signature.http_expired", "the signature has expired"),
            // RFC 9421 §3.2 step 5: the key is found by keyid.
            HttpSigError::KeyidMissing => {
                unauth("signature.http_keyid_missing", "the signature has no keyid")
            }
            // RFC 9421 §7.2.2: signature replay.
            HttpSigError::NonceMissing => unauth(
                "signature.http_nonce_missing",
                "this resource requires a signature nonce",
            ),
            HttpSigError::Replay => unauth(
                "signature.http_replay",
                "the signature nonce was already used",
            ),
            // Fail closed rather than forget a nonce (RFC 9110 §15.6.4).
            HttpSigError::ReplayUnavailable => wire(
                S::SERVICE_UNAVAILABLE,
                "signature.http_replay_unavailable",
                "replay protection is unavailable",
            ),
            // FAPI 2.0: the client's keys come from its registration.
            HttpSigError::UnknownClient => unauth(
                "signature.http_unknown_client",
                "no signing keys are registered for this client",
            ),
            HttpSigError::UnknownKey => unauth(
                "signature.http_unknown_key",
                "the signature keyid is not a key of this client",
            ),
            HttpSigError::KeysUnavailable => wire(
                S::SERVICE_UNAVAILABLE,
                "signature.http_keys_unavailable",
                "signing keys cannot be checked now",
            ),
            // RFC 9421 §3.2 step 6.4 / §7.3.6: alg must agree with the key.
            HttpSigError::Alg => unauth(
                "signature.http_alg",
                "the signature algorithm does not match the key or is not allowed",
            ),
            // RFC 9421 §3.3.
            HttpSigError::BadSignature => unauth(
                "signature.http_invalid",
                "the request signature does not verify",
            ),
            // RFC 9530 / FAPI 2.0: a body must be covered by Content-Digest.
            HttpSigError::DigestMissing => unauth(
                "signature.digest_missing",
                "a request with a body must carry Content-Digest",
            ),
            HttpSigError::DigestMalformed => unauth(
                "signature.digest_malformed",
                "Content-Digest is malformed or has no sha-256 or sha-512",
            ),
            // RFC 9421 §7.2.8: the digest is recomputed over the body received.
            HttpSigError::DigestMismatch => unauth(
                "signature.digest_mismatch",
                "Content-Digest does not match the body",
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::idempotency::{Dialect, IdempotencyError as I};
    use http_body_util::BodyExt;

    async fn answer(r: &Rejection) -> (u16, serde_json::Value) {
        let resp = respond(r, "id-1", http::Version::HTTP_11, "ES256");
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&body).unwrap())
    }

    #[test]
    fn dpop_challenges_name_the_configured_algorithms() {
        let r = Rejection::Token(TokenError::Missing, Scheme::Bearer);
        let resp = respond(&r, "id-1", http::Version::HTTP_11, "ES256");
        let c = resp.headers()[WWW_AUTHENTICATE].to_str().unwrap();
        assert_eq!(c, "Bearer, DPoP algs=\"ES256\"");
        let r = Rejection::Token(TokenError::Expired, Scheme::DPoP);
        let c = r.challenge("PS256 EdDSA").unwrap();
        assert_eq!(c, "DPoP error=\"invalid_token\", algs=\"PS256 EdDSA\"");
    }

    #[tokio::test]
    async fn idempotency_refusals_on_obie_routes_use_the_obie_error_body() {
        let (s, b) = answer(&Rejection::Idempotency(I::Mismatch, Dialect::Ietf)).await;
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
            let (s, b) = answer(&Rejection::Idempotency(e, Dialect::Obie)).await;
            assert_eq!(s, status, "{e:?}");
            assert_eq!(b["Errors"][0]["ErrorCode"], code, "{e:?}");
            assert_eq!(b["Id"], "id-1");
        }
    }
}
