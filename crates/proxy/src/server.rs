//! The listener: accept loop, TLS handshake, HTTP/1.1 and HTTP/2 (hyper-util auto), limits,
//! timeouts, idle close, connection cap, graceful drain, the lingering close at the end of a
//! connection (`linger.rs`), and the admin listener.
//!
//! hyper's timers do nothing until a timer is set; both protocol builders get a `TokioTimer`,
//! so `header_read_timeout` (slowloris) and HTTP/2 keep-alive really fire. HTTP/2 is bounded
//! by `max_concurrent_streams`, the pending-accept and local-error reset limits (rapid reset)
//! and `max_header_list_size` (CONTINUATION floods).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, ConfigError, ConfigErrors};
use crate::conn::ConnInfo;
use crate::proxy::{self, full, ProxyBody};
use crate::runtime::{Bound, ListenerControl, Shared};
use portcullis_audit::{HandshakeRecord, Record};
use portcullis_base::text::bounded;

/// A started proxy: its bound addresses and the handle to stop it. Dropping it starts the same
/// drain as [`Running::shutdown`] without waiting for it.
pub struct Running {
    /// The first listener's bound address.
    pub addr: SocketAddr,
    /// Every listener's bound address at start-up, in config order.
    pub addrs: Vec<SocketAddr>,
    pub admin_addr: Option<SocketAddr>,
    pub shared: Arc<Shared>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl Running {
    /// Stops accepting, asks every connection to finish its in-flight requests, and waits up to
    /// the configured drain timeout, then exports the trace spans still queued. Returns whether
    /// every connection closed in time.
    ///
    /// First, for `shutdown.grace`, `/readyz` says 503 while the listener still accepts, so a
    /// load balancer or Kubernetes removes this instance before connections are refused.
    pub async fn shutdown(self) -> bool {
        let grace = self.shared.runtime.load().config.shutdown_grace;
        self.shared.begin_shutdown();
        if !grace.is_zero() {
            tracing::info!(
                grace_ms = grace.as_millis() as u64,
                "not ready; still accepting for the shutdown grace"
            );
            tokio::time::sleep(grace).await;
        }
        self.shutdown.cancel();
        self.tracker.close();
        let drain = self.shared.runtime.load().config.drain_timeout;
        let drained = tokio::time::timeout(drain, self.tracker.wait())
            .await
            .is_ok();
        // The last requests' spans are still queued in the batch exporter; its export runs on
        // this runtime, which is gone once the caller returns.
        self.shared.flush_traces().await;
        drained
    }

    /// A token that, when cancelled, starts the same drain as [`Running::shutdown`].
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // The workers' threads end once their connections have drained.
        self.shutdown.cancel();
        self.tracker.close();
    }
}

/// Binds the listeners and the admin listener and starts serving.
///
/// The data plane is `workers` threads, each with its own single-threaded Tokio runtime,
/// shared by every listener: a connection, the requests on it and the upstream connections
/// they use (one pool per worker, see `upstream.rs`) stay on one thread and one event loop, as
/// in HAProxy or nginx, instead of hopping between the threads of a work-stealing runtime with
/// a wake-up per hand-off. One accept loop per listener on the caller's runtime hands each new
/// connection to the worker with the fewest open connections, so keep-alive load stays
/// balanced (workers racing for accepts left one with most of a load generator's
/// connections). The admin listener, reloads and background refreshes run on the caller's
/// runtime too.
pub async fn start(shared: Arc<Shared>) -> std::io::Result<Running> {
    raise_open_files_limit();
    let config = Arc::clone(&shared.runtime.load().config);
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let mut bound = Vec::new();
    for l in &config.listeners {
        bound.push((l.address, bind(l.address)?));
    }
    let admin_addr = match config.admin {
        Some(a) => {
            let l = TcpListener::bind(a).await?;
            let bound = l.local_addr()?;
            tokio::spawn(admin_loop(l, Arc::clone(&shared), shutdown.clone()));
            Some(bound)
        }
        None => None,
    };
    if let Some(redis) = &shared.redis {
        let weak = Arc::downgrade(&shared);
        tokio::spawn(crate::detection::fleet_sync(
            Arc::clone(&shared.detect),
            Arc::clone(redis),
            Arc::clone(&shared.clock),
            move || {
                weak.upgrade()
                    .map(|s| s.runtime.load().config.detection.clone())
            },
            shutdown.clone(),
        ));
    }
    let mut workers = Vec::with_capacity(config.listener.workers);
    for i in 0..config.listener.workers {
        workers.push(Worker::spawn(i, &shared, &shutdown, &tracker)?);
    }
    let listeners = Arc::new(Listeners {
        workers: Arc::new(workers),
        shutdown: shutdown.clone(),
        handle: tokio::runtime::Handle::current(),
        open: std::sync::Mutex::new(Vec::new()),
    });
    let addrs: Vec<SocketAddr> = bound.iter().map(|(_, (_, a))| *a).collect();
    listeners.apply(&config, bound);
    let _ = shared
        .listeners
        .set(Arc::clone(&listeners) as Arc<dyn ListenerControl>);
    let addr = *addrs
        .first()
        .ok_or_else(|| std::io::Error::other("no listener"))?;
    tracing::info!(addrs = ?addrs, admin = ?admin_addr, workers = config.listener.workers, routes = config.policies.routes().len(), policy_version = %config.policies.version, "portcullis listening");
    Ok(Running {
        addr,
        addrs,
        admin_addr,
        shared,
        shutdown,
        tracker,
    })
}

