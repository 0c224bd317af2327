//! HTTP framing, limits and header hygiene (RFC 9110, 9112, 6585), and the FAPI headers.

use http::StatusCode as S;

use super::{ObieError, Wire};
use crate::pipeline::fapi::FapiError;
use crate::pipeline::http::HttpError;

pub(super) fn wire(e: HttpError) -> Wire {
    match e {
        // RFC 9112 §6.1: a message with both Transfer-Encoding and Content-Length "ought
        // to be handled as an error"; we refuse it and close (request smuggling).
        HttpError::ConflictingFraming => Wire::new(
            S::BAD_REQUEST,
            "http.conflicting_framing",
            "the request has both Content-Length and Transfer-Encoding",
        ),
        // RFC 9110 §8.6: differing or malformed Content-Length is unrecoverable.
        HttpError::BadContentLength => Wire::new(
            S::BAD_REQUEST,
            "http.bad_content_length",
            "the Content-Length header is malformed or repeated",
        ),
        // RFC 9112 §6.1: chunked must be the final and only coding we accept.
        HttpError::BadTransferEncoding => Wire::new(
            S::BAD_REQUEST,
            "http.bad_transfer_encoding",
            "the Transfer-Encoding header is not exactly chunked",
        ),
        // RFC 9110 §15.5.15.
        HttpError::UriTooLong => Wire::new(
            S::URI_TOO_LONG,
            "http.uri_too_long",
            "the request target is too long",
        ),
        // RFC 6585 §5.
        HttpError::TooManyHeaders => Wire::new(
            S::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "http.too_many_headers",
            "the request has too many header fields",
        ),
        // RFC 6585 §5.
        HttpError::HeadersTooLarge => Wire::new(
            S::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "http.headers_too_large",
            "the request header fields are too large",
        ),
        // RFC 9110 §5.1 allows `_`; proxies that map `_` to `-` make it a spoofing
        // vector (Envoy headers_with_underscores_action), so we refuse it.
        HttpError::HeaderUnderscore => Wire::new(
            S::BAD_REQUEST,
            "http.header_underscore",
            "header names with underscores are not accepted",
        ),
        // Method-override headers would let the upstream run a method we did not check.
        HttpError::MethodOverride => Wire::new(
            S::BAD_REQUEST,
            "http.method_override",
            "method overrides (headers or a _method parameter) are not accepted",
        ),
        // A hop would strip the nominated field after we checked it.
        HttpError::ConnectionNominates => Wire::new(
            S::BAD_REQUEST,
            "http.connection_nominates",
            "Connection may nominate only hop-by-hop options (close, keep-alive, te)",
        ),
        // RFC 9110 §7.8: no protocol switch around per-request inspection.
        HttpError::UpgradeRefused => Wire::new(
            S::BAD_REQUEST,
            "http.upgrade_refused",
            "protocol upgrades are not accepted",
        ),
        // RFC 9110 §15.5.20.
        HttpError::MisdirectedHost => Wire::new(
            S::MISDIRECTED_REQUEST,
            "http.misdirected",
            "this server does not serve the requested host",
        ),
        // RFC 9112 §3.2: a client MUST send Host in HTTP/1.1.
        HttpError::MissingHost => Wire::new(
            S::BAD_REQUEST,
            "http.missing_host",
            "the request must carry exactly one valid Host",
        ),
        // RFC 9110 §15.5.14.
        HttpError::BodyTooLarge => Wire::new(
            S::PAYLOAD_TOO_LARGE,
            "http.body_too_large",
            "the request body exceeds the limit of this route",
        ),
        // RFC 9110 §15.5.9.
        HttpError::BodyTimeout => Wire::new(
            S::REQUEST_TIMEOUT,
            "http.body_timeout",
            "the request body was not received in time",
        ),
        // RFC 9110 §15.5.1.
        HttpError::BodyRead => Wire::new(
            S::BAD_REQUEST,
            "http.body_read",
            "the request body could not be read",
        ),
        // RFC 9110 §15.5.16.
        HttpError::UnsupportedMediaType => Wire::new(
            S::UNSUPPORTED_MEDIA_TYPE,
            "http.unsupported_media_type",
            "the Content-Type of the body is not one this resource takes",
        ),
        // RFC 9110 §15.5.7.
        HttpError::NotAcceptable => Wire::new(
            S::NOT_ACCEPTABLE,
            "http.not_acceptable",
            "Accept rules out every media type this resource answers with",
        ),
    }
}

/// The OBIE error code of an HTTP-level refusal: a header at fault is `UK.OBIE.Header.*` with
/// the header as `Path`; the request target and the body are fields (`UK.OBIE.Field.Invalid`);
/// a body that did not arrive is nothing the client can correct in a field.
pub(super) fn obie(e: HttpError) -> ObieError {
    let header = |name| ObieError::new(super::HEADER_INVALID, Some(name));
    match e {
        HttpError::ConflictingFraming | HttpError::BadTransferEncoding => {
            header("Transfer-Encoding")
        }
        HttpError::BadContentLength => header("Content-Length"),
        HttpError::UriTooLong => ObieError::new(super::FIELD_INVALID, None),
        HttpError::TooManyHeaders | HttpError::HeadersTooLarge | HttpError::HeaderUnderscore => {
            ObieError::new(super::HEADER_INVALID, None)
        }
        HttpError::MethodOverride => ObieError::new(super::HEADER_INVALID, None),
        HttpError::ConnectionNominates => header("Connection"),
        HttpError::UpgradeRefused => header("Upgrade"),
        HttpError::MisdirectedHost => header("Host"),
        HttpError::MissingHost => ObieError::new(super::HEADER_MISSING, Some("Host")),
        HttpError::BodyTooLarge => ObieError::new(super::FIELD_INVALID, None),
        HttpError::BodyTimeout | HttpError::BodyRead => ObieError::new(super::UNEXPECTED, None),
        HttpError::UnsupportedMediaType => header("Content-Type"),
        HttpError::NotAcceptable => header("Accept"),
    }
}

/// The OBIE error code of a FAPI header refusal.
pub(super) fn fapi_obie(e: FapiError) -> ObieError {
    match e {
        FapiError::InteractionIdInvalid => {
            ObieError::new(super::HEADER_INVALID, Some("x-fapi-interaction-id"))
        }
        FapiError::CustomerIpInvalid => {
            ObieError::new(super::HEADER_INVALID, Some("x-fapi-customer-ip-address"))
        }
    }
}

pub(super) fn fapi(e: FapiError) -> Wire {
    match e {
        // FAPI 1.0 Part 1 §6.2.1-11: the interaction id is a RFC 4122 UUID.
        FapiError::InteractionIdInvalid => Wire::new(
            S::BAD_REQUEST,
            "fapi.interaction_id_invalid",
            "x-fapi-interaction-id must be a UUID",
        ),
        // FAPI 1.0 Part 1 §6.2.2-4: x-fapi-customer-ip-address carries an IP address.
        FapiError::CustomerIpInvalid => Wire::new(
            S::BAD_REQUEST,
            "fapi.customer_ip_invalid",
            "x-fapi-customer-ip-address must be an IPv4 or IPv6 address",
        ),
    }
}
