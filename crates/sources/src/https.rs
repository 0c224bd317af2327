//! The HTTPS client the proxy's own control-plane calls use (key sets, introspection, consent).

use std::time::Duration;

/// An HTTPS-only client (HTTP/1.1) for the proxy's own calls to a control-plane endpoint — key
/// sets, introspection, consent — with pinned trust from `tls` and a connect timeout.
pub fn pinned_https_client<B>(
    tls: &rustls::ClientConfig,
    connect_timeout: Duration,
) -> hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    B,
>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls.clone())
        .https_only()
        .enable_http1()
        .wrap_connector(http);
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(connector)
}
