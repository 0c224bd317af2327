//! Identity: who the caller is, from the verified mTLS certificate only.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use portcullis_crypto::pki::{ClientCert, Revoked};
use portcullis_policy::{CertRequirement, Route};
use portcullis_sources::leafcrl::{LeafCrlChecker, LeafCrlOutcome};
use portcullis_sources::ocsp::{OcspChecker, OcspOutcome};
use portcullis_sources::revocation::{Counts, FailMode};

portcullis_base::variants! {
    // Named like their reason codes (`identity.client_cert_*`).
    #[allow(clippy::enum_variant_names)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum IdentityError {
        ClientCertRequired,
        /// The connection's certificate has expired since its handshake.
        ClientCertExpired,
        /// The connection's certificate is revoked by the CRLs loaded now, by its OCSP
        /// responder, or by the CRL its distribution point serves.
        ClientCertRevoked,
        /// Every CRL of the certificate's issuer is past its `nextUpdate`, or (OCSP or
        /// `leaf_crls`, `fail: closed`) no verified good answer or CRL could be had.
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

/// What a per-request revocation check found for a certificate.
enum Found {
    Good(&'static str),
    Revoked(&'static str),
    /// No verified status: what to record when the listener fails closed, and when open.
    Unknown {
        closed: &'static str,
        open: &'static str,
    },
}

/// The outcome of a revocation check as the listener's `fail` mode decides it: `revoked` is
/// always a refusal; no verified status refuses too, unless `fail: open`, which lets the request
/// on and counts it in `counts`. `record` gets what the check found, for the audit record.
fn settle(
    found: Found,
    fail: FailMode,
    counts: &Counts,
    record: &mut Option<&'static str>,
) -> Result<(), IdentityError> {
    match found {
        Found::Good(r) => {
            *record = Some(r);
            Ok(())
        }
        Found::Revoked(r) => {
            *record = Some(r);
            Err(IdentityError::ClientCertRevoked)
        }
        Found::Unknown { closed, open } => match fail {
            FailMode::Closed => {
                *record = Some(closed);
                Err(IdentityError::ClientCertRevocationUnknown)
            }
            FailMode::Open => {
                counts.fail_open.fetch_add(1, Ordering::Relaxed);
                *record = Some(open);
                Ok(())
            }
        },
    }
}

/// On listeners with OCSP: what the certificate's responder says of it (cached until the
/// answer's `nextUpdate`, capped by `max_age`; see `portcullis_sources::ocsp`). Checked on
/// every request, so a connection opened before a revocation meets it once the cached answer
/// is stale.
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
    let found = match outcome {
        OcspOutcome::Good => Found::Good(outcome.as_str()),
        OcspOutcome::Revoked => Found::Revoked(outcome.as_str()),
        OcspOutcome::Unknown | OcspOutcome::Unavailable | OcspOutcome::Invalid => Found::Unknown {
            closed: outcome.as_str(),
            open: outcome.as_fail_open_str(),
        },
    };
    settle(found, ocsp.fail_mode(), &ocsp.counts, record)
}

/// On listeners with `leaf_crls`: what the CRL at the certificate's own distribution point
/// says of it (the certificate verified at the handshake, so only a URL a client CA signed is
/// fetched; cached until the CRL's `nextUpdate`, capped by `max_age`; see
/// `portcullis_sources::leafcrl`). Checked on every request, like OCSP, so a connection opened
/// before a revocation meets it once the cached CRL is stale. A certificate that names no
/// point to fetch, but whose issuer has a current CRL among the listener's own (`revoked`,
/// which [`identify`] has checked), has a known status: it passes, recorded as such.
pub(crate) async fn check_leaf_crl(
    identity: &ClientIdentity,
    crls: Option<&LeafCrlChecker>,
    revoked: &Revoked,
    now: i64,
    record: &mut Option<&'static str>,
) -> Result<(), IdentityError> {
    let (Some(cert), Some(crls)) = (identity.cert.as_deref(), crls) else {
        return Ok(());
    };
    let outcome = crls.status(cert, now).await;
    let found = match outcome {
        LeafCrlOutcome::NoUrl if revoked.covers(&cert.issuer_der) => {
            Found::Good("crl_dp_none_covered")
        }
        LeafCrlOutcome::Good => Found::Good(outcome.as_str()),
        LeafCrlOutcome::Revoked => Found::Revoked(outcome.as_str()),
        LeafCrlOutcome::NoUrl | LeafCrlOutcome::Unavailable | LeafCrlOutcome::Invalid => {
            Found::Unknown {
                closed: outcome.as_str(),
                open: outcome.as_fail_open_str(),
            }
        }
    };
    settle(found, crls.fail_mode(), &crls.counts, record)
}
