//! Client key sets: the keys that verify a calling client's request signatures, looked up by
//! the client's name (see [`super::template`]) and the signature's key id.
//!
//! Two sources:
//! - a directory of `<client>.json` JWK sets, read on first use, re-read after
//!   `refresh_interval`, and re-read once (at most every `min_refetch_interval`) when a key id is
//!   unknown — so a new key is picked up without a reload;
//! - a URL template (`https://keystore.example/{client}/jwks.json`) fetched over pinned TLS with
//!   the same [`KeySource`] machinery as issuer keys: single flight, refreshed on an interval,
//!   refetched (rate limited) on an unknown key id, never replaced by a failed or garbage fetch.
//!
//! Invariants: a client name is used in a path or URL only when it is made of `[A-Za-z0-9._-]`,
//! does not start with `.`, and is at most 128 bytes (no traversal, no SSRF: attacks B09/A04);
//! a key id is only ever an exact map key. A missing key set is an unknown client; a set that
//! cannot be read or fetched fails closed (503), and a good set is never replaced by a bad one.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;

use crate::keys::{KeySource, Remote};
use portcullis_crypto::jose::jwk::VerifyingKey;
use portcullis_crypto::jose::jws::{KeyChoice, KeySet};
use portcullis_crypto::jose::Alg;

/// Most clients held in the cache; beyond it the cache is cleared (keys are reloaded on demand).
const MAX_CLIENTS: usize = 10_000;

