//! JWK: one public key, checked and pre-parsed for the one algorithm it may verify.
//!
//! Refused at load: private material (`d`, `p`, `q`, ... or a symmetric `k`), `use` other than
//! `sig`, `key_ops` without `verify`, an `alg` that is not ours or does not fit the key type and
//! curve, RSA under 2048 bits or with a small or even exponent, EC points that are not on P-256,
//! and members of the wrong JSON type. RFC 7638 thumbprints are computed from the required
//! members only, in lexicographic order.

use aws_lc_rs::signature::ParsedPublicKey;
use serde_json::{Map, Value};

use super::{b64url_decode, sha256_b64url, Alg};

/// Why a JWK was refused (a bounded category, safe to log).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JwkError {
    UnsupportedKeyType,
    UnsupportedCurve,
    PrivateMaterial,
    BadMember(&'static str),
    WeakKey,
    WrongUse,
    AlgMismatch,
    InvalidKey,
}

impl JwkError {
    pub fn as_str(self) -> &'static str {
        match self {
            JwkError::UnsupportedKeyType => "unsupported_kty",
            JwkError::UnsupportedCurve => "unsupported_crv",
            JwkError::PrivateMaterial => "private_material",
            JwkError::BadMember(_) => "bad_member",
            JwkError::WeakKey => "weak_key",
            JwkError::WrongUse => "wrong_use",
            JwkError::AlgMismatch => "alg_mismatch",
            JwkError::InvalidKey => "invalid_key",
        }
    }
}

/// A public key that verifies exactly one algorithm.
pub struct VerifyingKey {
    pub kid: Option<String>,
    pub alg: Alg,
    /// RFC 7638 SHA-256 thumbprint (the DPoP `jkt`).
    pub thumbprint: String,
    key: ParsedPublicKey,
}

impl std::fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("thumbprint", &self.thumbprint)
            .finish()
    }
}

impl VerifyingKey {
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        self.key.verify_sig(message, signature).is_ok()
    }
}

