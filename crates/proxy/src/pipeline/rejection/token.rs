//! Access tokens (RFC 6750, RFC 9068, RFC 8725, RFC 7662) and their challenges.

use http::StatusCode as S;

use super::{ObieError, Wire};
use crate::pipeline::token::{Scheme, TokenError};

pub(super) fn wire(e: TokenError) -> Wire {
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
        // RFC 7517 §4.5: one kid may name keys of different types; the token's alg chooses
        // among them, and a choice between two keys of one algorithm is never guessed.
        TokenError::AmbiguousKey => (
            S::UNAUTHORIZED,
            "token.ambiguous_key",
            "the token's key cannot be told apart in the issuer's key set",
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
    Wire::new(status, reason, detail)
}

/// The `WWW-Authenticate` challenge (RFC 6750 §3), in the scheme the client used; `algs` names
/// the DPoP proof algorithms this server accepts.
pub(super) fn challenge(e: TokenError, scheme: Scheme, algs: &str) -> Option<String> {
    let error = match e {
        // RFC 6750 §3.1: no error code when no credentials were sent; both schemes offered.
        TokenError::Missing | TokenError::UnsupportedScheme => {
            return Some(format!("Bearer, DPoP {algs}"))
        }
        TokenError::KeysUnavailable | TokenError::IntrospectionUnavailable => return None,
        TokenError::InQuery | TokenError::Multiple | TokenError::BadHeader => "invalid_request",
        TokenError::TooLarge
        | TokenError::Malformed
        | TokenError::AlgNotAllowed
        | TokenError::ForbiddenHeader
        | TokenError::UnknownKey
        | TokenError::AmbiguousKey
        | TokenError::KeyMismatch
        | TokenError::BadSignature
        | TokenError::Typ
        | TokenError::Issuer
        | TokenError::Audience
        | TokenError::ExpMissing
        | TokenError::Expired
        | TokenError::NotYetValid
        | TokenError::IssuedAt
        | TokenError::ClaimType
        | TokenError::Inactive
        | TokenError::ConfirmationUnsupported
        | TokenError::NotAccessToken => "invalid_token",
    };
    Some(match scheme {
        Scheme::Bearer => format!("Bearer error=\"{error}\""),
        Scheme::DPoP => format!("DPoP error=\"{error}\", {algs}"),
    })
}

/// The OBIE error code of a token refusal: the token travels in `Authorization`, so a missing
/// token is `UK.OBIE.Header.Missing` and every token that does not verify is
/// `UK.OBIE.Header.Invalid`, both with that header as `Path`; a token in the query is an
/// unexpected field; an issuer that cannot be asked is the server's problem.
pub(super) fn obie(e: TokenError) -> ObieError {
    const AUTHORIZATION: Option<&str> = Some("Authorization");
    match e {
        TokenError::Missing => ObieError::new(super::HEADER_MISSING, AUTHORIZATION),
        TokenError::InQuery => ObieError::new(super::FIELD_UNEXPECTED, Some("access_token")),
        TokenError::Multiple
        | TokenError::BadHeader
        | TokenError::UnsupportedScheme
        | TokenError::TooLarge
        | TokenError::Malformed
        | TokenError::AlgNotAllowed
        | TokenError::ForbiddenHeader
        | TokenError::UnknownKey
        | TokenError::AmbiguousKey
        | TokenError::KeyMismatch
        | TokenError::BadSignature
        | TokenError::Typ
        | TokenError::Issuer
        | TokenError::Audience
        | TokenError::ExpMissing
        | TokenError::Expired
        | TokenError::NotYetValid
        | TokenError::IssuedAt
        | TokenError::ConfirmationUnsupported
        | TokenError::NotAccessToken
        | TokenError::ClaimType
        | TokenError::Inactive => ObieError::new(super::HEADER_INVALID, AUTHORIZATION),
        TokenError::KeysUnavailable | TokenError::IntrospectionUnavailable => {
            ObieError::new(super::UNEXPECTED, None)
        }
    }
}
