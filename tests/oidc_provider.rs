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
//! A second test takes RFC 9068 JWT access tokens from the provider (resource
//! `https://rs-jwt.example`), verified with the key set its metadata names:
//! - client credentials (unbound): forwarded on a `bearer` route, 401 `binding.unbound_token`
//!   on a `fapi2` route;
//! - certificate-bound (code flow of `tpp-mtls`): forwarded over its certificate, 401
//!   `binding.cert_mismatch` over another;
//! - DPoP-bound (code flow of `tpp-spa`): forwarded with a proof, 401
//!   `binding.dpop_proof_missing` without;
//! - a `private_key_jwt` client's token: forwarded, its client vouched for;
//! - RFC 9396: `tpp-rar` (tls_client_auth at the token endpoint, so certificate-bound) asks for
//!   `authorization_details` granting `acc-1`; against the shipped `policies/fapi2-rar.yaml`,
//!   `acc-1` is forwarded and `acc-2` is a hidden 404 (`authz.object_hidden`); and two
//!   `payment_initiation` entries: a transfer within one is forwarded, one whose creditor comes
//!   from the other entry is 403 `authz.object`, one above the entry's amount or in another
//!   currency 403 `authz.grant_amount`;
//! - the provider rotates its signing key without a restart: the new key's first token is
//!   forwarded at once; after a second rotation the withdrawn key's tokens are 401
//!   `token.unknown_key` (also one verified and cached before the withdrawal) and the newest
//!   key's is forwarded.
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
use serde_json::{json, Value};
use support::apps;

const AUD: &str = "https://rs.example";
const OTHER_AUD: &str = "https://other.example";
/// Not a header: in a request's header list, the client certificate to send it over.
const CLIENT: &str = "(client certificate)";

/// The resource whose access tokens the provider issues as RFC 9068 JWTs.
const JWT_AUD: &str = "https://rs-jwt.example";
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
/// Once per test process: the tests run in parallel, and a second `npm ci` in the same
/// directory would delete `node_modules` under the first (or under a provider already started).
fn prepare() -> Result<(), String> {
    static PREPARED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    PREPARED.get_or_init(install).clone()
}

