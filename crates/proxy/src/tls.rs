//! TLS: the listener's rustls config (mTLS), the upstream client config, and the handshake.
//!
//! Protocol policy (BCP 195, as FAPI requires): TLS 1.3 with its AEAD suites, and TLS 1.2 only
//! with ECDHE key exchange and AES-GCM. ALPN offers `h2` then `http/1.1`. Client certificates are
//! verified against the configured CAs and CRLs by rustls' WebPKI verifier (chain, validity,
//! clientAuth EKU, revocation); an expired CRL fails closed. A reload builds a new
//! `ServerConfig` — and so a new session cache — so a newly revoked certificate cannot resume.

use std::io;
use std::sync::Arc;

use rustls::crypto::aws_lc_rs::{self as provider, cipher_suite};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
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
pub(crate) fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_cas: Vec<CertificateDer<'static>>,
    crls: Vec<CertificateRevocationListDer<'static>>,
    client_auth: ClientAuth,
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
    for ca in client_cas {
        roots
            .add(ca)
            .map_err(|e| format!("client CA is not usable as a trust anchor: {e}"))?;
    }
    let mut verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
            .with_crls(crls)
            .enforce_revocation_expiration();
    if client_auth == ClientAuth::Optional {
        verifier = verifier.allow_unauthenticated();
    }
    let verifier = verifier
        .build()
        .map_err(|e| format!("cannot build the client certificate verifier: {e}"))?;
    let mut config = builder
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| format!("certificate and private key do not form a usable pair: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
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
