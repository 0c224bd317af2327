//! A quarantined client (see `crate::pipeline::quarantine`).

use http::StatusCode as S;

use super::{ObieError, Wire};

pub(super) fn wire() -> Wire {
    Wire::new(
        S::FORBIDDEN,
        "detect.quarantined",
        "this client is quarantined after repeated refusals; retry after the time in Retry-After",
    )
}

/// OBIE has no code for a quarantined client; `Retry-After` says when to come back.
pub(super) fn obie() -> ObieError {
    ObieError::new(super::UNEXPECTED, None)
}
