//! Authorization (stage 10): scopes, consent and object rules of the route, decided by
//! [`portcullis_policy::rules::evaluate`] on the bound token's claims, the consent record it names
//! and the request facts. A shadow denial is recorded, counted and not enforced.

use http::request::Parts;

use crate::runtime::{Runtime, Shared};
use portcullis_policy::rules::{self, ConsentRecord, Denial, Facts};

use super::Inspected;

/// What authorization established: the consent record (for response rules and the audit), and
/// a shadow denial that was recorded but not enforced.
#[derive(Debug, Default)]
pub struct Permit {
    pub consent: Option<ConsentRecord>,
    pub consent_id: Option<String>,
    pub shadow_denial: Option<Denial>,
}

pub async fn authorize(
    inspected: &Inspected,
    parts: &Parts,
    body: Option<&[u8]>,
    rt: &Runtime,
    shared: &Shared,
) -> Result<Permit, Denial> {
    let route = &inspected.route.route;
    let authz = &route.authz;
    let Some(bound) = &inspected.token else {
        return Ok(Permit::default());
    };
    if authz.is_empty() {
        return Ok(Permit::default());
    }
    let claims = &bound.token.claims;
    let consent_id = rules::consent_id(authz, claims).map(str::to_string);
    let consent = match (&authz.consent, &consent_id, &rt.consent) {
        (Some(_), Some(id), Some(source)) => source.get(id).await,
        (Some(_), Some(_), None) => Err(rules::AuthzError::ConsentUnavailable),
        _ => Ok(None),
    };
    let facts = Facts {
        params: &inspected.route.params,
        query: parts.uri.query(),
        headers: &parts.headers,
        body,
    };
    let decision = rules::evaluate(
        authz,
        &bound.token.scopes,
        claims,
        consent.as_ref().map(Option::as_ref).map_err(Clone::clone),
        &facts,
        shared.clock.now(),
    );
    let consent = consent.ok().flatten();
    match decision {
        Ok(()) => Ok(Permit {
            consent,
            consent_id,
            shadow_denial: None,
        }),
        Err(d) if d.shadow => Ok(Permit {
            consent,
            consent_id,
            shadow_denial: Some(d),
        }),
        Err(d) => Err(d),
    }
}
