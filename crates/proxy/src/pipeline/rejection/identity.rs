//! The caller's certificate (RFC 8705 §2, FAPI).

use http::StatusCode as S;

use super::{ObieError, Wire};
use crate::pipeline::identity::IdentityError;

pub(super) fn wire(e: IdentityError) -> Wire {
    match e {
        // RFC 8705 §2 / FAPI: the route needs a mutually authenticated client.
        IdentityError::ClientCertRequired => Wire::new(
            S::UNAUTHORIZED,
            "identity.client_cert_required",
            "this resource requires a client certificate",
        ),
        // The certificate was valid at the handshake and has expired since.
        IdentityError::ClientCertExpired => Wire::new(
            S::UNAUTHORIZED,
            "identity.client_cert_expired",
            "the client certificate has expired; connect again with a valid one",
        ),
        // The CRLs were reloaded since the handshake and now revoke it.
        IdentityError::ClientCertRevoked => Wire::new(
            S::UNAUTHORIZED,
            "identity.client_cert_revoked",
            "the client certificate has been revoked",
        ),
        // The CRL covering it has passed its nextUpdate since the handshake: its status is
        // unknown, and a new handshake would be refused too (fail closed).
        IdentityError::ClientCertRevocationUnknown => Wire::new(
            S::UNAUTHORIZED,
            "identity.client_cert_revocation_unknown",
            "the revocation status of the client certificate is unknown",
        ),
    }
}

/// The OBIE error code of a certificate refusal: the certificate is a TLS credential, not a
/// header or field, and OBIE has no code for it.
pub(super) fn obie(e: IdentityError) -> ObieError {
    match e {
        IdentityError::ClientCertRequired
        | IdentityError::ClientCertExpired
        | IdentityError::ClientCertRevoked
        | IdentityError::ClientCertRevocationUnknown => ObieError::new(super::UNEXPECTED, None),
    }
}
