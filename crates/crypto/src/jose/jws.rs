//! Compact JWS: parse strictly, then verify with a key chosen by the caller.
//!
//! Structure: exactly three non-empty base64url segments (strictly canonical, unpadded); a
//! header that is one JSON object without duplicate members; an `alg` on the caller's
//! allow-list; no `crit` (we implement no extensions, so any `crit` is unknown and refused,
//! RFC 7515 §4.1.11); no `b64` (RFC 7797 §7: JWTs must not use it). The signature is checked
//! only with a key whose own algorithm equals the header's.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::jwk::{from_jwk, from_jwk_implied_rs256, JwkError, VerifyingKey};
use super::{b64url_decode, Alg};
use portcullis_base::json::parse_object;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JwsError {
    Malformed,
    AlgNotAllowed,
    Crit,
    ForbiddenHeader,
    UnknownKey,
    KeyAlgMismatch,
    BadSignature,
}

/// A parsed, not yet verified, compact JWS.
#[derive(Debug)]
pub struct Compact<'a> {
    /// `BASE64URL(header) . BASE64URL(payload)`, the bytes that were signed.
    pub signing_input: &'a str,
    pub header: Map<String, Value>,
    pub payload: Vec<u8>,
    pub signature: Vec<u8>,
    pub alg: Alg,
}

fn is_b64url(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Parses `token` and checks its header against `allowed`.
pub fn parse<'a>(token: &'a str, allowed: &[Alg]) -> Result<Compact<'a>, JwsError> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwsError::Malformed);
    };
    if !is_b64url(h) || !is_b64url(p) || !is_b64url(s) {
        return Err(JwsError::Malformed);
    }
    let header = b64url_decode(h)
        .and_then(|b| parse_object(&b))
        .ok_or(JwsError::Malformed)?;
    let payload = b64url_decode(p).ok_or(JwsError::Malformed)?;
    let signature = b64url_decode(s).ok_or(JwsError::Malformed)?;
    let alg = match header.get("alg") {
        Some(Value::String(a)) => Alg::from_name(a).ok_or(JwsError::AlgNotAllowed)?,
        _ => return Err(JwsError::Malformed),
    };
    if !allowed.contains(&alg) {
        return Err(JwsError::AlgNotAllowed);
    }
    if header.contains_key("crit") {
        return Err(JwsError::Crit);
    }
    if header.contains_key("b64") || header.contains_key("zip") || header.contains_key("enc") {
        return Err(JwsError::ForbiddenHeader);
    }
    Ok(Compact {
        signing_input: &token[..h.len() + 1 + p.len()],
        header,
        payload,
        signature,
        alg,
    })
}

impl Compact<'_> {
    pub fn verify_with(&self, key: &VerifyingKey) -> Result<(), JwsError> {
        if key.alg != self.alg {
            return Err(JwsError::KeyAlgMismatch);
        }
        if key.verify(self.signing_input.as_bytes(), &self.signature) {
            Ok(())
        } else {
            Err(JwsError::BadSignature)
        }
    }

    pub fn kid(&self) -> Option<&str> {
        self.header.get("kid").and_then(Value::as_str)
    }

    /// RFC 7515 §4.1.9 `typ`: compared case-insensitively, `application/` prefix optional.
    pub fn typ_is(&self, expected: &str) -> bool {
        match self.header.get("typ").and_then(Value::as_str) {
            Some(t) => {
                let t = t.to_ascii_lowercase();
                let t = t.strip_prefix("application/").unwrap_or(&t);
                t == expected
            }
            None => false,
        }
    }

    /// `cty: JWT` says the payload is itself a JWT (RFC 7519 §5.2): a nested token another
    /// reader would unwrap while we read the payload as claims (RFC 8725 §2.3).
    pub fn is_nested(&self) -> bool {
        self.header
            .get("cty")
            .and_then(Value::as_str)
            .is_some_and(|c| c.eq_ignore_ascii_case("jwt"))
    }

    /// Headers that carry or point to a key: a token must never bring its own key
    /// (RFC 8725 §3.10; CVE-2018-0114).
    pub fn has_key_carrying_header(&self) -> bool {
        ["jwk", "jku", "x5u", "x5c"]
            .iter()
            .any(|h| self.header.contains_key(*h))
    }
}

