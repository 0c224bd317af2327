use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use proptest::prelude::*;
use rcgen::{
    CertificateParams, CustomExtension, DistinguishedName, DnType, KeyPair, PKCS_ECDSA_P256_SHA256,
};
use rustls::client::danger::ServerCertVerifier as _;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, ClientConfig, Connection, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use x509_parser::prelude::FromDer as _;

use crate::devcerts::{self, der, psd2_qc_statements_der, DevCerts, QC_STATEMENTS_ARCS};
use portcullis_crypto::pki::{parse_psd2_qc_statements, thumbprint_s256, CertError, ClientCert};

/// A unique directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "portcullis-pki-{tag}-{}-{n}-{nanos}",
            std::process::id()
        ));
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn generated(tag: &str) -> (TempDir, DevCerts) {
    let tmp = TempDir::new(tag);
    // A nested, not yet existing directory: generate must create it.
    let dc = devcerts::generate(&tmp.path().join("certs")).expect("generate dev certs");
    (tmp, dc)
}

fn cert_der(dc: &DevCerts, stem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(dc.cert(stem)).expect("read certificate PEM")
}

fn key_der(dc: &DevCerts, stem: &str) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_file(dc.key(stem)).expect("read key PEM")
}

fn parsed(dc: &DevCerts, stem: &str) -> ClientCert {
    ClientCert::from_der(&cert_der(dc, stem)).expect("parse certificate")
}

fn crls(dc: &DevCerts) -> Vec<CertificateRevocationListDer<'static>> {
    CertificateRevocationListDer::pem_file_iter(dc.ca_crl())
        .expect("open ca.crl")
        .collect::<Result<Vec<_>, _>>()
        .expect("read ca.crl")
}

fn roots(dc: &DevCerts) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    roots.add(cert_der(dc, "ca")).expect("add dev CA");
    Arc::new(roots)
}

fn install_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// A self-signed certificate whose QCStatements extension holds exactly `qc`.
fn self_signed_with_qc(qc: Vec<u8>) -> Vec<u8> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "qc test");
    params.custom_extensions = vec![CustomExtension::from_oid_content(QC_STATEMENTS_ARCS, qc)];
    params.self_signed(&key).expect("self-sign").der().to_vec()
}

fn psd2_statement(roles: &[(u64, &str)], nca_id: &str) -> Vec<u8> {
    let roles: Vec<Vec<u8>> = roles
        .iter()
        .map(|(arc, name)| der::seq(&[der::oid(&[0, 4, 0, 19495, 1, *arc]), der::utf8(name)]))
        .collect();
    der::seq(&[
        der::oid(&[0, 4, 0, 19495, 2]),
        der::seq(&[
            der::seq(&roles),
            der::utf8("Financial Conduct Authority"),
            der::utf8(nca_id),
        ]),
    ])
}

/// A tpp1-like certificate, for mutation tests.
fn template_cert() -> &'static [u8] {
    static TEMPLATE: OnceLock<Vec<u8>> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
        let mut params = CertificateParams::new(vec!["tpp.example".to_owned()]).expect("params");
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CountryName, "GB");
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Tpp One Ltd");
        params
            .distinguished_name
            .push(DnType::CustomDnType(vec![2, 5, 4, 97]), "PSDGB-FCA-123456");
        params
            .distinguished_name
            .push(DnType::CommonName, "tpp-one-software-id");
        params.custom_extensions = vec![CustomExtension::from_oid_content(
            QC_STATEMENTS_ARCS,
            psd2_qc_statements_der(
                &["PSP_AI", "PSP_PI"],
                "Financial Conduct Authority",
                "GB-FCA",
            ),
        )];
        params.self_signed(&key).expect("self-sign").der().to_vec()
    })
}

