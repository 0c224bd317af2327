//! Sender constraint: prove that the presenter of the token is the client it was issued to.
//!
//! - `cnf.x5t#S256` (RFC 8705 §3): must equal, byte for byte, the unpadded base64url SHA-256 of
//!   the DER of this connection's verified client certificate. No certificate: refused.
//! - `cnf.jkt` (RFC 9449): the request must use the `DPoP` scheme (a DPoP-bound token sent as
//!   `Bearer` is refused, §7.2) with exactly one `DPoP` proof that passes every §4.3 check, is
//!   signed by the key whose thumbprint is `jkt`, and whose `jti` was not seen within its window.
//! - Neither: only the `bearer` profile accepts the token; FAPI profiles refuse it (no quiet
//!   fallback). The `DPoP` scheme with a token that has no `jkt` is refused (§7.1).
//! - `fapi1-advanced` accepts only certificate binding.

use std::sync::Arc;

use http::request::Parts;

use super::token::{AccessToken, Scheme};
use crate::config::DpopSettings;
use portcullis_crypto::jose::dpop::{self, DpopError, Expect};
use portcullis_crypto::pki::ClientCert;
use portcullis_policy::Profile;
use portcullis_state::replay::{ReplayError, ReplayStore};

portcullis_base::variants! {
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum BindingError {
        /// The profile needs a bound token and this one has no `cnf`.
        Unbound,
        /// The profile needs certificate binding (fapi1-advanced).
        MtlsRequired,
        CertMismatch,
        NoClientCert,
        /// A DPoP-bound token presented as `Bearer`.
        BearerForDpopToken,
        /// The `DPoP` scheme with a token that is not DPoP-bound.
        SchemeWithoutJkt,
        ProofMissing,
        ProofMultiple,
        Proof(DpopError),
        JktMismatch,
        Replay,
        /// The replay store is full or cannot answer (503 `binding.replay_store_unavailable`).
        ReplayStoreFull,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Binding {
    Mtls,
    Dpop,
    /// A plain bearer token on a `bearer` route.
    None,
}

/// A token proven to belong to its presenter (or accepted as bearer by the route's profile);
/// made only by [`bind`].
#[derive(Debug)]
pub(crate) struct BoundToken {
    token: Arc<AccessToken>,
    scheme: Scheme,
}

impl BoundToken {
    pub(crate) fn token(&self) -> &Arc<AccessToken> {
        &self.token
    }

    /// The scheme the token came in (a later refusal challenges in it).
    pub(crate) fn scheme(&self) -> Scheme {
        self.scheme
    }
}

/// What the binding check needs to know about the request.
pub(crate) struct Presented<'a> {
    pub parts: &'a Parts,
    pub scheme: Scheme,
    pub raw_token: &'a str,
    /// The request's external target URI without query, normalized (for `htu`).
    pub htu: Option<&'a str>,
    pub client_cert: Option<&'a ClientCert>,
    /// When the route requires server nonces: whether a nonce is one we accept now.
    pub nonce: Option<&'a (dyn Fn(&str) -> bool + Sync)>,
}

/// Asynchronous only for the replay check, which a fleet answers from Redis; every other check
/// runs first, so a proof that fails them never reaches the store.
pub(crate) async fn bind(
    token: Arc<AccessToken>,
    r: &Presented<'_>,
    profile: Profile,
    dpop: &DpopSettings,
    replay: &dyn ReplayStore,
    now: i64,
) -> Result<BoundToken, BindingError> {
    let mut binding = Binding::None;
    if let Some(jkt) = &token.cnf_jkt {
        if profile == Profile::Fapi1Advanced && token.cnf_x5t.is_none() {
            return Err(BindingError::MtlsRequired);
        }
        if r.scheme != Scheme::DPoP {
            return Err(BindingError::BearerForDpopToken);
        }
        let mut proofs = r.parts.headers.get_all("dpop").iter();
        let proof = match (proofs.next(), proofs.next()) {
            (None, _) => return Err(BindingError::ProofMissing),
            (Some(_), Some(_)) => return Err(BindingError::ProofMultiple),
            (Some(p), None) => p
                .to_str()
                .map_err(|_| BindingError::Proof(DpopError::Malformed))?,
        };
        if proof.contains(',') {
            return Err(BindingError::ProofMultiple);
        }
        let htu = r.htu.ok_or(BindingError::Proof(DpopError::Uri))?;
        let p = dpop::verify(
            proof,
            &Expect {
                method: r.parts.method.as_str(),
                htu,
                access_token: Some(r.raw_token),
                now,
                max_age: dpop.max_age,
                skew: dpop.skew,
                algs: &dpop.algorithms,
                nonce: r.nonce.map(|f| f as &dyn Fn(&str) -> bool),
            },
        )
        .map_err(BindingError::Proof)?;
        if &p.jkt != jkt {
            return Err(BindingError::JktMismatch);
        }
        // The proof is accepted for max_age after its iat (plus skew): remember its jti that long.
        let until = p
            .iat
            .saturating_add(dpop.max_age)
            .saturating_add(dpop.skew)
            .max(now + 1);
        match replay.first_use(p.jti_hash, until, now).await {
            Ok(true) => {}
            Ok(false) => return Err(BindingError::Replay),
            // Full, or a shared store that cannot answer: never admit a possible replay.
            Err(ReplayError::Full | ReplayError::Unavailable) => {
                return Err(BindingError::ReplayStoreFull)
            }
        }
        binding = Binding::Dpop;
    } else if r.scheme == Scheme::DPoP {
        return Err(BindingError::SchemeWithoutJkt);
    }
    if let Some(x5t) = &token.cnf_x5t {
        let cert = r.client_cert.ok_or(BindingError::NoClientCert)?;
        if &cert.thumbprint != x5t {
            return Err(BindingError::CertMismatch);
        }
        binding = Binding::Mtls;
    }
    match (binding, profile) {
        (Binding::None, Profile::Fapi2 | Profile::Fapi1Advanced) => Err(BindingError::Unbound),
        (Binding::Mtls | Binding::Dpop | Binding::None, _) => Ok(BoundToken {
            token,
            scheme: r.scheme,
        }),
    }
}
