//! Upstreams: endpoint sets ([`client`]: choice, bulkhead, tries; [`endpoint`]: pools,
//! health, breaker; [`health`]: checks and DNS refresh; [`retry`]: two choices and the retry
//! budget), header hygiene and the forwarding headers we vouch for.
//!
//! Order matters in [`prepare_headers`]: first every hop-by-hop header goes (the fixed list and
//! whatever the client names in `Connection`), then every client copy of a header we vouch for
//! (forwarding, identity, original-path and our own), and only then are ours added. So no client
//! header can remove, forge or shadow them.

mod client;
mod endpoint;
mod health;
mod retry;

use http::header::{HeaderName, HeaderValue, CONNECTION};
use http::HeaderMap;

use crate::config::ClientCertForwarding;
pub(crate) use client::Tries;
pub(crate) use client::{Registry, UpstreamClient};
pub(crate) use endpoint::{Outcome, Standing};

portcullis_base::variants! {
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum UpstreamError {
        Connect,
        Protocol,
        Timeout,
        /// No endpoint may take the request: every one unhealthy, ejected or behind an open
        /// breaker (or a DNS set not resolved yet); with the time until one may (`Retry-After`).
        Unavailable(RetryAfter),
        /// The upstream's bulkhead is full: its concurrent and pending requests are at their
        /// limits.
        Overloaded,
    }
}

/// Whole seconds until the upstream may take a request again, at least 1: what `Retry-After`
/// says (`0` would invite an immediate retry, which an open breaker would refuse again).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryAfter(pub u64);

impl RetryAfter {
    /// `d` rounded up to whole seconds, at least 1.
    pub(crate) fn of(d: std::time::Duration) -> RetryAfter {
        let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
        RetryAfter(s.max(1))
    }
}

impl portcullis_base::variants::Variants for RetryAfter {
    fn variants() -> Vec<Self> {
        vec![RetryAfter(1)]
    }
}

impl UpstreamError {
    /// What `Retry-After` says of a refusal that is expected to pass: the soonest an endpoint
    /// comes back for `Unavailable`, 1 s for a full bulkhead (its queue drains in
    /// milliseconds; a caller told to wait longer would leave capacity unused).
    pub(crate) fn retry_after(self) -> Option<RetryAfter> {
        match self {
            UpstreamError::Unavailable(r) => Some(r),
            UpstreamError::Overloaded => Some(RetryAfter(1)),
            UpstreamError::Connect | UpstreamError::Protocol | UpstreamError::Timeout => None,
        }
    }
}

/// The client for one upstream of a config generation, with its DNS refresh and health
/// checks started when a Tokio runtime is there to run them (they end with the client).
pub(crate) fn start(
    config: &crate::config::Upstream,
    workers: usize,
    registry: &Registry,
) -> std::sync::Arc<UpstreamClient> {
    let client = UpstreamClient::new(config, workers, registry);
    if tokio::runtime::Handle::try_current().is_ok() {
        let weak = std::sync::Arc::downgrade(&client);
        if client.config.dns.is_some() {
            tokio::spawn(health::refresh_dns(weak.clone()));
        }
        if client.config.health_check.is_some() {
            tokio::spawn(health::check(weak));
        }
    }
    client
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) plus legacy ones proxies must not forward.
fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "http2-settings"
    )
}

