//! Introspection against a real authorization server: oidc-provider 9 (OpenID-certified), run
//! by tests/frameworks/oidc-provider/as.js over HTTPS on a loopback port.
//!
//! RFC 7662 §2.1 lets an authorization server answer for any token it issued, and oidc-provider
//! does: asked about a refresh token (even with `token_type_hint=access_token`), it answers
//! `active: true` with the subject and the scopes, and neither `aud` nor `token_type`. A proxy
//! that took every active answer as an access token let a refresh token through as one. Here
//! every token comes from the provider's own token endpoint (the authorization code flow through
//! its development interaction pages, and client credentials), and the proxy introspects them
//! at the provider's endpoint as `rs-client` (HTTP Basic, pinned CA):
//! - the refresh token of a confidential client on a `bearer` route: 401 `token.audience`;
//! - the DPoP-bound refresh token of a public client, with a valid proof by its key, on a `fapi2`
//!   route: 401 `token.audience`;
//! - the certificate-bound (RFC 8705) refresh token of a public client, over that client's
//!   certificate, on a `fapi2` route: 401 `token.audience`;
//! - an access token for another resource: 401 `token.audience`;
//! - the access tokens for our resource (Bearer, DPoP-bound with a proof, certificate-bound over
//!   its certificate): forwarded.
//!
//! Then the proxy introspects as `rs-mtls` at the endpoint the provider's metadata names (issuer
//! discovery: `/.well-known/openid-configuration`, its `issuer` checked), authenticated by its
//! client certificate alone
//! (`tls_client_auth`, RFC 8705 §2, which needs `client_id` in the form): the access token is
//! forwarded and the refresh token refused as above; with a certificate the provider did not
//! register for `rs-mtls`, the provider refuses the client and the token is refused 503
//! `token.introspection_unavailable` (no answer, fail closed).
//!
//! Every refusal is checked three ways: status and reason code, the recording upstream saw
//! nothing, and exactly one audit record with that reason.
//!
//! The npm packages are installed (`npm ci`, pinned by package-lock.json) under
//! target/tmp/oidc-provider when missing or when the manifest changed; a missing piece fails
//! the test with the command to run. The provider's log: target/tmp/oidc-provider/as.log.

mod common;
mod support {
    pub(crate) mod apps;
}

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use portcullis_crypto::jose::sign::SigningKey;
use portcullis_crypto::jose::Alg;
use serde_json::Value;
use support::apps;

const AUD: &str = "https://rs.example";
const OTHER_AUD: &str = "https://other.example";
/// The external base URL clients sign (DPoP `htu`).
const BASE: &str = "https://rs.example";

const POLICY: &str = r#"
group: oidc
upstream: bank
routes:
  - id: bearer.accounts
    method: GET
    path: /bearer/accounts
    auth: {profile: bearer}
  - id: fapi2.accounts
    method: GET
    path: /accounts
    auth: {profile: fapi2}
"#;

// ---------------------------------------------------------------------------------------------
// Preparing and starting the authorization server (the pattern of tests/differential.rs).

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/frameworks/oidc-provider")
}

fn work_dir() -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("oidc-provider");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Installs the npm packages when missing or changed; the error names the command to run.
fn prepare() -> Result<(), String> {
    apps::need_node("oidc-provider")?;
    let work = work_dir();
    let changed = apps::sync(&src_dir(), &work, &["package.json", "package-lock.json"]);
    apps::sync(&src_dir(), &work, &["as.js"]);
    apps::npm_ci(
        &work,
        changed,
        "node_modules/oidc-provider/package.json",
        "oidc-provider",
    )
}

/// The running authorization server and what it printed once ready.
struct As {
    child: Child,
    issuer: String,
    port: u16,
    tokens: Value,
    introspection: Value,
    /// The secret of `rs-client` and the DPoP key file.
    _dir: tempfile::TempDir,
}

