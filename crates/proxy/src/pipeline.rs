//! The ordered inspection chain, run top to bottom by [`run`]: each stage takes only its own
//! context and the evidence of the stages before it, and returns its own evidence. Evidence
//! types have private fields and are made only by their stage, so the compiler keeps the order:
//! authorization takes the signature stage's [`signature::Checked`], idempotency takes the
//! authorization's [`authz::Permit`]. What the stages established is kept in a [`Trail`], from
//! which the audit record is composed in one place (`crate::record`); no stage writes a record.
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
//!    over the route's limit is refused right after the match (413, [`body`]), before any
//!    crypto, and so are media types the route does not take or make (415 for `Content-Type`,
//!    406 for `Accept`, [`http::check_media`]).
//! 4. **Pre-authentication rate limit per peer** ([`ratelimit`]) — bounds crypto CPU before any
//!    signature is checked, so it sits before every stage that verifies a signature. Then the
//!    **quarantine** check ([`quarantine`]) by peer address, repeated by certificate thumbprint
//!    after step 5 and by client id after step 8 (without a certificate): a client a detector
//!    quarantined costs no crypto, and is refused as soon as it is known.
//! 5. **Identity** ([`identity`]) — the verified mTLS client certificate, required unless the
//!    route says otherwise; not expired, not revoked by the CRLs loaded now, and, on listeners
//!    with OCSP, not revoked by its responder, and on listeners with `leaf_crls`, not revoked by
//!    the CRL its distribution point serves (asked here, not at the handshake, which cannot
//!    wait on the network; the request waits for the answer, cached until its `nextUpdate`).
//!    Every later stage keys on this identity, never on a header.
//! 6. **Client rate limit** ([`ratelimit`]) — the route class's quota, keyed by the identity
//!    from step 5 (the certificate thumbprint; without a certificate, the verified token's
//!    client id after step 8, else the peer address).
//! 7. **Access token** ([`token`]) — on routes with `auth`: the one credential, verified for
//!    the route's issuer (signature once per token while cached; time claims every request).
//! 8. **Sender constraint** ([`binding`]) — needs the token and the identity (RFC 8705
//!    `cnf.x5t#S256`) or a DPoP proof (RFC 9449); only after it is a token evidence of anything.
//! 9. **Body admission** ([`body`]) — buffered once, up to the route's limit, only when a later
//!    stage reads it (signature, a body rule, idempotency); otherwise streamed.
//! 10. **Request signature** ([`signature`]) — OBIE `x-jws-signature` or RFC 9421, per route;
//!     needs the caller's identity and token (to name it and find its keys) and the buffered
//!     body; before authorization, so nothing whose bytes are unproven is ever authorized.
//! 11. **Request contract** ([`contract`]) — on routes with `contract`: path, query and header
//!     parameters and the buffered JSON body against the OpenAPI operation's schemas, compiled
//!     at load. After every authentication stage, so an unauthenticated caller learns nothing
//!     of the contract; before authorization, so no rule ever reads a value the API does not
//!     declare; on the bytes that are forwarded.
//! 12. **Authorization** ([`authz`]) — scopes, consent and object rules; needs the bound token,
//!     so it runs only on proven callers, and the buffered body when a rule reads it.
//! 13. **Idempotency** ([`idempotency`]) — on routes that ask for it: the client-scoped key and
//!     the fingerprint of the buffered body; last, so a refused request never reserves a key.
//!     It answers from the store (a replay) or reserves the key, which the caller completes
//!     with the upstream's answer.
//!
//! A refusal from any stage is a [`Rejection`]; [`rejection`] is the one place it becomes a
//! response.

pub(crate) mod authz;
pub(crate) mod binding;
pub(crate) mod body;
pub(crate) mod contract;
// `fapi`, `http`, `route` and `token` are public for the `internals` feature.
#[cfg_attr(not(feature = "internals"), allow(unreachable_pub))]
pub mod fapi;
#[cfg_attr(not(feature = "internals"), allow(unreachable_pub))]
pub mod http;
pub(crate) mod idempotency;
pub(crate) mod identity;
pub(crate) mod quarantine;
pub(crate) mod ratelimit;
pub(crate) mod rejection;
#[cfg_attr(not(feature = "internals"), allow(unreachable_pub))]
pub mod route;
pub(crate) mod signature;
#[cfg_attr(not(feature = "internals"), allow(unreachable_pub))]
pub mod token;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ::http::request::Parts;

use hyper::body::Incoming;