/// Headers only the proxy may set: client copies are always removed. `host` is among them: the
/// upstream authority comes from the request URI, and the client's Host travels as
/// `x-forwarded-host`.
fn is_vouched(name: &str) -> bool {
    matches!(
        name,
        "host"
            | "forwarded"
            | "x-real-ip"
            | "x-client-ip"
            | "true-client-ip"
            | "client-cert"
            | "client-cert-chain"
            | "x-original-url"
            | "x-rewrite-url"
            | "x-original-uri"
    ) || ["x-portcullis-", "x-envoy-", "x-forwarded-"]
        .iter()
        .any(|p| name.starts_with(p))
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");
const CLIENT_CERT: HeaderName = HeaderName::from_static("client-cert");
const INTERACTION_ID: HeaderName = HeaderName::from_static("x-fapi-interaction-id");
const HTTPS: HeaderValue = HeaderValue::from_static("https");

/// Removes the headers `drop` selects and those named in `Connection`, in one pass over the
/// (few) header names rather than one lookup per listed header.
fn remove_where(h: &mut HeaderMap, drop: impl Fn(&str) -> bool) {
    let mut doomed: Vec<HeaderName> = h
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    doomed.extend(h.keys().filter(|k| drop(k.as_str())).cloned());
    for n in doomed {
        h.remove(n);
    }
}

/// What the proxy vouches for on a forwarded request.
pub(crate) struct Vouched<'a> {
    pub peer_ip: &'a HeaderValue,
    pub host: Option<&'a str>,
    /// The verified client certificate, already encoded for the configured header.
    pub client_cert: Option<&'a HeaderValue>,
    pub forwarding: ClientCertForwarding,
    pub interaction_id: &'a HeaderValue,
}

/// Cleans a client's request headers and adds ours (see the module doc for the order).
pub(crate) fn prepare_headers(h: &mut HeaderMap, v: &Vouched<'_>) {
    remove_where(h, |n| is_hop_by_hop(n) || is_vouched(n));
    h.insert(X_FORWARDED_FOR, v.peer_ip.clone());
    h.insert(X_FORWARDED_PROTO, HTTPS);
    if let Some(host) = v.host.and_then(|x| HeaderValue::from_str(x).ok()) {
        h.insert(X_FORWARDED_HOST, host);
    }
    h.insert(INTERACTION_ID, v.interaction_id.clone());
    if let Some(cert) = v.client_cert {
        match v.forwarding {
            ClientCertForwarding::Rfc9440 => {
                h.insert(CLIENT_CERT, cert.clone());
            }
            ClientCertForwarding::Xfcc => {
                h.insert(X_FORWARDED_CLIENT_CERT, cert.clone());
            }
            ClientCertForwarding::None => {}
        }
    }
}

/// Cleans an upstream response's headers before they go to the client.
pub(crate) fn clean_response_headers(h: &mut HeaderMap) {
    remove_where(h, is_hop_by_hop);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_copies_of_vouched_headers_never_survive() {
        let mut h = HeaderMap::new();
        for (k, val) in [
            ("connection", "x-forwarded-for, x-keep-me-not"),
            ("x-keep-me-not", "1"),
            ("x-forwarded-for", "6.6.6.6"),
            ("forwarded", "for=6.6.6.6"),
            ("x-real-ip", "6.6.6.6"),
            ("client-cert", ":Zm9yZ2Vk:"),
            ("x-forwarded-client-cert", "Hash=forged"),
            ("x-envoy-original-path", "/admin"),
            ("x-portcullis-client", "forged"),
            ("x-fapi-interaction-id", "forged"),
            ("te", "trailers"),
            ("keep-alive", "timeout=5"),
            ("host", "evil.example"),
            ("accept", "application/json"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(val));
        }
        prepare_headers(
            &mut h,
            &Vouched {
                peer_ip: &HeaderValue::from_static("127.0.0.9"),
                host: Some("api.example"),
                client_cert: None,
                forwarding: ClientCertForwarding::Rfc9440,
                interaction_id: &HeaderValue::from_static("93bac548-d2de-4546-b106-880a5018460d"),
            },
        );
        assert_eq!(h["x-forwarded-for"], "127.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "api.example");
        assert_eq!(
            h["x-fapi-interaction-id"],
            "93bac548-d2de-4546-b106-880a5018460d"
        );
        assert_eq!(h["accept"], "application/json");
        for gone in [
            "connection",
            "x-keep-me-not",
            "forwarded",
            "x-real-ip",
            "client-cert",
            "x-forwarded-client-cert",
            "x-envoy-original-path",
            "x-portcullis-client",
            "te",
            "keep-alive",
            "host",
        ] {
            assert!(!h.contains_key(gone), "{gone} survived");
        }
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
    }
}
