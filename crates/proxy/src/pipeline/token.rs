//! Access token: find the one credential, verify it (signature once per token while cached),
//! and check its claims against the route's issuer on every request.
//!
//! Credentials come only from `Authorization` (RFC 6750 §2.1 / RFC 9449 §7.1): a token in the
//! query is refused unparsed (FAPI forbids it), two credentials are refused as ambiguous, the
//! scheme name is case-insensitive and the credential must be token68.
//!
//! The cache maps SHA-256(issuer name, token) to the verified claims, bounded in entries; a hit
//! skips the signature but still checks `exp`/`nbf` against `now`, and the binding stage always
//! runs. Keys come only from the issuer's key source, chosen by exact `kid`.

// Public for the `internals` feature (the fuzz harness and the benchmarks drive it directly).
#![cfg_attr(not(feature = "internals"), allow(unreachable_pub))]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use http::request::Parts;
use serde_json::{Map, Value};

use crate::config::Issuer;
use portcullis_base::json::{numeric_date, parse_object, string, Typed};
use portcullis_crypto::jose::jws::{parse, JwsError, KeyChoice};
use portcullis_crypto::jose::{sha256, sha256_b64url};
use portcullis_sources::introspect::{is_access_token_type, IntrospectError, Introspector};
use portcullis_sources::keys::KeySource;

portcullis_base::variants! {
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum TokenError {
        Missing,
        InQuery,
        Multiple,
        BadHeader,
        UnsupportedScheme,
        TooLarge,
        Malformed,
        AlgNotAllowed,
        ForbiddenHeader,
        UnknownKey,
        /// The `kid` names two different keys for the token's algorithm.
        AmbiguousKey,
        KeyMismatch,
        BadSignature,
        Typ,
        Issuer,
        Audience,
        ExpMissing,
        Expired,
        NotYetValid,
        IssuedAt,
        ClaimType,
        KeysUnavailable,
        /// Introspection answered `active: false` (RFC 7662 §2.2).
        Inactive,
        /// Introspection gave no decision: unreachable, timed out, or a bad answer.
        IntrospectionUnavailable,
        /// `cnf` names a confirmation method this proxy does not verify (RFC 7800 §3: `jwk`, `kid`,
        /// `jku`, ...): a token whose binding cannot be checked is not accepted as a bearer token.
        ConfirmationUnsupported,
        /// Introspection answered for a token that is not an access token (`token_type`
        /// `refresh_token`, say: RFC 7662 §2.1 lets the AS find any of its tokens).
        NotAccessToken,
    }
}

portcullis_base::variants! {
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Scheme {
        Bearer,
        DPoP,
    }
}

/// The credential as presented.
#[derive(Debug)]
pub struct Credential<'a> {
    pub scheme: Scheme,
    pub token: &'a str,
}

/// A verified access token's claims (RFC 9068).
#[derive(Debug)]
pub struct AccessToken {
    /// The config name of the issuer that verified it.
    pub issuer: String,
    pub client_id: Option<String>,
    pub sub: Option<String>,
    pub scopes: Vec<String>,
    pub jti: Option<String>,
    pub exp: i64,
    pub nbf: Option<i64>,
    /// `cnf.x5t#S256` (RFC 8705).
    pub cnf_x5t: Option<String>,
    /// `cnf.jkt` (RFC 9449).
    pub cnf_jkt: Option<String>,
    /// base64url SHA-256 of the token: what the audit log records instead of the token.
    pub hash: String,
    /// Until when the cached verdict may be reused (`exp` for a JWT; min(`exp`, TTL) for an
    /// introspected token).
    pub cache_until: i64,
    /// The key that verified a JWT: a cached verdict stands only while the issuer's key set
    /// still holds that key, so withdrawing a key revokes the tokens it signed at the next
    /// key-set refresh rather than at their `exp`.
    pub signed_by: Option<SignedBy>,
    pub claims: Map<String, Value>,
}

/// Which key verified a JWT: its `kid`, algorithm and RFC 7638 thumbprint.
#[derive(Debug)]
pub struct SignedBy {
    kid: String,
    alg: portcullis_crypto::jose::Alg,
    thumbprint: String,
}