/// Runs a full in-memory TLS handshake: the proxy side trusts `ca.pem` with `ca.crl` and
/// serves `server.pem`; the client presents `{client}.pem`. Returns the server's view of the
/// client certificate.
fn handshake(dc: &DevCerts, client: &str) -> Result<ClientCert, rustls::Error> {
    install_provider();
    let verifier = WebPkiClientVerifier::builder(roots(dc))
        .with_crls(crls(dc))
        .build()
        .expect("client verifier");
    let server_config = ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![cert_der(dc, "server")], key_der(dc, "server"))?;
    let client_config = ClientConfig::builder()
        .with_root_certificates(roots(dc))
        .with_client_auth_cert(vec![cert_der(dc, client)], key_der(dc, client))?;
    let name = ServerName::try_from("localhost").expect("server name");
    let mut c = Connection::Client(rustls::ClientConnection::new(
        Arc::new(client_config),
        name,
    )?);
    let mut s = Connection::Server(rustls::ServerConnection::new(Arc::new(server_config))?);
    for _ in 0..16 {
        pump(&mut c, &mut s)?;
        pump(&mut s, &mut c)?;
        if !c.is_handshaking() && !s.is_handshaking() && !c.wants_write() && !s.wants_write() {
            break;
        }
    }
    let leaf = s
        .peer_certificates()
        .and_then(|chain| chain.first())
        .ok_or(rustls::Error::NoCertificatesPresented)?;
    Ok(ClientCert::from_der(leaf).expect("server parses client cert"))
}

fn pump(from: &mut Connection, to: &mut Connection) -> Result<(), rustls::Error> {
    let mut buf = Vec::new();
    while from.wants_write() {
        from.write_tls(&mut buf).expect("write_tls to a Vec");
    }
    let mut rd = &buf[..];
    while !rd.is_empty() {
        to.read_tls(&mut rd).expect("read_tls from a slice");
        to.process_new_packets()?;
    }
    Ok(())
}

#[test]
fn generate_writes_every_file_and_keeps_private_keys_owner_only() {
    let (_tmp, dc) = generated("files");
    for name in devcerts::FILES {
        let meta = std::fs::metadata(dc.path(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(meta.len() > 0, "{name} is empty");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = meta.permissions().mode() & 0o777;
            if name.ends_with(".key") {
                assert_eq!(mode, 0o600, "{name} mode {mode:o}");
            } else {
                assert_eq!(mode & 0o077 & 0o022, 0, "{name} is group/world writable");
            }
        }
    }
    let readme = std::fs::read_to_string(dc.path("README.txt")).expect("readme");
    assert!(readme.contains("DEV ONLY"));
    assert!(readme.to_lowercase().contains("never use them"));
    // No temporary files are left behind.
    let leftovers: Vec<_> = std::fs::read_dir(&dc.dir)
        .expect("read dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn tpp1_carries_its_open_banking_identity_and_psd2_roles() {
    let (_tmp, dc) = generated("tpp1");
    let der = cert_der(&dc, "tpp1");
    let tpp1 = ClientCert::from_der(&der).expect("parse tpp1");
    assert_eq!(
        tpp1.organization_identifier.as_deref(),
        Some("PSDGB-FCA-123456")
    );
    assert_eq!(tpp1.psd2_roles, ["PSP_AI", "PSP_PI"]);
    assert_eq!(tpp1.psd2_nca_id.as_deref(), Some("GB-FCA"));
    assert_eq!(tpp1.organization.as_deref(), Some("Tpp One Ltd"));
    assert_eq!(tpp1.common_name.as_deref(), Some("tpp-one-software-id"));
    assert_eq!(tpp1.country.as_deref(), Some("GB"));
    assert_eq!(
        tpp1.subject,
        "CN=tpp-one-software-id,organizationIdentifier=PSDGB-FCA-123456,O=Tpp One Ltd,C=GB"
    );
    assert_eq!(tpp1.issuer, "CN=portcullis dev CA,O=portcullis dev");
    assert!(!tpp1.serial_hex.is_empty());
    assert!(tpp1
        .serial_hex
        .chars()
        .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)));
    assert!(tpp1.not_after > now_unix());
    assert_eq!(tpp1.der, der.as_ref());
}

