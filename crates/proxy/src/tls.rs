//! TLS: the listener's rustls config (mTLS), the upstream client config, and the handshake.
//!
//! Protocol policy (BCP 195, as FAPI requires): TLS 1.3 with its AEAD suites, and TLS 1.2 only
//! with ECDHE key exchange and AES-GCM. ALPN offers `h2` then `http/1.1`. Client certificates are
//! verified against the configured CAs and CRLs by rustls' WebPKI verifier (chain, validity,
//! clientAuth EKU, revocation); an expired CRL fails closed. With `leaf_crls`, a certificate whose
//! own issuer has no configured CRL passes the handshake and its distribution point is checked per
//! request instead (see [`server_config`]). A reload builds a new `ServerConfig` — and so a new
//! session cache — so a newly revoked certificate cannot resume.

use std::io;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::aws_lc_rs::{self as provider, cipher_suite};
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::CertificateError;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

/// Whether the TLS handshake demands a client certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// No certificate, no connection.
    Required,
    /// A certificate is verified when presented; routes decide whether they need one.
    Optional,
    /// No certificate is asked for (a host for public metadata, say): routes that require one
    /// refuse every request.
    None,
}

/// The one crypto provider, restricted to the suites we allow.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    let mut p = provider::default_provider();
    p.cipher_suites = vec![
        cipher_suite::TLS13_AES_128_GCM_SHA256,
        cipher_suite::TLS13_AES_256_GCM_SHA384,
        cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        cipher_suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    ];
    Arc::new(p)
}

/// Installs aws-lc-rs as the process-wide rustls provider. Call once at start-up; later calls
/// are harmless.
pub fn install_crypto_provider() {
    let _ = provider::default_provider().install_default();
}