use crate::config::Config;
use portcullis_audit::RateLimitRecord;
use portcullis_base::body::ProxyBody;
use portcullis_base::clock::Clock;
use portcullis_crypto::jose::dpop::DpopError;
use portcullis_crypto::pki::ClientCert;
use portcullis_detect::Subject;
use portcullis_policy::RouteMatch;
use portcullis_sources::clientkeys::ClientKeys;
use portcullis_sources::consent::ConsentSource;
use portcullis_sources::introspect::Introspector;
use portcullis_sources::keys::KeySource;
use portcullis_state::idempotency::IdempotencyStore;
use portcullis_state::limits::RateLimits;
use portcullis_state::nonce::NonceIssuer;
use portcullis_state::replay::ReplayStore;
pub(crate) use rejection::Rejection;

/// What the stages need from the running proxy, for one request: one config snapshot, start to
/// end, and the sources and stores that go with it.
pub(crate) struct Context<'a> {
    pub config: &'a Config,
    /// The listener the connection came in on (its limits).
    pub listener: &'a crate::config::Listener,
    /// The host the connection's handshake chose: its names and its routes.
    pub host: &'a crate::config::Host,
    /// Key source per issuer name.
    pub keys: &'a HashMap<String, Arc<KeySource>>,
    /// Introspection client per issuer that has one.
    pub introspectors: &'a HashMap<String, Arc<Introspector>>,
    pub tokens: &'a token::TokenCache,
    pub consent: Option<&'a ConsentSource>,
    pub client_keys: Option<&'a ClientKeys>,
    pub rate_limits: &'a RateLimits,
    pub replay: &'a dyn ReplayStore,
    pub idempotency: &'a Arc<dyn IdempotencyStore>,
    pub nonces: &'a NonceIssuer,
    pub clock: &'a dyn Clock,
    /// What the host's CRLs (files and URLs) revoke now.
    pub revoked: Arc<portcullis_crypto::pki::Revoked>,
    /// OCSP for client certificates, when the host has it.
    pub ocsp: Option<&'a portcullis_sources::ocsp::OcspChecker>,
    /// The CRLs client certificates name, when the listener follows them.
    pub leaf_crls: Option<&'a portcullis_sources::leafcrl::LeafCrlChecker>,
    /// The detectors' quarantines (their counting happens when the request is recorded).
    pub detect: &'a portcullis_detect::Detector,
}

/// The connection facts the stages read.
pub(crate) struct Peer<'a> {
    pub ip: IpAddr,
    /// The verified client certificate of the connection.
    pub cert: Option<&'a Arc<ClientCert>>,
}

/// What the request has established so far, stage by stage, and what became of it: the audit
/// record is composed from this and the outcome (`crate::record`).
#[derive(Debug, Default)]
pub(crate) struct Trail {
    pub(crate) route_id: Option<String>,
    /// The matched route: how its refusals are answered (error body, response signature).
    pub(crate) route: Option<Arc<portcullis_policy::Route>>,
    /// The last rate limit applied.
    pub(crate) rate_limit: Option<RateLimitRecord>,
    pub(crate) token: Option<Arc<token::AccessToken>>,
    pub(crate) signature: Option<signature::VerifiedSignature>,
    pub(crate) consent_id: Option<String>,
    pub(crate) scopes_required: Option<Vec<String>>,
    /// A refusal recorded and not enforced (a shadow quota or a shadow policy rule), with the
    /// rule that made it.
    pub(crate) shadow: Option<(Rejection, String)>,
    pub(crate) idempotency: Option<&'static str>,
    /// The contract check of a route that has one (see [`contract::check`]).
    pub(crate) contract: Option<contract::Checked>,
    /// The check of the upstream's answer against the contract's responses (see
    /// [`contract::check_answer`]).
    pub(crate) contract_answer: Option<contract::Answered>,
    /// The OCSP check of the client certificate (see [`identity::check_ocsp`]).
    pub(crate) revocation: Option<&'static str>,
    /// The check of the CRL the client certificate names (see [`identity::check_leaf_crl`]).
    pub(crate) revocation_crl: Option<&'static str>,
    /// The upstream's status and how long it took to answer.
    pub(crate) upstream: Option<(u16, Duration)>,
    /// The tries made upstream: how many, on which endpoints.
    pub(crate) tries: Option<crate::upstream::Tries>,
    /// The request was handed to the upstream.
    pub(crate) forwarded: bool,
    /// The client left before the answer was delivered.
    pub(crate) client_gone: bool,
}

impl Trail {
    /// Keeps what a rate limit decided; its refusal, unless the quota is a shadow one.
    fn rate_limited(&mut self, applied: Option<ratelimit::Applied>) -> Result<(), Rejection> {
        let Some(a) = applied else {
            return Ok(());
        };
        if let Some(l) = a.shadow() {
            self.shadow = Some((
                Rejection::RateLimited(l.clone()),
                format!("rate_limit:{}", l.name),
            ));
        }
        self.rate_limit = Some(a.facts().clone());
        a.enforced().map_err(Rejection::RateLimited)
    }
}