/// A listening socket, bound and not yet accepting.
fn bind(address: SocketAddr) -> std::io::Result<(std::net::TcpListener, SocketAddr)> {
    // As tokio's `TcpListener::bind`: SO_REUSEADDR, so a restart need not wait out TIME_WAIT.
    let s = if address.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    s.set_reuseaddr(true)?;
    s.bind(address)?;
    let l = s.listen(1024)?;
    let local = l.local_addr()?;
    Ok((l.into_std()?, local))
}

/// The listeners accepting now, and what starting another needs: a reload adds and removes
/// them (see [`Listeners::bind_new`] and [`Listeners::apply`]).
struct Listeners {
    workers: Arc<Vec<Worker>>,
    shutdown: CancellationToken,
    /// The runtime the accept loops run on (the one `start` was called on).
    handle: tokio::runtime::Handle,
    /// Configured address, bound address and the token that stops the listener.
    open: std::sync::Mutex<Vec<(SocketAddr, SocketAddr, CancellationToken)>>,
}

impl ListenerControl for Listeners {
    /// Binds the addresses of `config` that no listener has yet. An address that cannot be
    /// bound is a config error naming the listener, and nothing is bound.
    fn bind_new(&self, config: &Config) -> Result<Bound, ConfigErrors> {
        let open: Vec<SocketAddr> = self
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(a, _, _)| *a)
            .collect();
        let mut bound = Vec::new();
        for (i, l) in config.listeners.iter().enumerate() {
            if open.contains(&l.address) {
                continue;
            }
            match bind(l.address) {
                Ok(b) => bound.push((l.address, b)),
                Err(e) => {
                    let field = if config.listeners.len() == 1
                        && config.listener.hosts[0].groups.is_none()
                    {
                        "listener.address".to_string()
                    } else {
                        format!("listeners[{i}].address")
                    };
                    return Err(ConfigErrors(vec![ConfigError {
                        file: config.source.clone(),
                        field,
                        reason: format!("cannot listen on {}: {e}", l.address),
                    }]));
                }
            }
        }
        Ok(bound)
    }

    /// Starts accepting on `bound` and stops the listeners `config` no longer has: they close
    /// their socket, and their connections finish the requests in flight and close.
    fn apply(&self, config: &Config, bound: Bound) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.retain(|(a, local, stop)| {
            let keep = config.listeners.iter().any(|l| l.address == *a);
            if !keep {
                tracing::info!(address = %a, bound = %local, "listener removed; its connections drain");
                stop.cancel();
            }
            keep
        });
        for (address, (std_listener, local)) in bound {
            let Some(l) = config.listeners.iter().find(|l| l.address == address) else {
                continue;
            };
            let stop = self.shutdown.child_token();
            let slots = Arc::new(Semaphore::new(l.limits.max_connections));
            let workers = Arc::clone(&self.workers);
            let token = stop.clone();
            let _guard = self.handle.enter();
            let listener = match TcpListener::from_std(std_listener) {
                Ok(x) => x,
                Err(e) => {
                    tracing::error!(address = %address, error = %e, "listener could not start");
                    continue;
                }
            };
            self.handle
                .spawn(accept_loop(listener, address, workers, slots, token));
            if !open.iter().any(|(a, _, _)| *a == address) {
                tracing::info!(address = %address, bound = %local, "listener accepting");
            }
            open.push((address, local, stop));
        }
    }
}