#[test]
fn thumbprint_is_unpadded_base64url_sha256_of_the_der() {
    let (_tmp, dc) = generated("thumb");
    let der = cert_der(&dc, "tpp1");
    let expected = {
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        ctx.update(der.as_ref());
        URL_SAFE_NO_PAD.encode(ctx.finish())
    };
    let tpp1 = ClientCert::from_der(&der).expect("parse tpp1");
    assert_eq!(tpp1.thumbprint, expected);
    assert_eq!(tpp1.thumbprint.len(), 43);
    assert!(!tpp1.thumbprint.contains(['=', '+', '/']));
    // Known vector: SHA-256 of the empty string.
    assert_eq!(
        thumbprint_s256(b""),
        "47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU"
    );
}

#[test]
fn tpp2_is_a_different_tpp_with_account_information_only() {
    let (_tmp, dc) = generated("tpp2");
    let tpp1 = parsed(&dc, "tpp1");
    let tpp2 = parsed(&dc, "tpp2");
    assert_eq!(
        tpp2.organization_identifier.as_deref(),
        Some("PSDGB-FCA-654321")
    );
    assert_eq!(tpp2.organization.as_deref(), Some("Tpp Two Ltd"));
    assert_eq!(tpp2.common_name.as_deref(), Some("tpp-two-software-id"));
    assert_eq!(tpp2.psd2_roles, ["PSP_AI"]);
    assert_eq!(tpp2.psd2_nca_id.as_deref(), Some("GB-FCA"));
    assert_ne!(tpp1.thumbprint, tpp2.thumbprint);
}

#[test]
fn server_cert_names_localhost_and_both_loopback_addresses() {
    let (_tmp, dc) = generated("server");
    let server = parsed(&dc, "server");
    for san in ["dns:localhost", "ip:127.0.0.1", "ip:::1"] {
        assert!(
            server.sans.iter().any(|s| s == san),
            "{san} not in {:?}",
            server.sans
        );
    }
    assert!(server.psd2_roles.is_empty());

    install_provider();
    let verifier = WebPkiServerVerifier::builder(roots(&dc))
        .build()
        .expect("server verifier");
    for name in ["localhost", "127.0.0.1", "::1"] {
        let name = ServerName::try_from(name).expect("server name");
        verifier
            .verify_server_cert(&cert_der(&dc, "server"), &[], &name, &[], UnixTime::now())
            .unwrap_or_else(|e| panic!("{name:?}: {e}"));
    }
}

#[test]
fn expired_cert_is_signed_by_the_dev_ca_but_ended_in_the_past() {
    let (_tmp, dc) = generated("expired");
    let expired = parsed(&dc, "expired");
    assert!(expired.not_after < now_unix());
    assert!(expired.not_after < now_unix() - 300 * 86_400);
    assert_eq!(expired.issuer, parsed(&dc, "ca").subject);
}

#[test]
fn crl_is_issued_by_the_dev_ca_and_revokes_exactly_the_revoked_cert() {
    let (_tmp, dc) = generated("crl");
    let crl_der = crls(&dc);
    assert_eq!(crl_der.len(), 1);
    let (rest, crl) =
        x509_parser::revocation_list::CertificateRevocationList::from_der(crl_der[0].as_ref())
            .expect("parse CRL");
    assert!(rest.is_empty());
    let ca = cert_der(&dc, "ca");
    let (_, ca) = x509_parser::parse_x509_certificate(&ca).expect("parse CA");
    assert_eq!(crl.issuer().as_raw(), ca.subject().as_raw());
    let next_update = crl.next_update().expect("next update").timestamp();
    assert!(next_update > now_unix() + 86_400);

    let revoked: Vec<_> = crl.iter_revoked_certificates().collect();
    assert_eq!(revoked.len(), 1);
    let revoked_serial = portcullis_crypto::pki::serial_hex(revoked[0].raw_serial());
    assert_eq!(revoked_serial, parsed(&dc, "revoked").serial_hex);
    // The per-request check reads the same CRL the same way.
    let set = portcullis_crypto::pki::Revoked::from_crls(crl_der.iter().map(|c| c.as_ref()))
        .expect("CRL set");
    assert!(set.contains(&parsed(&dc, "revoked")));
    for other in ["tpp1", "tpp2", "server", "ca"] {
        assert!(!set.contains(&parsed(&dc, other)), "{other}");
    }
    for other in ["tpp1", "tpp2", "server", "expired", "rogue"] {
        assert_ne!(revoked_serial, parsed(&dc, other).serial_hex, "{other}");
    }
}

