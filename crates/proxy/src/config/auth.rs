//! The token section of the config: issuers (their key sources and rules), DPoP settings, the
//! verified-token cache and the identity headers sent upstream.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use serde::{Deserialize, Serialize};

use super::{read_certs, resolve, trust_roots, Problems};
use portcullis_base::duration::ConfigDuration;
use portcullis_crypto::jose::jws::KeySet;
use portcullis_crypto::jose::Alg;
use portcullis_sources::discovery::DiscoveryConfig;
use portcullis_sources::https::ClientAuth;
use portcullis_sources::keys::Remote;

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileIssuer {
    /// The exact `iss` value.
    pub issuer: String,
    /// A value `aud` must contain.
    pub audience: String,
    /// Read the key set's and the introspection endpoint's URLs from the issuer's metadata
    /// (RFC 8414 / OpenID Connect Discovery).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discovery: Option<FileDiscovery>,
    /// Keys for JWT access tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks: Option<FileJwks>,
    /// RFC 7662 introspection for opaque access tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub introspection: Option<FileIntrospection>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub algorithms: Option<Vec<String>>,
    /// Require `typ: at+jwt` (RFC 9068). Default true.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub require_typ: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clock_skew: Option<ConfigDuration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_token_bytes: Option<usize>,
    /// Refuse tokens whose `iat` is older than this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_token_age: Option<ConfigDuration>,
    /// The JWT claim holding the granted scopes (default `scope`, RFC 9068; e.g. `scp`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope_claim: Option<String>,
    /// The JWT claim naming the OAuth client (default `client_id`, RFC 9068; e.g. `azp`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_claim: Option<String>,
}

/// Whose certificates an outbound HTTPS call trusts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Trust {
    /// Only the listed `ca` bundles: trust is pinned (the default).
    #[default]
    Pinned,
    /// The system's root store (`SSL_CERT_FILE` / `SSL_CERT_DIR`, else the distribution's
    /// bundle), read once at start, and the listed `ca` bundles.
    System,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileDiscovery {
    /// The metadata document (default: the issuer + `/.well-known/openid-configuration`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ca: Vec<String>,
    #[serde(default, skip_serializing_if = "is_pinned")]
    pub trust: Trust,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_interval: Option<ConfigDuration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fetch_timeout: Option<ConfigDuration>,
}

pub(crate) fn is_pinned(t: &Trust) -> bool {
    *t == Trust::Pinned
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileJwks {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
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
pub struct FileIntrospection {
    /// The endpoint; without it, the issuer's metadata names it (needs `discovery`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default)]
    pub ca: Vec<String>,
    #[serde(default, skip_serializing_if = "is_pinned")]
    pub trust: Trust,
    /// The proxy's client id at the authorization server: with `client_secret_file`, HTTP Basic
    /// client authentication; with a client certificate alone, `tls_client_auth` (RFC 8705 §2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_secret_file: Option<String>,
    /// The proxy's client certificate: mutual TLS client authentication.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_private_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_ttl: Option<ConfigDuration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<ConfigDuration>,
    /// Also introspect JWT access tokens that verified locally, so a token the AS revoked
    /// stops working within `cache_ttl` (default false: a JWT is good until `exp`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwts: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileDpop {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub algorithms: Option<Vec<String>>,
    /// How old a proof may be.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_age: Option<ConfigDuration>,
    /// How far in the future a proof's `iat` may be.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clock_skew: Option<ConfigDuration>,
    /// The external base URL clients sign in `htu` (behind a load balancer), e.g.
    /// `https://api.bank.example`. Default: `https://` + the request's Host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_base_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replay_capacity: Option<usize>,
    /// How long a server nonce is accepted (it rotates every half of this).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nonce_lifetime: Option<ConfigDuration>,
    /// A file holding the nonce secret (at least 32 bytes), shared by a fleet; default: a
    /// random secret per process.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nonce_secret_file: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileConsentSource {
    /// A YAML/JSON file `consents: {id: record}` (dev and tests).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// An HTTPS URL template with `{id}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default)]
    pub ca: Vec<String>,
    #[serde(default, skip_serializing_if = "is_pinned")]
    pub trust: Trust,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl: Option<ConfigDuration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<ConfigDuration>,
    /// How the proxy authenticates to the consent service.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_auth: Option<FileConsentClientAuth>,
}

/// Exactly one way for the proxy to prove who it is to the consent service: its client
/// certificate (mutual TLS), a bearer token from a file, or a client credentials token (which
/// itself authenticates to the token endpoint with a secret or with the client certificate).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileConsentClientAuth {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_private_key: Option<String>,
    /// A file holding the token (a mounted secret), re-read when it changes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bearer_token_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_credentials: Option<FileClientCredentials>,
}

/// An OAuth 2.0 client credentials grant (RFC 6749 §4.4).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileClientCredentials {
    /// The authorization server's token endpoint (https).
    pub token_url: String,
    pub client_id: String,
    /// `client_secret_basic`; without it, the client certificate (`tls_client_auth`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_secret_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// The token endpoint's CA bundles; default: the consent service's trust.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ca: Vec<String>,
    #[serde(default, skip_serializing_if = "is_pinned")]
    pub trust: Trust,
}

