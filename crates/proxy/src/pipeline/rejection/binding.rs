//! Sender constraints: RFC 8705 certificate binding and RFC 9449 DPoP, and their challenges.

use http::StatusCode as S;

use super::{ObieError, Wire};
use crate::pipeline::binding::BindingError;
use portcullis_crypto::jose::dpop::DpopError;

pub(super) fn wire(e: BindingError) -> Wire {
    let dpop = |reason, detail| Wire::new(S::UNAUTHORIZED, reason, detail);
    match e {
        // FAPI 2.0 SP §5.3.4: sender-constrained tokens only.
        BindingError::Unbound => Wire::new(
            S::UNAUTHORIZED,
            "binding.unbound_token",
            "this resource requires a sender-constrained token",
        ),
        // FAPI 1.0 Part 2 §6.2.1-1: certificate-bound tokens.
        BindingError::MtlsRequired => Wire::new(
            S::UNAUTHORIZED,
            "binding.mtls_required",
            "this resource requires a certificate-bound token",
        ),
        // RFC 8705 §3: the thumbprint must match the presented certificate.
        BindingError::CertMismatch => Wire::new(
            S::UNAUTHORIZED,
            "binding.cert_mismatch",
            "the token is bound to another certificate",
        ),
        // RFC 8705 §3.
        BindingError::NoClientCert => Wire::new(
            S::UNAUTHORIZED,
            "binding.no_client_cert",
            "the token is certificate-bound but no certificate was presented",
        ),
        // RFC 9449 §7.2.
        BindingError::BearerForDpopToken => Wire::new(
            S::UNAUTHORIZED,
            "binding.dpop_required",
            "a DPoP-bound token must use the DPoP scheme",
        ),
        // RFC 9449 §7.1.
        BindingError::SchemeWithoutJkt => Wire::new(
            S::UNAUTHORIZED,
            "binding.not_dpop_bound",
            "the DPoP scheme needs a DPoP-bound token",
        ),
        // RFC 9449 §7.1.
        BindingError::ProofMissing => {
            dpop("binding.dpop_proof_missing", "a DPoP proof is required")
        }
        // RFC 9449 §4.3 check 1.
        BindingError::ProofMultiple => Wire::new(
            S::BAD_REQUEST,
            "binding.dpop_proof_multiple",
            "exactly one DPoP proof is allowed",
        ),
        // RFC 9449 §4.3, each check.
        BindingError::Proof(p) => match p {
            DpopError::Malformed => dpop(
                "binding.dpop_malformed",
                "the DPoP proof is not a valid JWT",
            ),
            DpopError::Typ => dpop("binding.dpop_typ", "the DPoP proof typ must be dpop+jwt"),
            DpopError::AlgNotAllowed => dpop(
                "binding.dpop_alg",
                "the DPoP proof algorithm is not allowed",
            ),
            DpopError::Key => dpop("binding.dpop_key", "the DPoP proof key is not acceptable"),
            DpopError::BadSignature => dpop(
                "binding.dpop_signature",
                "the DPoP proof signature is invalid",
            ),
            DpopError::MissingClaim => dpop(
                "binding.dpop_claims",
                "the DPoP proof lacks a required claim",
            ),
            DpopError::Method => dpop("binding.dpop_htm", "the DPoP proof is for another method"),
            DpopError::Uri => dpop("binding.dpop_htu", "the DPoP proof is for another URI"),
            DpopError::Iat => dpop(
                "binding.dpop_iat",
                "the DPoP proof is too old or from the future",
            ),
            DpopError::Ath => dpop(
                "binding.dpop_ath",
                "the DPoP proof is not bound to this token",
            ),
            DpopError::NonceRequired | DpopError::NonceStale => dpop(
                "binding.dpop_nonce",
                "the DPoP proof nonce is missing or stale",
            ),
        },
        // RFC 9449 §6.1: the proof key must be the one the token is bound to.
        BindingError::JktMismatch => Wire::new(
            S::UNAUTHORIZED,
            "binding.jkt_mismatch",
            "the DPoP key does not match the token binding",
        ),
        // RFC 9449 §11.1.
        BindingError::Replay => dpop("binding.dpop_replay", "the DPoP proof was already used"),
        // Fail closed rather than forget a jti (RFC 9110 §15.6.4).
        BindingError::ReplayStoreFull => Wire::new(
            S::SERVICE_UNAVAILABLE,
            "binding.replay_store_unavailable",
            "replay protection is unavailable",
        ),
    }
}

/// RFC 9449 §9: 401 with `use_dpop_nonce` and a `DPoP-Nonce` header.
pub(super) fn use_nonce() -> Wire {
    Wire::new(
        S::UNAUTHORIZED,
        "binding.dpop_nonce",
        "the DPoP proof must carry the server nonce in DPoP-Nonce",
    )
}

/// The `WWW-Authenticate` challenge (RFC 9449 §7.1); `algs` names the DPoP proof algorithms.
pub(super) fn challenge(e: BindingError, algs: &str) -> Option<String> {
    let bearer = |err: &str| Some(format!("Bearer error=\"{err}\""));
    let dpop = |err: &str| Some(format!("DPoP error=\"{err}\", {algs}"));
    match e {
        BindingError::Unbound
        | BindingError::MtlsRequired
        | BindingError::CertMismatch
        | BindingError::NoClientCert => bearer("invalid_token"),
        // RFC 9449 §7.2: the client must use the DPoP scheme for this token.
        BindingError::BearerForDpopToken
        | BindingError::SchemeWithoutJkt
        | BindingError::JktMismatch => dpop("invalid_token"),
        BindingError::ProofMultiple => dpop("invalid_request"),
        BindingError::ProofMissing | BindingError::Proof(_) | BindingError::Replay => {
            dpop("invalid_dpop_proof")
        }
        BindingError::ReplayStoreFull => None,
    }
}

/// The OBIE error code of a sender-constraint refusal: the token's binding is about
/// `Authorization`, the proof about the `DPoP` header.
pub(super) fn obie(e: BindingError) -> ObieError {
    const AUTHORIZATION: Option<&str> = Some("Authorization");
    const DPOP: Option<&str> = Some("DPoP");
    match e {
        BindingError::Unbound
        | BindingError::MtlsRequired
        | BindingError::CertMismatch
        | BindingError::NoClientCert
        | BindingError::BearerForDpopToken
        | BindingError::SchemeWithoutJkt => ObieError::new(super::HEADER_INVALID, AUTHORIZATION),
        BindingError::ProofMissing => ObieError::new(super::HEADER_MISSING, DPOP),
        BindingError::ProofMultiple
        | BindingError::Proof(_)
        | BindingError::JktMismatch
        | BindingError::Replay => ObieError::new(super::HEADER_INVALID, DPOP),
        BindingError::ReplayStoreFull => ObieError::new(super::UNEXPECTED, None),
    }
}

/// RFC 9449 §9: the proof must carry the server's nonce.
pub(super) fn use_nonce_obie() -> ObieError {
    ObieError::new(super::HEADER_INVALID, Some("DPoP"))
}
