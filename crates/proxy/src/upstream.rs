//! Upstreams: pooled clients, header hygiene and the forwarding headers we vouch for.
//!
//! Order matters in [`prepare_headers`]: first every hop-by-hop header goes (the fixed list and
//! whatever the client names in `Connection`), then every client copy of a header we vouch for
//! (forwarding, identity, original-path and our own), and only then are ours added. So no client
//! header can remove, forge or shadow them.

use std::time::{Duration, Instant};

use http::header::{HeaderName, HeaderValue, CONNECTION};
use http::{HeaderMap, Request, Response, Uri};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::{ClientCertForwarding, Upstream};
use portcullis_base::body::ProxyBody;

portcullis_base::variants! {
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum UpstreamError {
        Connect,
        Protocol,
        Timeout,
    }
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

type Pool = Client<HttpsConnector<HttpConnector>, ProxyBody>;

/// Pooled clients for one upstream: one pool per data-plane worker, so a request is sent on a
/// connection driven by the same thread and event loop as the downstream connection it came
/// from (no cross-thread hand-off per request), plus one for every other thread.
pub struct UpstreamClient {
    pub config: Upstream,
    pools: Vec<Pool>,
}

impl UpstreamClient {
    /// A client with a pool for each of `workers` data-plane workers.
    pub fn new(config: &Upstream, workers: usize) -> UpstreamClient {
        let pools = (0..=workers)
            .map(|_| UpstreamClient::pool(config))
            .collect();
        UpstreamClient {
            config: config.clone(),
            pools,
        }
    }

    fn pool(config: &Upstream) -> Pool {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.connect_timeout));
        let tls = match &config.tls {
            Some(t) => (*t.client_config).clone(),
            None => rustls::ClientConfig::builder_with_provider(crate::tls::crypto_provider())
                .with_safe_default_protocol_versions()
                .map(|b| {
                    b.with_root_certificates(rustls::RootCertStore::empty())
                        .with_no_client_auth()
                })
                .unwrap_or_else(|_| {
                    rustls::ClientConfig::builder()
                        .with_root_certificates(rustls::RootCertStore::empty())
                        .with_no_client_auth()
                }),
        };
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(config.pool_idle_timeout)
            .pool_max_idle_per_host(config.pool_max_idle_per_host)
            .http2_only(config.http2)
            .build(connector)
    }

    /// The upstream URI for an already checked path and query.
    pub fn uri(&self, path: &str, query: Option<&str>) -> Result<Uri, http::Error> {
        let c = &self.config;
        let pq = match query {
            Some(q) => format!("{}{path}?{q}", c.base_path),
            None => format!("{}{path}", c.base_path),
        };
        Uri::builder()
            .scheme(c.scheme.clone())
            .authority(c.authority.clone())
            .path_and_query(pq)
            .build()
    }

    /// Sends the request; returns the response and the time to its headers.
    pub async fn send(
        &self,
        req: Request<ProxyBody>,
    ) -> Result<(Response<Incoming>, Duration), UpstreamError> {
        let start = Instant::now();
        let pool = self
            .pools
            .get(crate::worker::worker_index())
            .unwrap_or(&self.pools[0]);
        match tokio::time::timeout(self.config.response_timeout, pool.request(req)).await {
            Err(_) => Err(UpstreamError::Timeout),
            Ok(Err(e)) if e.is_connect() => {
                tracing::warn!(upstream = %self.config.name, failure = "connect", error = %e, "upstream connect failed");
                Err(UpstreamError::Connect)
            }
            Ok(Err(e)) => {
                tracing::warn!(upstream = %self.config.name, failure = "protocol", error = %e, "upstream request failed");
                Err(UpstreamError::Protocol)
            }
            Ok(Ok(r)) => Ok((r, start.elapsed())),
        }
    }
}

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
