//! Revocation from CRLs: a CRL file that changes is picked up without a restart, a CRL past its
//! `nextUpdate` refuses its issuer's certificates at the handshake and on open connections (fail
//! closed), and each CRL's `nextUpdate` is a metric to alert on before that happens. CRL URLs
//! are fetched over http and https (with the configured trust only), a body over `max_bytes` is
//! not taken, and `distribution_points` takes the URLs the client CA certificates name.
//! `leaf_crls` follows the distribution point inside each verified client certificate, against
//! a real HTTP server on loopback that counts its fetches: revoked, down (fail closed / open),
//! forged, expired or garbage CRLs, one fetch for fifty requests, a revocation met on an open
//! connection once the cached CRL is stale, `ldap://` only, and what the handshake still
//! refuses. Refusals are checked three ways: the answer (or the failed handshake), nothing at the
//! upstream, and exactly one audit record saying why.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use portcullis_tools::client::Conn;

const ACCOUNTS: &str = "/open-banking/v3.1/aisp/accounts";

fn get(id: &str) -> http::Request<http_body_util::Full<Bytes>> {
    req("GET", ACCOUNTS)
        .header("x-fapi-interaction-id", id)
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap()
}

fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

/// Writes `bytes` to `path` by rename, as editors, ConfigMaps and web roots replace files.
fn replace(path: &Path, bytes: impl AsRef<[u8]>) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A proxy whose listener takes its CRL from a file holding `crl`, and that file (in a
/// directory that lives as long as the returned guard).
async fn proxy_with_crl(up: &Upstream, crl: &str) -> (Proxy, PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ca-now.crl");
    std::fs::write(&path, crl).unwrap();
    let mut o = Options::new(up.addr);
    o.config.listener.tls.crl = vec![path.display().to_string()];
    (Proxy::start(o).await, path, dir)
}

/// A request from `identity` on a new connection fails: with TLS 1.3 the client finishes its
/// side of the handshake before the server refuses its certificate, so the refusal may surface
/// on the first request.
async fn refused_at_the_handshake(p: &Proxy, identity: &str) -> bool {
    let Ok(mut c) = p.client(Some(identity), false).await else {
        return true;
    };
    c.send(get(&uuid::Uuid::new_v4().to_string()))
        .await
        .is_err()
}

/// The `tls_handshake` audit records with `failure`, once `n` are written.
async fn handshake_records(p: &Proxy, n: usize, failure: &str) -> Vec<serde_json::Value> {
    p.audit_where(n, |r| {
        r["kind"] == "tls_handshake" && r["failure"] == failure
    })
    .await
}

/// The request on `open` is refused 401 with `reason`, nothing reaches the upstream, exactly one
/// audit record says why, and then HTTP/1.1 closes the connection; on HTTP/2 (other streams
/// may be in flight) every further request is refused the same way.
async fn open_connection_refused(p: &Proxy, up: &Upstream, open: &mut Conn, reason: &str) {
    let before = up.count();
    let id = uuid::Uuid::new_v4().to_string();
    let a = open.send(get(&id)).await.unwrap();
    assert_eq!(a.status, 401, "{:?}", a.json());
    assert_eq!(a.json()["reason"], reason);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(up.count(), before, "nothing forwarded");
    let rec = p.audit_of(&id).await;
    assert_eq!(rec["reason"], reason);
    assert_eq!(rec["decision"], "deny");
    if let Ok(again) = open.send(get(&uuid::Uuid::new_v4().to_string())).await {
        assert_eq!(again.status, 401, "a request after the refusal");
        assert_eq!(again.json()["reason"], reason);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(up.count(), before, "nothing forwarded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_crl_file_is_picked_up_by_the_watcher_for_new_and_open_connections() {
    let up = Upstream::start(Behaviour::Ok).await;
    let day = now() + time::Duration::days(1);
    let (p, crl, _dir) = proxy_with_crl(&up, &dev_ca_crl(certs(), &["revoked"], day)).await;
    portcullis_proxy::watch(p.shared.clone(), tokio_util::sync::CancellationToken::new()).unwrap();
    let mut open = p.client(Some("tpp1"), false).await.unwrap();
    assert_eq!(
        open.send(get(&uuid::Uuid::new_v4().to_string()))
            .await
            .unwrap()
            .status,
        200
    );
    // The CA publishes a CRL that revokes tpp1 too; no SIGHUP, no config change.
    replace(&crl, dev_ca_crl(certs(), &["revoked", "tpp1"], day));
    let mut refused = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if refused_at_the_handshake(&p, "tpp1").await {
            refused = true;
            break;
        }
    }
    assert!(
        refused,
        "tpp1's new connections still pass after the CRL changed"
    );
    assert_eq!(handshake_records(&p, 1, "cert_revoked").await.len(), 1);
    open_connection_refused(&p, &up, &mut open, "identity.client_cert_revoked").await;
    // tpp2 is not on the list.
    let mut c = p.client(Some("tpp2"), false).await.unwrap();
    let id = uuid::Uuid::new_v4().to_string();
    assert_eq!(c.send(get(&id)).await.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crl_past_its_next_update_refuses_its_issuers_certificates_at_the_handshake() {
    let up = Upstream::start(Behaviour::Ok).await;
    // Current until three seconds from now: long enough to load, short enough to wait out.
    let until = now() + time::Duration::seconds(3);
    let (p, crl, _dir) = proxy_with_crl(&up, &dev_ca_crl(certs(), &["revoked"], until)).await;
    // The gauge carries nextUpdate as a timestamp: `... - time() < 86400` alerts a day ahead.
    let (_, m) = p.admin_get("/metrics").await;
    let line = format!(
        "portcullis_crl_next_update_timestamp_seconds{{crl=\"{}\",issuer=\"CN=portcullis dev CA,O=portcullis dev\"}} {}",
        crl.display(),
        until.unix_timestamp()
    );
    assert!(m.contains(&line), "want {line} in\n{m}");
    // Before: tpp1 passes.
    let mut c = p.client(Some("tpp1"), false).await.unwrap();
    let id = uuid::Uuid::new_v4().to_string();
    assert_eq!(c.send(get(&id)).await.unwrap().status, 200);
    drop(c);
    tokio::time::sleep(Duration::from_secs(4)).await;
    // After: every certificate of the dev CA is refused, not only the listed one.
    let before = up.count();
    assert!(p.audit().iter().all(|r| r["kind"] != "tls_handshake"));
    assert!(refused_at_the_handshake(&p, "tpp1").await);
    let recs = handshake_records(&p, 1, "crl_expired").await;
    assert_eq!(recs.len(), 1, "one tls_handshake record: {recs:?}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(up.count(), before, "nothing forwarded");
    // A current CRL from the CA ends it, with a reload (the watcher does it for a changed file).
    replace(
        &crl,
        dev_ca_crl(certs(), &["revoked"], now() + time::Duration::days(1)),
    );
    p.shared.reload().expect("reload");
    let mut c = p.client(Some("tpp1"), false).await.unwrap();
    let id = uuid::Uuid::new_v4().to_string();
    assert_eq!(c.send(get(&id)).await.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_connection_stops_when_the_crl_covering_it_expires() {
    let up = Upstream::start(Behaviour::Ok).await;
    let until = now() + time::Duration::seconds(3);
    let (p, _, _dir) = proxy_with_crl(&up, &dev_ca_crl(certs(), &["revoked"], until)).await;
    // One HTTP/1.1 and one HTTP/2 connection, both good while the CRL is current.
    let mut h1 = p.client(Some("tpp1"), false).await.unwrap();
    let mut h2 = p.client(Some("tpp2"), true).await.unwrap();
    for c in [&mut h1, &mut h2] {
        let id = uuid::Uuid::new_v4().to_string();
        assert_eq!(c.send(get(&id)).await.unwrap().status, 200);
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    for c in [&mut h1, &mut h2] {
        open_connection_refused(&p, &up, c, "identity.client_cert_revocation_unknown").await;
    }
}

/// `python3 -m http.server` serving `dir` on a free loopback port: a real CRL distribution point.
/// Killed when dropped.
struct CrlServer {
    child: std::process::Child,
    port: u16,
}

impl CrlServer {
    fn start(dir: &Path) -> CrlServer {
        use std::io::BufRead;
        let mut child = std::process::Command::new("python3")
            .args(["-u", "-m", "http.server", "0", "--bind", "127.0.0.1"])
            .arg("--directory")
            .arg(dir)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3 (the CRL server)");
        // "Serving HTTP on 127.0.0.1 port 40123 (http://127.0.0.1:40123/) ..."
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .split(" port ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("the CRL server said {line:?}"));
        CrlServer { child, port }
    }
}

impl Drop for CrlServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The dev CA's CRL as a distribution point serves it: DER (RFC 5280 §4.2.1.13), current for a
/// day.
fn der_crl(revoked: &[&str]) -> Vec<u8> {
    der(&dev_ca_crl(
        certs(),
        revoked,
        now() + time::Duration::days(1),
    ))
}

fn der(pem: &str) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateRevocationListDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .as_ref()
        .to_vec()
}

/// A listener whose only CRL comes from `url`, refreshed every 300 ms.
async fn proxy_with_crl_url(up: &Upstream, url: &str) -> Proxy {
    let mut o = Options::new(up.addr);
    o.config.listener.tls.crl = Vec::new();
    o.config.listener.tls.crl_urls = vec![FileCrlUrl {
        url: url.to_string(),
        refresh_interval: Some(dur("300ms")),
        fetch_timeout: Some(dur("5s")),
        ..FileCrlUrl::default()
    }];
    Proxy::start(o).await
}

/// The value of the metric line starting with `prefix` (name and labels).
async fn metric(p: &Proxy, prefix: &str) -> Option<f64> {
    let (_, m) = p.admin_get("/metrics").await;
    m.lines()
        .find_map(|l| l.strip_prefix(prefix)?.trim().parse().ok())
}

/// Polls `cond` for up to five seconds.
async fn eventually<F: std::future::Future<Output = bool>>(mut cond: impl FnMut() -> F) -> bool {
    for _ in 0..50 {
        if cond().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crl_fetched_from_a_url_revokes_new_and_open_connections_and_outlives_its_server() {
    let up = Upstream::start(Behaviour::Ok).await;
    let served = tempfile::tempdir().unwrap();
    let file = served.path().join("ca.crl");
    replace(&file, der_crl(&["revoked"]));
    let server = CrlServer::start(served.path());
    let url = format!("http://127.0.0.1:{}/ca.crl", server.port);
    let p = proxy_with_crl_url(&up, &url).await;
    let ready = format!("portcullis_crl_ready{{crl=\"{url}\"}}");
    assert!(
        eventually(|| async { metric(&p, &ready).await == Some(1.0) }).await,
        "the CRL was never fetched"
    );
    assert_eq!(p.admin_get("/readyz").await.0, 200);
    // The fetched CRL is the one in force: the certificate it lists is refused, tpp1 is not.
    assert!(refused_at_the_handshake(&p, "revoked").await);
    assert_eq!(handshake_records(&p, 1, "cert_revoked").await.len(), 1);
    let mut open = p.client(Some("tpp1"), false).await.unwrap();
    let id = uuid::Uuid::new_v4().to_string();
    assert_eq!(open.send(get(&id)).await.unwrap().status, 200);
    let next_update = format!(
        "portcullis_crl_next_update_timestamp_seconds{{crl=\"{url}\",issuer=\"CN=portcullis dev CA,O=portcullis dev\"}}"
    );
    assert!(metric(&p, &next_update).await.unwrap() > now().unix_timestamp() as f64);

    // The CA publishes a CRL listing tpp1: no reload, no config change.
    replace(&file, der_crl(&["revoked", "tpp1"]));
    assert!(
        eventually(|| refused_at_the_handshake(&p, "tpp1")).await,
        "tpp1's new connections still pass after the served CRL listed it"
    );
    assert_eq!(handshake_records(&p, 2, "cert_revoked").await.len(), 2);
    open_connection_refused(&p, &up, &mut open, "identity.client_cert_revoked").await;

    // The server goes away: the fetches fail and count, the last good CRL stays in force.
    drop(server);
    let failures = format!("portcullis_crl_fetch_failures_total{{crl=\"{url}\"}}");
    let before = metric(&p, &failures).await.unwrap();
    assert!(
        eventually(|| async { metric(&p, &failures).await.unwrap() >= before + 2.0 }).await,
        "failed fetches are not counted"
    );
    assert!(refused_at_the_handshake(&p, "tpp1").await);
    let mut c = p.client(Some("tpp2"), false).await.unwrap();
    let id = uuid::Uuid::new_v4().to_string();
    assert_eq!(c.send(get(&id)).await.unwrap().status, 200);
    assert_eq!(metric(&p, &ready).await, Some(1.0));
    assert_eq!(p.admin_get("/readyz").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn until_a_crl_url_delivers_client_certificates_are_refused_and_the_proxy_is_not_ready() {
    let up = Upstream::start(Behaviour::Ok).await;
    let dead = Upstream::dead_addr().await;
    let url = format!("http://{dead}/ca.crl");
    let p = proxy_with_crl_url(&up, &url).await;
    let failures = format!("portcullis_crl_fetch_failures_total{{crl=\"{url}\"}}");
    assert!(eventually(|| async { metric(&p, &failures).await.unwrap_or(0.0) >= 1.0 }).await);
    assert_eq!(p.admin_get("/readyz").await.0, 503);
    assert_eq!(
        metric(&p, &format!("portcullis_crl_ready{{crl=\"{url}\"}}")).await,
        Some(0.0)
    );
    // Fail closed: no client certificate is taken while its revocation status is unknown.
    assert!(refused_at_the_handshake(&p, "tpp1").await);
    let recs = handshake_records(&p, 1, "revocation_unknown").await;
    assert_eq!(recs.len(), 1, "{recs:?}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(up.count(), 0, "nothing forwarded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetched_body_that_is_not_a_current_crl_of_a_client_ca_is_not_taken() {
    let up = Upstream::start(Behaviour::Ok).await;
    let served = tempfile::tempdir().unwrap();
    let file = served.path().join("ca.crl");
    replace(&file, der_crl(&["tpp1"]));
    let server = CrlServer::start(served.path());
    let url = format!("http://127.0.0.1:{}/ca.crl", server.port);
    let p = proxy_with_crl_url(&up, &url).await;
    let ready = format!("portcullis_crl_ready{{crl=\"{url}\"}}");
    assert!(eventually(|| async { metric(&p, &ready).await == Some(1.0) }).await);
    assert!(refused_at_the_handshake(&p, "tpp1").await);
    let failures = format!("portcullis_crl_fetch_failures_total{{crl=\"{url}\"}}");
    // Garbage, a CRL in the CA's name signed by a key that is not the CA's, and a replayed
    // older CRL: each fetch fails, and the CRL that revokes tpp1 stays.
    let foreign = der(&forged_dev_ca_crl());
    // The CA's own list from before tpp1 was revoked (issued earlier), replayed.
    let older = der(&dev_ca_crl(certs(), &[], now() + time::Duration::hours(1)));
    for (what, body) in [
        ("garbage", b"<html>not a CRL</html>".to_vec()),
        ("a CRL under the CA's name signed by another key", foreign),
        ("an older CRL of the CA", older),
    ] {
        let before = metric(&p, &failures).await.unwrap_or(0.0);
        replace(&file, &body);
        assert!(
            eventually(|| async { metric(&p, &failures).await.unwrap_or(0.0) >= before + 2.0 })
                .await,
            "{what}: not counted as a failure"
        );
        assert!(
            refused_at_the_handshake(&p, "tpp1").await,
            "{what} was taken"
        );
        let mut c = p.client(Some("tpp2"), false).await.unwrap();
        let id = uuid::Uuid::new_v4().to_string();
        assert_eq!(c.send(get(&id)).await.unwrap().status, 200);
    }
}

/// `openssl s_server -WWW` serving `dir` over HTTPS with the dev server certificate, on a free
/// loopback port: a CRL distribution point behind TLS. Killed when dropped.
struct HttpsCrlServer {
    child: std::process::Child,
    port: u16,
}

impl HttpsCrlServer {
    fn start(dir: &Path) -> HttpsCrlServer {
        use std::io::BufRead;
        let c = certs();
        let mut child = std::process::Command::new("openssl")
            .args(["s_server", "-accept", "0", "-WWW", "-cert"])
            .arg(c.join("server.pem"))
            .arg("-key")
            .arg(c.join("server.key"))
            .current_dir(dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run `openssl s_server` (test.sh installs the openssl CLI): {e}")
            });
        // "ACCEPT [::]:40123" once it listens.
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut port = None;
        for _ in 0..5 {
            let mut line = String::new();
            if out.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            if let Some(rest) = line.trim().strip_prefix("ACCEPT ") {
                port = rest.rsplit(':').next().and_then(|p| p.parse().ok());
                break;
            }
        }
        let Some(port) = port else {
            let _ = child.kill();
            panic!("`openssl s_server` did not say where it listens");
        };
        // Keep its stdout drained, so that it never blocks writing to it.
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        HttpsCrlServer { child, port }
    }
}

impl Drop for HttpsCrlServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crl_url_over_https_is_fetched_with_the_configured_trust() {
    let up = Upstream::start(Behaviour::Ok).await;
    let served = tempfile::tempdir().unwrap();
    replace(&served.path().join("ca.crl"), der_crl(&["revoked"]));
    let server = HttpsCrlServer::start(served.path());
    let url = format!("https://localhost:{}/ca.crl", server.port);
    let mut o = Options::new(up.addr);
    o.config.listener.tls.crl = Vec::new();
    o.config.listener.tls.crl_urls = vec![FileCrlUrl {
        url: url.clone(),
        ca: vec![certs().join("ca.pem").display().to_string()],
        refresh_interval: Some(dur("300ms")),
        fetch_timeout: Some(dur("5s")),
        ..FileCrlUrl::default()
    }];
    let p = Proxy::start(o).await;
    let ready = format!("portcullis_crl_ready{{crl=\"{url}\"}}");
    assert!(
        eventually(|| async { metric(&p, &ready).await == Some(1.0) }).await,
        "the CRL was never fetched over https"
    );
    assert!(refused_at_the_handshake(&p, "revoked").await);
    assert_eq!(handshake_records(&p, 1, "cert_revoked").await.len(), 1);
    let mut c = p.client(Some("tpp1"), false).await.unwrap();
    let id = uuid::Uuid::new_v4().to_string();
    assert_eq!(c.send(get(&id)).await.unwrap().status, 200);

    // Trusting something else (here a client certificate, as if it were a CA): the server's
    // certificate does not verify, nothing is fetched, and certificates stay refused.
    let mut o = Options::new(up.addr);
    o.config.listener.tls.crl = Vec::new();
    o.config.listener.tls.crl_urls = vec![FileCrlUrl {
        url: url.clone(),
        ca: vec![certs().join("tpp2.pem").display().to_string()],
        refresh_interval: Some(dur("300ms")),
        fetch_timeout: Some(dur("5s")),
        ..FileCrlUrl::default()
    }];
    let q = Proxy::start(o).await;
    let failures = format!("portcullis_crl_fetch_failures_total{{crl=\"{url}\"}}");
    assert!(
        eventually(|| async { metric(&q, &failures).await.unwrap_or(0.0) >= 1.0 }).await,
        "an https CRL server outside the configured trust was not refused"
    );
    assert_eq!(metric(&q, &ready).await, Some(0.0));
    assert!(refused_at_the_handshake(&q, "tpp1").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crl_over_max_bytes_is_not_read_and_certificates_stay_refused() {
    let up = Upstream::start(Behaviour::Ok).await;
    let served = tempfile::tempdir().unwrap();
    let crl = der_crl(&["revoked"]);
    replace(&served.path().join("ca.crl"), &crl);
    let server = CrlServer::start(served.path());
    let url = format!("http://127.0.0.1:{}/ca.crl", server.port);
    let mut o = Options::new(up.addr);
    o.config.listener.tls.crl = Vec::new();
    o.config.listener.tls.crl_urls = vec![FileCrlUrl {
        url: url.clone(),
        refresh_interval: Some(dur("300ms")),
        fetch_timeout: Some(dur("5s")),
        max_bytes: Some(crl.len() - 1),
        ..FileCrlUrl::default()
    }];
    let p = Proxy::start(o).await;
    let failures = format!("portcullis_crl_fetch_failures_total{{crl=\"{url}\"}}");
    assert!(
        eventually(|| async { metric(&p, &failures).await.unwrap_or(0.0) >= 2.0 }).await,
        "a CRL one byte over max_bytes was not counted as a failure"
    );
    assert_eq!(
        metric(&p, &format!("portcullis_crl_ready{{crl=\"{url}\"}}")).await,
        Some(0.0)
    );
    assert!(refused_at_the_handshake(&p, "tpp1").await);
    assert_eq!(
        handshake_records(&p, 1, "revocation_unknown").await.len(),
        1
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(up.count(), 0, "nothing forwarded");
}

/// A client CA bundle: the dev CA and an intermediate it issued whose CRL distribution point
/// is `cdp` (`None`: no distribution point), written to `dir/cas.pem`.
fn ca_bundle_with_distribution_point(dir: &Path, cdp: Option<&str>) -> PathBuf {
    let ca_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(certs().join("ca.key")).unwrap())
            .unwrap();
    let mut ca = rcgen::CertificateParams::default();
    ca.distinguished_name = rcgen::DistinguishedName::new();
    ca.distinguished_name
        .push(rcgen::DnType::OrganizationName, "portcullis dev");
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "portcullis dev CA");
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "portcullis dev intermediate");
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    p.not_before = now() - time::Duration::hours(1);
    p.not_after = now() + time::Duration::days(30);
    if let Some(u) = cdp {
        p.crl_distribution_points = vec![rcgen::CrlDistributionPoint {
            uris: vec![u.to_string()],
        }];
    }
    let cert = p
        .signed_by(&rcgen::KeyPair::generate().unwrap(), &issuer)
        .unwrap();
    let path = dir.join("cas.pem");
    let mut pem = std::fs::read_to_string(certs().join("ca.pem")).unwrap();
    pem.push_str(&cert.pem());
    std::fs::write(&path, pem).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distribution_points_fetches_the_crls_the_client_ca_certificates_name() {
    let up = Upstream::start(Behaviour::Ok).await;
    let served = tempfile::tempdir().unwrap();
    replace(&served.path().join("ca.crl"), der_crl(&["revoked"]));
    let server = CrlServer::start(served.path());
    let url = format!("http://127.0.0.1:{}/ca.crl", server.port);
    // The intermediate's distribution point serves the CRL covering it: the dev CA's.
    let dir = tempfile::tempdir().unwrap();
    let bundle = ca_bundle_with_distribution_point(dir.path(), Some(&url));
    let mut o = Options::new(up.addr);
    o.config.listener.tls.crl = Vec::new();
    o.config.listener.tls.client_ca = vec![bundle.display().to_string()];
    o.config.listener.tls.crl_urls = vec![FileCrlUrl {
        url: "distribution_points".to_string(),
        refresh_interval: Some(dur("300ms")),
        fetch_timeout: Some(dur("5s")),
        ..FileCrlUrl::default()
    }];
    let p = Proxy::start(o).await;
    let ready = format!("portcullis_crl_ready{{crl=\"{url}\"}}");
    assert!(
        eventually(|| async { metric(&p, &ready).await == Some(1.0) }).await,
        "the distribution point's CRL was never fetched"
    );
    assert!(refused_at_the_handshake(&p, "revoked").await);
    assert_eq!(handshake_records(&p, 1, "cert_revoked").await.len(), 1);
    let mut c = p.client(Some("tpp1"), false).await.unwrap();
    let id = uuid::Uuid::new_v4().to_string();
    assert_eq!(c.send(get(&id)).await.unwrap().status, 200);
}

#[test]
fn distribution_points_without_any_in_the_client_cas_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = ca_bundle_with_distribution_point(dir.path(), None);
    let mut o = Options::new("127.0.0.1:9".parse().unwrap());
    o.config.listener.tls.client_ca = vec![bundle.display().to_string()];
    o.config.listener.tls.crl_urls = vec![FileCrlUrl {
        url: "distribution_points".to_string(),
        ..FileCrlUrl::default()
    }];
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    std::fs::write(dir.path().join("policies/test.yaml"), &o.policy).unwrap();
    let path = dir.path().join("portcullis.yaml");
    std::fs::write(&path, o.config_text()).unwrap();
    let err = match portcullis_proxy::config::Config::load(&path) {
        Ok(_) => panic!("loaded"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(
        err.contains("listener.tls.crl_urls[0].url: `distribution_points`: no client_ca certificate names an http:// or https:// CRL distribution point"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// `leaf_crls`: the CRL distribution points named inside client certificates, followed per
// certificate after the handshake verified it.

/// A CRL distribution point: a plain-HTTP server on loopback answering every request with the
/// body set now (200), after `delay`, and counting the requests.
struct DistributionPoint {
    addr: std::net::SocketAddr,
    body: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl DistributionPoint {
    async fn start(body: Vec<u8>, delay: Duration) -> DistributionPoint {
        use std::sync::atomic::Ordering;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let body = std::sync::Arc::new(std::sync::Mutex::new(body));
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (b, h) = (body.clone(), hits.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = l.accept().await {
                let (b, h) = (b.clone(), h.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |_req| {
                        let (b, h) = (b.clone(), h.clone());
                        async move {
                            h.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(delay).await;
                            let bytes = Bytes::from(b.lock().unwrap().clone());
                            Ok::<_, std::convert::Infallible>(http::Response::new(
                                http_body_util::Full::new(bytes),
                            ))
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .await;
                });
            }
        });
        DistributionPoint { addr, body, hits }
    }

    fn url(&self) -> String {
        format!("http://{}/leaf-ca.crl", self.addr)
    }

    fn serve(&self, body: Vec<u8>) {
        *self.body.lock().unwrap() = body;
    }

    fn hits(&self) -> usize {
        self.hits.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A CA of the test's own whose client certificates name their CRL distribution point; the
/// listener has no CRL of it, so only the point a certificate names can say it is revoked.
struct LeafCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pem: PathBuf,
    _dir: tempfile::TempDir,
}

fn leaf_ca_params(cn: &str) -> rcgen::CertificateParams {
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(rcgen::DnType::CommonName, cn);
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = now() - time::Duration::hours(1);
    p.not_after = now() + time::Duration::days(30);
    p
}

impl LeafCa {
    fn new(cn: &str) -> LeafCa {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = leaf_ca_params(cn);
        let cert = params.self_signed(&key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("leaf-ca.pem");
        std::fs::write(&pem, cert.pem()).unwrap();
        LeafCa {
            issuer: rcgen::Issuer::new(params, key),
            pem,
            _dir: dir,
        }
    }

    /// A client certificate `name` of this CA naming `points` as its CRL distribution point,
    /// written into the kit's certificate directory as `name.pem` / `.key`.
    fn leaf(&self, name: &str, points: &[&str]) {
        issue_leaf(&self.issuer, name, points, "");
    }

    /// Its CRL (DER) revoking the kit certificates `revoked`, current until `next_update`.
    fn crl(&self, revoked: &[&str], next_update: time::OffsetDateTime) -> Vec<u8> {
        crl_signed_by(&self.issuer, revoked, next_update)
    }
}

/// A client certificate `name` issued by `issuer`, naming `points` as its CRL distribution
/// point, written into the kit's certificate directory as `name.pem` (followed by `chain`, the
/// PEM certificates the client sends with it) and `name.key`.
fn issue_leaf(
    issuer: &rcgen::Issuer<'_, rcgen::KeyPair>,
    name: &str,
    points: &[&str],
    chain: &str,
) {
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name
        .push(rcgen::DnType::OrganizationName, "Tpp Dp Ltd");
    p.distinguished_name.push(rcgen::DnType::CommonName, name);
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    p.not_before = now() - time::Duration::hours(1);
    p.not_after = now() + time::Duration::days(30);
    p.crl_distribution_points = vec![rcgen::CrlDistributionPoint {
        uris: points.iter().map(|u| u.to_string()).collect(),
    }];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, issuer).unwrap();
    std::fs::write(
        certs().join(format!("{name}.pem")),
        format!("{}{chain}", cert.pem()),
    )
    .unwrap();
    std::fs::write(certs().join(format!("{name}.key")), key.serialize_pem()).unwrap();
}

/// An intermediate CA `cn` issued by `parent`: its issuer and its PEM certificate.
fn intermediate(
    parent: &rcgen::Issuer<'_, rcgen::KeyPair>,
    cn: &str,
) -> (rcgen::Issuer<'static, rcgen::KeyPair>, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params = leaf_ca_params(cn);
    let cert = params.signed_by(&key, parent).unwrap();
    (rcgen::Issuer::new(params, key), cert.pem())
}

/// The dev CA as an rcgen issuer (its name in the order `dev-certs` writes it).
fn dev_ca_issuer() -> rcgen::Issuer<'static, rcgen::KeyPair> {
    let key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(certs().join("ca.key")).unwrap())
        .unwrap();
    let mut ca = rcgen::CertificateParams::default();
    ca.distinguished_name = rcgen::DistinguishedName::new();
    ca.distinguished_name
        .push(rcgen::DnType::OrganizationName, "portcullis dev");
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "portcullis dev CA");
    rcgen::Issuer::new(ca, key)
}

/// A DER CRL signed by `issuer` revoking the kit certificates `revoked`.
fn crl_signed_by(
    issuer: &rcgen::Issuer<'_, rcgen::KeyPair>,
    revoked: &[&str],
    next_update: time::OffsetDateTime,
) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    let revoked_certs = revoked
        .iter()
        .map(|name| {
            let der = rustls_pki_types::CertificateDer::from_pem_file(
                certs().join(format!("{name}.pem")),
            )
            .unwrap();
            let cert = portcullis_crypto::pki::ClientCert::from_der(der.as_ref()).unwrap();
            rcgen::RevokedCertParams {
                serial_number: rcgen::SerialNumber::from_slice(&cert.serial_der),
                revocation_time: now() - time::Duration::minutes(1),
                reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                invalidity_date: None,
            }
        })
        .collect();
    let number = (now().unix_timestamp_nanos() as i64).to_be_bytes();
    let pem = rcgen::CertificateRevocationListParams {
        this_update: (now() - time::Duration::minutes(1))
            .min(next_update - time::Duration::days(1)),
        next_update,
        crl_number: rcgen::SerialNumber::from_slice(&number),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(issuer)
    .unwrap()
    .pem()
    .unwrap();
    der(&pem)
}

fn day() -> time::OffsetDateTime {
    now() + time::Duration::days(1)
}

/// A proxy whose client CAs are the dev CA (with its CRL file, as the kit has it) and `ca`,
/// following the CRLs client certificates name with `leaf`.
async fn proxy_following(up: &Upstream, ca: &LeafCa, leaf: FileLeafCrls) -> Proxy {
    let mut o = Options::new(up.addr);
    o.config
        .listener
        .tls
        .client_ca
        .push(ca.pem.display().to_string());
    o.config.listener.tls.leaf_crls = Some(FileLeafCrls {
        fetch_timeout: leaf.fetch_timeout.or(Some(dur("2s"))),
        ..leaf
    });
    Proxy::start(o).await
}

/// A request on `conn` is refused 401 with `reason`, nothing reaches the upstream, and exactly
/// one audit record says why, with `revocation_crl` = `found`.
async fn leaf_refused(p: &Proxy, up: &Upstream, conn: &mut Conn, reason: &str, found: &str) {
    let before = up.count();
    let id = uuid::Uuid::new_v4().to_string();
    let a = conn.send(get(&id)).await.unwrap();
    assert_eq!(a.status, 401, "{:?}", a.json());
    assert_eq!(a.json()["reason"], reason);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(up.count(), before, "nothing forwarded");
    let recs = p
        .audit_where(1, |r| r["interaction_id"] == id.as_str())
        .await;
    assert_eq!(recs.len(), 1, "one record: {recs:?}");
    let rec = &recs[0];
    assert_eq!(rec["reason"], reason);
    assert_eq!(rec["decision"], "deny");
    assert_eq!(rec["stage"], "identity");
    assert_eq!(rec["revocation_crl"], found);
}

/// A request as `identity` on a new connection is forwarded; its record says `found`.
async fn leaf_passes(p: &Proxy, identity: &str, found: &str) {
    let mut c = p.client(Some(identity), false).await.unwrap();
    let id = uuid::Uuid::new_v4().to_string();
    let a = c.send(get(&id)).await.unwrap();
    assert_eq!(a.status, 200, "{identity}: {:?}", a.json());
    let rec = p.audit_of(&id).await;
    assert_eq!(rec["decision"], "allow");
    assert_eq!(rec["revocation_crl"], found);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaf_crls_refuse_the_certificates_their_distribution_point_revokes() {
    let up = Upstream::start(Behaviour::Ok).await;
    let ca = LeafCa::new("leaf CA one");
    let dp = DistributionPoint::start(Vec::new(), Duration::ZERO).await;
    ca.leaf("dp1-good", &[&dp.url()]);
    ca.leaf("dp1-revoked", &[&dp.url()]);
    dp.serve(ca.crl(&["dp1-revoked"], day()));
    let p = proxy_following(&up, &ca, FileLeafCrls::default()).await;
    // Its issuer has no CRL among the listener's (the dev CA's file): the handshake lets it
    // through and the identity stage asks the point it names.
    leaf_passes(&p, "dp1-good", "crl_dp_good").await;
    // Without `leaf_crls` the same certificate is refused at the handshake: the listener has
    // CRLs, none of its issuer (unknown status).
    let mut o = Options::new(up.addr);
    o.config
        .listener
        .tls
        .client_ca
        .push(ca.pem.display().to_string());
    let without = Proxy::start(o).await;
    assert!(refused_at_the_handshake(&without, "dp1-good").await);
    assert_eq!(
        handshake_records(&without, 1, "revocation_unknown")
            .await
            .len(),
        1
    );
    let mut conn = p.client(Some("dp1-revoked"), false).await.unwrap();
    leaf_refused(
        &p,
        &up,
        &mut conn,
        "identity.client_cert_revoked",
        "crl_dp_revoked",
    )
    .await;
    // One fetch for both: the CRL is cached per (issuer, URL) until its nextUpdate (a day),
    // capped by max_age (1h).
    assert_eq!(dp.hits(), 1);
    leaf_passes(&p, "dp1-good", "crl_dp_good").await;
    assert_eq!(dp.hits(), 1);
    assert_eq!(
        metric(&p, "portcullis_leaf_crl_fetches_total").await,
        Some(1.0)
    );
    assert_eq!(
        metric(&p, "portcullis_leaf_crl_fetch_failures_total").await,
        Some(0.0)
    );
    // The configured CRL still refuses at the handshake, as without `leaf_crls`.
    assert!(refused_at_the_handshake(&p, "revoked").await);
    assert_eq!(handshake_records(&p, 1, "cert_revoked").await.len(), 1);
    // A dev certificate names no distribution point, but its issuer's CRL (the file) is the
    // listener's own and current: its status is known.
    leaf_passes(&p, "tpp1", "crl_dp_none_covered").await;
    assert_eq!(dp.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_distribution_point_that_is_down_refuses_fail_closed_and_passes_counted_fail_open() {
    let up = Upstream::start(Behaviour::Ok).await;
    let ca = LeafCa::new("leaf CA two");
    let dead = Upstream::dead_addr().await;
    let url = format!("http://{dead}/leaf-ca.crl");
    ca.leaf("dp2", &[&url]);
    let closed = proxy_following(&up, &ca, FileLeafCrls::default()).await;
    let mut conn = closed.client(Some("dp2"), false).await.unwrap();
    leaf_refused(
        &closed,
        &up,
        &mut conn,
        "identity.client_cert_revocation_unknown",
        "crl_dp_unavailable",
    )
    .await;
    assert_eq!(
        metric(&closed, "portcullis_leaf_crl_fetch_failures_total").await,
        Some(1.0)
    );
    assert_eq!(
        metric(&closed, "portcullis_leaf_crl_fail_open_total").await,
        Some(0.0)
    );
    // Per certificate, not per listener: readiness does not depend on it.
    assert!(closed.ready_within(Duration::from_secs(2)).await);

    let open = proxy_following(
        &up,
        &ca,
        FileLeafCrls {
            fail: Some("open".into()),
            ..FileLeafCrls::default()
        },
    )
    .await;
    leaf_passes(&open, "dp2", "crl_dp_unavailable_fail_open").await;
    assert_eq!(
        metric(&open, "portcullis_leaf_crl_fail_open_total").await,
        Some(1.0)
    );
    assert_eq!(
        metric(&open, "portcullis_leaf_crl_fetch_failures_total").await,
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crl_not_signed_by_the_certificates_issuer_or_not_current_is_not_taken() {
    let up = Upstream::start(Behaviour::Ok).await;
    let ca = LeafCa::new("leaf CA three");
    let dp = DistributionPoint::start(Vec::new(), Duration::ZERO).await;
    ca.leaf("dp3", &[&dp.url()]);
    let p = proxy_following(&up, &ca, FileLeafCrls::default()).await;
    // The issuer's name, another key: what anyone on an http:// path could serve.
    let forger = rcgen::Issuer::new(
        leaf_ca_params("leaf CA three"),
        rcgen::KeyPair::generate().unwrap(),
    );
    let past = now() - time::Duration::minutes(1);
    for (body, what) in [
        (crl_signed_by(&forger, &[], day()), "forged"),
        // Another client CA's own CRL, correctly signed by it.
        (der_crl(&[]), "the dev CA's"),
        (ca.crl(&[], past), "expired"),
        (b"<html>not a CRL</html>".to_vec(), "garbage"),
    ] {
        dp.serve(body);
        let mut conn = p.client(Some("dp3"), false).await.unwrap();
        eprintln!("{what}");
        leaf_refused(
            &p,
            &up,
            &mut conn,
            "identity.client_cert_revocation_unknown",
            "crl_dp_invalid",
        )
        .await;
    }
    assert_eq!(dp.hits(), 4, "failures are not cached");
    // The real one is taken.
    dp.serve(ca.crl(&[], day()));
    leaf_passes(&p, "dp3", "crl_dp_good").await;
    // Over max_bytes: not read.
    let small = proxy_following(
        &up,
        &ca,
        FileLeafCrls {
            max_bytes: Some(64),
            ..FileLeafCrls::default()
        },
    )
    .await;
    let mut conn = small.client(Some("dp3"), false).await.unwrap();
    leaf_refused(
        &small,
        &up,
        &mut conn,
        "identity.client_cert_revocation_unknown",
        "crl_dp_unavailable",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_requests_with_a_cold_cache_fetch_the_crl_once() {
    let up = Upstream::start(Behaviour::Ok).await;
    let ca = LeafCa::new("leaf CA four");
    // Slow enough that every request arrives while the one fetch is in flight.
    let dp = DistributionPoint::start(Vec::new(), Duration::from_millis(500)).await;
    ca.leaf("dp4", &[&dp.url()]);
    dp.serve(ca.crl(&[], day()));
    let p = proxy_following(&up, &ca, FileLeafCrls::default()).await;
    let mut conns = Vec::new();
    for _ in 0..50 {
        conns.push(p.client(Some("dp4"), false).await.unwrap());
    }
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let id = uuid::Uuid::new_v4().to_string();
                c.send(get(&id)).await.unwrap().status.as_u16()
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(dp.hits(), 1);
    assert_eq!(
        metric(&p, "portcullis_leaf_crl_fetches_total").await,
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_revoked_after_its_crl_was_cached_is_refused_on_its_open_connection() {
    let up = Upstream::start(Behaviour::Ok).await;
    let ca = LeafCa::new("leaf CA five");
    let dp = DistributionPoint::start(Vec::new(), Duration::ZERO).await;
    ca.leaf("dp5", &[&dp.url()]);
    dp.serve(ca.crl(&[], day()));
    // CRLs are used for a second at most, whatever their nextUpdate (a day).
    let p = proxy_following(
        &up,
        &ca,
        FileLeafCrls {
            max_age: Some(dur("1s")),
            ..FileLeafCrls::default()
        },
    )
    .await;
    let mut h1 = p.client(Some("dp5"), false).await.unwrap();
    let mut h2 = p.client(Some("dp5"), true).await.unwrap();
    for conn in [&mut h1, &mut h2] {
        let id = uuid::Uuid::new_v4().to_string();
        assert_eq!(conn.send(get(&id)).await.unwrap().status, 200);
    }
    // The CA publishes a CRL revoking dp5.
    dp.serve(ca.crl(&["dp5"], day()));
    // Still cached: the open connections pass until the cached CRL is stale.
    let id = uuid::Uuid::new_v4().to_string();
    assert_eq!(h1.send(get(&id)).await.unwrap().status, 200);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for conn in [&mut h1, &mut h2] {
        leaf_refused(
            &p,
            &up,
            conn,
            "identity.client_cert_revoked",
            "crl_dp_revoked",
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_with_only_an_ldap_distribution_point_has_an_unknown_status() {
    let up = Upstream::start(Behaviour::Ok).await;
    let ca = LeafCa::new("leaf CA six");
    let dp = DistributionPoint::start(ca.crl(&[], day()), Duration::ZERO).await;
    ca.leaf(
        "dp6-ldap",
        &["ldap://directory.example/cn=leaf%20CA%20six?certificateRevocationList"],
    );
    ca.leaf("dp6-other", &[&dp.url()]);
    let p = proxy_following(&up, &ca, FileLeafCrls::default()).await;
    let mut conn = p.client(Some("dp6-ldap"), false).await.unwrap();
    leaf_refused(
        &p,
        &up,
        &mut conn,
        "identity.client_cert_revocation_unknown",
        "crl_dp_none",
    )
    .await;
    // A point outside `allowed_urls` is not fetched either.
    let p = proxy_following(
        &up,
        &ca,
        FileLeafCrls {
            allowed_urls: vec!["http://crl.example-ca.com/".into()],
            ..FileLeafCrls::default()
        },
    )
    .await;
    let mut conn = p.client(Some("dp6-other"), false).await.unwrap();
    leaf_refused(
        &p,
        &up,
        &mut conn,
        "identity.client_cert_revocation_unknown",
        "crl_dp_none",
    )
    .await;
    assert_eq!(dp.hits(), 0, "nothing fetched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_that_does_not_verify_never_has_its_distribution_point_fetched() {
    let up = Upstream::start(Behaviour::Ok).await;
    let trusted = LeafCa::new("leaf CA seven");
    // Not a client CA: its certificate fails the handshake before anything reads it.
    let stranger = LeafCa::new("stranger CA");
    let dp = DistributionPoint::start(stranger.crl(&[], day()), Duration::ZERO).await;
    stranger.leaf("dp7-stranger", &[&dp.url()]);
    let p = proxy_following(&up, &trusted, FileLeafCrls::default()).await;
    assert!(refused_at_the_handshake(&p, "dp7-stranger").await);
    assert_eq!(handshake_records(&p, 1, "unknown_ca").await.len(), 1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(dp.hits(), 0);
    assert_eq!(up.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handshake_lets_through_only_an_unknown_status_that_is_the_leafs_alone() {
    let up = Upstream::start(Behaviour::Ok).await;
    let root = LeafCa::new("leaf root eight");
    let dp = DistributionPoint::start(root.crl(&[], day()), Duration::ZERO).await;
    // An intermediate of `root`, sent by the client: the listener has no CRL of `root`, so the
    // intermediate's own status is unknown, and that is refused at the handshake as before.
    let (a, a_pem) = intermediate(&root.issuer, "intermediate eight a");
    issue_leaf(&a, "dp8-a", &[&dp.url()], &a_pem);
    // An intermediate of the dev CA, whose CRL (the file) covers it: only the leaf's status is
    // unknown, so the handshake passes; its issuing CA is not a client CA, so the CRL it names
    // cannot be verified (fail closed) and is not fetched.
    let (b, b_pem) = intermediate(&dev_ca_issuer(), "intermediate eight b");
    issue_leaf(&b, "dp8-b", &[&dp.url()], &b_pem);
    let p = proxy_following(&up, &root, FileLeafCrls::default()).await;
    assert!(refused_at_the_handshake(&p, "dp8-a").await);
    assert_eq!(
        handshake_records(&p, 1, "revocation_unknown").await.len(),
        1
    );
    let mut conn = p.client(Some("dp8-b"), false).await.unwrap();
    leaf_refused(
        &p,
        &up,
        &mut conn,
        "identity.client_cert_revocation_unknown",
        "crl_dp_invalid",
    )
    .await;
    assert_eq!(dp.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_distribution_point_is_fetched_with_the_configured_trust_only() {
    let up = Upstream::start(Behaviour::Ok).await;
    let ca = LeafCa::new("leaf CA nine");
    let served = tempfile::tempdir().unwrap();
    let server = HttpsCrlServer::start(served.path());
    let url = format!("https://localhost:{}/leaf-ca.crl", server.port);
    ca.leaf("dp9-good", &[&url]);
    ca.leaf("dp9-revoked", &[&url]);
    replace(
        &served.path().join("leaf-ca.crl"),
        ca.crl(&["dp9-revoked"], day()),
    );
    let p = proxy_following(
        &up,
        &ca,
        FileLeafCrls {
            ca: vec![certs().join("ca.pem").display().to_string()],
            ..FileLeafCrls::default()
        },
    )
    .await;
    leaf_passes(&p, "dp9-good", "crl_dp_good").await;
    let mut conn = p.client(Some("dp9-revoked"), false).await.unwrap();
    leaf_refused(
        &p,
        &up,
        &mut conn,
        "identity.client_cert_revoked",
        "crl_dp_revoked",
    )
    .await;
    // No trust configured: the https:// point cannot be verified, so it is not reached.
    let q = proxy_following(&up, &ca, FileLeafCrls::default()).await;
    let mut conn = q.client(Some("dp9-good"), false).await.unwrap();
    leaf_refused(
        &q,
        &up,
        &mut conn,
        "identity.client_cert_revocation_unknown",
        "crl_dp_unavailable",
    )
    .await;
}

#[test]
fn bad_leaf_crl_settings_are_refused_at_load_naming_the_field() {
    for (leaf, field, why) in [
        (
            FileLeafCrls {
                fail: Some("maybe".into()),
                ..FileLeafCrls::default()
            },
            "listener.tls.leaf_crls.fail",
            "unknown value `maybe` (closed or open)",
        ),
        (
            FileLeafCrls {
                allowed_urls: vec!["ldap://directory.example/".into()],
                ..FileLeafCrls::default()
            },
            "listener.tls.leaf_crls.allowed_urls[0]",
            "is not an http:// or https:// URL prefix",
        ),
        (
            FileLeafCrls {
                allowed_urls: vec!["https://crl.example-ca.com/".into()],
                ..FileLeafCrls::default()
            },
            "listener.tls.leaf_crls.ca",
            "needs its CA bundle",
        ),
        (
            FileLeafCrls {
                max_bytes: Some(0),
                ..FileLeafCrls::default()
            },
            "listener.tls.leaf_crls.max_bytes",
            "must be above zero",
        ),
        (
            FileLeafCrls {
                max_age: Some(dur("0s")),
                ..FileLeafCrls::default()
            },
            "listener.tls.leaf_crls.max_age",
            "must be above zero",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut o = Options::new("127.0.0.1:9".parse().unwrap());
        o.config.listener.tls.leaf_crls = Some(leaf);
        std::fs::create_dir_all(dir.path().join("policies")).unwrap();
        std::fs::write(dir.path().join("policies/test.yaml"), &o.policy).unwrap();
        let path = dir.path().join("portcullis.yaml");
        std::fs::write(&path, o.config_text()).unwrap();
        let err = match portcullis_proxy::config::Config::load(&path) {
            Ok(_) => panic!("{field}: loaded"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains(field), "{field}: {err}");
        assert!(err.contains(why), "{field}: {err}");
    }
}
