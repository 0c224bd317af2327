//! Redis as banks run it: `rediss://` with a pinned CA, a client certificate and an ACL user
//! whose password comes from a file; and a Redis Sentinel deployment (one master, one replica,
//! three sentinels, all real processes on loopback) failing over while the proxy is under load.
//! During the failover replay and idempotency checks refuse (503, fail closed); after the
//! promotion the proxy recovers by itself, and replay checks wait one replay window because the
//! promoted replica may have missed the last writes.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::redis::{command, RedisServer};
use common::*;
use http_body_util::Full;
use portcullis_base::clock::{Clock, ManualClock};
use portcullis_crypto::jose::sign::SigningKey;
use portcullis_crypto::jose::Alg;
use portcullis_tools::client::Answer;
use serde_json::json;

const NOW: i64 = 1_800_000_000;
const ISS: &str = "https://as.example";
const AUD: &str = "https://rs.example";
const BASE: &str = "https://rs.example";

const PAYMENTS: &str = r#"
group: tls
upstream: bank
routes:
  - id: payments.create
    method: POST
    path: /payments
    body_limit: 4096
    idempotency: required
"#;

const POLICY: &str = r#"
group: ha
upstream: bank
routes:
  - id: dpop.accounts
    method: GET
    path: /accounts
    auth: {profile: fapi2}
  - id: payments.create
    method: POST
    path: /payments
    body_limit: 4096
    idempotency: required
"#;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Every line of a reply to one inline command (read until the server pauses).
fn reply(port: u16, cmd: &str) -> String {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(300)));
    if s.write_all(format!("{cmd}\r\n").as_bytes()).is_err() {
        return String::new();
    }
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).to_string()
}

fn until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

/// The CA, Redis's server certificate (127.0.0.1) and a client certificate, as PEM files.
struct Pki {
    ca: std::path::PathBuf,
    server_cert: std::path::PathBuf,
    server_key: std::path::PathBuf,
    client_cert: std::path::PathBuf,
    client_key: std::path::PathBuf,
}

fn pki(dir: &Path, name: &str) -> Pki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::default();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, format!("{name} Redis CA"));
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let leaf = |sans: Vec<String>, client: bool| {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(sans).unwrap();
        p.extended_key_usages = vec![if client {
            rcgen::ExtendedKeyUsagePurpose::ClientAuth
        } else {
            rcgen::ExtendedKeyUsagePurpose::ServerAuth
        }];
        let cert = p.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf(vec!["127.0.0.1".into(), "localhost".into()], false);
    let (client_cert, client_key) = leaf(vec!["portcullis".into()], true);
    let write = |file: &str, pem: &str| {
        let p = dir.join(format!("{name}-{file}"));
        std::fs::write(&p, pem).unwrap();
        p
    };
    Pki {
        ca: write("ca.pem", &ca_cert.pem()),
        server_cert: write("server.pem", &server_cert),
        server_key: write("server.key", &server_key),
        client_cert: write("client.pem", &client_cert),
        client_key: write("client.key", &client_key),
    }
}

fn tls_state(
    url: &str,
    ca: &Path,
    pki: &Pki,
    password_file: &Path,
) -> portcullis_state::settings::RedisSettings {
    let mut errors = Vec::new();
    let f = FileState {
        backend: Some("redis".into()),
        redis: Some(FileRedis {
            url: url.into(),
            ca: vec![ca.display().to_string()],
            client_certificate: Some(pki.client_cert.display().to_string()),
            client_private_key: Some(pki.client_key.display().to_string()),
            username: Some("portcullis".into()),
            password_file: Some(password_file.display().to_string()),
            command_timeout: Some(dur("500ms")),
            connect_timeout: Some(dur("500ms")),
            health_interval: Some(dur("100ms")),
            ..FileRedis::default()
        }),
        ..FileState::default()
    };
    let c = {
        let mut p = portcullis_base::problems::Problems::new(Path::new("c.yaml"), &mut errors);
        portcullis_state::settings::validate(&mut p, Path::new("/"), &f)
    };
    assert!(errors.is_empty(), "{errors:?}");
    match c.backend {
        portcullis_state::settings::Backend::Redis(r) => r,
        _ => panic!("redis"),
    }
}

