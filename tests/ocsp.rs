//! OCSP (RFC 6960) for client certificates, against a real `openssl ocsp` responder process on
//! loopback: good passes; revoked and unknown are refused; a responder that is down refuses
//! (fail closed) or lets through and counts it (fail open); an answer signed by a key that may
//! not speak for the CA is refused; a certificate revoked after its connection was opened is
//! refused on that connection once the cached answer is stale; the responder a certificate
//! names in its Authority Information Access is found (`responder: auto`). Refusals are checked
//! three ways: the answer, nothing at the upstream, exactly one audit record saying why.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use common::*;

const ACCOUNTS: &str = "/open-banking/v3.1/aisp/accounts";

fn get(id: &str) -> http::Request<http_body_util::Full<Bytes>> {
    req("GET", ACCOUNTS)
        .header("x-fapi-interaction-id", id)
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap()
}

/// The dev CA as an rcgen issuer (its name in the order `dev-certs` writes it).
fn dev_ca() -> rcgen::Issuer<'static, rcgen::KeyPair> {
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

/// An OCSP responder certificate (`id-kp-OCSPSigning`) and key, issued by `issuer` (or
/// self-signed), written to `dir` as `name.pem` / `name.key`.
fn responder_cert(
    dir: &Path,
    name: &str,
    issuer: Option<&rcgen::Issuer<'_, rcgen::KeyPair>>,
) -> (PathBuf, PathBuf) {
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, format!("{name} OCSP responder"));
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::OcspSigning];
    p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = match issuer {
        Some(i) => p.signed_by(&key, i).unwrap(),
        None => p.self_signed(&key).unwrap(),
    };
    let (c, k) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

/// The serial of the dev certificate `name` as `openssl ocsp`'s index writes it.
fn serial_of(path: &Path) -> String {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_file(path).unwrap();
    portcullis_crypto::pki::ClientCert::from_der(der.as_ref())
        .unwrap()
        .serial_hex
        .to_uppercase()
}

