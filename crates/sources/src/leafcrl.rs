//! CRLs from the distribution points client certificates name (RFC 5280 §4.2.1.13): for a
//! certificate that rustls has verified against the client CAs, the CRL at the first
//! `http://` or `https://` point it names that delivers one, checked against the certificate's
//! issuing CA (one of the client CAs), and cached per (issuer, URL) until its `nextUpdate`,
//! capped by `max_age`.
//!
//! Only the identity stage asks here, with the connection's verified certificate: a URL in a
//! certificate that did not verify is never fetched. What comes back is hostile input until
//! [`VerifiedCrl::check`] has taken it, bounded in size and time. Like OCSP (and sharing its
//! fetch and cache, `crate::revocation`), failures are not cached, and one fetch per URL is in
//! flight at a time: concurrent requests wait for it and share its outcome.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use portcullis_crypto::pki::{ClientCert, VerifiedCrl};

use crate::revocation::{Counts, FailMode, FlightCache};

#[derive(Clone)]
pub struct LeafCrlSettings {
    pub fail: FailMode,
    /// Trust for an `https://` distribution point.
    pub tls: Arc<rustls::ClientConfig>,
    pub timeout: Duration,
    /// The longest a CRL is used, also when its `nextUpdate` is later.
    pub max_age: Duration,
    pub max_bytes: usize,
    /// Cached CRLs at most.
    pub max_entries: usize,
    /// When not empty, only distribution points starting with one of these are fetched.
    pub allowed_urls: Vec<String>,
}

impl LeafCrlSettings {
    /// What identifies the checker across reloads: a change of any setting starts a new one.
    pub fn key(&self) -> String {
        format!(
            "{:?} {:?} {:?} {} {} {:?}",
            self.fail,
            self.timeout,
            self.max_age,
            self.max_bytes,
            self.max_entries,
            self.allowed_urls
        )
    }
}

/// The outcome for one certificate: what a verified CRL says, or why there is none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeafCrlOutcome {
    /// A verified, current CRL of its issuer does not list it.
    Good,
    Revoked,
    /// The certificate names no `http://` or `https://` distribution point (or none that
    /// `allowed_urls` lets us fetch).
    NoUrl,
    /// No CRL: unreachable, timed out, an HTTP error or an oversized body.
    Unavailable,
    /// A body that was not taken: not a CRL, not signed by the issuing CA, not current, not
    /// complete for the certificate.
    Invalid,
}

impl LeafCrlOutcome {
    /// For the audit record: `crl_dp_good`, `crl_dp_revoked`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            LeafCrlOutcome::Good => "crl_dp_good",
            LeafCrlOutcome::Revoked => "crl_dp_revoked",
            LeafCrlOutcome::NoUrl => "crl_dp_none",
            LeafCrlOutcome::Unavailable => "crl_dp_unavailable",
            LeafCrlOutcome::Invalid => "crl_dp_invalid",
        }
    }

    /// For the audit record when `fail: open` let the certificate through without a CRL.
    pub fn as_fail_open_str(self) -> &'static str {
        match self {
            LeafCrlOutcome::NoUrl => "crl_dp_none_fail_open",
            LeafCrlOutcome::Unavailable => "crl_dp_unavailable_fail_open",
            LeafCrlOutcome::Invalid => "crl_dp_invalid_fail_open",
            other => other.as_str(),
        }
    }
}

pub struct LeafCrlChecker {
    settings: LeafCrlSettings,
    /// The client CAs (DER): the issuer of a client certificate is one of them.
    cas: Vec<Vec<u8>>,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// Verified CRLs by (issuer name DER, URL).
    cache: FlightCache<(Vec<u8>, String), Arc<VerifiedCrl>, LeafCrlOutcome>,
    /// Fetches of a distribution point; failures are those that brought no verified CRL;
    /// `fail_open` counts certificates let through without one.
    pub counts: Counts,
}

