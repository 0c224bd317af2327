//! OBIE detached JWS (`x-jws-signature`): RFC 7515 Appendix F detached content, with the
//! RFC 7797 unencoded payload for the `obie-3.1.3` profile.
//!
//! How it works: the header value is `BASE64URL(protected) . . BASE64URL(signature)` — the
//! middle (payload) segment is empty; the payload is the HTTP body exactly as received. The
//! signing input is `BASE64URL(protected) '.' payload`, where the payload is the raw body bytes
//! when the header says `b64: false` (RFC 7797 §3) and `BASE64URL(body)` otherwise (RFC 7515
//! §5.1). Nothing is ever re-serialized: bytes are signed, not meaning.
//!
//! The two OBIE profiles:
//! - `obie-3.1.3` (and earlier): `b64: false` is required and listed in `crit`.
//! - `obie-3.1.4` and later: `b64` must be absent (the payload is base64url-encoded).
//!
//! In both, `crit` lists exactly the OB claims `http://openbanking.org.uk/iat`, `/iss` and
//! `/tan` (plus `b64` on 3.1.3) and nothing else; `alg` is on an allow-list (PS256 by default);
//! `kid` names the key in the signer's key set; `iat` is a JSON number, not in the future and
//! not older than the configured age; `iss` equals the calling client's expected name; `tan` is
//! a configured trust anchor. Headers that carry or point to a key (`jwk`, `jku`, `x5u`, `x5c`)
//! are refused: keys come only from the trust anchor's directory.
//!
//! Invariants: nothing here panics on hostile input; a key verifies only its own algorithm.

use serde_json::{Map, Value};

use super::jwk::VerifyingKey;
use super::{b64url, b64url_decode, Alg};
use portcullis_base::json::{numeric_date, parse_object, string, Typed};

/// `http://openbanking.org.uk/iat`: when the signature was made (JSON number).
pub const OB_IAT: &str = "http://openbanking.org.uk/iat";
/// `http://openbanking.org.uk/iss`: who signed (`{org-id}/{software-statement-id}` for TPPs).
pub const OB_ISS: &str = "http://openbanking.org.uk/iss";
/// `http://openbanking.org.uk/tan`: the trust anchor that vouches for the key.
pub const OB_TAN: &str = "http://openbanking.org.uk/tan";

/// The OBIE message-signing profile of a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    /// Read/Write API 3.1.3 and earlier: `b64: false`, listed in `crit`.
    Obie313,
    /// Read/Write API 3.1.4 and later: no `b64` (the payload is base64url-encoded).
    Obie314,
}

impl Profile {
    pub fn from_name(name: &str) -> Option<Profile> {
        match name {
            "obie-3.1.3" => Some(Profile::Obie313),
            "obie-3.1.4" => Some(Profile::Obie314),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Obie313 => "obie-3.1.3",
            Profile::Obie314 => "obie-3.1.4",
        }
    }

    /// The exact `crit` set of this profile.
    fn crit(self) -> &'static [&'static str] {
        match self {
            Profile::Obie313 => &["b64", OB_IAT, OB_ISS, OB_TAN],
            Profile::Obie314 => &[OB_IAT, OB_ISS, OB_TAN],
        }
    }
}

portcullis_base::variants! {
    /// Why a detached JWS was refused: one condition each, so the audit record can say which.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum DetachedError {
        /// Not `header..signature`: an attached payload, a wrong number of segments, bad base64url,
        /// or a header that is not one JSON object without duplicate members.
        Malformed,
        /// `alg` absent, unknown, or not on the allow-list.
        AlgNotAllowed,
        KidMissing,
        CritMissing,
        /// `crit` is not exactly the profile's set (an unknown name, a missing or repeated one).
        Crit,
        /// `obie-3.1.3`: `b64` absent.
        B64Missing,
        /// `b64` present on `obie-3.1.4`, not `false` on `obie-3.1.3`, or not listed in `crit`
        /// (RFC 7797 §6).
        B64,
        IatMissing,
        /// `iat` not a number, in the future, or older than the allowed age.
        Iat,
        IssMissing,
        /// `iss` is not the calling client.
        Iss,
        TanMissing,
        /// `tan` is not a configured trust anchor.
        Tan,
        /// A header member with a value we refuse: `typ` other than `JOSE`, `cty` other than
        /// `json`, or a key-carrying member.
        Header,
        /// The key's algorithm is not the header's.
        KeyMismatch,
        BadSignature,
    }
}

