//! Identity: who the caller is, from the verified mTLS certificate only.

use std::sync::Arc;

use portcullis_crypto::pki::{ClientCert, Revoked};
use portcullis_policy::{CertRequirement, Route};

portcullis_base::variants! {
    // Named like their reason codes (`identity.client_cert_*`).
    #[allow(clippy::enum_variant_names)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum IdentityError {
        ClientCertRequired,
        /// The connection's certificate has expired since its handshake.
        ClientCertExpired,
        /// The connection's certificate is revoked by the CRLs loaded now.
        ClientCertRevoked,
        /// Every CRL of the certificate's issuer is past its `nextUpdate`.
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
