//! `Content-Digest` (RFC 9530): a dictionary of algorithm -> byte sequence over the content.
//!
//! We check `sha-256` and `sha-512` (the two the RFC lists as active) and ignore the
//! registered-but-deprecated ones; a field with neither is refused (we cannot check it), and
//! every algorithm we do check must match the body exactly as received.

use aws_lc_rs::digest::{digest, SHA256, SHA512};
use base64::Engine;
use http::HeaderMap;
use sfv::{BareItem, ListEntry};

use super::fields::parse_field;
use super::HttpSigError;

/// The algorithms we compute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DigestAlg {
    Sha256,
    Sha512,
}

impl DigestAlg {
    pub fn name(self) -> &'static str {
        match self {
            DigestAlg::Sha256 => "sha-256",
            DigestAlg::Sha512 => "sha-512",
        }
    }

    fn compute(self, body: &[u8]) -> aws_lc_rs::digest::Digest {
        match self {
            DigestAlg::Sha256 => digest(&SHA256, body),
            DigestAlg::Sha512 => digest(&SHA512, body),
        }
    }
}

/// The `Content-Digest` field value for `body`, e.g. `sha-256=:...:`.
pub fn content_digest(alg: DigestAlg, body: &[u8]) -> String {
    format!(
        "{}=:{}:",
        alg.name(),
        base64::engine::general_purpose::STANDARD.encode(alg.compute(body).as_ref())
    )
}

/// Checks `Content-Digest` against `body`. `Ok(false)` when the field is absent.
pub fn check(headers: &HeaderMap, body: &[u8]) -> Result<bool, HttpSigError> {
    let Some(dict) = parse_field(headers.get_all("content-digest"))
        .map_err(|_| HttpSigError::DigestMalformed)?
    else {
        return Ok(false);
    };
    let mut checked = 0;
    for (k, v) in &dict {
        let alg = match k.as_str() {
            "sha-256" => DigestAlg::Sha256,
            "sha-512" => DigestAlg::Sha512,
            _ => continue,
        };
        let ListEntry::Item(item) = v else {
            return Err(HttpSigError::DigestMalformed);
        };
        let BareItem::ByteSequence(given) = &item.bare_item else {
            return Err(HttpSigError::DigestMalformed);
        };
        if given.as_slice() != alg.compute(body).as_ref() {
            return Err(HttpSigError::DigestMismatch);
        }
        checked += 1;
    }
    if checked == 0 {
        return Err(HttpSigError::DigestMalformed);
    }
    Ok(true)
}
