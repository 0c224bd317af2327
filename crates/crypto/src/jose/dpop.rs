//! DPoP proofs (RFC 9449 §4.3): every check a resource server makes, in the RFC's order.
//!
//! The caller supplies the request facts (method, external URI, access token) and `now`; this
//! module says whether the proof is valid and returns what the binding and replay checks need:
//! the proof key's RFC 7638 thumbprint and a hash of `jti` (the `jti` itself is never stored,
//! so a huge one cannot exhaust memory).

use serde_json::Value;

use super::jwk::from_jwk;
use super::jws::{parse, JwsError};
use super::{sha256, sha256_b64url, Alg};
use portcullis_base::json::{numeric_date, string, Typed};

portcullis_base::variants! {
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum DpopError {
        Malformed,
        Typ,
        AlgNotAllowed,
        /// No `jwk`, a private or invalid one, or another key-carrying header.
        Key,
        BadSignature,
        /// `jti`, `htm`, `htu` or `iat` missing or of the wrong type.
        MissingClaim,
        Method,
        Uri,
        Iat,
        /// `ath` missing or not the hash of the presented token.
        Ath,
        NonceRequired,
        NonceStale,
    }
}

/// What a valid proof establishes.
#[derive(Debug)]
pub struct Proof {
    pub jkt: String,
    pub jti_hash: [u8; 32],
    pub iat: i64,
}

/// The request a proof must match.
pub struct Expect<'a> {
    pub method: &'a str,
    /// The external target URI without query or fragment, already normalized.
    pub htu: &'a str,
    /// The access token the proof accompanies (its `ath` must match), if any.
    pub access_token: Option<&'a str>,
    pub now: i64,
    /// How old a proof may be, in seconds.
    pub max_age: i64,
    /// How far in the future `iat` may be (clock skew), in seconds.
    pub skew: i64,
    pub algs: &'a [Alg],
    /// When the server requires nonces: whether a given nonce is one it issued and still
    /// accepts.
    pub nonce: Option<&'a dyn Fn(&str) -> bool>,
}

/// Verifies one proof; never panics on hostile input.
pub fn verify(proof: &str, e: &Expect<'_>) -> Result<Proof, DpopError> {
    let jws = parse(proof, e.algs).map_err(|err| match err {
        JwsError::AlgNotAllowed => DpopError::AlgNotAllowed,
        _ => DpopError::Malformed,
    })?;
    if !jws.typ_is("dpop+jwt") {
        return Err(DpopError::Typ);
    }
    if ["jku", "x5u", "x5c"]
        .iter()
        .any(|h| jws.header.contains_key(*h))
    {
        return Err(DpopError::Key);
    }
    let Some(Value::Object(jwk)) = jws.header.get("jwk") else {
        return Err(DpopError::Key);
    };
    let key = from_jwk(jwk).map_err(|_| DpopError::Key)?;
    jws.verify_with(&key).map_err(|err| match err {
        JwsError::KeyAlgMismatch => DpopError::Key,
        _ => DpopError::BadSignature,
    })?;
    let claims = portcullis_base::json::parse_object(&jws.payload).ok_or(DpopError::Malformed)?;
    let Typed::Present(jti) = string(&claims, "jti") else {
        return Err(DpopError::MissingClaim);
    };
    let Typed::Present(htm) = string(&claims, "htm") else {
        return Err(DpopError::MissingClaim);
    };
    let Typed::Present(htu) = string(&claims, "htu") else {
        return Err(DpopError::MissingClaim);
    };
    let Typed::Present(iat) = numeric_date(&claims, "iat") else {
        return Err(DpopError::MissingClaim);
    };
    if jti.is_empty() {
        return Err(DpopError::MissingClaim);
    }
    if htm != e.method {
        return Err(DpopError::Method);
    }
    match normalize_htu(htu) {
        Some(n) if n == e.htu => {}
        _ => return Err(DpopError::Uri),
    }
    if iat > e.now + e.skew || iat < e.now - e.max_age {
        return Err(DpopError::Iat);
    }
    if let Some(token) = e.access_token {
        match string(&claims, "ath") {
            Typed::Present(ath) if ath == sha256_b64url(token.as_bytes()) => {}
            _ => return Err(DpopError::Ath),
        }
    }
    if let Some(accepts) = e.nonce {
        match string(&claims, "nonce") {
            Typed::Present(n) if accepts(n) => {}
            Typed::Present(_) => return Err(DpopError::NonceStale),
            _ => return Err(DpopError::NonceRequired),
        }
    }
    Ok(Proof {
        jkt: key.thumbprint.clone(),
        jti_hash: sha256(jti.as_bytes()),
        iat,
    })
}

