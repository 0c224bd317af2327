//! Scopes, consent, object and response rules.

use http::StatusCode as S;

use super::{ObieError, Wire};
use crate::pipeline::token::Scheme;
use portcullis_policy::rules::{AuthzError, Denial};

pub(super) fn wire(d: &Denial) -> Wire {
    // A rule that hides existence answers exactly like an unknown resource; the audit record
    // keeps the real reason ([`Rejection::audit_reason`]).
    if d.hidden {
        return Wire::new(S::NOT_FOUND, "route.not_found", "no such resource");
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
        // RFC 9396 §2: the entry that grants the payment's accounts grants at most its amount,
        // in its currency; more is a different grant, refused like a foreign object.
        AuthzError::GrantAmount => (
            S::FORBIDDEN,
            "authz.grant_amount",
            "the amount exceeds the grant or is in another currency",
        ),
        // RFC 9110 §15.5.1: an amount that is not a plain decimal string (a float, an exponent,
        // a sign) or a currency that is not an ISO 4217 code cannot be compared, only refused.
        AuthzError::AmountMalformed => (
            S::BAD_REQUEST,
            "authz.amount_malformed",
            "an amount or currency the policy checks is malformed",
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
    Wire::new(status, reason, detail)
}

/// The challenge of a denial (RFC 6750 §3, RFC 9449 §7.1), in the scheme the client's token
/// came in; `algs` names the DPoP proof algorithms.
///
/// Every 403 denial carries `error="insufficient_scope"`: the token is valid and bound, but
/// the grant behind it (its scopes, the consent it names, the objects that consent covers)
/// does not reach this request, and the remedy is a token with a larger grant. RFC 6750 §3.1
/// pairs `invalid_token` with 401 and `invalid_request` with 400, so a 403 (what OBIE answers
/// for consent and object denials) carries neither; only a scope denial names the `scope` it
/// needs. The other denials carry no challenge: a hidden denial answers exactly like an
/// unknown resource, whose 404 has none (a challenge would reveal that the object exists); a
/// request the policy cannot read unambiguously (400) is not about the token; an unavailable
/// consent source (503) and a withheld response (502) decide nothing about the token.
pub(super) fn challenge(d: &Denial, scheme: Option<Scheme>, algs: &str) -> Option<String> {
    if d.hidden {
        return None;
    }
    let scope = match &d.error {
        AuthzError::Scope(scope) => Some(scope.as_str()),
        AuthzError::ConsentMissing
        | AuthzError::ConsentNotFound
        | AuthzError::ConsentStatus
        | AuthzError::ConsentExpired
        | AuthzError::ConsentPermission
        | AuthzError::Object
        | AuthzError::GrantAmount
        | AuthzError::ObjectMissing => None,
        AuthzError::ConsentUnavailable
        | AuthzError::Ambiguous
        | AuthzError::Mismatch
        | AuthzError::AmountMalformed
        | AuthzError::BodyNotJson
        | AuthzError::ResponseLeak => return None,
    };
    let params = match scope {
        Some(s) => format!("error=\"insufficient_scope\", scope=\"{s}\""),
        None => "error=\"insufficient_scope\"".to_string(),
    };
    // No token (a route without auth), no scheme to challenge in.
    Some(match scheme? {
        Scheme::Bearer => format!("Bearer {params}"),
        Scheme::DPoP => format!("DPoP {params}, {algs}"),
    })
}

/// The OBIE error code of a denial: consent problems are `UK.OBIE.Resource.*`
/// (`InvalidConsentStatus` for a consent that is not Authorised or has expired,
/// `ConsentMismatch` when the consent does not reach the request, an object outside it
/// included); a hidden denial answers exactly like an unknown resource.
pub(super) fn obie(d: &Denial) -> ObieError {
    if d.hidden {
        return ObieError::new(super::NOT_FOUND, None);
    }
    match &d.error {
        // The token is valid but its grant does not reach the resource: a fault of what
        // `Authorization` carries (OBIE has no scope code).
        AuthzError::Scope(_) => ObieError::new(super::HEADER_INVALID, Some("Authorization")),
        // An amount beyond the grant is the consent not reaching the request, like any value
        // outside it.
        AuthzError::ConsentMissing
        | AuthzError::ConsentNotFound
        | AuthzError::ConsentPermission
        | AuthzError::Object
        | AuthzError::GrantAmount => ObieError::new(super::CONSENT_MISMATCH, None),
        AuthzError::ConsentStatus | AuthzError::ConsentExpired => {
            ObieError::new(super::CONSENT_STATUS, None)
        }
        AuthzError::ObjectMissing => ObieError::new(super::FIELD_MISSING, None),
        AuthzError::Ambiguous | AuthzError::Mismatch | AuthzError::AmountMalformed => {
            ObieError::new(super::FIELD_INVALID, None)
        }
        AuthzError::BodyNotJson => ObieError::new(super::INVALID_FORMAT, None),
        AuthzError::ConsentUnavailable | AuthzError::ResponseLeak => {
            ObieError::new(super::UNEXPECTED, None)
        }
    }
}
