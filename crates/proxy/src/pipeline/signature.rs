//! Request signature (stage 9): OBIE `x-jws-signature` or RFC 9421, per the route.
//!
//! Why here: it needs the caller's verified identity and token (to name the caller and find its
//! keys, and to check the OBIE `iss`), and the body, which the caller buffers once, up to the
//! route limit, only for routes that need it; and it runs before authorization, so a request
//! whose bytes nobody vouches for is never authorized. The bytes verified are the bytes the
//! proxy forwards: the body is checked exactly as received, never re-serialized.
//!
//! Cheap checks come first (header parsing, claims, coverage, `created`, `Content-Digest`); the
//! key is resolved and the signature verified last; an RFC 9421 `nonce` is recorded only once
//! its signature verified, so garbage cannot burn a client's nonces.

use http::request::Parts;

use super::binding::BoundToken;
use super::identity::ClientIdentity;
use crate::config::Signatures;
use portcullis_crypto::httpsig::{self, digest, verify, HttpSigError, Message, RequestView};
use portcullis_crypto::jose::detached::{self, DetachedError};
use portcullis_crypto::jose::sha256_b64url;
use portcullis_policy::signature::{RouteSignature, SignatureKind};
use portcullis_policy::template::Facts;
use portcullis_sources::clientkeys::{ClientKeys, LookupError};
use portcullis_state::replay::{ReplayError, ReplayStore};

portcullis_base::variants! {
    /// Why an OBIE `x-jws-signature` was refused (400, OBIE error body).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum JwsSigError {
        Missing,
        /// Two `x-jws-signature` fields, or one with a comma-joined value.
        Multiple,
        Detached(DetachedError),
        /// The caller cannot be named (no value for the `client` template), or has no key set.
        UnknownClient,
        UnknownKey,
        /// The caller's key set cannot be loaded (fail closed).
        KeysUnavailable,
    }
}

portcullis_base::variants! {
    /// Why a request signature was refused.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum SignatureError {
        /// OBIE routes: 400 with the OBIE error body.
        Jws(JwsSigError),
        /// RFC 9421 routes: 401.
        Http(HttpSigError),
    }
}

pub(crate) const JWS_HEADER: &str = "x-jws-signature";

/// What the signature stage needs: the `signatures:` config, the callers' keys and the replay
/// store for RFC 9421 nonces.
pub(crate) struct Keys<'a> {
    pub config: &'a Signatures,
    pub client_keys: Option<&'a ClientKeys>,
    pub replay: &'a dyn ReplayStore,
}

/// The signature stage's evidence: the verified signature on routes that require one, nothing
/// on routes that do not. Made only by [`verify`], so whatever takes it ran after the signature
/// check.
#[derive(Debug)]
pub(crate) struct Checked(Option<VerifiedSignature>);

impl Checked {
    pub(crate) fn verified(&self) -> Option<&VerifiedSignature> {
        self.0.as_ref()
    }
}

/// Verifies the route's request signature, if it has one, over `body` (the whole body, as
/// received).
pub(crate) async fn verify(
    sig: Option<&RouteSignature>,
    parts: &Parts,
    body: &[u8],
    identity: &ClientIdentity,
    token: Option<&BoundToken>,
    keys: &Keys<'_>,
    now: i64,
) -> Result<Checked, SignatureError> {
    let Some(sig) = sig else {
        return Ok(Checked(None));
    };
    let facts = facts(identity, token);
    let verified = match sig.kind {
        SignatureKind::ObieJws(profile) => obie(profile, parts, body, &facts, keys, now)
            .await
            .map_err(SignatureError::Jws)?,
        SignatureKind::HttpSig { nonce_required } => {
            http_sig(nonce_required, parts, body, &facts, keys, now)
                .await
                .map_err(SignatureError::Http)?
        }
    };
    Ok(Checked(Some(verified)))
}

/// The facts a name template can use: from the certificate of the connection and the bound
/// token, never from a header.
fn facts<'a>(identity: &'a ClientIdentity, token: Option<&'a BoundToken>) -> Facts<'a> {
    let cert = identity.cert();
    Facts {
        client_id: token.and_then(|t| t.token().client_id.as_deref()),
        org_id: cert.and_then(|c| c.organization_identifier.as_deref()),
        cert_cn: cert.and_then(|c| c.common_name.as_deref()),
        cert_o: cert.and_then(|c| c.organization.as_deref()),
        cert_ou: cert.and_then(|c| c.organizational_unit.as_deref()),
    }
}

