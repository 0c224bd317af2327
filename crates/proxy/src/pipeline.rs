//! The ordered inspection chain: each stage takes the evidence of the stages before it.
//!
//! Order, and why:
//!
//! 1. **HTTP framing, limits and header hygiene** ([`http`]) — cheapest, and nothing else may
//!    read a request whose framing or size is in doubt (smuggling, 431/414).
//! 2. **FAPI headers** ([`fapi`]) — `x-fapi-customer-ip-address` must be an IP literal; the
//!    interaction id is settled by the outer handler before any stage so every refusal carries it.
//! 3. **Path check and route match** ([`route`]) — one canonical path, refused if ambiguous, then a
//!    radix-tree lookup. Unknown path: 404; known path, other method: 405. Everything after this
//!    works on the matched route, and the path matched is the path forwarded. A declared body
//!    over the route's limit is refused here (413), before any crypto.
//! 4. **Pre-authentication rate limit per peer** ([`ratelimit`]) — bounds crypto CPU before any
//!    signature is checked, so it sits before every stage that verifies a signature.
//! 5. **Identity** ([`identity`]) — the verified mTLS client certificate, required unless the
//!    route says otherwise. Every later stage keys on this identity, never on a header.
//! 6. **Client rate limit** ([`ratelimit`]) — the route class's quota, keyed by the identity
//!    from step 5 (the certificate thumbprint; without a certificate, the verified token's
//!    client id after step 8, else the peer address).
//! 7. **Access token** ([`token`]) — on routes with `auth`: the one credential, verified for
//!    the route's issuer (signature once per token while cached; time claims every request).
//! 8. **Sender constraint** ([`binding`]) — needs the token and the identity (RFC 8705
//!    `cnf.x5t#S256`) or a DPoP proof (RFC 9449); only after it is a token evidence of anything.
//! 9. **Request signature** ([`signature`]) — OBIE `x-jws-signature` or RFC 9421, per route;
//!    needs the caller's identity and token (to name it and find its keys) and the buffered
//!    body; before authorization, so nothing whose bytes are unproven is ever authorized.
//! 10. **Authorization** ([`authz`]) — scopes, consent and object rules; needs the bound token,
//!     so it runs only on proven callers, and the buffered body when a rule reads it.
//! 11. **Idempotency** ([`idempotency`]) — on routes that ask for it: the client-scoped key and
//!     the fingerprint of the buffered body; last, so a refused request never reserves a key.
//!     It answers from the store (a replay) or reserves the key, which the caller completes
//!     with the upstream's answer.

pub mod authz;
pub mod binding;
pub mod fapi;
pub mod http;
pub mod idempotency;
pub mod identity;
pub mod ratelimit;
pub mod route;
pub mod signature;
pub mod token;

use ::http::request::Parts;

use crate::conn::ConnInfo;
use crate::rejection::Rejection;
use crate::runtime::{Runtime, Shared};
use portcullis_audit::RequestRecord;
use portcullis_policy::RouteMatch;

/// The evidence a request carries once every stage has passed.
#[derive(Debug)]
pub struct Inspected {
    pub route: RouteMatch,
    pub identity: identity::ClientIdentity,
    /// The bound token, on routes that require one.
    pub token: Option<binding::BoundToken>,
    /// The DPoP nonce to hand out with the response, on routes that require nonces.
    pub dpop_nonce: Option<String>,
    /// The authenticated client as a rate-limit and idempotency scope (issue #6).
    pub client_key: String,
}

/// Runs the chain in order; the first refusal ends it.
pub async fn inspect(
    parts: &Parts,
    conn: &ConnInfo,
    rt: &Runtime,
    shared: &Shared,
    record: &mut RequestRecord,
) -> Result<Inspected, Rejection> {
    let config = &rt.config;
    http::check(
        parts,
        &config.listener.limits,
        &config.listener.server_names,
    )?;
    fapi::check_customer_ip(&parts.headers)?;
    let route = route::resolve(parts, &config.policies)?;
    record.route_id = Some(route.route.id.clone());
    // A declared body over the route's limit is refused before any signature is checked.
    if http::declared_length(&parts.headers).is_some_and(|n| n > route.route.body_limit) {
        return Err(http::HttpError::BodyTooLarge.into());
    }
    ratelimit::check_peer(conn, rt, shared, record)?;
    let identity = identity::identify(
        conn,
        &route.route,
        &config.listener.tls.revoked,
        shared.clock.now(),
    )?;
    // 6. With a certificate the client is known now; otherwise after the token (its client id).
    if identity.cert.is_some() {
        let key = ratelimit::client_key(&identity, None, conn);
        ratelimit::check_client(&route.route, &key, rt, shared, record).await?;
    }
    let token = match &route.route.auth {
        None => None,
        Some(auth) => Some(authenticate(parts, &identity, auth, rt, shared, record).await?),
    };
    let client_key = ratelimit::client_key(&identity, token.as_ref(), conn);
    if identity.cert.is_none() {
        ratelimit::check_client(&route.route, &client_key, rt, shared, record).await?;
    }
    let dpop_nonce = route
        .route
        .auth
        .as_ref()
        .filter(|a| a.dpop_nonce)
        .map(|_| shared.nonces.current(shared.clock.now()));
    Ok(Inspected {
        route,
        identity,
        token,
        dpop_nonce,
        client_key,
    })
}

