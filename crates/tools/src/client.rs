//! A small HTTPS client with a client certificate: used by `loadgen`, the demo's self-check and
//! the integration tests. One connection per [`Conn`], HTTP/1.1 keep-alive or HTTP/2 (plain
//! TCP too, for measuring an upstream directly).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Builds a client TLS config trusting `ca`, presenting `identity` when given.
pub fn tls_config(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
    http2: bool,
) -> Result<Arc<rustls::ClientConfig>, BoxError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca)? {
        roots.add(c?)?;
    }
    let b = rustls::ClientConfig::builder_with_provider(portcullis_proxy::crypto_provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((cert, key)) => {
            let chain: Result<Vec<_>, _> = CertificateDer::pem_file_iter(cert)?.collect();
            b.with_client_auth_cert(chain?, PrivateKeyDer::from_pem_file(key)?)?
        }
        None => b.with_no_client_auth(),
    };
    config.alpn_protocols = if http2 {
        vec![b"h2".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(Arc::new(config))
}

enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

/// One client connection.
pub struct Conn {
    sender: Sender,
}

/// A response with its body read.
pub struct Answer {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

impl Conn {
    /// Another handle on the same HTTP/2 connection, whose requests run as concurrent streams;
    /// `None` over HTTP/1.1, which carries one request at a time.
    pub fn stream_handle(&self) -> Option<Conn> {
        match &self.sender {
            Sender::H2(s) => Some(Conn {
                sender: Sender::H2(s.clone()),
            }),
            Sender::H1(_) => None,
        }
    }

    /// Connects and completes the TLS handshake (HTTP/2 when the config offers only `h2`).
    pub async fn connect(
        addr: SocketAddr,
        server_name: &str,
        config: Arc<rustls::ClientConfig>,
    ) -> Result<Conn, BoxError> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from(server_name.to_string())?;
        let h2 = config.alpn_protocols == [b"h2".to_vec()];
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await?;
        let io = TokioIo::new(tls);
        let sender = if h2 {
            let (s, c) = http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(c);
            Sender::H2(s)
        } else {
            let (s, c) = http1::handshake(io).await?;
            tokio::spawn(c);
            Sender::H1(s)
        };
        Ok(Conn { sender })
    }

    /// Connects over plain TCP, no TLS (HTTP/2 with prior knowledge when `http2`): for
    /// measuring an upstream such as the mock bank directly (`loadgen`, `target.plaintext`).
    pub async fn connect_plain(addr: SocketAddr, http2: bool) -> Result<Conn, BoxError> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let io = TokioIo::new(tcp);
        let sender = if http2 {
            let (s, c) = http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(c);
            Sender::H2(s)
        } else {
            let (s, c) = http1::handshake(io).await?;
            tokio::spawn(c);
            Sender::H1(s)
        };
        Ok(Conn { sender })
    }

    /// Sends a request and reads the whole response.
    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Result<Answer, BoxError> {
        let resp: Response<hyper::body::Incoming> = match &mut self.sender {
            Sender::H1(s) => {
                s.ready().await?;
                s.send_request(req).await?
            }
            Sender::H2(s) => {
                s.ready().await?;
                s.send_request(req).await?
            }
        };
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// Whether the connection can take another request.
    pub fn is_open(&self) -> bool {
        match &self.sender {
            Sender::H1(s) => !s.is_closed(),
            Sender::H2(s) => !s.is_closed(),
        }
    }
}
