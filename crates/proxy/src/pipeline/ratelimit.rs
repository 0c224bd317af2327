//! Stages 4 and 6: the pre-authentication limit per peer address and the per-client limit of
//! the route's class (see [`portcullis_state::ratelimit`]).
//!
//! The client key is the authenticated identity only: the verified certificate's thumbprint,
//! else (routes with an optional certificate) the verified token's `client_id`, else the peer
//! address. Headers such as `X-Forwarded-For` never take part, and tokens do not either, so a
//! client rotating tokens stays in one bucket.

use std::net::IpAddr;

use crate::pipeline::binding::BoundToken;
use crate::pipeline::identity::ClientIdentity;
use portcullis_audit::RateLimitRecord;
use portcullis_policy::Route;
use portcullis_state::limits::RateLimits;
use portcullis_state::ratelimit::{Decision, QuotaSpec};

portcullis_base::variants! {
    /// Which limit refused.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Scope {
        /// The pre-authentication limit of the peer address.
        Peer,
        /// The route class's limit of the authenticated client.
        Client,
        /// The fleet's limit could not be checked (Redis is unavailable) and the outage
        /// behaviour is to refuse.
        Unavailable,
    }
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Peer => "peer",
            Scope::Client => "client",
            Scope::Unavailable => "unavailable",
        }
    }
}

/// A request refused by a rate limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limited {
    pub scope: Scope,
    /// `RateLimit-Policy` value.
    pub policy: String,
    /// Quota policy name (for the `RateLimit` header).
    pub name: String,
    pub retry_after_s: u64,
}

impl portcullis_base::variants::Variants for Limited {
    fn variants() -> Vec<Self> {
        Scope::variants()
            .into_iter()
            .map(|scope| Limited {
                scope,
                policy: String::new(),
                name: String::new(),
                retry_after_s: 1,
            })
            .collect()
    }
}

/// What a limit decided: the facts for the audit record, and the refusal, if the quota refused
/// (enforced, or recorded only on a shadow quota).
#[derive(Debug)]
pub(crate) struct Applied {
    facts: RateLimitRecord,
    refused: Option<Limited>,
    shadow: bool,
}

impl Applied {
    pub(crate) fn facts(&self) -> &RateLimitRecord {
        &self.facts
    }

    /// The refusal of a shadow quota: recorded, not enforced.
    pub(crate) fn shadow(&self) -> Option<&Limited> {
        self.refused.as_ref().filter(|_| self.shadow)
    }

    /// The refusal to enforce.
    pub(crate) fn enforced(self) -> Result<(), Limited> {
        match self.refused {
            Some(l) if !self.shadow => Err(l),
            _ => Ok(()),
        }
    }
}

fn apply(scope: Scope, spec: &QuotaSpec, d: Decision) -> Applied {
    let facts = RateLimitRecord {
        scope: scope.as_str(),
        limit: u64::from(spec.burst),
        remaining: d.remaining,
        reset_s: d.reset_s,
        limited: !d.allowed,
    };
    let refused = (!d.allowed).then(|| Limited {
        scope,
        policy: spec.policy_header(),
        name: spec.name.clone(),
        retry_after_s: d.reset_s,
    });
    Applied {
        facts,
        refused,
        shadow: spec.shadow,
    }
}

/// The pre-authentication limit per peer IP address.
pub(crate) fn check_peer(peer: IpAddr, limits: &RateLimits) -> Option<Applied> {
    let l = limits.peer.as_ref()?;
    Some(apply(Scope::Peer, &l.spec, l.check(&peer)))
}

/// The client key: certificate thumbprint, else the token's client id, else the peer address.
pub(crate) fn client_key(
    identity: &ClientIdentity,
    token: Option<&BoundToken>,
    peer: IpAddr,
) -> String {
    if let Some(c) = identity.cert() {
        return format!("x5t:{}", c.thumbprint);
    }
    if let Some(cid) = token.and_then(|t| t.token().client_id.as_deref()) {
        return format!("cid:{cid}");
    }
    format!("ip:{peer}")
}

/// The route class's limit for `key` — fleet-wide when the state backend is Redis
/// (the local limiter then counts what the fleet admitted here, and decides alone while Redis
/// is unavailable, or the request is refused with 503 `rate_limit.unavailable`, per
/// `state.on_outage.rate_limits`). The `Err` is that refusal; a quota's own refusal is in the
/// [`Applied`].
pub(crate) async fn check_client(
    route: &Route,
    key: &str,
    limits: &RateLimits,
) -> Result<Option<Applied>, Limited> {
    let Some(class) = &route.rate_limit else {
        return Ok(None);
    };
    // The config loader refuses unknown classes; a missing limiter means none applies.
    let Some(l) = limits.classes.get(class) else {
        return Ok(None);
    };
    let Some(fleet) = &limits.fleet else {
        let d = l.check(&key.to_string());
        return Ok(Some(apply(Scope::Client, &l.spec, d)));
    };
    use portcullis_state::settings::OnOutage;
    let d = match fleet.check(&l.spec, key).await {
        Ok(d) => {
            if d.allowed {
                // Keeps this instance's limiter warm for an outage.
                let _ = l.check(&key.to_string());
            }
            d
        }
        Err(_) => {
            use portcullis_state::redis::Feature;
            fleet
                .state()
                .count_outage(Feature::RateLimit, fleet.on_outage);
            if fleet.on_outage == OnOutage::Refuse {
                return Err(Limited {
                    scope: Scope::Unavailable,
                    policy: l.spec.policy_header(),
                    name: l.spec.name.clone(),
                    retry_after_s: 1,
                });
            }
            l.check(&key.to_string())
        }
    };
    Ok(Some(apply(Scope::Client, &l.spec, d)))
}