impl LeafCrlChecker {
    pub fn new(settings: LeafCrlSettings, cas: Vec<Vec<u8>>) -> LeafCrlChecker {
        let client = crate::https::signed_document_client(&settings.tls, settings.timeout);
        LeafCrlChecker {
            cache: FlightCache::new(settings.max_entries),
            settings,
            cas,
            client,
            counts: Counts::default(),
        }
    }

    pub fn fail_mode(&self) -> FailMode {
        self.settings.fail
    }

    /// The status of `cert` (verified by the handshake) at `now` (Unix seconds): by the first of
    /// its distribution points that yields a verified CRL, from the cache while current. With
    /// none, the failure of the last point tried (`invalid` before `unavailable`: a body that
    /// was served and refused says more).
    pub async fn status(&self, cert: &ClientCert, now: i64) -> LeafCrlOutcome {
        let urls: Vec<String> = portcullis_crypto::pki::crl_distribution_points(&cert.der)
            .into_iter()
            .filter(|u| {
                self.settings.allowed_urls.is_empty()
                    || self
                        .settings
                        .allowed_urls
                        .iter()
                        .any(|a| u.starts_with(a.as_str()))
            })
            .filter(|u| u.parse::<http::Uri>().is_ok())
            .collect();
        if urls.is_empty() {
            return LeafCrlOutcome::NoUrl;
        }
        let Some(issuer) = portcullis_crypto::pki::ocsp::find_issuer(
            &cert.der,
            self.cas.iter().map(Vec::as_slice),
        ) else {
            tracing::warn!(
                certificate = %cert.thumbprint,
                issuer = %cert.issuer,
                "CRL distribution point: the issuing CA is none of the client CAs, so no CRL can be verified"
            );
            return LeafCrlOutcome::Invalid;
        };
        let mut failed = LeafCrlOutcome::Unavailable;
        for url in urls {
            let key = (cert.issuer_der.clone(), url.clone());
            match self
                .cache
                .get(key, now, || self.fetch(cert, issuer, &url, now))
                .await
            {
                Ok(crl) if crl.revokes(cert) => return LeafCrlOutcome::Revoked,
                Ok(_) => return LeafCrlOutcome::Good,
                Err(LeafCrlOutcome::Invalid) => failed = LeafCrlOutcome::Invalid,
                Err(_) => {}
            }
        }
        failed
    }

    /// Fetches `url` and checks what it serves: a verified CRL and until when it is used.
    async fn fetch(
        &self,
        cert: &ClientCert,
        issuer: &[u8],
        url: &str,
        now: i64,
    ) -> Result<(Arc<VerifiedCrl>, i64), LeafCrlOutcome> {
        self.counts.fetches.fetch_add(1, Ordering::Relaxed);
        let got = async {
            let req = http::Request::get(url)
                .header(http::header::ACCEPT, "application/pkix-crl")
                .body(Full::new(Bytes::new()))
                .map_err(|_| {
                    (
                        LeafCrlOutcome::Unavailable,
                        format!("{url}: not a request URL"),
                    )
                })?;
            let body = crate::revocation::fetch_signed(
                &self.client,
                req,
                self.settings.timeout,
                self.settings.max_bytes,
            )
            .await
            .map_err(|why| (LeafCrlOutcome::Unavailable, why))?;
            let der = crate::crl::parse(&body).map_err(|why| (LeafCrlOutcome::Invalid, why))?;
            let crl = VerifiedCrl::check(der.as_ref(), issuer, url, now)
                .map_err(|why| (LeafCrlOutcome::Invalid, format!("{url}: {why}")))?;
            let until =
                crate::revocation::capped(now, self.settings.max_age, Some(crl.next_update));
            Ok((Arc::new(crl), until))
        };
        got.await.map_err(|(outcome, why)| {
            self.counts.failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                certificate = %cert.thumbprint,
                issuer = %cert.issuer,
                failure = %portcullis_base::text::bounded(&why),
                "CRL distribution point: no verified CRL for a client certificate"
            );
            outcome
        })
    }
}
