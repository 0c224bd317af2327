//! The `signatures` section: how callers are named, where their keys are, the OBIE
//! `x-jws-signature` and RFC 9421 rules, and the key the proxy signs responses with.
//!
//! ```yaml
//! signatures:
//!   client: "{client_id}"                # names the caller for key lookup
//!   client_keys:
//!     directory: ../clients              # <client>.json JWK sets
//!     # url: https://keystore.example/{client}/jwks.json
//!     # ca: [../certs/keystore-ca.pem]   # required with url (pinned trust)
//!     # refresh_interval: 5m
//!     # min_refetch_interval: 30s
//!     # fetch_timeout: 5s
//!   jws:
//!     algorithms: [PS256]
//!     trust_anchors: [openbanking.org.uk]
//!     iss: "{cert_ou}/{cert_cn}"         # what http://openbanking.org.uk/iss must equal
//!     max_age: 5m
//!     clock_skew: 30s
//!   http:
//!     algorithms: [PS256, ES256, EdDSA]
//!     tag: fapi-2-request
//!     window: 60s                        # created at most this old
//!     clock_skew: 5s
//!     public_base_url: https://api.bank.example   # default: dpop.public_base_url, else https:// + Host
//!   response:
//!     key: ../certs/response.key         # PEM: RSA -> PS256, P-256 -> ES256, Ed25519 -> EdDSA
//!     kid: bank-sig-1
//!     iss: "0015800001041REAAY"          # OBIE iss of the ASPSP
//!     tan: openbanking.org.uk
//! ```
//!
//! Routes that need a signature are checked against this section after the policies load
//! ([`check_routes`]): an `obie-jws` or `http-sig` route needs `client_keys`, an OBIE route a
//! trust anchor, and `sign_response` a response key.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::auth::{is_pinned, Trust};
use super::{resolve, ConfigError, Problems};
use portcullis_base::duration::ConfigDuration;
use portcullis_crypto::jose::keypair::KeyPair;
use portcullis_crypto::jose::Alg;
use portcullis_policy::signature::SignatureKind;
use portcullis_policy::template::Template;
use portcullis_policy::PolicySet;
use portcullis_sources::clientkeys::ClientKeysConfig;

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileSignatures {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_keys: Option<FileClientKeys>,
    #[serde(default)]
    pub jws: FileJws,
    #[serde(default)]
    pub http: FileHttpSig,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<FileResponse>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileClientKeys {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub directory: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default)]
    pub ca: Vec<String>,
    #[serde(default, skip_serializing_if = "is_pinned")]
    pub trust: Trust,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_interval: Option<ConfigDuration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_refetch_interval: Option<ConfigDuration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fetch_timeout: Option<ConfigDuration>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileJws {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub algorithms: Option<Vec<String>>,
    #[serde(default)]
    pub trust_anchors: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_age: Option<ConfigDuration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clock_skew: Option<ConfigDuration>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileHttpSig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub algorithms: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<ConfigDuration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clock_skew: Option<ConfigDuration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_base_url: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileResponse {
    pub key: String,
    pub kid: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tan: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

/// OBIE `x-jws-signature` rules.
#[derive(Clone, Debug)]
pub struct JwsSettings {
    pub algorithms: Vec<Alg>,
    pub trust_anchors: Vec<String>,
    pub iss: Template,
    pub max_age: i64,
    pub skew: i64,
}

/// RFC 9421 rules.
#[derive(Clone, Debug)]
pub struct HttpSigSettings {
    pub algorithms: Vec<Alg>,
    pub tag: String,
    pub window: i64,
    pub skew: i64,
    /// `scheme://authority`, normalized, no trailing slash.
    pub public_base_url: Option<String>,
}

/// The proxy's own signing key for responses.
#[derive(Clone, Debug)]
pub struct ResponseSigning {
    pub key: Arc<KeyPair>,
    /// OBIE `iss` of the responses (the ASPSP), default the `kid`.
    pub iss: String,
    pub tan: String,
    /// RFC 9421 response `tag`.
    pub tag: String,
}

#[derive(Clone)]
pub struct Signatures {
    pub client: Template,
    pub client_keys: Option<ClientKeysConfig>,
    pub jws: JwsSettings,
    pub http: HttpSigSettings,
    pub response: Option<ResponseSigning>,
}

impl Default for Signatures {
    fn default() -> Self {
        Signatures {
            client: Template::parse("{client_id}").unwrap_or_else(|_| unreachable!()),
            client_keys: None,
            jws: JwsSettings {
                algorithms: vec![Alg::PS256],
                trust_anchors: Vec::new(),
                iss: Template::parse("{cert_ou}/{cert_cn}").unwrap_or_else(|_| unreachable!()),
                max_age: 300,
                skew: 30,
            },
            http: HttpSigSettings {
                algorithms: vec![Alg::PS256, Alg::ES256, Alg::EdDSA],
                tag: "fapi-2-request".into(),
                window: 60,
                skew: 5,
                public_base_url: None,
            },
            response: None,
        }
    }
}

fn algorithms(
    p: &mut Problems<'_>,
    field: &str,
    names: &Option<Vec<String>>,
    default: &[Alg],
) -> Vec<Alg> {
    let Some(names) = names else {
        return default.to_vec();
    };
    if names.is_empty() {
        p.push(field, "must list at least one algorithm");
    }
    names
        .iter()
        .enumerate()
        .filter_map(|(i, n)| {
            // RS256 verifies some issuers' access tokens; request signatures are FAPI's.
            let a = Alg::from_name(n).filter(|a| *a != Alg::RS256);
            if a.is_none() {
                p.push(
                    format!("{field}[{i}]"),
                    format!("`{n}` is not an allowed algorithm (PS256, ES256, EdDSA)"),
                );
            }
            a
        })
        .collect()
}

fn secs(d: Option<ConfigDuration>, default: i64) -> i64 {
    d.map_or(default, |d| d.0.as_secs() as i64)
}

fn template(
    p: &mut Problems<'_>,
    field: &str,
    value: &Option<String>,
    default: Template,
) -> Template {
    match value {
        None => default,
        Some(s) => Template::parse(s).unwrap_or_else(|e| {
            p.push(field, e);
            default
        }),
    }
}

fn client_keys(
    p: &mut Problems<'_>,
    base: &Path,
    f: &FileClientKeys,
    watched: &mut Vec<PathBuf>,
) -> Option<ClientKeysConfig> {
    let refresh = f.refresh_interval.map_or(Duration::from_secs(300), |d| d.0);
    let min_refetch = f
        .min_refetch_interval
        .map_or(Duration::from_secs(30), |d| d.0);
    match (&f.directory, &f.url) {
        (Some(d), None) => {
            let dir = resolve(base, d);
            if !dir.is_dir() {
                p.push(
                    "signatures.client_keys.directory",
                    format!("{} is not a directory", dir.display()),
                );
                return None;
            }
            if !f.ca.is_empty() || f.trust != Trust::Pinned {
                p.push("signatures.client_keys.ca", "applies only to url");
            }
            watched.push(dir.clone());
            Some(ClientKeysConfig::Directory {
                dir,
                refresh,
                min_refetch,
            })
        }
        (None, Some(url)) => {
            let probe = url.replace("{client}", "c");
            let ok = url.contains("{client}")
                && probe
                    .parse::<http::Uri>()
                    .is_ok_and(|u| u.scheme_str() == Some("https") && u.authority().is_some());
            if !ok {
                p.push(
                    "signatures.client_keys.url",
                    format!("`{url}` must be an https:// URL containing {{client}}"),
                );
                return None;
            }
            let roots = super::trust_roots(
                p,
                base,
                "signatures.client_keys.",
                &f.ca,
                f.trust,
                None,
                "a key set URL",
                watched,
            )?;
            let tls = crate::tls::upstream_client_config(roots, None)
                .map_err(|e| p.push("signatures.client_keys", e))
                .ok()?;
            Some(ClientKeysConfig::Url {
                template: url.clone(),
                tls,
                refresh,
                min_refetch,
                timeout: f.fetch_timeout.map_or(Duration::from_secs(5), |d| d.0),
            })
        }
        _ => {
            p.push(
                "signatures.client_keys",
                "set exactly one of directory or url",
            );
            None
        }
    }
}

pub(crate) fn validate(
    p: &mut Problems<'_>,
    base: &Path,
    f: &FileSignatures,
    dpop_base_url: Option<&str>,
    watched: &mut Vec<PathBuf>,
) -> Signatures {
    let d = Signatures::default();
    let client = template(p, "signatures.client", &f.client, d.client);
    let client_keys = f
        .client_keys
        .as_ref()
        .and_then(|c| client_keys(p, base, c, watched));
    for (i, t) in f.jws.trust_anchors.iter().enumerate() {
        if t.is_empty() {
            p.push(
                format!("signatures.jws.trust_anchors[{i}]"),
                "must not be empty",
            );
        }
    }
    let jws = JwsSettings {
        algorithms: algorithms(
            p,
            "signatures.jws.algorithms",
            &f.jws.algorithms,
            &d.jws.algorithms,
        ),
        trust_anchors: f.jws.trust_anchors.clone(),
        iss: template(p, "signatures.jws.iss", &f.jws.iss, d.jws.iss),
        max_age: secs(f.jws.max_age, d.jws.max_age),
        skew: secs(f.jws.clock_skew, d.jws.skew),
    };
    let public_base_url = match &f.http.public_base_url {
        None => dpop_base_url.map(str::to_string),
        Some(u) => match portcullis_crypto::jose::dpop::normalize_htu(u) {
            Some(n) if n.ends_with('/') && n.matches('/').count() == 3 => {
                Some(n.trim_end_matches('/').to_string())
            }
            _ => {
                p.push(
                    "signatures.http.public_base_url",
                    format!(
                        "`{u}` must be an absolute http(s) URL with no path, query or fragment"
                    ),
                );
                None
            }
        },
    };
    let tag = f.http.tag.clone().unwrap_or(d.http.tag);
    if tag.is_empty() {
        p.push("signatures.http.tag", "must not be empty");
    }
    let http = HttpSigSettings {
        algorithms: algorithms(
            p,
            "signatures.http.algorithms",
            &f.http.algorithms,
            &d.http.algorithms,
        ),
        tag,
        window: secs(f.http.window, d.http.window),
        skew: secs(f.http.clock_skew, d.http.skew),
        public_base_url,
    };
    let response = f.response.as_ref().and_then(|r| {
        let path = resolve(base, &r.key);
        watched.push(path.clone());
        let key = match std::fs::read(&path) {
            Ok(pem) => match KeyPair::from_pem(&pem, &r.kid) {
                Ok(k) => k,
                Err(e) => {
                    p.push(
                        "signatures.response.key",
                        format!("{}: {e}", path.display()),
                    );
                    return None;
                }
            },
            Err(e) => {
                p.push(
                    "signatures.response.key",
                    format!("cannot read {}: {e}", path.display()),
                );
                return None;
            }
        };
        if r.kid.is_empty() {
            p.push("signatures.response.kid", "must not be empty");
        }
        Some(ResponseSigning {
            key: Arc::new(key),
            iss: r.iss.clone().unwrap_or_else(|| r.kid.clone()),
            tan: r
                .tan
                .clone()
                .or_else(|| f.jws.trust_anchors.first().cloned())
                .unwrap_or_else(|| "openbanking.org.uk".into()),
            tag: r.tag.clone().unwrap_or_else(|| "fapi-2-response".into()),
        })
    });
    Signatures {
        client,
        client_keys,
        jws,
        http,
        response,
    }
}

/// Every route's signature requirement against this section.
pub(crate) fn check_routes(s: &Signatures, policies: &PolicySet, errors: &mut Vec<ConfigError>) {
    for route in policies.routes() {
        let Some(sig) = route.signature else {
            continue;
        };
        let mut p = Problems::new(&route.file, errors);
        let field = format!("route {}: signature", route.id);
        if s.client_keys.is_none() {
            p.push(
                &field,
                "the config has no `signatures.client_keys` to verify it with",
            );
        }
        if matches!(sig.kind, SignatureKind::ObieJws(_)) && s.jws.trust_anchors.is_empty() {
            p.push(
                &field,
                "obie-jws needs `signatures.jws.trust_anchors` in the config",
            );
        }
        if sig.sign_response && s.response.is_none() {
            p.push(
                &field,
                "sign_response needs `signatures.response` (key and kid) in the config",
            );
        }
    }
}