fn hexval(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// RFC 3986 §6.2.2 syntax-based and §6.2.3 scheme-based normalization of an absolute `http(s)`
/// URI without query or fragment: lower-case scheme and host, default port removed, empty path
/// as `/`, percent-escapes upper-cased and unreserved ones decoded. Returns `None` for anything
/// else (a query, a fragment, userinfo, a relative reference, a bad escape).
pub fn normalize_htu(uri: &str) -> Option<String> {
    if !uri.is_ascii() || uri.contains(['?', '#', '@', ' ', '\\']) {
        return None;
    }
    let (scheme, rest) = uri.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "https" => "443",
        "http" => "80",
        _ => return None,
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let authority = authority.to_ascii_lowercase();
    // host [":" port], the host an IP literal in brackets or a name without ':' (RFC 3986
    // §3.2.2); anything else (a second ':', a stray bracket) is not a URI we compare.
    let (host, port) = match authority.strip_prefix('[') {
        Some(rest) => {
            let (inside, after) = rest.split_once(']')?;
            if inside.is_empty()
                || !inside
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
            {
                return None;
            }
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':')?),
            };
            (&authority[..inside.len() + 2], port)
        }
        None => match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority.as_str(), None),
        },
    };
    if host.is_empty() || (!host.starts_with('[') && host.contains([':', '[', ']'])) {
        return None;
    }
    let authority = match port {
        None | Some("") => host.to_string(),
        Some(p) if p == default_port => host.to_string(),
        Some(p) if p.bytes().all(|b| b.is_ascii_digit()) => format!("{host}:{p}"),
        Some(_) => return None,
    };
    let mut out = format!("{scheme}://{authority}");
    let bytes = path.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let (h, l) = (bytes.get(i + 1).copied()?, bytes.get(i + 2).copied()?);
            let v = hexval(h)? << 4 | hexval(l)?;
            if v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~') {
                out.push(v as char);
            } else {
                out.push_str(&format!("%{v:02X}"));
            }
            i += 3;
        } else {
            out.push(bytes[i] as char);
            i += 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn htu_normalization_follows_rfc_3986_section_6() {
        let n = |s| normalize_htu(s);
        let want = Some("https://server.example.com/token".to_string());
        assert_eq!(n("https://server.example.com/token"), want);
        assert_eq!(n("HTTPS://Server.Example.COM:443/token"), want);
        assert_eq!(n("https://server.example.com:443/%74oken"), want);
        assert_eq!(
            n("https://server.example.com").as_deref(),
            Some("https://server.example.com/")
        );
        assert_eq!(
            n("https://a.example/x%7e").as_deref(),
            Some("https://a.example/x~")
        );
        assert_eq!(
            n("https://a.example/x%2f").as_deref(),
            Some("https://a.example/x%2F")
        );
        assert_eq!(
            n("https://a.example:8443/x").as_deref(),
            Some("https://a.example:8443/x")
        );
        assert_eq!(
            n("https://[::1]:8443/x").as_deref(),
            Some("https://[::1]:8443/x")
        );
        assert_eq!(n("https://[::1]:443/x").as_deref(), Some("https://[::1]/x"));
        assert_eq!(n("https://[::1]/x").as_deref(), Some("https://[::1]/x"));
        for bad in [
            "https://a.example/x?q=1",
            "https://a.example/x#f",
            "https://user@a.example/x",
            "ftp://a.example/x",
            "/x",
            "https://a.example/%zz",
            "https://a.example:80x/",
            "https:///x",
            // Found by the dpop fuzz target: normal forms that were not their own normal form.
            "https://a.example::443/",
            "https://[::1/",
            "https://a]/",
        ] {
            assert_eq!(n(bad), None, "{bad}");
        }
    }
}
