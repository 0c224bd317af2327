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
//!    works on the matched route, and the path matched is the path forwarded.
//! 4. *Pre-authentication rate limit per peer* — issue #6; bounds crypto CPU before any signature
//!    is checked, so it sits before every stage that verifies a signature.
//! 5. **Identity** ([`identity`]) — the verified mTLS client certificate, required unless the
//!    route says otherwise. Every later stage keys on this identity, never on a header.
//! 6. *Client rate limit* — issue #6; keyed by the identity from step 5.
//! 7. *Access token* — issue #3; JWT/introspection, needs the route (audience, issuer).
//! 8. *Sender constraint (binding)* — issue #3; needs the token and the identity (RFC 8705
//!    `cnf.x5t#S256`) or the DPoP proof.
//! 9. *Request signature* — issue #4; needs the caller's identity to pick its keys.
//! 10. *Authorization* — issue #5; needs the bound token, so it runs only on proven callers.
//! 11. *Idempotency* — issue #6; last, so a refused request never reserves a key.
//!
//! Steps in italics are not built yet: a route cannot ask for them, because the policy format
//! does not have their fields until their issue lands. No stage here pretends to check them.

pub mod fapi;
pub mod http;
pub mod identity;
pub mod route;

use ::http::request::Parts;

use crate::audit::RequestRecord;
use crate::config::Config;
use crate::conn::ConnInfo;
use crate::policy::RouteMatch;
use crate::rejection::Rejection;

/// The evidence a request carries once every stage has passed.
#[derive(Debug)]
pub struct Inspected {
    pub route: RouteMatch,
    pub identity: identity::ClientIdentity,
}

/// Runs the chain in order; the first refusal ends it.
pub fn inspect(
    parts: &Parts,
    conn: &ConnInfo,
    config: &Config,
    record: &mut RequestRecord,
) -> Result<Inspected, Rejection> {
    http::check(
        parts,
        &config.listener.limits,
        &config.listener.server_names,
    )?;
    fapi::check_customer_ip(&parts.headers)?;
    let route = route::resolve(parts, &config.policies)?;
    record.route_id = Some(route.route.id.clone());
    let identity = identity::identify(conn, &route.route)?;
    Ok(Inspected { route, identity })
}
