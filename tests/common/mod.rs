//! Integration-test harness: dev certificates made at run time, a recording upstream, the proxy
//! on 127.0.0.1:0 with its audit log in a temp directory, and real TLS clients.
#![allow(dead_code)]

pub(crate) mod redis;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use portcullis_audit::AuditLog;
/// The typed config file: what a test builds its proxy's config from.
#[allow(unused_imports)]
pub(crate) use portcullis_proxy::config::file::*;
use portcullis_proxy::config::Config;
use portcullis_proxy::Running;
use portcullis_proxy::Shared;
use portcullis_tools::client::{tls_config, Answer, Conn};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// One set of dev certificates per test binary (generation is the slow part).
pub(crate) fn certs() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        portcullis_proxy::install_crypto_provider();
        let d = tempfile::tempdir().expect("tempdir");
        portcullis_tools::devcerts::generate(d.path()).expect("dev certs");
        d
    })
    .path()
}

enum Io {
    Plain(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>),
}

/// A request as the upstream received it.
#[derive(Clone, Debug)]
pub(crate) struct Seen {
    pub method: String,
    pub path_and_query: String,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    /// Trailer fields, when the request had any.
    pub trailers: Option<http::HeaderMap>,
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum Behaviour {
    /// 200 with a small JSON body.
    Ok,
    /// Waits, then answers 200.
    Delay(Duration),
    /// 200 with this JSON body.
    Json(&'static str),
    /// 201 with a body and `Location` naming the request's number (1, 2, ...), so a replayed
    /// response can be told from a second execution.
    Created,
    /// This status with a small JSON body.
    Status(u16),
    /// Waits, then answers as [`Behaviour::Created`]: a payment that takes its time.
    DelayCreated(Duration),
    /// 200 at once, then a 64 KiB body in 1 KiB pieces 50 ms apart (a slow download).
    Trickle,
    /// Reads the request and never answers.
    Hang,
    /// Reads the request, then resets the connection before any byte of an answer.
    ResetBeforeHead,
    /// Sends the head (Content-Length 1000) and 10 bytes of body, then resets.
    ResetMidBody,
}

impl Behaviour {
    /// The behaviours played on the bytes of the connection (a hand-written HTTP/1.1 server):
    /// a plain connection accepted while one of these is set is served that way, each request
    /// as the behaviour set when it arrives ([`Behaviour::Ok`] for any other).
    fn on_the_wire(self) -> bool {
        matches!(
            self,
            Behaviour::Hang | Behaviour::ResetBeforeHead | Behaviour::ResetMidBody
        )
    }
}

/// An in-process upstream that records every request it receives; its behaviour can be
/// switched while it runs ([`Upstream::set`]).
pub(crate) struct Upstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    behaviour: Arc<Mutex<Behaviour>>,
}

impl Upstream {
    pub(crate) async fn start(behaviour: Behaviour) -> Upstream {
        Upstream::start_with(behaviour, None).await
    }

