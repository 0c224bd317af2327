//! Several listeners, and on a listener several virtual hosts chosen by SNI: each host's own
//! certificate, client CAs and `client_auth`, its own routes, the `Host` / `:authority` bound
//! to the host the handshake chose (HTTP/1.1 and a reused HTTP/2 connection), the default host,
//! reloads that add hosts while requests are in flight, and config errors.
//!
//! Real TLS throughout: host certificates issued by the dev CA at run time (rcgen), a second
//! client CA with its own client, and the kit's rustls client with an explicit SNI.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use portcullis_audit::AuditLog;
use portcullis_proxy::config::Config;
use portcullis_proxy::Shared;
use portcullis_tools::client::{tls_config, Answer, BoxError, Conn};

const OPEN: &str = r#"
group: open
upstream: bank
routes:
  - id: open.accounts
    method: GET
    path: /open/accounts
"#;

const CORP: &str = r#"
group: corp
upstream: bank
routes:
  - id: corp.payments
    method: GET
    path: /corp/payments
"#;

const PUBLIC: &str = r#"
group: public
upstream: bank
routes:
  - id: public.status
    method: GET
    path: /public/status
    client_cert: optional
"#;

/// Host certificates (`a`, `b`, `pub`, `c` `.bank.test`, and `w` for `*.w.bank.test`, each
/// also for 127.0.0.1) issued by
/// the dev CA, and a second client CA (`partner-ca.pem`) with its client `partner`.
fn pki() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = tempfile::tempdir().unwrap();
        let now = time::OffsetDateTime::now_utc();
        let dated = |p: &mut rcgen::CertificateParams| {
            p.not_before = now - time::Duration::hours(1);
            p.not_after = now + time::Duration::days(30);
        };
        let dev = dev_ca();
        for host in ["a", "b", "pub", "c", "*.w"] {
            let name = format!("{host}.bank.test");
            let host = host.trim_start_matches("*.");
            let mut p = rcgen::CertificateParams::new(vec![name.clone()]).unwrap();
            p.subject_alt_names.push(rcgen::SanType::IpAddress(
                std::net::Ipv4Addr::LOCALHOST.into(),
            ));
            p.distinguished_name = rcgen::DistinguishedName::new();
            p.distinguished_name.push(rcgen::DnType::CommonName, name);
            p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
            dated(&mut p);
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = p.signed_by(&key, &dev).unwrap();
            std::fs::write(d.path().join(format!("{host}.pem")), cert.pem()).unwrap();
            std::fs::write(d.path().join(format!("{host}.key")), key.serialize_pem()).unwrap();
        }
        let mut pca = rcgen::CertificateParams::default();
        pca.distinguished_name = rcgen::DistinguishedName::new();
        pca.distinguished_name
            .push(rcgen::DnType::OrganizationName, "Partner Trust");
        pca.distinguished_name
            .push(rcgen::DnType::CommonName, "Partner CA");
        pca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        pca.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        dated(&mut pca);
        let pca_key = rcgen::KeyPair::generate().unwrap();
        let pca_cert = pca.self_signed(&pca_key).unwrap();
        std::fs::write(d.path().join("partner-ca.pem"), pca_cert.pem()).unwrap();
        let partner_ca = rcgen::Issuer::new(pca, pca_key);
        let mut p = rcgen::CertificateParams::default();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name
            .push(rcgen::DnType::OrganizationName, "Partner Corp");
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "partner");
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        dated(&mut p);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &partner_ca).unwrap();
        std::fs::write(d.path().join("partner.pem"), cert.pem()).unwrap();
        std::fs::write(d.path().join("partner.key"), key.serialize_pem()).unwrap();
        d
    })
    .path()
}

/// The dev CA as an rcgen issuer (its name in the order `dev-certs` writes it).
fn dev_ca() -> rcgen::Issuer<'static, rcgen::KeyPair> {
    let ca_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(certs().join("ca.key")).unwrap())
            .unwrap();
    let mut ca = rcgen::CertificateParams::default();
    ca.distinguished_name = rcgen::DistinguishedName::new();
    ca.distinguished_name
        .push(rcgen::DnType::OrganizationName, "portcullis dev");
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "portcullis dev CA");
    rcgen::Issuer::new(ca, ca_key)
}

