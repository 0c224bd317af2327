//! RFC 9421 HTTP Message Signatures and RFC 9530 `Content-Digest`, on `sfv` (RFC 8941
//! structured fields) and aws-lc-rs.
//!
//! How it works: `Signature-Input` and `Signature` are parsed as dictionaries (every field line
//! joined, a repeated label refused); a signature is chosen by its `tag`; its covered components
//! are evaluated against the message ([`base`]) to rebuild the signature base byte for byte,
//! ending with `"@signature-params"` — the canonical re-serialization of the inner list, which is
//! exactly what a conforming signer signed. The verifier ([`verify`]) checks the base with a key
//! the caller resolved by `keyid`, and `Content-Digest` is recomputed over the body received
//! ([`digest`]). [`sign`] makes signatures with the same code, for responses and the CLI.
//!
//! Invariants: nothing here panics on hostile input; every component value that could be read
//! two ways (a repeated query parameter, a non-ASCII field value, an `sf` value that does not
//! parse) is refused rather than guessed; the signature base is built from the message as the
//! client sent it (external target URI), never from what we forward.

pub mod base;
pub mod digest;
pub mod fields;
pub mod sign;
pub mod verify;

#[cfg(test)]
mod tests;

use crate::jose::Alg;

pub use base::{ComponentError, Message, RequestView, ResponseView};

portcullis_base::variants! {
    /// Why a request signature was refused: one condition each.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum HttpSigError {
        /// No `Signature-Input`/`Signature`, or no signature with the required `tag`.
        Missing,
        /// A field is not a valid dictionary, a label is repeated, or a member or parameter has the
        /// wrong type.
        Malformed,
        /// A `Signature-Input` label with no matching `Signature` byte sequence.
        Label,
        /// More than one signature carries the required `tag`.
        Ambiguous,
        /// A component the profile requires is not covered.
        Coverage,
        /// A covered component is absent, unsupported, repeated or ambiguous.
        Component(ComponentError),
        CreatedMissing,
        /// `created` outside the window (too old or in the future).
        Created,
        /// `expires` has passed.
        Expired,
        KeyidMissing,
        NonceMissing,
        /// The `nonce` was already used.
        Replay,
        /// The replay store is full: refused rather than forget (fail closed).
        ReplayUnavailable,
        /// The caller cannot be named, so its keys cannot be found.
        UnknownClient,
        UnknownKey,
        /// The caller's key set cannot be loaded (fail closed).
        KeysUnavailable,
        /// The `alg` parameter disagrees with the key, or the key's algorithm is not allowed.
        Alg,
        BadSignature,
        /// There is a body and no `Content-Digest`.
        DigestMissing,
        /// `Content-Digest` does not parse or has no algorithm we check (sha-256, sha-512).
        DigestMalformed,
        /// `Content-Digest` does not match the body received.
        DigestMismatch,
    }
}

/// Whether a signature's `alg` parameter agrees with a key whose JOSE algorithm is `key_alg`
/// (RFC 9421 §3.3.7: with JOSE keys the key decides; a registry name is accepted only where it is
/// the same computation: `ecdsa-p256-sha256` for ES256, `ed25519` for EdDSA). `rsa-pss-sha512`
/// is a different algorithm from a PS256 key's and is refused, as is `hmac-sha256` with any key
/// (C07: an algorithm confusion is never resolved in the attacker's favour).
pub fn alg_agrees(param: Option<&str>, key_alg: Alg) -> bool {
    matches!(
        (param, key_alg),
        (None, _) | (Some("ecdsa-p256-sha256"), Alg::ES256) | (Some("ed25519"), Alg::EdDSA)
    )
}

/// The JOSE algorithm an RFC 9421 `alg` parameter is the same computation as (the inverse of
/// [`registry_name`]).
pub fn jose_alg(param: &str) -> Option<Alg> {
    [Alg::ES256, Alg::EdDSA, Alg::PS256]
        .into_iter()
        .find(|a| registry_name(*a) == Some(param))
}

/// The RFC 9421 registry name of a JOSE algorithm, where one is the same computation.
pub fn registry_name(alg: Alg) -> Option<&'static str> {
    match alg {
        Alg::ES256 => Some("ecdsa-p256-sha256"),
        Alg::EdDSA => Some("ed25519"),
        Alg::PS256 | Alg::RS256 => None,
    }
}