impl Drop for As {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl As {
    fn token(&self, name: &str) -> String {
        self.tokens[name].as_str().unwrap().to_string()
    }

    fn secret_file(&self) -> PathBuf {
        self._dir.path().join("rs-secret")
    }
}

fn start_as(dpop: &SigningKey) -> As {
    if let Err(e) = prepare() {
        panic!("the oidc-provider test could not prepare its authorization server:\n{e}");
    }
    let certs = certs();
    let dir = tempfile::tempdir().unwrap();
    let secret = uuid::Uuid::new_v4().simple().to_string();
    std::fs::write(dir.path().join("rs-secret"), format!("{secret}\n")).unwrap();
    std::fs::write(dir.path().join("dpop.key"), dpop.to_pkcs8_pem()).unwrap();
    let log = work_dir().join("as.log");
    let mut child = Command::new("node")
        .arg(work_dir().join("as.js"))
        .current_dir(work_dir())
        .env("AS_CERT", certs.join("server.pem"))
        .env("AS_KEY", certs.join("server.key"))
        .env("AS_CA", certs.join("ca.pem"))
        .env("AS_RS_SECRET_FILE", dir.path().join("rs-secret"))
        .env("AS_RS_CLIENT_CERT", certs.join("tpp2.pem"))
        .env("AS_DPOP_KEY", dir.path().join("dpop.key"))
        .env("AS_CLIENT_CERT", certs.join("tpp1.pem"))
        .env("AS_CLIENT_KEY", certs.join("tpp1.key"))
        .env("AS_AUDIENCE", AUD)
        .env("AS_OTHER_AUDIENCE", OTHER_AUD)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start node: {e}"));
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let ready = lines
            .by_ref()
            .map_while(Result::ok)
            .find_map(|l| serde_json::from_str::<Value>(&l).ok());
        let _ = tx.send(ready);
        lines.for_each(drop);
    });
    let ready = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(Some(v)) => v,
        _ => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "oidc-provider did not start; its log {}:\n{}",
                log.display(),
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
    };
    As {
        child,
        issuer: ready["issuer"].as_str().unwrap().to_string(),
        port: ready["port"].as_u64().unwrap() as u16,
        tokens: ready["tokens"].clone(),
        introspection: ready["introspection"].clone(),
        _dir: dir,
    }
}

// ---------------------------------------------------------------------------------------------
// The proxy in front of a recording upstream, trusting the provider through introspection.

impl Env {
    async fn send(
        &self,
        path: &str,
        headers: &[(&str, String)],
    ) -> (portcullis_tools::client::Answer, String) {
        let id = uuid::Uuid::new_v4().to_string();
        let mut r = req("GET", path).header("x-fapi-interaction-id", &id);
        for (k, v) in headers {
            r = r.header(*k, v.as_str());
        }
        let mut c = self.p.client(Some("tpp1"), false).await.unwrap();
        let a = c
            .send(r.body(Full::new(Bytes::new())).unwrap())
            .await
            .unwrap();
        (a, id)
    }

    /// Asserts a refusal three ways: status and reason, nothing upstream, one audit record.
    async fn refused(
        &self,
        what: &str,
        path: &str,
        headers: &[(&str, String)],
        status: u16,
        reason: &str,
    ) {
        let before = self.up.count();
        let (a, id) = self.send(path, headers).await;
        let body = String::from_utf8_lossy(&a.body).to_string();
        assert_eq!(a.status.as_u16(), status, "{what}: {body}");
        assert_eq!(a.json()["reason"], reason, "{what}: {body}");
        assert_eq!(
            self.up.count(),
            before,
            "{what}: the upstream must receive nothing"
        );
        let rec = self.p.audit_of(&id).await;
        assert_eq!(rec["reason"], reason, "{what}: {rec}");
        assert_eq!(rec["status"], status, "{what}: {rec}");
        // Fail closed: an endpoint that gives no answer decides nothing about the request.
        let decision = if status == 503 { "error" } else { "deny" };
        assert_eq!(rec["decision"], decision, "{what}: {rec}");
        eprintln!("oidc-provider: {what}: {status} {reason}");
    }