/// A parsed, not yet checked, detached JWS.
#[derive(Debug)]
pub struct Detached<'a> {
    /// `BASE64URL(protected header)` exactly as received.
    pub protected: &'a str,
    pub header: Map<String, Value>,
    pub signature: Vec<u8>,
}

fn is_b64url(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Parses `header..signature`; an attached payload (`header.payload.sig`) is refused (RFC 7515
/// Appendix F: the payload travels as the body only).
pub fn parse(value: &str) -> Result<Detached<'_>, DetachedError> {
    let mut parts = value.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(DetachedError::Malformed);
    };
    if !p.is_empty() || !is_b64url(h) || !is_b64url(s) {
        return Err(DetachedError::Malformed);
    }
    let header = b64url_decode(h)
        .and_then(|b| parse_object(&b))
        .ok_or(DetachedError::Malformed)?;
    let signature = b64url_decode(s).ok_or(DetachedError::Malformed)?;
    Ok(Detached {
        protected: h,
        header,
        signature,
    })
}

/// RFC 7797 §3 and §6, independent of any profile: whether the payload is base64url-encoded
/// (`b64` absent or `true`) or not (`b64: false`). `b64` must be a boolean, and when present it
/// must be listed in `crit` — a header with `b64` but without `crit: ["b64"]` is refused even if
/// the signature is right.
pub fn b64_mode(header: &Map<String, Value>) -> Result<bool, DetachedError> {
    let Some(b64) = header.get("b64") else {
        return Ok(true);
    };
    let Value::Bool(b64) = b64 else {
        return Err(DetachedError::B64);
    };
    let listed =
        matches!(header.get("crit"), Some(Value::Array(c)) if c.iter().any(|n| n == "b64"));
    if !listed {
        return Err(DetachedError::B64);
    }
    Ok(*b64)
}

/// The bytes that were signed: `protected '.' payload`, the payload encoded or not.
pub fn signing_input(protected: &str, body: &[u8], encoded: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(protected.len() + 1 + body.len() * 4 / 3 + 4);
    out.extend_from_slice(protected.as_bytes());
    out.push(b'.');
    if encoded {
        out.extend_from_slice(b64url(body).as_bytes());
    } else {
        out.extend_from_slice(body);
    }
    out
}

/// What the header must satisfy.
pub struct Expect<'a> {
    pub profile: Profile,
    pub algs: &'a [Alg],
    pub now: i64,
    /// Oldest acceptable `iat`, as an age in seconds.
    pub max_age: i64,
    /// How far in the future `iat` may be (clock skew), in seconds.
    pub skew: i64,
    /// The calling client's expected `iss`; `None` when it cannot be named (always refused).
    pub iss: Option<&'a str>,
    pub trust_anchors: &'a [String],
}

/// The header facts the caller needs after [`check_header`].
#[derive(Debug, PartialEq, Eq)]
pub struct Checked<'a> {
    pub alg: Alg,
    pub kid: &'a str,
    /// Whether the payload is base64url-encoded in the signing input.
    pub encoded: bool,
    pub iat: i64,
}

fn required_string<'a>(
    h: &'a Map<String, Value>,
    name: &str,
    missing: DetachedError,
    invalid: DetachedError,
) -> Result<&'a str, DetachedError> {
    match string(h, name) {
        Typed::Present(s) => Ok(s),
        Typed::Absent => Err(missing),
        Typed::WrongType => Err(invalid),
    }
}