#[test]
fn every_certificate_has_a_distinct_serial() {
    let (_tmp, dc) = generated("serials");
    let mut serials: Vec<String> = [
        "ca", "server", "tpp1", "tpp2", "expired", "revoked", "rogue-ca", "rogue",
    ]
    .iter()
    .map(|stem| parsed(&dc, stem).serial_hex)
    .collect();
    assert!(serials.iter().all(|s| s.len() >= 32), "{serials:?}");
    serials.sort();
    serials.dedup();
    assert_eq!(serials.len(), 8);
}

#[test]
fn rustls_client_verifier_builds_from_ca_and_crl_and_judges_each_client() {
    let (_tmp, dc) = generated("verifier");
    install_provider();
    let verifier = WebPkiClientVerifier::builder(roots(&dc))
        .with_crls(crls(&dc))
        .build()
        .expect("build verifier from ca.pem + ca.crl");
    let now = UnixTime::now();
    let verify = |stem: &str| verifier.verify_client_cert(&cert_der(&dc, stem), &[], now);

    verify("tpp1").expect("tpp1 accepted");
    verify("tpp2").expect("tpp2 accepted");
    match verify("revoked") {
        Err(rustls::Error::InvalidCertificate(CertificateError::Revoked)) => {}
        other => panic!("revoked: {other:?}"),
    }
    match verify("expired") {
        Err(rustls::Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        )) => {}
        other => panic!("expired: {other:?}"),
    }
    match verify("rogue") {
        Err(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)) => {}
        other => panic!("rogue: {other:?}"),
    }
    // The server certificate lacks clientAuth.
    assert!(verify("server").is_err());
}

#[test]
fn full_mtls_handshake_succeeds_for_tpp1_and_fails_for_revoked_and_rogue() {
    let (_tmp, dc) = generated("handshake");
    let seen = handshake(&dc, "tpp1").expect("tpp1 handshake");
    assert_eq!(seen.thumbprint, parsed(&dc, "tpp1").thumbprint);
    assert_eq!(seen.psd2_roles, ["PSP_AI", "PSP_PI"]);

    assert!(matches!(
        handshake(&dc, "revoked"),
        Err(rustls::Error::InvalidCertificate(CertificateError::Revoked))
    ));
    assert!(matches!(
        handshake(&dc, "rogue"),
        Err(rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer
        ))
    ));
}

#[test]
fn rogue_cert_copies_tpp1_identity_but_not_its_issuer() {
    let (_tmp, dc) = generated("rogue");
    let tpp1 = parsed(&dc, "tpp1");
    let rogue = parsed(&dc, "rogue");
    assert_eq!(rogue.organization_identifier, tpp1.organization_identifier);
    assert_eq!(rogue.psd2_roles, tpp1.psd2_roles);
    assert_ne!(rogue.issuer, tpp1.issuer);
    assert_eq!(rogue.issuer, parsed(&dc, "rogue-ca").subject);
    assert_ne!(rogue.thumbprint, tpp1.thumbprint);
}

