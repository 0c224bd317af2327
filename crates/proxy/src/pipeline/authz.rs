//! Authorization: scopes, consent and object rules of the route, decided by
//! [`portcullis_policy::rules::evaluate`] on the bound token's claims, the consent record it
//! names and the request facts. A shadow denial is recorded, counted and not enforced.

use http::request::Parts;

use super::binding::BoundToken;
use super::signature;
use portcullis_policy::rules::{self, AuthzError, ConsentRecord, Denial, Facts};
use portcullis_policy::RouteMatch;
use portcullis_sources::consent::ConsentSource;

/// What authorization established; made only by [`authorize`].
#[derive(Debug)]
pub(crate) struct Permit {
    consent: Option<ConsentRecord>,
    consent_id: Option<String>,
    scopes_used: Option<Vec<String>>,
    shadow_denial: Option<Denial>,
}

impl Permit {
    /// The consent record the token named (for response rules).
    pub(crate) fn into_consent(self) -> Option<ConsentRecord> {
        self.consent
    }

    pub(crate) fn consent_id(&self) -> Option<&str> {
        self.consent_id.as_deref()
    }

    /// The scopes this request used: every `all_of` scope, and the `any_of` scopes the token
    /// holds (what `audit report` counts as used), taken for the audit record. `None` on routes
    /// that require no scope.
    pub(crate) fn take_scopes_used(&mut self) -> Option<Vec<String>> {
        self.scopes_used.take()
    }

    /// A denial that was recorded and not enforced.
    pub(crate) fn shadow_denial(&self) -> Option<&Denial> {
        self.shadow_denial.as_ref()
    }
}

/// Authorizes the request. Takes the signature stage's evidence, so it runs only after the
/// request's bytes were proven (on routes that sign them).
pub(crate) async fn authorize(
    route: &RouteMatch,
    parts: &Parts,
    body: Option<&[u8]>,
    token: Option<&BoundToken>,
    _signed: &signature::Checked,
    consent_source: Option<&ConsentSource>,
    now: i64,
) -> Result<Permit, Denial> {
    let authz = &route.route.authz;
    let scopes_used = scopes_used(authz, token);
    let Some(bound) = token else {
        return Ok(Permit {
            consent: None,
            consent_id: None,
            scopes_used,
            shadow_denial: None,
        });
    };
    if authz.is_empty() {
        return Ok(Permit {
            consent: None,
            consent_id: None,
            scopes_used,
            shadow_denial: None,
        });
    }
    let claims = &bound.token().claims;
    let consent_id = rules::consent_id(authz, claims).map(str::to_string);
    let consent = match (&authz.consent, &consent_id, consent_source) {
        (Some(_), Some(id), Some(source)) => source.get(id).await,
        (Some(_), Some(_), None) => Err(AuthzError::ConsentUnavailable),
        _ => Ok(None),
    };
    let facts = Facts {
        params: &route.params,
        query: parts.uri.query(),
        headers: &parts.headers,
        body,
    };
    let decision = rules::evaluate(
        authz,
        &bound.token().scopes,
        claims,
        consent.as_ref().map(Option::as_ref).map_err(Clone::clone),
        &facts,
        now,
    );
    let consent = consent.ok().flatten();
    let shadow_denial = match decision {
        Ok(()) => None,
        Err(d) if d.shadow => Some(d),
        Err(d) => return Err(d),
    };
    Ok(Permit {
        consent,
        consent_id,
        scopes_used,
        shadow_denial,
    })
}

fn scopes_used(authz: &rules::Authz, token: Option<&BoundToken>) -> Option<Vec<String>> {
    if authz.all_of.is_empty() && authz.any_of.is_empty() {
        return None;
    }
    let held = token.map_or(&[][..], |t| t.token().scopes.as_slice());
    let used = authz
        .all_of
        .iter()
        .chain(authz.any_of.iter().filter(|s| held.contains(s)))
        .map(|s| portcullis_base::text::bounded(s))
        .collect();
    Some(used)
}