fn install() -> Result<(), String> {
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
    /// Later lines it prints (answers to `rotate`).
    lines: std::sync::mpsc::Receiver<Value>,
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

    /// Rotates the provider's access-token signing key (see as.js); returns the new key's id
    /// and a fresh JWT access token it signed.
    fn rotate(&mut self) -> (String, String) {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(b"rotate\n").unwrap();
        stdin.flush().unwrap();
        let v = self
            .lines
            .recv_timeout(Duration::from_secs(30))
            .expect("the provider did not rotate its keys");
        (
            v["kid"].as_str().unwrap().to_string(),
            v["jwt_access"].as_str().unwrap().to_string(),
        )
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
        .env("AS_JWT_AUDIENCE", JWT_AUD)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start node: {e}"));
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                if tx.send(v).is_err() {
                    return;
                }
            }
        }
    });
    let ready = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(v) => v,
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
        lines: rx,
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
    /// Sends `GET path` over the client certificate `CLIENT` (tpp1 unless a test says).
    async fn send(
        &self,
        path: &str,
        headers: &[(&str, String)],
    ) -> (portcullis_tools::client::Answer, String) {
        let id = uuid::Uuid::new_v4().to_string();
        let mut r = req("GET", path).header("x-fapi-interaction-id", &id);
        let mut identity = "tpp1";
        for (k, v) in headers {
            if *k == CLIENT {
                identity = v.as_str();
                continue;
            }
            r = r.header(*k, v.as_str());
        }
        let mut c = self.p.client(Some(identity), false).await.unwrap();
        let a = c
            .send(r.body(Full::new(Bytes::new())).unwrap())
            .await
            .unwrap();
        (a, id)
    }

    /// Sends `POST path` with the JSON `body` over tpp1's certificate.
    async fn post_json(
        &self,
        path: &str,
        headers: &[(&str, String)],
        body: Value,
    ) -> (portcullis_tools::client::Answer, String) {
        let id = uuid::Uuid::new_v4().to_string();
        let mut r = req("POST", path)
            .header("x-fapi-interaction-id", &id)
            .header("content-type", "application/json");
        for (k, v) in headers {
            r = r.header(*k, v.as_str());
        }
        let mut c = self.p.client(Some("tpp1"), false).await.unwrap();
        let a = c
            .send(r.body(Full::new(Bytes::from(body.to_string()))).unwrap())
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

/// RFC 9068 JWT access tokens from the provider's token endpoint (client credentials, and the
/// code flow bound to a DPoP key and to the client certificate), verified with the key set the
/// provider's metadata names; then the provider rotates its signing key twice, without a
/// restart of either side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_access_tokens_from_the_provider_are_verified_through_its_metadata_and_rotations() {
    let t = Instant::now();
    let dpop = SigningKey::generate(Alg::ES256, "dpop").unwrap();
    let mut asrv = start_as(&dpop);
    // The key set from the metadata's jwks_uri, re-read every second (so a withdrawn key is
    // gone quickly) and at once on an unknown kid.
    let e = proxy_with_policy(&asrv, JWT_AUD, POLICY).await;
    let bearer = |t: &str| ("authorization", format!("Bearer {t}"));
    let over = |name: &str| (CLIENT, name.to_string());

    // The premise: what the provider issued is an RFC 9068 JWT signed by its first ES256 key.
    let header = |jwt: &str| -> Value {
        let h = jwt.split('.').next().unwrap();
        serde_json::from_slice(&portcullis_crypto::jose::b64url_decode(h).unwrap()).unwrap()
    };
    let access = asrv.token("jwt_access");
    assert_eq!(header(&access)["typ"], "at+jwt");
    assert_eq!(header(&access)["alg"], "ES256");
    assert_eq!(header(&access)["kid"], "es-1");

    // Client credentials: an unbound token is a bearer token, and no more.
    let seen = e
        .forwarded(
            "JWT (client credentials) on a bearer route",
            "/bearer/accounts",
            &[bearer(&access)],
        )
        .await;
    assert_eq!(seen.headers["x-portcullis-client-id"], "tpp-app");
    assert_eq!(seen.headers["x-portcullis-scope"], "accounts payments");
    e.refused(
        "unbound JWT on a fapi2 route",
        "/accounts",
        &[bearer(&access)],
        401,
        "binding.unbound_token",
    )
    .await;
    // Certificate-bound (RFC 8705): over its certificate, and over another one.
    let mtls = asrv.token("jwt_mtls_access");
    let seen = e
        .forwarded(
            "certificate-bound JWT over its certificate",
            "/accounts",
            &[bearer(&mtls)],
        )
        .await;
    assert_eq!(seen.headers["x-portcullis-client-id"], "tpp-mtls");
    e.refused(
        "certificate-bound JWT over another certificate",
        "/accounts",
        &[bearer(&mtls), over("tpp2")],
        401,
        "binding.cert_mismatch",
    )
    .await;
    // DPoP-bound (RFC 9449): with a proof by its key, and without one.
    let dp = asrv.token("jwt_dpop_access");
    let proof = dpop.proof_for(&format!("{BASE}/accounts"), &dp);
    e.forwarded(
        "DPoP-bound JWT with a proof",
        "/accounts",
        &[("authorization", format!("DPoP {dp}")), ("dpop", proof)],
    )
    .await;
    e.refused(
        "DPoP-bound JWT without a proof",
        "/accounts",
        &[("authorization", format!("DPoP {dp}"))],
        401,
        "binding.dpop_proof_missing",
    )
    .await;

    // private_key_jwt (RFC 7523) at the token endpoint: the proxy sees the client it names.
    let seen = e
        .forwarded(
            "JWT of a private_key_jwt client",
            "/bearer/accounts",
            &[bearer(&asrv.token("jwt_pkj"))],
        )
        .await;
    assert_eq!(seen.headers["x-portcullis-client-id"], "tpp-pkj");

    // RFC 9396: a token whose authorization_details grant acc-1 (tls_client_auth at the token
    // endpoint, so bound to tpp1), against the shipped policy policies/fapi2-rar.yaml.
    let rar = asrv.token("jwt_rar");
    let claims: Value = serde_json::from_slice(
        &portcullis_crypto::jose::b64url_decode(rar.split('.').nth(1).unwrap()).unwrap(),
    )
    .unwrap();
    assert_eq!(
        claims["authorization_details"][0],
        json!({"type": "account_information", "accounts": ["acc-1"]}),
        "{claims}"
    );
    assert_eq!(claims["cnf"]["x5t#S256"], thumb("tpp1"), "{claims}");
    let rar_env =
        proxy_with_policy(&asrv, JWT_AUD, include_str!("../policies/fapi2-rar.yaml")).await;
    rar_env
        .forwarded(
            "RAR-granted account",
            "/fapi2/accounts/acc-1",
            &[bearer(&rar)],
        )
        .await;
    // An account outside the grant does not exist for this caller: 404 like an unknown path,
    // recorded as the hidden object it is, nothing upstream.
    let before = rar_env.up.count();
    let (a, id) = rar_env.send("/fapi2/accounts/acc-2", &[bearer(&rar)]).await;
    assert_eq!(a.status, 404, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.json()["reason"], "route.not_found");
    assert_eq!(
        rar_env.up.count(),
        before,
        "the upstream must receive nothing"
    );
    let rec = rar_env.p.audit_of(&id).await;
    assert_eq!(rec["reason"], "authz.object_hidden", "{rec}");
    assert_eq!(rec["decision"], "deny", "{rec}");
    eprintln!("oidc-provider: RAR account outside the grant: 404 (authz.object_hidden)");
    // RFC 9396 payment grants: debtor, creditor and amount must all come from one entry.
    let transfer = |creditor: &str, amount: &str, currency: &str| {
        json!({"debtorAccount": {"iban": "DE02100100109307118603"},
               "creditorAccount": {"iban": creditor},
               "instructedAmount": {"currency": currency, "amount": amount}})
    };
    let before = rar_env.up.count();
    let (a, id) = rar_env
        .post_json(
            "/fapi2/transfers",
            &[bearer(&rar)],
            transfer("DE89370400440532013000", "123.50", "EUR"),
        )
        .await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(
        rar_env.up.count(),
        before + 1,
        "a transfer within one grant"
    );
    assert_eq!(rar_env.p.audit_of(&id).await["decision"], "allow");
    eprintln!("oidc-provider: RAR transfer within one grant: 200 forwarded");
    for (what, body, reason) in [
        (
            "RAR transfer: the second entry's creditor with the first entry's amount",
            transfer("GB33BUKB20201555555555", "123.50", "EUR"),
            "authz.grant_amount",
        ),
        (
            "RAR transfer: a creditor no entry grants",
            transfer("FR7630006000011234567890189", "1.00", "EUR"),
            "authz.object",
        ),
        (
            "RAR transfer: above the entry's amount",
            transfer("DE89370400440532013000", "123.51", "EUR"),
            "authz.grant_amount",
        ),
        (
            "RAR transfer: another currency",
            transfer("DE89370400440532013000", "1.00", "GBP"),
            "authz.grant_amount",
        ),
    ] {
        let before = rar_env.up.count();
        let (a, id) = rar_env
            .post_json("/fapi2/transfers", &[bearer(&rar)], body)
            .await;
        let text = String::from_utf8_lossy(&a.body).to_string();
        assert_eq!(a.status, 403, "{what}: {text}");
        assert_eq!(a.json()["reason"], reason, "{what}: {text}");
        assert_eq!(
            rar_env.up.count(),
            before,
            "{what}: the upstream must receive nothing"
        );
        let rec = rar_env.p.audit_of(&id).await;
        assert_eq!(rec["reason"], reason, "{what}: {rec}");
        assert_eq!(rec["decision"], "deny", "{what}: {rec}");
        assert_eq!(rec["rule_id"], "payment-within-one-grant", "{what}: {rec}");
        eprintln!("oidc-provider: {what}: 403 {reason}");
    }

    // Rotation: es-2 is published and signs from now on. Its first token is accepted at once
    // (the unknown kid fetches the set again), without a restart.
    let (kid, rotated) = asrv.rotate();
    assert_eq!(
        (kid.as_str(), header(&rotated)["kid"].clone()),
        ("es-2", json!("es-2"))
    );
    e.forwarded(
        "JWT by the rotated-in key",
        "/bearer/accounts",
        &[bearer(&rotated)],
    )
    .await;
    // Second rotation: es-3 in, es-1 withdrawn. Once the proxy has read the set again, a token
    // es-1 signed (never seen before, so not in the verified-token cache) is refused.
    let (_, newest) = asrv.rotate();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    e.refused(
        "JWT by a withdrawn key",
        "/bearer/accounts",
        &[bearer(&asrv.token("jwt_spare"))],
        401,
        "token.unknown_key",
    )
    .await;
    // And a token es-1 signed that the proxy verified (and cached) before the withdrawal: the
    // cached verdict stands only while its key does.
    e.refused(
        "cached JWT by a withdrawn key",
        "/bearer/accounts",
        &[bearer(&access)],
        401,
        "token.unknown_key",
    )
    .await;
    e.forwarded(
        "JWT by the newest key",
        "/bearer/accounts",
        &[bearer(&newest)],
    )
    .await;
    eprintln!(
        "oidc-provider: JWT flows done in {:.1} s",
        t.elapsed().as_secs_f64()
    );
}

/// A proxy trusting the provider's JWTs for `audience` (keys through its metadata) in front
/// of a fresh recording upstream, with `policy`.
async fn proxy_with_policy(asrv: &As, audience: &str, policy: &str) -> Env {
    let up = Upstream::start(Behaviour::Ok).await;
    let mut o = Options::new(up.addr);
    o.policy = policy.to_string();
    let issuer = FileIssuer {
        issuer: asrv.issuer.clone(),
        audience: audience.into(),
        discovery: Some(FileDiscovery {
            ca: vec![certs().join("ca.pem").display().to_string()],
            ..FileDiscovery::default()
        }),
        jwks: Some(FileJwks {
            refresh_interval: Some(dur("1s")),
            ..FileJwks::default()
        }),
        ..FileIssuer::default()
    };
    o.config.issuers.insert("as".into(), issuer);
    o.config.dpop.public_base_url = Some(BASE.into());
    let e = Env::start(o, up, tempfile::tempdir().unwrap(), None).await;
    assert!(
        e.p.ready_within(Duration::from_secs(5)).await,
        "the proxy never became ready"
    );
    e
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
