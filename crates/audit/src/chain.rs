//! The hash chain and the signing key: how a line is sealed, and how a seal is checked.
//!
//! # The line format
//!
//! Every record is one line of JSON, written by the writer thread as
//!
//! ```text
//! {"seq":N,"time":"…","kind":"…", …members…,"prev":"P"[,"sig":"S"],"hash":"H"}\n
//! ```
//!
//! - `seq` counts from 1 across files and restarts, without gaps.
//! - `prev` is the `hash` of the record before it; the very first record has [`GENESIS`].
//! - `sig` is present on checkpoint records only (see below).
//! - `hash` is always the last member.
//!
//! # Canonical bytes
//!
//! The canonical bytes of a record are its line exactly as written, without the trailing
//! newline and with the final `,"hash":"H"` removed — that is, the line as it was before it was
//! sealed, ending in `}`. `hash` = unpadded base64url(SHA-256(canonical bytes)). No JSON
//! re-serialization is involved: the verifier hashes the bytes it reads, so key order, number
//! formats and escapes cannot be argued about.
//!
//! A checkpoint record is signed before it is sealed: its signed bytes are its canonical bytes
//! with the final `,"sig":"S"` removed (again ending in `}`), and `sig` is the unpadded
//! base64url Ed25519 signature over them. Because a checkpoint carries `prev`, its signature
//! covers every record before it through the chain.
//!
//! # Keys
//!
//! The audit key is an Ed25519 key in PKCS#8 PEM (`PRIVATE KEY`); its public half is an SPKI
//! PEM (`PUBLIC KEY`). A key id is the first 22 characters (128 bits) of the unpadded base64url
//! SHA-256 of the raw 32-byte public key. The private key never appears in `Debug` output.

use std::fmt;

use aws_lc_rs::digest;
use aws_lc_rs::signature::{self, Ed25519KeyPair, KeyPair};
use base64::Engine;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivatePkcs8KeyDer, SubjectPublicKeyInfoDer};

/// `prev` of the first record ever: 32 zero bytes, base64url.
pub const GENESIS: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
/// Length of a hash in base64url (32 bytes, unpadded).
pub(crate) const HASH_LEN: usize = 43;
/// Length of an Ed25519 signature in base64url (64 bytes, unpadded).
pub(crate) const SIG_LEN: usize = 86;

const HASH_PREFIX: &[u8] = b",\"hash\":\"";
const SIG_PREFIX: &[u8] = b",\"sig\":\"";
/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410), before the 32 key bytes.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Seals the line in `buf[start..]`, a complete JSON object ending in `}` (the canonical
/// bytes): appends the `hash` member and the newline, and returns the hash.
pub(crate) fn seal(buf: &mut Vec<u8>, start: usize) -> String {
    let d = digest::digest(&digest::SHA256, &buf[start..]);
    let line = buf;
    let h = b64(d.as_ref());
    line.pop();
    line.extend_from_slice(HASH_PREFIX);
    line.extend_from_slice(h.as_bytes());
    line.extend_from_slice(b"\"}\n");
    h
}

/// Splits a line (without its newline) into the prefix before the `hash` member and the hash.
/// The canonical bytes are `prefix + "}"`. `None` when the line does not end in a hash member.
pub fn split_hash(line: &[u8]) -> Option<(&[u8], &str)> {
    split_member(line, HASH_PREFIX, HASH_LEN)
}

/// Splits canonical bytes (ending in `}`) into the prefix before the `sig` member and the
/// signature; the signed bytes are `prefix + "}"`.
pub fn split_sig(canonical: &[u8]) -> Option<(&[u8], &str)> {
    split_member(canonical, SIG_PREFIX, SIG_LEN)
}

fn split_member<'a>(line: &'a [u8], prefix: &[u8], len: usize) -> Option<(&'a [u8], &'a str)> {
    let tail = prefix.len() + len + 2;
    if line.len() < tail + 1 || !line.ends_with(b"\"}") {
        return None;
    }
    let start = line.len() - tail;
    if &line[start..start + prefix.len()] != prefix {
        return None;
    }
    let value = std::str::from_utf8(&line[start + prefix.len()..line.len() - 2]).ok()?;
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return None;
    }
    Some((&line[..start], value))
}