    /// An upstream that terminates TLS with the dev server certificate and requires a client
    /// certificate from the dev CA; it records the thumbprint of the certificate it saw in the
    /// `x-test-peer-cert` pseudo-header of each [`Seen`].
    pub(crate) async fn start_tls(behaviour: Behaviour) -> Upstream {
        use rustls_pki_types::pem::PemObject;
        let certs = certs();
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls_pki_types::CertificateDer::from_pem_file(certs.join("ca.pem")).unwrap())
            .unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
            .build()
            .unwrap();
        let chain: Vec<_> =
            rustls_pki_types::CertificateDer::pem_file_iter(certs.join("server.pem"))
                .unwrap()
                .map(|c| c.unwrap())
                .collect();
        let key = rustls_pki_types::PrivateKeyDer::from_pem_file(certs.join("server.key")).unwrap();
        let mut cfg = rustls::ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .unwrap();
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Upstream::start_with(
            behaviour,
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(cfg))),
        )
        .await
    }

    async fn start_with(behaviour: Behaviour, tls: Option<tokio_rustls::TlsAcceptor>) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Upstream::serve_with(listener, behaviour, tls)
    }

    /// An upstream on `listener` (e.g. a revived [`Upstream::dead_addr`]).
    pub(crate) fn serve(listener: TcpListener, behaviour: Behaviour) -> Upstream {
        Upstream::serve_with(listener, behaviour, None)
    }

    fn serve_with(
        listener: TcpListener,
        behaviour: Behaviour,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Upstream {
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let rec = Arc::clone(&seen);
        let behaviour = Arc::new(Mutex::new(behaviour));
        let current = Arc::clone(&behaviour);
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let rec = Arc::clone(&rec);
                let tls = tls.clone();
                let current = Arc::clone(&current);
                tokio::spawn(async move {
                    let wire = current.lock().unwrap().on_the_wire();
                    if tls.is_none() && wire {
                        return on_the_wire(tcp, &rec, &current).await;
                    }
                    let (io, peer_cert) = match tls {
                        None => (Io::Plain(tcp), None),
                        Some(acceptor) => {
                            let Ok(s) = acceptor.accept(tcp).await else {
                                return;
                            };
                            let thumb = s
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|c| c.first())
                                .map(|c| portcullis_crypto::pki::thumbprint_s256(c.as_ref()));
                            (Io::Tls(Box::new(s)), thumb)
                        }
                    };
                    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let rec = Arc::clone(&rec);
                        let peer_cert = peer_cert.clone();
                        let behaviour = *current.lock().unwrap();
                        async move {
                            let (mut parts, body) = req.into_parts();
                            if let Some(t) = peer_cert {
                                parts.headers.insert("x-test-peer-cert", t.parse().unwrap());
                            }
                            let collected = body.collect().await.ok();
                            let trailers = collected.as_ref().and_then(|c| c.trailers().cloned());
                            let body = collected.map(|c| c.to_bytes()).unwrap_or_default();
                            let n = {
                                let mut seen = rec.lock().unwrap();
                                seen.push(Seen {
                                    method: parts.method.to_string(),
                                    path_and_query: parts
                                        .uri
                                        .path_and_query()
                                        .map(|p| p.to_string())
                                        .unwrap_or_default(),
                                    headers: parts.headers,
                                    body,
                                    trailers,
                                });
                                seen.len()
                            };
                            if let Behaviour::Delay(d) | Behaviour::DelayCreated(d) = behaviour {
                                tokio::time::sleep(d).await;
                            }
                            if behaviour.on_the_wire() {
                                // A connection that was open before the switch: hang, or close
                                // it without an answer (hyper cannot reset it mid-body).
                                if matches!(behaviour, Behaviour::Hang) {
                                    tokio::time::sleep(Duration::from_secs(3600)).await;
                                }
                                return Err("scripted failure");
                            }
                            if let Behaviour::Trickle = behaviour {
                                return Ok(trickle());
                            }
                            let body: Bytes = match behaviour {
                                Behaviour::Json(j) => Bytes::from_static(j.as_bytes()),
                                Behaviour::Created | Behaviour::DelayCreated(_) => {
                                    Bytes::from(format!("{{\"Data\":{{\"PaymentId\":\"p-{n}\"}}}}"))
                                }
                                _ => Bytes::from_static(b"{\"Data\":{}}"),
                            };
                            let mut r = http::Response::new(Full::new(body).boxed_unsync());
                            match behaviour {
                                Behaviour::Created | Behaviour::DelayCreated(_) => {
                                    *r.status_mut() = http::StatusCode::CREATED;
                                    r.headers_mut().insert(
                                        "location",
                                        format!("/payments/p-{n}").parse().unwrap(),
                                    );
                                }
                                Behaviour::Status(s) => {
                                    *r.status_mut() = http::StatusCode::from_u16(s).unwrap();
                                }
                                _ => {}
                            }
                            r.headers_mut()
                                .insert("content-type", "application/json".parse().unwrap());
                            r.headers_mut()
                                .insert("connection", "x-upstream-secret".parse().unwrap());
                            r.headers_mut()
                                .insert("x-upstream-secret", "hop".parse().unwrap());
                            Ok::<_, &'static str>(r)
                        }
                    });
                    let mut b = auto::Builder::new(TokioExecutor::new());
                    b.http1().timer(TokioTimer::new());
                    let _ = match io {
                        Io::Plain(t) => b.serve_connection(TokioIo::new(t), svc).await,
                        Io::Tls(t) => b.serve_connection(TokioIo::new(*t), svc).await,
                    };
                });
            }
        });
        Upstream {
            addr,
            seen,
            behaviour,
        }
    }

    /// Switches what the upstream does with the requests that arrive from now on.
    pub(crate) fn set(&self, behaviour: Behaviour) {
        *self.behaviour.lock().unwrap() = behaviour;
    }

    /// An address where nothing listens: a socket bound there without listening (a connect
    /// is refused), kept for the life of the test process so that no other test's listener
    /// can be given the port meanwhile (binding and closing a listener left a window in which
    /// a test running beside this one could take the port and answer). [`Upstream::revive`]
    /// makes it listen.
    pub(crate) async fn dead_addr() -> SocketAddr {
        // No SO_REUSEADDR on this socket: no other socket can share the port.
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let a = s.local_addr().unwrap();
        DEAD.lock().unwrap().push(s);
        a
    }

    /// The listener on a [`Upstream::dead_addr`]: the same socket, now listening.
    pub(crate) fn revive(addr: SocketAddr) -> TcpListener {
        let mut dead = DEAD.lock().unwrap();
        let i = dead
            .iter()
            .position(|s| s.local_addr().ok() == Some(addr))
            .expect("an address from dead_addr");
        dead.swap_remove(i).listen(1024).unwrap()
    }

    pub(crate) fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub(crate) fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