const PRIVATE_MEMBERS: &[&str] = &["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

fn member<'a>(m: &'a Map<String, Value>, name: &'static str) -> Result<&'a str, JwkError> {
    match m.get(name) {
        Some(Value::String(s)) => Ok(s),
        _ => Err(JwkError::BadMember(name)),
    }
}

fn b64_member(m: &Map<String, Value>, name: &'static str) -> Result<Vec<u8>, JwkError> {
    b64url_decode(member(m, name)?).ok_or(JwkError::BadMember(name))
}

fn thumbprint(members: &[(&str, &str)]) -> String {
    // Members are already in lexicographic order; values are base64url or registered names, so
    // JSON string escaping never applies — serde_json still does it right if it did.
    let mut json = String::from("{");
    for (i, (k, v)) in members.iter().enumerate() {
        if i > 0 {
            json.push(',');
        }
        json.push_str(&serde_json::to_string(k).unwrap_or_default());
        json.push(':');
        json.push_str(&serde_json::to_string(v).unwrap_or_default());
    }
    json.push('}');
    sha256_b64url(json.as_bytes())
}

fn der_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

fn der_uint(out: &mut Vec<u8>, mut v: &[u8]) {
    while v.len() > 1 && v[0] == 0 {
        v = &v[1..];
    }
    let pad = v.first().is_some_and(|b| b & 0x80 != 0);
    out.push(0x02);
    der_len(out, v.len() + usize::from(pad));
    if pad {
        out.push(0);
    }
    out.extend_from_slice(v);
}

/// PKCS#1 `RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }`.
fn rsa_public_key_der(n: &[u8], e: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(n.len() + e.len() + 16);
    der_uint(&mut body, n);
    der_uint(&mut body, e);
    let mut out = Vec::with_capacity(body.len() + 4);
    out.push(0x30);
    der_len(&mut out, body.len());
    out.extend_from_slice(&body);
    out
}

/// Parses and checks one JWK object.
/// An RSA JWK that declares no `alg`, as an RS256 key (every check of [`from_jwk`] applies);
/// any other JWK is not one.
pub fn from_jwk_implied_rs256(m: &Map<String, Value>) -> Result<VerifyingKey, JwkError> {
    if m.contains_key("alg") || m.get("kty").and_then(Value::as_str) != Some("RSA") {
        return Err(JwkError::AlgMismatch);
    }
    let mut declared = m.clone();
    declared.insert("alg".into(), Value::String("RS256".into()));
    from_jwk(&declared)
}

pub fn from_jwk(m: &Map<String, Value>) -> Result<VerifyingKey, JwkError> {
    if PRIVATE_MEMBERS.iter().any(|p| m.contains_key(*p)) {
        return Err(JwkError::PrivateMaterial);
    }
    match m.get("use") {
        None => {}
        Some(Value::String(u)) if u == "sig" => {}
        Some(_) => return Err(JwkError::WrongUse),
    }
    match m.get("key_ops") {
        None => {}
        Some(Value::Array(ops)) if ops.iter().any(|o| o == "verify") => {}
        Some(_) => return Err(JwkError::WrongUse),
    }
    let kid = match m.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(JwkError::BadMember("kid")),
    };
    let declared = match m.get("alg") {
        None => None,
        Some(Value::String(a)) => Some(Alg::from_name(a).ok_or(JwkError::AlgMismatch)?),
        Some(_) => return Err(JwkError::BadMember("alg")),
    };
    let kty = member(m, "kty").map_err(|_| JwkError::UnsupportedKeyType)?;
    let (alg, bytes, thumb) = match kty {
        "EC" => {
            let crv = member(m, "crv")?;
            if crv != "P-256" {
                return Err(JwkError::UnsupportedCurve);
            }
            let (x, y) = (b64_member(m, "x")?, b64_member(m, "y")?);
            if x.len() != 32 || y.len() != 32 {
                return Err(JwkError::InvalidKey);
            }
            let mut point = Vec::with_capacity(65);
            point.push(4);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            let t = thumbprint(&[
                ("crv", crv),
                ("kty", "EC"),
                ("x", member(m, "x")?),
                ("y", member(m, "y")?),
            ]);
            (Alg::ES256, point, t)
        }
        "OKP" => {
            let crv = member(m, "crv")?;
            if crv != "Ed25519" {
                return Err(JwkError::UnsupportedCurve);
            }
            let x = b64_member(m, "x")?;
            if x.len() != 32 {
                return Err(JwkError::InvalidKey);
            }
            let t = thumbprint(&[("crv", crv), ("kty", "OKP"), ("x", member(m, "x")?)]);
            (Alg::EdDSA, x, t)
        }
        "RSA" => {
            let (n, e) = (b64_member(m, "n")?, b64_member(m, "e")?);
            let n_trim: &[u8] = &n[n.iter().take_while(|b| **b == 0).count()..];
            let bits = n_trim.len() * 8 - n_trim.first().map_or(0, |b| b.leading_zeros() as usize);
            if bits < 2048 {
                return Err(JwkError::WeakKey);
            }
            let e_val = e.iter().skip_while(|b| **b == 0).try_fold(0u64, |acc, b| {
                acc.checked_mul(256).map(|a| a + u64::from(*b))
            });
            match e_val {
                Some(v) if v >= 3 && v % 2 == 1 && v <= u64::from(u32::MAX) => {}
                _ => return Err(JwkError::WeakKey),
            }
            let t = thumbprint(&[
                ("e", member(m, "e")?),
                ("kty", "RSA"),
                ("n", member(m, "n")?),
            ]);
            // A key declared RS256 is an RS256 key; an RSA key that declares nothing is PS256
            // (and, where a key set allows it, RS256 too: see `KeySet`).
            let alg = if declared == Some(Alg::RS256) {
                Alg::RS256
            } else {
                Alg::PS256
            };
            (alg, rsa_public_key_der(&n, &e), t)
        }
        _ => return Err(JwkError::UnsupportedKeyType),
    };
    if declared.is_some_and(|d| d != alg) {
        return Err(JwkError::AlgMismatch);
    }
    let key = ParsedPublicKey::new(alg.verification(), bytes).map_err(|_| JwkError::InvalidKey)?;
    Ok(VerifyingKey {
        kid,
        alg,
        thumbprint: thumb,
        key,
    })
}
