//! The attack-suite runner (docs/attacks.md groups A–J): a table of cases, each a request (method,
//! path, headers, body, client certificate, HTTP version — or raw bytes on the wire, or a TLS
//! handshake) and what must happen. Every refusal is checked three ways: exact status and
//! reason code, nothing reached any recording upstream, and exactly one audit record with that
//! reason (which carries no credential of the request). The runner collects every mismatch
//! and fails once at the end with all of them, then prints the number of cases per group.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use portcullis_crypto::jose::sign::SigningKey;
use portcullis_crypto::jose::Alg;
use rustls_pki_types::pem::PemObject;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;

pub(crate) const NOW: i64 = 1_800_000_000;
pub(crate) const ISS: &str = "https://as.example";
pub(crate) const AUD: &str = "https://rs.example";
/// The external base URL clients sign (DPoP `htu`, RFC 9421 `@target-uri`).
pub(crate) const BASE: &str = "https://rs.example";

/// One request as a client sends it.
#[derive(Clone, Debug)]
pub(crate) struct Req {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// The client certificate (`tpp1`, `tpp2`, ... or `None`).
    pub identity: Option<&'static str>,
    pub h2: bool,
}

impl Req {
    pub(crate) fn new(method: &str, path: &str) -> Req {
        Req {
            method: method.to_string(),
            path: path.to_string(),
            headers: Vec::new(),
            body: Bytes::new(),
            identity: Some("tpp1"),
            h2: false,
        }
    }
    pub(crate) fn get(path: &str) -> Req {
        Req::new("GET", path)
    }
    pub(crate) fn post(path: &str, body: &[u8]) -> Req {
        let mut r = Req::new("POST", path);
        r.body = Bytes::copy_from_slice(body);
        r.header("content-type", "application/json")
    }
    pub(crate) fn header(mut self, name: &str, value: impl Into<String>) -> Req {
        self.headers.push((name.to_string(), value.into()));
        self
    }
    pub(crate) fn bearer(self, token: &str) -> Req {
        self.header("authorization", format!("Bearer {token}"))
    }
    pub(crate) fn as_(mut self, identity: Option<&'static str>) -> Req {
        self.identity = identity;
        self
    }
    pub(crate) fn h2(mut self) -> Req {
        self.h2 = true;
        self
    }
}

