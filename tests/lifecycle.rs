//! The process lifecycle as Kubernetes drives it, with the real binary: on SIGTERM `/readyz`
//! turns 503 at once (its JSON body says `shutting_down`) while the listener keeps accepting
//! new connections for `shutdown.grace`, so endpoints are removed before connections are
//! refused; then the listener closes, in-flight requests drain, and the process exits 0. A
//! client sending requests on fresh connections throughout sees no failure before the grace
//! ends. Started with a soft open-files limit of 512, it raises the limit and says so.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::Full;

/// One GET on a new TLS connection as TPP One: the status, or `None` when the connection or
/// the request failed.
async fn fresh_get(addr: SocketAddr) -> Option<u16> {
    let r = req("GET", "/open-banking/v3.1/aisp/accounts")
        .body(Full::new(Bytes::new()))
        .unwrap();
    Some(send_fresh(addr, r).await?.status.as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_turns_readiness_off_at_once_keeps_accepting_for_the_grace_then_drains() {
    const GRACE: Duration = Duration::from_secs(2);
    let up = Upstream::start(Behaviour::Ok).await;
    let (addr, admin) = (free_addr(), free_addr());
    let mut o = Options::new(up.addr);
    o.config.listener.address = addr.to_string();
    o.config.admin = Some(FileAdmin {
        address: admin.to_string(),
    });
    o.config.shutdown.grace = Some(dur("2s"));
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    std::fs::write(dir.path().join("policies/test.yaml"), &o.policy).unwrap();
    let config = dir.path().join("portcullis.yaml");
    std::fs::write(&config, o.config_text()).unwrap();
    // Started with a low soft open-files limit, as many systems set it: the process raises it.
    let mut child = ChildGuard(
        std::process::Command::new("sh")
            .args(["-c", "ulimit -Sn 512 && exec \"$0\" run --config \"$1\""])
            .arg(env!("CARGO_BIN_EXE_portcullis"))
            .arg(&config)
            .current_dir(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();
    loop {
        if let Some((200, body)) = admin_get(admin, "/readyz").await {
            let body: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(body["ready"], true);
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "never ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(fresh_get(addr).await, Some(200));

    // A client that keeps opening connections, as traffic does while endpoints update.
    let load = tokio::spawn(async move {
        let mut answers = Vec::new();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_millis(3500) {
            answers.push((t0.elapsed(), fresh_get(addr).await));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        answers
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = child.0.id().to_string();
    let term = Instant::now();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());

    // Not ready at once, and says why.
    let (status, body) = loop {
        if let Some((s, b)) = admin_get(admin, "/readyz").await {
            if s == 503 {
                break (s, b);
            }
        }
        assert!(
            term.elapsed() < Duration::from_millis(500),
            "readiness still on"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status, 503);
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["shutting_down"], true, "{body}");
    assert_eq!(body["ready"], false, "{body}");

    // During the grace new connections are still served.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(term.elapsed() < GRACE);
    assert_eq!(
        fresh_get(addr).await,
        Some(200),
        "accepting during the grace"
    );

    // After the grace and the drain the process exits 0 by itself.
    let status = tokio::task::spawn_blocking(move || {
        let t0 = Instant::now();
        loop {
            if let Some(s) = child.0.try_wait().unwrap() {
                return Some((s, child));
            }
            if t0.elapsed() > Duration::from_secs(15) {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .unwrap();
    let (exit, mut child) = status.expect("the process did not exit after the grace and drain");
    assert!(exit.success(), "exit status {exit}");
    let mut log = String::new();
    std::io::Read::read_to_string(child.0.stderr.as_mut().unwrap(), &mut log).unwrap();
    assert!(
        log.contains("open-files limit raised") && log.contains("512"),
        "the raised limit is logged: {log}"
    );
    assert!(term.elapsed() >= GRACE, "it waited out the grace");
    assert_eq!(fresh_get(addr).await, None, "the listener is closed");

    let answers = load.await.unwrap();
    let since_term = |t: Duration| t.saturating_sub(Duration::from_millis(500));
    let during: Vec<_> = answers
        .iter()
        .filter(|(t, _)| since_term(*t) < GRACE - Duration::from_millis(200))
        .collect();
    assert!(during.len() >= 10, "too few requests: {}", during.len());
    for (t, a) in &during {
        assert_eq!(
            *a,
            Some(200),
            "a request {t:?} into the run failed before the grace ended"
        );
    }
}