#[test]
fn write_if_missing_reuses_a_complete_set_and_regenerates_an_incomplete_one() {
    let tmp = TempDir::new("reuse");
    let first = devcerts::write_if_missing(tmp.path()).expect("first");
    assert!(first.is_complete());
    let ca_before = parsed(&first, "ca").thumbprint;

    let second = devcerts::write_if_missing(tmp.path()).expect("second");
    assert_eq!(
        parsed(&second, "ca").thumbprint,
        ca_before,
        "set was reused"
    );

    std::fs::remove_file(second.key("tpp2")).expect("remove tpp2.key");
    assert!(!second.is_complete());
    let third = devcerts::write_if_missing(tmp.path()).expect("third");
    assert!(third.is_complete());
    assert_ne!(
        parsed(&third, "ca").thumbprint,
        ca_before,
        "set was regenerated"
    );

    std::fs::write(third.path("server.pem"), b"not a certificate").expect("corrupt");
    assert!(!third.is_complete());
}

#[test]
fn from_der_rejects_empty_garbage_and_trailing_data() {
    assert!(matches!(ClientCert::from_der(b""), Err(CertError::Empty)));
    assert!(matches!(
        ClientCert::from_der(b"hello, I am not a certificate"),
        Err(CertError::Malformed(_))
    ));
    // A DER SEQUENCE that is not a certificate.
    assert!(ClientCert::from_der(&der::seq(&[der::utf8("x")])).is_err());
    // A certificate in PEM, not DER.
    let pem = format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        URL_SAFE_NO_PAD.encode(template_cert())
    );
    assert!(ClientCert::from_der(pem.as_bytes()).is_err());

    let mut trailing = template_cert().to_vec();
    trailing.push(0);
    assert!(matches!(
        ClientCert::from_der(&trailing),
        Err(CertError::TrailingData)
    ));
}

#[test]
fn from_der_rejects_every_truncation_of_a_valid_certificate() {
    let der = template_cert();
    ClientCert::from_der(der).expect("template parses");
    for len in 0..der.len() {
        assert!(ClientCert::from_der(&der[..len]).is_err(), "prefix {len}");
    }
}

#[test]
fn error_messages_are_lower_case() {
    for err in [
        CertError::Empty,
        CertError::Malformed("x".into()),
        CertError::TrailingData,
        CertError::BadExtension("subjectAltName"),
    ] {
        let msg = err.to_string();
        assert!(msg.starts_with(|c: char| c.is_lowercase()), "{msg}");
    }
}

#[test]
fn debug_output_omits_the_der_bytes() {
    let cert = ClientCert::from_der(template_cert()).expect("parse");
    let debug = format!("{cert:?}");
    assert!(debug.contains(&cert.thumbprint));
    assert!(debug.contains("PSDGB-FCA-123456"));
    assert!(!debug.contains("der:"), "{debug}");
    assert!(debug.len() < 1500, "{debug}");
}

#[test]
fn garbled_qc_statements_yield_no_roles_but_the_certificate_still_parses() {
    for qc in [
        b"\x01\x02 garbage".to_vec(),
        der::seq(&[der::utf8("not a statement")]),
        // Trailing bytes after the statements.
        [psd2_qc_statements_der(&["PSP_AI"], "n", "GB-FCA"), vec![0]].concat(),
        // PSD2 statement without statementInfo.
        der::seq(&[der::seq(&[der::oid(&[0, 4, 0, 19495, 2])])]),
        // Role name contradicting the role OID.
        der::seq(&[psd2_statement(&[(3, "PSP_PI")], "GB-FCA")]),
        // Two PSD2 statements: ambiguous.
        der::seq(&[
            psd2_statement(&[(3, "PSP_AI")], "GB-FCA"),
            psd2_statement(&[(2, "PSP_PI")], "GB-FCA"),
        ]),
    ] {
        let cert = ClientCert::from_der(&self_signed_with_qc(qc.clone()))
            .unwrap_or_else(|e| panic!("{qc:02x?}: {e}"));
        assert!(cert.psd2_roles.is_empty(), "{qc:02x?}");
        assert_eq!(cert.psd2_nca_id, None, "{qc:02x?}");
        assert_eq!(cert.common_name.as_deref(), Some("qc test"));
    }
}

