//! Stages 4 and 6: the pre-authentication limit per peer address and the per-client limit of
//! the route's class (see [`portcullis_state::ratelimit`]).
//!
//! The client key is the authenticated identity only: the verified certificate's thumbprint,
//! else (routes with an optional certificate) the verified token's `client_id`, else the peer
//! address. Headers such as `X-Forwarded-For` never take part, and tokens do not either, so a
//! client rotating tokens stays in one bucket.

use crate::conn::ConnInfo;
use crate::pipeline::binding::BoundToken;
use crate::pipeline::identity::ClientIdentity;
use crate::rejection::Rejection;
use crate::runtime::{Runtime, Shared};
use portcullis_audit::{RateLimitRecord, RequestRecord};
use portcullis_policy::Route;
use portcullis_state::ratelimit::{Decision, QuotaSpec};

/// A request refused by a rate limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limited {
    /// `peer` or `client`.
    pub scope: &'static str,
    /// `RateLimit-Policy` value.
    pub policy: String,
    /// Quota policy name (for the `RateLimit` header).
    pub name: String,
    pub retry_after_s: u64,
}

fn apply(
    scope: &'static str,
    spec: &QuotaSpec,
    d: Decision,
    shared: &Shared,
    record: &mut RequestRecord,
) -> Result<(), Rejection> {
    record.rate_limit = Some(RateLimitRecord {
        scope,
        limit: u64::from(spec.burst),
        remaining: d.remaining,
        reset_s: d.reset_s,
        limited: !d.allowed,
    });
    if d.allowed {
        return Ok(());
    }
    let limited = Limited {
        scope,
        policy: spec.policy_header(),
        name: spec.name.clone(),
        retry_after_s: d.reset_s,
    };
    if spec.shadow {
        // Recorded as a shadow denial (decision `shadow_deny`), not enforced.
        shared.metrics.rate_limit_refused("shadow");
        let r = Rejection::RateLimited(limited);
        record.stage = Some("rate_limit");
        record.reason = Some(r.audit_reason());
        record.rule_id = Some(format!("rate_limit:{}", spec.name));
        return Ok(());
    }
    shared.metrics.rate_limit_refused(scope);
    Err(Rejection::RateLimited(limited))
}

/// Stage 4: the pre-authentication limit per peer IP address.
pub fn check_peer(
    conn: &ConnInfo,
    rt: &Runtime,
    shared: &Shared,
    record: &mut RequestRecord,
) -> Result<(), Rejection> {
    let Some(l) = &rt.rate_limits.peer else {
        return Ok(());
    };
    let d = l.check(&conn.peer.ip());
    apply("peer", &l.spec, d, shared, record)
}

/// The client key: certificate thumbprint, else the token's client id, else the peer address.
pub fn client_key(
    identity: &ClientIdentity,
    token: Option<&BoundToken>,
    conn: &ConnInfo,
) -> String {
    if let Some(c) = &identity.cert {
        return format!("x5t:{}", c.thumbprint);
    }
    if let Some(cid) = token.and_then(|t| t.token.client_id.as_deref()) {
        return format!("cid:{cid}");
    }
    format!("ip:{}", conn.peer.ip())
}

/// Stage 6: the route class's limit for `key` — fleet-wide when the state backend is Redis
/// (the local limiter then counts what the fleet admitted here, and decides alone while Redis
/// is unavailable, or the request is refused with 503 `rate_limit.unavailable`, per
/// `state.on_outage.rate_limits`).
pub async fn check_client(
    route: &Route,
    key: &str,
    rt: &Runtime,
    shared: &Shared,
    record: &mut RequestRecord,
) -> Result<(), Rejection> {
    let Some(class) = &route.rate_limit else {
        return Ok(());
    };
    // The config loader refuses unknown classes; a missing limiter means none applies.
    let Some(l) = rt.rate_limits.classes.get(class) else {
        return Ok(());
    };
    let Some(fleet) = &rt.rate_limits.fleet else {
        let d = l.check(&key.to_string());
        return apply("client", &l.spec, d, shared, record);
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
                return Err(Rejection::RateLimited(Limited {
                    scope: "unavailable",
                    policy: l.spec.policy_header(),
                    name: l.spec.name.clone(),
                    retry_after_s: 1,
                }));
            }
            l.check(&key.to_string())
        }
    };
    apply("client", &l.spec, d, shared, record)
}