/// Checks the protected header against the profile and the request's expectations. Cheap
/// checks only: no key is looked up and nothing is verified here.
pub fn check_header<'a>(d: &'a Detached<'_>, e: &Expect<'_>) -> Result<Checked<'a>, DetachedError> {
    let h = &d.header;
    let alg = match h.get("alg") {
        Some(Value::String(a)) => Alg::from_name(a).ok_or(DetachedError::AlgNotAllowed)?,
        _ => return Err(DetachedError::AlgNotAllowed),
    };
    if !e.algs.contains(&alg) {
        return Err(DetachedError::AlgNotAllowed);
    }
    if ["jwk", "jku", "x5u", "x5c", "zip", "enc"]
        .iter()
        .any(|m| h.contains_key(*m))
    {
        return Err(DetachedError::Header);
    }
    // crit: exactly the profile's set, each once, all strings.
    let crit = match h.get("crit") {
        None => return Err(DetachedError::CritMissing),
        Some(Value::Array(c)) => c,
        Some(_) => return Err(DetachedError::Crit),
    };
    let want = e.profile.crit();
    let mut names: Vec<&str> = Vec::with_capacity(crit.len());
    for c in crit {
        let Value::String(n) = c else {
            return Err(DetachedError::Crit);
        };
        if names.contains(&n.as_str()) {
            return Err(DetachedError::Crit);
        }
        names.push(n);
    }
    match e.profile {
        Profile::Obie313 => match h.get("b64") {
            None => return Err(DetachedError::B64Missing),
            Some(Value::Bool(false)) => {}
            Some(_) => return Err(DetachedError::B64),
        },
        Profile::Obie314 => {
            if h.contains_key("b64") || names.contains(&"b64") {
                return Err(DetachedError::B64);
            }
        }
    }
    let encoded = b64_mode(h)?;
    if names.len() != want.len() || !want.iter().all(|w| names.contains(w)) {
        return Err(DetachedError::Crit);
    }
    match h.get("typ") {
        None => {}
        Some(Value::String(t)) if t == "JOSE" => {}
        Some(_) => return Err(DetachedError::Header),
    }
    match h.get("cty") {
        None => {}
        Some(Value::String(t)) if t == "json" || t == "application/json" => {}
        Some(_) => return Err(DetachedError::Header),
    }
    let kid = required_string(
        h,
        "kid",
        DetachedError::KidMissing,
        DetachedError::KidMissing,
    )?;
    if kid.is_empty() {
        return Err(DetachedError::KidMissing);
    }
    let iat = match numeric_date(h, OB_IAT) {
        Typed::Present(i) => i,
        Typed::Absent => return Err(DetachedError::IatMissing),
        Typed::WrongType => return Err(DetachedError::Iat),
    };
    if iat > e.now.saturating_add(e.skew) || iat < e.now.saturating_sub(e.max_age) {
        return Err(DetachedError::Iat);
    }
    let iss = required_string(h, OB_ISS, DetachedError::IssMissing, DetachedError::Iss)?;
    if e.iss != Some(iss) {
        return Err(DetachedError::Iss);
    }
    let tan = required_string(h, OB_TAN, DetachedError::TanMissing, DetachedError::Tan)?;
    if !e.trust_anchors.iter().any(|t| t == tan) {
        return Err(DetachedError::Tan);
    }
    Ok(Checked {
        alg,
        kid,
        encoded,
        iat,
    })
}

/// Verifies the signature over `body` with `key` (already chosen by `kid`).
pub fn verify(
    d: &Detached<'_>,
    checked: &Checked<'_>,
    body: &[u8],
    key: &VerifyingKey,
) -> Result<(), DetachedError> {
    if key.alg != checked.alg {
        return Err(DetachedError::KeyMismatch);
    }
    let input = signing_input(d.protected, body, checked.encoded);
    if key.verify(&input, &d.signature) {
        Ok(())
    } else {
        Err(DetachedError::BadSignature)
    }
}

/// The OB protected header for `profile`: `alg`, `kid`, the OB claims, `crit`, `typ: JOSE`,
/// `cty: application/json`, and `b64: false` on 3.1.3.
pub fn ob_header(
    profile: Profile,
    alg: Alg,
    kid: &str,
    iat: i64,
    iss: &str,
    tan: &str,
) -> Map<String, Value> {
    let mut h = Map::new();
    h.insert("alg".into(), Value::String(alg.name().into()));
    h.insert("kid".into(), Value::String(kid.into()));
    h.insert("typ".into(), Value::String("JOSE".into()));
    h.insert("cty".into(), Value::String("application/json".into()));
    if profile == Profile::Obie313 {
        h.insert("b64".into(), Value::Bool(false));
    }
    h.insert(OB_IAT.into(), Value::from(iat));
    h.insert(OB_ISS.into(), Value::String(iss.into()));
    h.insert(OB_TAN.into(), Value::String(tan.into()));
    h.insert(
        "crit".into(),
        Value::Array(
            profile
                .crit()
                .iter()
                .map(|c| Value::String((*c).into()))
                .collect(),
        ),
    );
    h
}

/// Signs `body` as a detached JWS with `header` (which says `b64` or not); `sign` produces the
/// raw signature over the signing input.
pub fn sign_detached(
    header: &Map<String, Value>,
    body: &[u8],
    sign: impl FnOnce(&[u8]) -> Vec<u8>,
) -> String {
    let protected = b64url(Value::Object(header.clone()).to_string().as_bytes());
    let encoded = !matches!(header.get("b64"), Some(Value::Bool(false)));
    let sig = sign(&signing_input(&protected, body, encoded));
    format!("{protected}..{}", b64url(&sig))
}

#[cfg(test)]
mod tests;