#[test]
fn qc_statements_skip_unknown_roles_and_duplicates_and_other_statements() {
    let qc = der::seq(&[
        der::seq(&[der::oid(&[0, 4, 0, 1862, 1, 1])]),
        psd2_statement(
            &[(9, "PSP_XX"), (3, "PSP_AI"), (3, "PSP_AI"), (4, "PSP_IC")],
            "BE-NBB",
        ),
    ]);
    let cert = ClientCert::from_der(&self_signed_with_qc(qc)).expect("parse");
    assert_eq!(cert.psd2_roles, ["PSP_AI", "PSP_IC"]);
    assert_eq!(cert.psd2_nca_id.as_deref(), Some("BE-NBB"));

    let no_psd2 = der::seq(&[der::seq(&[der::oid(&[0, 4, 0, 1862, 1, 1])])]);
    let cert = ClientCert::from_der(&self_signed_with_qc(no_psd2)).expect("parse");
    assert!(cert.psd2_roles.is_empty());
    assert_eq!(cert.psd2_nca_id, None);
}

#[test]
fn certificate_without_extensions_or_names_has_empty_evidence() {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, "bare");
    let der = params.self_signed(&key).expect("self-sign").der().to_vec();
    let cert = ClientCert::from_der(&der).expect("parse");
    assert_eq!(cert.subject, "CN=bare");
    assert_eq!(cert.organization, None);
    assert_eq!(cert.organization_identifier, None);
    assert_eq!(cert.country, None);
    assert!(cert.sans.is_empty());
    assert!(cert.psd2_roles.is_empty());
}

#[test]
fn subject_display_escapes_dn_metacharacters_and_control_characters() {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, " #x");
    params
        .distinguished_name
        .push(DnType::CommonName, "evil,CN=admin+\"q\";<a>\\\n");
    let der = params.self_signed(&key).expect("self-sign").der().to_vec();
    let cert = ClientCert::from_der(&der).expect("parse");
    assert_eq!(
        cert.subject,
        "CN=evil\\,CN=admin\\+\\\"q\\\"\\;\\<a\\>\\\\\\0a,O=\\ #x"
    );
    // The structured field keeps the raw value.
    assert_eq!(
        cert.common_name.as_deref(),
        Some("evil,CN=admin+\"q\";<a>\\\n")
    );
}

#[test]
fn serial_hex_drops_sign_padding_only() {
    use portcullis_crypto::pki::serial_hex;
    assert_eq!(serial_hex(&[0x00, 0x80, 0x0a]), "800a");
    assert_eq!(serial_hex(&[0x01, 0x00]), "0100");
    assert_eq!(serial_hex(&[0x00]), "00");
    assert_eq!(serial_hex(&[]), "");
}

proptest! {
    #[test]
    fn from_der_never_panics_on_random_bytes(
        bytes in proptest::collection::vec(any::<u8>(), 0..2048)
    ) {
        let _ = ClientCert::from_der(&bytes);
    }

    #[test]
    fn from_der_never_panics_on_random_bytes_behind_a_sequence_header(
        body in proptest::collection::vec(any::<u8>(), 0..1024)
    ) {
        let _ = ClientCert::from_der(&der::tlv(0x30, &body));
    }

    #[test]
    fn from_der_never_panics_on_a_mutated_certificate(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut der = template_cert().to_vec();
        for (at, byte) in edits {
            let i = at.index(der.len());
            der[i] = byte;
        }
        if truncate {
            der.truncate(cut.index(der.len()));
        }
        let _ = ClientCert::from_der(&der);
    }

    #[test]
    fn qc_statement_parser_never_panics_on_mutations(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
    ) {
        let mut qc = psd2_qc_statements_der(&["PSP_AI", "PSP_PI"], "Financial Conduct Authority", "GB-FCA");
        for (at, byte) in edits {
            let i = at.index(qc.len());
            qc[i] = byte;
        }
        if let Some(info) = parse_psd2_qc_statements(&qc) {
            prop_assert!(info.roles.len() <= 4);
            prop_assert!(info.roles.iter().all(|r| ["PSP_AS", "PSP_PI", "PSP_AI", "PSP_IC"].contains(&r.as_str())));
        }
    }
}