/// An accepted connection on its way to a worker: the configured address of its listener,
/// the token that stops that listener, and its connection-cap permit.
struct Handoff {
    tcp: std::net::TcpStream,
    peer: SocketAddr,
    listener: SocketAddr,
    stop: CancellationToken,
    permit: OwnedSemaphorePermit,
}

/// One data-plane thread: where new connections are sent, and how many it serves.
struct Worker {
    tx: tokio::sync::mpsc::UnboundedSender<Handoff>,
    open: Arc<AtomicUsize>,
}

impl Worker {
    fn spawn(
        i: usize,
        shared: &Arc<Shared>,
        shutdown: &CancellationToken,
        tracker: &TaskTracker,
    ) -> std::io::Result<Worker> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Handoff>();
        let open = Arc::new(AtomicUsize::new(0));
        let (shared, shutdown, tracker, count) = (
            Arc::clone(shared),
            shutdown.clone(),
            tracker.clone(),
            Arc::clone(&open),
        );
        std::thread::Builder::new()
            .name(format!("portcullis-worker-{i}"))
            .spawn(move || {
                crate::worker::enter(i + 1);
                shared.metrics.worker_started(i);
                runtime.block_on(async move {
                    // Ends when the process stops: the listeners hold the senders.
                    loop {
                        let h = tokio::select! {
                            h = rx.recv() => match h { Some(h) => h, None => break },
                            _ = shutdown.cancelled() => break,
                        };
                        let count = Arc::clone(&count);
                        let Ok(tcp) = TcpStream::from_std(h.tcp) else {
                            count.fetch_sub(1, Ordering::Relaxed);
                            continue;
                        };
                        let shared = Arc::clone(&shared);
                        let tasks = tracker.clone();
                        let (peer, listener, stop, permit) = (h.peer, h.listener, h.stop, h.permit);
                        tracker.spawn(async move {
                            serve_connection(tcp, peer, listener, shared, stop, tasks).await;
                            count.fetch_sub(1, Ordering::Relaxed);
                            drop(permit);
                        });
                    }
                    // Every connection task lives on this runtime: keep it until they end.
                    tracker.wait().await;
                });
            })?;
        Ok(Worker { tx, open })
    }
}

async fn accept_loop(
    listener: TcpListener,
    address: SocketAddr,
    workers: Arc<Vec<Worker>>,
    slots: Arc<Semaphore>,
    stop: CancellationToken,
) {
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&slots).acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = stop.cancelled() => break,
        };
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => break,
        };
        // Leave this runtime's reactor; the worker registers it with its own.
        let Ok(std_tcp) = tcp.into_std() else {
            continue;
        };
        let Some(w) = workers
            .iter()
            .min_by_key(|w| w.open.load(Ordering::Relaxed))
        else {
            break;
        };
        w.open.fetch_add(1, Ordering::Relaxed);
        let h = Handoff {
            tcp: std_tcp,
            peer,
            listener: address,
            stop: stop.clone(),
            permit,
        };
        if w.tx.send(h).is_err() {
            w.open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Tracks in-flight requests and the last activity on one connection, for the idle timeout.
struct Activity {
    epoch: Instant,
    in_flight: AtomicUsize,
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        self.last_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        Some(self.epoch.elapsed().saturating_sub(last))
    }
}