async fn obie(
    profile: detached::Profile,
    parts: &Parts,
    body: &[u8],
    facts: &Facts<'_>,
    keys: &Keys<'_>,
    now: i64,
) -> Result<VerifiedSignature, JwsSigError> {
    let cfg = keys.config;
    let mut values = parts.headers.get_all(JWS_HEADER).iter();
    let value = match (values.next(), values.next()) {
        (None, _) => return Err(JwsSigError::Missing),
        (Some(_), Some(_)) => return Err(JwsSigError::Multiple),
        (Some(v), None) => v
            .to_str()
            .map_err(|_| JwsSigError::Detached(DetachedError::Malformed))?,
    };
    if value.contains(',') {
        return Err(JwsSigError::Multiple);
    }
    let d = detached::parse(value).map_err(JwsSigError::Detached)?;
    let iss = cfg.jws.iss.render(facts);
    let checked = detached::check_header(
        &d,
        &detached::Expect {
            profile,
            algs: &cfg.jws.algorithms,
            now,
            max_age: cfg.jws.max_age,
            skew: cfg.jws.skew,
            iss: iss.as_deref(),
            trust_anchors: &cfg.jws.trust_anchors,
        },
    )
    .map_err(JwsSigError::Detached)?;
    let client = cfg.client.render(facts).ok_or(JwsSigError::UnknownClient)?;
    let client_keys = keys.client_keys.ok_or(JwsSigError::KeysUnavailable)?;
    let key = client_keys
        .key(&client, checked.kid, Some(checked.alg))
        .await
        .map_err(|e| match e {
            LookupError::UnknownClient => JwsSigError::UnknownClient,
            // A kid that names two keys for the alg identifies no key.
            LookupError::UnknownKey | LookupError::Ambiguous => JwsSigError::UnknownKey,
            LookupError::NoKeyForAlg => JwsSigError::Detached(DetachedError::KeyMismatch),
            LookupError::Unavailable => JwsSigError::KeysUnavailable,
        })?;
    detached::verify(&d, &checked, body, &key).map_err(JwsSigError::Detached)?;
    Ok(VerifiedSignature {
        kind: "obie-jws",
        kid: checked.kid.to_string(),
        alg: checked.alg.name().to_string(),
        hash: sha256_b64url(&d.signature),
        request: None,
    })
}

/// The external scheme and authority the client signed: the configured public base URL, or
/// `https` and the request's Host / `:authority` (RFC 9421 §7.4.3: never the upstream's).
fn external(parts: &Parts, base: Option<&str>) -> Option<(String, String)> {
    if let Some(b) = base {
        let (scheme, authority) = b.split_once("://")?;
        return Some((scheme.to_string(), authority.to_string()));
    }
    let raw = match parts.uri.authority() {
        Some(a) => a.as_str().to_string(),
        None => parts
            .headers
            .get(http::header::HOST)?
            .to_str()
            .ok()?
            .to_string(),
    };
    Some((
        "https".to_string(),
        httpsig::base::normalize_authority("https", &raw)?,
    ))
}

