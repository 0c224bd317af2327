//! Identity: who the caller is, from the verified mTLS certificate only.

use std::sync::Arc;

use portcullis_crypto::pki::{ClientCert, Revoked};
use portcullis_policy::{CertRequirement, Route};
use portcullis_sources::ocsp::{FailMode, OcspChecker, OcspOutcome};

portcullis_base::variants! {
    // Named like their reason codes (`identity.client_cert_*`).
    #[allow(clippy::enum_variant_names)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum IdentityError {
        ClientCertRequired,
        /// The connection's certificate has expired since its handshake.
        ClientCertExpired,
        /// The connection's certificate is revoked by the CRLs loaded now, or by its OCSP
        /// responder.
        ClientCertRevoked,
        /// Every CRL of the certificate's issuer is past its `nextUpdate`, or (OCSP, `fail:
        /// closed`) no verified good answer could be had.
        ClientCertRevocationUnknown,
    }
}

/// The authenticated caller; made only by [`identify`].
#[derive(Clone, Debug)]
pub(crate) struct ClientIdentity {
    cert: Option<Arc<ClientCert>>,
}

impl ClientIdentity {
    /// The verified certificate; `None` only on routes that allow anonymous TLS.
    pub(crate) fn cert(&self) -> Option<&ClientCert> {
        self.cert.as_deref()
    }
}

/// The caller holding `cert` (the connection's verified certificate) at `now` (Unix seconds). rustls checks validity and revocation only at
/// the handshake; a keep-alive or HTTP/2 connection must not outlive its certificate, so every
/// request checks `notAfter`, the current CRLs and their `nextUpdate` again.
pub(crate) fn identify(
    cert: Option<&Arc<ClientCert>>,
    route: &Route,
    revoked: &Revoked,
    now: i64,
) -> Result<ClientIdentity, IdentityError> {
    match (cert, route.client_cert) {
        (Some(c), _) if c.not_after < now => Err(IdentityError::ClientCertExpired),
        (Some(c), _) if revoked.contains(c) => Err(IdentityError::ClientCertRevoked),
        (Some(c), _) if revoked.expired_for(c, now) => {
            Err(IdentityError::ClientCertRevocationUnknown)
        }
        (Some(c), _) => Ok(ClientIdentity {
            cert: Some(Arc::clone(c)),
        }),
        (None, CertRequirement::Optional) => Ok(ClientIdentity { cert: None }),
        (None, CertRequirement::Required) => Err(IdentityError::ClientCertRequired),
    }
}

/// On listeners with OCSP: what the certificate's responder says of it (cached until the
/// answer's `nextUpdate`, capped by `max_age`; see `portcullis_sources::ocsp`). Checked on
/// every request, so a connection opened before a revocation meets it once the cached answer
/// is stale. `revoked` is always a refusal; no verified answer refuses too, unless the
/// listener says `fail: open`, which lets the request on and counts it. `record` gets what
/// the check found, for the audit record.
pub(crate) async fn check_ocsp(
    identity: &ClientIdentity,
    ocsp: Option<&OcspChecker>,
    now: i64,
    record: &mut Option<&'static str>,
) -> Result<(), IdentityError> {
    let (Some(cert), Some(ocsp)) = (identity.cert.as_deref(), ocsp) else {
        return Ok(());
    };
    let outcome = ocsp.status(cert, now).await;
    match outcome {
        OcspOutcome::Good => {
            *record = Some(outcome.as_str());
            Ok(())
        }
        OcspOutcome::Revoked => {
            *record = Some(outcome.as_str());
            Err(IdentityError::ClientCertRevoked)
        }
        OcspOutcome::Unknown | OcspOutcome::Unavailable | OcspOutcome::Invalid => {
            match ocsp.fail_mode() {
                FailMode::Closed => {
                    *record = Some(outcome.as_str());
                    Err(IdentityError::ClientCertRevocationUnknown)
                }
                FailMode::Open => {
                    ocsp.count_fail_open();
                    *record = Some(outcome.as_fail_open_str());
                    Ok(())
                }
            }
        }
    }
}