pub(crate) fn validate_consent(
    p: &mut Problems<'_>,
    base: &Path,
    f: &FileConsentSource,
    watched: &mut Vec<PathBuf>,
) -> Option<portcullis_sources::consent::ConsentConfig> {
    use portcullis_policy::rules::ConsentRecord;
    use portcullis_sources::consent::{ConsentAuth, ConsentConfig, RemoteConsent};
    match (&f.file, &f.url) {
        (Some(_), None) if f.client_auth.is_some() => {
            p.push(
                "consent.client_auth",
                "client authentication is for a consent url, not a file",
            );
            None
        }
        (Some(file), None) => {
            let path = resolve(base, file);
            watched.push(path.clone());
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) => {
                    p.push(
                        "consent.file",
                        format!("cannot read {}: {e}", path.display()),
                    );
                    return None;
                }
            };
            let doc: serde_json::Value = match serde_saphyr::from_str(&text) {
                Ok(v) => v,
                Err(e) => {
                    p.push(
                        "consent.file",
                        format!("{}: invalid YAML: {e}", path.display()),
                    );
                    return None;
                }
            };
            let Some(all) = doc.get("consents").and_then(serde_json::Value::as_object) else {
                p.push(
                    "consent.file",
                    format!("{}: expected `consents: {{id: record}}`", path.display()),
                );
                return None;
            };
            let mut map = std::collections::HashMap::new();
            for (id, rec) in all {
                match ConsentRecord::from_json(rec) {
                    Some(r) => {
                        map.insert(id.clone(), r);
                    }
                    None => p.push(
                        format!("consent.file: consents.{id}"),
                        "a record needs a status, and expires/permissions of the right types",
                    ),
                }
            }
            Some(ConsentConfig::File(Arc::new(map)))
        }
        (None, Some(url)) => {
            let ok = url.starts_with("https://")
                && url.contains("{id}")
                && url.replace("{id}", "x").parse::<http::Uri>().is_ok();
            if !ok {
                p.push(
                    "consent.url",
                    format!("`{url}` must be an https:// URL template containing {{id}}"),
                );
                return None;
            }
            let roots = trust_roots(
                p,
                base,
                "consent.",
                &f.ca,
                f.trust,
                None,
                "the consent endpoint",
                watched,
            )?;
            let timeout = f.timeout.map_or(Duration::from_secs(2), |d| d.0);
            let (identity, auth) = match &f.client_auth {
                Some(a) => validate_consent_client_auth(p, base, a, &roots, timeout, watched)?,
                None => (None, ConsentAuth::Tls),
            };
            let tls = crate::tls::upstream_client_config(roots, identity)
                .map_err(|e| p.push("consent.client_auth.client_certificate", e))
                .ok()?;
            Some(ConsentConfig::Url(RemoteConsent {
                url_template: url.clone(),
                tls,
                auth,
                ttl: f.ttl.map_or(Duration::from_secs(30), |d| d.0),
                timeout,
            }))
        }
        _ => {
            p.push("consent", "set exactly one of file or url");
            None
        }
    }
}