fn payment(key: &str) -> http::Request<Full<Bytes>> {
    req("POST", "/payments")
        .header("content-type", "application/json")
        .header("x-idempotency-key", key)
        .header("x-fapi-interaction-id", uuid::Uuid::new_v4().to_string())
        .body(Full::new(Bytes::from_static(
            br#"{"Data":{"Amount":"10.00","Currency":"GBP"}}"#,
        )))
        .unwrap()
}

async fn pay(p: &Proxy, key: &str) -> (Answer, String) {
    let r = payment(key);
    let id = r.headers()["x-fapi-interaction-id"]
        .to_str()
        .unwrap()
        .to_string();
    let mut c = p.client(Some("tpp1"), false).await.unwrap();
    (c.send(r).await.unwrap(), id)
}

async fn readyz_until(p: &Proxy, status: u16, text: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let (s, body) = p.admin_get("/readyz").await;
        if s == status && body.contains(text) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "readyz never answered {status} with `{text}`: {:?}",
        p.admin_get("/readyz").await
    );
}

/// rediss:// with the pinned CA, a client certificate and an ACL user: the proxy works; a wrong
/// CA or a wrong password never connects, and the proxy fails closed (not ready, 503 with a
/// reason, nothing upstream, one audit record).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_pinned_ca_client_certificate_and_acl_user() {
    let dir = tempfile::tempdir().unwrap();
    let good = pki(dir.path(), "good");
    let other = pki(dir.path(), "other");
    let tls_port = free_port();
    let tls_port_s = tls_port.to_string();
    let (cert, key, ca) = (
        good.server_cert.display().to_string(),
        good.server_key.display().to_string(),
        good.ca.display().to_string(),
    );
    let _redis = RedisServer::start_with(&[
        "--tls-port",
        &tls_port_s,
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &ca,
        "--tls-auth-clients",
        "yes",
        "--user",
        "default",
        "off",
        "--user",
        "portcullis",
        "on",
        ">pw-from-a-file",
        "~*",
        "&*",
        "+@all",
    ]);
    let pw = dir.path().join("redis-password");
    std::fs::write(&pw, "pw-from-a-file\n").unwrap();
    let wrong_pw = dir.path().join("wrong-password");
    std::fs::write(&wrong_pw, "not-the-password\n").unwrap();
    let url = format!("rediss://127.0.0.1:{tls_port}/0");

    // The proxy end to end: idempotency on Redis over TLS.
    let up = Upstream::start(Behaviour::Created).await;
    let mut o = Options::new(up.addr);
    o.policy = PAYMENTS.to_string();
    o.config.state = FileState {
        backend: Some("redis".into()),
        redis: Some(FileRedis {
            url: url.clone(),
            ca: vec![good.ca.display().to_string()],
            client_certificate: Some(good.client_cert.display().to_string()),
            client_private_key: Some(good.client_key.display().to_string()),
            username: Some("portcullis".into()),
            password_file: Some(pw.display().to_string()),
            command_timeout: Some(dur("500ms")),
            connect_timeout: Some(dur("500ms")),
            health_interval: Some(dur("100ms")),
            ..FileRedis::default()
        }),
        ..FileState::default()
    };
    let env = Env::start(o, up, tempfile::tempdir().unwrap(), Some(NOW)).await;
    assert!(env.p.ready_within(Duration::from_secs(10)).await);
    let (first, _) = pay(&env.p, "tls-1").await;
    assert_eq!(
        first.status,
        201,
        "{}",
        String::from_utf8_lossy(&first.body)
    );
    let (again, _) = pay(&env.p, "tls-1").await;
    assert_eq!(again.status, 201);
    assert_eq!(again.headers["x-idempotent-replay"], "true");
    assert_eq!(
        env.up.count(),
        1,
        "the retry was answered from Redis over TLS"
    );

    // A proxy that pins another CA: the handshake fails, so it is not ready and refuses.
    let up = Upstream::start(Behaviour::Created).await;
    let mut o = Options::new(up.addr);
    o.policy = PAYMENTS.to_string();
    o.config.state = FileState {
        backend: Some("redis".into()),
        redis: Some(FileRedis {
            url: url.clone(),
            ca: vec![other.ca.display().to_string()],
            client_certificate: Some(good.client_cert.display().to_string()),
            client_private_key: Some(good.client_key.display().to_string()),
            username: Some("portcullis".into()),
            password_file: Some(pw.display().to_string()),
            command_timeout: Some(dur("500ms")),
            connect_timeout: Some(dur("500ms")),
            health_interval: Some(dur("100ms")),
            ..FileRedis::default()
        }),
        ..FileState::default()
    };
    let wrong_ca = Env::start(o, up, tempfile::tempdir().unwrap(), Some(NOW)).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    readyz_until(
        &wrong_ca.p,
        503,
        "the shared state backend (Redis) is unavailable",
        Duration::from_secs(5),
    )
    .await;
    let (a, id) = pay(&wrong_ca.p, "tls-2").await;
    assert_eq!(a.status, 503, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.json()["reason"], "idempotency.unavailable");
    assert_eq!(wrong_ca.up.count(), 0, "the upstream receives nothing");
    let rec = wrong_ca.p.audit_of(&id).await;
    assert_eq!(rec["reason"], "idempotency.unavailable", "{rec}");
    assert_eq!(rec["decision"], "error");

    // A wrong password: not ready, refused; the right one written to the file and the config
    // reloaded (SIGHUP does the same): the proxy reconnects without a restart.
    let rotating = dir.path().join("rotating-password");
    std::fs::write(&rotating, "an-old-password\n").unwrap();
    let up = Upstream::start(Behaviour::Created).await;
    let mut o = Options::new(up.addr);
    o.policy = PAYMENTS.to_string();
    o.config.state = FileState {
        backend: Some("redis".into()),
        redis: Some(FileRedis {
            url: url.clone(),
            ca: vec![good.ca.display().to_string()],
            client_certificate: Some(good.client_cert.display().to_string()),
            client_private_key: Some(good.client_key.display().to_string()),
            username: Some("portcullis".into()),
            password_file: Some(rotating.display().to_string()),
            command_timeout: Some(dur("500ms")),
            connect_timeout: Some(dur("500ms")),
            health_interval: Some(dur("100ms")),
            ..FileRedis::default()
        }),
        ..FileState::default()
    };
    let rotated = Env::start(o, up, tempfile::tempdir().unwrap(), Some(NOW)).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    readyz_until(
        &rotated.p,
        503,
        "the shared state backend (Redis) is unavailable",
        Duration::from_secs(5),
    )
    .await;
    let (a, id) = pay(&rotated.p, "rotated-1").await;
    assert_eq!(a.status, 503);
    assert_eq!(a.json()["reason"], "idempotency.unavailable");
    assert_eq!(rotated.up.count(), 0);
    assert_eq!(
        rotated.p.audit_of(&id).await["reason"],
        "idempotency.unavailable"
    );
    std::fs::write(&rotating, "pw-from-a-file\n").unwrap();
    rotated.p.shared.reload().expect("reload");
    assert!(rotated.p.ready_within(Duration::from_secs(10)).await);
    let (a, _) = pay(&rotated.p, "rotated-1").await;
    assert_eq!(a.status, 201, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(rotated.up.count(), 1);

    // The state directly: the right settings connect, a wrong password or CA never does.
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(NOW));
    let stop = tokio_util::sync::CancellationToken::new();
    use portcullis_state::redis::RedisState;
    let ok = RedisState::start(
        &tls_state(&url, &good.ca, &good, &pw),
        clock.clone(),
        1,
        stop.clone(),
    );
    let bad_pw = RedisState::start(
        &tls_state(&url, &good.ca, &good, &wrong_pw),
        clock.clone(),
        1,
        stop.clone(),
    );
    let bad_ca = RedisState::start(
        &tls_state(&url, &other.ca, &good, &pw),
        clock.clone(),
        1,
        stop.clone(),
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ok.is_up() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(ok.is_up(), "pinned CA, client certificate and ACL user");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!bad_pw.is_up(), "a wrong password never connects");
    assert!(
        !bad_ca.is_up(),
        "a server outside the pinned CA never connects"
    );
    for s in [&ok, &bad_pw, &bad_ca] {
        let m = s.render_metrics(NOW);
        assert!(!m.contains("pw-from-a-file") && !s.endpoint().contains("pw-from"));
    }
    assert!(!format!("{:?}", tls_state(&url, &good.ca, &good, &pw)).contains("pw-from-a-file"));
    stop.cancel();
}