/// Stages 7 and 8: the access token and its sender constraint.
async fn authenticate(
    parts: &Parts,
    identity: &identity::ClientIdentity,
    auth: &portcullis_policy::RouteAuth,
    rt: &Runtime,
    shared: &Shared,
    record: &mut RequestRecord,
) -> Result<binding::BoundToken, Rejection> {
    let cred = token::extract(parts).map_err(|e| Rejection::Token(e, token::Scheme::Bearer))?;
    let scheme = cred.scheme;
    let Some(issuer) = rt.config.auth.issuers.get(&auth.issuer) else {
        // The config loader refuses routes naming unknown issuers; fail closed regardless.
        return Err(Rejection::Token(token::TokenError::KeysUnavailable, scheme));
    };
    let keys = rt.keys.get(&auth.issuer).map(|k| k.as_ref());
    let introspector = rt.introspectors.get(&auth.issuer).map(|i| i.as_ref());
    let now = shared.clock.now();
    let verified = token::verify(cred.token, issuer, keys, introspector, &rt.tokens, now)
        .await
        .map_err(|e| Rejection::Token(e, scheme))?;
    record.client_id = verified
        .client_id
        .as_deref()
        .map(portcullis_base::text::bounded);
    record.subject = verified.sub.as_deref().map(portcullis_base::text::bounded);
    record.token_jti = verified.jti.as_deref().map(portcullis_base::text::bounded);
    record.token_hash = Some(verified.hash.clone());
    record.scopes = Some(
        verified
            .scopes
            .iter()
            .map(|s| portcullis_base::text::bounded(s))
            .collect(),
    );
    let dpop = &rt.config.auth.dpop;
    let htu = verified
        .cnf_jkt
        .as_ref()
        .and_then(|_| http::external_htu(parts, dpop.public_base_url.as_deref()));
    let accepts = |n: &str| shared.nonces.is_valid(n, now);
    let bound = binding::bind(
        verified,
        &binding::Presented {
            parts,
            scheme,
            raw_token: cred.token,
            htu: htu.as_deref(),
            client_cert: identity.cert.as_deref(),
            nonce: auth
                .dpop_nonce
                .then_some(&accepts as &(dyn Fn(&str) -> bool + Sync)),
        },
        auth.profile,
        dpop,
        shared.replay.as_ref(),
        now,
    )
    .await;
    match bound {
        // RFC 9449 §9: answer with a fresh nonce the client must use.
        Err(binding::BindingError::Proof(
            portcullis_crypto::jose::dpop::DpopError::NonceRequired
            | portcullis_crypto::jose::dpop::DpopError::NonceStale,
        )) => Err(Rejection::UseDpopNonce(shared.nonces.current(now))),
        other => Ok(other?),
    }
}

/// Stage 9: the route's request signature over the buffered body (the whole body, as
/// received); its evidence goes to the audit record and back to the caller (response signing,
/// idempotency). Runs before [`authorize`].
pub async fn verify_signature(
    inspected: &Inspected,
    parts: &Parts,
    body: Option<&[u8]>,
    rt: &Runtime,
    shared: &Shared,
    record: &mut RequestRecord,
) -> Result<Option<crate::signature::VerifiedSignature>, Rejection> {
    let Some(sig) = &inspected.route.route.signature else {
        return Ok(None);
    };
    let v = signature::verify(
        sig,
        parts,
        body.unwrap_or_default(),
        &inspected.identity,
        inspected.token.as_ref(),
        rt,
        shared,
    )
    .await
    .map_err(Rejection::Signature)?;
    record.signature = Some(portcullis_audit::SignatureRecord {
        kind: v.kind,
        kid: portcullis_base::text::bounded(&v.kid),
        alg: portcullis_base::text::bounded(&v.alg),
        hash: v.hash.clone(),
    });
    Ok(Some(v))
}

/// Stages 9 to 11, which may read the request body (buffered by the caller when
/// [`needs_body`] says so).
pub async fn authorize(
    inspected: &Inspected,
    parts: &Parts,
    body: Option<&[u8]>,
    rt: &Runtime,
    shared: &Shared,
    record: &mut RequestRecord,
) -> Result<authz::Permit, Rejection> {
    // 9. Request signature: [`verify_signature`], which the caller runs just before.
    // 10. Authorization.
    let permit = authz::authorize(inspected, parts, body, rt, shared)
        .await
        .map_err(Rejection::Authz)?;
    record.consent_id = permit
        .consent_id
        .as_deref()
        .map(portcullis_base::text::bounded);
    record.scopes_required = scopes_used(&inspected.route.route.authz, inspected.token.as_ref());
    if let Some(d) = &permit.shadow_denial {
        let r = Rejection::Authz(d.clone());
        record.stage = Some("authz");
        record.reason = Some(r.audit_reason());
        record.rule_id = Some(d.rule.clone());
    }
    // 11. Idempotency: [`idempotency::reserve`], which the caller runs just after (it returns
    // a stored response or a reservation the caller completes with the upstream's answer).
    Ok(permit)
}

/// The scopes this request used: every `all_of` scope, and the `any_of` scopes the token holds
/// (what `audit report` counts as used). `None` on routes that require no scope.
fn scopes_used(
    authz: &portcullis_policy::rules::Authz,
    token: Option<&binding::BoundToken>,
) -> Option<Vec<String>> {
    if authz.all_of.is_empty() && authz.any_of.is_empty() {
        return None;
    }
    let held = token.map_or(&[][..], |t| t.token.scopes.as_slice());
    let used = authz
        .all_of
        .iter()
        .chain(authz.any_of.iter().filter(|s| held.contains(s)))
        .map(|s| portcullis_base::text::bounded(s))
        .collect();
    Some(used)
}

/// Whether a stage after binding reads the request body, so it must be buffered (once, up to
/// the route limit) before those stages run.
pub fn needs_body(route: &portcullis_policy::Route) -> bool {
    route.authz.reads_body()
        || route.signature.is_some()
        || route.idempotency != portcullis_policy::IdempotencyMode::None
}
