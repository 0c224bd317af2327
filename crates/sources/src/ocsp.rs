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

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use portcullis_crypto::pki::ocsp::{OcspQuery, OcspStatus};
use portcullis_crypto::pki::ClientCert;

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

impl std::fmt::Display for FailMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FailMode::Closed => "closed",
            FailMode::Open => "open",
        })
    }
}

/// What to do when no verified answer can be had.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailMode {
    /// Refuse the certificate (the default).
    Closed,
    /// Let it through, and count it.
    Open,
}

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

type InFlight = tokio::sync::Mutex<Option<(OcspOutcome, std::time::Instant)>>;

#[derive(Clone, Copy)]
struct Cached {
    outcome: OcspOutcome,
    /// Unix seconds after which the answer is asked again.
    until: i64,
}

pub struct OcspChecker {
    settings: OcspSettings,
    /// The client CAs (DER): the issuer of a client certificate is one of them.
    cas: Vec<Vec<u8>>,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// Verified answers by (issuer name DER, serial DER).
    cache: DashMap<(Vec<u8>, Vec<u8>), Cached>,
    /// One request to the responder per certificate at a time: requests that need the same
    /// answer (an HTTP/2 connection may send a hundred at once) wait for the one in flight and
    /// take its outcome, rather than each asking. The slot holds the last failure and when it
    /// happened, for those that waited on it (failures are not cached beyond that).
    inflight: DashMap<(Vec<u8>, Vec<u8>), Arc<InFlight>>,
    pub fetches: AtomicU64,
    /// Requests to the responder that brought no verified answer.
    pub failures: AtomicU64,
    /// Certificates let through without a `good` answer (`fail: open`).
    pub fail_open: AtomicU64,
}

impl OcspChecker {
    pub fn new(settings: OcspSettings, cas: Vec<Vec<u8>>) -> OcspChecker {
        // Unpooled: a responder that drops idle connections would otherwise turn the next
        // check into a failure, which `fail: closed` makes a refusal.
        let client = crate::https::signed_document_client(&settings.tls, settings.timeout);
        OcspChecker {
            settings,
            cas,
            client,
            cache: DashMap::new(),
            inflight: DashMap::new(),
            fetches: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            fail_open: AtomicU64::new(0),
        }
    }

    pub fn fail_mode(&self) -> FailMode {
        self.settings.fail
    }

    /// Counts a certificate let through by `fail: open`.
    pub fn count_fail_open(&self) {
        self.fail_open.fetch_add(1, Ordering::Relaxed);
    }

    /// The status of `cert` at `now` (Unix seconds): from the cache while current, else from
    /// the responder (the caller waits, at most about `fetch_timeout`).
    pub async fn status(&self, cert: &ClientCert, now: i64) -> OcspOutcome {
        let key = (cert.issuer_der.clone(), cert.serial_der.clone());
        if let Some(outcome) = self.cached(&key, now) {
            return outcome;
        }
        let started = std::time::Instant::now();
        let slot = Arc::clone(self.inflight.entry(key.clone()).or_default().value());
        let outcome = {
            let mut last = slot.lock().await;
            // Whoever held the slot while this request waited has asked: take what it got.
            if let Some(outcome) = self.cached(&key, now) {
                outcome
            } else if let Some((outcome, _)) = last.filter(|(_, at)| *at >= started) {
                outcome
            } else {
                let outcome = self.fetch(cert, key.clone(), now).await;
                // Verified answers are in the cache; a failure is kept for the waiters only.
                *last = matches!(outcome, OcspOutcome::Unavailable | OcspOutcome::Invalid)
                    .then(|| (outcome, std::time::Instant::now()));
                outcome
            }
        };
        // The slot goes when no other request holds it (the map's reference and ours).
        self.inflight
            .remove_if(&key, |_, s| Arc::strong_count(s) <= 2);
        outcome
    }

    fn cached(&self, key: &(Vec<u8>, Vec<u8>), now: i64) -> Option<OcspOutcome> {
        let c = self.cache.get(key).map(|c| *c)?;
        (now < c.until).then_some(c.outcome)
    }

    /// Asks the responder; a verified answer is cached.
    async fn fetch(&self, cert: &ClientCert, key: (Vec<u8>, Vec<u8>), now: i64) -> OcspOutcome {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        match self.ask(cert, now).await {
            Ok((outcome, until)) => {
                self.remember(key, Cached { outcome, until }, now);
                outcome
            }
            Err((outcome, why)) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    certificate = %cert.thumbprint,
                    issuer = %cert.issuer,
                    failure = %portcullis_base::text::bounded(&why),
                    "OCSP: no verified answer for a client certificate"
                );
                outcome
            }
        }
    }

    fn remember(&self, key: (Vec<u8>, Vec<u8>), entry: Cached, now: i64) {
        if self.cache.len() >= self.settings.max_entries {
            self.cache.retain(|_, c| now < c.until);
        }
        if self.cache.len() >= self.settings.max_entries {
            // Still full of current answers: drop one; it is asked again when next needed.
            let victim = self.cache.iter().next().map(|e| e.key().clone());
            if let Some(v) = victim {
                self.cache.remove(&v);
            }
        }
        self.cache.insert(key, entry);
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
        let timeout = self.settings.timeout;
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|_| unavailable(format!("cannot reach {uri}")))?;
            if resp.status() != http::StatusCode::OK {
                return Err(unavailable(format!(
                    "{uri} answered {}",
                    resp.status().as_u16()
                )));
            }
            let body = Limited::new(resp.into_body(), self.settings.max_bytes)
                .collect()
                .await
                .map_err(|_| {
                    unavailable(format!(
                        "the answer of {uri} is over {} bytes, or cut off",
                        self.settings.max_bytes
                    ))
                })?;
            Ok(body.to_bytes())
        };
        let body = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| unavailable(format!("{uri} did not answer within {timeout:?}")))??;
        let answer = query
            .check(&body, now)
            .map_err(|e| (OcspOutcome::Invalid, format!("{uri}: {e}")))?;
        let cap =
            now.saturating_add(i64::try_from(self.settings.max_age.as_secs()).unwrap_or(i64::MAX));
        let until = answer.next_update.map_or(cap, |t| t.min(cap));
        let outcome = match answer.status {
            OcspStatus::Good => OcspOutcome::Good,
            OcspStatus::Revoked => OcspOutcome::Revoked,
            OcspStatus::Unknown => OcspOutcome::Unknown,
        };
        Ok((outcome, until))
    }
}