/// Serves a plain connection by hand (HTTP/1.1, requests without a body), so that the
/// behaviours [`Behaviour::on_the_wire`] can hang or reset it; each request is recorded (method,
/// target and headers) and played as the behaviour set when it arrives.
async fn on_the_wire(
    mut tcp: tokio::net::TcpStream,
    rec: &Mutex<Vec<Seen>>,
    current: &Mutex<Behaviour>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(k) => buf.extend_from_slice(&chunk[..k]),
            }
        }
        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let head: Vec<u8> = buf.drain(..end).collect();
        rec.lock().unwrap().push(parse_head(&head));
        let behaviour = *current.lock().unwrap();
        match behaviour {
            Behaviour::Hang => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                return;
            }
            Behaviour::ResetBeforeHead => {
                let _ = tcp.set_zero_linger();
                return;
            }
            Behaviour::ResetMidBody => {
                let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{\"Data\":{";
                let _ = tcp.write_all(head.as_bytes()).await;
                let _ = tcp.flush().await;
                tokio::time::sleep(Duration::from_millis(100)).await;
                let _ = tcp.set_zero_linger();
                return;
            }
            _ => {
                let body = "{\"Data\":{}}";
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                if tcp.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// The request line and header fields of an HTTP/1.1 request head, as a [`Seen`].
fn parse_head(head: &[u8]) -> Seen {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split(' ');
    let method = first.next().unwrap_or_default().to_string();
    let path_and_query = first.next().unwrap_or_default().to_string();
    let mut headers = http::HeaderMap::new();
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            if let (Ok(n), Ok(v)) = (
                http::HeaderName::from_bytes(name.trim().as_bytes()),
                http::HeaderValue::from_str(value.trim()),
            ) {
                headers.append(n, v);
            }
        }
    }
    Seen {
        method,
        path_and_query,
        headers,
        body: Bytes::new(),
        trailers: None,
    }
}

