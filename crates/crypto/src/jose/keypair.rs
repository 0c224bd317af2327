//! Private signing keys for the proxy's own signatures (OBIE `x-jws-signature` and RFC 9421
//! response signatures) and for `portcullis sign`: RSA (PS256), P-256 (ES256) and Ed25519
//! (EdDSA), loaded from PEM (PKCS#8, or PKCS#1 for RSA) or generated.
//!
//! A key signs with exactly one algorithm, decided by its type. RSA signing costs about a
//! millisecond; the request path only ever verifies.

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING,
    RSA_PSS_SHA256,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;
use serde_json::{json, Value};

use super::{b64url, Alg};

enum Inner {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
}

/// A private key with its `kid`; it signs with [`KeyPair::alg`] only.
pub struct KeyPair {
    pub alg: Alg,
    pub kid: String,
    inner: Inner,
    pkcs8: Vec<u8>,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyPairError {
    #[error("no PEM private key found")]
    NotPem,
    #[error("not a usable RSA (2048 bits or more), P-256 or Ed25519 private key")]
    Unusable,
    #[error("key generation failed")]
    Generate,
}

impl KeyPair {
    /// A fresh key for `alg` (RSA 2048 for PS256).
    pub fn generate(alg: Alg, kid: &str) -> Result<KeyPair, KeyPairError> {
        let pkcs8 = match alg {
            Alg::PS256 => RsaKeyPair::generate(KeySize::Rsa2048)
                .ok()
                .and_then(|k| k.as_der().ok())
                .map(|d| d.as_ref().to_vec()),
            Alg::ES256 => EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
                .and_then(|k| k.to_pkcs8v1())
                .ok()
                .map(|d| d.as_ref().to_vec()),
            Alg::EdDSA => Ed25519KeyPair::generate()
                .and_then(|k| k.to_pkcs8v1())
                .ok()
                .map(|d| d.as_ref().to_vec()),
            // Verified for some issuers' access tokens, never signed with.
            Alg::RS256 => None,
        }
        .ok_or(KeyPairError::Generate)?;
        KeyPair::from_pkcs8(&pkcs8, kid)
    }

    /// PKCS#8 DER of an RSA, P-256 or Ed25519 key.
    pub fn from_pkcs8(der: &[u8], kid: &str) -> Result<KeyPair, KeyPairError> {
        let (alg, inner) = if let Ok(k) = RsaKeyPair::from_pkcs8(der) {
            if k.public_modulus_len() < 256 {
                return Err(KeyPairError::Unusable);
            }
            (Alg::PS256, Inner::Rsa(k))
        } else if let Ok(k) = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der) {
            (Alg::ES256, Inner::Ec(k))
        } else if let Ok(k) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
            (Alg::EdDSA, Inner::Ed(k))
        } else {
            return Err(KeyPairError::Unusable);
        };
        Ok(KeyPair {
            alg,
            kid: kid.to_string(),
            inner,
            pkcs8: der.to_vec(),
        })
    }

    /// A PEM private key: PKCS#8 (`PRIVATE KEY`), or PKCS#1 (`RSA PRIVATE KEY`).
    pub fn from_pem(pem: &[u8], kid: &str) -> Result<KeyPair, KeyPairError> {
        match PrivateKeyDer::from_pem_slice(pem).map_err(|_| KeyPairError::NotPem)? {
            PrivateKeyDer::Pkcs8(d) => KeyPair::from_pkcs8(d.secret_pkcs8_der(), kid),
            PrivateKeyDer::Pkcs1(d) => {
                let k = RsaKeyPair::from_der(d.secret_pkcs1_der())
                    .map_err(|_| KeyPairError::Unusable)?;
                let pkcs8 = k.as_der().map_err(|_| KeyPairError::Unusable)?;
                KeyPair::from_pkcs8(pkcs8.as_ref(), kid)
            }
            _ => Err(KeyPairError::Unusable),
        }
    }

    /// PKCS#8 PEM (`PRIVATE KEY`).
    pub fn to_pkcs8_pem(&self) -> String {
        super::pem("PRIVATE KEY", &self.pkcs8)
    }

    /// Signs `msg` with the key's algorithm (PS256: RSASSA-PSS SHA-256, ES256: raw r‖s,
    /// EdDSA: Ed25519). Signing with a valid key does not fail; an empty result means it did.
    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match &self.inner {
            Inner::Rsa(k) => {
                let mut sig = vec![0u8; k.public_modulus_len()];
                match k.sign(&RSA_PSS_SHA256, &rng, msg, &mut sig) {
                    Ok(()) => sig,
                    Err(_) => Vec::new(),
                }
            }
            Inner::Ec(k) => k
                .sign(&rng, msg)
                .map(|s| s.as_ref().to_vec())
                .unwrap_or_default(),
            Inner::Ed(k) => k.sign(msg).as_ref().to_vec(),
        }
    }

    /// The public JWK, with `kid`, `alg` and `use: sig`.
    pub fn public_jwk(&self) -> Value {
        let mut jwk = match &self.inner {
            Inner::Rsa(k) => {
                let p = k.public_key();
                json!({
                    "kty": "RSA",
                    "n": b64url(p.modulus().big_endian_without_leading_zero()),
                    "e": b64url(p.exponent().big_endian_without_leading_zero()),
                })
            }
            Inner::Ec(k) => {
                let p = k.public_key().as_ref();
                json!({"kty": "EC", "crv": "P-256", "x": b64url(&p[1..33]), "y": b64url(&p[33..65])})
            }
            Inner::Ed(k) => {
                json!({"kty": "OKP", "crv": "Ed25519", "x": b64url(k.public_key().as_ref())})
            }
        };
        jwk["kid"] = Value::String(self.kid.clone());
        jwk["alg"] = Value::String(self.alg.name().into());
        jwk["use"] = Value::String("sig".into());
        jwk
    }

    /// `{"keys": [public JWK]}`.
    pub fn jwks(&self) -> Value {
        json!({ "keys": [self.public_jwk()] })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jose::jwk::from_jwk;

    #[test]
    fn each_key_type_signs_what_its_public_jwk_verifies() {
        for alg in [Alg::PS256, Alg::ES256, Alg::EdDSA] {
            let k = KeyPair::generate(alg, "k1").unwrap();
            assert_eq!(k.alg, alg);
            let pem = k.to_pkcs8_pem();
            let k2 = KeyPair::from_pem(pem.as_bytes(), "k1").unwrap();
            let sig = k2.sign(b"hello");
            let v = from_jwk(k.public_jwk().as_object().unwrap()).unwrap();
            assert_eq!(v.alg, alg);
            assert!(v.verify(b"hello", &sig), "{alg:?}");
            assert!(!v.verify(b"hellp", &sig), "{alg:?}");
        }
        assert!(KeyPair::from_pem(b"not a key", "k").is_err());
    }
}