async fn serve_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    listener_at: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let _ = tcp.set_nodelay(true);
    let rt = shared.runtime.load_full();
    // Removed by a reload between the accept and now: nothing to serve it as.
    let Some(listener) = rt
        .config
        .listeners
        .iter()
        .find(|l| l.address == listener_at)
    else {
        return;
    };
    let accepted = handshake(&rt, listener, tcp).await;
    let (tls, host) = match accepted {
        Ok(s) => s,
        Err(failure) => {
            shared.metrics.handshake_failure(failure.as_str());
            tracing::info!(%peer, failure = failure.as_str(), "tls handshake failed");
            shared.audit.emit(Record::TlsHandshake(HandshakeRecord {
                peer: peer.to_string(),
                failure: failure.as_str(),
            }));
            return;
        }
    };
    let max_detached = listener.limits.h2_max_concurrent_streams as usize;
    let info = match ConnInfo::from_stream(
        shared.next_conn_id(),
        &tls,
        tasks,
        max_detached,
        listener_at,
        &host,
        shared.metrics.host_requests(listener_at, host.label()),
    ) {
        Ok(i) => Arc::new(i),
        Err(_) => return,
    };
    let info_id = info.id;
    shared.metrics.connection_opened();
    if let Some(c) = &info.client_cert {
        shared.metrics.client_cert_seen(&c.thumbprint, c.not_after);
    }
    let limits = listener.limits.clone();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // hyper's own limits are a backstop at twice ours, so that our checks — which give a
        // reason code and an audit record — decide every ordinary case.
        .max_buf_size((2 * (limits.max_header_bytes + limits.max_uri_bytes)).max(8192))
        .max_headers((2 * limits.max_headers).max(100))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_pending_accept_reset_streams(limits.h2_max_pending_reset_streams)
        .max_local_error_reset_streams(limits.h2_max_local_error_reset_streams)
        .max_header_list_size((2 * (limits.max_header_bytes + limits.max_uri_bytes)) as u32)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    drop(rt);

    let activity = Arc::new(Activity {
        epoch: Instant::now(),
        in_flight: AtomicUsize::new(0),
        last_ms: AtomicU64::new(0),
    });
    let svc = {
        let activity = Arc::clone(&activity);
        let shared = Arc::clone(&shared);
        service_fn(move |req: Request<Incoming>| {
            respond(
                req,
                Arc::clone(&info),
                Arc::clone(&shared),
                Arc::clone(&activity),
            )
        })
    };
    let (io, returned) = crate::linger::Returnable::new(tls);
    // The connection lives in this block; when it ends, hyper has dropped the stream and it
    // is back in `returned` for a lingering close.
    {
        let conn = builder.serve_connection(TokioIo::new(io), svc);
        tokio::pin!(conn);
        let shortest = limits
            .max_connection_age
            .map_or(limits.idle_timeout, |a| a.min(limits.idle_timeout));
        let tick = (shortest / 4).max(Duration::from_millis(50));
        let mut closing = false;
        loop {
            tokio::select! {
                res = conn.as_mut() => {
                    if let Err(e) = res {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                        // Requests hyper refused itself never reached our handler: record them.
                        if let Some(failure) = parser_refusal(e.as_ref()) {
                            shared.audit.emit(Record::HttpError(portcullis_audit::HttpErrorRecord {
                                peer: peer.to_string(),
                                conn_id: info_id,
                                failure,
                            }));
                        }
                    }
                    break;
                }
                _ = shutdown.cancelled(), if !closing => {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
                _ = tokio::time::sleep(tick), if !closing => {
                    let too_old = limits
                        .max_connection_age
                        .is_some_and(|max| activity.epoch.elapsed() >= max);
                    if too_old || activity.idle_for().is_some_and(|d| d >= limits.idle_timeout) {
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                    }
                }
            }
        }
    }
    crate::linger::close(&returned).await;
    shared.metrics.connection_closed();
}

/// The future hyper's HTTP/1 dispatcher holds for a request: the request pipeline, boxed.
///
/// hyper allocates room for one service future per HTTP/1 connection when the connection
/// starts and keeps that room while the connection idles between requests. The pipeline's
/// state machine inline would be held by every idle keep-alive connection; boxed, its memory
/// lives only while a request does, at the cost of one allocation per request.
fn respond(
    req: Request<Incoming>,
    info: Arc<ConnInfo>,
    shared: Arc<Shared>,
    activity: Arc<Activity>,
) -> impl std::future::Future<Output = Result<Response<ProxyBody>, std::convert::Infallible>> {
    activity.in_flight.fetch_add(1, Ordering::Relaxed);
    let fut = Box::pin(proxy::handle(req, info, shared));
    async move {
        let r = fut.await;
        activity.touch();
        activity.in_flight.fetch_sub(1, Ordering::Relaxed);
        r
    }
}

/// The TLS handshake with SNI: the ClientHello names the host (exact name, then wildcard,
/// then the listener's default host), and the rest of the handshake is that host's: its
/// certificate, client CAs, CRLs and `client_auth`. No host for the name and no default: the
/// handshake is refused.
async fn handshake(
    rt: &crate::runtime::Runtime,
    listener: &crate::config::Listener,
    tcp: TcpStream,
) -> Result<
    (
        tokio_rustls::server::TlsStream<TcpStream>,
        Arc<crate::config::Host>,
    ),
    crate::tls::HandshakeFailure,
