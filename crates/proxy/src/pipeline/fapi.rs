//! FAPI request headers: `x-fapi-interaction-id` and `x-fapi-customer-ip-address`.
//!
//! The interaction id correlates a request across TPP, proxy and bank; it is echoed only when it
//! is a UUID (so it is safe to log and to put in a response header) and generated otherwise.
//! The customer IP address is the TPP's statement about its user: it must be an IP literal, it
//! is forwarded as data, and it is never trusted for anything (rate limits, allow-lists).

// Public for the `internals` feature (the fuzz harness and the benchmarks drive it directly).
#![cfg_attr(not(feature = "internals"), allow(unreachable_pub))]

use http::HeaderMap;

use crate::config::InteractionIdMode;

pub const INTERACTION_ID: &str = "x-fapi-interaction-id";
pub const CUSTOMER_IP: &str = "x-fapi-customer-ip-address";

portcullis_base::variants! {
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum FapiError {
        InteractionIdInvalid,
        CustomerIpInvalid,
    }
}

/// The interaction id for this request, and a refusal when the mode says a bad one is refused.
/// The returned id is always a UUID, so it is always safe to echo.
pub fn interaction_id(headers: &HeaderMap, mode: InteractionIdMode) -> (String, Option<FapiError>) {
    let mut values = headers.get_all(INTERACTION_ID).iter();
    let given = match (values.next(), values.next()) {
        (None, _) => return (uuid::Uuid::new_v4().to_string(), None),
        (Some(v), None) => v.to_str().ok().and_then(|s| uuid::Uuid::try_parse(s).ok()),
        (Some(_), Some(_)) => None,
    };
    match (given, mode) {
        // Echo the client's spelling (case) only when it is the canonical hyphenated form.
        (Some(u), _) => (u.hyphenated().to_string(), None),
        (None, InteractionIdMode::EchoOrGenerate) => (uuid::Uuid::new_v4().to_string(), None),
        (None, InteractionIdMode::RejectInvalid) => (
            uuid::Uuid::new_v4().to_string(),
            Some(FapiError::InteractionIdInvalid),
        ),
    }
}

pub fn check_customer_ip(headers: &HeaderMap) -> Result<(), FapiError> {
    let mut values = headers.get_all(CUSTOMER_IP).iter();
    match (values.next(), values.next()) {
        (None, _) => Ok(()),
        (Some(v), None) => v
            .to_str()
            .ok()
            .and_then(|s| s.parse::<std::net::IpAddr>().ok())
            .map(|_| ())
            .ok_or(FapiError::CustomerIpInvalid),
        (Some(_), Some(_)) => Err(FapiError::CustomerIpInvalid),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn a_uuid_interaction_id_is_echoed() {
        let id = "93bac548-d2de-4546-b106-880a5018460d";
        let (got, err) = interaction_id(
            &headers(&[(INTERACTION_ID, id)]),
            InteractionIdMode::RejectInvalid,
        );
        assert_eq!((got.as_str(), err), (id, None));
    }

    #[test]
    fn a_bad_interaction_id_is_replaced_or_refused_by_mode() {
        let h = headers(&[(INTERACTION_ID, "<script>")]);
        let (got, err) = interaction_id(&h, InteractionIdMode::EchoOrGenerate);
        assert!(uuid::Uuid::try_parse(&got).is_ok());
        assert_eq!(err, None);
        let (_, err) = interaction_id(&h, InteractionIdMode::RejectInvalid);
        assert_eq!(err, Some(FapiError::InteractionIdInvalid));
        let (got, err) = interaction_id(&headers(&[]), InteractionIdMode::RejectInvalid);
        assert!(uuid::Uuid::try_parse(&got).is_ok());
        assert_eq!(err, None);
    }

    #[test]
    fn customer_ip_must_be_one_ip_literal() {
        assert_eq!(
            check_customer_ip(&headers(&[(CUSTOMER_IP, "10.1.2.3")])),
            Ok(())
        );
        assert_eq!(
            check_customer_ip(&headers(&[(CUSTOMER_IP, "2001:db8::1")])),
            Ok(())
        );
        for bad in ["evil.example", "10.1.2.3, 10.0.0.1", "", "10.1.2.3:80"] {
            assert_eq!(
                check_customer_ip(&headers(&[(CUSTOMER_IP, bad)])),
                Err(FapiError::CustomerIpInvalid),
                "{bad}"
            );
        }
    }
}