/// A request every stage let through: its evidence, the body to forward and what the
/// idempotency stage decided.
pub(crate) struct Admitted {
    pub route: RouteMatch,
    pub identity: identity::ClientIdentity,
    /// The bound token, on routes that require one.
    pub token: Option<binding::BoundToken>,
    pub signature: signature::Checked,
    pub permit: authz::Permit,
    pub idempotency: idempotency::Outcome,
    /// The DPoP nonce to hand out with the response, on routes that require nonces.
    pub dpop_nonce: Option<String>,
    pub body: ProxyBody,
}

/// Runs the chain in order; the first refusal ends it. The body of a request refused before
/// its body was admitted is discarded here.
pub(crate) async fn run(
    parts: &Parts,
    body: Incoming,
    peer: &Peer<'_>,
    cx: &Context<'_>,
    trail: &mut Trail,
) -> Result<Admitted, Rejection> {
    let config = cx.config;
    // Whether body bytes may follow: a declared length above zero, chunked framing, or (HTTP/2,
    // no length) a stream the client did not end with its headers.
    let has_body = match http::declared_length(&parts.headers) {
        Some(n) => n > 0,
        None => {
            parts
                .headers
                .contains_key(::http::header::TRANSFER_ENCODING)
                || (parts.version == ::http::Version::HTTP_2
                    && !hyper::body::Body::is_end_stream(&body))
        }
    };
    let head = async {
        http::check(parts, &cx.listener.limits, &cx.host.names)?;
        fapi::check_customer_ip(&parts.headers)?;
        let route = route::resolve(parts, &cx.host.policies)?;
        trail.route_id = Some(route.route.id.clone());
        trail.route = Some(Arc::clone(&route.route));
        let declared = http::declared_length(&parts.headers);
        if declared.is_some_and(|n| n > route.route.body_limit) {
            return Err(http::HttpError::BodyTooLarge.into());
        }
        // Before any crypto or the upstream: a body the route cannot take, or an answer the
        // client cannot take, is refused now. A route that takes no body asks no Content-Type:
        // its body limit refuses any body (413), and an HTTP/2 client that ends an empty
        // request with a separate empty DATA frame is not refused for a type it need not send.
        http::check_media(
            &parts.headers,
            has_body && route.route.body_limit > 0,
            &route.route.accepts,
            &route.route.produces,
        )?;
        trail.rate_limited(ratelimit::check_peer(peer.ip, cx.rate_limits))?;
        quarantine::check(cx.detect, Subject::Peer(peer.ip), cx.clock.now())?;
        let identity = identity::identify(peer.cert, &route.route, &cx.revoked, cx.clock.now())?;
        identity::check_ocsp(&identity, cx.ocsp, cx.clock.now(), &mut trail.revocation).await?;
        identity::check_leaf_crl(
            &identity,
            cx.leaf_crls,
            &cx.revoked,
            cx.clock.now(),
            &mut trail.revocation_crl,
        )
        .await?;
        if let Some(c) = identity.cert() {
            quarantine::check(cx.detect, Subject::Cert(&c.thumbprint), cx.clock.now())?;
        }
        // With a certificate the client is known now; otherwise after the token (its client id).
        if identity.cert().is_some() {
            let key = ratelimit::client_key(&identity, None, peer.ip);
            let applied = ratelimit::check_client(&route.route, &key, cx.rate_limits).await?;
            trail.rate_limited(applied)?;
        }
        let token = match &route.route.auth {
            None => None,
            Some(auth) => Some(authenticate(parts, &identity, auth, cx, trail).await?),
        };
        let client_key = ratelimit::client_key(&identity, token.as_ref(), peer.ip);
        if identity.cert().is_none() {
            let client_id = token.as_ref().and_then(|t| t.token().client_id.as_deref());
            if let Some(id) = client_id {
                quarantine::check(cx.detect, Subject::Client(id), cx.clock.now())?;
            }
            let applied =
                ratelimit::check_client(&route.route, &client_key, cx.rate_limits).await?;
            trail.rate_limited(applied)?;
        }
        Ok((route, declared, identity, token, client_key))
    };
    let (route, declared, identity, token, client_key) = match head.await {
        Ok(h) => h,
        Err(e) => {
            body::discard(body).await;
            return Err(e);
        }
    };
    let timeout = cx.listener.limits.request_timeout;
    let admitted = body::admit(body, &route.route, declared, parts.version, timeout)
        .await
        .map_err(|e| {
            trail.client_gone |= e.client_gone;
            e.error
        })?;
    let buffered = admitted.buffered.as_deref();
    let now = cx.clock.now();
    let signature = signature::verify(
        route.route.signature.as_ref(),
        parts,
        buffered.unwrap_or_default(),
        &identity,
        token.as_ref(),
        &signature::Keys {
            config: &config.signatures,
            client_keys: cx.client_keys,
            replay: cx.replay,
        },
        now,
    )
    .await
    .map_err(Rejection::Signature)?;
    trail.signature = signature.verified().cloned();
    if let Some(c) = &route.route.contract {
        let checked = contract::check(c, &route, parts, buffered);
        let refusal = checked.refusal();
        let shadow = checked.shadow_refusal();
        trail.contract = Some(checked);
        if let Some(r) = refusal {
            return Err(r);
        }
        if let Some(r) = shadow {
            trail.shadow = Some((r, format!("contract:{}", c.operation)));
        }
    }
    let scheme = token.as_ref().map(binding::BoundToken::scheme);
    let mut permit = authz::authorize(
        &route,
        parts,
        buffered,
        token.as_ref(),
        &signature,
        cx.consent,
        cx.clock.now(),
    )
    .await
    .map_err(|d| Rejection::Authz(d, scheme))?;
    trail.consent_id = permit.consent_id().map(portcullis_base::text::bounded);
    trail.scopes_required = permit.take_scopes_used();
    if let Some(d) = permit.shadow_denial() {
        trail.shadow = Some((Rejection::Authz(d.clone(), scheme), d.rule.clone()));
    }
    let (idempotency, label) = idempotency::reserve(
        &route.route,
        parts,
        buffered,
        || idempotency::scope(&identity, token.as_ref(), &client_key),
        &permit,
        &idempotency::Store {
            store: cx.idempotency,
            config: &config.idempotency,
        },
        cx.clock.now(),
    )
    .await
    .map_err(|(e, dialect)| {
        trail.idempotency = e.label();
        Rejection::Idempotency(e, dialect)
    })?;
    trail.idempotency = label;
    let dpop_nonce = route
        .route
        .auth
        .as_ref()
        .filter(|a| a.dpop_nonce)
        .map(|_| cx.nonces.current(cx.clock.now()));
    Ok(Admitted {
        route,
        identity,
        token,
        signature,
        permit,
        idempotency,
        dpop_nonce,
        body: admitted.forward,
    })
}

