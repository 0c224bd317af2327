//! The request target and the route table (RFC 3986, RFC 9110 §15.5.5-6).

use http::StatusCode as S;

use super::{ObieError, Wire};
use portcullis_base::path::PathError;
use portcullis_policy::NoRoute;

/// RFC 3986 §6 / RFC 9110 §4.2.3: only the canonical form is accepted (see the path check).
pub(super) fn path(e: PathError) -> Wire {
    Wire {
        status: S::BAD_REQUEST,
        reason: e.reason(),
        detail: e.detail(),
    }
}

pub(super) fn wire(e: &NoRoute) -> Wire {
    match e {
        // Default deny: an undeclared path does not exist (RFC 9110 §15.5.5).
        NoRoute::NotFound => Wire::new(S::NOT_FOUND, "route.not_found", "no such resource"),
        // RFC 9110 §15.5.6, with Allow.
        NoRoute::MethodNotAllowed { .. } => Wire::new(
            S::METHOD_NOT_ALLOWED,
            "route.method_not_allowed",
            "the method is not allowed on this resource",
        ),
    }
}

/// The OBIE error code of an unknown resource or method.
pub(super) fn obie(e: &NoRoute) -> ObieError {
    match e {
        NoRoute::NotFound => ObieError::new(super::NOT_FOUND, None),
        // OBIE has no code for a method a resource does not have (its 405 has no error body).
        NoRoute::MethodNotAllowed { .. } => ObieError::new(super::UNEXPECTED, None),
    }
}