/// Where client key sets come from.
#[derive(Clone)]
pub enum ClientKeysConfig {
    Directory {
        dir: PathBuf,
        refresh: Duration,
        min_refetch: Duration,
    },
    /// `url` contains `{client}`.
    Url {
        template: String,
        tls: Arc<rustls::ClientConfig>,
        refresh: Duration,
        min_refetch: Duration,
        timeout: Duration,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LookupError {
    /// The client cannot be named safely, or it has no key set.
    UnknownClient,
    /// The client's set has no such key id.
    UnknownKey,
    /// The key id names keys, none for the signature's algorithm.
    NoKeyForAlg,
    /// The key id names two different keys for the signature's algorithm.
    Ambiguous,
    /// The client's set cannot be read or fetched now.
    Unavailable,
}

struct DirEntry {
    keys: Option<Arc<KeySet>>,
    /// The file did not exist at the last read.
    absent: bool,
    read_at: Instant,
}

pub struct ClientKeys {
    cfg: ClientKeysConfig,
    files: DashMap<String, Arc<DirEntry>>,
    remotes: DashMap<String, Arc<KeySource>>,
}

/// Whether `name` may be used as a file name or URL path segment.
pub fn safe_client_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl ClientKeys {
    pub fn new(cfg: ClientKeysConfig) -> ClientKeys {
        ClientKeys {
            cfg,
            files: DashMap::new(),
            remotes: DashMap::new(),
        }
    }

    /// The key `kid` of `client` that verifies `alg` (any, if the signature names none; see
    /// [`KeySet::select`]). Only an unknown `kid` triggers a re-read.
    pub async fn key(
        &self,
        client: &str,
        kid: &str,
        alg: Option<Alg>,
    ) -> Result<Arc<VerifyingKey>, LookupError> {
        if !safe_client_name(client) {
            return Err(LookupError::UnknownClient);
        }
        match &self.cfg {
            ClientKeysConfig::Directory {
                dir,
                refresh,
                min_refetch,
            } => {
                let entry = self.file_entry(dir, client, *refresh, false).await;
                match entry.keys.as_ref().map(|s| s.select(kid, alg)) {
                    Some(Err(KeyChoice::UnknownKid)) | None => {}
                    Some(found) => return chosen(found.cloned()),
                }
                // One re-read for an unknown kid (or a client added since), rate limited.
                let entry = if entry.read_at.elapsed() >= *min_refetch {
                    self.file_entry(dir, client, *refresh, true).await
                } else {
                    entry
                };
                match (&entry.keys, entry.absent) {
                    (Some(s), _) => chosen(s.select(kid, alg).cloned()),
                    (None, true) => Err(LookupError::UnknownClient),
                    (None, false) => Err(LookupError::Unavailable),
                }
            }
            ClientKeysConfig::Url {
                template,
                tls,
                refresh,
                min_refetch,
                timeout,
            } => {
                let source =
                    self.remote(client, template, tls, *refresh, *min_refetch, *timeout)?;
                let stale = source.last_good.load(std::sync::atomic::Ordering::Relaxed)
                    < now_unix().saturating_sub(refresh.as_secs() as i64);
                let fetches = source.fetches.load(std::sync::atomic::Ordering::Relaxed);
                if !source.is_ready() {
                    source.refresh(*min_refetch).await;
                } else if stale {
                    source.refresh(*refresh).await;
                }
                match source.select(kid, alg) {
                    Err(KeyChoice::UnknownKid) => {}
                    found => return chosen(found),
                }
                // A set fetched by this very call is as fresh as a refetch would be.
                if source.fetches.load(std::sync::atomic::Ordering::Relaxed) == fetches {
                    source.refetch_for_unknown_kid().await;
                }
                match source.select(kid, alg) {
                    Err(KeyChoice::UnknownKid) if !source.is_ready() => {
                        Err(LookupError::Unavailable)
                    }
                    found => chosen(found),
                }
            }
        }
    }

    async fn file_entry(
        &self,
        dir: &std::path::Path,
        client: &str,
        refresh: Duration,
        force: bool,
    ) -> Arc<DirEntry> {
        let cached = self.files.get(client).map(|e| Arc::clone(e.value()));
        if let Some(e) = &cached {
            if !force && e.read_at.elapsed() < refresh {
                return Arc::clone(e);
            }
        }
        let path = dir.join(format!("{client}.json"));
        let entry = match tokio::fs::read(&path).await {
            Ok(bytes) => match KeySet::from_json(&bytes) {
                Ok(set) => DirEntry {
                    keys: Some(Arc::new(set)),
                    absent: false,
                    read_at: Instant::now(),
                },
                Err(e) => {
                    tracing::warn!(client = %portcullis_base::text::bounded(client), error = %e, "client key set refused; keeping the last good one");
                    DirEntry {
                        keys: cached.as_ref().and_then(|c| c.keys.clone()),
                        absent: false,
                        read_at: Instant::now(),
                    }
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => DirEntry {
                keys: None,
                absent: true,
                read_at: Instant::now(),
            },
            Err(e) => {
                tracing::warn!(client = %portcullis_base::text::bounded(client), error = %e, "client key set unreadable; keeping the last good one");
                DirEntry {
                    keys: cached.as_ref().and_then(|c| c.keys.clone()),
                    absent: false,
                    read_at: Instant::now(),
                }
            }
        };
        let entry = Arc::new(entry);
        if self.files.len() >= MAX_CLIENTS {
            self.files.clear();
        }
        self.files.insert(client.to_string(), Arc::clone(&entry));
        entry
    }

    fn remote(
        &self,
        client: &str,
        template: &str,
        tls: &Arc<rustls::ClientConfig>,
        refresh: Duration,
        min_refetch: Duration,
        timeout: Duration,
    ) -> Result<Arc<KeySource>, LookupError> {
        if let Some(s) = self.remotes.get(client).map(|r| Arc::clone(r.value())) {
            return Ok(s);
        }
        let uri: http::Uri = template
            .replace("{client}", client)
            .parse()
            .map_err(|_| LookupError::UnknownClient)?;
        let source = Arc::new(KeySource::remote(
            &format!("client:{client}"),
            Remote {
                uri: Some(uri),
                tls: Arc::clone(tls),
                refresh,
                min_refetch,
                timeout,
            },
        ));
        if self.remotes.len() >= MAX_CLIENTS {
            self.remotes.clear();
        }
        // Two first requests may race to create the source; the first one inserted wins.
        Ok(Arc::clone(
            self.remotes
                .entry(client.to_string())
                .or_insert(source)
                .value(),
        ))
    }
}

fn chosen(found: Result<Arc<VerifyingKey>, KeyChoice>) -> Result<Arc<VerifyingKey>, LookupError> {
    found.map_err(|e| match e {
        KeyChoice::UnknownKid => LookupError::UnknownKey,
        KeyChoice::NoKeyForAlg => LookupError::NoKeyForAlg,
        KeyChoice::Ambiguous => LookupError::Ambiguous,
    })
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_crypto::jose::keypair::KeyPair;
    use portcullis_crypto::jose::Alg;

    #[test]
    fn client_names_that_could_escape_a_path_or_url_are_refused() {
        for ok in ["tpp-one", "0015800001041REAAY", "a.b_c-d"] {
            assert!(safe_client_name(ok), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            "a\\b",
            ".hidden",
            "a b",
            "a%2fb",
            "a?b",
            "a#b",
            "é",
            &"a".repeat(129),
        ] {
            assert!(!safe_client_name(bad), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_directory_source_finds_keys_rereads_for_a_new_kid_and_keeps_a_good_set() {
        let dir = tempfile::tempdir().unwrap();
        let k1 = KeyPair::generate(Alg::ES256, "k1").unwrap();
        std::fs::write(dir.path().join("tpp.json"), k1.jwks().to_string()).unwrap();
        let keys = ClientKeys::new(ClientKeysConfig::Directory {
            dir: dir.path().to_path_buf(),
            refresh: Duration::from_secs(300),
            min_refetch: Duration::ZERO,
        });
        assert_eq!(keys.key("tpp", "k1", None).await.unwrap().alg, Alg::ES256);
        assert_eq!(
            keys.key("tpp", "k2", None).await.err(),
            Some(LookupError::UnknownKey)
        );
        assert_eq!(
            keys.key("nobody", "k1", None).await.err(),
            Some(LookupError::UnknownClient)
        );
        assert_eq!(
            keys.key("../tpp", "k1", None).await.err(),
            Some(LookupError::UnknownClient)
        );
        // A new key appears: found on the unknown-kid re-read.
        let k2 = KeyPair::generate(Alg::PS256, "k2").unwrap();
        let both = serde_json::json!({"keys": [k1.public_jwk(), k2.public_jwk()]});
        std::fs::write(dir.path().join("tpp.json"), both.to_string()).unwrap();
        assert_eq!(keys.key("tpp", "k2", None).await.unwrap().alg, Alg::PS256);
        // Keys sharing a kid: the signature's algorithm chooses; without one, or with two keys
        // of that algorithm, no key is chosen; an algorithm the kid has no key for is told apart.
        let twin = KeyPair::generate(Alg::ES256, "k1").unwrap();
        let other = KeyPair::generate(Alg::ES256, "k3").unwrap();
        let mut enc = KeyPair::generate(Alg::ES256, "k3").unwrap().public_jwk();
        enc["use"] = serde_json::json!("enc");
        let shared = serde_json::json!({"keys": [
            k1.public_jwk(), k2.public_jwk(), twin.public_jwk(),
            other.public_jwk(), enc,
        ]});
        std::fs::write(dir.path().join("tpp.json"), shared.to_string()).unwrap();
        let keys = ClientKeys::new(ClientKeysConfig::Directory {
            dir: dir.path().to_path_buf(),
            refresh: Duration::from_secs(300),
            min_refetch: Duration::ZERO,
        });
        let got = |r: Result<Arc<VerifyingKey>, LookupError>| r.map(|k| k.thumbprint.clone());
        assert_eq!(
            got(keys.key("tpp", "k1", Some(Alg::ES256)).await),
            Err(LookupError::Ambiguous)
        );
        assert_eq!(
            got(keys.key("tpp", "k1", None).await),
            Err(LookupError::Ambiguous)
        );
        assert_eq!(
            got(keys.key("tpp", "k1", Some(Alg::EdDSA)).await),
            Err(LookupError::NoKeyForAlg)
        );
        assert_eq!(
            keys.key("tpp", "k2", Some(Alg::PS256)).await.unwrap().alg,
            Alg::PS256
        );
        // k3: an ES256 signing key and an encryption key: the signing key, with or without alg.
        let sig = keys.key("tpp", "k3", Some(Alg::ES256)).await.unwrap();
        assert_eq!(
            got(keys.key("tpp", "k3", None).await),
            Ok(sig.thumbprint.clone())
        );
        // A garbage file never replaces the good set.
        std::fs::write(dir.path().join("tpp.json"), "{garbage").unwrap();
        assert!(keys.key("tpp", "k9", None).await.is_err());
        assert_eq!(keys.key("tpp", "k2", None).await.unwrap().alg, Alg::PS256);
    }
}
