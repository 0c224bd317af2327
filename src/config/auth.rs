//! The token section of the config: issuers (their key sources and rules), DPoP settings, the
//! verified-token cache and the identity headers sent upstream.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use serde::Deserialize;

use super::duration::ConfigDuration;
use super::{read_certs, resolve, Problems};
use crate::jose::jws::KeySet;
use crate::jose::source::Remote;
use crate::jose::Alg;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileIssuer {
    /// The exact `iss` value.
    pub issuer: String,
    /// A value `aud` must contain.
    pub audience: String,
    pub jwks: FileJwks,
    pub algorithms: Option<Vec<String>>,
    /// Require `typ: at+jwt` (RFC 9068). Default true.
    pub require_typ: Option<bool>,
    pub clock_skew: Option<ConfigDuration>,
    pub max_token_bytes: Option<usize>,
    /// Refuse tokens whose `iat` is older than this.
    pub max_token_age: Option<ConfigDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileJwks {
    pub file: Option<String>,
    pub url: Option<String>,
    #[serde(default)]
    pub ca: Vec<String>,
    pub refresh_interval: Option<ConfigDuration>,
    pub min_refetch_interval: Option<ConfigDuration>,
    pub fetch_timeout: Option<ConfigDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileDpop {
    pub algorithms: Option<Vec<String>>,
    /// How old a proof may be.
    pub max_age: Option<ConfigDuration>,
    /// How far in the future a proof's `iat` may be.
    pub clock_skew: Option<ConfigDuration>,
    /// The external base URL clients sign in `htu` (behind a load balancer), e.g.
    /// `https://api.bank.example`. Default: `https://` + the request's Host.
    pub public_base_url: Option<String>,
    pub replay_capacity: Option<usize>,
    /// How long a server nonce is accepted (it rotates every half of this).
    pub nonce_lifetime: Option<ConfigDuration>,
    /// A file holding the nonce secret (at least 32 bytes), shared by a fleet; default: a
    /// random secret per process.
    pub nonce_secret_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileTokens {
    pub cache_entries: Option<usize>,
    /// Claim name -> header sent upstream with its value.
    pub identity_headers: Option<BTreeMap<String, String>>,
}

/// Where an issuer's keys come from.
#[derive(Clone)]
pub enum JwksSource {
    File { path: PathBuf, keys: Arc<KeySet> },
    Url(Remote),
}

/// One trusted access-token issuer.
#[derive(Clone)]
pub struct Issuer {
    pub name: String,
    pub issuer: String,
    pub audience: String,
    pub jwks: JwksSource,
    pub algorithms: Vec<Alg>,
    pub require_typ: bool,
    pub skew: i64,
    pub max_token_bytes: usize,
    pub max_age: Option<i64>,
}

#[derive(Clone, Debug)]
pub struct DpopSettings {
    pub algorithms: Vec<Alg>,
    pub max_age: i64,
    pub skew: i64,
    /// `scheme://authority` without a trailing slash, normalized; `None` uses the Host.
    pub public_base_url: Option<String>,
    pub replay_capacity: usize,
    pub nonce_lifetime: i64,
    pub nonce_secret: Option<Vec<u8>>,
}

#[derive(Clone)]
pub struct Auth {
    pub issuers: BTreeMap<String, Issuer>,
    pub dpop: DpopSettings,
    pub cache_entries: usize,
    /// (claim, header) pairs, in claim order.
    pub identity_headers: Vec<(String, HeaderName)>,
}

const DEFAULT_ALGS: [Alg; 3] = [Alg::PS256, Alg::ES256, Alg::EdDSA];

fn algorithms(p: &mut Problems<'_>, field: &str, names: &Option<Vec<String>>) -> Vec<Alg> {
    let Some(names) = names else {
        return DEFAULT_ALGS.to_vec();
    };
    let mut out = Vec::new();
    for (i, n) in names.iter().enumerate() {
        match Alg::from_name(n) {
            Some(a) => out.push(a),
            None => p.push(
                format!("{field}[{i}]"),
                format!("`{n}` is not an allowed algorithm (PS256, ES256, EdDSA; none and HMAC are never allowed)"),
            ),
        }
    }
    if names.is_empty() {
        p.push(field, "must list at least one algorithm");
    }
    out
}

fn secs(d: Option<ConfigDuration>, default: u64) -> i64 {
    d.map_or(default as i64, |d| d.0.as_secs() as i64)
}

fn validate_issuer(
    p: &mut Problems<'_>,
    base: &Path,
    name: &str,
    f: &FileIssuer,
    watched: &mut Vec<PathBuf>,
) -> Option<Issuer> {
    let field = |s: &str| format!("issuers.{name}.{s}");
    if f.issuer.is_empty() {
        p.push(field("issuer"), "must not be empty");
    }
    if f.audience.is_empty() {
        p.push(field("audience"), "must not be empty");
    }
    let algorithms = algorithms(p, &field("algorithms"), &f.algorithms);
    let jwks = match (&f.jwks.file, &f.jwks.url) {
        (Some(file), None) => {
            let path = resolve(base, file);
            watched.push(path.clone());
            match std::fs::read(&path) {
                Ok(bytes) => match KeySet::from_json(&bytes) {
                    Ok(keys) => {
                        for (kid, why) in &keys.skipped {
                            tracing::warn!(issuer = name, kid = ?kid, why = why.as_str(), "JWKS key skipped");
                        }
                        Some(JwksSource::File {
                            path,
                            keys: Arc::new(keys),
                        })
                    }
                    Err(e) => {
                        p.push(field("jwks.file"), format!("{}: {e}", path.display()));
                        None
                    }
                },
                Err(e) => {
                    p.push(
                        field("jwks.file"),
                        format!("cannot read {}: {e}", path.display()),
                    );
                    None
                }
            }
        }
        (None, Some(url)) => {
            let uri: Option<http::Uri> = url.parse().ok();
            match uri {
                Some(u)
                    if u.scheme() == Some(&http::uri::Scheme::HTTPS) && u.authority().is_some() =>
                {
                    let mut roots = rustls::RootCertStore::empty();
                    for (i, ca) in f.jwks.ca.iter().enumerate() {
                        let path = resolve(base, ca);
                        watched.push(path.clone());
                        for c in read_certs(p, &field(&format!("jwks.ca[{i}]")), &path) {
                            let _ = roots.add(c);
                        }
                    }
                    if roots.is_empty() {
                        p.push(
                            field("jwks.ca"),
                            "a JWKS URL needs its CA bundle (trust is pinned)",
                        );
                        None
                    } else {
                        crate::tls::upstream_client_config(roots, None)
                            .map_err(|e| p.push(field("jwks"), e))
                            .ok()
                            .map(|tls| {
                                JwksSource::Url(Remote {
                                    uri: u,
                                    tls,
                                    refresh: f
                                        .jwks
                                        .refresh_interval
                                        .map_or(Duration::from_secs(300), |d| d.0),
                                    min_refetch: f
                                        .jwks
                                        .min_refetch_interval
                                        .map_or(Duration::from_secs(30), |d| d.0),
                                    timeout: f
                                        .jwks
                                        .fetch_timeout
                                        .map_or(Duration::from_secs(5), |d| d.0),
                                })
                            })
                    }
                }
                _ => {
                    p.push(field("jwks.url"), format!("`{url}` is not an https:// URL"));
                    None
                }
            }
        }
        _ => {
            p.push(field("jwks"), "set exactly one of file or url");
            None
        }
    };
    Some(Issuer {
        name: name.to_string(),
        issuer: f.issuer.clone(),
        audience: f.audience.clone(),
        jwks: jwks?,
        algorithms,
        require_typ: f.require_typ.unwrap_or(true),
        skew: secs(f.clock_skew, 30),
        max_token_bytes: f.max_token_bytes.unwrap_or(8192),
        max_age: f.max_token_age.map(|d| d.0.as_secs() as i64),
    })
}

pub(crate) fn validate(
    p: &mut Problems<'_>,
    base: &Path,
    issuers: &BTreeMap<String, FileIssuer>,
    dpop: &FileDpop,
    tokens: &FileTokens,
    watched: &mut Vec<PathBuf>,
) -> Auth {
    let issuers = issuers
        .iter()
        .filter_map(|(name, f)| {
            validate_issuer(p, base, name, f, watched).map(|i| (name.clone(), i))
        })
        .collect();
    let public_base_url =
        dpop.public_base_url
            .as_ref()
            .and_then(|u| match crate::jose::dpop::normalize_htu(u) {
                Some(n) if n.ends_with('/') && n.matches('/').count() == 3 => {
                    Some(n.trim_end_matches('/').to_string())
                }
                _ => {
                    p.push(
                        "dpop.public_base_url",
                        format!(
                            "`{u}` must be an absolute http(s) URL with no path, query or fragment"
                        ),
                    );
                    None
                }
            });
    let dpop = DpopSettings {
        algorithms: algorithms(p, "dpop.algorithms", &dpop.algorithms),
        max_age: secs(dpop.max_age, 60),
        skew: secs(dpop.clock_skew, 5),
        public_base_url,
        replay_capacity: dpop.replay_capacity.unwrap_or(1_000_000),
        nonce_lifetime: secs(dpop.nonce_lifetime, 300),
        nonce_secret: dpop.nonce_secret_file.as_ref().and_then(|f| {
            let path = resolve(base, f);
            watched.push(path.clone());
            match std::fs::read(&path) {
                Ok(b) if b.len() >= 32 => Some(b),
                Ok(_) => {
                    p.push("dpop.nonce_secret_file", "the secret must be at least 32 bytes");
                    None
                }
                Err(e) => {
                    p.push("dpop.nonce_secret_file", format!("cannot read {}: {e}", path.display()));
                    None
                }
            }
        }),
    };
    let default_headers: BTreeMap<String, String> = [
        ("client_id", "x-portcullis-client-id"),
        ("sub", "x-portcullis-subject"),
        ("scope", "x-portcullis-scope"),
        ("jti", "x-portcullis-token-jti"),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    let mut identity_headers = Vec::new();
    for (claim, header) in tokens.identity_headers.as_ref().unwrap_or(&default_headers) {
        match HeaderName::from_bytes(header.as_bytes()) {
            Ok(h) if !header.contains('_') && header.to_ascii_lowercase() == *header => {
                identity_headers.push((claim.clone(), h))
            }
            _ => p.push(
                format!("tokens.identity_headers.{claim}"),
                format!("`{header}` is not a lower-case header name without `_`"),
            ),
        }
    }
    Auth {
        issuers,
        dpop,
        cache_entries: tokens.cache_entries.unwrap_or(100_000),
        identity_headers,
    }
}