> {
    use crate::tls::HandshakeFailure;
    let started = Instant::now();
    let lazy = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp);
    let start = match tokio::time::timeout(listener.hello_timeout, lazy).await {
        Err(_) => return Err(HandshakeFailure::Timeout),
        Ok(Err(e)) => return Err(HandshakeFailure::classify(&e)),
        Ok(Ok(s)) => s,
    };
    let host = listener
        .host_for_sni(start.client_hello().server_name())
        .ok_or(HandshakeFailure::UnknownServerName)?;
    let host_tls = rt
        .host_tls(&host.key)
        .ok_or(HandshakeFailure::UnknownServerName)?;
    let live = host_tls.live();
    if !live.complete {
        // A CRL URL has not delivered its first CRL: no client certificate's revocation status
        // is known, so none is taken (fail closed); `/readyz` says not ready meanwhile.
        return Err(HandshakeFailure::RevocationUnknown);
    }
    let left = host.tls.handshake_timeout.saturating_sub(started.elapsed());
    let config = Arc::clone(&live.server_config);
    drop(live);
    match tokio::time::timeout(left, start.into_stream(config)).await {
        Err(_) => Err(HandshakeFailure::Timeout),
        Ok(Err(e)) => Err(HandshakeFailure::classify(&e)),
        Ok(Ok(s)) => Ok((s, Arc::clone(host))),
    }
}

async fn admin_loop(listener: TcpListener, shared: Arc<Shared>, shutdown: CancellationToken) {
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
            _ = shutdown.cancelled() => break,
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let shared = Arc::clone(&shared);
                async move { Ok::<_, std::convert::Infallible>(admin(req, &shared, peer).await) }
            });
            let mut b = hyper::server::conn::http1::Builder::new();
            b.timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5));
            let _ = b.serve_connection(TokioIo::new(tcp), svc).await;
        });
    }
}

async fn admin(req: Request<Incoming>, shared: &Shared, peer: SocketAddr) -> Response<ProxyBody> {
    let text = |status: u16, body: String, ctype: &'static str| {
        let mut r = Response::new(full(body.into()));
        *r.status_mut() = http::StatusCode::from_u16(status).unwrap_or_default();
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(ctype),
        );
        r
    };
    let path = req.uri().path();
    if path == "/quarantines" || path.starts_with("/quarantines/") {
        let (status, body) = quarantines(&req, shared, peer).await;
        let mut r = text(status, format!("{body}\n"), "application/json");
        if status == 401 {
            r.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer realm=\"portcullis-admin\""),
            );
        }
        return r;
    }
    if req.method() != http::Method::GET {
        return text(405, "method not allowed\n".into(), "text/plain");
    }
    match req.uri().path() {
        "/healthz" => text(200, "ok\n".into(), "text/plain"),
        "/readyz" => {
            // A small JSON body that names what is missing, for the operator reading a probe.
            let not_ready = shared.not_ready();
            let shutting_down = shared.is_shutting_down();
            let ready = not_ready.is_empty() && !shutting_down;
            let body = serde_json::json!({
                "ready": ready,
                "shutting_down": shutting_down,
                "not_ready": not_ready,
            });
            text(
                if ready { 200 } else { 503 },
                format!("{body}\n"),
                "application/json",
            )
        }
        "/metrics" => text(
            200,
            shared.render_metrics(),
            "text/plain; version=0.0.4; charset=utf-8",
        ),
        _ => text(404, "not found\n".into(), "text/plain"),
    }
}