/// The access token and its sender constraint.
async fn authenticate(
    parts: &Parts,
    identity: &identity::ClientIdentity,
    auth: &portcullis_policy::RouteAuth,
    cx: &Context<'_>,
    trail: &mut Trail,
) -> Result<binding::BoundToken, Rejection> {
    let cred = token::extract(parts).map_err(|e| Rejection::Token(e, token::Scheme::Bearer))?;
    let scheme = cred.scheme;
    let Some(issuer) = cx.config.auth.issuers.get(&auth.issuer) else {
        // The config loader refuses routes naming unknown issuers; fail closed regardless.
        return Err(Rejection::Token(token::TokenError::KeysUnavailable, scheme));
    };
    let keys = cx.keys.get(&auth.issuer).map(|k| k.as_ref());
    let introspector = cx.introspectors.get(&auth.issuer).map(|i| i.as_ref());
    let now = cx.clock.now();
    let verified = token::verify(cred.token, issuer, keys, introspector, cx.tokens, now)
        .await
        .map_err(|e| Rejection::Token(e, scheme))?;
    trail.token = Some(Arc::clone(&verified));
    if auth.profile == portcullis_policy::Profile::Fapi1Advanced && !verified.fapi1_algorithm() {
        return Err(Rejection::Token(token::TokenError::AlgNotAllowed, scheme));
    }
    let dpop = &cx.config.auth.dpop;
    let htu = verified
        .cnf_jkt
        .as_ref()
        .and_then(|_| http::external_htu(parts, dpop.public_base_url.as_deref()));
    let accepts = |n: &str| cx.nonces.is_valid(n, now);
    let bound = binding::bind(
        verified,
        &binding::Presented {
            parts,
            scheme,
            raw_token: cred.token,
            htu: htu.as_deref(),
            client_cert: identity.cert(),
            nonce: auth
                .dpop_nonce
                .then_some(&accepts as &(dyn Fn(&str) -> bool + Sync)),
        },
        auth.profile,
        dpop,
        cx.replay,
        now,
    )
    .await;
    match bound {
        // RFC 9449 §9: answer with a fresh nonce the client must use.
        Err(binding::BindingError::Proof(DpopError::NonceRequired | DpopError::NonceStale)) => {
            Err(Rejection::UseDpopNonce(cx.nonces.current(now)))
        }
        other => Ok(other?),
    }
}