/// The hash of canonical bytes given as `prefix + "}"`.
pub(crate) fn hash_of(prefix: &[u8]) -> String {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(prefix);
    ctx.update(b"}");
    b64(ctx.finish().as_ref())
}

/// Why an audit key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("no PKCS#8 `PRIVATE KEY` PEM block")]
    NoPrivateKey,
    #[error("no `PUBLIC KEY` PEM block")]
    NoPublicKey,
    #[error("not an Ed25519 key")]
    NotEd25519,
    #[error("key generation failed")]
    Generate,
}

fn key_id_of(raw_public: &[u8]) -> String {
    let mut id = b64(digest::digest(&digest::SHA256, raw_public).as_ref());
    id.truncate(22);
    id
}

use portcullis_crypto::jose::pem;

/// The private audit key that signs checkpoints.
pub struct AuditKey {
    pair: Ed25519KeyPair,
    key_id: String,
}

impl fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditKey")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl AuditKey {
    /// Parses a PKCS#8 PEM Ed25519 private key.
    pub fn from_pem(pem_bytes: &[u8]) -> Result<AuditKey, KeyError> {
        let der =
            PrivatePkcs8KeyDer::from_pem_slice(pem_bytes).map_err(|_| KeyError::NoPrivateKey)?;
        let pair =
            Ed25519KeyPair::from_pkcs8(der.secret_pkcs8_der()).map_err(|_| KeyError::NotEd25519)?;
        let key_id = key_id_of(pair.public_key().as_ref());
        Ok(AuditKey { pair, key_id })
    }

    /// Reads [`AuditKey::from_pem`] from a file.
    pub fn from_file(path: &std::path::Path) -> Result<AuditKey, KeyError> {
        let bytes = std::fs::read(path).map_err(|source| KeyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        AuditKey::from_pem(&bytes)
    }

    /// A fresh key; returns it with its private PEM (PKCS#8) and public PEM (SPKI).
    pub fn generate() -> Result<(AuditKey, String, String), KeyError> {
        let pair = Ed25519KeyPair::generate().map_err(|_| KeyError::Generate)?;
        let pkcs8 = pair.to_pkcs8().map_err(|_| KeyError::Generate)?;
        let private_pem = pem("PRIVATE KEY", pkcs8.as_ref());
        let key = AuditKey::from_pem(private_pem.as_bytes())?;
        let public_pem = key.public_pem();
        Ok((key, private_pem, public_pem))
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The public half as SPKI PEM.
    pub fn public_pem(&self) -> String {
        let mut der = ED25519_SPKI_PREFIX.to_vec();
        der.extend_from_slice(self.pair.public_key().as_ref());
        pem("PUBLIC KEY", &der)
    }

    /// The public half, for verifying.
    pub fn public(&self) -> AuditPublicKey {
        let mut raw = [0u8; 32];
        raw.copy_from_slice(self.pair.public_key().as_ref());
        AuditPublicKey {
            raw,
            key_id: self.key_id.clone(),
        }
    }

    /// Signs `buf[start..]` (canonical bytes without the `sig` member, ending in `}`) and
    /// appends the `sig` member in place, so the line ends in `}` again, ready to [`seal`].
    pub fn sign_into(&self, buf: &mut Vec<u8>, start: usize) {
        let sig = self.pair.sign(&buf[start..]);
        let line = buf;
        line.pop();
        line.extend_from_slice(SIG_PREFIX);
        line.extend_from_slice(b64(sig.as_ref()).as_bytes());
        line.extend_from_slice(b"\"}");
    }
}

/// A public audit key that verifies checkpoint signatures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditPublicKey {
    raw: [u8; 32],
    key_id: String,
}