    /// Asserts that the request reached the upstream; returns what the upstream saw.
    async fn forwarded(&self, what: &str, path: &str, headers: &[(&str, String)]) -> Seen {
        let before = self.up.count();
        let (a, id) = self.send(path, headers).await;
        assert_eq!(
            a.status,
            200,
            "{what}: {}",
            String::from_utf8_lossy(&a.body)
        );
        assert_eq!(self.up.count(), before + 1, "{what}: forwarded once");
        let rec = self.p.audit_of(&id).await;
        assert_eq!(rec["decision"], "allow", "{what}: {rec}");
        eprintln!("oidc-provider: {what}: 200 forwarded");
        self.up.seen().pop().unwrap()
    }
}

/// The RFC 8705 thumbprint of a test client certificate.
fn thumb(name: &str) -> String {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_file(certs().join(format!("{name}.pem")))
        .unwrap();
    portcullis_crypto::pki::thumbprint_s256(der.as_ref())
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspection_answers_for_refresh_tokens_and_other_audiences_are_refused() {
    let log = Log::global();
    let t = Instant::now();
    let dpop = SigningKey::generate(Alg::ES256, "dpop").unwrap();
    let asrv = start_as(&dpop);
    eprintln!(
        "oidc-provider: ready (tokens from its token endpoint) in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    // What the provider answers the resource server (no secret in it: oidc-provider omits `jti`
    // when it is the token itself).
    eprintln!(
        "oidc-provider: introspection answers {}",
        serde_json::to_string_pretty(&asrv.introspection).unwrap()
    );

    // The premise, from the provider itself: refresh tokens are active with no `aud` and no
    // `token_type` (so the proxy's `aud` check, which comes first, refuses them); access tokens
    // carry our audience and their scheme.
    let i = &asrv.introspection;
    for rt in ["refresh", "dpop_refresh", "mtls_refresh"] {
        assert_eq!(i[rt]["active"], true, "{rt}: {i}");
        assert_eq!(i[rt]["sub"], "psu-1", "{rt}: {i}");
        assert!(i[rt].get("aud").is_none(), "{rt}: {i}");
        assert!(i[rt].get("token_type").is_none(), "{rt}: {i}");
    }
    assert_eq!(i["dpop_refresh"]["cnf"]["jkt"], dpop.thumbprint(), "{i}");
    assert_eq!(i["access"]["aud"], AUD, "{i}");
    assert_eq!(i["access"]["token_type"], "Bearer", "{i}");
    assert!(i["access"].get("cnf").is_none(), "{i}");
    assert_eq!(i["dpop_access"]["aud"], AUD, "{i}");
    assert_eq!(i["dpop_access"]["token_type"], "DPoP", "{i}");
    assert_eq!(i["dpop_access"]["cnf"]["jkt"], dpop.thumbprint(), "{i}");
    assert_eq!(i["other_audience"]["aud"], OTHER_AUD, "{i}");
    let x5t = thumb("tpp1");
    assert_eq!(i["mtls_refresh"]["cnf"]["x5t#S256"], x5t, "{i}");
    assert_eq!(i["mtls_access"]["aud"], AUD, "{i}");
    assert_eq!(i["mtls_access"]["token_type"], "Bearer", "{i}");
    assert_eq!(i["mtls_access"]["cnf"]["x5t#S256"], x5t, "{i}");

    let e = proxy_for(
        &asrv,
        FileIntrospection {
            client_id: Some("rs-client".into()),
            client_secret_file: Some(asrv.secret_file().display().to_string()),
            ..FileIntrospection::default()
        },
        Endpoint::Configured,
    )
    .await;
    let bearer = |t: &str| ("authorization", format!("Bearer {t}"));
    let dpop_auth = |t: &str| ("authorization", format!("DPoP {t}"));
    let proof = |t: &str| {
        let p = dpop.proof_for(&format!("{BASE}/accounts"), t);
        ("dpop", p)
    };

    // The refresh token of a confidential client, where a bearer access token would do.
    e.refused(
        "refresh token on a bearer route",
        "/bearer/accounts",
        &[bearer(&asrv.token("refresh"))],
        401,
        "token.audience",
    )
    .await;
    // An access token the provider issued for another resource.
    e.refused(
        "access token for another audience on a bearer route",
        "/bearer/accounts",
        &[bearer(&asrv.token("other_audience"))],
        401,
        "token.audience",
    )
    .await;
    // The DPoP-bound refresh token of a public client, presented with a valid proof by its key.
    let rt = asrv.token("dpop_refresh");
    e.refused(
        "DPoP-bound refresh token with a proof on a fapi2 route",
        "/accounts",
        &[dpop_auth(&rt), proof(&rt)],
        401,
        "token.audience",
    )
    .await;

    // The certificate-bound refresh token of a public client, over its certificate (tpp1).
    e.refused(
        "certificate-bound refresh token over its certificate on a fapi2 route",
        "/accounts",
        &[bearer(&asrv.token("mtls_refresh"))],
        401,
        "token.audience",
    )
    .await;

    // The controls: the provider's access tokens for our resource are accepted, so the refusals
    // above are about the kind and audience of the tokens, not the connection to the provider.
    let seen = e
        .forwarded(
            "access token on a bearer route",
            "/bearer/accounts",
            &[bearer(&asrv.token("access"))],
        )
        .await;
    assert_eq!(seen.headers["x-portcullis-subject"], "psu-1");
    assert_eq!(seen.headers["x-portcullis-client-id"], "tpp-app");
    assert_eq!(seen.headers["x-portcullis-scope"], "accounts payments");
    let at = asrv.token("dpop_access");
    let seen = e
        .forwarded(
            "DPoP-bound access token with a proof on a fapi2 route",
            "/accounts",
            &[dpop_auth(&at), proof(&at)],
        )
        .await;
    assert_eq!(seen.headers["x-portcullis-client-id"], "tpp-spa");
    assert_eq!(seen.headers["x-portcullis-subject"], "psu-1");
    let seen = e
        .forwarded(
            "certificate-bound access token over its certificate on a fapi2 route",
            "/accounts",
            &[bearer(&asrv.token("mtls_access"))],
        )
        .await;
    assert_eq!(seen.headers["x-portcullis-client-id"], "tpp-mtls");

    // The proxy authenticating to the endpoint by its client certificate alone (tls_client_auth,
    // registered at the provider by tpp2's subject): the form carries the client_id, which
    // RFC 8705 §2 requires and without which the provider answers 400. From here on the proxy
    // finds the endpoint in the provider's metadata (issuer discovery), trusting what the
    // metadata document was fetched with.
    let by_cert = |name: &str| FileIntrospection {
        client_id: Some("rs-mtls".into()),
        client_certificate: Some(certs().join(format!("{name}.pem")).display().to_string()),
        client_private_key: Some(certs().join(format!("{name}.key")).display().to_string()),
        ..FileIntrospection::default()
    };
    let e = proxy_for(&asrv, by_cert("tpp2"), Endpoint::Discovered).await;
    e.forwarded(
        "access token introspected with tls_client_auth",
        "/bearer/accounts",
        &[bearer(&asrv.token("access"))],
    )
    .await;
    e.refused(
        "refresh token introspected with tls_client_auth",
        "/bearer/accounts",
        &[bearer(&asrv.token("refresh"))],
        401,
        "token.audience",
    )
    .await;
    // `portcullis token inspect` on the same config asks the endpoint too, as the proxy would.
    let (code, out) = inspect(&e.p.config_path(), &asrv.token("access")).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("result: accepted"), "{out}");
    let (code, out) = inspect(&e.p.config_path(), &asrv.token("refresh")).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAIL aud"), "{out}");
    eprintln!("oidc-provider: token inspect: access token accepted, refresh token refused (aud)");
    // Another certificate under that client id: the provider refuses the client (401
    // invalid_client), so there is no answer and the token is refused, fail closed.
    let e = proxy_for(&asrv, by_cert("tpp1"), Endpoint::Discovered).await;
    e.refused(
        "introspection with a certificate the provider did not register",
        "/bearer/accounts",
        &[bearer(&asrv.token("access"))],
        503,
        "token.introspection_unavailable",
    )
    .await;
    // The operator learns why from the log: the status and the provider's error code, not the
    // token.
    let logged = log.text();
    let line = logged
        .lines()
        .find(|l| l.contains("token introspection failed"))
        .unwrap_or_else(|| panic!("no introspection warning in the log:\n{logged}"));
    assert!(line.contains("status 401, error invalid_client"), "{line}");
    for (name, token) in asrv.tokens.as_object().unwrap() {
        assert!(
            !logged.contains(token.as_str().unwrap()),
            "the {name} token is in the log"
        );
    }
    eprintln!("oidc-provider: done in {:.1} s", t.elapsed().as_secs_f64());
}

/// Runs `portcullis token inspect` on `config` with the token on standard input; returns the
/// exit code and what it printed.
async fn inspect(config: &Path, token: &str) -> (i32, String) {
    let (config, token) = (config.to_path_buf(), token.to_string());
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["token", "inspect", "--issuer", "as", "--config"])
            .arg(&config)
            .arg("-")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(token.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code().unwrap_or(-1), text)
    })
    .await
    .unwrap()
}