/// The [`Behaviour::Trickle`] answer: 64 pieces of 1 KiB, 50 ms apart.
fn trickle() -> http::Response<UpstreamBody> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    tokio::spawn(async move {
        for _ in 0..64 {
            if tx.send(Bytes::from(vec![b'x'; 1024])).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let mut r = http::Response::new(Channel(rx).boxed_unsync());
    r.headers_mut()
        .insert("content-type", "application/octet-stream".parse().unwrap());
    r
}

type UpstreamBody = http_body_util::combinators::UnsyncBoxBody<Bytes, std::convert::Infallible>;

/// A body fed by a channel: it ends when the sender is dropped, and never while it lives.
pub(crate) struct Channel(pub tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for Channel {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|b| b.map(|b| Ok(hyper::body::Frame::data(b))))
    }
}

/// The sockets behind [`Upstream::dead_addr`].
static DEAD: Mutex<Vec<tokio::net::TcpSocket>> = Mutex::new(Vec::new());

pub(crate) const POLICY: &str = r#"
group: test
upstream: bank
routes:
  - id: accounts.list
    method: GET
    path: /open-banking/v3.1/aisp/accounts
  - id: accounts.get
    method: GET
    path: /open-banking/v3.1/aisp/accounts/{AccountId}
  - id: consents.create
    method: POST
    path: /open-banking/v3.1/pisp/domestic-payment-consents
    body_limit: 1024
  - id: public.status
    method: GET
    path: /status
    client_cert: optional
"#;

/// A duration in the config's text form (`"250ms"`, `"5s"`): a typed field's value.
pub(crate) fn dur(text: &str) -> ConfigDuration {
    ConfigDuration(ConfigDuration::parse(text).unwrap_or_else(|e| panic!("duration: {e}")))
}

/// The config every test starts from: the listener on 127.0.0.1:0 with the dev certificates
/// (client certificates required, 2 s handshakes, 4 KiB default body limit), the admin
/// listener, one `bank` upstream at `upstream` (500 ms connect, 5 s response), the file audit
/// sink `audit.log`, the `policies` directory and a 5 s drain.
pub(crate) fn base_config(upstream: SocketAddr) -> FileConfig {
    let c = |f: &str| certs().join(f).display().to_string();
    FileConfig {
        listener: FileListener {
            address: "127.0.0.1:0".into(),
            tls: FileTls {
                certificate: c("server.pem"),
                private_key: c("server.key"),
                client_ca: vec![c("ca.pem")],
                crl: vec![c("ca.crl")],
                client_auth: Some("required".into()),
                handshake_timeout: Some(dur("2s")),
                ..FileTls::default()
            },
            limits: FileLimits {
                default_body_limit: Some(4096),
                ..FileLimits::default()
            },
            ..FileListener::default()
        },
        admin: Some(FileAdmin {
            address: "127.0.0.1:0".into(),
        }),
        upstreams: [("bank".to_string(), upstream_at(upstream))].into(),
        audit: FileAudit {
            sink: Some("file".into()),
            path: Some("audit.log".into()),
            ..FileAudit::default()
        },
        policies: vec!["policies".into()],
        shutdown: FileShutdown {
            drain_timeout: Some(dur("5s")),
            ..FileShutdown::default()
        },
        ..FileConfig::default()
    }
}

/// A plain-HTTP upstream at `addr` with a 500 ms connect and 5 s response timeout.
pub(crate) fn upstream_at(addr: SocketAddr) -> FileUpstream {
    FileUpstream {
        url: format!("http://{addr}"),
        connect_timeout: Some(dur("500ms")),
        response_timeout: Some(dur("5s")),
        ..FileUpstream::default()
    }
}

/// An issuer whose keys are read from the key-set file `jwks`.
pub(crate) fn file_issuer(issuer: &str, audience: &str, jwks: &Path) -> FileIssuer {
    FileIssuer {
        issuer: issuer.into(),
        audience: audience.into(),
        jwks: Some(FileJwks {
            file: Some(jwks.display().to_string()),
            ..FileJwks::default()
        }),
        ..FileIssuer::default()
    }
}

/// Options for one proxy under test.
pub(crate) struct Options {
    /// The config file as a value, written out as JSON (which is YAML) by [`Proxy::start`];
    /// tests change its typed fields. Default: [`base_config`].
    pub config: FileConfig,
    pub policy: String,
    /// The clock token and DPoP checks read (default: the system clock).
    pub clock: Option<Arc<dyn portcullis_base::clock::Clock>>,
}

impl Options {
    pub(crate) fn new(upstream: SocketAddr) -> Options {
        Options {
            config: base_config(upstream),
            policy: POLICY.to_string(),
            clock: None,
        }
    }

    /// The `bank` upstream's entry.
    pub(crate) fn bank(&mut self) -> &mut FileUpstream {
        self.config
            .upstreams
            .get_mut("bank")
            .expect("a bank upstream")
    }

    /// The config file's text: [`Options::config`] serialized as JSON (which is YAML).
    pub(crate) fn config_text(&self) -> String {
        serde_json::to_string_pretty(&self.config).expect("the config serializes")
    }
}

pub(crate) struct Proxy {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    pub shared: Arc<Shared>,
    pub running: Option<Running>,
}

impl Proxy {
    pub(crate) async fn start(o: Options) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("policies")).unwrap();
        std::fs::write(dir.path().join("policies/test.yaml"), &o.policy).unwrap();
        let path = dir.path().join("portcullis.yaml");
        std::fs::write(&path, o.config_text()).unwrap();
        let config = Config::load(&path).unwrap_or_else(|e| panic!("config: {e}"));
        let audit = AuditLog::start(&config.audit).unwrap();
        let clock = o
            .clock
            .clone()
            .unwrap_or_else(|| Arc::new(portcullis_base::clock::SystemClock));
        let shared = Arc::new(Shared::with_clock(config, audit, Some(path), clock));
        let running = portcullis_proxy::start(Arc::clone(&shared)).await.unwrap();
        Proxy {
            addr: running.addr,
            admin: running.admin_addr.unwrap(),
            dir,
            shared,
            running: Some(running),
        }
    }

    pub(crate) fn config_path(&self) -> PathBuf {
        self.dir.path().join("portcullis.yaml")
    }

    /// The config file as it is on disk now, as a typed value.
    pub(crate) fn file_config(&self) -> FileConfig {
        let text = std::fs::read_to_string(self.config_path()).unwrap();
        serde_json::from_str(&text).expect("the config file is the kit's JSON")
    }

    /// Rewrites the config file through `edit` on its typed value (for a reload to pick up).
    pub(crate) fn edit_config(&self, edit: impl FnOnce(&mut FileConfig)) {
        let mut c = self.file_config();
        edit(&mut c);
        let text = serde_json::to_string_pretty(&c).expect("the config serializes");
        std::fs::write(self.config_path(), text).unwrap();
    }

    /// A connected client presenting `identity` (`tpp1`, `revoked`, ... or `None`).
    pub(crate) async fn client(
        &self,
        identity: Option<&str>,
        h2: bool,
    ) -> Result<Conn, portcullis_tools::client::BoxError> {
        connect(self.addr, identity, h2).await
    }

    /// Sends a GET with a fresh interaction id as TPP One over HTTP/1.1.
    pub(crate) async fn get(&self, path: &str) -> (Answer, String) {
        self.send(req("GET", path).body(Full::new(Bytes::new())).unwrap())
            .await
    }

    /// Sends `r` (adding a fresh interaction id) as TPP One; returns the answer and the id.
    pub(crate) async fn send(&self, mut r: http::Request<Full<Bytes>>) -> (Answer, String) {
        let id = uuid::Uuid::new_v4().to_string();
        r.headers_mut()
            .insert("x-fapi-interaction-id", id.parse().unwrap());
        let mut c = self.client(Some("tpp1"), false).await.expect("connect");
        (c.send(r).await.expect("send"), id)
    }

    /// Every audit record written so far, in the inline form: a request record carries its
    /// connection's members (`conn_id`, `peer`, `client_cert_thumbprint`, ...), and the
    /// `connection` records it named are folded in and left out (see `raw_audit`).
    pub(crate) fn audit(&self) -> Vec<serde_json::Value> {
        portcullis_audit::resolve::inline_file(self.raw_audit())
    }

    /// Every audit record written so far, exactly as written (`connection` records included).
    pub(crate) fn raw_audit(&self) -> Vec<serde_json::Value> {
        raw_audit_file(&self.dir.path().join("audit.log"))
    }

    /// Waits for the audit records matching `pred`; returns them once `n` exist.
    pub(crate) async fn audit_where(
        &self,
        n: usize,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Vec<serde_json::Value> {
        for _ in 0..200 {
            let found: Vec<_> = self.audit().into_iter().filter(|r| pred(r)).collect();
            if found.len() >= n {
                // Give a duplicate a chance to show up before we say "exactly n".
                tokio::time::sleep(Duration::from_millis(20)).await;
                return self.audit().into_iter().filter(|r| pred(r)).collect();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.audit().into_iter().filter(|r| pred(r)).collect()
    }

    /// The one audit record of interaction `id`.
    pub(crate) async fn audit_of(&self, id: &str) -> serde_json::Value {
        let recs = self.audit_where(1, |r| r["interaction_id"] == id).await;
        assert_eq!(recs.len(), 1, "exactly one audit record for {id}: {recs:?}");
        recs.into_iter().next().unwrap()
    }

    /// Whether `/readyz` says 200 within `limit` (asked every 100 ms).
    pub(crate) async fn ready_within(&self, limit: Duration) -> bool {
        let t = std::time::Instant::now();
        while t.elapsed() < limit {
            if self.admin_get("/readyz").await.0 == 200 {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    pub(crate) async fn admin_get(&self, path: &str) -> (u16, String) {
        let mut tcp = tokio::net::TcpStream::connect(self.admin).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
        tcp.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        tcp.read_to_end(&mut out).await.unwrap();
        let text = String::from_utf8_lossy(&out).to_string();
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
        (status, body)
    }

    /// A TLS connection to the proxy presenting `identity` (`tpp1`, ... or `None`), offering
    /// only `h2` or only `http/1.1`, for tests that write bytes or drive a protocol themselves.
    pub(crate) async fn tls(
        &self,
        identity: Option<&str>,
        h2: bool,
    ) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
        let certs = certs();
        let id = identity.map(|i| {
            (
                certs.join(format!("{i}.pem")),
                certs.join(format!("{i}.key")),
            )
        });
        let cfg = tls_config(
            &certs.join("ca.pem"),
            id.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
            h2,
        )
        .map_err(|e| e.to_string())?;
        let tcp = tokio::net::TcpStream::connect(self.addr)
            .await
            .map_err(|e| e.to_string())?;
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        tokio_rustls::TlsConnector::from(cfg)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))
    }

    /// Writes raw bytes on a TLS connection as TPP One and reads until the server closes or
    /// `wait` passes.
    pub(crate) async fn raw(&self, bytes: &[u8], wait: Duration) -> String {
        let mut tls = self.tls(Some("tpp1"), false).await.unwrap();
        tls.write_all(bytes).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(wait, tls.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).to_string()
    }
}

/// One proxy under test and what a test reaches it through: the proxy, its recording `bank`
/// upstream, the manual clock its token, DPoP and signature checks read (when the test runs on
/// one) and the directory holding the files its config names (key sets, client keys,
/// consents). A test file adds its own methods (`impl Env` in the file) and, when it has keys
/// of its own, wraps it (`Lab` in support/attack.rs) and dereferences to it.
pub(crate) struct Env {
    pub p: Proxy,
    pub up: Upstream,
    pub clock: Option<Arc<portcullis_base::clock::ManualClock>>,
    pub dir: tempfile::TempDir,
}

impl Env {
    /// Starts the proxy from `o` in front of `up`; with `now`, its checks read a manual clock
    /// set to that time (otherwise the clock `o` names, by default the system clock). `dir`
    /// lives as long as the environment.
    pub(crate) async fn start(
        o: Options,
        up: Upstream,
        dir: tempfile::TempDir,
        now: Option<i64>,
    ) -> Env {
        match now {
            Some(t) => {
                let clock = Arc::new(portcullis_base::clock::ManualClock::new(t));
                Env::on_clock(o, up, dir, clock).await
            }
            None => Env {
                p: Proxy::start(o).await,
                up,
                clock: None,
                dir,
            },
        }
    }

    /// As [`Env::start`] on a manual `clock` that other environments may share (a fleet).
    pub(crate) async fn on_clock(
        mut o: Options,
        up: Upstream,
        dir: tempfile::TempDir,
        clock: Arc<portcullis_base::clock::ManualClock>,
    ) -> Env {
        o.clock = Some(clock.clone() as Arc<dyn portcullis_base::clock::Clock>);
        Env {
            p: Proxy::start(o).await,
            up,
            clock: Some(clock),
            dir,
        }
    }

    /// The manual clock (for an environment started with one).
    pub(crate) fn clock(&self) -> &portcullis_base::clock::ManualClock {
        self.clock
            .as_deref()
            .expect("an environment on a manual clock")
    }
}

pub(crate) fn req(method: &str, path: &str) -> http::request::Builder {
    http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
}

/// Asserts a refusal three ways: status and reason, nothing upstream, one audit record.
pub(crate) async fn assert_refused(
    p: &Proxy,
    up: &Upstream,
    a: &Answer,
    id: &str,
    status: u16,
    reason: &str,
) {
    assert_eq!(
        a.status.as_u16(),
        status,
        "status; body {}",
        String::from_utf8_lossy(&a.body)
    );
    let j = a.json();
    assert_eq!(j["reason"], reason, "reason in {j}");
    assert_eq!(a.headers["content-type"], "application/problem+json");
    assert_eq!(a.headers["x-fapi-interaction-id"], id);
    assert_eq!(j["interaction_id"], id);
    assert_eq!(up.count(), 0, "upstream must receive nothing");
    let rec = p.audit_of(id).await;
    assert_eq!(rec["reason"], reason);
    assert_eq!(rec["status"], status);
    assert_eq!(rec["decision"], "deny");
}

/// TLS with the dev server certificate and no client authentication (the kit's HTTPS
/// endpoints).
fn dev_server_acceptor() -> tokio_rustls::TlsAcceptor {
    use rustls_pki_types::pem::PemObject;
    let certs = certs();
    let chain: Vec<_> = rustls_pki_types::CertificateDer::pem_file_iter(certs.join("server.pem"))
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_file(certs.join("server.key")).unwrap();
    let cfg = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
}

/// How a [`Source`] answers.
#[derive(Clone, Debug)]
pub(crate) enum Reply {
    /// This status and body.
    With(u16, String),
    /// Never (the request hangs).
    Hang,
}

/// An HTTPS endpoint (dev server certificate) whose answer the test switches: a key-set,
/// consent or introspection service that is up, down, slow or wrong.
pub(crate) struct Source {
    pub addr: SocketAddr,
    answer: Arc<Mutex<Reply>>,
    hits: Arc<std::sync::atomic::AtomicUsize>,
}

impl Source {
    pub(crate) async fn start(answer: Reply) -> Source {
        let acceptor = dev_server_acceptor();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let answer = Arc::new(Mutex::new(answer));
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (a, h) = (answer.clone(), hits.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = l.accept().await {
                let (acceptor, a, h) = (acceptor.clone(), a.clone(), h.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |_req| {
                        let (a, h) = (a.clone(), h.clone());
                        async move {
                            h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            let answer = a.lock().unwrap().clone();
                            let (status, body) = match answer {
                                Reply::With(s, b) => (s, b),
                                Reply::Hang => {
                                    tokio::time::sleep(Duration::from_secs(3600)).await;
                                    (500, String::new())
                                }
                            };
                            let mut r = http::Response::new(Full::new(Bytes::from(body)));
                            *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
                            Ok::<_, std::convert::Infallible>(r)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
                });
            }
        });
        Source { addr, answer, hits }
    }

    /// Switches the answer to the requests from now on.
    pub(crate) fn set(&self, a: Reply) {
        *self.answer.lock().unwrap() = a;
    }

    /// The requests received so far.
    pub(crate) fn hits(&self) -> usize {
        self.hits.load(std::sync::atomic::Ordering::SeqCst)
    }
}

pub(crate) type Handler = Arc<dyn Fn(&http::request::Parts, &[u8]) -> (u16, String) + Send + Sync>;

/// An HTTPS endpoint (dev server certificate) answering with a handler the test supplies.
pub(crate) async fn https_endpoint(handler: Handler) -> std::net::SocketAddr {
    https_endpoint_after(Duration::ZERO, handler).await
}

/// [`https_endpoint`] that waits `delay` before each answer (a slow key, consent or
/// introspection service).
pub(crate) async fn https_endpoint_after(
    delay: Duration,
    handler: Handler,
) -> std::net::SocketAddr {
    serve_https(dev_server_acceptor(), delay, handler).await
}

/// An HTTPS endpoint that refuses, in the TLS handshake, every client without a certificate
/// from the dev CA (`ca.pem`): a service that requires mutual TLS.
pub(crate) async fn https_endpoint_requiring_client_cert(handler: Handler) -> std::net::SocketAddr {
    use rustls_pki_types::pem::PemObject;
    let certs = certs();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(certs.join("ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
        .build()
        .unwrap();
    let chain: Vec<_> = rustls_pki_types::CertificateDer::pem_file_iter(certs.join("server.pem"))
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_file(certs.join("server.key")).unwrap();
    let cfg = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap();
    serve_https(
        tokio_rustls::TlsAcceptor::from(Arc::new(cfg)),
        Duration::ZERO,
        handler,
    )
    .await
}

async fn serve_https(
    acceptor: tokio_rustls::TlsAcceptor,
    delay: Duration,
    handler: Handler,
) -> std::net::SocketAddr {
    use http_body_util::BodyExt;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else {
                return;
            };
            let (acceptor, handler) = (acceptor.clone(), handler.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let handler = handler.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|c| c.to_bytes())
                                .unwrap_or_default();
                            tokio::time::sleep(delay).await;
                            let (status, text) = handler(&parts, &body);
                            let mut r = http::Response::new(Full::new(Bytes::from(text)));
                            *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
                            Ok::<_, std::convert::Infallible>(r)
                        }
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    addr
}

/// A PEM CRL of the dev CA in `certs` (signed with its `ca.key`) revoking the certificates
/// named (`tpp1`, ...), current until `next_update` and issued a minute ago, or a day before
/// `next_update` when that is earlier (so a CRL with a nearer `next_update` is an older one),
/// numbered by the clock.
pub(crate) fn dev_ca_crl(
    certs: &Path,
    revoked: &[&str],
    next_update: time::OffsetDateTime,
) -> String {
    use rustls_pki_types::pem::PemObject;
    let ca_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(certs.join("ca.key")).unwrap()).unwrap();
    // The dev CA's name, in the order `dev-certs` writes it: the CRL names its issuer by it.
    let mut ca = rcgen::CertificateParams::default();
    ca.distinguished_name = rcgen::DistinguishedName::new();
    ca.distinguished_name
        .push(rcgen::DnType::OrganizationName, "portcullis dev");
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "portcullis dev CA");
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let now = time::OffsetDateTime::now_utc();
    let revoked_certs = revoked
        .iter()
        .map(|name| {
            let der =
                rustls_pki_types::CertificateDer::from_pem_file(certs.join(format!("{name}.pem")))
                    .unwrap();
            let cert = portcullis_crypto::pki::ClientCert::from_der(der.as_ref()).unwrap();
            rcgen::RevokedCertParams {
                serial_number: rcgen::SerialNumber::from_slice(&cert.serial_der),
                revocation_time: now - time::Duration::minutes(1),
                reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                invalidity_date: None,
            }
        })
        .collect();
    // A positive CRL number that grows with the clock (nanoseconds, 63 bits).
    let number = (now.unix_timestamp_nanos() as i64).to_be_bytes();
    rcgen::CertificateRevocationListParams {
        this_update: (now - time::Duration::minutes(1)).min(next_update - time::Duration::days(1)),
        next_update,
        crl_number: rcgen::SerialNumber::from_slice(&number),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(&issuer)
    .unwrap()
    .pem()
    .unwrap()
}

/// A PEM CRL in the dev CA's name, well formed and current, signed by a key that is not the
/// CA's: what someone on the path of an http:// CRL fetch could serve.
pub(crate) fn forged_dev_ca_crl() -> String {
    let mut ca = rcgen::CertificateParams::default();
    ca.distinguished_name = rcgen::DistinguishedName::new();
    ca.distinguished_name
        .push(rcgen::DnType::OrganizationName, "portcullis dev");
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "portcullis dev CA");
    let issuer = rcgen::Issuer::new(ca, rcgen::KeyPair::generate().unwrap());
    let now = time::OffsetDateTime::now_utc();
    rcgen::CertificateRevocationListParams {
        this_update: now,
        next_update: now + time::Duration::days(1),
        crl_number: rcgen::SerialNumber::from_slice(&[0x7f, 1, 2, 3, 4, 5, 6, 7]),
        issuing_distribution_point: None,
        revoked_certs: Vec::new(),
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(&issuer)
    .unwrap()
    .pem()
    .unwrap()
}

/// A TLS connection to a listener at `addr` (the dev server certificate, `localhost`)
/// presenting the dev certificate `identity` (`tpp1`, `revoked`, ... or `None`).
pub(crate) async fn connect(
    addr: SocketAddr,
    identity: Option<&str>,
    h2: bool,
) -> Result<Conn, portcullis_tools::client::BoxError> {
    let certs = certs();
    let id = identity.map(|i| {
        (
            certs.join(format!("{i}.pem")),
            certs.join(format!("{i}.key")),
        )
    });
    let cfg = tls_config(
        &certs.join("ca.pem"),
        id.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
        h2,
    )?;
    Conn::connect(addr, "localhost", cfg).await
}

/// `r` on a new TLS connection as TPP One to the listener at `addr` (a proxy process the test
/// started): the answer, or `None` when the connection or the request failed.
pub(crate) async fn send_fresh(addr: SocketAddr, r: http::Request<Full<Bytes>>) -> Option<Answer> {
    connect(addr, Some("tpp1"), false)
        .await
        .ok()?
        .send(r)
        .await
        .ok()
}

/// The complete records of the audit file at `path` (none when it does not exist yet), exactly
/// as written; for a proxy run as a process as much as for [`Proxy`].
pub(crate) fn raw_audit_file(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    // The writer may be mid-write: only lines that end in a newline are complete.
    let complete = text.rfind('\n').map_or("", |i| &text[..=i]);
    complete
        .lines()
        .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
        .collect()
}

/// `GET path` on a plain-HTTP admin listener (of a proxy run as a process): status and body,
/// or `None` when it does not answer.
pub(crate) async fn admin_get(admin: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut tcp = tokio::net::TcpStream::connect(admin).await.ok()?;
    let head = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    tcp.write_all(head.as_bytes()).await.ok()?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), tcp.read_to_end(&mut raw))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text.get(9..12)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}