type Identity = (
    Vec<rustls_pki_types::CertificateDer<'static>>,
    rustls_pki_types::PrivateKeyDer<'static>,
);

/// The client certificate (for the consent connection and, with client credentials and no
/// secret, the token endpoint's) and what goes in each consent request.
fn validate_consent_client_auth(
    p: &mut Problems<'_>,
    base: &Path,
    f: &FileConsentClientAuth,
    roots: &rustls::RootCertStore,
    timeout: Duration,
    watched: &mut Vec<PathBuf>,
) -> Option<(Option<Identity>, portcullis_sources::consent::ConsentAuth)> {
    use portcullis_sources::client_auth::{is_b64token, TokenEndpoint};
    use portcullis_sources::consent::ConsentAuth;
    let field = |s: &str| format!("consent.client_auth.{s}");
    let identity = client_identity(
        p,
        base,
        "consent.client_auth.",
        &f.client_certificate,
        &f.client_private_key,
        watched,
    )
    .ok()?;
    match (&f.bearer_token_file, &f.client_credentials) {
        (None, None) if identity.is_some() => Some((identity, ConsentAuth::Tls)),
        (None, None) => {
            p.push(
                "consent.client_auth",
                "set one of client_certificate (with client_private_key), bearer_token_file or client_credentials",
            );
            None
        }
        (Some(_), Some(_)) => {
            p.push(
                field("bearer_token_file"),
                "set one of bearer_token_file and client_credentials, not both",
            );
            None
        }
        (Some(_), None) if identity.is_some() => {
            p.push(
                field("bearer_token_file"),
                "a bearer token file and a client certificate are two client authentications: set one",
            );
            None
        }
        (Some(file), None) => {
            // Not watched: the token is re-read on its own when the file changes, without a
            // config reload. It must hold a usable token now, so a typo fails at load.
            let path = resolve(base, file);
            match std::fs::read_to_string(&path) {
                Ok(t) if is_b64token(t.trim()) => Some((None, ConsentAuth::BearerFile(path))),
                Ok(_) => {
                    p.push(
                        field("bearer_token_file"),
                        format!(
                            "{} holds no bearer token (RFC 6750 b64token)",
                            path.display()
                        ),
                    );
                    None
                }
                Err(e) => {
                    p.push(
                        field("bearer_token_file"),
                        format!("cannot read {}: {e}", path.display()),
                    );
                    None
                }
            }
        }
        (None, Some(cc)) => {
            let cfield = |s: &str| field(&format!("client_credentials.{s}"));
            let Some(uri) = https_url(&cc.token_url) else {
                p.push(
                    cfield("token_url"),
                    format!("`{}` is not an https:// URL", cc.token_url),
                );
                return None;
            };
            if cc.client_id.is_empty() {
                p.push(cfield("client_id"), "must not be empty");
                return None;
            }
            // RFC 6749 §3.3: scope tokens are printable ASCII without `"` and `\`.
            if let Some(scope) = &cc.scope {
                let ok = scope.split(' ').all(|t| {
                    !t.is_empty()
                        && t.bytes()
                            .all(|b| (0x21..0x7f).contains(&b) && b != b'"' && b != b'\\')
                });
                if !ok {
                    p.push(
                        cfield("scope"),
                        "must be space-separated scope tokens (RFC 6749 §3.3)",
                    );
                    return None;
                }
            }
            let secret = secret_file(
                p,
                base,
                &cfield("client_secret_file"),
                &cc.client_secret_file,
                watched,
            )
            .ok()?;
            let client_id = cc.client_id.clone();
            let auth = match (secret, identity.is_some()) {
                (Some(secret), false) => ClientAuth::Basic { client_id, secret },
                (None, true) => ClientAuth::TlsClientAuth { client_id },
                (Some(_), true) => {
                    p.push(
                        cfield("client_secret_file"),
                        "the token endpoint takes client_secret_file or the client certificate, not both",
                    );
                    return None;
                }
                (None, false) => {
                    p.push(
                        cfield("client_secret_file"),
                        "the token endpoint needs client authentication: client_secret_file, or client_certificate and client_private_key beside client_credentials",
                    );
                    return None;
                }
            };
            let token_roots = trust_roots(
                p,
                base,
                &cfield(""),
                &cc.ca,
                cc.trust,
                Some(roots),
                "the token endpoint",
                watched,
            )?;
            let tls = crate::tls::upstream_client_config(
                token_roots,
                identity.as_ref().map(|(c, k)| (c.clone(), k.clone_key())),
            )
            .map_err(|e| p.push(field("client_certificate"), e))
            .ok()?;
            let endpoint = TokenEndpoint {
                uri,
                tls,
                auth,
                scope: cc.scope.clone(),
                timeout,
            };
            Some((identity, ConsentAuth::ClientCredentials(Box::new(endpoint))))
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileTokens {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_entries: Option<usize>,
    /// Claim name -> header sent upstream with its value.
    #[serde(skip_serializing_if = "Option::is_none")]
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
    pub discovery: Option<DiscoveryConfig>,
    pub jwks: Option<JwksSource>,
    pub introspection: Option<portcullis_sources::introspect::IntrospectionConfig>,
    pub algorithms: Vec<Alg>,
    pub require_typ: bool,
    pub skew: i64,
    pub max_token_bytes: usize,
    pub max_age: Option<i64>,
    /// Where a JWT access token's scopes and client are (introspection answers always use
    /// RFC 7662's `scope` and `client_id`).
    pub scope_claim: String,
    pub client_claim: String,
}

#[derive(Clone, Debug)]
pub struct DpopSettings {
    pub algorithms: Vec<Alg>,
    /// `algorithms` as the `algs` of a DPoP challenge (RFC 9449 §7.1): names, space-separated.
    pub challenge_algs: String,
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

/// An allow-list of JWS algorithms; `rs256` says whether RS256 may be on it (an issuer's
/// access tokens, for `bearer` routes only: see [`check_routes`]).
fn algorithms(
    p: &mut Problems<'_>,
    field: &str,
    names: &Option<Vec<String>>,
    rs256: bool,
) -> Vec<Alg> {
    let Some(names) = names else {
        return DEFAULT_ALGS.to_vec();
    };
    let mut out = Vec::new();
    for (i, n) in names.iter().enumerate() {
        match Alg::from_name(n) {
            Some(Alg::RS256) if !rs256 => p.push(
                format!("{field}[{i}]"),
                "RS256 is not a FAPI algorithm: only an issuer's `algorithms` may list it, for bearer routes",
            ),
            Some(a) => out.push(a),
            None => p.push(
                format!("{field}[{i}]"),
                format!("`{n}` is not an allowed algorithm (PS256, ES256, EdDSA, and RS256 for bearer-only issuers; none and HMAC are never allowed)"),
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
    let algorithms = algorithms(p, &field("algorithms"), &f.algorithms, true);
    let discovery = f
        .discovery
        .as_ref()
        .and_then(|d| validate_discovery(p, base, name, &f.issuer, d, watched));
    let introspection = f
        .introspection
        .as_ref()
        .and_then(|i| validate_introspection(p, base, name, i, discovery.as_ref(), watched));
    if f.jwks.is_none() && f.introspection.is_none() {
        p.push(
            field("jwks"),
            "an issuer needs jwks (JWT tokens), introspection (opaque tokens), or both",
        );
    }
    let jwks = match f.jwks.as_ref() {
        None => None,
        Some(j) => validate_jwks(p, base, name, j, discovery.as_ref(), watched),
    };
    if f.jwks.is_none()
        && f.introspection
            .as_ref()
            .is_some_and(|i| i.jwts == Some(true))
    {
        p.push(
            field("introspection.jwts"),
            "applies to JWT access tokens, which need jwks",
        );
    }
    let scope_claim = mapped_claim(p, &field("scope_claim"), &f.scope_claim, "scope");
    let client_claim = mapped_claim(p, &field("client_claim"), &f.client_claim, "client_id");
    if f.jwks.is_some() && jwks.is_none() {
        return None;
    }
    Some(Issuer {
        name: name.to_string(),
        issuer: f.issuer.clone(),
        audience: f.audience.clone(),
        discovery,
        jwks,
        introspection,
        algorithms,
        require_typ: f.require_typ.unwrap_or(true),
        skew: secs(f.clock_skew, 30),
        max_token_bytes: f.max_token_bytes.unwrap_or(8192),
        max_age: f.max_token_age.map(|d| d.0.as_secs() as i64),
        scope_claim,
        client_claim,
    })
}

/// Claims whose meaning the verifier already fixes: mapping scopes or the client onto one of
/// them would read, say, the audience as a grant.
const RESERVED_CLAIMS: [&str; 9] = [
    "iss", "aud", "exp", "nbf", "iat", "jti", "sub", "cnf", "typ",
];

/// A configured claim name, or `default`: a plain JSON member name, not a reserved claim.
fn mapped_claim(p: &mut Problems<'_>, field: &str, name: &Option<String>, default: &str) -> String {
    let Some(n) = name else {
        return default.to_string();
    };
    if n.is_empty() || n.len() > 64 || !n.bytes().all(|b| b.is_ascii_graphic()) {
        p.push(
            field,
            format!("`{n}` is not a claim name (1 to 64 visible ASCII characters)"),
        );
    } else if RESERVED_CLAIMS.contains(&n.as_str()) {
        p.push(
            field,
            format!("`{n}` is a registered claim with its own meaning"),
        );
    }
    n.clone()
}

fn validate_introspection(
    p: &mut Problems<'_>,
    base: &Path,
    name: &str,
    f: &FileIntrospection,
    discovery: Option<&DiscoveryConfig>,
    watched: &mut Vec<PathBuf>,
) -> Option<portcullis_sources::introspect::IntrospectionConfig> {
    let field = |s: &str| format!("issuers.{name}.introspection.{s}");
    let uri = match &f.url {
        Some(url) => match https_url(url) {
            Some(u) => Some(u),
            None => {
                p.push(field("url"), format!("`{url}` is not an https:// URL"));
                return None;
            }
        },
        None if discovery.is_some() => None,
        None => {
            p.push(
                field("url"),
                "required (or set the issuer's discovery to read it from the metadata)",
            );
            return None;
        }
    };
    let roots = trust_roots(
        p,
        base,
        &field(""),
        &f.ca,
        f.trust,
        inherited(uri.is_none(), discovery),
        "the introspection endpoint",
        watched,
    )?;
    let identity = client_identity(
        p,
        base,
        &field(""),
        &f.client_certificate,
        &f.client_private_key,
        watched,
    )
    .ok()?;
    let secret = secret_file(
        p,
        base,
        &field("client_secret_file"),
        &f.client_secret_file,
        watched,
    )
    .ok()?;
    // A secret means client_secret_basic (the certificate, if any, is then only for the TLS
    // connection); a certificate alone means tls_client_auth, where RFC 8705 §2 has the client
    // send its client_id so the server can find the certificate it registered.
    let auth = match (f.client_id.clone(), secret, identity.is_some()) {
        (Some(client_id), Some(secret), _) => ClientAuth::Basic { client_id, secret },
        (Some(client_id), None, true) => ClientAuth::TlsClientAuth { client_id },
        (None, Some(_), _) => {
            p.push(
                field("client_id"),
                "client_secret_file needs the client_id it belongs to",
            );
            return None;
        }
        (None, None, true) => {
            p.push(
                field("client_id"),
                "mTLS client authentication (RFC 8705 §2) sends the client_id: set it beside client_certificate",
            );
            return None;
        }
        (_, None, false) => {
            p.push(field("client_id"), "the proxy must authenticate to the endpoint (client_id + client_secret_file, or client_id + client_certificate + client_private_key)");
            return None;
        }
    };
    let tls = crate::tls::upstream_client_config(roots, identity)
        .map_err(|e| p.push(field("client_certificate"), e))
        .ok()?;
    Some(portcullis_sources::introspect::IntrospectionConfig {
        uri,
        tls,
        auth,
        timeout: f.timeout.map_or(Duration::from_secs(2), |d| d.0),
        cache_ttl: secs(f.cache_ttl, 60),
        jwts: f.jwts.unwrap_or(false),
    })
}

fn validate_jwks(
    p: &mut Problems<'_>,
    base: &Path,
    name: &str,
    jwks: &FileJwks,
    discovery: Option<&DiscoveryConfig>,
    watched: &mut Vec<PathBuf>,
) -> Option<JwksSource> {
    let field = |s: &str| format!("issuers.{name}.{s}");
    match (&jwks.file, &jwks.url) {
        (Some(file), None) => {
            let path = resolve(base, file);
            watched.push(path.clone());
            match std::fs::read(&path) {
                Ok(bytes) => match KeySet::from_json(&bytes) {
                    Ok(keys) => {
                        for (kid, why) in &keys.skipped {
                            tracing::warn!(issuer = name, kid = ?kid, why = why.as_str(), "JWKS key skipped");
                        }
                        for (kid, alg) in keys.ambiguous() {
                            tracing::warn!(issuer = name, kid = ?kid, alg = alg.name(), "JWKS kid names two keys of one algorithm; its tokens are refused");
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
        (None, url) => {
            let uri = match url {
                Some(url) => match https_url(url) {
                    Some(u) => Some(u),
                    None => {
                        p.push(field("jwks.url"), format!("`{url}` is not an https:// URL"));
                        return None;
                    }
                },
                None if discovery.is_some() => None,
                None => {
                    p.push(
                        field("jwks"),
                        "set exactly one of file or url (or set the issuer's discovery to read the url from the metadata)",
                    );
                    return None;
                }
            };
            let roots = trust_roots(
                p,
                base,
                &field("jwks."),
                &jwks.ca,
                jwks.trust,
                inherited(uri.is_none(), discovery),
                "a JWKS URL",
                watched,
            )?;
            crate::tls::upstream_client_config(roots, None)
                .map_err(|e| p.push(field("jwks"), e))
                .ok()
                .map(|tls| {
                    JwksSource::Url(Remote {
                        uri,
                        tls,
                        refresh: jwks
                            .refresh_interval
                            .map_or(Duration::from_secs(300), |d| d.0),
                        min_refetch: jwks
                            .min_refetch_interval
                            .map_or(Duration::from_secs(30), |d| d.0),
                        timeout: jwks.fetch_timeout.map_or(Duration::from_secs(5), |d| d.0),
                    })
                })
        }
        (Some(_), Some(_)) => {
            p.push(field("jwks"), "set exactly one of file or url");
            None
        }
    }
}

/// An `https://` URL with a host.
fn https_url(s: &str) -> Option<http::Uri> {
    s.parse::<http::Uri>()
        .ok()
        .filter(|u| u.scheme() == Some(&http::uri::Scheme::HTTPS) && u.host().is_some())
}

/// The roots of an endpoint the metadata names, when its own section lists no trust: the
/// metadata document's (the same authorization server).
fn inherited(
    from_metadata: bool,
    discovery: Option<&DiscoveryConfig>,
) -> Option<&rustls::RootCertStore> {
    discovery.filter(|_| from_metadata).map(|d| &d.roots)
}

fn validate_discovery(
    p: &mut Problems<'_>,
    base: &Path,
    name: &str,
    issuer: &str,
    f: &FileDiscovery,
    watched: &mut Vec<PathBuf>,
) -> Option<DiscoveryConfig> {
    let field = |s: &str| format!("issuers.{name}.discovery.{s}");
    let url = f.url.clone().unwrap_or_else(|| {
        format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        )
    });
    let Some(uri) = https_url(&url) else {
        p.push(field("url"), format!("`{url}` is not an https:// URL"));
        return None;
    };
    let roots = trust_roots(
        p,
        base,
        &field(""),
        &f.ca,
        f.trust,
        None,
        "the metadata document",
        watched,
    )?;
    let tls = crate::tls::upstream_client_config(roots.clone(), None)
        .map_err(|e| p.push(field("ca"), e))
        .ok()?;
    Some(DiscoveryConfig {
        uri,
        issuer: issuer.to_string(),
        roots,
        tls,
        refresh: f
            .refresh_interval
            .map_or(Duration::from_secs(3600), |d| d.0),
        timeout: f.fetch_timeout.map_or(Duration::from_secs(5), |d| d.0),
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
    let public_base_url = dpop.public_base_url.as_ref().and_then(|u| {
        match portcullis_crypto::jose::dpop::normalize_htu(u) {
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
        }
    });
    let dpop_algs = algorithms(p, "dpop.algorithms", &dpop.algorithms, false);
    let dpop = DpopSettings {
        challenge_algs: dpop_algs
            .iter()
            .map(|a| a.name())
            .collect::<Vec<_>>()
            .join(" "),
        algorithms: dpop_algs,
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
                    p.push(
                        "dpop.nonce_secret_file",
                        "the secret must be at least 32 bytes",
                    );
                    None
                }
                Err(e) => {
                    p.push(
                        "dpop.nonce_secret_file",
                        format!("cannot read {}: {e}", path.display()),
                    );
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

/// RS256 is for APIs outside FAPI: an issuer that allows it may only be used by `bearer`
/// routes (FAPI 1 Part 2 §8.6 allows PS256 and ES256, the FAPI 2.0 Security Profile also
/// EdDSA, which `fapi1-advanced` routes refuse per token), so a FAPI route can never accept an
/// RS256 token.
pub(crate) fn check_routes(
    auth: &Auth,
    policies: &portcullis_policy::PolicySet,
    errors: &mut Vec<super::ConfigError>,
) {
    for route in policies.routes() {
        let Some(a) = &route.auth else {
            continue;
        };
        let Some(issuer) = auth.issuers.get(&a.issuer) else {
            continue;
        };
        if a.profile != portcullis_policy::Profile::Bearer
            && issuer.algorithms.contains(&Alg::RS256)
        {
            Problems::new(&route.file, errors).push(
                format!("route {}: auth", route.id),
                format!(
                    "profile {} needs FAPI algorithms, but issuer `{}` allows RS256 (keep RS256 on an issuer used by bearer routes only)",
                    a.profile.as_str(),
                    issuer.name
                ),
            );
        }
    }
}

/// The proxy's client certificate and key for an outbound call, as
/// `<prefix>client_certificate` and `<prefix>client_private_key`: both or neither. `Err` once a
/// problem is pushed.
fn client_identity(
    p: &mut Problems<'_>,
    base: &Path,
    prefix: &str,
    cert: &Option<String>,
    key: &Option<String>,
    watched: &mut Vec<PathBuf>,
) -> Result<Option<Identity>, ()> {
    match (cert, key) {
        (Some(c), Some(k)) => {
            let (cp, kp) = (resolve(base, c), resolve(base, k));
            watched.push(cp.clone());
            watched.push(kp.clone());
            let chain = read_certs(p, &format!("{prefix}client_certificate"), &cp);
            let key = super::read_key(p, &format!("{prefix}client_private_key"), &kp).ok_or(())?;
            Ok(Some((chain, key)))
        }
        (None, None) => Ok(None),
        _ => {
            p.push(
                format!("{prefix}client_certificate"),
                "client_certificate and client_private_key go together",
            );
            Err(())
        }
    }
}

/// The content of a client secret file named at `field`, trimmed; an empty or unreadable file
/// is a problem (`Err` once it is pushed).
fn secret_file(
    p: &mut Problems<'_>,
    base: &Path,
    field: &str,
    file: &Option<String>,
    watched: &mut Vec<PathBuf>,
) -> Result<Option<String>, ()> {
    let Some(file) = file else {
        return Ok(None);
    };
    let path = resolve(base, file);
    watched.push(path.clone());
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => Ok(Some(s.trim().to_string())),
        Ok(_) => {
            p.push(field, "the secret file is empty");
            Err(())
        }
        Err(e) => {
            p.push(field, format!("cannot read {}: {e}", path.display()));
            Err(())
        }
    }
}
