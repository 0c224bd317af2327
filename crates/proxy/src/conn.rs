//! Per-connection facts, gathered once after the handshake and shared by every request on it.

use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine as _;
use http::HeaderValue;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use crate::config::ClientCertForwarding;
use portcullis_crypto::pki::ClientCert;

/// What the proxy knows about a connection; immutable after the handshake.
#[derive(Debug)]
pub(crate) struct ConnInfo {
    pub id: u64,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// The configured address of the listener that accepted it.
    pub listener: SocketAddr,
    /// The host its handshake chose ([`crate::config::Host::key`]): every request must name
    /// one of that host's names, and is served by that host's routes and revocation checks.
    pub host_key: Arc<str>,
    /// Requests served on this connection's listener and host (the
    /// `portcullis_host_requests_total` sample, looked up once per connection).
    pub host_requests: Arc<std::sync::atomic::AtomicU64>,
    pub tls_version: &'static str,
    pub cipher: &'static str,
    /// The verified client certificate, when one was presented.
    pub client_cert: Option<Arc<ClientCert>>,
    /// Header values computed once per connection rather than per request: the peer address
    /// (`x-forwarded-for`) and the certificate in each forwarding form.
    pub peer_ip_header: HeaderValue,
    cert_rfc9440: Option<HeaderValue>,
    cert_xfcc: Option<HeaderValue>,
    /// The connection's facts as audit-record members, encoded once.
    pub audit_members: Arc<str>,
    /// Where work that must outlive the client goes (an exchange the upstream may act on), so
    /// that a graceful drain waits for it.
    pub tasks: tokio_util::task::TaskTracker,
    /// Bounds the exchanges of this connection that run on without their client (as many as
    /// HTTP/2 streams it may open): a client that resets streams as fast as it opens them gets
    /// no more upstream work in flight than one that waits for its answers.
    pub detached: Arc<tokio::sync::Semaphore>,
}

impl ConnInfo {
    pub(crate) fn from_stream(
        id: u64,
        tls: &TlsStream<TcpStream>,
        tasks: tokio_util::task::TaskTracker,
        max_detached: usize,
        listener: SocketAddr,
        host: &crate::config::Host,
        host_requests: Arc<std::sync::atomic::AtomicU64>,
    ) -> std::io::Result<ConnInfo> {
        let (tcp, session) = tls.get_ref();
        let tls_version = match session.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "unknown",
        };
        let cipher = session
            .negotiated_cipher_suite()
            .and_then(|c| c.suite().as_str())
            .unwrap_or("unknown");
        // The verifier has already checked the chain; a leaf we cannot parse for its fields is
        // treated as no usable identity rather than a crash.
        let client_cert = session
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|leaf| ClientCert::from_der(leaf.as_ref()).ok())
            .map(Arc::new);
        let peer = tcp.peer_addr()?;
        let encode = |form| {
            client_cert
                .as_deref()
                .and_then(|c| client_cert_value(c, form))
        };
        let mut info = ConnInfo {
            id,
            peer_ip_header: HeaderValue::from_str(&peer.ip().to_string())
                .map_err(std::io::Error::other)?,
            cert_rfc9440: encode(ClientCertForwarding::Rfc9440),
            cert_xfcc: encode(ClientCertForwarding::Xfcc),
            peer,
            local: tcp.local_addr()?,
            listener,
            host_key: Arc::clone(&host.key),
            host_requests,
            tls_version,
            cipher,
            client_cert,
            audit_members: Arc::from(""),
            tasks,
            detached: Arc::new(tokio::sync::Semaphore::new(max_detached.max(1))),
        };
        info.audit_members =
            portcullis_audit::connection_members(&portcullis_audit::ConnectionFacts {
                local: info.local,
                host: host.label(),
                peer: info.peer,
                tls_version: info.tls_version,
                cipher: info.cipher,
                client_cert: info.client_cert.as_deref(),
            });
        Ok(info)
    }

    /// The client certificate as the upstream header of `form` carries it.
    pub(crate) fn forwarded_cert(&self, form: ClientCertForwarding) -> Option<&HeaderValue> {
        match form {
            ClientCertForwarding::Rfc9440 => self.cert_rfc9440.as_ref(),
            ClientCertForwarding::Xfcc => self.cert_xfcc.as_ref(),
            ClientCertForwarding::None => None,
        }
    }
}

/// The header value that carries `cert` upstream in the given form; computed once per
/// connection.
pub(crate) fn client_cert_value(
    cert: &ClientCert,
    form: ClientCertForwarding,
) -> Option<HeaderValue> {
    let text = match form {
        ClientCertForwarding::Rfc9440 => format!(
            ":{}:",
            base64::engine::general_purpose::STANDARD.encode(&cert.der)
        ),
        ClientCertForwarding::Xfcc => format!(
            "Hash={};Subject=\"{}\"",
            hex_sha256(&cert.der),
            cert.subject.replace(['"', '\\'], "")
        ),
        ClientCertForwarding::None => return None,
    };
    HeaderValue::from_str(&text).ok()
}

fn hex_sha256(bytes: &[u8]) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}
