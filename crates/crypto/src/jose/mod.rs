//! JOSE for access tokens and DPoP proofs: strict compact JWS parsing and verification over
//! aws-lc-rs, JWK / JWKS loading, RFC 7638 thumbprints, and minting for dev tools and tests.
//!
//! We do not use a general JWT library on the request path: the checks a resource server needs
//! (an exact algorithm allow-list, the key's own algorithm, `crit`, `typ`, forbidden key-carrying
//! headers, duplicate JSON members, strictly canonical base64url, claims of the wrong JSON type)
//! are easier to get exactly right in a few hundred lines than to bolt onto a library that
//! defaults the other way. Keys are pre-parsed once per `kid`.
//!
//! Invariants: nothing here panics on hostile input; a key is only ever used with the one
//! algorithm it was loaded for; the only keys that verify an access token are the configured
//! issuer's (a token can never bring its own key).

pub mod detached;
pub mod dpop;
pub mod jwk;
pub mod jws;
pub mod keypair;
pub mod sign;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

/// The signature algorithms portcullis verifies. Symmetric algorithms and `none` do not exist
/// here, so they can never be accepted with a public key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Alg {
    ES256,
    PS256,
    EdDSA,
    /// RSASSA-PKCS1-v1_5 with SHA-256: not a FAPI algorithm (FAPI 1 Part 2 §8.6, FAPI 2.0
    /// Security Profile allow PS256, ES256 and EdDSA only), but the default of many
    /// authorization servers. Verified only for access tokens of an issuer whose config lists
    /// it, and whose routes are all `bearer` (checked at load). Never used to sign.
    RS256,
}

impl Alg {
    /// Exact, case-sensitive match of the registered name (RFC 7518): `"es256"`, `"PS256 "`
    /// and `"none"` are not algorithms.
    pub fn from_name(name: &str) -> Option<Alg> {
        match name {
            "ES256" => Some(Alg::ES256),
            "PS256" => Some(Alg::PS256),
            "EdDSA" => Some(Alg::EdDSA),
            "RS256" => Some(Alg::RS256),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Alg::ES256 => "ES256",
            Alg::PS256 => "PS256",
            Alg::EdDSA => "EdDSA",
            Alg::RS256 => "RS256",
        }
    }

    pub(crate) fn verification(self) -> &'static dyn aws_lc_rs::signature::VerificationAlgorithm {
        use aws_lc_rs::signature;
        match self {
            Alg::ES256 => &signature::ECDSA_P256_SHA256_FIXED,
            Alg::PS256 => &signature::RSA_PSS_2048_8192_SHA256,
            Alg::EdDSA => &signature::ED25519,
            Alg::RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
        }
    }
}

/// Decodes strictly canonical unpadded base64url: no padding, no whitespace, no `+` or `/`,
/// no non-zero trailing bits.
pub fn b64url_decode(s: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(s).ok()
}

pub fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// PEM text of `der` under `label` (RFC 7468: standard base64, 64-character lines).
pub fn pem(label: &str, der: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// SHA-256, base64url: the `ath` of a token, the `x5t#S256` of a certificate.
pub fn sha256_b64url(bytes: &[u8]) -> String {
    b64url(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes).as_ref())
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

#[cfg(test)]
mod tests;