/// The quarantines: `GET /quarantines` lists them, `DELETE /quarantines/{subject}` lifts one
/// early (`subject` as the list names it, e.g. `cert:<thumbprint>`, percent-encoded where it
/// must be).
///
/// The admin listener is plain HTTP and its other endpoints (probes, metrics) are open to
/// whoever reaches it. These two are not: they answer only a request carrying
/// `Authorization: Bearer <token>` with the token of `detection.admin_token_file` (compared in
/// constant time), and 404 when no token is configured, so a listener without one cannot be
/// used to lift a quarantine. The listener should still be bound to an address only operators
/// reach: the token travels in clear.
async fn quarantines(
    req: &Request<Incoming>,
    shared: &Shared,
    peer: SocketAddr,
) -> (u16, serde_json::Value) {
    let rt = shared.runtime.load();
    let Some(expected) = rt.config.admin_token.as_deref() else {
        return (
            404,
            serde_json::json!({"error": "quarantine administration is not configured (detection.admin_token_file)"}),
        );
    };
    let presented = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !constant_time_eq(presented.as_bytes(), expected.as_bytes()) {
        tracing::warn!(path = %bounded(req.uri().path()), "admin: quarantine request without a valid token");
        return (
            401,
            serde_json::json!({"error": "a valid bearer token is required"}),
        );
    }
    let now = shared.clock.now();
    let path = req.uri().path();
    match (req.method(), path.strip_prefix("/quarantines/")) {
        (&http::Method::GET, None) => {
            let list: Vec<serde_json::Value> = shared
                .detect
                .list(now)
                .into_iter()
                .map(|q| {
                    serde_json::json!({
                        "subject": q.subject,
                        "detector": q.detector.as_str(),
                        "since": portcullis_audit::unix_to_rfc3339(q.since),
                        "until": portcullis_audit::unix_to_rfc3339(q.until),
                        "retry_after_s": (q.until - now).max(0),
                    })
                })
                .collect();
            (200, serde_json::json!({"quarantines": list}))
        }
        (&http::Method::DELETE, Some(subject)) => {
            let decoded = portcullis_base::path::percent_decode(subject);
            let Some(subject) = decoded.and_then(|b| String::from_utf8(b).ok()) else {
                return (400, serde_json::json!({"error": "bad percent-encoding"}));
            };
            // With Redis, lifted for the fleet: the others drop it at their next sync.
            match crate::detection::lift(&shared.detect, shared.redis.as_ref(), &subject).await {
                Ok(true) => {
                    tracing::warn!(subject = %bounded(&subject), "admin: quarantine lifted");
                    shared.audit.emit(crate::record::lifted(&subject, peer));
                    (200, serde_json::json!({"lifted": subject}))
                }
                Ok(false) => (404, serde_json::json!({"error": "not quarantined"})),
                Err(_) => (
                    503,
                    serde_json::json!({"error": "lifted here; the fleet's state (Redis) did not answer: retry"}),
                ),
            }
        }
        _ => (
            405,
            serde_json::json!({"error": "GET /quarantines or DELETE /quarantines/{subject}"}),
        ),
    }
}

/// Equal bytes, in time that depends on the lengths only.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A bounded category for a request the HTTP parser refused before any handler ran.
fn parser_refusal(e: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    let h = e.downcast_ref::<hyper::Error>()?;
    if h.is_parse_too_large() {
        Some("http_headers_too_large")
    } else if h.is_parse() {
        Some("http_malformed")
    } else if h.is_timeout() {
        Some("http_header_timeout")
    } else {
        None
    }
}

/// Raises the soft open-files limit to the hard one, once per process: every connection is a
/// descriptor (two with its upstream), and a soft limit of 1024 — many systems' default —
/// would refuse connections long before `max_connections`.
fn raise_open_files_limit() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
        let l = getrlimit(Resource::Nofile);
        let (Some(before), Some(max)) = (l.current, l.maximum) else {
            return;
        };
        if before >= max {
            tracing::info!(open_files = before, "open-files limit");
            return;
        }
        let raised = Rlimit {
            current: Some(max),
            maximum: Some(max),
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => tracing::info!(from = before, to = max, "open-files limit raised"),
            Err(e) => tracing::warn!(open_files = before, error = %e, "open-files limit could not be raised"),
        }
    });
}

/// Waits for SIGTERM or SIGINT (Ctrl-C).
pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {},
                _ = tokio::signal::ctrl_c() => {},
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(test)]
mod tests {
    fn returned_size<A, B, C, D, F>(_: fn(A, B, C, D) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    fn returned_size3<A, B, C, F>(_: fn(A, B, C) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// hyper keeps room for one service future per HTTP/1 connection for the connection's
    /// whole life: what `respond` returns must stay a pointer and a few counters, not the
    /// request pipeline (which runs to kilobytes), or every idle keep-alive connection holds it.
    #[test]
    fn an_idle_http1_connection_holds_no_request_pipeline() {
        let held = returned_size(super::respond);
        let pipeline = returned_size3(crate::proxy::handle);
        eprintln!("service future {held} bytes; request pipeline {pipeline} bytes");
        assert!(held <= 64, "service future {held} bytes");
        assert!(pipeline > held);
    }
}