/// A loopback address nothing listens on right now (bound and released): for a process the
/// test starts, which binds it next.
pub(crate) fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A child process killed and reaped when the test ends, however it ends.
pub(crate) struct ChildGuard(pub std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Checks that the section of the repository file `rel` between `<!-- NAME: begin -->` and
/// `<!-- NAME: end -->` is exactly `generated`; with `PORTCULLIS_WRITE_DOCS` set, rewrites it.
pub(crate) fn check_generated(rel: &str, name: &str, generated: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    let doc = std::fs::read_to_string(&path).unwrap();
    let (begin, end) = (
        format!("<!-- {name}: begin -->\n"),
        format!("<!-- {name}: end -->"),
    );
    let a = doc.find(&begin).expect("the begin marker") + begin.len();
    let b = doc.find(&end).expect("the end marker");
    if doc[a..b] != *generated && std::env::var_os("PORTCULLIS_WRITE_DOCS").is_some() {
        std::fs::write(&path, format!("{}{generated}{}", &doc[..a], &doc[b..])).unwrap();
        return;
    }
    assert_eq!(
        doc[a..b],
        *generated,
        "{rel} is not what the code generates: run the test with PORTCULLIS_WRITE_DOCS=1"
    );
}

/// The process's log (warnings and above, as JSON lines), captured so the test reads what an
/// operator would.
#[derive(Clone, Default)]
pub(crate) struct Log(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Log {
    /// The one log of this test process (installed on first use).
    pub(crate) fn global() -> Log {
        static LOG: OnceLock<Log> = OnceLock::new();
        LOG.get_or_init(|| {
            let log = Log::default();
            tracing_subscriber::fmt()
                .json()
                .with_max_level(tracing::Level::WARN)
                .with_writer(log.clone())
                .init();
            log
        })
        .clone()
    }

    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Log {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Log {
    type Writer = Log;

    fn make_writer(&'a self) -> Log {
        self.clone()
    }
}

/// Checks what every self-contained HTML report must be: a whole document that loads nothing
/// (no URL of any kind, no script) and draws its plots as inline SVG; panics naming what is wrong.
pub(crate) fn assert_self_contained_html(html: &str, min_svgs: usize) {
    assert!(html.starts_with("<!DOCTYPE html>"), "not a document");
    assert!(html.trim_end().ends_with("</html>"), "not whole");
    let lower = html.to_ascii_lowercase();
    for bad in [
        "http://", "https://", "<script", "src=", "@import", "url(", "<link",
    ] {
        assert!(!lower.contains(bad), "the report contains `{bad}`");
    }
    assert_eq!(
        lower.matches("<svg").count(),
        lower.matches("</svg>").count(),
        "unbalanced SVG"
    );
    assert!(
        lower.matches("<svg").count() >= min_svgs,
        "fewer than {min_svgs} plots"
    );
    assert_eq!(
        lower.matches("<table").count(),
        lower.matches("</table>").count(),
        "unbalanced tables"
    );
}

/// Renders `html` with headless Chromium into `png` (1280 × 2000) when `chromium` is on PATH;
/// returns the screenshot's size in bytes, or `None` without Chromium. The page, the
/// screenshot and Chromium's profile stay under `dir`.
pub(crate) fn screenshot(html: &Path, png: &Path, dir: &Path) -> Option<u64> {
    let found = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("chromium").is_file()));
    if !found {
        eprintln!("chromium is not on PATH: the report is not rendered");
        return None;
    }
    let _ = std::fs::remove_file(png);
    let profile = dir.join("chromium-profile");
    let mut child = std::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--no-first-run",
            "--window-size=1280,2000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", html.display()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start chromium");
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium did not finish within 120 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Some(std::fs::metadata(png).map(|m| m.len()).unwrap_or(0))
}
