//! Minting tokens and DPoP proofs with local keys — for `portcullis dev-token`, the demo, the
//! load generator and tests. Never on the request path.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING,
};
use base64::Engine;
use serde_json::{json, Map, Value};

use super::{b64url, sha256_b64url, Alg};

enum Inner {
    Ec(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
}

/// A private signing key with its public JWK.
pub struct SigningKey {
    pub alg: Alg,
    pub kid: String,
    inner: Inner,
    pkcs8: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
#[error("not a usable ES256 or Ed25519 PKCS#8 private key")]
pub struct KeyError;

impl SigningKey {
    /// A fresh key of `alg` (ES256 or EdDSA).
    pub fn generate(alg: Alg, kid: &str) -> Result<SigningKey, KeyError> {
        let pkcs8 = match alg {
            Alg::ES256 => EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
                .and_then(|k| k.to_pkcs8v1())
                .map_err(|_| KeyError)?
                .as_ref()
                .to_vec(),
            Alg::EdDSA => Ed25519KeyPair::generate()
                .and_then(|k| k.to_pkcs8v1())
                .map_err(|_| KeyError)?
                .as_ref()
                .to_vec(),
            Alg::PS256 | Alg::RS256 => return Err(KeyError),
        };
        SigningKey::from_pkcs8(&pkcs8, kid)
    }

    pub fn from_pkcs8(der: &[u8], kid: &str) -> Result<SigningKey, KeyError> {
        let (alg, inner) =
            if let Ok(k) = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der) {
                (Alg::ES256, Inner::Ec(k))
            } else if let Ok(k) = Ed25519KeyPair::from_pkcs8(der) {
                (Alg::EdDSA, Inner::Ed(k))
            } else {
                return Err(KeyError);
            };
        Ok(SigningKey {
            alg,
            kid: kid.to_string(),
            inner,
            pkcs8: der.to_vec(),
        })
    }

    pub fn from_pkcs8_pem(pem: &str, kid: &str) -> Result<SigningKey, KeyError> {
        let body: String = pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect::<Vec<_>>()
            .concat();
        let der = base64::engine::general_purpose::STANDARD
            .decode(body.trim())
            .map_err(|_| KeyError)?;
        SigningKey::from_pkcs8(&der, kid)
    }

    pub fn to_pkcs8_pem(&self) -> String {
        super::pem("PRIVATE KEY", &self.pkcs8)
    }

    /// The public JWK (RFC 7638 members only, plus `kid`, `alg` and `use` when `with_meta`).
    pub fn public_jwk(&self, with_meta: bool) -> Value {
        let mut m: Map<String, Value> = match &self.inner {
            Inner::Ec(k) => {
                let p = k.public_key().as_ref();
                let (x, y) = (&p[1..33], &p[33..65]);
                json!({"kty": "EC", "crv": "P-256", "x": b64url(x), "y": b64url(y)})
            }
            Inner::Ed(k) => {
                json!({"kty": "OKP", "crv": "Ed25519", "x": b64url(k.public_key().as_ref())})
            }
        }
        .as_object()
        .cloned()
        .unwrap_or_default();
        if with_meta {
            m.insert("kid".into(), Value::String(self.kid.clone()));
            m.insert("alg".into(), Value::String(self.alg.name().into()));
            m.insert("use".into(), Value::String("sig".into()));
        }
        Value::Object(m)
    }

    /// `{"keys": [public JWK]}`.
    pub fn jwks(&self) -> Value {
        json!({ "keys": [self.public_jwk(true)] })
    }

    fn sign(&self, input: &[u8]) -> Vec<u8> {
        match &self.inner {
            Inner::Ec(k) => k
                .sign(&SystemRandom::new(), input)
                .map(|s| s.as_ref().to_vec())
                .unwrap_or_default(),
            Inner::Ed(k) => k.sign(input).as_ref().to_vec(),
        }
    }

    /// A compact JWS of `payload` with `header` (to which `alg` is added).
    pub fn sign_compact(&self, header: &Value, payload: &Value) -> String {
        let mut h = header.as_object().cloned().unwrap_or_default();
        h.insert("alg".into(), Value::String(self.alg.name().into()));
        let input = format!(
            "{}.{}",
            b64url(Value::Object(h).to_string().as_bytes()),
            b64url(payload.to_string().as_bytes())
        );
        let sig = b64url(&self.sign(input.as_bytes()));
        format!("{input}.{sig}")
    }

    /// An RFC 9068 access token (`typ: at+jwt`) carrying `claims`.
    pub fn access_token(&self, claims: &Value) -> String {
        self.sign_compact(&json!({"typ": "at+jwt", "kid": self.kid}), claims)
    }

    /// A DPoP proof (RFC 9449 §4.2) by this key for one request.
    pub fn dpop_proof(
        &self,
        method: &str,
        htu: &str,
        access_token: Option<&str>,
        iat: i64,
        jti: &str,
        nonce: Option<&str>,
    ) -> String {
        let mut claims = json!({"jti": jti, "htm": method, "htu": htu, "iat": iat});
        if let Some(t) = access_token {
            claims["ath"] = Value::String(sha256_b64url(t.as_bytes()));
        }
        if let Some(n) = nonce {
            claims["nonce"] = Value::String(n.into());
        }
        self.sign_compact(
            &json!({"typ": "dpop+jwt", "jwk": self.public_jwk(false)}),
            &claims,
        )
    }

    /// The RFC 7638 thumbprint of this key (the `cnf.jkt` a DPoP-bound token carries).
    pub fn thumbprint(&self) -> String {
        super::jwk::from_jwk(self.public_jwk(false).as_object().unwrap_or(&Map::new()))
            .map(|k| k.thumbprint)
            .unwrap_or_default()
    }
}
