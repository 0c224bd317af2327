//! Path check and route match: the only place a request path is interpreted.

// Public for the `internals` feature (the fuzz harness and the benchmarks drive it directly).
#![cfg_attr(not(feature = "internals"), allow(unreachable_pub))]

use http::request::Parts;

use crate::pipeline::http::{query_overrides_method, HttpError};
use crate::pipeline::rejection::Rejection;
use portcullis_base::path::{check_path, check_query, has_parameters, PathError};
use portcullis_policy::{PolicySet, RouteMatch};

/// Checks the request target and finds its route.
pub fn resolve(parts: &Parts, policies: &PolicySet) -> Result<RouteMatch, Rejection> {
    // HTTP/1 absolute-form (`GET http://other/x`) names its own authority: refused, so the
    // authority is always the one the Host check saw (RFC 9112 §3.2.2).
    if parts.version != http::Version::HTTP_2 && parts.uri.scheme().is_some() {
        return Err(PathError::NotOriginForm.into());
    }
    let path = parts.uri.path();
    check_path(path)?;
    if let Some(q) = parts.uri.query() {
        check_query(q)?;
    }
    let m = policies.lookup(&parts.method, path)?;
    // After the match: a route may take `;` parameters or `_method` on purpose.
    if !m.route.path_parameters && has_parameters(path) {
        return Err(PathError::Parameter.into());
    }
    if !m.route.method_override && parts.uri.query().is_some_and(query_overrides_method) {
        return Err(HttpError::MethodOverride.into());
    }
    Ok(m)
}