/// An `openssl ca` index: `good` certificates valid, `revoked` ones revoked a minute ago;
/// any other certificate is unknown to the responder.
fn index(good: &[&Path], revoked: &[&Path]) -> String {
    let mut out = String::new();
    for (i, c) in good.iter().enumerate() {
        out.push_str(&format!(
            "V\t491231235959Z\t\t{}\tunknown\t/CN=good {i}\n",
            serial_of(c)
        ));
    }
    let t = time::OffsetDateTime::now_utc() - time::Duration::minutes(1);
    let when = format!(
        "{:02}{:02}{:02}{:02}{:02}{:02}Z",
        t.year() % 100,
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
    for (i, c) in revoked.iter().enumerate() {
        out.push_str(&format!(
            "R\t491231235959Z\t{when}\t{}\tunknown\t/CN=revoked {i}\n",
            serial_of(c)
        ));
    }
    out
}

/// `openssl ocsp` answering from an index for the dev CA, on a loopback port. Killed on drop.
struct Responder {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Responder {
    /// Starts on `port` (0: any free one), signing with `signer` (certificate, key).
    fn start(port: u16, index: &str, signer: &(PathBuf, PathBuf)) -> Responder {
        use std::io::BufRead;
        let dir = tempfile::tempdir().unwrap();
        let idx = dir.path().join("index.txt");
        std::fs::write(&idx, index).unwrap();
        let mut child = std::process::Command::new("openssl")
            .arg("ocsp")
            .arg("-index")
            .arg(&idx)
            .args(["-port", &port.to_string()])
            .arg("-rsigner")
            .arg(&signer.0)
            .arg("-rkey")
            .arg(&signer.1)
            .arg("-CA")
            .arg(certs().join("ca.pem"))
            .args(["-ndays", "1"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run `openssl ocsp` (test.sh installs the openssl CLI): {e}")
            });
        // "ACCEPT [::]:40123 PID=1234" once it listens. (Not a probe connection: the
        // responder serves one connection at a time and an empty one stalls it.)
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .strip_prefix("ACCEPT ")
            .and_then(|r| r.split(' ').next())
            .and_then(|a| a.rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| {
                let _ = child.kill();
                panic!("`openssl ocsp` said {line:?}")
            });
        Responder {
            child,
            port,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The delegated responder of the dev CA (OCSPSigning EKU), in `dir`.
fn delegated(dir: &Path) -> (PathBuf, PathBuf) {
    responder_cert(dir, "delegated", Some(&dev_ca()))
}

/// A proxy whose listener asks `responder` (a URL or `auto`), with `fail` and `max_age`, and
/// has no CRL.
async fn proxy(up: &Upstream, responder: &str, fail: &str, max_age: &str) -> Proxy {
    let mut o = Options::new(up.addr);
    // No CRL: the kit's dev CRL revokes `revoked` at the handshake; here OCSP alone decides.
    o.config.listener.tls.crl = Vec::new();
    o.config.listener.tls.ocsp = Some(FileOcsp {
        responder: Some(responder.to_string()),
        fail: Some(fail.to_string()),
        fetch_timeout: Some(dur("2s")),
        max_age: Some(dur(max_age)),
        ..FileOcsp::default()
    });
    Proxy::start(o).await
}

/// The value of the metric line starting with `prefix` (name and labels).
async fn metric(p: &Proxy, prefix: &str) -> f64 {
    let (_, m) = p.admin_get("/metrics").await;
    m.lines()
        .find_map(|l| l.strip_prefix(prefix)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in\n{m}"))
}

/// A request as `identity` on `conn` is refused 401 with `reason`, nothing reaches the
/// upstream, and exactly one audit record says why (`revocation`).
async fn refused(
    p: &Proxy,
    up: &Upstream,
    conn: &mut portcullis_tools::client::Conn,
    reason: &str,
    revocation: &str,
) {
    let before = up.count();
    let id = uuid::Uuid::new_v4().to_string();
    let a = conn.send(get(&id)).await.unwrap();
    assert_eq!(a.status, 401, "{:?}", a.json());
    assert_eq!(a.json()["reason"], reason);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(up.count(), before, "nothing forwarded");
    let rec = p.audit_of(&id).await;
    assert_eq!(rec["reason"], reason);
    assert_eq!(rec["decision"], "deny");
    assert_eq!(rec["stage"], "identity");
    assert_eq!(rec["revocation"], revocation);
}

/// A request as `identity` on a new connection is forwarded; its record says `revocation`.
async fn passes(p: &Proxy, identity: &str, revocation: &str) {
    let mut c = p.client(Some(identity), false).await.unwrap();
    let id = uuid::Uuid::new_v4().to_string();
    let a = c.send(get(&id)).await.unwrap();
    assert_eq!(a.status, 200, "{identity}: {:?}", a.json());
    let rec = p.audit_of(&id).await;
    assert_eq!(rec["decision"], "allow");
    assert_eq!(rec["revocation"], revocation);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delegated_responder_answers_good_revoked_and_unknown() {
    let up = Upstream::start(Behaviour::Ok).await;
    let dir = tempfile::tempdir().unwrap();
    let signer = delegated(dir.path());
    let c = certs();
    // tpp1 good, `revoked` revoked, tpp2 not in the index: unknown.
    let r = Responder::start(
        0,
        &index(&[&c.join("tpp1.pem")], &[&c.join("revoked.pem")]),
        &signer,
    );
    let p = proxy(&up, &r.url(), "closed", "1h").await;
    passes(&p, "tpp1", "ocsp_good").await;
    let mut conn = p.client(Some("revoked"), false).await.unwrap();
    refused(
        &p,
        &up,
        &mut conn,
        "identity.client_cert_revoked",
        "ocsp_revoked",
    )
    .await;
    let mut conn = p.client(Some("tpp2"), false).await.unwrap();
    refused(
        &p,
        &up,
        &mut conn,
        "identity.client_cert_revocation_unknown",
        "ocsp_unknown",
    )
    .await;
    // The good answer is cached: another request of tpp1 does not ask again.
    let asked = metric(&p, "portcullis_ocsp_requests_total").await;
    passes(&p, "tpp1", "ocsp_good").await;
    assert_eq!(metric(&p, "portcullis_ocsp_requests_total").await, asked);
    assert_eq!(
        metric(&p, "portcullis_ocsp_fetch_failures_total").await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ca_itself_may_sign_the_answers() {
    let up = Upstream::start(Behaviour::Ok).await;
    let c = certs();
    let signer = (c.join("ca.pem"), c.join("ca.key"));
    let r = Responder::start(
        0,
        &index(&[&c.join("tpp1.pem")], &[&c.join("revoked.pem")]),
        &signer,
    );
    let p = proxy(&up, &r.url(), "closed", "1h").await;
    passes(&p, "tpp1", "ocsp_good").await;
    let mut conn = p.client(Some("revoked"), false).await.unwrap();
    refused(
        &p,
        &up,
        &mut conn,
        "identity.client_cert_revoked",
        "ocsp_revoked",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_signed_by_a_responder_the_ca_did_not_delegate_is_refused() {
    let up = Upstream::start(Behaviour::Ok).await;
    let dir = tempfile::tempdir().unwrap();
    // Well formed, OCSPSigning, and self-signed: anyone on the path could make one.
    let signer = responder_cert(dir.path(), "impostor", None);
    let c = certs();
    let r = Responder::start(0, &index(&[&c.join("tpp1.pem")], &[]), &signer);
    let p = proxy(&up, &r.url(), "closed", "1h").await;
    let mut conn = p.client(Some("tpp1"), false).await.unwrap();
    refused(
        &p,
        &up,
        &mut conn,
        "identity.client_cert_revocation_unknown",
        "ocsp_invalid",
    )
    .await;
    assert!(metric(&p, "portcullis_ocsp_fetch_failures_total").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_responder_that_is_down_refuses_when_fail_closed_and_passes_counted_when_fail_open() {
    let up = Upstream::start(Behaviour::Ok).await;
    let dead = Upstream::dead_addr().await;
    let url = format!("http://{dead}/");
    let closed = proxy(&up, &url, "closed", "1h").await;
    let mut conn = closed.client(Some("tpp1"), false).await.unwrap();
    refused(
        &closed,
        &up,
        &mut conn,
        "identity.client_cert_revocation_unknown",
        "ocsp_unavailable",
    )
    .await;
    assert_eq!(
        metric(&closed, "portcullis_ocsp_fetch_failures_total").await,
        1.0
    );
    assert_eq!(
        metric(&closed, "portcullis_ocsp_fail_open_total").await,
        0.0
    );

    let open = proxy(&up, &url, "open", "1h").await;
    assert_eq!(metric(&open, "portcullis_ocsp_fail_open_total").await, 0.0);
    passes(&open, "tpp1", "ocsp_unavailable_fail_open").await;
    assert_eq!(metric(&open, "portcullis_ocsp_fail_open_total").await, 1.0);
    assert_eq!(
        metric(&open, "portcullis_ocsp_fetch_failures_total").await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_revoked_after_its_connection_opened_is_refused_once_the_answer_is_stale() {
    let up = Upstream::start(Behaviour::Ok).await;
    let dir = tempfile::tempdir().unwrap();
    let signer = delegated(dir.path());
    let c = certs();
    let tpp1 = c.join("tpp1.pem");
    let r = Responder::start(0, &index(&[&tpp1], &[]), &signer);
    let port = r.port;
    // Answers are used for a second at most, whatever their nextUpdate (a day).
    let p = proxy(&up, &r.url(), "closed", "1s").await;
    let mut h1 = p.client(Some("tpp1"), false).await.unwrap();
    let mut h2 = p.client(Some("tpp1"), true).await.unwrap();
    for conn in [&mut h1, &mut h2] {
        let id = uuid::Uuid::new_v4().to_string();
        assert_eq!(conn.send(get(&id)).await.unwrap().status, 200);
    }
    // The CA revokes tpp1; its responder says so from now on.
    drop(r);
    let _r = Responder::start(port, &index(&[], &[&tpp1]), &signer);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for conn in [&mut h1, &mut h2] {
        refused(
            &p,
            &up,
            conn,
            "identity.client_cert_revoked",
            "ocsp_revoked",
        )
        .await;
    }
}

/// A client certificate of the dev CA for `name`, naming `ocsp_url` in its Authority
/// Information Access, written into the kit's certificate directory as `name.pem` / `.key`.
fn client_cert_with_aia(name: &str, ocsp_url: &str) -> PathBuf {
    // AuthorityInfoAccessSyntax ::= SEQUENCE OF SEQUENCE { id-ad-ocsp, [6] IA5String URI }.
    let url = ocsp_url.as_bytes();
    assert!(url.len() < 100);
    let mut desc = vec![0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01];
    desc.push(0x86);
    desc.push(url.len() as u8);
    desc.extend_from_slice(url);
    let mut ad = vec![0x30, desc.len() as u8];
    ad.extend(desc);
    let mut aia = vec![0x30, ad.len() as u8];
    aia.extend(ad);
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name
        .push(rcgen::DnType::OrganizationName, "Tpp Aia Ltd");
    p.distinguished_name
        .push(rcgen::DnType::CommonName, name.to_string());
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    p.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    p.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(30);
    p.custom_extensions = vec![rcgen::CustomExtension::from_oid_content(
        &[1, 3, 6, 1, 5, 5, 7, 1, 1],
        aia,
    )];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &dev_ca()).unwrap();
    let path = certs().join(format!("{name}.pem"));
    std::fs::write(&path, cert.pem()).unwrap();
    std::fs::write(certs().join(format!("{name}.key")), key.serialize_pem()).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_asks_the_responder_the_certificate_names() {
    let up = Upstream::start(Behaviour::Ok).await;
    let dir = tempfile::tempdir().unwrap();
    let signer = delegated(dir.path());
    // The port is known once a responder listens on it; the certificates name it.
    let port = Responder::start(0, "", &signer).port;
    let url = format!("http://127.0.0.1:{port}/");
    let good = client_cert_with_aia("aia-good", &url);
    let revoked = client_cert_with_aia("aia-revoked", &url);
    let _r = Responder::start(port, &index(&[&good], &[&revoked]), &signer);
    let p = proxy(&up, "auto", "closed", "1h").await;
    passes(&p, "aia-good", "ocsp_good").await;
    let mut conn = p.client(Some("aia-revoked"), false).await.unwrap();
    refused(
        &p,
        &up,
        &mut conn,
        "identity.client_cert_revoked",
        "ocsp_revoked",
    )
    .await;
    // tpp1 names no responder: with `auto` its status cannot be had (fail closed).
    let mut conn = p.client(Some("tpp1"), false).await.unwrap();
    refused(
        &p,
        &up,
        &mut conn,
        "identity.client_cert_revocation_unknown",
        "ocsp_unavailable",
    )
    .await;
}

#[test]
fn bad_ocsp_settings_are_refused_at_load_naming_the_field() {
    let up: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    for (ocsp, field, why) in [
        (
            FileOcsp {
                responder: Some("ftp://ocsp.example".into()),
                ..FileOcsp::default()
            },
            "listener.tls.ocsp.responder",
            "neither `auto` nor an http:// or https:// URL",
        ),
        (
            FileOcsp {
                fail: Some("maybe".into()),
                ..FileOcsp::default()
            },
            "listener.tls.ocsp.fail",
            "unknown value `maybe` (closed or open)",
        ),
        (
            FileOcsp {
                responder: Some("https://ocsp.example/".into()),
                ..FileOcsp::default()
            },
            "listener.tls.ocsp.ca",
            "needs its CA bundle",
        ),
        (
            FileOcsp {
                max_age: Some(dur("0s")),
                ..FileOcsp::default()
            },
            "listener.tls.ocsp.max_age",
            "must be above zero",
        ),
    ] {
        let mut o = Options::new(up);
        o.config.listener.tls.ocsp = Some(ocsp);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("portcullis.yaml");
        std::fs::create_dir_all(dir.path().join("policies")).unwrap();
        std::fs::write(dir.path().join("policies/test.yaml"), &o.policy).unwrap();
        std::fs::write(&path, o.config_text()).unwrap();
        let err = match portcullis_proxy::config::Config::load(&path) {
            Ok(_) => panic!("{field}: loaded"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(field), "{field}: {err}");
        assert!(err.contains(why), "{field}: {err}");
        assert!(
            err.contains(&path.display().to_string()),
            "names the file: {err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_responder_answering_garbage_an_error_too_much_or_nothing_refuses_when_fail_closed() {
    let up = Upstream::start(Behaviour::Ok).await;
    for (behaviour, revocation) in [
        // 200 with a JSON body: not an OCSP response.
        (Behaviour::Ok, "ocsp_invalid"),
        (Behaviour::Status(503), "ocsp_unavailable"),
        // 64 KiB, over max_bytes.
        (Behaviour::Trickle, "ocsp_unavailable"),
        // Never answers: the request waits fetch_timeout, no longer.
        (Behaviour::Hang, "ocsp_unavailable"),
    ] {
        let responder = Upstream::start(behaviour).await;
        let mut o = Options::new(up.addr);
        o.config.listener.tls.crl = Vec::new();
        o.config.listener.tls.ocsp = Some(FileOcsp {
            responder: Some(format!("http://{}/", responder.addr)),
            fetch_timeout: Some(dur("1s")),
            max_bytes: Some(1024),
            ..FileOcsp::default()
        });
        let p = Proxy::start(o).await;
        let mut conn = p.client(Some("tpp1"), false).await.unwrap();
        let t = std::time::Instant::now();
        refused(
            &p,
            &up,
            &mut conn,
            "identity.client_cert_revocation_unknown",
            revocation,
        )
        .await;
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "{behaviour:?} waited too long"
        );
        assert!(
            responder.count() >= 1,
            "{behaviour:?}: the responder was asked"
        );
        assert_eq!(
            metric(&p, "portcullis_ocsp_fetch_failures_total").await,
            1.0,
            "{behaviour:?}"
        );
    }
}

/// Sends one request on each of `conns` at once; the statuses, in order.
async fn all_at_once(conns: Vec<portcullis_tools::client::Conn>) -> Vec<u16> {
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let id = uuid::Uuid::new_v4().to_string();
                c.send(get(&id)).await.unwrap().status.as_u16()
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_need_the_same_answer_at_once_ask_the_responder_once() {
    let up = Upstream::start(Behaviour::Ok).await;
    let dir = tempfile::tempdir().unwrap();
    let signer = delegated(dir.path());
    let c = certs();
    let r = Responder::start(0, &index(&[&c.join("tpp1.pem")], &[]), &signer);
    let p = proxy(&up, &r.url(), "closed", "1h").await;
    let mut conns = Vec::new();
    for _ in 0..8 {
        conns.push(p.client(Some("tpp1"), false).await.unwrap());
    }
    assert_eq!(all_at_once(conns).await, vec![200; 8]);
    assert_eq!(metric(&p, "portcullis_ocsp_requests_total").await, 1.0);

    // A responder that never answers: one request waits fetch_timeout, the others wait for it
    // and share its failure, rather than each asking and waiting in turn.
    let hang = Upstream::start(Behaviour::Hang).await;
    let mut o = Options::new(up.addr);
    o.config.listener.tls.crl = Vec::new();
    o.config.listener.tls.ocsp = Some(FileOcsp {
        responder: Some(format!("http://{}/", hang.addr)),
        fetch_timeout: Some(dur("1s")),
        ..FileOcsp::default()
    });
    let p = Proxy::start(o).await;
    let mut conns = Vec::new();
    for _ in 0..8 {
        conns.push(p.client(Some("tpp1"), false).await.unwrap());
    }
    let before = up.count();
    let t = std::time::Instant::now();
    assert_eq!(all_at_once(conns).await, vec![401; 8]);
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert_eq!(metric(&p, "portcullis_ocsp_requests_total").await, 1.0);
    assert_eq!(up.count(), before, "nothing forwarded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_the_cached_answers_and_one_without_ocsp_stops_the_check() {
    let up = Upstream::start(Behaviour::Ok).await;
    let dir = tempfile::tempdir().unwrap();
    let signer = delegated(dir.path());
    let c = certs();
    let r = Responder::start(0, &index(&[&c.join("tpp1.pem")], &[]), &signer);
    let p = proxy(&up, &r.url(), "closed", "1h").await;
    passes(&p, "tpp1", "ocsp_good").await;
    assert_eq!(metric(&p, "portcullis_ocsp_requests_total").await, 1.0);
    // Same settings: the same checker, its answers still cached.
    p.shared.reload().expect("reload");
    passes(&p, "tpp1", "ocsp_good").await;
    assert_eq!(metric(&p, "portcullis_ocsp_requests_total").await, 1.0);
    // OCSP taken out of the config, and the responder gone: nothing asks it any more.
    p.edit_config(|c| c.listener.tls.ocsp = None);
    p.shared.reload().expect("reload");
    drop(r);
    let mut conn = p.client(Some("tpp1"), false).await.unwrap();
    let id = uuid::Uuid::new_v4().to_string();
    assert_eq!(conn.send(get(&id)).await.unwrap().status, 200);
    let rec = p.audit_of(&id).await;
    assert_eq!(rec["revocation"], serde_json::Value::Null);
    let (_, m) = p.admin_get("/metrics").await;
    assert!(!m.contains("portcullis_ocsp_"), "{m}");
}
