//! The scenario file of `portcullis loadgen --scenario`: what to send, as whom, how hard, and
//! what counts as a pass.
//!
//! `scenario.yaml -> FileScenario (serde, unknown fields refused) -> Scenario (validated)`.
//! [`Scenario::load`] reads the file and everything it names (CA, client certificates and keys,
//! the authorization-server key, DPoP keys, JWS keys, body files) and returns a scenario whose
//! every part is usable — or every problem found, each naming the file, the field path and the
//! reason. Relative paths are resolved against the scenario file's directory; path and address
//! fields may use `${VAR}` or `${VAR:-default}` from the environment, so one file serves a
//! laptop and CI.
//!
//! ```yaml
//! name: accounts-read
//! target:
//!   address: "${PORTCULLIS_TARGET:-127.0.0.1:8443}"
//!   server_name: localhost        # TLS server name; also the Host header (`host:` to change)
//!   ca: ${PORTCULLIS_CERTS:-certs}/ca.pem
//!   # public_base_url: https://api.bank.example   # the proxy's dpop.public_base_url, if set
//!   # timeout: 10s                 # per request; open loop: from its intended send time
//!   # plaintext: true               # plain HTTP, no TLS (an upstream measured directly):
//!   #                               # no `ca`, no client `cert`/`key`, no cert-bound tokens
//! clients:
//!   - name: tpp-one
//!     cert: ${PORTCULLIS_CERTS:-certs}/tpp1.pem
//!     key: ${PORTCULLIS_CERTS:-certs}/tpp1.key
//!     token:
//!       signing_key: ${PORTCULLIS_CERTS:-certs}/as.key   # kid: as-1 by default
//!       issuer: https://as.bank.example
//!       audience: https://api.bank.example
//!       scopes: [accounts]
//!       claims: {openbanking_intent_id: aac-demo}
//!       binding: cert                 # cert (cnf.x5t#S256) | dpop (cnf.jkt) | none
//!       # refresh: on_expiry          # early (default: at 3/4 of the lifetime) | on_expiry:
//!       #                             # when refused token.expired, then the request again
//!       # dpop_key: certs/dpop.key    # binding dpop: this key, or a fresh one per run
//! routes:
//!   - name: accounts
//!     method: GET
//!     path: /open-banking/v3.1/aisp/accounts   # `{n}` in a path: the route's request number
//!                                     # (0, 1, 2, ...): `/accounts/acc-{n}` names N accounts
//!     headers: {x-fapi-interaction-id: "{uuid}"}   # `{uuid}`: a fresh UUID per request
//!     # body: {file: payment.json}  or  {inline: '{"Data": ...}'}
//!     # jws: {format: obie, key: signing.key, kid: k1, iss: org/ssa, profile: obie-3.1.4}
//!     weight: 3
//!     # clients: [tpp-one]            # who sends this route (default: every client)
//!     expect: [200]                   # default: any 2xx
//!     # dpop_proof: fresh             # fresh (default) | none | replay: refusal checks
//! load:
//!   protocol: http1                   # http1 | http2
//!   mode: closed                      # closed: `connections` back to back
//!   connections: 8                    # open: `rate` per second, at most `max_outstanding`
//!   duration: 10s                     # or `requests: 10000`
//!   warmup: 2s
//! thresholds: {min_rps: 100, max_p99_ms: 50, max_error_rate: 0.001}
//! ```

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Map, Value};

use portcullis_crypto::jose::detached::Profile;
use portcullis_crypto::jose::keypair::KeyPair;
use portcullis_crypto::jose::Alg;
use portcullis_proxy::config::{ConfigDuration, ConfigError, ConfigErrors};