/// How a case reaches the proxy.
pub(crate) enum Wire {
    /// Through the hyper client (HTTP/1.1 or HTTP/2), with a fresh interaction id added unless
    /// the request names one.
    Client(Req),
    /// Raw bytes on a TLS connection as `identity`; `{id}` is replaced by a fresh interaction
    /// id. Read until the server closes (or 3 s): add `Connection: close` where it does not
    /// change the attack.
    Raw(Option<&'static str>, String),
    /// Only a TLS handshake (and one request, if it completes) as this identity.
    Handshake(Option<&'static str>),
    /// A TLS handshake by `openssl s_client` as tpp1 with these extra arguments: what rustls
    /// clients cannot offer (TLS 1.0 and 1.1, CBC or non-ECDHE suites). It must fail.
    OpenSsl(Vec<&'static str>),
    /// Raw HTTP/2 frames as tpp1 after the preface and SETTINGS (see `h2raw`), built for the
    /// interaction id; the answer on stream 1 is read from its DATA (problem+json carries the
    /// status), since the server's HPACK is not decoded.
    H2(Frames),
}

/// Builds the HTTP/2 frames of a case for an interaction id.
pub(crate) type Frames = Box<dyn Fn(&str) -> Vec<u8> + Send + Sync>;

/// What must happen.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Expect {
    /// A refusal with this status and reason code (problem+json), nothing upstream, one record.
    Refused(u16, &'static str),
    /// A refusal in the OBIE error body (400): the audit reason and the OBIE ErrorCode.
    Obie(&'static str, &'static str),
    /// Answered 2xx, forwarded exactly once, one `allow` record.
    Allowed,
    /// Answered 2xx without the upstream (an idempotent replay), one `allow` record.
    Served,
    /// This many pipelined requests answered (2xx), exactly that many forwarded.
    Forwarded(usize),
    /// hyper refused it before any handler: this status on the wire (0: only a close),
    /// nothing upstream, one `http_error` record with this failure.
    Parser(u16, &'static str),
    /// The handshake fails; one `tls_handshake` record with this failure; nothing upstream.
    Handshake(&'static str),
    /// HTTP/2 only: stream 1 is reset, or the connection ended with GOAWAY, with this error
    /// code before any handler ran: nothing upstream, and no request record (the h2 codec
    /// refuses it; hyper's service never sees it).
    H2Reset(u32),
    /// HTTP/2 only: stream 1 is reset with this code after the handler took the request (its
    /// framing failed while the body was read): nothing upstream, and exactly one request record
    /// with this reason, marked `client_gone` (the answer could not be delivered).
    H2ResetRecorded(u32, &'static str),
}

/// What came back, for a case's own extra checks.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    /// HTTP responses seen on a raw connection.
    pub responses: usize,
    pub record: Value,
    /// What the upstreams received for this case.
    pub forwarded: Vec<Seen>,
}

impl Outcome {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

pub(crate) type Check = Box<dyn Fn(&Outcome) -> Result<(), String> + Send + Sync>;

pub(crate) struct Case {
    /// docs/attacks.md id (`A01`), or the group letter and `x` for a case it does not list (`Gx03`).
    pub id: &'static str,
    pub what: String,
    pub wire: Wire,
    pub expect: Expect,
    /// Requests sent first on their own connections (e.g. to spend a quota or a proof), each
    /// answered with the given status.
    pub before: Vec<(Req, u16)>,
    /// A request started first and still in flight (it reached an upstream) while the case is
    /// sent; it must then complete with 2xx.
    pub background: Option<Req>,
    /// Seconds the lab clock moves forward after the steps before (and back after the case).
    pub advance: i64,
    /// The reason the audit record must hold when the answer shows another (a hidden object
    /// answers exactly like an unknown path).
    pub recorded_as: Option<&'static str>,
    pub check: Option<Check>,
}

impl Case {
    pub(crate) fn before(mut self, r: Req, status: u16) -> Case {
        self.before.push((r, status));
        self
    }
    pub(crate) fn background(mut self, r: Req) -> Case {
        self.background = Some(r);
        self
    }
    pub(crate) fn recorded_as(mut self, reason: &'static str) -> Case {
        self.recorded_as = Some(reason);
        self
    }
    pub(crate) fn advance(mut self, secs: i64) -> Case {
        self.advance = secs;
        self
    }
    pub(crate) fn check(
        mut self,
        f: impl Fn(&Outcome) -> Result<(), String> + Send + Sync + 'static,
    ) -> Case {
        self.check = Some(Box::new(f));
        self
    }
}

pub(crate) fn case(id: &'static str, what: impl Into<String>, r: Req, expect: Expect) -> Case {
    Case {
        id,
        what: what.into(),
        wire: Wire::Client(r),
        expect,
        before: Vec::new(),
        background: None,
        advance: 0,
        recorded_as: None,
        check: None,
    }
}

pub(crate) fn raw(id: &'static str, what: impl Into<String>, text: String, expect: Expect) -> Case {
    Case {
        id,
        what: what.into(),
        wire: Wire::Raw(Some("tpp1"), text),
        expect,
        before: Vec::new(),
        background: None,
        advance: 0,
        recorded_as: None,
        check: None,
    }
}

pub(crate) fn h2(
    id: &'static str,
    what: impl Into<String>,
    frames: impl Fn(&str) -> Vec<u8> + Send + Sync + 'static,
    expect: Expect,
) -> Case {
    Case {
        id,
        what: what.into(),
        wire: Wire::H2(Box::new(frames)),
        expect,
        before: Vec::new(),
        background: None,
        advance: 0,
        recorded_as: None,
        check: None,
    }
}

pub(crate) fn openssl(
    id: &'static str,
    what: impl Into<String>,
    args: &[&'static str],
    expect: Expect,
) -> Case {
    Case {
        id,
        what: what.into(),
        wire: Wire::OpenSsl(args.to_vec()),
        expect,
        before: Vec::new(),
        background: None,
        advance: 0,
        recorded_as: None,
        check: None,
    }
}

/// What `openssl s_client` printed, and whether its handshake completed.
#[derive(Debug)]
pub(crate) struct SClient {
    pub completed: bool,
    pub output: String,
}

/// Runs `openssl s_client` against `addr` as tpp1 (its certificate and key, the dev CA, SNI
/// `localhost`) with `args` and no input. `Err` only when openssl cannot be run: a missing
/// `openssl` fails the case, it never skips it.
pub(crate) async fn s_client(addr: std::net::SocketAddr, args: &[&str]) -> Result<SClient, String> {
    let dir = certs();
    let mut cmd = std::process::Command::new("openssl");
    cmd.arg("s_client")
        .arg("-connect")
        .arg(addr.to_string())
        .args(["-servername", "localhost"])
        .arg("-cert")
        .arg(dir.join("tpp1.pem"))
        .arg("-key")
        .arg(dir.join("tpp1.key"))
        .arg("-CAfile")
        .arg(dir.join("ca.pem"))
        .args(args)
        .stdin(std::process::Stdio::null());
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| {
            format!("cannot run `openssl s_client` ({e}): these handshakes need the openssl CLI")
        })?;
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // A completed handshake prints the negotiated suite ("Cipher is X", not "(NONE)").
    let negotiated = output
        .lines()
        .any(|l| l.contains("Cipher is ") && !l.contains("Cipher is (NONE)"));
    Ok(SClient {
        completed: out.status.success() && negotiated,
        output,
    })
}

pub(crate) fn handshake(
    id: &'static str,
    what: impl Into<String>,
    identity: Option<&'static str>,
    expect: Expect,
) -> Case {
    Case {
        id,
        what: what.into(),
        wire: Wire::Handshake(identity),
        expect,
        before: Vec::new(),
        background: None,
        advance: 0,
        recorded_as: None,
        check: None,
    }
}

/// Shorthands for the expectation of a case.
pub(crate) fn refused(status: u16, reason: &'static str) -> Expect {
    Expect::Refused(status, reason)
}

/// The SHA-256 thumbprint (`x5t#S256`) of a dev certificate.
pub(crate) fn thumb(name: &str) -> String {
    let der = rustls_pki_types::CertificateDer::from_pem_file(certs().join(format!("{name}.pem")))
        .unwrap();
    portcullis_crypto::pki::thumbprint_s256(der.as_ref())
}

/// Access-token claims for tpp-one at [`NOW`]; `null` members of `extra` remove a claim.
pub(crate) fn claims(extra: Value) -> Value {
    let mut c = json!({
        "iss": ISS, "aud": AUD, "exp": NOW + 300, "iat": NOW, "nbf": NOW - 1,
        "client_id": "tpp-one", "sub": "psu-1", "scope": "accounts payments", "jti": "tok-1",
    });
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

/// What a lab proxy is built from.
pub(crate) struct LabOptions {
    pub policy: String,
    /// The config file as a value: [`base_config`] with the lab's issuer `as` ([`ISS`],
    /// [`AUD`], 10 s clock skew) and `dpop.public_base_url` [`BASE`]. [`Lab::start`] fills in
    /// the `bank` and `slow` upstreams and the issuer's key file.
    pub config: FileConfig,
    /// What the `bank` upstream answers (the `slow` upstream always waits 1.5 s, then 200).
    pub behaviour: Behaviour,
    /// More JWKs in the issuer's key set, beside the lab key `as-1`.
    pub extra_keys: Vec<Value>,
}

impl LabOptions {
    pub(crate) fn new(policy: &str) -> LabOptions {
        let mut config = base_config(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
        config.issuers.insert(
            "as".into(),
            FileIssuer {
                issuer: ISS.into(),
                audience: AUD.into(),
                jwks: Some(FileJwks::default()),
                clock_skew: Some(dur("10s")),
                ..FileIssuer::default()
            },
        );
        config.dpop.public_base_url = Some(BASE.into());
        LabOptions {
            policy: policy.to_string(),
            config,
            behaviour: Behaviour::Ok,
            extra_keys: Vec::new(),
        }
    }

    /// The lab issuer `as`.
    pub(crate) fn issuer(&mut self) -> &mut FileIssuer {
        self.config.issuers.get_mut("as").expect("the lab issuer")
    }
}

/// A proxy under attack: the `bank` and `slow` recording upstreams, the issuer's signing key
/// (ES256, kid `as-1`, whose set the proxy reads from a file), and the clock the token, DPoP
/// and signature checks read, at [`NOW`].
/// The kit's [`Env`] (proxy, `bank` upstream, clock, directory) plus the `slow` upstream and
/// the issuer's key; it dereferences to the [`Env`].
pub(crate) struct Lab {
    pub env: Env,
    pub slow: Upstream,
    pub key: SigningKey,
}

impl std::ops::Deref for Lab {
    type Target = Env;
    fn deref(&self) -> &Env {
        &self.env
    }
}

impl Lab {
    pub(crate) async fn start(o: LabOptions) -> Lab {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::generate(Alg::ES256, "as-1").unwrap();
        let jwks = dir.path().join("as-jwks.json");
        let mut set = key.jwks();
        set["keys"].as_array_mut().unwrap().extend(o.extra_keys);
        std::fs::write(&jwks, set.to_string()).unwrap();
        let up = Upstream::start(o.behaviour).await;
        let slow = Upstream::start(Behaviour::Delay(Duration::from_millis(1500))).await;
        let mut opts = Options::new(up.addr);
        opts.policy = o.policy;
        opts.config = o.config;
        opts.config.upstreams = [
            ("bank".to_string(), upstream_at(up.addr)),
            ("slow".to_string(), upstream_at(slow.addr)),
        ]
        .into();
        if let Some(j) = opts
            .config
            .issuers
            .get_mut("as")
            .and_then(|i| i.jwks.as_mut())
        {
            j.file = Some(jwks.display().to_string());
        }
        Lab {
            env: Env::start(opts, up, dir, Some(NOW)).await,
            slow,
            key,
        }
    }

    /// An access token bound to tpp1's certificate, with `extra` claims (see [`claims`]).
    pub(crate) fn token(&self, extra: Value) -> String {
        self.token_for("tpp1", extra)
    }

    pub(crate) fn token_for(&self, identity: &str, extra: Value) -> String {
        let mut c = claims(extra);
        if c.get("cnf").is_none() {
            c["cnf"] = json!({"x5t#S256": thumb(identity)});
        }
        self.key.access_token(&c)
    }

    /// A token bound to `client`'s DPoP key.
    pub(crate) fn dpop_token(&self, client: &SigningKey, extra: Value) -> String {
        let mut c = claims(extra);
        c["cnf"] = json!({"jkt": client.thumbprint()});
        self.key.access_token(&c)
    }

    /// Every request both upstreams received so far.
    pub(crate) fn forwarded(&self) -> Vec<Seen> {
        let mut v = self.up.seen();
        v.extend(self.slow.seen());
        v
    }

    fn counts(&self) -> (usize, usize) {
        (self.up.count(), self.slow.count())
    }

    fn since(&self, (a, b): (usize, usize)) -> Vec<Seen> {
        let mut v: Vec<Seen> = self.up.seen().into_iter().skip(a).collect();
        v.extend(self.slow.seen().into_iter().skip(b));
        v
    }
}

/// A DPoP proof by `client` for `method` on [`BASE`] + `path`, bound to `token`.
pub(crate) fn proof(
    client: &SigningKey,
    method: &str,
    path: &str,
    token: &str,
    jti: &str,
) -> String {
    client.dpop_proof(
        method,
        &format!("{BASE}{path}"),
        Some(token),
        NOW,
        jti,
        None,
    )
}

/// Builds the hyper request for `r` with interaction id `id` (unless `r` names one).
fn build(r: &Req, id: &str) -> Result<http::Request<Full<Bytes>>, String> {
    let uri = if r.h2 && r.path.starts_with('/') {
        format!("https://localhost{}", r.path)
    } else {
        r.path.clone()
    };
    let method = http::Method::from_bytes(r.method.as_bytes()).map_err(|e| e.to_string())?;
    let mut b = http::Request::builder().method(method).uri(uri);
    let named = |n: &str| r.headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(n));
    if !named("host") && !r.h2 {
        b = b.header("host", "localhost");
    }
    if !named("x-fapi-interaction-id") {
        b = b.header("x-fapi-interaction-id", id);
    }
    for (k, v) in &r.headers {
        let v = http::HeaderValue::from_bytes(v.as_bytes()).map_err(|e| format!("{k}: {e}"))?;
        b = b.header(k.as_str(), v);
    }
    b.body(Full::new(r.body.clone())).map_err(|e| e.to_string())
}

/// Sends `r` on a fresh connection.
pub(crate) async fn send(
    p: &Proxy,
    r: &Req,
    id: &str,
) -> Result<portcullis_tools::client::Answer, String> {
    let mut c = p
        .client(r.identity, r.h2)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    c.send(build(r, id)?)
        .await
        .map_err(|e| format!("send: {e}"))
}

/// Writes raw bytes on a TLS connection as `identity`; reads until close or `wait`.
pub(crate) async fn send_raw(
    p: &Proxy,
    identity: Option<&str>,
    bytes: &[u8],
    wait: Duration,
) -> Result<Vec<u8>, String> {
    let mut tls = p.tls(identity, false).await?;
    // `{pause:N}` in the bytes: flush, wait N ms, go on (a header split across reads, a
    // trickled body).
    let text = String::from_utf8_lossy(bytes).to_string();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("{pause:") {
        tls.write_all(&rest.as_bytes()[..at])
            .await
            .map_err(|e| e.to_string())?;
        tls.flush().await.map_err(|e| e.to_string())?;
        let end = at + rest[at..].find('}').unwrap_or(0);
        let ms: u64 = rest[at + 7..end].parse().unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        rest = &rest[end + 1..];
    }
    if !rest.is_empty() {
        let _ = tls.write_all(rest.as_bytes()).await;
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, tls.read_to_end(&mut out)).await;
    Ok(out)
}

/// The first response in raw bytes: status, headers, body (Content-Length or chunked), and
/// how many responses the bytes hold.
pub(crate) fn parse_raw(out: &[u8]) -> (u16, http::HeaderMap, Bytes, usize) {
    let text = String::from_utf8_lossy(out);
    let responses = text.matches("HTTP/1.1 ").count() + text.matches("HTTP/1.0 ").count();
    let Some(head_end) = text.find("\r\n\r\n") else {
        return (0, http::HeaderMap::new(), Bytes::new(), responses);
    };
    let mut lines = text[..head_end].split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut headers = http::HeaderMap::new();
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            if let (Ok(k), Ok(v)) = (
                http::HeaderName::from_bytes(k.trim().as_bytes()),
                http::HeaderValue::from_str(v.trim()),
            ) {
                headers.append(k, v);
            }
        }
    }
    let rest = &out[head_end + 4..];
    let body = match headers
        .get("content-length")
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
    {
        Some(n) => Bytes::copy_from_slice(&rest[..n.min(rest.len())]),
        None if headers
            .get("transfer-encoding")
            .is_some_and(|v| v == "chunked") =>
        {
            let mut body = Vec::new();
            let mut at = 0;
            while let Some(nl) = rest[at..].windows(2).position(|w| w == b"\r\n") {
                let size =
                    usize::from_str_radix(String::from_utf8_lossy(&rest[at..at + nl]).trim(), 16)
                        .unwrap_or(0);
                if size == 0 {
                    break;
                }
                let start = at + nl + 2;
                body.extend_from_slice(&rest[start..(start + size).min(rest.len())]);
                at = start + size + 2;
                if at >= rest.len() {
                    break;
                }
            }
            Bytes::from(body)
        }
        None => Bytes::new(),
    };
    (status, headers, body, responses)
}

/// Header names whose values must never reach the audit log.
const SECRETS: &[&str] = &[
    "authorization",
    "dpop",
    "x-jws-signature",
    "signature",
    "cookie",
];

/// The credential parts of `r` (values long enough to be recognised).
fn secrets(r: &Req) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in &r.headers {
        if SECRETS.iter().any(|s| k.eq_ignore_ascii_case(s)) {
            for part in v.split([' ', ',', ';', '=']) {
                if part.len() >= 24 {
                    out.push(part.to_string());
                }
            }
        }
    }
    if let Some((_, q)) = r.path.split_once('?') {
        for pair in q.split('&') {
            if let Some(("access_token", v)) = pair.split_once('=') {
                if v.len() >= 24 {
                    out.push(v.to_string());
                }
            }
        }
    }
    out
}

fn group(id: &str) -> char {
    id.chars().next().unwrap_or('?')
}

/// The case filter: `PORTCULLIS_CASE` names one case id (`A07`) or an id prefix (`A0`, `G`);
/// unset or empty, every case runs.
pub(crate) fn case_filter() -> Option<String> {
    std::env::var("PORTCULLIS_CASE")
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// Runs every case in order (only those whose id is or starts with `PORTCULLIS_CASE` when that
/// is set); fails once at the end listing every mismatch. Returns the number of cases run per
/// group (and prints it).
pub(crate) async fn run(lab: &Lab, cases: Vec<Case>) -> BTreeMap<char, usize> {
    let filter = case_filter();
    let total = cases.len();
    let cases: Vec<Case> = match &filter {
        None => cases,
        Some(f) => cases
            .into_iter()
            .filter(|c| c.id.starts_with(f.as_str()))
            .collect(),
    };
    let mut failures = Vec::new();
    let mut counts: BTreeMap<char, usize> = BTreeMap::new();
    let mut ids: BTreeMap<char, std::collections::BTreeSet<&'static str>> = BTreeMap::new();
    for c in &cases {
        *counts.entry(group(c.id)).or_default() += 1;
        ids.entry(group(c.id)).or_default().insert(c.id);
        let r = tokio::time::timeout(Duration::from_secs(30), run_one(lab, c)).await;
        let r = r.unwrap_or_else(|_| Err("timed out after 30 s".into()));
        if let Err(e) = r {
            failures.push(format!("{} ({}): {e}", c.id, c.what));
        }
    }
    let summary: Vec<String> = counts
        .iter()
        .map(|(g, n)| format!("{g}: {n} cases ({} ids)", ids[g].len()))
        .collect();
    match &filter {
        None => eprintln!("attack cases by group: {}", summary.join(", ")),
        Some(f) => eprintln!(
            "PORTCULLIS_CASE={f}: ran {} of {total} attack cases; by group: {}",
            cases.len(),
            if summary.is_empty() {
                "none matched".to_string()
            } else {
                summary.join(", ")
            }
        ),
    }
    assert!(
        failures.is_empty(),
        "{} of {} attack cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    counts
}

async fn run_one(lab: &Lab, c: &Case) -> Result<(), String> {
    for (r, want) in &c.before {
        let id = uuid::Uuid::new_v4().to_string();
        let a = send(&lab.p, r, &id).await?;
        if a.status.as_u16() != *want {
            return Err(format!(
                "step before: {} {} got {} (want {want}): {}",
                r.method,
                r.path,
                a.status,
                String::from_utf8_lossy(&a.body)
            ));
        }
    }
    let background = match &c.background {
        None => None,
        Some(r) => {
            let before = lab.counts();
            let (r, id) = (r.clone(), uuid::Uuid::new_v4().to_string());
            let conn = lab
                .p
                .client(r.identity, r.h2)
                .await
                .map_err(|e| e.to_string())?;
            let task = tokio::spawn(async move {
                let mut conn = conn;
                conn.send(build(&r, &id)?).await.map_err(|e| e.to_string())
            });
            for _ in 0..500 {
                if lab.counts() != before {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            if lab.counts() == before {
                return Err("the background request never reached an upstream".into());
            }
            Some(task)
        }
    };
    lab.clock().advance(c.advance);
    let result = run_case(lab, c).await;
    lab.clock().advance(-c.advance);
    if let Some(task) = background {
        match task.await {
            Ok(Ok(a)) if a.status.is_success() => {}
            Ok(Ok(a)) => return Err(format!("the background request got {}", a.status)),
            Ok(Err(e)) => return Err(format!("the background request failed: {e}")),
            Err(e) => return Err(e.to_string()),
        }
    }
    result
}

async fn run_case(lab: &Lab, c: &Case) -> Result<(), String> {
    let base = lab.counts();
    let id = uuid::Uuid::new_v4().to_string();
    let http_errors = count_kind(lab, "http_error");
    let handshakes = count_kind(lab, "tls_handshake");
    let mut o = Outcome::default();
    let mut secret_values = Vec::new();
    match &c.wire {
        Wire::Client(r) => {
            secret_values = secrets(r);
            match send(&lab.p, r, &id).await {
                Ok(a) => {
                    o.status = a.status.as_u16();
                    o.headers = a.headers;
                    o.body = a.body;
                    o.responses = 1;
                }
                // A reset stream or closed connection is an outcome too (no status).
                Err(e) if matches!(c.expect, Expect::Parser(0, _)) => {
                    let _ = e;
                }
                Err(e) => return Err(e),
            }
        }
        Wire::Raw(identity, text) => {
            let bytes = text.replace("{id}", &id).into_bytes();
            let out = send_raw(&lab.p, *identity, &bytes, Duration::from_secs(3)).await?;
            let (status, headers, body, n) = parse_raw(&out);
            (o.status, o.headers, o.body, o.responses) = (status, headers, body, n);
        }
        Wire::Handshake(identity) => {
            let refused = match lab.p.client(*identity, false).await {
                Err(_) => true,
                Ok(mut conn) => conn.send(build(&Req::get("/"), &id)?).await.is_err(),
            };
            if !refused {
                return Err("the handshake succeeded".into());
            }
        }
        Wire::OpenSsl(args) => {
            let h = s_client(lab.p.addr, args).await?;
            if h.completed {
                return Err(format!("the handshake succeeded: {}", h.output));
            }
        }
        Wire::H2(frames) => {
            let conn = super::h2raw::H2::connect(lab.p.addr, certs(), "tpp1").await;
            conn.send(&frames(&id)).await;
            let seen = conn
                .wait(Duration::from_secs(3), |s| {
                    s.ended.contains(&1)
                        || s.resets.contains_key(&1)
                        || s.goaway.is_some()
                        || s.closed
                })
                .await;
            o.body = Bytes::from(seen.data.get(&1).cloned().unwrap_or_default());
            o.status = o.json()["status"].as_u64().unwrap_or(0) as u16;
            o.responses = usize::from(seen.headers.contains(&1));
            if let Expect::H2Reset(code) | Expect::H2ResetRecorded(code, _) = c.expect {
                let got = seen
                    .resets
                    .get(&1)
                    .copied()
                    .or(seen.goaway.as_ref().map(|g| g.1));
                if got != Some(code) {
                    return Err(format!(
                        "want reset/GOAWAY {code}, saw resets {:?} goaway {:?} status {}",
                        seen.resets, seen.goaway, o.status
                    ));
                }
                if seen.headers.contains(&1) {
                    return Err("stream 1 was answered".into());
                }
            }
        }
    }
    // The id the proxy settled on (it replaces a non-UUID one).
    let settled = o
        .headers
        .get("x-fapi-interaction-id")
        .and_then(|v| v.to_str().ok())
        .map_or(id.clone(), str::to_string);
    let body = String::from_utf8_lossy(&o.body).to_string();
    match c.expect {
        Expect::Refused(status, reason) => {
            // A HEAD answer has no body: its reason is checked in the audit record.
            let head = matches!(&c.wire, Wire::Client(r) if r.method == "HEAD");
            if o.status != status || (!head && o.json()["reason"] != reason) {
                return Err(format!("got {} {body} (want {status} {reason})", o.status));
            }
            let h2raw = matches!(c.wire, Wire::H2(_));
            if !h2raw
                && o.headers.get("content-type").map(|v| v.as_bytes())
                    != Some(b"application/problem+json")
            {
                return Err(format!("content-type {:?}", o.headers.get("content-type")));
            }
            if !head && o.json()["interaction_id"] != settled.as_str() {
                return Err(format!("interaction id not echoed: {body}"));
            }
            nothing_forwarded(lab, base).await?;
            let recorded = c.recorded_as.unwrap_or(reason);
            o.record = one_record(lab, &settled, status, recorded, &secret_values).await?;
        }
        Expect::Obie(reason, code) => {
            let j = o.json();
            if o.status != 400 || j["Errors"][0]["ErrorCode"] != code {
                return Err(format!("got {} {body} (want 400 {code})", o.status));
            }
            if j["Id"] != settled.as_str() {
                return Err(format!("OBIE Id is not the interaction id: {body}"));
            }
            nothing_forwarded(lab, base).await?;
            o.record = one_record(lab, &settled, 400, reason, &secret_values).await?;
        }
        Expect::Allowed | Expect::Forwarded(_) | Expect::Served => {
            let (n, answers) = match c.expect {
                Expect::Forwarded(n) => (n, n),
                Expect::Served => (0, 1),
                _ => (1, 1),
            };
            if !(200..300).contains(&o.status) {
                return Err(format!("got {} {body} (want 2xx)", o.status));
            }
            if o.responses != answers {
                return Err(format!(
                    "{} responses on the wire (want {answers})",
                    o.responses
                ));
            }
            o.forwarded = lab.since(base);
            if o.forwarded.len() != n {
                return Err(format!(
                    "forwarded {} requests (want {n}): {:?}",
                    o.forwarded.len(),
                    o.forwarded
                ));
            }
            if answers == 1 {
                let recs = lab
                    .p
                    .audit_where(1, |r| r["interaction_id"] == settled.as_str())
                    .await;
                if recs.len() != 1 || recs[0]["decision"] != "allow" {
                    return Err(format!("want one allow record, got {recs:?}"));
                }
                check_secrets(&recs[0], &secret_values)?;
                o.record = recs[0].clone();
            }
        }
        Expect::Parser(status, failure) => {
            if o.status != status {
                return Err(format!(
                    "got {} {body} (want {status} from the parser)",
                    o.status
                ));
            }
            nothing_forwarded(lab, base).await?;
            let recs = lab
                .p
                .audit_where(http_errors + 1, |r| r["kind"] == "http_error")
                .await;
            if recs.len() != http_errors + 1 {
                let mine: Vec<Value> = lab
                    .p
                    .audit()
                    .into_iter()
                    .filter(|r| r["interaction_id"] == settled.as_str())
                    .collect();
                return Err(format!(
                    "want exactly one new http_error record, have {} (before {http_errors}); answer {} {body}; records of the id {mine:?}",
                    recs.len(),
                    o.status
                ));
            }
            let rec = recs.last().unwrap();
            if rec["failure"] != failure {
                return Err(format!("http_error record {rec} (want failure {failure})"));
            }
            o.record = rec.clone();
        }
        Expect::Handshake(failure) => {
            nothing_forwarded(lab, base).await?;
            let recs = lab
                .p
                .audit_where(handshakes + 1, |r| r["kind"] == "tls_handshake")
                .await;
            if recs.len() != handshakes + 1 {
                return Err(format!(
                    "want exactly one new tls_handshake record, have {} (before {handshakes})",
                    recs.len()
                ));
            }
            let rec = recs.last().unwrap();
            if rec["failure"] != failure {
                return Err(format!("handshake record {rec} (want failure {failure})"));
            }
            o.record = rec.clone();
        }
        Expect::H2ResetRecorded(_, reason) => {
            nothing_forwarded(lab, base).await?;
            let recs = lab
                .p
                .audit_where(1, |r| r["interaction_id"] == id.as_str())
                .await;
            match recs.as_slice() {
                [r] if r["reason"] == reason && r["client_gone"] == true => {}
                _ => {
                    return Err(format!(
                        "want one {reason} client_gone record, got {recs:?}"
                    ))
                }
            }
        }
        Expect::H2Reset(_) => {
            nothing_forwarded(lab, base).await?;
            tokio::time::sleep(Duration::from_millis(50)).await;
            let recs: Vec<Value> = lab
                .p
                .audit()
                .into_iter()
                .filter(|r| r["interaction_id"] == id.as_str())
                .collect();
            if !recs.is_empty() {
                return Err(format!("a request record for a reset stream: {recs:?}"));
            }
        }
    }
    match &c.check {
        Some(f) => f(&o),
        None => Ok(()),
    }
}

fn count_kind(lab: &Lab, kind: &str) -> usize {
    lab.p.audit().iter().filter(|r| r["kind"] == kind).count()
}

async fn nothing_forwarded(lab: &Lab, base: (usize, usize)) -> Result<(), String> {
    // A request the proxy let through would be on its way; give it a moment to arrive.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let extra = lab.since(base);
    if extra.is_empty() {
        Ok(())
    } else {
        Err(format!("the upstream received {extra:?}"))
    }
}

async fn one_record(
    lab: &Lab,
    id: &str,
    status: u16,
    reason: &str,
    secrets: &[String],
) -> Result<Value, String> {
    let recs = lab.p.audit_where(1, |r| r["interaction_id"] == id).await;
    if recs.len() != 1 {
        return Err(format!("want exactly one audit record, got {recs:?}"));
    }
    let rec = &recs[0];
    if rec["reason"] != reason || rec["status"] != status {
        return Err(format!("audit record {rec} (want {status} {reason})"));
    }
    if rec["decision"] != "deny" && rec["decision"] != "error" {
        return Err(format!("audit decision {}", rec["decision"]));
    }
    check_secrets(rec, secrets)?;
    Ok(rec.clone())
}

fn check_secrets(rec: &Value, secrets: &[String]) -> Result<(), String> {
    let text = rec.to_string();
    match secrets.iter().find(|s| text.contains(s.as_str())) {
        Some(s) => Err(format!("a credential reached the audit record: {s}")),
        None => Ok(()),
    }
}
