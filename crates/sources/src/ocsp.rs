//! OCSP (RFC 6960) for client certificates: asks the responder the certificate names (its
//! Authority Information Access, `auto`) or the configured one, and caches each verified answer
//! per (issuer, serial) until its `nextUpdate`, capped by `max_age`.
//!
//! rustls verifies the chain synchronously at the handshake, where no network call can be
//! made, so the request pipeline's identity stage asks here, before anything else reads the
//! certificate: on a connection's first request and again on a later request of the same
//! connection once the cached answer is stale, so an open connection meets a revocation too.
//!
//! The response is hostile input until [`OcspQuery::check`] has taken it: bounded in size and
//! time, signed by the issuing CA or its delegated responder, about this certificate, current.
//! Failed fetches and refused answers are not cached: the next request asks again (bounded by
//! `fetch_timeout`, and by the per-peer rate limit before the identity stage). One request per
//! certificate is in flight at a time; concurrent requests for it wait and share its outcome.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use portcullis_crypto::pki::ocsp::{OcspQuery, OcspStatus};
use portcullis_crypto::pki::ClientCert;

use crate::revocation::{Counts, FlightCache};

/// Where the responder is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Responder {
    /// The first http(s) `id-ad-ocsp` URL of the certificate's Authority Information Access.
    Auto,
    /// This URL, whatever the certificate says.
    Url(http::Uri),
}

impl std::fmt::Display for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Responder::Auto => f.write_str("auto"),
            Responder::Url(u) => write!(f, "{u}"),
        }
    }
}

pub use crate::revocation::FailMode;

#[derive(Clone)]
pub struct OcspSettings {
    pub responder: Responder,
    pub fail: FailMode,
    /// Trust for an `https://` responder.
    pub tls: Arc<rustls::ClientConfig>,
    pub timeout: Duration,
    /// The longest an answer is used, also when its `nextUpdate` is later (or absent).
    pub max_age: Duration,
    pub max_bytes: usize,
    /// Cached answers at most.
    pub max_entries: usize,
}

impl OcspSettings {
    /// What identifies the checker across reloads: a change of any setting starts a new one.
    pub fn key(&self) -> String {
        format!(
            "{:?} {:?} {:?} {:?} {} {}",
            self.responder, self.fail, self.timeout, self.max_age, self.max_bytes, self.max_entries
        )
    }
}

/// The outcome for one certificate: a verified answer, or why there is none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OcspOutcome {
    Good,
    Revoked,
    /// The responder does not know the certificate.
    Unknown,
    /// No answer: no responder URL, unreachable, timed out, an HTTP error or an oversized body.
    Unavailable,
    /// An answer that was not taken: malformed, not successful, badly signed, about another
    /// certificate, not current.
    Invalid,
}

impl OcspOutcome {
    /// For the audit record: `ocsp_good`, `ocsp_revoked`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            OcspOutcome::Good => "ocsp_good",
            OcspOutcome::Revoked => "ocsp_revoked",
            OcspOutcome::Unknown => "ocsp_unknown",
            OcspOutcome::Unavailable => "ocsp_unavailable",
            OcspOutcome::Invalid => "ocsp_invalid",
        }
    }

    /// For the audit record when `fail: open` let the certificate through without a good
    /// answer.
    pub fn as_fail_open_str(self) -> &'static str {
        match self {
            OcspOutcome::Good => "ocsp_good",
            OcspOutcome::Revoked => "ocsp_revoked",
            OcspOutcome::Unknown => "ocsp_unknown_fail_open",
            OcspOutcome::Unavailable => "ocsp_unavailable_fail_open",
            OcspOutcome::Invalid => "ocsp_invalid_fail_open",
        }
    }
}

pub struct OcspChecker {
    settings: OcspSettings,
    /// The client CAs (DER): the issuer of a client certificate is one of them.
    cas: Vec<Vec<u8>>,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// Verified answers by (issuer name DER, serial DER); a failed request's outcome is shared
    /// by the requests that waited for it.
    cache: FlightCache<(Vec<u8>, Vec<u8>), OcspOutcome, OcspOutcome>,
    /// Requests to the responder; failures are those that brought no verified answer;
    /// `fail_open` counts certificates let through without a `good` answer.
    pub counts: Counts,
}

impl OcspChecker {
    pub fn new(settings: OcspSettings, cas: Vec<Vec<u8>>) -> OcspChecker {
        // Unpooled: a responder that drops idle connections would otherwise turn the next
        // check into a failure, which `fail: closed` makes a refusal.
        let client = crate::https::signed_document_client(&settings.tls, settings.timeout);
        OcspChecker {
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

    /// The status of `cert` at `now` (Unix seconds): from the cache while current, else from
    /// the responder (the caller waits, at most about `fetch_timeout`).
    pub async fn status(&self, cert: &ClientCert, now: i64) -> OcspOutcome {
        let key = (cert.issuer_der.clone(), cert.serial_der.clone());
        self.cache
            .get(key, now, || self.fetch(cert, now))
            .await
            .unwrap_or_else(|failed| failed)
    }

    /// Asks the responder: a verified answer and until when it is used, or the failure.
    async fn fetch(&self, cert: &ClientCert, now: i64) -> Result<(OcspOutcome, i64), OcspOutcome> {
        self.counts.fetches.fetch_add(1, Ordering::Relaxed);
        self.ask(cert, now).await.map_err(|(outcome, why)| {
            self.counts.failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                certificate = %cert.thumbprint,
                issuer = %cert.issuer,
                failure = %portcullis_base::text::bounded(&why),
                "OCSP: no verified answer for a client certificate"
            );
            outcome
        })
    }

    /// One round trip: a verified answer and until when it is used, or the outcome and why.
    async fn ask(
        &self,
        cert: &ClientCert,
        now: i64,
    ) -> Result<(OcspOutcome, i64), (OcspOutcome, String)> {
        let unavailable = |why: String| (OcspOutcome::Unavailable, why);
        let issuer = portcullis_crypto::pki::ocsp::find_issuer(
            &cert.der,
            self.cas.iter().map(Vec::as_slice),
        )
        .ok_or_else(|| unavailable("the issuing CA is none of the client CAs".to_string()))?;
        let uri = match &self.settings.responder {
            Responder::Url(u) => u.clone(),
            Responder::Auto => portcullis_crypto::pki::ocsp::responder_urls(&cert.der)
                .into_iter()
                .find_map(|u| u.parse::<http::Uri>().ok())
                .ok_or_else(|| {
                    unavailable("the certificate names no OCSP responder (AIA)".to_string())
                })?,
        };
        let query = OcspQuery::new(&cert.der, issuer).map_err(unavailable)?;
        let req = http::Request::post(uri.clone())
            .header(http::header::CONTENT_TYPE, "application/ocsp-request")
            .header(http::header::ACCEPT, "application/ocsp-response")
            .body(Full::new(Bytes::from(query.request_der.clone())))
            .map_err(|_| unavailable("request".to_string()))?;
        let body = crate::revocation::fetch_signed(
            &self.client,
            req,
            self.settings.timeout,
            self.settings.max_bytes,
        )
        .await
        .map_err(unavailable)?;
        let answer = query
            .check(&body, now)
            .map_err(|e| (OcspOutcome::Invalid, format!("{uri}: {e}")))?;
        let until = crate::revocation::capped(now, self.settings.max_age, answer.next_update);
        let outcome = match answer.status {
            OcspStatus::Good => OcspOutcome::Good,
            OcspStatus::Revoked => OcspOutcome::Revoked,
            OcspStatus::Unknown => OcspOutcome::Unknown,
        };
        Ok((outcome, until))
    }
}