/// Builds the listener config. Errors are public words for `check` and reload logs.
///
/// `leaf_crls` (the revocation set of `crls`) is given when the listener follows the CRLs
/// client certificates name: then a certificate whose own issuer has no CRL among `crls` is
/// not refused at the handshake for its unknown status (see [`LeafCrlVerifier`]); the identity
/// stage fetches its CRL per request. Revocation by `crls` still refuses at the handshake.
pub(crate) fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_cas: Vec<CertificateDer<'static>>,
    crls: Vec<CertificateRevocationListDer<'static>>,
    client_auth: ClientAuth,
    leaf_crls: Option<&portcullis_crypto::pki::Revoked>,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let provider = crypto_provider();
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("protocol versions: {e}"))?;
    if client_auth == ClientAuth::None {
        let mut config = builder
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| format!("certificate and private key do not form a usable pair: {e}"))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        return Ok(Arc::new(config));
    }
    let mut roots = rustls::RootCertStore::empty();
    for ca in &client_cas {
        roots
            .add(ca.clone())
            .map_err(|e| format!("client CA is not usable as a trust anchor: {e}"))?;
    }
    let roots = Arc::new(roots);
    let with_crls = !crls.is_empty();
    let build = |unknown_allowed: bool, crls: Vec<CertificateRevocationListDer<'static>>| {
        let mut verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), Arc::clone(&provider))
                .with_crls(crls)
                .enforce_revocation_expiration();
        if unknown_allowed {
            verifier = verifier.allow_unknown_revocation_status();
        }
        if client_auth == ClientAuth::Optional {
            verifier = verifier.allow_unauthenticated();
        }
        verifier
            .build()
            .map_err(|e| format!("cannot build the client certificate verifier: {e}"))
    };
    let verifier: Arc<dyn ClientCertVerifier> = match leaf_crls {
        // Without any CRL rustls checks no revocation, and so refuses no unknown status.
        Some(revoked) if with_crls => Arc::new(LeafCrlVerifier {
            strict: build(false, crls.clone())?,
            lenient: build(true, crls)?,
            covered: revoked.issuers().map(<[u8]>::to_vec).collect(),
            anchors: client_cas.iter().map(|c| c.as_ref().to_vec()).collect(),
        }),
        _ => build(false, crls)?,
    };
    let mut config = builder
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| format!("certificate and private key do not form a usable pair: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The client certificate verifier of a listener that follows the CRLs client certificates
/// name, when it also has CRLs of its own (files, URLs). rustls refuses a certificate in the
/// chain whose issuer has none of those CRLs (unknown status); such a leaf's CRL is fetched by
/// the identity stage instead. So a refusal for unknown status is overturned — by the same
/// verification with unknown status allowed — only when the unknown status can be the leaf's
/// alone: its issuer has no CRL here, and every intermediate the client sent either is a client
/// CA (a trust anchor, whose status is not checked) or has an issuer with a CRL here. Every
/// other refusal stands, revocation by the configured CRLs included.
#[derive(Debug)]
struct LeafCrlVerifier {
    strict: Arc<dyn ClientCertVerifier>,
    lenient: Arc<dyn ClientCertVerifier>,
    /// The issuer names (DER) the configured CRLs cover.
    covered: std::collections::HashSet<Vec<u8>>,
    /// The client CAs (DER).
    anchors: Vec<Vec<u8>>,
}

impl LeafCrlVerifier {
    fn covered(&self, cert: &[u8]) -> Option<bool> {
        portcullis_crypto::pki::issuer_name_der(cert).map(|i| self.covered.contains(&i))
    }
}

impl ClientCertVerifier for LeafCrlVerifier {
    fn offer_client_auth(&self) -> bool {
        self.strict.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.strict.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.strict.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls_pki_types::UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let refused = match self
            .strict
            .verify_client_cert(end_entity, intermediates, now)
        {
            Err(
                e @ rustls::Error::InvalidCertificate(CertificateError::UnknownRevocationStatus),
            ) => e,
            other => return other,
        };
        let leaf_uncovered = self.covered(end_entity.as_ref()) == Some(false);
        let chain_known = intermediates.iter().all(|i| {
            self.anchors.iter().any(|a| a.as_slice() == i.as_ref())
                || self.covered(i.as_ref()) == Some(true)
        });
        if leaf_uncovered && chain_known {
            self.lenient
                .verify_client_cert(end_entity, intermediates, now)
        } else {
            Err(refused)
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.strict.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.strict.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.strict.supported_verify_schemes()
    }
}

/// Builds an upstream client config with pinned roots and an optional client identity.
/// ALPN is left empty: hyper-rustls sets it (and panics if it is pre-set).
pub(crate) fn upstream_client_config(
    roots: rustls::RootCertStore,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let builder = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("protocol versions: {e}"))?
        .with_root_certificates(roots);
    let config = match identity {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| format!("client certificate and key do not form a usable pair: {e}"))?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// A bounded category for a failed handshake: safe as a metric label and a log field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HandshakeFailure {
    Timeout,
    NoClientCert,
    UnknownCa,
    Expired,
    Revoked,
    RevocationUnknown,
    CrlExpired,
    BadCert,
    ProtocolVersion,
    NoCommonCipher,
    AlertReceived,
    Protocol,
    Io,
    /// No SNI, or a name no host of the listener has, and the listener has no default host.
    UnknownServerName,
}

impl HandshakeFailure {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::NoClientCert => "no_client_cert",
            HandshakeFailure::UnknownCa => "unknown_ca",
            HandshakeFailure::Expired => "cert_expired",
            HandshakeFailure::Revoked => "cert_revoked",
            HandshakeFailure::RevocationUnknown => "revocation_unknown",
            HandshakeFailure::CrlExpired => "crl_expired",
            HandshakeFailure::BadCert => "bad_cert",
            HandshakeFailure::ProtocolVersion => "protocol_version",
            HandshakeFailure::NoCommonCipher => "no_common_cipher",
            HandshakeFailure::AlertReceived => "alert_received",
            HandshakeFailure::Protocol => "protocol",
            HandshakeFailure::Io => "io",
            HandshakeFailure::UnknownServerName => "unknown_server_name",
        }
    }

    pub(crate) fn classify(e: &io::Error) -> HandshakeFailure {
        use rustls::{CertificateError as C, Error as E, PeerIncompatible as P};
        let Some(tls) = e.get_ref().and_then(|inner| inner.downcast_ref::<E>()) else {
            return HandshakeFailure::Io;
        };
        match tls {
            E::NoCertificatesPresented => HandshakeFailure::NoClientCert,
            E::InvalidCertificate(c) => match c {
                C::UnknownIssuer => HandshakeFailure::UnknownCa,
                C::Expired | C::ExpiredContext { .. } => HandshakeFailure::Expired,
                C::Revoked => HandshakeFailure::Revoked,
                C::UnknownRevocationStatus => HandshakeFailure::RevocationUnknown,
                C::ExpiredRevocationList | C::ExpiredRevocationListContext { .. } => {
                    HandshakeFailure::CrlExpired
                }
                _ => HandshakeFailure::BadCert,
            },
            E::InvalidCertRevocationList(_) => HandshakeFailure::CrlExpired,
            // A TLS 1.2 client offering no ECDHE suite has no key exchange group in common
            // with us: the same refusal of its suites, not a protocol version problem.
            E::PeerIncompatible(P::NoCipherSuitesInCommon | P::NoKxGroupsInCommon) => {
                HandshakeFailure::NoCommonCipher
            }
            E::PeerIncompatible(_) => HandshakeFailure::ProtocolVersion,
            E::AlertReceived(_) => HandshakeFailure::AlertReceived,
            _ => HandshakeFailure::Protocol,
        }
    }
}
