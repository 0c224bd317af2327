//! Idempotency keys (draft-ietf-httpapi-idempotency-key-header; OBIE on OBIE routes).

use http::StatusCode as S;

use super::{ObieError, Wire};
use crate::pipeline::idempotency::{Dialect, IdempotencyError as I};

pub(super) fn wire(e: I, dialect: Dialect) -> Wire {
    match e {
        // OBIE answers request validation failures with 400 and an error code;
        // a key reused for another payload is an invalid x-idempotency-key.
        I::Mismatch if dialect == Dialect::Obie => Wire::new(
            S::BAD_REQUEST,
            "idempotency.key_reused",
            "this idempotency key was used for a different request",
        ),
        // draft-ietf-httpapi-idempotency-key-header §2.7: missing key: 400.
        I::KeyMissing => Wire::new(
            S::BAD_REQUEST,
            "idempotency.key_missing",
            "this resource requires an x-idempotency-key or Idempotency-Key header",
        ),
        // OBIE: x-idempotency-key is at most 40 characters; one key only.
        I::KeyInvalid => Wire::new(
            S::BAD_REQUEST,
            "idempotency.key_invalid",
            "the idempotency key must be one value of 1 to 40 printable characters",
        ),
        // draft-ietf-httpapi-idempotency-key-header §2.7: concurrent retry: 409.
        I::InFlight => Wire::new(
            S::CONFLICT,
            "idempotency.in_flight",
            "a request with this idempotency key is still being processed",
        ),
        // draft-ietf-httpapi-idempotency-key-header §2.7: key reused with another
        // payload: 422.
        I::Mismatch => Wire::new(
            S::UNPROCESSABLE_ENTITY,
            "idempotency.key_reused",
            "this idempotency key was used for a different request",
        ),
        // Fail closed rather than risk a duplicate payment (RFC 9110 §15.6.4).
        I::Unavailable => Wire::new(
            S::SERVICE_UNAVAILABLE,
            "idempotency.unavailable",
            "idempotency keys cannot be checked now; try again later",
        ),
    }
}

/// The OBIE error code of an idempotency-key refusal on an OBIE route.
pub(super) fn obie(e: I) -> ObieError {
    const KEY: Option<&str> = Some("x-idempotency-key");
    match e {
        I::KeyMissing => ObieError::new(super::HEADER_MISSING, KEY),
        I::KeyInvalid | I::Mismatch | I::InFlight => ObieError::new(super::HEADER_INVALID, KEY),
        I::Unavailable => ObieError::new(super::UNEXPECTED, None),
    }
}