/// A dev CA client certificate `name` naming `point` as its CRL distribution point, written
/// beside the test's host certificates.
fn dev_leaf_naming(name: &str, point: &str) {
    let now = time::OffsetDateTime::now_utc();
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name
        .push(rcgen::DnType::OrganizationName, "Tpp Dp Ltd");
    p.distinguished_name.push(rcgen::DnType::CommonName, name);
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    p.not_before = now - time::Duration::hours(1);
    p.not_after = now + time::Duration::days(30);
    p.crl_distribution_points = vec![rcgen::CrlDistributionPoint {
        uris: vec![point.to_string()],
    }];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &dev_ca()).unwrap();
    std::fs::write(pki().join(format!("{name}.pem")), cert.pem()).unwrap();
    std::fs::write(pki().join(format!("{name}.key")), key.serialize_pem()).unwrap();
}

fn at(p: &Path) -> String {
    p.display().to_string()
}

/// A host `NAME.bank.test` with its certificate, serving `groups`.
fn host(name: &str, client_ca: Option<PathBuf>, auth: &str, groups: &[&str]) -> FileHost {
    FileHost {
        names: vec![format!("{name}.bank.test")],
        default: false,
        tls: FileTls {
            certificate: at(&pki().join(format!("{name}.pem"))),
            private_key: at(&pki().join(format!("{name}.key"))),
            client_ca: client_ca.iter().map(|c| at(c)).collect(),
            client_auth: Some(auth.into()),
            handshake_timeout: Some(dur("2s")),
            ..FileTls::default()
        },
        policy_groups: groups.iter().map(|g| g.to_string()).collect(),
    }
}

/// Host `a` (dev CA, required, group `open`, the default), `b` (partner CA, required, group
/// `corp`) and `pub` (no client certificates, group `public`).
fn three_hosts() -> Vec<FileHost> {
    let mut a = host("a", Some(certs().join("ca.pem")), "required", &["open"]);
    a.default = true;
    a.tls.crl = vec![at(&certs().join("ca.crl"))];
    vec![
        a,
        host(
            "b",
            Some(pki().join("partner-ca.pem")),
            "required",
            &["corp"],
        ),
        host("pub", None, "none", &["public"]),
    ]
}

/// The kit's base config with `listeners` instead of `listener`.
fn config_with(upstream: SocketAddr, listeners: Vec<FileListenerEntry>) -> FileConfig {
    let mut c = base_config(upstream);
    c.listener = FileListener::default();
    c.listeners = listeners;
    c.workers = Some(2);
    c
}

fn one_listener(hosts: Vec<FileHost>) -> Vec<FileListenerEntry> {
    vec![FileListenerEntry {
        address: "127.0.0.1:0".into(),
        limits: FileLimits::default(),
        hosts,
    }]
}