/// A child process killed on drop.
struct Proc(Option<Child>);

impl Proc {
    fn kill(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn redis_binary(names: &[&str]) -> Option<String> {
    names
        .iter()
        .flat_map(|n| [format!("/usr/bin/{n}"), format!("/usr/local/bin/{n}")])
        .find(|p| Path::new(p).exists())
}

fn spawn(args: &[String]) -> Proc {
    let server = redis_binary(&["redis-server"]).unwrap_or_else(|| "redis-server".into());
    Proc(Some(
        Command::new(server)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (./test.sh installs it)"),
    ))
}

fn spawn_sentinel(conf: &Path) -> Proc {
    // Debian's `redis-sentinel` (./test.sh installs it); the same binary as
    // `redis-server --sentinel`.
    let child = match redis_binary(&["redis-sentinel"]) {
        Some(b) => Command::new(b)
            .arg(conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn(),
        None => {
            Command::new(redis_binary(&["redis-server"]).unwrap_or_else(|| "redis-server".into()))
                .arg(conf)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
        }
    };
    Proc(Some(child.expect("redis-sentinel (./test.sh installs it)")))
}

fn node_args(port: u16, dir: &Path, extra: &[String]) -> Vec<String> {
    let mut a: Vec<String> = [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        &dir.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.extend_from_slice(extra);
    a
}

/// Sentinel: the master is killed while requests run; during the failover replay and
/// idempotency refuse (never a 200 for a replayed proof); after the promotion the proxy finds
/// the new master by itself, keeps refusing replay checks for one window (the replica may have
/// missed the last writes), then serves again; the payment stored before the failover (and
/// replicated) is still answered from Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_fails_closed_and_recovers_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (m_port, r_port) = (free_port(), free_port());
    let m_dir = dir.path().join("master");
    let r_dir = dir.path().join("replica");
    std::fs::create_dir_all(&m_dir).unwrap();
    std::fs::create_dir_all(&r_dir).unwrap();
    let mut master = spawn(&node_args(m_port, &m_dir, &[]));
    let _replica = spawn(&node_args(
        r_port,
        &r_dir,
        &["--replicaof".into(), "127.0.0.1".into(), m_port.to_string()],
    ));
    until("the replica to sync", Duration::from_secs(15), || {
        reply(r_port, "INFO replication").contains("master_link_status:up")
    });
    // A replica is no master: pointed at it directly, the state never counts as up (its
    // health check writes the epoch marker, which a replica refuses with READONLY).
    {
        use portcullis_state::redis::RedisState;
        use portcullis_state::settings::RedisSettings;
        let settings = RedisSettings {
            url: format!("redis://127.0.0.1:{r_port}/0"),
            username: None,
            password: None,
            tls: None,
            sentinel: None,
            connect_timeout: Duration::from_millis(300),
            command_timeout: Duration::from_millis(300),
            health_interval: Duration::from_millis(50),
            key_prefix: "ro:".into(),
        };
        // The marker is there (replicated): reading it alone would look healthy.
        assert_eq!(
            command(m_port, "SET ro:epoch 00:1800000000|").as_deref(),
            Some("+OK")
        );
        assert_eq!(command(m_port, "WAIT 1 2000").as_deref(), Some(":1"));
        let stop = tokio_util::sync::CancellationToken::new();
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(NOW));
        let on_replica = RedisState::start(&settings, clock, 1, stop.clone());
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(
            !on_replica.is_up(),
            "a read-only replica is not a usable master"
        );
        stop.cancel();
    }
    let mut sentinels = Vec::new();
    let mut s_ports = Vec::new();
    for i in 0..3 {
        let port = free_port();
        let conf = dir.path().join(format!("sentinel-{i}.conf"));
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor ha 127.0.0.1 {m_port} 2\nsentinel down-after-milliseconds ha 500\nsentinel failover-timeout ha 3000\nsentinel parallel-syncs ha 1\n",
                dir.path().display()
            ),
        )
        .unwrap();
        sentinels.push(spawn_sentinel(&conf));
        s_ports.push(port);
    }
    until("three sentinels to agree", Duration::from_secs(20), || {
        command(s_ports[0], "SENTINEL ckquorum ha").is_some_and(|r| r.starts_with("+OK 3"))
    });

