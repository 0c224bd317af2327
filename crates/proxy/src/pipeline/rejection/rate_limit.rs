//! Rate limits (RFC 6585 §4, draft-ietf-httpapi-ratelimit-headers).

use http::StatusCode as S;

use super::{ObieError, Wire};
use crate::pipeline::ratelimit::{Limited, Scope};

pub(super) fn wire(l: &Limited) -> Wire {
    match l.scope {
        Scope::Peer => Wire::new(
            S::TOO_MANY_REQUESTS,
            "rate_limit.peer",
            "too many requests from this address; retry after the time in Retry-After",
        ),
        Scope::Client => Wire::new(
            S::TOO_MANY_REQUESTS,
            "rate_limit.client",
            "too many requests from this client; retry after the time in Retry-After",
        ),
        // The fleet quota (Redis) cannot be checked and state.on_outage.rate_limits is
        // `refuse`: RFC 9110 §15.6.4, with Retry-After.
        Scope::Unavailable => Wire::new(
            S::SERVICE_UNAVAILABLE,
            "rate_limit.unavailable",
            "rate limits cannot be checked now; try again later",
        ),
    }
}

/// OBIE has no code for a rate limit (its 429 carries no error body); `Retry-After` says what
/// to do.
pub(super) fn obie(l: &Limited) -> ObieError {
    match l.scope {
        Scope::Peer | Scope::Client | Scope::Unavailable => ObieError::new(super::UNEXPECTED, None),
    }
}
