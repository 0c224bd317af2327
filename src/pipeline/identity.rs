//! Identity: who the caller is, from the verified mTLS certificate only.

use std::sync::Arc;

use crate::conn::ConnInfo;
use crate::pki::ClientCert;
use crate::policy::{CertRequirement, Route};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdentityError {
    ClientCertRequired,
}

/// The authenticated caller. `cert` is `None` only on routes that allow anonymous TLS.
#[derive(Clone, Debug)]
pub struct ClientIdentity {
    pub cert: Option<Arc<ClientCert>>,
}

pub fn identify(conn: &ConnInfo, route: &Route) -> Result<ClientIdentity, IdentityError> {
    match (&conn.client_cert, route.client_cert) {
        (Some(c), _) => Ok(ClientIdentity {
            cert: Some(Arc::clone(c)),
        }),
        (None, CertRequirement::Optional) => Ok(ClientIdentity { cert: None }),
        (None, CertRequirement::Required) => Err(IdentityError::ClientCertRequired),
    }
}