    let clock = Arc::new(ManualClock::new(NOW));
    let as_key = SigningKey::generate(Alg::ES256, "as-1").unwrap();
    let jwks = dir.path().join("as-jwks.json");
    std::fs::write(&jwks, as_key.jwks().to_string()).unwrap();
    let up = Upstream::start(Behaviour::Created).await;
    let mut o = Options::new(up.addr);
    o.policy = POLICY.to_string();
    o.config
        .issuers
        .insert("as".into(), file_issuer(ISS, AUD, &jwks));
    o.config.dpop.public_base_url = Some(BASE.into());
    o.config.state = FileState {
        backend: Some("redis".into()),
        redis: Some(FileRedis {
            sentinel: Some(FileSentinel {
                master: "ha".into(),
                addresses: s_ports.iter().map(|p| format!("127.0.0.1:{p}")).collect(),
                ..FileSentinel::default()
            }),
            command_timeout: Some(dur("300ms")),
            connect_timeout: Some(dur("300ms")),
            health_interval: Some(dur("100ms")),
            ..FileRedis::default()
        }),
        ..FileState::default()
    };
    let env = Env::on_clock(o, up, tempfile::tempdir().unwrap(), clock.clone()).await;
    // A new Redis has no replay history: one replay window, then ready.
    readyz_until(
        &env.p,
        503,
        "younger than one replay window",
        Duration::from_secs(10),
    )
    .await;
    clock.advance(100);
    assert!(env.p.ready_within(Duration::from_secs(10)).await);

