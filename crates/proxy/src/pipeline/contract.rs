//! The request contract stage: a route's OpenAPI operation, compiled at load
//! (`portcullis_policy::contract`), checked against the matched path's parameters, the query,
//! the headers and the buffered body — the bytes that are forwarded.

use http::request::Parts;

use super::Rejection;
use portcullis_policy::contract::{Contract, ContractMode, Request, Violation};
use portcullis_policy::RouteMatch;

/// What the check found, for the audit record and the decision.
#[derive(Clone, Debug)]
pub(crate) struct Checked {
    pub(crate) operation: String,
    pub(crate) mode: ContractMode,
    pub(crate) violation: Option<Violation>,
}

impl Checked {
    /// The refusal, when the contract is enforced and broken.
    pub(crate) fn refusal(&self) -> Option<Rejection> {
        match (&self.violation, self.mode) {
            (Some(v), ContractMode::Enforce) => Some(Rejection::Contract(v.clone())),
            _ => None,
        }
    }

    /// The refusal a shadow contract would have made.
    pub(crate) fn shadow_refusal(&self) -> Option<Rejection> {
        match (&self.violation, self.mode) {
            (Some(v), ContractMode::Shadow) => Some(Rejection::Contract(v.clone())),
            _ => None,
        }
    }
}

pub(crate) fn check(
    c: &Contract,
    route: &RouteMatch,
    parts: &Parts,
    body: Option<&[u8]>,
) -> Checked {
    let violation = c
        .check(&Request {
            params: &route.params,
            query: parts.uri.query(),
            headers: &parts.headers,
            body,
        })
        .err();
    Checked {
        operation: c.operation.clone(),
        mode: c.mode,
        violation,
    }
}
