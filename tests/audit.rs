//! The audit log through the real proxy: one record per request on every path, no secrets,
//! hostile values stay one JSON line, `audit verify` catches each tampering of a real rotated
//! log, the queue-full policies and a failing disk behave as configured, the report matches what
//! the clients did, and the trace context reaches the upstream.

mod common;

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use portcullis_audit::verify;
use portcullis_audit::{AuditLog, AuditPublicKey};
use portcullis_proxy::config::Config;
use portcullis_proxy::Shared;

const WAIT: Duration = Duration::from_secs(10);
const ACCOUNTS: &str = "/open-banking/v3.1/aisp/accounts";
const CONSENTS: &str = "/open-banking/v3.1/pisp/domestic-payment-consents";

fn empty() -> Full<Bytes> {
    Full::new(Bytes::new())
}

/// A byte sink for the audit writer that the test can read, fail, or hold shut.
#[derive(Clone, Default)]
struct Sink {
    buf: Arc<Mutex<Vec<u8>>>,
    fail: Arc<AtomicBool>,
    gate: Arc<(Mutex<bool>, Condvar)>,
    held: Arc<AtomicBool>,
    waiting: Arc<AtomicBool>,
}

impl Sink {
    fn text(&self) -> String {
        String::from_utf8(self.buf.lock().unwrap().clone()).unwrap()
    }
    /// The records in the inline form, as `Proxy::audit` gives them (`connection` records
    /// folded into their requests).
    fn records(&self) -> Vec<serde_json::Value> {
        portcullis_audit::resolve::inline_file(
            self.text()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect(),
        )
    }
    fn hold(&self) {
        self.held.store(true, Ordering::SeqCst);
    }
    fn release(&self) {
        self.held.store(false, Ordering::SeqCst);
        let (m, c) = &*self.gate;
        *m.lock().unwrap() = true;
        c.notify_all();
    }
    async fn wait_until_stuck(&self) {
        for _ in 0..1000 {
            if self.waiting.load(Ordering::SeqCst) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("the audit writer never reached the held write");
    }
}

impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        if self.held.load(Ordering::SeqCst) {
            self.waiting.store(true, Ordering::SeqCst);
            let (m, c) = &*self.gate;
            let mut open = m.lock().unwrap();
            while !*open {
                open = c.wait(open).unwrap();
            }
        }
        if self.fail.load(Ordering::SeqCst) {
            return Err(io::Error::other("no space left on device"));
        }
        self.buf.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Starts a proxy whose `audit:` section is `audit`, writing to `sink` when given.
async fn start_audited(
    up: std::net::SocketAddr,
    audit: FileAudit,
    sink: Option<&Sink>,
    tweak: impl FnOnce(&mut Options),
) -> Proxy {
    let mut o = Options::new(up);
    o.config.audit = audit;
    tweak(&mut o);
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    std::fs::write(dir.path().join("policies/test.yaml"), &o.policy).unwrap();
    let path = dir.path().join("portcullis.yaml");
    std::fs::write(&path, o.config_text()).unwrap();
    let config = Config::load(&path).unwrap_or_else(|e| panic!("config: {e}"));
    let log = match sink {
        Some(s) => AuditLog::start_with_writer(&config.audit, Box::new(s.clone())),
        None => AuditLog::start(&config.audit),
    }
    .unwrap();
    let shared = Arc::new(Shared::new(config, log, Some(path)));
    let running = portcullis_proxy::start(Arc::clone(&shared)).await.unwrap();
    Proxy {
        addr: running.addr,
        admin: running.admin_addr.unwrap(),
        dir,
        shared,
        running: Some(running),
    }
}

/// The file sink `audit.log`, signed with the dev audit key, fsync after every batch.
fn signed() -> FileAudit {
    FileAudit {
        sink: Some("file".into()),
        path: Some("audit.log".into()),
        signing_key: Some(certs().join("audit.key").display().to_string()),
        fsync_interval: Some(dur("0ms")),
        ..FileAudit::default()
    }
}

/// The `sink` (`stdout`, `file`) with no other setting.
fn audit_to(sink: &str) -> FileAudit {
    FileAudit {
        sink: Some(sink.into()),
        ..FileAudit::default()
    }
}

fn public_key() -> AuditPublicKey {
    AuditPublicKey::from_file(&certs().join("audit.pub")).unwrap()
}

/// Rotated files oldest first, then the current file.
fn log_files(p: &Proxy) -> Vec<PathBuf> {
    let current = p.dir.path().join("audit.log");
    let mut files = portcullis_audit::rotated_files(&current);
    files.push(current);
    files
}

fn cli(args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn verify_args<'a>(public: &'a str, files: &'a [String]) -> Vec<&'a str> {
    let mut args = vec!["audit", "verify", "--public-key", public];
    args.extend(files.iter().map(String::as_str));
    args
}

/// Writes raw bytes as TPP One and reads the answer, tolerating the server closing the
/// connection while we are still writing (it refuses a 1 MB header early).
async fn raw_lenient(p: &Proxy, bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tls = p.tls(Some("tpp1"), false).await.unwrap();
    let _ = tls.write_all(bytes).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), tls.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).to_string()
}

/// With TLS 1.3 the client's connect() may succeed; the refusal shows on first use.
async fn handshake_fails(p: &Proxy, identity: &str) -> bool {
    match p.client(Some(identity), false).await {
        Err(_) => true,
        Ok(mut c) => c
            .send(req("GET", ACCOUNTS).body(empty()).unwrap())
            .await
            .is_err(),
    }
}