    let dpop_key = SigningKey::generate(Alg::ES256, "client").unwrap();
    let token = |now: i64| {
        as_key.access_token(&json!({
            "iss": ISS, "aud": AUD, "exp": now + 3600, "iat": now, "client_id": "tpp-one",
            "scope": "accounts payments", "jti": "t-dpop",
            "cnf": {"jkt": dpop_key.thumbprint()},
        }))
    };
    let accounts = |now: i64, jti: &str| {
        let t = token(now);
        let proof =
            dpop_key.dpop_proof("GET", &format!("{BASE}/accounts"), Some(&t), now, jti, None);
        req("GET", "/accounts")
            .header("authorization", format!("DPoP {t}"))
            .header("dpop", proof)
            .header("x-fapi-interaction-id", uuid::Uuid::new_v4().to_string())
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let send = |r: http::Request<Full<Bytes>>| {
        let p = &env.p;
        async move {
            let mut c = p.client(Some("tpp1"), false).await.unwrap();
            c.send(r).await.unwrap()
        }
    };
    // Before the failover: a proof admitted once, a payment stored and replicated.
    let used = accounts(clock.now(), "used-before-failover");
    let used_again = || {
        let mut r = http::Request::new(used.body().clone());
        *r.method_mut() = used.method().clone();
        *r.uri_mut() = used.uri().clone();
        *r.headers_mut() = used.headers().clone();
        r
    };
    // (The upstream answers 201 to everything.)
    let a = send(used_again()).await;
    assert_eq!(a.status, 201, "{}", String::from_utf8_lossy(&a.body));
    let a = send(used_again()).await;
    assert_eq!(a.status, 401, "a replay before the failover");
    let (first, _) = pay(&env.p, "before-failover").await;
    assert_eq!(first.status, 201);
    assert!(
        command(m_port, "WAIT 1 2000").is_some_and(|r| r == ":1"),
        "replicated"
    );
    let upstream_before = env.up.count();

    // Load: payments with fresh keys and the used proof again, all through the failover.
    let stop = AtomicBool::new(false);
    let seen: Mutex<Vec<(u16, String, &'static str)>> = Mutex::default();
    let load = async {
        let mut n = 0u32;
        while !stop.load(Ordering::Acquire) {
            n += 1;
            let (a, _) = pay(&env.p, &format!("load-{n}")).await;
            let reason = a.json()["reason"].as_str().unwrap_or_default().to_string();
            seen.lock()
                .unwrap()
                .push((a.status.as_u16(), reason, "payment"));
            let a = send(used_again()).await;
            let reason = a.json()["reason"].as_str().unwrap_or_default().to_string();
            seen.lock()
                .unwrap()
                .push((a.status.as_u16(), reason, "replay"));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let failover = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        master.kill();
        // During the failover: refused, fail closed.
        readyz_until(
            &env.p,
            503,
            "the shared state backend (Redis) is unavailable",
            Duration::from_secs(5),
        )
        .await;
        let (a, id) = pay(&env.p, "during-failover").await;
        if a.status == 503 {
            assert_eq!(a.json()["reason"], "idempotency.unavailable");
            assert_eq!(
                env.p.audit_of(&id).await["reason"],
                "idempotency.unavailable"
            );
        }
        // The promotion: Sentinel names the replica; the proxy follows without a restart, and
        // its replay checks wait one window (a new epoch marker on the new master).
        let r = r_port.to_string();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !reply(s_ports[1], "SENTINEL get-master-addr-by-name ha").contains(&r) {
            assert!(Instant::now() < deadline, "the replica was never promoted");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        readyz_until(
            &env.p,
            503,
            "younger than one replay window",
            Duration::from_secs(10),
        )
        .await;
        let a = send(accounts(clock.now(), "fresh-after-promotion")).await;
        assert_eq!(a.status, 503, "{}", String::from_utf8_lossy(&a.body));
        assert_eq!(a.json()["reason"], "binding.replay_store_unavailable");
        // Idempotency needs no window: the stored payment survived on the replica.
        let (again, _) = pay(&env.p, "before-failover").await;
        assert_eq!(
            again.status,
            201,
            "{}",
            String::from_utf8_lossy(&again.body)
        );
        assert_eq!(again.headers["x-idempotent-replay"], "true");
        assert_eq!(again.body, first.body);
        stop.store(true, Ordering::Release);
    };
    tokio::join!(load, failover);
    // Under load: never a 200 for the replayed proof; payments either ran or were refused.
    let seen = seen.into_inner().unwrap();
    assert!(!seen.is_empty());
    for (status, reason, what) in &seen {
        match *what {
            "replay" => assert!(
                *status == 401 || (*status == 503 && reason == "binding.replay_store_unavailable"),
                "replayed proof: {status} {reason}"
            ),
            _ => assert!(
                *status == 201 || (*status == 503 && reason == "idempotency.unavailable"),
                "payment: {status} {reason}"
            ),
        }
    }
    assert!(
        seen.iter().any(|(s, _, _)| *s == 503),
        "the failover was seen under load: {seen:?}"
    );
    // One window later: service is back; the proof used before the failover is outside its
    // window (the window rule covers what the replica may have missed).
    clock.advance(100);
    assert!(env.p.ready_within(Duration::from_secs(10)).await);
    let a = send(used_again()).await;
    assert_eq!(a.status, 401, "{}", String::from_utf8_lossy(&a.body));
    let a = send(accounts(clock.now(), "fresh-after-window")).await;
    assert_eq!(a.status, 201, "{}", String::from_utf8_lossy(&a.body));
    let (b, _) = pay(&env.p, "after-failover").await;
    assert_eq!(b.status, 201);
    assert!(env.up.count() > upstream_before);
    drop(sentinels);
}
