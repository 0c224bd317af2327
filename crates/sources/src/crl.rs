//! CRLs fetched from a URL (a CA's CRL distribution point): at start-up, then on an interval.
//!
//! A CRL is signed by its CA, so it may come over plain `http://` (RFC 5280 §4.2.1.13: CRL
//! distribution points are usually HTTP URIs); `https://` is fetched with the configured trust.
//! What comes back is hostile input until the caller's check (`accept`: the listener's own, the
//! one a CRL file gets) has taken it: the body is bounded in size and time, and a body that is
//! not a CRL of one of the client CAs, or one older than the CRL we hold (a replay of an earlier
//! list, say, by anyone on an http:// path), never replaces the last good CRL. Until the first
//! good CRL the feed is not ready: the proxy then refuses client certificates (fail closed).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use portcullis_crypto::pki::CrlInfo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateRevocationListDer;
use tokio_util::sync::CancellationToken;

/// Where a CRL is fetched from and how.
#[derive(Clone)]
pub struct CrlRemote {
    pub uri: http::Uri,
    /// Trust for an `https://` URL.
    pub tls: Arc<rustls::ClientConfig>,
    pub refresh: Duration,
    pub timeout: Duration,
    pub max_bytes: usize,
}

/// The caller's check of a fetched DER CRL: `Err` says why it is not taken.
pub type Accept =
    Arc<dyn Fn(&CertificateRevocationListDer<'static>) -> Result<(), String> + Send + Sync>;

/// A CRL taken from the feed.
pub struct FetchedCrl {
    pub der: CertificateRevocationListDer<'static>,
    pub info: CrlInfo,
}

pub struct CrlFeed {
    cfg: CrlRemote,
    accept: Accept,
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    current: ArcSwapOption<FetchedCrl>,
    pub fetches: AtomicU64,
    pub failures: AtomicU64,
    /// Bumped each time a new CRL is taken, so that users of it know to rebuild.
    generation: AtomicU64,
    /// Unix seconds of the last good fetch (0: never).
    pub last_good: AtomicI64,
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl CrlFeed {
    pub fn new(cfg: CrlRemote, accept: Accept) -> CrlFeed {
        let client = crate::https::signed_document_client(&cfg.tls, cfg.timeout);
        CrlFeed {
            cfg,
            accept,
            client,
            current: ArcSwapOption::empty(),
            fetches: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            last_good: AtomicI64::new(0),
        }
    }

    pub fn url(&self) -> String {
        self.cfg.uri.to_string()
    }

    /// Whether a good CRL has been fetched.
    pub fn is_ready(&self) -> bool {
        self.current.load().is_some()
    }

    pub fn current(&self) -> Option<Arc<FetchedCrl>> {
        self.current.load_full()
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Fetches once; a good CRL replaces the current one. Returns whether one is in place.
    pub async fn refresh(&self) -> bool {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        match self.fetch().await {
            Ok(crl) => {
                let same = self
                    .current
                    .load()
                    .as_ref()
                    .is_some_and(|c| c.der.as_ref() == crl.der.as_ref());
                if !same {
                    self.current.store(Some(Arc::new(crl)));
                    self.generation.fetch_add(1, Ordering::Release);
                }
                self.last_good.store(now_unix(), Ordering::Relaxed);
            }
            Err(why) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                // The reason may quote the fetched body (an issuer name): bounded.
                let why = portcullis_base::text::bounded(&why);
                tracing::warn!(url = %self.cfg.uri, failure = %why, "CRL fetch failed; keeping the last good CRL");
            }
        }
        self.is_ready()
    }

    async fn fetch(&self) -> Result<FetchedCrl, String> {
        let req = http::Request::get(self.cfg.uri.clone())
            .header(http::header::ACCEPT, "application/pkix-crl")
            .body(Empty::new())
            .map_err(|_| "request".to_string())?;
        let resp = tokio::time::timeout(self.cfg.timeout, self.client.request(req))
            .await
            .map_err(|_| "timeout".to_string())?
            .map_err(|_| "connect".to_string())?;
        if resp.status() != http::StatusCode::OK {
            return Err(format!("status {}", resp.status().as_u16()));
        }
        let body = tokio::time::timeout(
            self.cfg.timeout,
            Limited::new(resp.into_body(), self.cfg.max_bytes).collect(),
        )
        .await
        .map_err(|_| "timeout".to_string())?
        .map_err(|_| format!("body (over {} bytes, or cut off)", self.cfg.max_bytes))?
        .to_bytes();
        let der = parse(&body)?;
        let info = CrlInfo::from_der(der.as_ref())?;
        (self.accept)(&der)?;
        if let Some(held) = self.current.load().as_ref() {
            if info.this_update < held.info.this_update {
                return Err("older than the CRL held (thisUpdate)".to_string());
            }
        }
        if info.next_update.is_some_and(|t| t < now_unix()) {
            tracing::warn!(url = %self.cfg.uri, issuer = %info.issuer, "the fetched CRL is past its nextUpdate: the certificates of its issuer are refused until a current one is published");
        }
        Ok(FetchedCrl { der, info })
    }

    /// Fetches now and then every refresh interval until `shutdown`; until the first good CRL,
    /// retries every two seconds (or sooner, with a shorter interval).
    pub fn spawn_refresh(self: &Arc<Self>, shutdown: CancellationToken) {
        let me = Arc::clone(self);
        crate::https::spawn_refresh_loop(self.cfg.refresh, shutdown, move || {
            let me = Arc::clone(&me);
            async move { me.refresh().await }
        });
    }
}

/// A CRL as distribution points serve it (DER, RFC 5280 §4.2.1.13) or as files hold it (PEM).
pub(crate) fn parse(body: &[u8]) -> Result<CertificateRevocationListDer<'static>, String> {
    if body.starts_with(b"-----BEGIN") {
        CertificateRevocationListDer::from_pem_slice(body)
            .map_err(|e| format!("not a PEM CRL: {e}"))
    } else if body.first() == Some(&0x30) {
        Ok(CertificateRevocationListDer::from(body.to_vec()))
    } else {
        Err("neither a DER nor a PEM CRL".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_no_crl() {
        assert!(parse(b"").is_err());
        assert!(parse(b"<html>").is_err());
        assert!(parse(b"-----BEGIN X509 CRL-----\nnot base64\n-----END X509 CRL-----\n").is_err());
        // DER-looking bytes pass `parse` but not the CRL parser.
        let der = parse(&[0x30, 0x03, 0x02, 0x01, 0x01]).unwrap();
        assert!(CrlInfo::from_der(der.as_ref()).is_err());
    }
}
