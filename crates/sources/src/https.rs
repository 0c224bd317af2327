//! The HTTPS client the proxy's own control-plane calls use (key sets, introspection, consent).

use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::Full;

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

/// A client for documents that carry their own signature — CRLs and OCSP answers — so plain
/// `http://` is allowed (RFC 5280 and RFC 6960 distribution points usually are), over
/// HTTP/1.1 with trust from `tls` for `https://` and a connect timeout. No pooled connections:
/// fetches are minutes apart, and a server that closes an idle connection (`openssl ocsp`
/// serves one request per connection) must not turn the next fetch into a failure.
pub fn signed_document_client<B>(
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
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build(connector)
}

/// The `error` member of an OAuth error answer (RFC 6749 §5.2), when it is short and printable:
/// it is the server's own code, safe to log, unlike the rest of the body.
pub fn oauth_error(body: &[u8]) -> Option<String> {
    let m = portcullis_base::json::parse_object(body)?;
    let e = m.get("error")?.as_str()?;
    (e.len() <= 64
        && e.bytes()
            .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\'))
    .then(|| e.to_string())
}

/// `application/x-www-form-urlencoded` encoding of one value.
pub fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `client_secret_basic` (RFC 6749 §2.3.1): the id and secret form-encoded, then base64.
pub fn basic_auth(client_id: &str, secret: &str) -> String {
    let raw = format!("{}:{}", form_encode(client_id), form_encode(secret));
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

/// Runs `refresh` now and then every `every` until `shutdown`; while it reports no good copy
/// (`false`), again after two seconds (or `every`, if shorter). The loop of every refreshed
/// control-plane source (key sets, issuer metadata, CRLs).
pub fn spawn_refresh_loop<F, Fut>(
    every: Duration,
    shutdown: tokio_util::sync::CancellationToken,
    refresh: F,
) where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    tokio::spawn(async move {
        loop {
            let wait = if refresh().await {
                every
            } else {
                Duration::from_secs(2).min(every)
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    });
}

/// How the proxy authenticates itself to an OAuth endpoint (introspection, RFC 7662 §2.1; a
/// token endpoint).
#[derive(Clone)]
pub enum ClientAuth {
    /// `client_secret_basic` (RFC 6749 §2.3.1): `Authorization: Basic` with the id and secret.
    Basic { client_id: String, secret: String },
    /// `tls_client_auth` (RFC 8705 §2): the client certificate of the TLS config authenticates;
    /// `client_id` is sent in the form.
    TlsClientAuth { client_id: String },
}

/// A form POST of `form` to `uri` asking for JSON, authenticated as `auth` says.
pub fn oauth_form_post(
    uri: http::Uri,
    mut form: String,
    auth: &ClientAuth,
) -> Result<http::Request<Full<Bytes>>, http::Error> {
    let mut req = http::Request::post(uri)
        .header(
            http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .header(http::header::ACCEPT, "application/json");
    match auth {
        ClientAuth::Basic { client_id, secret } => {
            req = req.header(http::header::AUTHORIZATION, basic_auth(client_id, secret));
        }
        ClientAuth::TlsClientAuth { client_id } => {
            form.push_str("&client_id=");
            form.push_str(&form_encode(client_id));
        }
    }
    req.body(Full::new(Bytes::from(form)))
}
