//! The background work of an upstream: active health checks and DNS refresh. Each task holds
//! its client weakly and ends with the config generation that started it.

use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Uri};

use super::client::UpstreamClient;
use portcullis_base::body::full;

/// How long one DNS resolution may take before the last answer is kept.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Resolves the upstream's name now and then every interval. An answer with addresses
/// replaces the set; a failed or empty one keeps the last set (a resolver outage must not
/// empty a working upstream).
pub(crate) async fn refresh_dns(client: Weak<UpstreamClient>) {
    loop {
        let Some(c) = client.upgrade() else { return };
        let Some(d) = c.config.dns.clone() else {
            return;
        };
        let looked = tokio::time::timeout(
            RESOLVE_TIMEOUT,
            tokio::net::lookup_host((d.name.as_str(), d.port)),
        )
        .await;
        match looked {
            Ok(Ok(addrs)) => {
                let mut addrs: Vec<SocketAddr> = addrs.collect();
                addrs.sort();
                addrs.dedup();
                if addrs.is_empty() {
                    tracing::warn!(upstream = %c.config.name, name = %d.name, "DNS answered no addresses; keeping the last set");
                } else {
                    c.replace(&addrs);
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(upstream = %c.config.name, name = %d.name, error = %e, "DNS resolution failed; keeping the last set");
            }
            Err(_) => {
                tracing::warn!(upstream = %c.config.name, name = %d.name, "DNS resolution timed out; keeping the last set");
            }
        }
        c.resolved();
        drop(c);
        tokio::time::sleep(d.interval).await;
    }
}

/// Probes every endpoint every interval: a GET of the check's path (not under the base
/// path: a health endpoint is the service's, not the API's) answered 2xx within the timeout.
pub(crate) async fn check(client: Weak<UpstreamClient>) {
    loop {
        let Some(c) = client.upgrade() else { return };
        let Some(h) = c.config.health_check.clone() else {
            return;
        };
        let mut probes = tokio::task::JoinSet::new();
        for ep in c.endpoints().iter() {
            let ep = Arc::clone(ep);
            let uri = Uri::builder()
                .scheme(c.config.scheme.clone())
                .authority(ep.authority.clone())
                .path_and_query(h.path.as_str())
                .build();
            let h = h.clone();
            let name = c.config.name.clone();
            probes.spawn(async move {
                let Ok(uri) = uri else { return };
                let mut req = Request::new(full(Bytes::new()));
                *req.uri_mut() = uri;
                req.headers_mut().insert(
                    http::header::USER_AGENT,
                    http::HeaderValue::from_static("portcullis-health-check"),
                );
                let ok = match tokio::time::timeout(h.timeout, ep.pool().request(req)).await {
                    Ok(Ok(r)) => r.status().is_success(),
                    _ => false,
                };
                if ep
                    .state
                    .checked(ok, h.healthy_threshold, h.unhealthy_threshold)
                {
                    let verdict = if ok { "healthy" } else { "unhealthy" };
                    tracing::warn!(upstream = %name, endpoint = %ep.label, verdict, "upstream endpoint health changed");
                }
            });
        }
        drop(c);
        while probes.join_next().await.is_some() {}
        tokio::time::sleep(h.interval).await;
    }
}