impl AuditPublicKey {
    /// Parses an SPKI `PUBLIC KEY` PEM holding an Ed25519 key.
    pub fn from_pem(pem_bytes: &[u8]) -> Result<AuditPublicKey, KeyError> {
        let der = SubjectPublicKeyInfoDer::from_pem_slice(pem_bytes)
            .map_err(|_| KeyError::NoPublicKey)?;
        let der = der.as_ref();
        if der.len() != ED25519_SPKI_PREFIX.len() + 32 || !der.starts_with(&ED25519_SPKI_PREFIX) {
            return Err(KeyError::NotEd25519);
        }
        let mut raw = [0u8; 32];
        raw.copy_from_slice(&der[ED25519_SPKI_PREFIX.len()..]);
        Ok(AuditPublicKey {
            key_id: key_id_of(&raw),
            raw,
        })
    }

    /// Reads [`AuditPublicKey::from_pem`] from a file.
    pub fn from_file(path: &std::path::Path) -> Result<AuditPublicKey, KeyError> {
        let bytes = std::fs::read(path).map_err(|source| KeyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        AuditPublicKey::from_pem(&bytes)
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Whether `sig_b64` (unpadded base64url) is this key's signature over `prefix + "}"`.
    pub fn verify(&self, prefix: &[u8], sig_b64: &str) -> bool {
        let Ok(sig) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(sig_b64) else {
            return false;
        };
        let mut msg = Vec::with_capacity(prefix.len() + 1);
        msg.extend_from_slice(prefix);
        msg.push(b'}');
        signature::UnparsedPublicKey::new(&signature::ED25519, &self.raw)
            .verify(&msg, &sig)
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_line_splits_back_into_its_canonical_bytes_and_hash() {
        let mut line =
            br#"{"seq":1,"kind":"x","prev":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}"#
                .to_vec();
        let canonical = line.clone();
        let h = seal(&mut line, 0);
        assert!(line.ends_with(b"\"}\n"));
        let (prefix, got) = split_hash(&line[..line.len() - 1]).unwrap();
        assert_eq!(got, h);
        assert_eq!([prefix, b"}"].concat(), canonical);
        assert_eq!(hash_of(prefix), h);
        serde_json::from_slice::<serde_json::Value>(&line).unwrap();
    }

    #[test]
    fn a_line_without_a_final_hash_member_does_not_split() {
        assert!(split_hash(b"{\"seq\":1}").is_none());
        assert!(split_hash(b"").is_none());
        let bad = format!("{{\"a\":1,\"hash\":\"{}\"}}", "!".repeat(HASH_LEN));
        assert!(split_hash(bad.as_bytes()).is_none());
    }

    #[test]
    fn a_signature_verifies_with_the_public_key_and_fails_when_a_byte_changes() {
        let (key, private_pem, public_pem) = AuditKey::generate().unwrap();
        assert!(!format!("{key:?}").contains(&private_pem));
        let public = AuditPublicKey::from_pem(public_pem.as_bytes()).unwrap();
        assert_eq!(public, key.public());
        assert_eq!(public.key_id(), key.key_id());
        let mut line = br#"{"seq":7,"kind":"checkpoint","prev":"x"}"#.to_vec();
        key.sign_into(&mut line, 0);
        let (prefix, sig) = split_sig(&line).unwrap();
        assert!(public.verify(prefix, sig));
        let mut forged = prefix.to_vec();
        forged[7] = b'8';
        assert!(!public.verify(&forged, sig));
        let (other, _, _) = AuditKey::generate().unwrap();
        assert!(!other.public().verify(prefix, sig));
    }

    #[test]
    fn keys_that_are_not_ed25519_pkcs8_are_refused() {
        assert!(matches!(
            AuditKey::from_pem(b"nothing"),
            Err(KeyError::NoPrivateKey)
        ));
        assert!(AuditPublicKey::from_pem(
            b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"
        )
        .is_err());
        // An EC P-256 PKCS#8 key is PEM-valid but not Ed25519.
        let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        assert!(matches!(
            AuditKey::from_pem(ec.serialize_pem().as_bytes()),
            Err(KeyError::NotEd25519)
        ));
    }
}
