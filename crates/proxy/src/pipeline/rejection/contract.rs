//! Request contracts (OpenAPI): a request that does not fit its operation is a bad request
//! (RFC 9110 §15.5.1), whatever the keyword; the reason code says which kind of promise it
//! broke, the body names the JSON pointer and the keyword, never the value.

use http::StatusCode as S;

use super::{ObieError, Wire};
use crate::pipeline::contract::ResponseRefusal;
use portcullis_policy::contract::{Fault, Violation};

pub(super) fn wire(v: &Violation) -> Wire {
    let detail = match v.fault {
        Fault::BodyNotJson => "the request body is not JSON",
        Fault::BodyMissing => "the request body is required",
        Fault::Ambiguous => "a member or parameter is repeated, or repeated in another case",
        Fault::TooDeep => "the request body is nested too deeply",
        Fault::Required => "a required member or parameter is missing",
        Fault::Type => "a member or parameter has the wrong type",
        Fault::Enum => "a member or parameter is not one of the allowed values",
        Fault::Pattern => "a member or parameter does not match its pattern",
        Fault::Length => "a member or parameter is too long or too short",
        Fault::Range => "a number is out of range",
        Fault::Format => "a member or parameter is not in its format",
        Fault::Undeclared => "the request has a member or parameter the API does not declare",
        Fault::Composition => "the request fits none (or more than one) of the allowed shapes",
        Fault::Other => "the request does not fit the API's schema",
    };
    Wire::new(S::BAD_REQUEST, v.fault.reason(), detail)
}

/// OBIE Standard Error Codes: a header parameter is a `Header` error, everything else a
/// `Field` error; `Path` is the JSON pointer of the refusal, put in by the answer.
pub(super) fn obie(v: &Violation) -> ObieError {
    let header = v.pointer.starts_with("/header/");
    let code = match (v.fault, header) {
        (Fault::Required, true) => super::HEADER_MISSING,
        (_, true) => super::HEADER_INVALID,
        (Fault::Required | Fault::BodyMissing, false) => super::FIELD_MISSING,
        (Fault::Undeclared, false) => super::FIELD_UNEXPECTED,
        (Fault::BodyNotJson, false) => super::INVALID_FORMAT,
        (
            Fault::Ambiguous
            | Fault::TooDeep
            | Fault::Type
            | Fault::Enum
            | Fault::Pattern
            | Fault::Length
            | Fault::Range
            | Fault::Format
            | Fault::Composition
            | Fault::Other,
            false,
        ) => super::FIELD_INVALID,
    };
    // Stands for the pointer of each refusal, which the answer puts in its place.
    ObieError::new(code, Some("<JSON pointer>"))
}

/// An answer withheld because it breaks the operation's responses: the upstream failed to give
/// a valid answer (RFC 9110 §15.6.3), as for a withheld response-rule answer. The client learns
/// nothing of what was wrong with it; the record says.
pub(super) fn response(r: ResponseRefusal) -> Wire {
    match r {
        ResponseRefusal::Invalid => Wire::new(
            S::BAD_GATEWAY,
            "contract.response_invalid",
            "the upstream response was withheld",
        ),
        ResponseRefusal::Status => Wire::new(
            S::BAD_GATEWAY,
            "contract.response_status",
            "the upstream response was withheld",
        ),
        ResponseRefusal::Unchecked => Wire::new(
            S::BAD_GATEWAY,
            "contract.response_unchecked",
            "the upstream response was withheld",
        ),
    }
}