// --- the file ---------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileScenario {
    name: Option<String>,
    target: FileTarget,
    clients: Vec<FileClient>,
    routes: Vec<FileRoute>,
    #[serde(default)]
    load: FileLoad,
    #[serde(default)]
    thresholds: FileThresholds,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTarget {
    address: String,
    server_name: Option<String>,
    host: Option<String>,
    /// Required with TLS; not used with `plaintext`.
    ca: Option<String>,
    /// Plain HTTP, no TLS: for measuring an upstream (the mock bank) directly.
    #[serde(default)]
    plaintext: bool,
    public_base_url: Option<String>,
    timeout: Option<ConfigDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileClient {
    name: String,
    /// Required with TLS; not used with `target.plaintext`.
    cert: Option<String>,
    key: Option<String>,
    weight: Option<u32>,
    token: Option<FileToken>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum FileBinding {
    Cert,
    Dpop,
    None,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum FileRefresh {
    #[default]
    Early,
    OnExpiry,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileToken {
    signing_key: String,
    kid: Option<String>,
    issuer: String,
    audience: String,
    client_id: Option<String>,
    subject: Option<String>,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    claims: BTreeMap<String, Value>,
    lifetime: Option<ConfigDuration>,
    /// `early` (default): a new token after three quarters of the lifetime; `on_expiry`: only
    /// once the proxy refuses the current one as expired (`token.expired`), then the refused
    /// request is sent again with the new one — how many real clients behave.
    #[serde(default)]
    refresh: FileRefresh,
    binding: FileBinding,
    dpop_key: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRoute {
    name: String,
    method: Option<String>,
    path: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    body: Option<FileBody>,
    jws: Option<FileJws>,
    weight: Option<u32>,
    clients: Option<Vec<String>>,
    expect: Option<Vec<u16>>,
    #[serde(default)]
    dpop_proof: FileProof,
}

/// The DPoP proof a route's requests carry (for DPoP-bound clients).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum FileProof {
    #[default]
    Fresh,
    None,
    Replay,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileBody {
    file: Option<String>,
    inline: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileJws {
    format: String,
    profile: Option<String>,
    key: String,
    kid: String,
    iss: String,
    tan: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum FileProtocol {
    #[default]
    Http1,
    Http2,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum FileMode {
    #[default]
    Closed,
    Open,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLoad {
    #[serde(default)]
    protocol: FileProtocol,
    #[serde(default)]
    mode: FileMode,
    connections: Option<usize>,
    rate: Option<f64>,
    max_outstanding: Option<usize>,
    duration: Option<ConfigDuration>,
    requests: Option<u64>,
    warmup: Option<ConfigDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileThresholds {
    min_rps: Option<f64>,
    max_p99_ms: Option<f64>,
    max_error_rate: Option<f64>,
}

// --- the validated scenario -------------------------------------------------------------------

/// A validated scenario: every key parsed, every file read.
#[derive(Debug)]
pub struct Scenario {
    pub name: String,
    pub file: PathBuf,
    pub target: Target,
    pub clients: Vec<Client>,
    pub routes: Vec<Route>,
    /// Every (route, client) pair that is sent, with its weight.
    pub mix: Vec<Pair>,
    pub load: Load,
    pub thresholds: Thresholds,
}

#[derive(Debug)]
pub struct Target {
    pub address: SocketAddr,
    pub server_name: String,
    /// The Host header (HTTP/1.1) and `:authority` (HTTP/2).
    pub host: String,
    /// `None` with `plaintext`.
    pub ca: Option<PathBuf>,
    /// Plain HTTP over TCP, no TLS (`target.plaintext: true`).
    pub plaintext: bool,
    /// `https://host[:port]` the proxy sees itself as (`http://` with `plaintext`): the DPoP
    /// `htu` is this plus the path.
    pub base_url: String,
    pub timeout: Duration,
}

#[derive(Debug)]
pub struct Client {
    pub name: String,
    /// `None` with `target.plaintext`.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// TLS client configuration presenting this client's certificate (one per protocol);
    /// `None` with `target.plaintext` (no TLS).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// `x5t#S256` of the client certificate (`None` without one).
    pub cert_thumbprint: Option<String>,
    pub weight: u32,
    pub token: Option<TokenSpec>,
}

/// How a client's access token is minted.
#[derive(Debug)]
pub struct TokenSpec {
    pub key: Arc<KeyPair>,
    pub issuer: String,
    pub audience: String,
    pub client_id: String,
    pub subject: String,
    /// Space-separated; absent from the token when empty.
    pub scope: String,
    /// Further claims (consent ids, `authorization_details`, ...).
    pub claims: Map<String, Value>,
    pub lifetime: Duration,
    /// Re-minted only when the proxy refuses the token as expired (`refresh: on_expiry`).
    pub refresh_on_expiry: bool,
    pub binding: Binding,
}

#[derive(Debug)]
pub enum Binding {
    /// Unbound (`Bearer`).
    None,
    /// `cnf.x5t#S256` of the client certificate (`Bearer`).
    Cert,
    /// `cnf.jkt` of this key; every request carries a fresh proof by it (`DPoP`).
    Dpop(Arc<KeyPair>),
}

#[derive(Debug)]
pub struct Route {
    pub name: String,
    pub method: http::Method,
    /// Path and query, as sent; with `numbered`, `{n}` in it is replaced by the route's
    /// request number.
    pub path: String,
    /// The path holds `{n}`: each request of the route gets the next number (0, 1, 2, ...),
    /// so one route names N different objects or N different paths (attack scenarios).
    pub numbered: bool,
    /// The normalized DPoP `htu`: the base URL and the path without its query.
    pub htu: String,
    pub headers: Vec<(http::HeaderName, Text)>,
    pub body: Option<Text>,
    pub jws: Option<JwsSpec>,
    /// Statuses that count as success; `None`: any 2xx.
    pub expect: Option<Vec<u16>>,
    /// The DPoP proof its requests carry, for DPoP-bound clients.
    pub dpop_proof: ProofMode,
}

/// Which DPoP proof a route's requests carry (`dpop_proof:`), for DPoP-bound clients. Anything
/// but `fresh` makes requests a correct proxy refuses: for checking that it does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProofMode {
    /// A new proof per request (the default).
    #[default]
    Fresh,
    /// No `DPoP` header (the token is still sent with the `DPoP` scheme).
    None,
    /// Every request of the route (per client) carries the proof made for its first request:
    /// the first may be accepted, every later one is a replay.
    Replay,
}

/// An OBIE detached JWS (`x-jws-signature`) over each body.
#[derive(Debug)]
pub struct JwsSpec {
    pub profile: Profile,
    pub key: Arc<KeyPair>,
    pub iss: String,
    pub tan: String,
}

/// Text with `{uuid}` holes, filled with a fresh UUID per request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Text {
    /// Literal pieces; a UUID goes between each two.
    pieces: Vec<Bytes>,
}

const UUID_HOLE: &[u8] = b"{uuid}";

/// In a route's path: the route's request number (0, 1, 2, ...).
pub const SEQ_HOLE: &str = "{n}";

impl Text {
    pub fn parse(bytes: &[u8]) -> Text {
        let mut pieces = Vec::new();
        let mut rest = bytes;
        while let Some(i) = rest.windows(UUID_HOLE.len()).position(|w| w == UUID_HOLE) {
            pieces.push(Bytes::copy_from_slice(&rest[..i]));
            rest = &rest[i + UUID_HOLE.len()..];
        }
        pieces.push(Bytes::copy_from_slice(rest));
        Text { pieces }
    }

    /// Text without holes (the flag mode's headers).
    pub fn literal(bytes: &[u8]) -> Text {
        Text {
            pieces: vec![Bytes::copy_from_slice(bytes)],
        }
    }

    /// The bytes for one request (no copy when there is no hole).
    pub fn render(&self) -> Bytes {
        if let [only] = self.pieces.as_slice() {
            return only.clone();
        }
        let mut out = Vec::with_capacity(self.pieces.iter().map(Bytes::len).sum::<usize>() + 64);
        for (i, p) in self.pieces.iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(
                    uuid::Uuid::new_v4()
                        .hyphenated()
                        .encode_lower(&mut uuid::Uuid::encode_buffer())
                        .as_bytes(),
                );
            }
            out.extend_from_slice(p);
        }
        Bytes::from(out)
    }

    fn pieces(&self) -> &[Bytes] {
        &self.pieces
    }
}

/// One (route, client) pair of the mix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pair {
    pub route: usize,
    pub client: usize,
    pub weight: u64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    /// `connections` connections, each sending its next request when the last one is answered.
    Closed,
    /// `rate` requests per second whatever the answers; at most `max_outstanding` sent or
    /// waiting at once (the rest are counted as errors, `not_sent`).
    Open { rate: f64, max_outstanding: usize },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    After(Duration),
    Requests(u64),
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Load {
    pub http2: bool,
    pub mode: Mode,
    pub connections: usize,
    pub stop: Stop,
    pub warmup: Duration,
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Thresholds {
    pub min_rps: Option<f64>,
    pub max_p99_ms: Option<f64>,
    pub max_error_rate: Option<f64>,
}

/// Claims the token settings already set; `claims:` may not override them.
const RESERVED_CLAIMS: [&str; 10] = [
    "iss",
    "aud",
    "sub",
    "client_id",
    "scope",
    "iat",
    "nbf",
    "exp",
    "jti",
    "cnf",
];

/// Headers the generator sets itself.
const RESERVED_HEADERS: [&str; 8] = [
    "host",
    "authorization",
    "dpop",
    "x-jws-signature",
    "content-length",
    "transfer-encoding",
    "connection",
    "te",
];

const MAX_WEIGHT: u32 = 1000;

// --- loading ----------------------------------------------------------------------------------

/// Collects the problems of one scenario file.
struct Problems<'a> {
    file: &'a Path,
    errors: Vec<ConfigError>,
}

impl Problems<'_> {
    fn push(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            field: field.into(),
            reason: reason.into(),
        });
    }

    /// `Some(v)` for `Ok(v)`; records the error under `field` otherwise.
    fn ok<T>(&mut self, field: &str, r: Result<T, String>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.push(field, e);
                None
            }
        }
    }
}

/// Expands `${VAR}` and `${VAR:-default}` from `vars`; an unset variable without a default is
/// an error.
pub fn expand(text: &str, vars: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("`{text}`: `${{` without a closing `}}`"))?;
        let inner = &after[..end];
        let (name, default) = match inner.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (inner, None),
        };
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!("`${{{inner}}}` is not a variable name"));
        }
        match (vars(name).filter(|v| !v.is_empty()), default) {
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => {
                return Err(format!(
                "environment variable {name} is not set (write ${{{name}:-default}} for a default)"
            ))
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

struct Loader<'a> {
    base: PathBuf,
    vars: &'a dyn Fn(&str) -> Option<String>,
}

impl Loader<'_> {
    fn path(&self, text: &str) -> Result<PathBuf, String> {
        let expanded = expand(text, self.vars)?;
        if expanded.is_empty() {
            return Err("must not be empty".into());
        }
        Ok(portcullis_base::problems::resolve(&self.base, &expanded))
    }

    fn read(&self, text: &str) -> Result<(PathBuf, Vec<u8>), String> {
        let p = self.path(text)?;
        let bytes = std::fs::read(&p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
        Ok((p, bytes))
    }

    fn key(&self, text: &str, kid: &str) -> Result<Arc<KeyPair>, String> {
        let (p, pem) = self.read(text)?;
        KeyPair::from_pem(&pem, kid)
            .map(Arc::new)
            .map_err(|e| format!("{}: {e}", p.display()))
    }
}

fn weight(p: &mut Problems<'_>, field: &str, w: Option<u32>) -> u32 {
    match w {
        None => 1,
        Some(w) if (1..=MAX_WEIGHT).contains(&w) => w,
        Some(_) => {
            p.push(field, format!("must be between 1 and {MAX_WEIGHT}"));
            1
        }
    }
}

fn non_empty(p: &mut Problems<'_>, field: &str, v: &str) {
    if v.trim().is_empty() {
        p.push(field, "must not be empty");
    }
}

impl Scenario {
    /// Reads and validates `path`, expanding `${VAR}` from the process environment.
    pub fn load(path: &Path) -> Result<Scenario, ConfigErrors> {
        Scenario::load_with(path, &|k| std::env::var(k).ok())
    }

    /// Reads and validates `path`, expanding `${VAR}` with `vars`.
    pub fn load_with(
        path: &Path,
        vars: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Scenario, ConfigErrors> {
        let one = |reason: String| {
            ConfigErrors(vec![ConfigError {
                file: path.to_path_buf(),
                field: String::new(),
                reason,
            }])
        };
        let text =
            std::fs::read_to_string(path).map_err(|e| one(format!("cannot read the file: {e}")))?;
        let parsed: FileScenario =
            serde_saphyr::from_str(&text).map_err(|e| one(format!("invalid YAML: {e}")))?;
        let mut p = Problems {
            file: path,
            errors: Vec::new(),
        };
        let loader = Loader {
            base: path.parent().unwrap_or(Path::new(".")).to_path_buf(),
            vars,
        };
        let name = parsed.name.clone().unwrap_or_else(|| {
            path.file_stem()
                .map_or("scenario".into(), |s| s.to_string_lossy().into_owned())
        });
        let load = validate_load(&mut p, &parsed.load);
        let target = validate_target(&mut p, &loader, &parsed.target);
        let http2 = load.as_ref().is_some_and(|l| l.http2);
        let clients = validate_clients(
            &mut p,
            &loader,
            &parsed.clients,
            target.as_ref(),
            parsed.target.plaintext,
            http2,
        );
        let routes = validate_routes(&mut p, &loader, &parsed.routes, target.as_ref());
        let mix = validate_mix(&mut p, &parsed, &clients);
        let thresholds = validate_thresholds(&mut p, &parsed.thresholds);
        match (target, load) {
            (Some(target), Some(load)) if p.errors.is_empty() => Ok(Scenario {
                name,
                file: path.to_path_buf(),
                target,
                clients,
                routes,
                mix,
                load,
                thresholds,
            }),
            _ => Err(ConfigErrors(p.errors)),
        }
    }
}

fn validate_target(p: &mut Problems<'_>, l: &Loader<'_>, t: &FileTarget) -> Option<Target> {
    let address = p
        .ok("target.address", expand(&t.address, l.vars))
        .and_then(|a| {
            let r = a
                .parse::<SocketAddr>()
                .map_err(|_| format!("`{a}` is not an IP:port address, e.g. 127.0.0.1:8443"));
            p.ok("target.address", r)
        });
    let server_name = t.server_name.clone().unwrap_or_else(|| "localhost".into());
    if rustls_pki_types::ServerName::try_from(server_name.as_str()).is_err() {
        p.push("target.server_name", "not a DNS name or IP address");
    }
    let host = t.host.clone().unwrap_or_else(|| server_name.clone());
    if host.is_empty() || http::uri::Authority::try_from(host.as_str()).is_err() {
        p.push("target.host", format!("`{host}` is not a host[:port]"));
    }
    let ca = match (&t.ca, t.plaintext) {
        (Some(_), true) => {
            p.push(
                "target.ca",
                "not used with plaintext: true (there is no TLS)",
            );
            None
        }
        (None, true) => None,
        (None, false) => {
            p.push("target.ca", "required (unless plaintext: true)");
            None
        }
        (Some(text), false) => p.ok("target.ca", l.read(text)).map(|(ca, pem)| {
            let certs = rustls_pki_types::CertificateDer::pem_slice_iter(&pem)
                .filter_map(Result::ok)
                .count();
            if certs == 0 {
                p.push(
                    "target.ca",
                    format!("{}: no PEM certificate found", ca.display()),
                );
            }
            ca
        }),
    };
    let scheme = if t.plaintext { "http" } else { "https" };
    let base = t
        .public_base_url
        .clone()
        .unwrap_or_else(|| format!("{scheme}://{host}"));
    let base_url = match portcullis_crypto::jose::dpop::normalize_htu(&base) {
        Some(b) => Some(b.trim_end_matches('/').to_string()),
        None => {
            p.push(
                "target.public_base_url",
                format!("`{base}` is not an absolute http(s) URL without query"),
            );
            None
        }
    };
    let timeout = t.timeout.map_or(Duration::from_secs(10), |d| d.0);
    if timeout.is_zero() {
        p.push("target.timeout", "must be more than 0");
    }
    if !t.plaintext && ca.is_none() {
        return None;
    }
    Some(Target {
        address: address?,
        server_name,
        host,
        ca,
        plaintext: t.plaintext,
        base_url: base_url?,
        timeout,
    })
}

use rustls_pki_types::pem::PemObject as _;

fn validate_clients(
    p: &mut Problems<'_>,
    l: &Loader<'_>,
    clients: &[FileClient],
    target: Option<&Target>,
    plaintext: bool,
    http2: bool,
) -> Vec<Client> {
    if clients.is_empty() {
        p.push("clients", "at least one client is required");
    }
    let mut names = HashSet::new();
    let mut out = Vec::new();
    for (i, c) in clients.iter().enumerate() {
        let f = |s: &str| format!("clients[{i}].{s}");
        non_empty(p, &f("name"), &c.name);
        if !names.insert(c.name.as_str()) {
            p.push(f("name"), format!("`{}` is used by another client", c.name));
        }
        let weight = weight(p, &f("weight"), c.weight);
        let token = c
            .token
            .as_ref()
            .and_then(|t| validate_token(p, l, &format!("clients[{i}].token"), t, &c.name));
        if c.token.is_some() && token.is_none() {
            continue;
        }
        if plaintext {
            // No TLS: no certificate to present, none to bind a token to.
            for (name, given) in [("cert", c.cert.is_some()), ("key", c.key.is_some())] {
                if given {
                    p.push(f(name), "not used with target.plaintext (there is no TLS)");
                }
            }
            if token
                .as_ref()
                .is_some_and(|t| matches!(t.binding, Binding::Cert))
            {
                p.push(
                    format!("clients[{i}].token.binding"),
                    "cert needs a client certificate: not with target.plaintext",
                );
            }
            out.push(Client {
                name: c.name.clone(),
                cert: None,
                key: None,
                tls: None,
                cert_thumbprint: None,
                weight,
                token,
            });
            continue;
        }
        let (Some(cert), Some(key)) = (&c.cert, &c.key) else {
            for (name, given) in [("cert", c.cert.is_some()), ("key", c.key.is_some())] {
                if !given {
                    p.push(f(name), "required (unless target.plaintext: true)");
                }
            }
            continue;
        };
        let cert = p.ok(&f("cert"), l.path(cert));
        let key = p.ok(&f("key"), l.path(key));
        let thumbprint = cert.as_ref().and_then(|cert| {
            let r = rustls_pki_types::CertificateDer::from_pem_file(cert)
                .map(|d| portcullis_crypto::pki::thumbprint_s256(d.as_ref()))
                .map_err(|e| format!("{}: {e}", cert.display()));
            p.ok(&f("cert"), r)
        });
        let tls = match (target.and_then(|t| t.ca.as_ref()), &cert, &key, &thumbprint) {
            (Some(ca), Some(cert), Some(key), Some(_)) => {
                let r = portcullis_tools::client::tls_config(ca, Some((cert, key)), http2)
                    .map_err(|e| format!("cannot use this certificate and key: {e}"));
                p.ok(&f("key"), r)
            }
            _ => None,
        };
        if let (Some(cert), Some(key), Some(tls), Some(cert_thumbprint)) =
            (cert, key, tls, thumbprint)
        {
            out.push(Client {
                name: c.name.clone(),
                cert: Some(cert),
                key: Some(key),
                tls: Some(tls),
                cert_thumbprint: Some(cert_thumbprint),
                weight,
                token,
            });
        }
    }
    out
}

fn validate_token(
    p: &mut Problems<'_>,
    l: &Loader<'_>,
    field: &str,
    t: &FileToken,
    client: &str,
) -> Option<TokenSpec> {
    let f = |s: &str| format!("{field}.{s}");
    let before = p.errors.len();
    let kid = t.kid.clone().unwrap_or_else(|| "as-1".into());
    non_empty(p, &f("kid"), &kid);
    let key = p.ok(&f("signing_key"), l.key(&t.signing_key, &kid));
    non_empty(p, &f("issuer"), &t.issuer);
    non_empty(p, &f("audience"), &t.audience);
    for (j, s) in t.scopes.iter().enumerate() {
        if s.is_empty() || s.contains(' ') {
            p.push(
                format!("{field}.scopes[{j}]"),
                "a scope is one non-empty word",
            );
        }
    }
    for name in t.claims.keys() {
        if RESERVED_CLAIMS.contains(&name.as_str()) {
            p.push(
                format!("{field}.claims.{name}"),
                "set by the token settings (issuer, audience, subject, client_id, scopes, lifetime, binding)",
            );
        }
    }
    let lifetime = t.lifetime.map_or(Duration::from_secs(3600), |d| d.0);
    if lifetime < Duration::from_secs(10) {
        p.push(f("lifetime"), "must be at least 10s");
    }
    let binding = match (t.binding, &t.dpop_key) {
        (FileBinding::Dpop, Some(k)) => p.ok(&f("dpop_key"), l.key(k, "dpop")).map(Binding::Dpop),
        (FileBinding::Dpop, None) => {
            let r = KeyPair::generate(Alg::ES256, "dpop").map_err(|e| e.to_string());
            p.ok(&f("dpop_key"), r).map(|k| Binding::Dpop(Arc::new(k)))
        }
        (_, Some(_)) => {
            p.push(f("dpop_key"), "only with binding: dpop");
            None
        }
        (FileBinding::Cert, None) => Some(Binding::Cert),
        (FileBinding::None, None) => Some(Binding::None),
    };
    if p.errors.len() > before {
        return None;
    }
    Some(TokenSpec {
        key: key?,
        issuer: t.issuer.clone(),
        audience: t.audience.clone(),
        client_id: t.client_id.clone().unwrap_or_else(|| client.to_string()),
        subject: t.subject.clone().unwrap_or_else(|| "psu-loadgen".into()),
        scope: t.scopes.join(" "),
        claims: t.claims.clone().into_iter().collect(),
        lifetime,
        refresh_on_expiry: t.refresh == FileRefresh::OnExpiry,
        binding: binding?,
    })
}

fn validate_routes(
    p: &mut Problems<'_>,
    l: &Loader<'_>,
    routes: &[FileRoute],
    target: Option<&Target>,
) -> Vec<Route> {
    if routes.is_empty() {
        p.push("routes", "at least one route is required");
    }
    let mut names = HashSet::new();
    let mut out = Vec::new();
    for (i, r) in routes.iter().enumerate() {
        let f = |s: &str| format!("routes[{i}].{s}");
        let before = p.errors.len();
        non_empty(p, &f("name"), &r.name);
        if !names.insert(r.name.as_str()) {
            p.push(f("name"), format!("`{}` is used by another route", r.name));
        }
        let method_text = r.method.clone().unwrap_or_else(|| "GET".into());
        let method = match http::Method::from_bytes(method_text.as_bytes()) {
            Ok(m) if method_text.bytes().all(|b| b.is_ascii_uppercase()) => Some(m),
            _ => {
                p.push(
                    f("method"),
                    format!("`{method_text}` is not an upper-case HTTP method"),
                );
                None
            }
        };
        // `{n}` (the route's request number) is checked as its first value, 0.
        let numbered = r.path.contains(SEQ_HOLE);
        let first = r.path.replace(SEQ_HOLE, "0");
        let pq = match http::uri::PathAndQuery::try_from(first.as_str()) {
            Ok(pq) if first.starts_with('/') => Some(pq),
            _ => {
                p.push(
                    f("path"),
                    "must be an absolute path (`/...`), optionally with a query",
                );
                None
            }
        };
        let htu = match (target, &pq) {
            (Some(t), Some(pq)) => {
                let h = portcullis_crypto::jose::dpop::normalize_htu(&format!(
                    "{}{}",
                    t.base_url,
                    pq.path()
                ));
                if h.is_none() {
                    p.push(
                        f("path"),
                        "does not make a valid DPoP htu with the base URL",
                    );
                }
                h
            }
            _ => None,
        };
        let mut headers = Vec::new();
        for (name, value) in &r.headers {
            let hf = format!("routes[{i}].headers.{name}");
            let Ok(n) = http::HeaderName::from_bytes(name.as_bytes()) else {
                p.push(hf, "not a valid header name");
                continue;
            };
            if RESERVED_HEADERS.contains(&n.as_str()) {
                p.push(hf, "set by the load generator");
                continue;
            }
            let text = Text::parse(value.as_bytes());
            let valid = text
                .pieces()
                .iter()
                .all(|piece| http::HeaderValue::from_maybe_shared(piece.clone()).is_ok());
            if !valid {
                p.push(hf, "not a valid header value");
                continue;
            }
            headers.push((n, text));
        }
        let body = r.body.as_ref().and_then(|b| match (&b.file, &b.inline) {
            (Some(file), None) => p
                .ok(&f("body.file"), l.read(file))
                .map(|(_, bytes)| Text::parse(&bytes)),
            (None, Some(text)) => Some(Text::parse(text.as_bytes())),
            _ => {
                p.push(f("body"), "give exactly one of `file` and `inline`");
                None
            }
        });
        let jws = r.jws.as_ref().and_then(|j| {
            if j.format != "obie" {
                p.push(
                    f("jws.format"),
                    format!("`{}` is not known (obie)", j.format),
                );
            }
            let profile_name = j.profile.as_deref().unwrap_or("obie-3.1.4");
            let profile = Profile::from_name(profile_name);
            if profile.is_none() {
                p.push(f("jws.profile"), "must be obie-3.1.3 or obie-3.1.4");
            }
            non_empty(p, &f("jws.kid"), &j.kid);
            non_empty(p, &f("jws.iss"), &j.iss);
            if r.body.is_none() {
                p.push(f("jws"), "signs the body: the route needs a `body`");
            }
            let key = p.ok(&f("jws.key"), l.key(&j.key, &j.kid));
            Some(JwsSpec {
                profile: profile?,
                key: key?,
                iss: j.iss.clone(),
                tan: j.tan.clone().unwrap_or_else(|| "openbanking.org.uk".into()),
            })
        });
        if let Some(e) = &r.expect {
            if e.is_empty() || e.iter().any(|s| !(100..=599).contains(s)) {
                p.push(f("expect"), "a non-empty list of HTTP statuses (100-599)");
            }
        }
        if p.errors.len() > before {
            continue;
        }
        if let (Some(method), Some(pq), Some(htu)) = (method, pq, htu) {
            out.push(Route {
                name: r.name.clone(),
                method,
                path: if numbered {
                    r.path.clone()
                } else {
                    pq.as_str().to_string()
                },
                numbered,
                htu,
                headers,
                body,
                jws,
                expect: r.expect.clone(),
                dpop_proof: match r.dpop_proof {
                    FileProof::Fresh => ProofMode::Fresh,
                    FileProof::None => ProofMode::None,
                    FileProof::Replay => ProofMode::Replay,
                },
            });
        }
    }
    out
}

fn validate_mix(p: &mut Problems<'_>, f: &FileScenario, clients: &[Client]) -> Vec<Pair> {
    let client_index = |name: &str| clients.iter().position(|c| c.name == name);
    let mut mix = Vec::new();
    for (i, r) in f.routes.iter().enumerate() {
        let rw = u64::from(weight(p, &format!("routes[{i}].weight"), r.weight));
        let who: Vec<usize> = match &r.clients {
            None => (0..clients.len()).collect(),
            Some(names) => {
                if names.is_empty() {
                    p.push(format!("routes[{i}].clients"), "must not be empty");
                }
                let mut v = Vec::new();
                for (j, n) in names.iter().enumerate() {
                    match client_index(n) {
                        Some(c) => v.push(c),
                        None if f.clients.iter().any(|c| &c.name == n) => {}
                        None => p.push(
                            format!("routes[{i}].clients[{j}]"),
                            format!("no client is named `{n}`"),
                        ),
                    }
                }
                v
            }
        };
        if r.dpop_proof != FileProof::Fresh {
            for &c in &who {
                let dpop = clients[c]
                    .token
                    .as_ref()
                    .is_some_and(|t| matches!(t.binding, Binding::Dpop(_)));
                if !dpop {
                    p.push(
                        format!("routes[{i}].dpop_proof"),
                        format!(
                            "client `{}` sends no DPoP proofs (only for token binding: dpop)",
                            clients[c].name
                        ),
                    );
                }
            }
        }
        // The route's weight is its share; its clients split it by their own weights.
        let total: u64 = who.iter().map(|&c| u64::from(clients[c].weight)).sum();
        for &c in &who {
            mix.push(Pair {
                route: i,
                client: c,
                weight: rw * u64::from(clients[c].weight) * 1000 / total.max(1),
            });
        }
    }
    mix.retain(|m| m.weight > 0);
    mix
}

fn validate_load(p: &mut Problems<'_>, l: &FileLoad) -> Option<Load> {
    let before = p.errors.len();
    let connections = l.connections.unwrap_or(8);
    if !(1..=10_000).contains(&connections) {
        p.push("load.connections", "must be between 1 and 10000");
    }
    let mode = match l.mode {
        FileMode::Closed => {
            if l.rate.is_some() {
                p.push("load.rate", "only with mode: open");
            }
            if l.max_outstanding.is_some() {
                p.push("load.max_outstanding", "only with mode: open");
            }
            Mode::Closed
        }
        FileMode::Open => {
            let rate = match l.rate {
                Some(r) if r.is_finite() && r > 0.0 && r <= 1_000_000.0 => r,
                Some(_) => {
                    p.push(
                        "load.rate",
                        "requests per second, more than 0 and at most 1000000",
                    );
                    1.0
                }
                None => {
                    p.push("load.rate", "required with mode: open");
                    1.0
                }
            };
            let max_outstanding = l.max_outstanding.unwrap_or(1000);
            if !(1..=1_000_000).contains(&max_outstanding) {
                p.push("load.max_outstanding", "must be between 1 and 1000000");
            }
            Mode::Open {
                rate,
                max_outstanding,
            }
        }
    };
    let stop = match (l.duration, l.requests) {
        (Some(d), None) if !d.0.is_zero() => Stop::After(d.0),
        (None, Some(n)) if n > 0 => Stop::Requests(n),
        (Some(_), None) => {
            p.push("load.duration", "must be more than 0");
            Stop::Requests(1)
        }
        (None, Some(_)) => {
            p.push("load.requests", "must be at least 1");
            Stop::Requests(1)
        }
        _ => {
            p.push("load", "give exactly one of `duration` and `requests`");
            Stop::Requests(1)
        }
    };
    (p.errors.len() == before).then_some(Load {
        http2: l.protocol == FileProtocol::Http2,
        mode,
        connections,
        stop,
        warmup: l.warmup.map_or(Duration::ZERO, |d| d.0),
    })
}

fn validate_thresholds(p: &mut Problems<'_>, t: &FileThresholds) -> Thresholds {
    if t.min_rps.is_some_and(|v| !v.is_finite() || v < 0.0) {
        p.push("thresholds.min_rps", "must be a number of at least 0");
    }
    if t.max_p99_ms.is_some_and(|v| !v.is_finite() || v <= 0.0) {
        p.push(
            "thresholds.max_p99_ms",
            "must be a number of milliseconds above 0",
        );
    }
    if t.max_error_rate
        .is_some_and(|v| !v.is_finite() || !(0.0..=1.0).contains(&v))
    {
        p.push(
            "thresholds.max_error_rate",
            "a fraction between 0 and 1 (0.01 is 1%)",
        );
    }
    Thresholds {
        min_rps: t.min_rps,
        max_p99_ms: t.max_p99_ms,
        max_error_rate: t.max_error_rate,
    }
}

#[cfg(test)]
mod tests;