/// An issuer's (or a client's) verification keys, by `kid`.
///
/// One `kid` may name several keys: RFC 7517 §4.5 allows it for keys of different types that
/// are alternatives, and authorization servers publish their signing and encryption keys, or an
/// RSA and an EC key, under one `kid`. A key is chosen by `kid` and the algorithm the signature
/// names (which fixes the key type and curve: every key verifies exactly one algorithm); a
/// choice that still leaves two different keys is refused for that signature only, never by
/// trying the keys one after another.
#[derive(Debug, Default)]
pub struct KeySet {
    by_kid: HashMap<String, Vec<Arc<VerifyingKey>>>,
    /// RSA keys that declare no `alg`, as RS256 keys: RFC 7517 lets such a key serve any RSA
    /// algorithm, and several authorization servers publish their RS256 keys that way. Only a
    /// signature that names RS256 reaches them, and only issuers configured for RS256 accept
    /// such signatures.
    implied_rs256: HashMap<String, Vec<Arc<VerifyingKey>>>,
    count: usize,
    /// Keys left out, with why (for logs and `check`).
    pub skipped: Vec<(Option<String>, JwkError)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySetError {
    NotAKeySet,
    NoUsableKey,
}

impl std::fmt::Display for KeySetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySetError::NotAKeySet => f.write_str("not a JWK set ({\"keys\": [...]})"),
            KeySetError::NoUsableKey => f.write_str("no usable signing key with a kid"),
        }
    }
}

/// Why no key was chosen for a signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyChoice {
    /// No key has the `kid`.
    UnknownKid,
    /// Keys have the `kid`, but none verifies the algorithm.
    NoKeyForAlg,
    /// Two different keys fit the `kid` and the algorithm: the signature does not say which.
    Ambiguous,
}

impl KeySet {
    /// Loads `{"keys": [...]}`. Unusable keys (private, weak, not for verification — `use`
    /// other than `sig`, `key_ops` without `verify` — or without a `kid`) are skipped and
    /// reported; keys sharing a `kid` are all kept ([`KeySet::select`] tells them apart).
    pub fn from_json(bytes: &[u8]) -> Result<KeySet, KeySetError> {
        let doc = parse_object(bytes).ok_or(KeySetError::NotAKeySet)?;
        let Some(Value::Array(keys)) = doc.get("keys") else {
            return Err(KeySetError::NotAKeySet);
        };
        let mut set = KeySet::default();
        for k in keys {
            let Value::Object(m) = k else {
                set.skipped.push((None, JwkError::BadMember("keys")));
                continue;
            };
            let kid = m.get("kid").and_then(Value::as_str).map(str::to_string);
            if let (Some(kid), Ok(key)) = (&kid, from_jwk_implied_rs256(m)) {
                let same = set.implied_rs256.entry(kid.clone()).or_default();
                if !same.iter().any(|k| k.thumbprint == key.thumbprint) {
                    same.push(Arc::new(key));
                }
            }
            match (from_jwk(m), kid) {
                (Ok(key), Some(kid)) => {
                    let same = set.by_kid.entry(kid).or_default();
                    // The same key listed twice is one key, not an ambiguity.
                    if !same.iter().any(|k| k.thumbprint == key.thumbprint) {
                        same.push(Arc::new(key));
                        set.count += 1;
                    }
                }
                (Ok(_), None) => set.skipped.push((None, JwkError::BadMember("kid"))),
                (Err(e), kid) => set.skipped.push((kid, e)),
            }
        }
        if set.count == 0 {
            return Err(KeySetError::NoUsableKey);
        }
        Ok(set)
    }

    /// The key named by `kid` (an exact match: a `kid` is never a path, a query or a URL) that
    /// verifies `alg`. Without an algorithm (an RFC 9421 signature may leave it to the key), the
    /// `kid` must name one key.
    pub fn select(&self, kid: &str, alg: Option<Alg>) -> Result<&Arc<VerifyingKey>, KeyChoice> {
        let keys = self.by_kid.get(kid).ok_or(KeyChoice::UnknownKid)?;
        let implied = match alg {
            Some(Alg::RS256) => self.implied_rs256.get(kid).map_or(&[][..], Vec::as_slice),
            _ => &[],
        };
        let mut fit = keys
            .iter()
            .filter(|k| alg.is_none_or(|a| k.alg == a))
            .chain(implied);
        match (fit.next(), fit.next()) {
            (Some(k), None) => Ok(k),
            (Some(_), Some(_)) => Err(KeyChoice::Ambiguous),
            (None, _) => Err(KeyChoice::NoKeyForAlg),
        }
    }

    /// `kid`s that name two different keys of one algorithm: a signature by either is refused.
    pub fn ambiguous(&self) -> Vec<(&str, Alg)> {
        let mut out = Vec::new();
        for (kid, keys) in &self.by_kid {
            for (i, k) in keys.iter().enumerate() {
                if keys[..i].iter().any(|o| o.alg == k.alg) && !out.contains(&(kid.as_str(), k.alg))
                {
                    out.push((kid.as_str(), k.alg));
                }
            }
        }
        out.sort();
        out
    }

    /// How many keys the set holds.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}