/// Writes the three policy groups and `config`, and starts the proxy in process.
async fn start(config: FileConfig) -> Proxy {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    for (file, text) in [("open", OPEN), ("corp", CORP), ("public", PUBLIC)] {
        std::fs::write(dir.path().join(format!("policies/{file}.yaml")), text).unwrap();
    }
    let path = dir.path().join("portcullis.yaml");
    std::fs::write(&path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
    let config = Config::load(&path).unwrap_or_else(|e| panic!("config: {e}"));
    let audit = AuditLog::start(&config.audit).unwrap();
    let shared = Arc::new(Shared::new(config, audit, Some(path)));
    let running = portcullis_proxy::start(Arc::clone(&shared)).await.unwrap();
    Proxy {
        addr: running.addr,
        admin: running.admin_addr.unwrap(),
        dir,
        shared,
        running: Some(running),
    }
}

/// A client `who` of the test's own (`partner`, or one [`dev_leaf_naming`] wrote) or of the
/// kit (`tpp1`, dev CA), as certificate and key paths.
fn identity(who: &str) -> (PathBuf, PathBuf) {
    let dir = if pki().join(format!("{who}.pem")).exists() {
        pki()
    } else {
        certs()
    };
    (
        dir.join(format!("{who}.pem")),
        dir.join(format!("{who}.key")),
    )
}

/// A TLS connection to `addr` sending `sni` (an IP address sends none), as `who`.
async fn connect_as(
    addr: SocketAddr,
    sni: &str,
    who: Option<&str>,
    h2: bool,
) -> Result<Conn, BoxError> {
    let id = who.map(identity);
    let cfg = tls_config(
        &certs().join("ca.pem"),
        id.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
        h2,
    )?;
    Conn::connect(addr, sni, cfg).await
}

/// A GET of `path` naming `host` (HTTP/1.1 `Host`, HTTP/2 `:authority`) with a fresh
/// interaction id, which it returns.
fn get(host: &str, path: &str, h2: bool) -> (http::Request<Full<Bytes>>, String) {
    let id = uuid::Uuid::new_v4().to_string();
    let b = if h2 {
        http::Request::get(format!("https://{host}{path}"))
    } else {
        http::Request::get(path).header("host", host)
    };
    let r = b
        .header("x-fapi-interaction-id", &id)
        .body(Full::new(Bytes::new()))
        .unwrap();
    (r, id)
}

/// The handshake as `who` with `sni` fails (in TLS 1.3 a refused client certificate shows on
/// the first request).
async fn refused_at_handshake(addr: SocketAddr, sni: &str, who: Option<&str>, host: &str) -> bool {
    match connect_as(addr, sni, who, false).await {
        Err(_) => true,
        Ok(mut c) => c.send(get(host, "/open/accounts", false).0).await.is_err(),
    }
}

async fn ok(c: &mut Conn, host: &str, path: &str, h2: bool) -> Answer {
    let a = c.send(get(host, path, h2).0).await.unwrap();
    assert_eq!(
        a.status,
        200,
        "{host}{path}: {}",
        String::from_utf8_lossy(&a.body)
    );
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_with_different_client_cas_each_take_only_their_own_clients() {
    let up = Upstream::start(Behaviour::Ok).await;
    let p = start(config_with(up.addr, one_listener(three_hosts()))).await;

    let mut a = connect_as(p.addr, "a.bank.test", Some("tpp1"), false)
        .await
        .unwrap();
    ok(&mut a, "a.bank.test", "/open/accounts", false).await;
    let mut b = connect_as(p.addr, "b.bank.test", Some("partner"), false)
        .await
        .unwrap();
    ok(&mut b, "b.bank.test", "/corp/payments", false).await;
    // The identity upstream is the certificate of the host's own CA.
    let seen = up.seen();
    assert_eq!(seen.len(), 2);
    assert!(seen[1].headers.contains_key("client-cert"), "{seen:?}");

    // Each host's CA only: the other host's client is refused in the handshake, recorded.
    assert!(refused_at_handshake(p.addr, "b.bank.test", Some("tpp1"), "b.bank.test").await);
    assert!(refused_at_handshake(p.addr, "a.bank.test", Some("partner"), "a.bank.test").await);
    // client_auth: required on both: no certificate, no connection.
    assert!(refused_at_handshake(p.addr, "a.bank.test", None, "a.bank.test").await);
    assert_eq!(up.count(), 2, "nothing more reached the upstream");
    let recs = p.audit_where(3, |r| r["kind"] == "tls_handshake").await;
    let failures: Vec<&str> = recs.iter().filter_map(|r| r["failure"].as_str()).collect();
    assert_eq!(
        failures,
        ["unknown_ca", "unknown_ca", "no_client_cert"],
        "{recs:?}"
    );

    // client_auth: none on `pub`: no certificate asked, its public route answers.
    let mut public = connect_as(p.addr, "pub.bank.test", None, false)
        .await
        .unwrap();
    ok(&mut public, "pub.bank.test", "/public/status", false).await;
    // A host serves its own groups' routes only: a's route is unknown on b.
    let (r, id) = get("b.bank.test", "/open/accounts", false);
    let answer = b.send(r).await.unwrap();
    refused_after(&p, &up, 3, &answer, &id, 404, "route.not_found").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_host_applies_its_own_leaf_crls_setting() {
    let up = Upstream::start(Behaviour::Ok).await;
    let dead = Upstream::dead_addr().await;
    dev_leaf_naming("vh-dp", &format!("http://{dead}/dev-ca.crl"));
    // `a` follows the CRLs client certificates name (fail closed); `c`, on the same listener
    // with the same CA and CRL file, does not.
    let mut hosts = three_hosts();
    hosts[0].tls.leaf_crls = Some(FileLeafCrls {
        fetch_timeout: Some(dur("2s")),
        ..FileLeafCrls::default()
    });
    let mut c = host("c", Some(certs().join("ca.pem")), "required", &["open"]);
    c.tls.crl = vec![at(&certs().join("ca.crl"))];
    hosts.push(c);
    let p = start(config_with(up.addr, one_listener(hosts))).await;

    // On `c` the issuer's CRL file decides at the handshake: the certificate is not revoked.
    let mut on_c = connect_as(p.addr, "c.bank.test", Some("vh-dp"), false)
        .await
        .unwrap();
    ok(&mut on_c, "c.bank.test", "/open/accounts", false).await;
    // On `a` the point it names is asked per request, and cannot be reached.
    let mut on_a = connect_as(p.addr, "a.bank.test", Some("vh-dp"), false)
        .await
        .unwrap();
    let (r, id) = get("a.bank.test", "/open/accounts", false);
    let answer = on_a.send(r).await.unwrap();
    refused_after(
        &p,
        &up,
        1,
        &answer,
        &id,
        401,
        "identity.client_cert_revocation_unknown",
    )
    .await;
    assert_eq!(
        p.audit_of(&id).await["revocation_crl"],
        "crl_dp_unavailable"
    );
}

/// [`assert_refused`] for an upstream that had received `n` requests before: status and
/// reason, nothing more upstream, one audit record that says why.
async fn refused_after(
    p: &Proxy,
    up: &Upstream,
    n: usize,
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
    assert_eq!(a.headers["x-fapi-interaction-id"], id);
    assert_eq!(up.count(), n, "the upstream must receive nothing more");
    let rec = p.audit_of(id).await;
    assert_eq!(rec["reason"], reason);
    assert_eq!(rec["status"], status);
    assert_eq!(rec["decision"], "deny");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_other_than_the_sni_host_is_misdirected_over_http1() {
    let up = Upstream::start(Behaviour::Ok).await;
    let p = start(config_with(up.addr, one_listener(three_hosts()))).await;
    // The bypass: a handshake with the host that asks no certificate, a request for the host
    // that requires one.
    let mut c = connect_as(p.addr, "pub.bank.test", None, false)
        .await
        .unwrap();
    let (r, id) = get("b.bank.test", "/corp/payments", false);
    let a = c.send(r).await.unwrap();
    assert_refused(&p, &up, &a, &id, 421, "http.misdirected").await;
    // The same with a client certificate: SNI a (dev CA), Host b (partner CA).
    let mut c = connect_as(p.addr, "a.bank.test", Some("tpp1"), false)
        .await
        .unwrap();
    let (r, id) = get("b.bank.test:443", "/corp/payments", false);
    let a = c.send(r).await.unwrap();
    assert_refused(&p, &up, &a, &id, 421, "http.misdirected").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_request_for_another_host_on_a_reused_http2_connection_is_misdirected() {
    let up = Upstream::start(Behaviour::Ok).await;
    let p = start(config_with(up.addr, one_listener(three_hosts()))).await;
    let mut c = connect_as(p.addr, "pub.bank.test", None, true)
        .await
        .unwrap();
    ok(&mut c, "pub.bank.test", "/public/status", true).await;
    assert_eq!(up.count(), 1);
    let (r, id) = get("b.bank.test", "/corp/payments", true);
    let a = c.send(r).await.unwrap();
    refused_after(&p, &up, 1, &a, &id, 421, "http.misdirected").await;
    // Also a host with a certificate: the connection's CA is not the other host's.
    let (r, id) = get("a.bank.test", "/open/accounts", true);
    let a = c.send(r).await.unwrap();
    refused_after(&p, &up, 1, &a, &id, 421, "http.misdirected").await;
    // The connection still serves its own host.
    ok(&mut c, "pub.bank.test", "/public/status", true).await;
    assert_eq!(up.count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_sni_the_default_host_answers_or_the_handshake_is_refused() {
    let up = Upstream::start(Behaviour::Ok).await;
    let mut hosts = three_hosts();
    let p = start(config_with(up.addr, one_listener(hosts.clone()))).await;
    // An IP address sends no SNI: the default host `a`, its CA, its names.
    let mut c = connect_as(p.addr, "127.0.0.1", Some("tpp1"), false)
        .await
        .unwrap();
    ok(&mut c, "a.bank.test", "/open/accounts", false).await;
    let (r, id) = get("b.bank.test", "/corp/payments", false);
    let a = c.send(r).await.unwrap();
    refused_after(&p, &up, 1, &a, &id, 421, "http.misdirected").await;

    // No default host: no SNI, or a name no host has, is refused in the handshake, recorded.
    hosts[0].default = false;
    let up2 = Upstream::start(Behaviour::Ok).await;
    let q = start(config_with(up2.addr, one_listener(hosts))).await;
    assert!(refused_at_handshake(q.addr, "127.0.0.1", Some("tpp1"), "a.bank.test").await);
    assert!(refused_at_handshake(q.addr, "zz.bank.test", Some("tpp1"), "zz.bank.test").await);
    assert_eq!(up2.count(), 0);
    let recs = q.audit_where(2, |r| r["kind"] == "tls_handshake").await;
    assert_eq!(recs.len(), 2, "{recs:?}");
    assert!(
        recs.iter().all(|r| r["failure"] == "unknown_server_name"),
        "{recs:?}"
    );
    let (_, metrics) = q.admin_get("/metrics").await;
    assert!(
        metrics
            .contains("portcullis_tls_handshake_failures_total{failure=\"unknown_server_name\"} 2"),
        "{metrics}"
    );
    // With SNI the hosts answer as before.
    let mut c = connect_as(q.addr, "a.bank.test", Some("tpp1"), false)
        .await
        .unwrap();
    ok(&mut c, "a.bank.test", "/open/accounts", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wildcard_host_takes_any_one_label_under_its_domain() {
    let up = Upstream::start(Behaviour::Ok).await;
    let mut hosts = three_hosts();
    let mut wild = host("w", Some(certs().join("ca.pem")), "required", &["corp"]);
    wild.names = vec!["*.w.bank.test".into()];
    hosts.push(wild);
    hosts[1].policy_groups = vec!["open".into()];
    let p = start(config_with(up.addr, one_listener(hosts))).await;
    let mut c = connect_as(p.addr, "x.w.bank.test", Some("tpp1"), true)
        .await
        .unwrap();
    ok(&mut c, "x.w.bank.test", "/corp/payments", true).await;
    // Another name under the same wildcard is the same host.
    ok(&mut c, "y.w.bank.test", "/corp/payments", true).await;
    for other in ["w.bank.test", "a.b.w.bank.test", "a.bank.test"] {
        let (r, id) = get(other, "/corp/payments", true);
        let a = c.send(r).await.unwrap();
        refused_after(&p, &up, 2, &a, &id, 421, "http.misdirected").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_listeners_on_two_ports_serve_different_policies() {
    let up = Upstream::start(Behaviour::Ok).await;
    let (first, second) = (free_addr(), free_addr());
    let mut a = host("a", Some(certs().join("ca.pem")), "required", &["open"]);
    a.default = true;
    let mut corp = host("a", Some(certs().join("ca.pem")), "required", &["corp"]);
    corp.default = true;
    let listeners = vec![
        FileListenerEntry {
            address: first.to_string(),
            limits: FileLimits::default(),
            hosts: vec![a, host("pub", None, "none", &["public"])],
        },
        FileListenerEntry {
            address: second.to_string(),
            limits: FileLimits::default(),
            hosts: vec![corp],
        },
    ];
    let p = start(config_with(up.addr, listeners)).await;
    assert_eq!(p.running.as_ref().unwrap().addrs, [first, second]);
    let mut one = connect_as(first, "a.bank.test", Some("tpp1"), false)
        .await
        .unwrap();
    let mut two = connect_as(second, "a.bank.test", Some("tpp1"), false)
        .await
        .unwrap();
    ok(&mut one, "a.bank.test", "/open/accounts", false).await;
    ok(&mut two, "a.bank.test", "/corp/payments", false).await;
    assert_eq!(up.count(), 2);
    let (r, id) = get("a.bank.test", "/corp/payments", false);
    let answer = one.send(r).await.unwrap();
    refused_after(&p, &up, 2, &answer, &id, 404, "route.not_found").await;
    let (r, id) = get("a.bank.test", "/open/accounts", false);
    let answer = two.send(r).await.unwrap();
    refused_after(&p, &up, 2, &answer, &id, 404, "route.not_found").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_records_and_metrics_name_the_listener_and_host_that_served() {
    let up = Upstream::start(Behaviour::Ok).await;
    let (first, second) = (free_addr(), free_addr());
    let mut a = host("a", Some(certs().join("ca.pem")), "required", &["open"]);
    a.default = true;
    let mut corp = host("a", Some(certs().join("ca.pem")), "required", &["corp"]);
    corp.default = true;
    let listeners = vec![
        FileListenerEntry {
            address: first.to_string(),
            limits: FileLimits::default(),
            hosts: vec![a, host("pub", None, "none", &["public"])],
        },
        FileListenerEntry {
            address: second.to_string(),
            limits: FileLimits::default(),
            hosts: vec![corp],
        },
    ];
    let p = start(config_with(up.addr, listeners)).await;
    let mut conns = [
        connect_as(first, "a.bank.test", Some("tpp1"), false)
            .await
            .unwrap(),
        connect_as(first, "pub.bank.test", None, false)
            .await
            .unwrap(),
        connect_as(second, "a.bank.test", Some("tpp1"), false)
            .await
            .unwrap(),
    ];
    let mut served = Vec::new();
    for (c, name, path, listener, host) in [
        (0, "a.bank.test", "/open/accounts", first, "a.bank.test"),
        (1, "pub.bank.test", "/public/status", first, "pub.bank.test"),
        (2, "a.bank.test", "/corp/payments", second, "a.bank.test"),
        (2, "a.bank.test", "/corp/payments", second, "a.bank.test"),
    ] {
        let (r, id) = get(name, path, false);
        let answer = conns[c].send(r).await.unwrap();
        assert_eq!(answer.status, 200, "{name}{path}");
        served.push((id, listener, host));
    }
    // A refusal names the host whose handshake the connection made, not the one it asked for.
    let (r, id) = get("pub.bank.test", "/public/status", false);
    let answer = conns[0].send(r).await.unwrap();
    refused_after(&p, &up, 4, &answer, &id, 421, "http.misdirected").await;
    served.push((id, first, "a.bank.test"));
    for (id, listener, host) in &served {
        let rec = p.audit_of(id).await;
        assert_eq!(rec["listener"], listener.to_string(), "{rec}");
        assert_eq!(rec["host"], *host, "{rec}");
    }
    let (_, metrics) = p.admin_get("/metrics").await;
    for (listener, host, n) in [
        (first, "a.bank.test", 2),
        (first, "pub.bank.test", 1),
        (second, "a.bank.test", 2),
    ] {
        let line = format!(
            "portcullis_host_requests_total{{listener=\"{listener}\",host=\"{host}\"}} {n}"
        );
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adds_a_host_and_a_listener_while_a_slow_request_completes() {
    let up = Upstream::start(Behaviour::Delay(Duration::from_millis(1500))).await;
    let p = start(config_with(up.addr, one_listener(three_hosts()))).await;
    let mut slow = connect_as(p.addr, "a.bank.test", Some("tpp1"), false)
        .await
        .unwrap();
    let in_flight = tokio::spawn(async move {
        let a = slow
            .send(get("a.bank.test", "/open/accounts", false).0)
            .await
            .unwrap();
        (a.status, slow)
    });
    for _ in 0..100 {
        if up.count() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(up.count(), 1, "the slow request reached the upstream");
    up.set(Behaviour::Ok);

    // Not served yet: the handshake for `c` gets the default host, whose certificate does not
    // name it.
    assert!(connect_as(p.addr, "c.bank.test", Some("tpp1"), false)
        .await
        .is_err());
    let extra = free_addr();
    p.edit_config(|c| {
        c.listeners[0].hosts.push(host(
            "c",
            Some(certs().join("ca.pem")),
            "required",
            &["open"],
        ));
        let mut only = host("c", Some(certs().join("ca.pem")), "required", &["corp"]);
        only.default = true;
        c.listeners.push(FileListenerEntry {
            address: extra.to_string(),
            limits: FileLimits::default(),
            hosts: vec![only],
        });
    });
    p.shared.reload().expect("the reload is taken");
    let mut c = connect_as(p.addr, "c.bank.test", Some("tpp1"), false)
        .await
        .unwrap();
    ok(&mut c, "c.bank.test", "/open/accounts", false).await;
    let mut d = connect_as(extra, "c.bank.test", Some("tpp1"), false)
        .await
        .unwrap();
    ok(&mut d, "c.bank.test", "/corp/payments", false).await;

    let (status, mut slow) = in_flight.await.unwrap();
    assert_eq!(
        status, 200,
        "the request in flight across the reload completed"
    );
    // Its host did not change: its connection goes on serving.
    ok(&mut slow, "a.bank.test", "/open/accounts", false).await;
    let recs = p.audit_where(4, |r| r["status"] == 200).await;
    assert_eq!(recs.len(), 4, "{recs:?}");

    // Removing the listener again: it stops accepting.
    p.edit_config(|c| {
        c.listeners.pop();
    });
    p.shared.reload().expect("the reload is taken");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(connect_as(extra, "c.bank.test", Some("tpp1"), false)
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_host_refuses_the_requests_of_its_open_connections() {
    let up = Upstream::start(Behaviour::Ok).await;
    let p = start(config_with(up.addr, one_listener(three_hosts()))).await;
    let mut b = connect_as(p.addr, "b.bank.test", Some("partner"), false)
        .await
        .unwrap();
    ok(&mut b, "b.bank.test", "/corp/payments", false).await;
    p.edit_config(|c| {
        c.listeners[0].hosts.remove(1);
        // Its group must be served somewhere.
        c.listeners[0].hosts[0].policy_groups.push("corp".into());
    });
    p.shared.reload().expect("the reload is taken");
    let (r, id) = get("b.bank.test", "/corp/payments", false);
    let a = b.send(r).await.unwrap();
    refused_after(&p, &up, 1, &a, &id, 421, "http.misdirected").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_whose_new_listener_cannot_bind_is_refused_whole() {
    let up = Upstream::start(Behaviour::Ok).await;
    let p = start(config_with(up.addr, one_listener(three_hosts()))).await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap();
    p.edit_config(|c| {
        c.listeners[0].hosts.push(host(
            "c",
            Some(certs().join("ca.pem")),
            "required",
            &["open"],
        ));
        let mut h = host("c", Some(certs().join("ca.pem")), "required", &["corp"]);
        h.default = true;
        c.listeners.push(FileListenerEntry {
            address: busy.to_string(),
            limits: FileLimits::default(),
            hosts: vec![h],
        });
    });
    let e = p.shared.reload().expect_err("the address is taken");
    let text = e.to_string();
    assert!(
        text.contains("listeners[1].address") && text.contains(&busy.to_string()),
        "{text}"
    );
    // The old config stays: `c` is not served.
    assert!(connect_as(p.addr, "c.bank.test", Some("tpp1"), false)
        .await
        .is_err());
    let mut a = connect_as(p.addr, "a.bank.test", Some("tpp1"), false)
        .await
        .unwrap();
    ok(&mut a, "a.bank.test", "/open/accounts", false).await;
    let (_, metrics) = p.admin_get("/metrics").await;
    assert!(
        metrics.contains("portcullis_config_reloads_total{result=\"failed\"} 1"),
        "{metrics}"
    );
}

/// `check` on a config with these listeners: its exit code and stderr.
fn check(listeners: Vec<FileListenerEntry>, keep_listener: bool) -> (Option<i32>, String) {
    let up: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let mut c = config_with(up, listeners);
    if keep_listener {
        c.listener = base_config(up).listener;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    for (file, text) in [("open", OPEN), ("corp", CORP), ("public", PUBLIC)] {
        std::fs::write(dir.path().join(format!("policies/{file}.yaml")), text).unwrap();
    }
    let path = dir.path().join("portcullis.yaml");
    std::fs::write(&path, serde_json::to_string_pretty(&c).unwrap()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout),
    )
}

#[test]
fn bad_listener_and_host_configs_are_refused_naming_the_field() {
    let (code, out) = check(one_listener(three_hosts()), false);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("listener 127.0.0.1:0 (3 host(s))")
            && out
                .contains("host   a.bank.test [default] (mTLS Required, 1 client CA(s), 1 CRL(s)")
            && out.contains(
                "host   pub.bank.test (mTLS None, 0 client CA(s), 0 CRL(s); groups public)"
            ),
        "{out}"
    );

    let mut hosts = three_hosts();
    hosts[1].names.push("A.bank.test".into());
    hosts[2].default = true;
    hosts[2].policy_groups = vec!["public".into(), "nope".into()];
    hosts[2].tls.client_ca = vec![at(&certs().join("ca.pem"))];
    hosts[2].tls.leaf_crls = Some(FileLeafCrls::default());
    let (code, out) = check(one_listener(hosts), false);
    assert_eq!(code, Some(1), "{out}");
    for (field, why) in [
        (
            "listeners[0].hosts[1].names[1]",
            "`a.bank.test` is already a name of listeners[0].hosts[0]",
        ),
        (
            "listeners[0].hosts[2].default",
            "listeners[0].hosts[0] is already the default host",
        ),
        (
            "listeners[0].hosts[2].tls.client_ca",
            "client_auth: none asks for no client certificate",
        ),
        (
            "listeners[0].hosts[2].tls.leaf_crls",
            "client_auth: none asks for no client certificate",
        ),
    ] {
        assert!(out.contains(field) && out.contains(why), "{field}: {out}");
    }

    // A group no host serves; a group no policy file has.
    let mut hosts = three_hosts();
    hosts[1].policy_groups = vec!["nope".into()];
    let (code, out) = check(one_listener(hosts), false);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("listeners[0].hosts[1].policy_groups[0]")
            && out.contains("no policy file has `group: nope`")
            && out.contains("policy group `corp` is bound to no host"),
        "{out}"
    );

    // `listener` and `listeners` together; a wildcard that is not one; two listeners on one
    // address.
    let mut hosts = three_hosts();
    hosts[0].names.push("*.com".into());
    let mut twice = one_listener(hosts);
    twice[0].address = "127.0.0.1:8443".into();
    twice.push(twice[0].clone());
    twice[1].hosts[0].default = true;
    let (code, out) = check(twice, true);
    assert_eq!(code, Some(1), "{out}");
    for field in [
        "listener: use either `listener` (one host) or `listeners`",
        "listeners[0].hosts[0].names[1]",
        "listeners[1].address: 127.0.0.1:8443 is already the address of listeners[0]",
    ] {
        assert!(out.contains(field), "{field}: {out}");
    }
}