async fn http_sig(
    nonce_required: bool,
    parts: &Parts,
    body: &[u8],
    facts: &Facts<'_>,
    keys: &Keys<'_>,
    now: i64,
) -> Result<VerifiedSignature, HttpSigError> {
    let cfg = keys.config;
    let h = &parts.headers;
    // FAPI 2.0 Message Signing: @method, @target-uri, Authorization; DPoP when present;
    // content-digest when there is a body.
    let mut required: Vec<&str> = vec!["@method", "@target-uri"];
    if h.contains_key(http::header::AUTHORIZATION) {
        required.push("authorization");
    }
    if h.contains_key("dpop") {
        required.push("dpop");
    }
    if !body.is_empty() {
        required.push("content-digest");
    }
    let sel = verify::select(
        h,
        &verify::Policy {
            tag: &cfg.http.tag,
            now,
            window: cfg.http.window,
            skew: cfg.http.skew,
            require_nonce: nonce_required,
            required: &required,
        },
    )?;
    // RFC 9530: recomputed over the body received (a digest header altered to match an altered
    // body still fails the signature, which covers it).
    if !digest::check(h, body)? && !body.is_empty() {
        return Err(HttpSigError::DigestMissing);
    }
    let (scheme, authority) = external(parts, cfg.http.public_base_url.as_deref())
        .ok_or(HttpSigError::Component(httpsig::ComponentError::Missing))?;
    let view = RequestView {
        method: parts.method.as_str(),
        scheme: &scheme,
        authority: &authority,
        path: parts.uri.path(),
        query: parts.uri.query(),
        headers: h,
    };
    let client = cfg
        .client
        .render(facts)
        .ok_or(HttpSigError::UnknownClient)?;
    let client_keys = keys.client_keys.ok_or(HttpSigError::KeysUnavailable)?;
    // RFC 9421 §3.3.7: the `alg` parameter is optional; where it names an algorithm it chooses
    // among keys sharing the keyid, and without it the keyid must name one key.
    let alg = sel.input.alg.as_deref().and_then(httpsig::jose_alg);
    let key = client_keys
        .key(&client, &sel.keyid, alg)
        .await
        .map_err(|e| match e {
            LookupError::UnknownClient => HttpSigError::UnknownClient,
            // A keyid that names two keys for the alg identifies no key.
            LookupError::UnknownKey | LookupError::Ambiguous => HttpSigError::UnknownKey,
            LookupError::NoKeyForAlg => HttpSigError::Alg,
            LookupError::Unavailable => HttpSigError::KeysUnavailable,
        })?;
    verify::verify_with(&sel, Message::Request(&view), &key, &cfg.http.algorithms)?;
    // RFC 9421 §7.2.2: a nonce is used once within the window.
    if let Some(nonce) = &sel.input.nonce {
        let mut k = Vec::with_capacity(client.len() + sel.keyid.len() + nonce.len() + 16);
        for part in ["rfc9421-nonce", &client, &sel.keyid, nonce] {
            k.extend_from_slice(part.as_bytes());
            k.push(0);
        }
        let until = sel
            .created
            .saturating_add(cfg.http.window)
            .saturating_add(cfg.http.skew)
            .max(now + 1);
        match keys
            .replay
            .first_use(portcullis_crypto::jose::sha256(&k), until, now)
            .await
        {
            Ok(true) => {}
            Ok(false) => return Err(HttpSigError::Replay),
            // Full, or a shared store that cannot answer: never admit a possible replay.
            Err(ReplayError::Full | ReplayError::Unavailable) => {
                return Err(HttpSigError::ReplayUnavailable)
            }
        }
    }
    let mut kept = http::HeaderMap::new();
    for name in ["content-digest", "signature", "signature-input"] {
        for v in h.get_all(name) {
            kept.append(name, v.clone());
        }
    }
    Ok(VerifiedSignature {
        kind: "http-sig",
        kid: sel.keyid.clone(),
        alg: sel
            .input
            .alg
            .clone()
            .unwrap_or_else(|| key.alg.name().to_string()),
        hash: sha256_b64url(&sel.signature),
        request: Some(SignedRequest {
            label: sel.input.label.clone(),
            method: parts.method.as_str().to_string(),
            scheme,
            authority,
            path: parts.uri.path().to_string(),
            query: parts.uri.query().map(str::to_string),
            headers: kept,
        }),
    })
}

/// What a verified request signature proves, for the audit record, the idempotency
/// fingerprint and the response signature. Never the signature value or the key.
#[derive(Clone, Debug)]
pub(crate) struct VerifiedSignature {
    /// `obie-jws` or `http-sig`.
    kind: &'static str,
    /// The key id that verified it (from the caller's key set).
    kid: String,
    /// The algorithm: a JOSE name (`PS256`), or the RFC 9421 `alg` parameter when one was given.
    alg: String,
    /// Unpadded base64url SHA-256 of the signature bytes: names this exact signature (for
    /// non-repudiation records) without storing it.
    hash: String,
    /// RFC 9421 only: the request facts a response signature binds to with `req`.
    request: Option<SignedRequest>,
}

/// The parts of a signed request that a response signature covers with `req` (FAPI 2.0
/// Message Signing: `@method`, `@target-uri`, `content-digest` and the request signature).
#[derive(Clone, Debug)]
pub(crate) struct SignedRequest {
    label: String,
    method: String,
    scheme: String,
    authority: String,
    path: String,
    query: Option<String>,
    /// `content-digest`, `signature` and `signature-input` as received.
    headers: http::HeaderMap,
}

impl VerifiedSignature {
    /// `obie-jws` or `http-sig`.
    pub(crate) fn kind(&self) -> &'static str {
        self.kind
    }

    pub(crate) fn kid(&self) -> &str {
        &self.kid
    }

    pub(crate) fn alg(&self) -> &str {
        &self.alg
    }

    /// Unpadded base64url SHA-256 of the signature bytes.
    pub(crate) fn hash(&self) -> &str {
        &self.hash
    }

    /// RFC 9421 only: the request facts a response signature binds to.
    pub(crate) fn request(&self) -> Option<&SignedRequest> {
        self.request.as_ref()
    }
}

impl SignedRequest {
    /// The label of the request's signature (what `req` names in a response signature).
    pub(crate) fn label(&self) -> &str {
        &self.label
    }

    /// Whether the signed request carried `content-digest`.
    pub(crate) fn has_content_digest(&self) -> bool {
        self.headers.contains_key("content-digest")
    }

    pub(crate) fn view(&self) -> portcullis_crypto::httpsig::RequestView<'_> {
        portcullis_crypto::httpsig::RequestView {
            method: &self.method,
            scheme: &self.scheme,
            authority: &self.authority,
            path: &self.path,
            query: self.query.as_deref(),
            headers: &self.headers,
        }
    }
}
