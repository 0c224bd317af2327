//! The upstream's failures (RFC 9110 §15.6) and the audit log's.

use http::StatusCode as S;

use super::{ObieError, Wire};
use crate::upstream::UpstreamError;
use portcullis_audit::AuditError;

pub(super) fn wire(e: UpstreamError) -> Wire {
    match e {
        // RFC 9110 §15.6.3.
        UpstreamError::Connect => Wire::new(
            S::BAD_GATEWAY,
            "upstream.connect_failed",
            "the upstream service is unavailable",
        ),
        // RFC 9110 §15.6.3.
        UpstreamError::Protocol => Wire::new(
            S::BAD_GATEWAY,
            "upstream.bad_response",
            "the upstream service failed to answer",
        ),
        // RFC 9110 §15.6.5.
        UpstreamError::Timeout => Wire::new(
            S::GATEWAY_TIMEOUT,
            "upstream.timeout",
            "the upstream service did not answer in time",
        ),
        // RFC 9110 §15.6.4: answered at once, without waiting out a connect timeout.
        UpstreamError::Unavailable(_) => Wire::new(
            S::SERVICE_UNAVAILABLE,
            "upstream.unavailable",
            "no instance of the upstream service can take the request now; try again later",
        ),
        // RFC 9110 §15.6.4.
        UpstreamError::Overloaded => Wire::new(
            S::SERVICE_UNAVAILABLE,
            "upstream.overloaded",
            "the upstream service has too many requests in progress; try again later",
        ),
    }
}

/// RFC 9110 §15.6.4: a temporary condition; the proxy fails closed rather than serve a request
/// it cannot audit.
pub(super) fn audit(e: AuditError) -> Wire {
    match e {
        AuditError::Unavailable => Wire::new(
            S::SERVICE_UNAVAILABLE,
            portcullis_audit::UNAVAILABLE_REASON,
            "the service cannot record this request now; try again later",
        ),
    }
}

/// The upstream's and the audit log's failures are the server's: `UK.OBIE.UnexpectedError`.
pub(super) fn obie(e: UpstreamError) -> ObieError {
    match e {
        UpstreamError::Connect
        | UpstreamError::Protocol
        | UpstreamError::Timeout
        | UpstreamError::Unavailable(_)
        | UpstreamError::Overloaded => ObieError::new(super::UNEXPECTED, None),
    }
}

pub(super) fn audit_obie(e: AuditError) -> ObieError {
    match e {
        AuditError::Unavailable => ObieError::new(super::UNEXPECTED, None),
    }
}