/// Where the proxy learns the introspection endpoint.
enum Endpoint {
    Configured,
    /// From the provider's metadata (OpenID Connect Discovery).
    Discovered,
}

/// A proxy in front of a fresh recording upstream that introspects at the provider with the
/// given client authentication.
async fn proxy_for(asrv: &As, auth: FileIntrospection, how: Endpoint) -> Env {
    let up = Upstream::start(Behaviour::Ok).await;
    let mut o = Options::new(up.addr);
    o.policy = POLICY.to_string();
    let ca = vec![certs().join("ca.pem").display().to_string()];
    let (url, ca, discovery) = match how {
        Endpoint::Configured => (
            Some(format!(
                "https://localhost:{}/token/introspection",
                asrv.port
            )),
            ca,
            None,
        ),
        // The endpoint and the trust come from the provider's own metadata document.
        Endpoint::Discovered => (
            None,
            Vec::new(),
            Some(FileDiscovery {
                ca,
                ..FileDiscovery::default()
            }),
        ),
    };
    let introspection = FileIntrospection {
        url,
        ca,
        cache_ttl: Some(dur("60s")),
        ..auth
    };
    let issuer = FileIssuer {
        issuer: asrv.issuer.clone(),
        audience: AUD.into(),
        discovery,
        introspection: Some(introspection),
        ..FileIssuer::default()
    };
    o.config.issuers.insert("as".into(), issuer);
    o.config.dpop.public_base_url = Some(BASE.into());
    Env::start(o, up, tempfile::tempdir().unwrap(), None).await
}

trait Proof {
    fn proof_for(&self, htu: &str, token: &str) -> String;
}

impl Proof for SigningKey {
    /// A fresh DPoP proof for `GET htu` with `token`, at the real time (the provider's tokens
    /// live on the system clock).
    fn proof_for(&self, htu: &str, token: &str) -> String {
        self.dpop_proof(
            "GET",
            htu,
            Some(token),
            now(),
            &uuid::Uuid::new_v4().to_string(),
            None,
        )
    }
}