fn close(p: &Proxy) {
    assert!(p.shared.audit.close(WAIT), "the audit log closes cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_path_writes_exactly_one_record_with_its_reason() {
    let up = Upstream::start(Behaviour::Ok).await;
    let p = Proxy::start(Options::new(up.addr)).await;
    let cases = vec![
        (req("GET", "/nope").body(empty()), 404, "route.not_found"),
        (
            req("DELETE", ACCOUNTS).body(empty()),
            405,
            "route.method_not_allowed",
        ),
        (
            req("GET", "/open-banking/v3.1/aisp/accounts/a%2fb").body(empty()),
            400,
            "path.encoded_separator",
        ),
        (
            req("GET", "/open-banking/v3.1/aisp/accounts/./x").body(empty()),
            400,
            "path.dot_segment",
        ),
        (
            req("GET", ACCOUNTS).header("x_user", "1").body(empty()),
            400,
            "http.header_underscore",
        ),
        (
            req("GET", ACCOUNTS)
                .header("x-http-method-override", "DELETE")
                .body(empty()),
            400,
            "http.method_override",
        ),
        (
            req("GET", ACCOUNTS)
                .header("x-fapi-customer-ip-address", "not-an-ip")
                .body(empty()),
            400,
            "fapi.customer_ip_invalid",
        ),
        (
            req("POST", CONSENTS).body(Full::new(Bytes::from(vec![b'x'; 2048]))),
            413,
            "http.body_too_large",
        ),
        (
            req("GET", ACCOUNTS)
                .header("x-big", "a".repeat(20_000))
                .body(empty()),
            431,
            "http.headers_too_large",
        ),
    ];
    let n = cases.len();
    for (r, status, reason) in cases {
        let (a, id) = p.send(r.unwrap()).await;
        assert_refused(&p, &up, &a, &id, status, reason).await;
    }
    // One failed handshake, one record.
    assert!(handshake_fails(&p, "expired").await);
    let hs = p.audit_where(1, |r| r["kind"] == "tls_handshake").await;
    assert_eq!(hs.len(), 1);
    assert_eq!(hs[0]["failure"], "cert_expired");
    // Nothing else was written: exactly one record per request.
    let requests = p.audit_where(n, |r| r["kind"] == "request").await;
    assert_eq!(requests.len(), n);

    // The upstream's failure is an `error`, still one record.
    let dead = Upstream::dead_addr().await;
    let p = Proxy::start(Options::new(dead)).await;
    let (a, id) = p.get(ACCOUNTS).await;
    assert_eq!(a.status, 502);
    let rec = p.audit_of(&id).await;
    assert_eq!(
        (rec["decision"].as_str(), rec["reason"].as_str()),
        (Some("error"), Some("upstream.connect_failed"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_cookies_signatures_and_bodies_never_reach_the_audit_log() {
    let up = Upstream::start(Behaviour::Ok).await;
    let p = Proxy::start(Options::new(up.addr)).await;
    let secrets = [
        "SECRET-TOKEN-9a7e41",
        "SECRET-COOKIE-51c2aa",
        "SECRET-DPOP-8e0b12",
        "SECRET-JWS-2b6d90",
        "SECRET-BODY-4d1f33",
        "SECRET-QUERY-77aa01",
    ];
    let body = format!("{{\"InstructedAmount\":\"{}\"}}", secrets[4]);
    let with_secrets = |method: &str, path: &str, body: &str| {
        req(method, path)
            .header("authorization", format!("Bearer {}", secrets[0]))
            .header("cookie", format!("session={}", secrets[1]))
            .header("dpop", secrets[2])
            .header(
                "x-jws-signature",
                format!("eyJhbGciOiJQUzI1NiJ9..{}", secrets[3]),
            )
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap()
    };
    let mut ids = Vec::new();
    for (method, path) in [
        ("POST", CONSENTS),
        ("GET", "/nope"),
        ("GET", &*format!("{ACCOUNTS}?token={}", secrets[5])),
    ] {
        let b = if method == "POST" { body.as_str() } else { "" };
        let (_, id) = p.send(with_secrets(method, path, b)).await;
        ids.push(id);
    }
    let post = p.audit_of(&ids[0]).await;
    assert_eq!(post["bytes_in"], body.len());
    assert_eq!(p.audit_of(&ids[2]).await["has_query"], true);
    let raw = std::fs::read(p.dir.path().join("audit.log")).unwrap();
    let text = String::from_utf8_lossy(&raw);
    for s in secrets {
        assert!(!text.contains(s), "{s} reached the audit log:\n{text}");
    }
    for header in [
        "authorization",
        "cookie",
        "dpop",
        "x-jws-signature",
        "Bearer",
    ] {
        assert!(!text.contains(header), "{header} named in the audit log");
    }
}

/// A client certificate from the dev CA whose subject carries hostile characters (a TPP picks
/// the names in its CSR).
fn hostile_identity() -> &'static str {
    static MADE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    MADE.get_or_init(|| {
        let dir = certs();
        let ca_key =
            rcgen::KeyPair::from_pem(&std::fs::read_to_string(dir.join("ca.key")).unwrap())
                .unwrap();
        // The dev CA's name, as dev-certs made it (rcgen here cannot parse a certificate).
        let mut ca = rcgen::CertificateParams::default();
        ca.distinguished_name = rcgen::DistinguishedName::new();
        ca.distinguished_name
            .push(rcgen::DnType::OrganizationName, "portcullis dev");
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "portcullis dev CA");
        ca.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(
            rcgen::DnType::CommonName,
            "evil\u{2028}\"},{\"decision\":\"allow\"}\u{2029}\u{202e}\u{9b}31m",
        );
        dn.push(rcgen::DnType::OrganizationName, "Evil\r\nLtd\u{1b}[2J");
        params.distinguished_name = dn;
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
        params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(30);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        std::fs::write(dir.join("hostile.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("hostile.key"), key.serialize_pem()).unwrap();
    });
    "hostile"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_values_leave_exactly_one_valid_json_line_per_record() {
    let up = Upstream::start(Behaviour::Ok).await;
    let p = Proxy::start(Options::new(up.addr)).await;
    // A subject with U+2028/2029, a bidi override, a C1 CSI, CR/LF, ESC and a forged member.
    let mut c = p.client(Some(hostile_identity()), false).await.unwrap();
    let a = c
        .send(req("GET", ACCOUNTS).body(empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(a.status, 200);
    // Quotes and braces in a path (refused, and recorded as sent).
    let forged = "/open-banking/v3.1/aisp/accounts/\"},{\"decision\":\"allow\"";
    let raw = format!("GET {forged} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    let answer = p.raw(raw.as_bytes(), Duration::from_secs(2)).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    // A path with raw U+2028, C1 CSI and a bidi override (refused as non-ASCII, recorded).
    let raw = b"GET /open-banking/v3.1/aisp/accounts/\xe2\x80\xa8\xc2\x9b\xe2\x80\xae HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let answer = p.raw(raw, Duration::from_secs(2)).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    // Header values with obs-text (U+2028 as UTF-8 bytes) and a 1 MB header.
    let mut raw = b"GET /open-banking/v3.1/aisp/accounts HTTP/1.1\r\nHost: localhost\r\nx-a: \xe2\x80\xa8\xc2\x9b\r\nConnection: close\r\n\r\n".to_vec();
    let answer = p.raw(&raw, Duration::from_secs(2)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    raw = format!(
        "GET {ACCOUNTS} HTTP/1.1\r\nHost: localhost\r\nx-big: {}\r\n\r\n",
        "A".repeat(1 << 20)
    )
    .into_bytes();
    let answer = raw_lenient(&p, &raw).await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "{answer}"
    );

    let recs = p.audit_where(4, |r| r["kind"] == "request").await;
    assert_eq!(recs.len(), 4);
    // The 1 MB header never reached a handler; hyper refused it, and that is recorded too.
    let refused = p.audit_where(1, |r| r["kind"] == "http_error").await;
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(recs.iter().any(|r| r["reason"] == "path.non_ascii"
        && r["path"]
            .as_str()
            .unwrap()
            .ends_with("\u{2028}\u{9b}\u{202e}")));
    let bytes = std::fs::read(p.dir.path().join("audit.log")).unwrap();
    for (needle, what) in [
        (&b"\xe2\x80\xa8"[..], "U+2028"),
        (b"\xe2\x80\xa9", "U+2029"),
        (b"\xe2\x80\xae", "U+202E"),
        (b"\xc2\x9b", "C1 CSI"),
        (b"\x1b", "ESC"),
        (b"\r", "CR"),
    ] {
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle),
            "raw {what} in the audit log"
        );
    }
    let text = String::from_utf8(bytes).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    // One connection record per connection that sent a request (four connections).
    let conns = p
        .raw_audit()
        .iter()
        .filter(|r| r["kind"] == "connection")
        .count();
    assert_eq!(conns, 4);
    assert_eq!(
        lines.len(),
        recs.len() + refused.len() + conns,
        "one line per record"
    );
    for l in &lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        // Requests carry a decision; a request hyper refused itself (the 1 MB header) leaves
        // an `http_error` record with a bounded failure category instead; a connection's
        // facts are in its `connection` record.
        assert!(
            v["decision"].is_string() || v["kind"] == "http_error" || v["kind"] == "connection",
            "{v}"
        );
    }
    let hostile = recs
        .iter()
        .find(|r| {
            r["client_subject"]
                .as_str()
                .is_some_and(|s| s.contains('\u{2028}'))
        })
        .expect("the hostile subject round-trips");
    assert_eq!(hostile["decision"], "allow");
    assert!(text.contains("\\u2028") && text.contains("\\u202e") && text.contains("\\u009b"));
    let quoted = recs.iter().find(|r| r["path"] == forged).unwrap();
    assert_eq!(quoted["decision"], "deny");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_passes_a_rotated_proxy_log_and_names_each_kind_of_tampering() {
    let up = Upstream::start(Behaviour::Ok).await;
    let p = start_audited(
        up.addr,
        FileAudit {
            checkpoint_every: Some(5),
            rotate_bytes: Some(4096),
            ..signed()
        },
        None,
        |_| {},
    )
    .await;
    for i in 0..60 {
        let path = if i % 4 == 3 { "/nope" } else { ACCOUNTS };
        p.get(path).await;
    }
    close(&p);
    let files = log_files(&p);
    assert!(files.len() >= 4, "rotated into several files: {files:?}");
    let public = certs().join("audit.pub").display().to_string();
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    let (code, out) = cli(&verify_args(&public, &names));
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("OK:"), "{out}");

    let outcome = verify::verify_files(
        &files,
        &verify::Options {
            keys: vec![public_key()],
            check_signatures: true,
            anchor: None,
        },
    )
    .unwrap();
    let requests = outcome.records - outcome.checkpoints;
    assert!(requests >= 60, "{outcome}");
    let anchor = outcome.last_checkpoint.clone().unwrap();

    // Each tampering on a copy of the files, checked with the CLI.
    let tamper = |name: &str, f: &dyn Fn(&mut Vec<Vec<String>>)| -> (Vec<String>, String) {
        let d = p.dir.path().join(format!("t-{name}"));
        std::fs::create_dir_all(&d).unwrap();
        let mut contents: Vec<Vec<String>> = files
            .iter()
            .map(|f| {
                std::fs::read_to_string(f)
                    .unwrap()
                    .lines()
                    .map(str::to_string)
                    .collect()
            })
            .collect();
        f(&mut contents);
        let mut out = Vec::new();
        for (i, lines) in contents.iter().enumerate() {
            let path = d.join(files[i].file_name().unwrap());
            let mut text: String = lines.iter().map(|l| format!("{l}\n")).collect();
            if name == "torn" && i + 1 == contents.len() {
                text.truncate(text.len() - 30);
            }
            std::fs::write(&path, text).unwrap();
            out.push(path.display().to_string());
        }
        (out.clone(), d.display().to_string())
    };
    type Tamper = Box<dyn Fn(&mut Vec<Vec<String>>)>;
    let cases: Vec<(&str, &str, Tamper)> = vec![
        (
            "edit",
            "edited",
            // The first request record of the second file (where rotation and checkpoints
            // fall depends on batching, so no fixed line is guaranteed to be a 200).
            Box::new(|c| {
                let i = c[1]
                    .iter()
                    .position(|l| l.contains("\"status\":200"))
                    .expect("a 200 record in the second file");
                c[1][i] = c[1][i].replace("\"status\":200", "\"status\":201");
            }),
        ),
        ("delete", "deleted", Box::new(|c| drop(c[1].remove(3)))),
        (
            "insert",
            "inserted",
            Box::new(|c| {
                let dup = c[1][2].clone();
                c[1].insert(4, dup);
            }),
        ),
        ("reorder", "reordered", Box::new(|c| c[1].swap(2, 3))),
        (
            "cut-earlier-file",
            "truncated",
            Box::new(|c| {
                let n = c[1].len();
                c[1].truncate(n - 2);
            }),
        ),
        ("torn", "truncated", Box::new(|_| {})),
        (
            "forged-checkpoint",
            "bad_signature",
            Box::new(|c| {
                let i = c[0]
                    .iter()
                    .position(|l| l.contains("\"kind\":\"checkpoint\""))
                    .unwrap();
                let l = &c[0][i];
                // Re-hash a changed checkpoint so that only its signature can tell.
                let (prefix, _) = portcullis_audit::split_hash(l.as_bytes()).unwrap();
                let mut canonical = String::from_utf8(prefix.to_vec()).unwrap();
                canonical = canonical.replace("\"dropped_total\":0", "\"dropped_total\":9");
                canonical.push('}');
                let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes());
                use base64::Engine;
                let h = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(d.as_ref());
                canonical.pop();
                c[0][i] = format!("{canonical},\"hash\":\"{h}\"}}");
            }),
        ),
    ];
    for (name, kind, f) in cases {
        let (paths, _) = tamper(name, &*f);
        let (code, out) = cli(&verify_args(&public, &paths));
        assert_eq!(code, 1, "{name}: {out}");
        assert!(
            out.starts_with(&format!("DAMAGED: {kind}")),
            "{name}: {out}"
        );
    }

    // Truncated cleanly before the last checkpoint: the files alone cannot tell, the anchor can.
    let (paths, _) = tamper("cut-before-checkpoint", &|c| {
        let last = c.len() - 1;
        let i = c[last]
            .iter()
            .rposition(|l| l.contains("\"kind\":\"checkpoint\""))
            .unwrap();
        c[last].truncate(i.saturating_sub(1).max(1));
    });
    let (code, out) = cli(&verify_args(&public, &paths));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("cannot be detected"), "{out}");
    let anchor_arg = format!("{}:{}", anchor.seq, anchor.hash);
    let mut args = verify_args(&public, &paths);
    args.extend(["--anchor", &anchor_arg]);
    let (code, out) = cli(&args);
    assert_eq!(code, 1, "{out}");
    assert!(out.starts_with("DAMAGED: missing_anchor"), "{out}");
    let mut args = verify_args(&public, &names);
    args.extend(["--anchor", &anchor_arg]);
    assert_eq!(cli(&args).0, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_requests_leave_one_record_each_in_one_verified_chain() {
    let up = Upstream::start(Behaviour::Ok).await;
    let p = Arc::new(
        start_audited(
            up.addr,
            FileAudit {
                checkpoint_every: Some(10),
                queue_capacity: Some(8),
                ..signed()
            },
            None,
            |_| {},
        )
        .await,
    );
    let n = 80;
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let p = Arc::clone(&p);
            tokio::spawn(async move {
                let path = if i % 3 == 0 { "/nope" } else { ACCOUNTS };
                let mut r = req("GET", path).body(empty()).unwrap();
                let id = uuid::Uuid::new_v4().to_string();
                r.headers_mut()
                    .insert("x-fapi-interaction-id", id.parse().unwrap());
                let mut c = p.client(Some("tpp1"), i % 2 == 0).await.unwrap();
                if i % 2 == 0 {
                    *r.uri_mut() = format!("https://localhost{path}").parse().unwrap();
                    r.headers_mut().remove("host");
                }
                c.send(r).await.unwrap();
                id
            })
        })
        .collect();
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap());
    }
    close(&p);
    let recs: Vec<serde_json::Value> = p
        .audit()
        .into_iter()
        .filter(|r| r["kind"] == "request")
        .collect();
    assert_eq!(recs.len(), n);
    for id in &ids {
        assert_eq!(
            recs.iter()
                .filter(|r| r["interaction_id"] == id.as_str())
                .count(),
            1
        );
    }
    let o = verify::verify_files(
        &log_files(&p),
        &verify::Options {
            keys: vec![public_key()],
            check_signatures: true,
            anchor: None,
        },
    )
    .unwrap();
    assert!(o.ok(), "{o}");
    assert_eq!(
        o.unsigned_tail, 0,
        "the shutdown checkpoint covers everything"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_with_refuse_answers_503_and_reports_what_it_dropped() {
    let up = Upstream::start(Behaviour::Ok).await;
    let sink = Sink::default();
    let p = start_audited(
        up.addr,
        FileAudit {
            queue_capacity: Some(2),
            queue_full: Some("refuse".into()),
            ..audit_to("stdout")
        },
        Some(&sink),
        |_| {},
    )
    .await;
    sink.hold();
    assert_eq!(p.get(ACCOUNTS).await.0.status, 200);
    sink.wait_until_stuck().await;
    for _ in 0..2 {
        assert_eq!(p.get(ACCOUNTS).await.0.status, 200);
    }
    let (a, id) = p.get(ACCOUNTS).await;
    assert_eq!(a.status, 503);
    assert_eq!(a.json()["reason"], "audit.unavailable");
    assert_eq!(a.json()["interaction_id"], id.as_str());
    assert_eq!(
        up.count(),
        3,
        "the refused request never reached the upstream"
    );
    let (_, metrics) = p.admin_get("/metrics").await;
    assert!(
        metrics.contains("portcullis_audit_queue_depth 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("portcullis_audit_records_dropped_total 1"),
        "{metrics}"
    );
    assert!(metrics.contains("portcullis_requests_by_decision_total{decision=\"error\"} 1"));
    sink.release();
    assert!(p.shared.audit.sync(WAIT));
    assert_eq!(p.get(ACCOUNTS).await.0.status, 200);
    assert!(p.shared.audit.sync(WAIT));
    let recs = sink.records();
    assert_eq!(recs.len(), 4, "the admitted requests all have their record");
    let reported: u64 = recs
        .iter()
        .filter_map(|r| r["dropped_before"].as_u64())
        .sum();
    assert_eq!(reported, 1);
    let o = verify::verify_bytes(
        &[(Path::new("stdout"), sink.text().as_bytes())],
        &verify::Options::default(),
    );
    assert!(o.ok(), "{o}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_with_block_holds_the_response_until_the_record_is_queued() {
    let up = Upstream::start(Behaviour::Ok).await;
    let sink = Sink::default();
    let p = Arc::new(
        start_audited(
            up.addr,
            FileAudit {
                queue_capacity: Some(2),
                ..audit_to("stdout")
            },
            Some(&sink),
            |_| {},
        )
        .await,
    );
    sink.hold();
    assert_eq!(p.get(ACCOUNTS).await.0.status, 200);
    sink.wait_until_stuck().await;
    for _ in 0..2 {
        assert_eq!(p.get(ACCOUNTS).await.0.status, 200);
    }
    let blocked = {
        let p = Arc::clone(&p);
        tokio::spawn(async move { p.get(ACCOUNTS).await.0.status })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!blocked.is_finished(), "block waits for room in the queue");
    sink.release();
    assert_eq!(blocked.await.unwrap(), 200);
    assert!(p.shared.audit.sync(WAIT));
    assert_eq!(sink.records().len(), 4);
    assert_eq!(p.shared.audit.stats().unwrap().dropped(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_with_drop_serves_counts_and_reports_the_gap() {
    let up = Upstream::start(Behaviour::Ok).await;
    let sink = Sink::default();
    let p = start_audited(
        up.addr,
        FileAudit {
            queue_capacity: Some(2),
            queue_full: Some("drop".into()),
            ..audit_to("stdout")
        },
        Some(&sink),
        |_| {},
    )
    .await;
    sink.hold();
    assert_eq!(p.get(ACCOUNTS).await.0.status, 200);
    sink.wait_until_stuck().await;
    for _ in 0..4 {
        assert_eq!(p.get(ACCOUNTS).await.0.status, 200);
    }
    let (_, metrics) = p.admin_get("/metrics").await;
    assert!(
        metrics.contains("portcullis_audit_records_dropped_total 2"),
        "{metrics}"
    );
    sink.release();
    assert!(p.shared.audit.sync(WAIT));
    p.get(ACCOUNTS).await;
    assert!(p.shared.audit.sync(WAIT));
    let recs = sink.records();
    assert_eq!(recs.len(), 4);
    let reported: u64 = recs
        .iter()
        .filter_map(|r| r["dropped_before"].as_u64())
        .sum();
    assert_eq!(reported, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_audit_disk_is_counted_unready_and_refused_until_it_recovers() {
    let up = Upstream::start(Behaviour::Ok).await;
    let sink = Sink::default();
    let p = start_audited(
        up.addr,
        FileAudit {
            queue_full: Some("refuse".into()),
            ..audit_to("stdout")
        },
        Some(&sink),
        |_| {},
    )
    .await;
    sink.fail.store(true, Ordering::SeqCst);
    assert_eq!(
        p.get(ACCOUNTS).await.0.status,
        200,
        "admitted before the failure shows"
    );
    for _ in 0..500 {
        if !p.shared.audit.healthy() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (a, refused_id) = p.get(ACCOUNTS).await;
    assert_eq!(a.status, 503);
    assert_eq!(a.json()["reason"], "audit.unavailable");
    assert_eq!(p.admin_get("/readyz").await.0, 503);
    let (_, metrics) = p.admin_get("/metrics").await;
    assert!(
        metrics.contains("portcullis_audit_output_failing 1"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("portcullis_audit_write_errors_total 0"),
        "{metrics}"
    );
    sink.fail.store(false, Ordering::SeqCst);
    assert!(p.shared.audit.sync(WAIT));
    assert_eq!(p.admin_get("/readyz").await.0, 200);
    assert_eq!(p.get(ACCOUNTS).await.0.status, 200);
    assert!(p.shared.audit.sync(WAIT));
    let recs = sink.records();
    assert_eq!(recs.len(), 3, "nothing lost while the disk failed");
    let refused = recs
        .iter()
        .find(|r| r["interaction_id"] == refused_id.as_str())
        .unwrap();
    assert_eq!(refused["reason"], "audit.unavailable");
    assert_eq!(refused["status"], 503);
    let o = verify::verify_bytes(
        &[(Path::new("stdout"), sink.text().as_bytes())],
        &verify::Options::default(),
    );
    assert!(o.ok(), "{o}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_behind_a_file_sink_refuses_under_refuse() {
    if !Path::new("/dev/full").exists() {
        return;
    }
    let up = Upstream::start(Behaviour::Ok).await;
    let p = start_audited(
        up.addr,
        FileAudit {
            path: Some("/dev/full".into()),
            queue_full: Some("refuse".into()),
            ..audit_to("file")
        },
        None,
        |_| {},
    )
    .await;
    p.get(ACCOUNTS).await;
    for _ in 0..500 {
        if !p.shared.audit.healthy() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (a, _) = p.get(ACCOUNTS).await;
    assert_eq!(a.status, 503);
    assert_eq!(a.json()["reason"], "audit.unavailable");
    assert!(p.shared.audit.stats().unwrap().write_errors() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_matches_what_the_clients_did() {
    let up = Upstream::start(Behaviour::Ok).await;
    let p = start_audited(up.addr, signed(), None, |_| {}).await;
    for _ in 0..3 {
        p.get(ACCOUNTS).await;
    }
    for _ in 0..2 {
        p.get("/open-banking/v3.1/aisp/accounts/acc-1").await;
    }
    p.get("/nope").await;
    p.send(
        req("POST", CONSENTS)
            .body(Full::new(Bytes::from(vec![b'x'; 2048])))
            .unwrap(),
    )
    .await;
    let mut c = p.client(Some("tpp2"), false).await.unwrap();
    c.send(req("GET", ACCOUNTS).body(empty()).unwrap())
        .await
        .unwrap();
    assert!(handshake_fails(&p, "expired").await);
    p.audit_where(1, |r| r["kind"] == "tls_handshake").await;
    close(&p);

    let config = p.config_path().display().to_string();
    let log = p.dir.path().join("audit.log").display().to_string();
    let (code, out) = cli(&["audit", "report", "--config", &config, "--json", &log]);
    assert_eq!(code, 0, "{out}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["requests"], 8);
    let client = |org: &str| {
        r["clients"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["org_id"] == org)
            .unwrap_or_else(|| panic!("{org} in {r}"))
            .clone()
    };
    let tpp1 = client("PSDGB-FCA-123456");
    assert_eq!(tpp1["requests"], 7);
    assert_eq!(tpp1["routes"]["accounts.list"]["allowed"], 3);
    assert_eq!(tpp1["routes"]["accounts.get"]["allowed"], 2);
    assert_eq!(tpp1["routes"]["consents.create"]["refused"], 1);
    assert_eq!(tpp1["refusals"]["route.not_found"], 1);
    assert_eq!(tpp1["refusals"]["http.body_too_large"], 1);
    assert!(tpp1["cert_not_after"].as_str().unwrap().ends_with('Z'));
    assert!(tpp1["first_seen"].as_str().unwrap() <= tpp1["last_seen"].as_str().unwrap());
    assert_eq!(tpp1["scopes_granted"], serde_json::json!([]));
    let tpp2 = client("PSDGB-FCA-654321");
    assert_eq!(tpp2["routes"]["accounts.list"]["allowed"], 1);
    assert_eq!(r["handshake_failures"]["cert_expired"], 1);
    assert_eq!(
        r["routes_never_called"],
        serde_json::json!(["public.status"])
    );
    let (code, text) = cli(&["audit", "report", &log]);
    assert_eq!(code, 0);
    assert!(text.contains("client  thumbprint"), "{text}");
    assert!(text.contains("give --config"), "{text}");

    // The HTML page: the same inventory, streamed from the same log plus a hand-made file with
    // a hostile client id (a second file, as rotated logs are given).
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let hostile = p.dir.path().join("hostile.log");
    std::fs::write(
        &hostile,
        concat!(
            r#"{"kind":"request","client_id":"<script>alert(1)</script>","route_id":"accounts.list","decision":"deny","reason":"authz.scope"}"#,
            "\n"
        ),
    )
    .unwrap();
    let html = dir.join("audit-report.html");
    let (code, out) = cli(&[
        "audit",
        "report",
        "--config",
        &config,
        "--html",
        &html.display().to_string(),
        &log,
        &hostile.display().to_string(),
    ]);
    assert_eq!(code, 0, "{out}");
    let page = std::fs::read_to_string(&html).unwrap();
    assert_self_contained_html(&page, 0);
    for text in [
        "<h2>Clients</h2>",
        "PSDGB-FCA-123456",
        "PSDGB-FCA-654321",
        "<h2>Refusals by reason</h2>",
        "<code>route.not_found</code>",
        "<code>http.body_too_large</code>",
        "<h2>Certificate expiry</h2>",
        "<h2>Routes never called</h2>",
        "<code>public.status</code>",
        "<code>cert_expired</code>",
        "<code>accounts.list</code>",
        "&lt;script&gt;alert(1)&lt;/script&gt;",
    ] {
        assert!(page.contains(text), "`{text}` missing");
    }
    let png = dir.join("audit-report.png");
    if let Some(size) = screenshot(&html, &png, p.dir.path()) {
        // A blank 1280 x 2000 page is about 12 KB; this one has tables and plots.
        assert!(size > 40_000, "a {size}-byte screenshot is next to blank");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trace_context_reaches_the_upstream_and_the_record() {
    let up = Upstream::start(Behaviour::Ok).await;
    let p = Proxy::start(Options::new(up.addr)).await;
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (a, id) = p
        .send(
            req("GET", ACCOUNTS)
                .header("traceparent", incoming)
                .header("tracestate", "bank=1")
                .body(empty())
                .unwrap(),
        )
        .await;
    assert_eq!(a.status, 200);
    let seen = &up.seen()[0];
    let sent = seen.headers["traceparent"].to_str().unwrap().to_string();
    assert!(
        sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{sent}"
    );
    assert!(!sent.contains("00f067aa0ba902b7"));
    assert_eq!(seen.headers["tracestate"], "bank=1");
    let rec = p.audit_of(&id).await;
    assert_eq!(rec["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(rec["span_id"].as_str().unwrap(), &sent[36..52]);
    assert_eq!(rec["listener"], p.addr.to_string());

    let (_, id) = p
        .send(
            req("GET", ACCOUNTS)
                .header("traceparent", "00-zz-bad")
                .header("tracestate", "bank=1")
                .body(empty())
                .unwrap(),
        )
        .await;
    let seen = &up.seen()[1];
    let sent = seen.headers["traceparent"].to_str().unwrap().to_string();
    assert!(portcullis_proxy::internals::parse_traceparent(sent.as_bytes()).is_some());
    assert!(!seen.headers.contains_key("tracestate"));
    let rec = p.audit_of(&id).await;
    assert_eq!(rec["trace_id"].as_str().unwrap(), &sent[3..35]);

    // A refusal still has a trace id.
    let (_, id) = p.get("/nope").await;
    assert_eq!(
        p.audit_of(&id).await["trace_id"].as_str().unwrap().len(),
        32
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_decisions_upstream_latency_audit_and_certificate_expiry() {
    let up = Upstream::start(Behaviour::Ok).await;
    let p = Proxy::start(Options::new(up.addr)).await;
    p.get(ACCOUNTS).await;
    p.get("/nope").await;
    p.shared.audit.sync(WAIT);
    let (_, m) = p.admin_get("/metrics").await;
    use rustls_pki_types::pem::PemObject;
    let der = |f: &str| {
        rustls_pki_types::CertificateDer::from_pem_file(certs().join(f))
            .unwrap()
            .to_vec()
    };
    let not_after = |der: &[u8]| {
        let (_, c) = x509_parser::parse_x509_certificate(der).unwrap();
        c.validity().not_after.timestamp()
    };
    let (client, server) = (der("tpp1.pem"), der("server.pem"));
    let thumbprint = portcullis_crypto::pki::thumbprint_s256(&client);
    for want in [
        "portcullis_requests_by_decision_total{decision=\"allow\"} 1".to_string(),
        "portcullis_requests_by_decision_total{decision=\"deny\"} 1".to_string(),
        "portcullis_upstream_duration_seconds_count 1".to_string(),
        "portcullis_audit_queue_capacity 65536".to_string(),
        // Two requests on two connections: two request and two connection records.
        "portcullis_audit_records_written_total 4".to_string(),
        "portcullis_audit_write_seconds_count".to_string(),
    ] {
        assert!(m.contains(&want), "{want} missing in\n{m}");
    }
    // Expiry as a Unix timestamp (Prometheus base units): each certificate's own notAfter.
    for (series, cert) in [
        (
            "portcullis_server_cert_expiry_timestamp_seconds".to_string(),
            &server,
        ),
        (
            format!(
                "portcullis_client_cert_expiry_timestamp_seconds{{thumbprint=\"{thumbprint}\"}}"
            ),
            &client,
        ),
    ] {
        let want = format!("{series} {}", not_after(cert));
        assert!(m.lines().any(|l| l == want), "{want} missing in\n{m}");
    }
}

/// The sealed lines of a file, and a re-sealing as an attacker who knows the format would do
/// it: `seq` and `prev` replaced, the hash recomputed.
fn rechain(lines: &[String], mut seq: u64, mut prev: String) -> Vec<String> {
    use base64::Engine;
    lines
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let (prefix, _) = portcullis_audit::split_hash(l.as_bytes()).unwrap();
            let prefix = String::from_utf8(prefix.to_vec()).unwrap();
            let rest = prefix
                .strip_prefix(&format!("{{\"seq\":{},", v["seq"]))
                .unwrap();
            let old_prev = format!("\"prev\":\"{}\"", v["prev"].as_str().unwrap());
            let body = format!("{{\"seq\":{seq},{rest}")
                .replace(&old_prev, &format!("\"prev\":\"{prev}\""));
            let d = aws_lc_rs::digest::digest(
                &aws_lc_rs::digest::SHA256,
                format!("{body}}}").as_bytes(),
            );
            let h = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(d.as_ref());
            seq += 1;
            prev = h.clone();
            format!("{body},\"hash\":\"{h}\"}}")
        })
        .collect()
}

fn file_records(f: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(f)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Per file: how many `connection` records each connection has, and the connections its
/// requests name; panics on a request whose connection record is not before it in its file.
fn connections_per_file(files: &[PathBuf]) -> Vec<(BTreeMap<u64, usize>, BTreeSet<u64>)> {
    files
        .iter()
        .map(|f| {
            let mut records = BTreeMap::new();
            let mut named = BTreeSet::new();
            for r in file_records(f) {
                if r["kind"] == "connection" {
                    *records.entry(r["conn_id"].as_u64().unwrap()).or_insert(0) += 1;
                }
                if r["kind"] == "request" {
                    let c = r["conn"].as_u64().unwrap_or_else(|| panic!("no conn: {r}"));
                    assert!(records.contains_key(&c), "{}: {r}", f.display());
                    named.insert(c);
                }
            }
            (records, named)
        })
        .collect()
}

use std::collections::{BTreeMap, BTreeSet};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_connection_across_rotated_files_has_its_connection_record_in_each() {
    let up = Upstream::start(Behaviour::Ok).await;
    let p = start_audited(
        up.addr,
        FileAudit {
            checkpoint_every: Some(5),
            rotate_bytes: Some(4096),
            ..signed()
        },
        None,
        |_| {},
    )
    .await;
    let mut c = p.client(Some("tpp1"), false).await.unwrap();
    for _ in 0..60 {
        let a = c
            .send(req("GET", ACCOUNTS).body(empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(a.status, 200);
    }
    close(&p);
    let files = log_files(&p);
    let per_file = connections_per_file(&files);
    let with_requests: Vec<_> = per_file.iter().filter(|(_, n)| !n.is_empty()).collect();
    assert!(with_requests.len() >= 3, "spans 3+ files: {per_file:?}");
    let conn: BTreeSet<u64> = per_file.iter().flat_map(|(_, n)| n.clone()).collect();
    assert_eq!(conn.len(), 1, "one connection: {per_file:?}");
    for (records, named) in with_requests {
        assert_eq!(records.values().sum::<usize>(), 1, "{per_file:?}");
        assert_eq!(
            records.keys().collect::<Vec<_>>(),
            named.iter().collect::<Vec<_>>()
        );
    }
    // Each file verifies alone (retention may leave any one of them).
    let public = certs().join("audit.pub").display().to_string();
    for f in &files {
        let one = [f.display().to_string()];
        let (code, out) = cli(&verify_args(&public, &one));
        assert_eq!(code, 0, "{}: {out}", f.display());
    }
    // The connection's facts, as the kit resolves them, on every request.
    let recs: Vec<_> = p
        .audit()
        .into_iter()
        .filter(|r| r["kind"] == "request")
        .collect();
    assert!(recs.iter().all(|r| r["client_org_id"] == "PSDGB-FCA-123456"
        && r["tls_version"].is_string()
        && r["conn_id"].as_u64() == conn.first().copied()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_http2_streams_on_one_connection_leave_one_connection_record_per_file() {
    let up = Upstream::start(Behaviour::Ok).await;
    let p = start_audited(
        up.addr,
        FileAudit {
            rotate_bytes: Some(8192),
            ..signed()
        },
        None,
        |_| {},
    )
    .await;
    let c = p.client(Some("tpp1"), true).await.unwrap();
    // Three waves of 20 concurrent streams, the log written out between them: the writer
    // rotates only between batches, so one burst could land in a single batch and file.
    for _ in 0..3 {
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let mut s = c.stream_handle().expect("an HTTP/2 connection");
                tokio::spawn(async move {
                    let mut r = req("GET", ACCOUNTS).body(empty()).unwrap();
                    *r.uri_mut() = format!("https://localhost{ACCOUNTS}").parse().unwrap();
                    r.headers_mut().remove("host");
                    s.send(r).await.unwrap().status
                })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap(), 200);
        }
        assert!(p.shared.audit.sync(WAIT));
    }
    close(&p);
    let files = log_files(&p);
    let per_file = connections_per_file(&files);
    let mut requests = 0;
    for (f, (records, named)) in files.iter().zip(&per_file) {
        if named.is_empty() {
            continue;
        }
        assert_eq!(named.len(), 1, "{per_file:?}");
        assert_eq!(
            records.values().sum::<usize>(),
            1,
            "{}: {per_file:?}",
            f.display()
        );
        requests += file_records(f)
            .iter()
            .filter(|r| r["kind"] == "request")
            .count();
    }
    assert_eq!(requests, 60);
    assert!(files.len() >= 2, "rotated: {files:?}");
    let o = verify::verify_files(
        &files,
        &verify::Options {
            keys: vec![public_key()],
            check_signatures: true,
            anchor: None,
        },
    )
    .unwrap();
    assert!(o.ok(), "{o}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_fails_on_a_removed_connection_record_and_on_a_dangling_reference() {
    let up = Upstream::start(Behaviour::Ok).await;
    let p = start_audited(up.addr, signed(), None, |_| {}).await;
    for _ in 0..3 {
        p.get(ACCOUNTS).await;
    }
    close(&p);
    let log = p.dir.path().join("audit.log");
    let lines: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let at = lines
        .iter()
        .rposition(|l| l.contains("\"kind\":\"connection\""))
        .unwrap();
    let public = certs().join("audit.pub").display().to_string();
    let write = |name: &str, ls: &[String]| {
        let f = p.dir.path().join(name);
        std::fs::write(&f, ls.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
        f.display().to_string()
    };
    // Removed: the chain says so.
    let mut cut = lines.clone();
    cut.remove(at);
    let f = [write("cut.log", &cut)];
    let (code, out) = cli(&verify_args(&public, &f));
    assert_eq!(code, 1, "{out}");
    assert!(out.starts_with("DAMAGED: deleted"), "{out}");
    // Removed and the rest re-chained, as whoever can write the file could do up to the next
    // checkpoint: the request's dangling reference says so, with or without signatures.
    let v: serde_json::Value = serde_json::from_str(&lines[at]).unwrap();
    let mut forged = lines[..at].to_vec();
    forged.extend(rechain(
        &lines[at + 1..],
        v["seq"].as_u64().unwrap(),
        v["prev"].as_str().unwrap().to_string(),
    ));
    let f = [write("forged.log", &forged)];
    let no_sig = ["audit", "verify", "--no-signatures", &f[0]];
    for args in [verify_args(&public, &f), no_sig.to_vec()] {
        let (code, out) = cli(&args);
        assert_eq!(code, 1, "{out}");
        assert!(out.starts_with("DAMAGED: dangling_reference"), "{out}");
        assert!(
            out.contains(&format!("names connection {}", v["conn_id"])),
            "{out}"
        );
    }
}

/// Drives the clients of the report test: TPP One's allowed and refused requests (a new
/// connection each) and keep-alive requests, TPP Two's one, an expired certificate's handshake.
async fn report_clients(p: &Proxy) {
    for _ in 0..3 {
        p.get(ACCOUNTS).await;
    }
    p.get("/nope").await;
    p.send(
        req("POST", CONSENTS)
            .body(Full::new(Bytes::from(vec![b'x'; 2048])))
            .unwrap(),
    )
    .await;
    let mut c = p.client(Some("tpp1"), false).await.unwrap();
    for path in [ACCOUNTS, "/open-banking/v3.1/aisp/accounts/acc-1", "/nope"] {
        c.send(req("GET", path).body(empty()).unwrap())
            .await
            .unwrap();
    }
    let mut c = p.client(Some("tpp2"), false).await.unwrap();
    c.send(req("GET", ACCOUNTS).body(empty()).unwrap())
        .await
        .unwrap();
    assert!(handshake_fails(p, "expired").await);
    p.audit_where(1, |r| r["kind"] == "tls_handshake").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_is_the_same_as_before_connection_records() {
    let up = Upstream::start(Behaviour::Ok).await;
    let mut reports = Vec::new();
    let mut requests = Vec::new();
    for inline in [true, false] {
        let audit = FileAudit {
            connection_records: inline.then_some(false),
            ..signed()
        };
        let p = start_audited(up.addr, audit, None, |_| {}).await;
        report_clients(&p).await;
        close(&p);
        let raw = p.raw_audit();
        assert_eq!(
            raw.iter().any(|r| r["kind"] == "connection"),
            !inline,
            "the form asked for"
        );
        let config = p.config_path().display().to_string();
        let log = p.dir.path().join("audit.log").display().to_string();
        let (code, out) = cli(&["audit", "report", "--config", &config, "--json", &log]);
        assert_eq!(code, 0, "{out}");
        let mut r: serde_json::Value = serde_json::from_str(&out).unwrap();
        // The only members that differ between two runs: when the requests were made.
        for c in r["clients"].as_array_mut().unwrap() {
            let c = c.as_object_mut().unwrap();
            assert!(c.remove("first_seen").unwrap().is_string());
            assert!(c.remove("last_seen").unwrap().is_string());
        }
        reports.push(r);
        requests.push(
            p.audit()
                .into_iter()
                .filter(|r| r["kind"] == "request")
                .collect::<Vec<_>>(),
        );
    }
    assert_eq!(reports[0], reports[1]);
    assert_eq!(reports[1]["requests"], 9);
    // Record for record, the resolved form has the members the inline form has, and every
    // member that does not depend on the run has the same value.
    assert_eq!(requests[0].len(), requests[1].len());
    for (a, b) in requests[0].iter().zip(&requests[1]) {
        let keys = |v: &serde_json::Value| {
            v.as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect::<BTreeSet<_>>()
        };
        assert_eq!(keys(a), keys(b), "{a}\n{b}");
        for k in [
            "tls_version",
            "cipher",
            "http_version",
            "client_cert_thumbprint",
            "client_subject",
            "client_org_id",
            "client_cert_not_after",
            "method",
            "path",
            "route_id",
            "decision",
            "reason",
            "status",
        ] {
            assert_eq!(a[k], b[k], "{k}: {a}\n{b}");
        }
        let ip = |v: &serde_json::Value| {
            v["peer"]
                .as_str()
                .unwrap()
                .rsplit_once(':')
                .unwrap()
                .0
                .to_string()
        };
        assert_eq!(ip(a), ip(b));
    }
}