impl AccessToken {
    /// FAPI 1 Part 2 §8.6: JWS "shall use PS256 or ES256". An issuer may also allow EdDSA (the
    /// FAPI 2.0 Security Profile does), so a `fapi1-advanced` route checks the algorithm its
    /// token was signed with. An introspected token carries no signature to judge.
    pub fn fapi1_algorithm(&self) -> bool {
        use portcullis_crypto::jose::Alg;
        self.signed_by
            .as_ref()
            .is_none_or(|s| matches!(s.alg, Alg::PS256 | Alg::ES256))
    }
}

impl SignedBy {
    fn still_in(&self, keys: Option<&KeySource>) -> bool {
        keys.and_then(|k| k.select(&self.kid, Some(self.alg)).ok())
            .is_some_and(|k| k.thumbprint == self.thumbprint)
    }
}

fn is_token68(s: &str) -> bool {
    let body = s.trim_end_matches('=');
    !body.is_empty()
        && body.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
        })
}

/// RFC 6750 §2.3 names the query form `access_token`; names are compared as the upstream's
/// form decoder reads them (`access%5Ftoken`, `%61ccess_token` and `ACCESS_TOKEN` are the same
/// parameter to it), so a token cannot slip past under another spelling into access logs.
fn query_has_access_token(q: &str) -> bool {
    portcullis_base::path::query_pairs(q).any(|(k, _)| {
        match portcullis_base::path::decode_query_component(k) {
            Some(name) => name.eq_ignore_ascii_case("access_token"),
            None => false,
        }
    })
}

/// Finds the request's one credential.
pub fn extract(parts: &Parts) -> Result<Credential<'_>, TokenError> {
    if parts.uri.query().is_some_and(query_has_access_token) {
        return Err(TokenError::InQuery);
    }
    let mut values = parts.headers.get_all(http::header::AUTHORIZATION).iter();
    let value = match (values.next(), values.next()) {
        (None, _) => return Err(TokenError::Missing),
        (Some(_), Some(_)) => return Err(TokenError::Multiple),
        (Some(v), None) => v.to_str().map_err(|_| TokenError::BadHeader)?,
    };
    let (scheme, token) = value.split_once(' ').ok_or(TokenError::BadHeader)?;
    let scheme = if scheme.eq_ignore_ascii_case("bearer") {
        Scheme::Bearer
    } else if scheme.eq_ignore_ascii_case("dpop") {
        Scheme::DPoP
    } else {
        return Err(TokenError::UnsupportedScheme);
    };
    if !is_token68(token) {
        return Err(TokenError::BadHeader);
    }
    Ok(Credential { scheme, token })
}

/// Verified tokens by SHA-256(issuer name, 0, token); bounded.
pub struct TokenCache {
    map: DashMap<[u8; 32], Arc<AccessToken>>,
    capacity: usize,
    /// Lookups answered from the cache, and signatures verified (misses).
    pub hits: AtomicU64,
    pub verifications: AtomicU64,
}

impl TokenCache {
    pub fn new(capacity: usize) -> TokenCache {
        TokenCache {
            map: DashMap::new(),
            capacity,
            hits: AtomicU64::new(0),
            verifications: AtomicU64::new(0),
        }
    }

    fn insert(&self, key: [u8; 32], t: Arc<AccessToken>, now: i64) {
        if self.capacity == 0 {
            return;
        }
        if self.map.len() >= self.capacity {
            self.map.retain(|_, v| v.exp > now);
            if self.map.len() >= self.capacity {
                return;
            }
        }
        self.map.insert(key, t);
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// The most entries held (0: the cache is off).
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

fn cache_key(issuer: &str, token: &str) -> [u8; 32] {
    let mut buf = Vec::with_capacity(issuer.len() + 1 + token.len());
    buf.extend_from_slice(issuer.as_bytes());
    buf.push(0);
    buf.extend_from_slice(token.as_bytes());
    sha256(&buf)
}

/// `exp` and `nbf` against `now` with the issuer's skew (RFC 7519 §4.1.4, §4.1.5).
fn check_time(t: &AccessToken, issuer: &Issuer, now: i64) -> Result<(), TokenError> {
    if now >= t.exp.saturating_add(issuer.skew) {
        return Err(TokenError::Expired);
    }
    if t.nbf
        .is_some_and(|nbf| now.saturating_add(issuer.skew) < nbf)
    {
        return Err(TokenError::NotYetValid);
    }
    Ok(())
}

fn opt_string(m: &Map<String, Value>, name: &str) -> Result<Option<String>, TokenError> {
    match string(m, name) {
        Typed::Absent => Ok(None),
        Typed::Present(s) => Ok(Some(s.to_string())),
        Typed::WrongType => Err(TokenError::ClaimType),
    }
}

/// Whether the claims come from a signed JWT (every RFC 9068 claim required) or from an
/// introspection answer (RFC 7662: `iss`, `aud` and `exp` checked when present).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    Jwt,
    Introspection { ttl: i64 },
}

fn claims(
    m: Map<String, Value>,
    issuer: &Issuer,
    hash: String,
    now: i64,
    source: Source,
) -> Result<AccessToken, TokenError> {
    let strict = source == Source::Jwt;
    match string(&m, "iss") {
        Typed::Present(iss) if iss == issuer.issuer => {}
        Typed::WrongType => return Err(TokenError::ClaimType),
        Typed::Absent if !strict => {}
        _ => return Err(TokenError::Issuer),
    }
    let aud_ok = match m.get("aud") {
        Some(Value::String(a)) => a == &issuer.audience,
        Some(Value::Array(list)) => {
            if list.iter().any(|v| !v.is_string()) {
                return Err(TokenError::ClaimType);
            }
            list.iter()
                .any(|v| v.as_str() == Some(issuer.audience.as_str()))
        }
        Some(_) => return Err(TokenError::ClaimType),
        // An introspection answer without `aud` may be about a refresh token or a token for
        // another resource (RFC 7662 §2.1 has the AS search every token it issued): refused.
        None => false,
    };
    if !aud_ok {
        return Err(TokenError::Audience);
    }
    if !strict {
        match string(&m, "token_type") {
            Typed::Absent => {}
            Typed::Present(t) if is_access_token_type(t) => {}
            Typed::Present(_) => return Err(TokenError::NotAccessToken),
            Typed::WrongType => return Err(TokenError::ClaimType),
        }
    }
    let exp = match (numeric_date(&m, "exp"), source) {
        (Typed::Present(e), _) => e,
        (Typed::Absent, Source::Introspection { ttl }) => now.saturating_add(ttl),
        (Typed::Absent, Source::Jwt) => return Err(TokenError::ExpMissing),
        (Typed::WrongType, _) => return Err(TokenError::ClaimType),
    };
    let cache_until = match source {
        Source::Jwt => exp.saturating_add(issuer.skew),
        Source::Introspection { ttl } => exp.min(now.saturating_add(ttl)),
    };
    let nbf = match numeric_date(&m, "nbf") {
        Typed::Present(n) => Some(n),
        Typed::Absent => None,
        Typed::WrongType => return Err(TokenError::ClaimType),
    };
    let iat = match numeric_date(&m, "iat") {
        Typed::Present(i) => Some(i),
        Typed::Absent => None,
        Typed::WrongType => return Err(TokenError::ClaimType),
    };
    if iat.is_some_and(|i| i > now.saturating_add(issuer.skew)) {
        return Err(TokenError::IssuedAt);
    }
    if let Some(max_age) = issuer.max_age {
        match iat {
            Some(i) if i.saturating_add(max_age) >= now => {}
            _ => return Err(TokenError::IssuedAt),
        }
    }
    // RFC 7662 answers name their members; a JWT's are wherever the issuer puts them.
    let (scope_claim, client_claim) = match source {
        Source::Jwt => (issuer.scope_claim.as_str(), issuer.client_claim.as_str()),
        Source::Introspection { .. } => ("scope", "client_id"),
    };
    let scopes = match m.get(scope_claim) {
        None => Vec::new(),
        Some(Value::String(s)) => s
            .split(' ')
            .filter(|x| !x.is_empty())
            .map(str::to_string)
            .collect(),
        // A list of scopes (`scp` at several authorization servers); RFC 9068's own `scope`
        // is a string and stays one.
        Some(Value::Array(list)) if scope_claim != "scope" => list
            .iter()
            .map(|v| match v {
                Value::String(s) if !s.is_empty() && !s.contains(' ') => Ok(s.clone()),
                _ => Err(TokenError::ClaimType),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(TokenError::ClaimType),
    };
    let (cnf_x5t, cnf_jkt) = match m.get("cnf") {
        None => (None, None),
        Some(Value::Object(cnf)) => {
            // RFC 8705 and RFC 9449 are the methods we verify; any other member would be a
            // binding we silently skip.
            if cnf.keys().any(|k| k != "x5t#S256" && k != "jkt") {
                return Err(TokenError::ConfirmationUnsupported);
            }
            (opt_string(cnf, "x5t#S256")?, opt_string(cnf, "jkt")?)
        }
        Some(_) => return Err(TokenError::ClaimType),
    };
    Ok(AccessToken {
        issuer: issuer.name.clone(),
        client_id: opt_string(&m, client_claim)?,
        sub: opt_string(&m, "sub")?,
        scopes,
        jti: opt_string(&m, "jti")?,
        exp,
        nbf,
        cnf_x5t,
        cnf_jkt,
        hash,
        cache_until,
        signed_by: None,
        claims: m,
    })
}

/// Verifies `token` for `issuer` (see the module doc).
pub async fn verify(
    token: &str,
    issuer: &Issuer,
    keys: Option<&KeySource>,
    introspector: Option<&Introspector>,
    cache: &TokenCache,
    now: i64,
) -> Result<Arc<AccessToken>, TokenError> {
    if token.len() > issuer.max_token_bytes {
        return Err(TokenError::TooLarge);
    }
    let key = cache_key(&issuer.name, token);
    if let Some(hit) = cache.map.get(&key).map(|r| Arc::clone(r.value())) {
        let key_kept = hit.signed_by.as_ref().is_none_or(|s| s.still_in(keys));
        if now < hit.cache_until && key_kept {
            cache.hits.fetch_add(1, Ordering::Relaxed);
            check_time(&hit, issuer, now)?;
            return Ok(hit);
        }
    }
    // A compact JWS goes to the key set; anything else (an opaque token) to introspection.
    let looks_like_jws = token.matches('.').count() == 2;
    let t = match (keys, introspector) {
        (Some(keys), None) => verify_jwt(token, issuer, keys, cache, now).await?,
        (Some(keys), Some(i)) if looks_like_jws => {
            let mut t = verify_jwt(token, issuer, keys, cache, now).await?;
            if i.config.jwts {
                // A signature says who issued the token, not that it is still good: the AS
                // answers for revocation. The answer is reused for `cache_ttl` at most, the
                // window in which a revoked token still passes.
                match i.introspect(token).await {
                    Ok(Some(_)) => {}
                    Ok(None) => return Err(TokenError::Inactive),
                    Err(IntrospectError::Unavailable) => {
                        return Err(TokenError::IntrospectionUnavailable)
                    }
                }
                t.cache_until = t.cache_until.min(now.saturating_add(i.config.cache_ttl));
            }
            t
        }
        (_, Some(i)) => {
            cache.verifications.fetch_add(1, Ordering::Relaxed);
            let m = match i.introspect(token).await {
                Ok(Some(m)) => m,
                Ok(None) => return Err(TokenError::Inactive),
                Err(IntrospectError::Unavailable) => {
                    return Err(TokenError::IntrospectionUnavailable)
                }
            };
            let ttl = i.config.cache_ttl;
            let hash = sha256_b64url(token.as_bytes());
            claims(m, issuer, hash, now, Source::Introspection { ttl })?
        }
        (None, None) => return Err(TokenError::KeysUnavailable),
    };
    let t = Arc::new(t);
    check_time(&t, issuer, now)?;
    cache.insert(key, Arc::clone(&t), now);
    Ok(t)
}

async fn verify_jwt(
    token: &str,
    issuer: &Issuer,
    keys: &KeySource,
    cache: &TokenCache,
    now: i64,
) -> Result<AccessToken, TokenError> {
    let jws = parse(token, &issuer.algorithms).map_err(|e| match e {
        JwsError::AlgNotAllowed => TokenError::AlgNotAllowed,
        JwsError::Crit | JwsError::ForbiddenHeader => TokenError::ForbiddenHeader,
        _ => TokenError::Malformed,
    })?;
    if jws.has_key_carrying_header() || jws.is_nested() {
        return Err(TokenError::ForbiddenHeader);
    }
    if issuer.require_typ && !jws.typ_is("at+jwt") {
        return Err(TokenError::Typ);
    }
    let kid = jws.kid().ok_or(TokenError::UnknownKey)?;
    // The key is chosen by kid and the token's alg; only an unknown kid is worth a refetch.
    let mut found = keys.select(kid, Some(jws.alg));
    if matches!(found, Err(KeyChoice::UnknownKid)) {
        keys.refetch_for_unknown_kid().await;
        found = keys.select(kid, Some(jws.alg));
    }
    let vk = match found {
        Ok(k) => k,
        Err(KeyChoice::UnknownKid) if !keys.is_ready() => return Err(TokenError::KeysUnavailable),
        Err(KeyChoice::UnknownKid) => return Err(TokenError::UnknownKey),
        Err(KeyChoice::NoKeyForAlg) => return Err(TokenError::KeyMismatch),
        Err(KeyChoice::Ambiguous) => return Err(TokenError::AmbiguousKey),
    };
    cache.verifications.fetch_add(1, Ordering::Relaxed);
    jws.verify_with(&vk).map_err(|e| match e {
        JwsError::KeyAlgMismatch => TokenError::KeyMismatch,
        _ => TokenError::BadSignature,
    })?;
    let m = parse_object(&jws.payload).ok_or(TokenError::Malformed)?;
    let mut t = claims(m, issuer, sha256_b64url(token.as_bytes()), now, Source::Jwt)?;
    t.signed_by = Some(SignedBy {
        kid: kid.to_string(),
        alg: vk.alg,
        thumbprint: vk.thumbprint.clone(),
    });
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(auth: &[&str], uri: &str) -> Parts {
        let mut b = http::Request::get(uri);
        for a in auth {
            b = b.header("authorization", *a);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn credentials_are_found_in_one_place_only() {
        let p = parts(&["bearer abc.def-_~+/="], "/x");
        let c = extract(&p).unwrap();
        assert_eq!((c.scheme, c.token), (Scheme::Bearer, "abc.def-_~+/="));
        let p = parts(&["DPoP abc"], "/x");
        assert_eq!(extract(&p).unwrap().scheme, Scheme::DPoP);
        let cases: &[(&[&str], &str, TokenError)] = &[
            (&[], "/x", TokenError::Missing),
            (&["Bearer a", "Bearer b"], "/x", TokenError::Multiple),
            (&["Bearer a"], "/x?access_token=a", TokenError::InQuery),
            (&[], "/x?b=1&access_token=a", TokenError::InQuery),
            (&["Bearer a"], "/x?access%5Ftoken=a", TokenError::InQuery),
            (&["Bearer a"], "/x?%61ccess_token=a", TokenError::InQuery),
            (&["Bearer a"], "/x?b=1&Access_Token=a", TokenError::InQuery),
            (&["Bearer  a"], "/x", TokenError::BadHeader),
            (&["Bearer\ta"], "/x", TokenError::BadHeader),
            (&["Bearer a b"], "/x", TokenError::BadHeader),
            (&["Bearer a=b"], "/x", TokenError::BadHeader),
            (&["Bearer"], "/x", TokenError::BadHeader),
            (&["Basic dXNlcjpwYXNz"], "/x", TokenError::UnsupportedScheme),
        ];
        for (auth, uri, want) in cases {
            assert_eq!(
                extract(&parts(auth, uri)).unwrap_err(),
                *want,
                "{auth:?} {uri}"
            );
        }
        // A parameter merely containing the name is not a token.
        assert!(extract(&parts(&["Bearer a"], "/x?not_access_token=1")).is_ok());
    }
}
