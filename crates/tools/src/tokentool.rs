//! Token tools for people testing their setup: `portcullis token inspect` runs every check the
//! proxy would run on a token and prints each outcome (an opaque token is introspected, as the
//! proxy would); `portcullis dev-token` mints dev keys,
//! access tokens and DPoP proofs (what the demo, the load generator and the tests use).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::{json, Map, Value};

use portcullis_base::json::{numeric_date, parse_object, string, Typed};
use portcullis_crypto::jose::jws::{parse, KeyChoice};
use portcullis_crypto::jose::sign::SigningKey;
use portcullis_crypto::jose::Alg;
use portcullis_policy::RouteAuth;
use portcullis_proxy::config::{Config, Issuer, JwksSource};
use portcullis_sources::discovery::Discovery;
use portcullis_sources::introspect::{is_access_token_type, Introspector};
use portcullis_sources::keys::KeySource;

#[derive(clap::Subcommand)]
pub enum TokenCommand {
    /// Decode an access token and run every check the proxy would run on it, printing each
    /// outcome (the token is not logged anywhere).
    Inspect {
        #[arg(long, short)]
        config: PathBuf,
        /// Check against this route's issuer and profile.
        #[arg(long)]
        route: Option<String>,
        /// Check against this issuer (default: the route's, or the only one).
        #[arg(long)]
        issuer: Option<String>,
        /// The client certificate (PEM) the token will be presented with, for `cnf.x5t#S256`.
        #[arg(long)]
        cert: Option<PathBuf>,
        /// The token (or `-` to read it from standard input).
        token: String,
    },
}

#[derive(clap::Subcommand)]
pub enum DevTokenCommand {
    /// Write a dev authorization-server key (`as.key`, `as-jwks.json`) and a DPoP client key
    /// (`dpop.key`). Dev only.
    Keygen {
        #[arg(long, default_value = "certs")]
        out: PathBuf,
    },
    /// Mint an RFC 9068 access token signed by the dev AS key, bound to a certificate
    /// (`--cert`) or a DPoP key (`--dpop-key`), or unbound.
    Access {
        #[arg(long, default_value = "certs/as.key")]
        key: PathBuf,
        #[arg(long, default_value = "as-1")]
        kid: String,
        #[arg(long, default_value = "https://as.bank.example")]
        issuer: String,
        #[arg(long, default_value = "https://api.bank.example")]
        audience: String,
        #[arg(long, default_value = "tpp-one")]
        client_id: String,
        #[arg(long, default_value = "psu-1")]
        sub: String,
        #[arg(long, default_value = "accounts payments")]
        scope: String,
        /// Lifetime, e.g. 300s or 1h.
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// Bind to this client certificate (PEM): `cnf.x5t#S256`.
        #[arg(long)]
        cert: Option<PathBuf>,
        /// Bind to this DPoP key (PKCS#8 PEM): `cnf.jkt`.
        #[arg(long)]
        dpop_key: Option<PathBuf>,
    },
    /// Make a DPoP proof (RFC 9449) for one request.
    Proof {
        #[arg(long, default_value = "certs/dpop.key")]
        dpop_key: PathBuf,
        #[arg(long, default_value = "GET")]
        method: String,
        /// The target URI without query, e.g. https://localhost:8443/open-banking/v3.1/aisp/accounts.
        #[arg(long)]
        url: String,
        /// The access token the proof accompanies (adds `ath`).
        #[arg(long)]
        token: Option<String>,
    },
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn read_key(path: &Path, kid: &str) -> Result<SigningKey, String> {
    let pem = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    SigningKey::from_pkcs8_pem(&pem, kid).map_err(|e| format!("{}: {e}", path.display()))
}

fn cert_thumbprint(path: &Path) -> Result<String, String> {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_file(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(portcullis_crypto::pki::thumbprint_s256(der.as_ref()))
}

/// Writes the dev AS key, its JWKS and a DPoP client key into `out`.
pub fn keygen(out: &Path) -> Result<(), String> {
    std::fs::create_dir_all(out).map_err(|e| e.to_string())?;
    let write = |name: &str, text: String| {
        let path = out.join(name);
        std::fs::write(&path, text).map_err(|e| format!("{name}: {e}"))?;
        #[cfg(unix)]
        if name.ends_with(".key") {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| format!("{name}: {e}"))?;
        }
        Ok::<(), String>(())
    };
    let as_key = SigningKey::generate(Alg::ES256, "as-1").map_err(|e| e.to_string())?;
    let dpop = SigningKey::generate(Alg::ES256, "dpop").map_err(|e| e.to_string())?;
    write("as.key", as_key.to_pkcs8_pem())?;
    write("as-jwks.json", as_key.jwks().to_string())?;
    write("dpop.key", dpop.to_pkcs8_pem())?;
    Ok(())
}

pub fn run_dev(cmd: DevTokenCommand) -> ExitCode {
    let result = match cmd {
        DevTokenCommand::Keygen { out } => keygen(&out).map(|()| {
            format!(
                "wrote {0}/as.key, {0}/as-jwks.json and {0}/dpop.key (dev only)",
                out.display()
            )
        }),
        DevTokenCommand::Access {
            key,
            kid,
            issuer,
            audience,
            client_id,
            sub,
            scope,
            ttl,
            cert,
            dpop_key,
        } => (|| {
            let k = read_key(&key, &kid)?;
            let ttl = portcullis_base::duration::ConfigDuration::parse(&ttl)?.as_secs() as i64;
            let t = now();
            let mut claims = json!({
                "iss": issuer, "aud": audience, "iat": t, "nbf": t, "exp": t + ttl,
                "client_id": client_id, "sub": sub, "scope": scope,
                "jti": uuid::Uuid::new_v4().to_string(),
            });
            match (cert, dpop_key) {
                (Some(c), None) => claims["cnf"] = json!({"x5t#S256": cert_thumbprint(&c)?}),
                (None, Some(d)) => {
                    claims["cnf"] = json!({"jkt": read_key(&d, "dpop")?.thumbprint()})
                }
                (None, None) => {}
                (Some(_), Some(_)) => return Err("choose --cert or --dpop-key, not both".into()),
            }
            Ok(k.access_token(&claims))
        })(),
        DevTokenCommand::Proof {
            dpop_key,
            method,
            url,
            token,
        } => read_key(&dpop_key, "dpop").map(|k| {
            k.dpop_proof(
                &method,
                &url,
                token.as_deref(),
                now(),
                &uuid::Uuid::new_v4().to_string(),
                None,
            )
        }),
    };
    match result {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("dev-token: {e}");
            ExitCode::from(1)
        }
    }
}

struct Report {
    lines: Vec<String>,
    failed: bool,
}

impl Report {
    fn check(&mut self, name: &str, ok: bool, detail: impl Into<String>) {
        let d = detail.into();
        self.failed |= !ok;
        self.lines.push(format!(
            "  {} {name:<16} {d}",
            if ok { "ok  " } else { "FAIL" }
        ));
    }
}

fn time_claim(
    r: &mut Report,
    m: &Map<String, Value>,
    name: &str,
    f: impl Fn(i64) -> (bool, String),
) {
    match numeric_date(m, name) {
        Typed::Present(v) => {
            let (ok, d) = f(v);
            r.check(name, ok, d);
        }
        Typed::Absent if name == "exp" => r.check(name, false, "missing (required)"),
        Typed::Absent => r.check(name, true, "absent"),
        Typed::WrongType => r.check(name, false, "not a number"),
    }
}

pub async fn run_token(cmd: TokenCommand) -> ExitCode {
    let TokenCommand::Inspect {
        config,
        route,
        issuer,
        cert,
        token,
    } = cmd;
    let token = if token == "-" {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut std::io::stdin(), &mut s);
        s.trim().to_string()
    } else {
        token
    };
    let c = match Config::load(&config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let route = route.and_then(|id| c.policies.routes().iter().find(|r| r.id == id).cloned());
    let auth = route.as_ref().and_then(|r| r.auth.clone());
    let name = issuer
        .or_else(|| auth.as_ref().map(|a| a.issuer.clone()))
        .or_else(|| {
            (c.auth.issuers.len() == 1)
                .then(|| c.auth.issuers.keys().next().cloned())
                .flatten()
        });
    let Some(iss) = name.as_ref().and_then(|n| c.auth.issuers.get(n)) else {
        eprintln!("name an issuer (--issuer) or a route with auth (--route)");
        return ExitCode::from(2);
    };
    let mut r = Report {
        lines: Vec::new(),
        failed: false,
    };
    println!(
        "issuer {} ({}), audience {}",
        iss.name, iss.issuer, iss.audience
    );
    let now = now();
    // The proxy's own routing: with a key set, a compact JWS is verified locally; anything else
    // goes to the introspection endpoint when there is one.
    let compact = token.matches('.').count() == 2;
    let discovery = iss
        .discovery
        .clone()
        .map(|d| std::sync::Arc::new(Discovery::new(d)));
    let keys = match (&iss.jwks, &iss.introspection) {
        (Some(JwksSource::File { keys, .. }), i) if compact || i.is_none() => {
            KeySource::fixed(&iss.name, keys.clone())
        }
        (Some(JwksSource::Url(remote)), i) if compact || i.is_none() => {
            let s = KeySource::discovered(&iss.name, remote.clone(), discovery);
            s.refresh(std::time::Duration::ZERO).await;
            s
        }
        (_, Some(i)) => {
            println!("not a compact JWS: asking the issuer's introspection endpoint (RFC 7662)");
            let answer = Introspector::discovered(i.clone(), discovery)
                .introspect(&token)
                .await;
            match answer {
                Ok(Some(m)) => {
                    r.check("active", true, "true");
                    println!("introspection answer {}", Value::Object(m.clone()));
                    return claim_checks(r, &m, iss, now, cert.as_deref(), auth.as_ref(), true);
                }
                Ok(None) => r.check("active", false, "false: the token is not valid (token.inactive)"),
                Err(_) => r.check(
                    "active",
                    false,
                    "no answer from the endpoint (see the warning above; token.introspection_unavailable)",
                ),
            }
            print_report(&r);
            return ExitCode::from(1);
        }
        (_, None) => {
            eprintln!(
                "issuer {} has no key set and no introspection endpoint",
                iss.name
            );
            return ExitCode::from(2);
        }
    };
    let jws = match parse(&token, &iss.algorithms) {
        Ok(j) => {
            r.check("structure", true, "compact JWS, canonical base64url");
            r.check("alg", true, j.alg.name());
            j
        }
        Err(e) => {
            r.check("structure/alg", false, format!("{e:?}"));
            print_report(&r);
            return ExitCode::from(1);
        }
    };
    println!("header {}", Value::Object(jws.header.clone()));
    r.check(
        "typ",
        !iss.require_typ || jws.typ_is("at+jwt"),
        shown(jws.header.get("typ")),
    );
    r.check(
        "key headers",
        !jws.has_key_carrying_header() && !jws.is_nested(),
        "no jwk/jku/x5u/x5c, not a nested JWT (cty)",
    );
    match jws.kid().map(|k| keys.select(k, Some(jws.alg))) {
        Some(Ok(k)) => {
            r.check(
                "kid",
                true,
                format!("{} ({})", jws.kid().unwrap_or(""), k.alg.name()),
            );
            r.check("signature", jws.verify_with(&k).is_ok(), "");
        }
        Some(Err(KeyChoice::NoKeyForAlg)) => r.check(
            "kid",
            false,
            format!("{:?} names no {} key", jws.kid(), jws.alg.name()),
        ),
        Some(Err(KeyChoice::Ambiguous)) => r.check(
            "kid",
            false,
            format!(
                "{:?} names two {} keys in the issuer's key set",
                jws.kid(),
                jws.alg.name()
            ),
        ),
        Some(Err(KeyChoice::UnknownKid)) | None => r.check(
            "kid",
            false,
            format!("{:?} not in the issuer's key set", jws.kid()),
        ),
    }
    let Some(m) = parse_object(&jws.payload) else {
        r.check("claims", false, "not a JSON object (or duplicate members)");
        print_report(&r);
        return ExitCode::from(1);
    };
    println!("claims {}", Value::Object(m.clone()));
    claim_checks(r, &m, iss, now, cert.as_deref(), auth.as_ref(), false)
}

/// The claim checks the proxy runs on a verified JWT's claims or an introspection answer
/// (`introspected`: RFC 7662 members are checked when present, and `token_type` must name an
/// access token); prints the report and returns the exit code.
fn claim_checks(
    mut r: Report,
    m: &Map<String, Value>,
    iss: &Issuer,
    now: i64,
    cert: Option<&Path>,
    auth: Option<&RouteAuth>,
    introspected: bool,
) -> ExitCode {
    let iss_ok = match string(m, "iss") {
        Typed::Present(i) => i == iss.issuer,
        // RFC 7662 answers may leave `iss` out; a JWT access token may not (RFC 9068).
        Typed::Absent => introspected,
        Typed::WrongType => false,
    };
    r.check("iss", iss_ok, shown(m.get("iss")));
    let aud_ok = match m.get("aud") {
        Some(Value::String(a)) => a == &iss.audience,
        Some(Value::Array(l)) => l.iter().any(|v| v.as_str() == Some(iss.audience.as_str())),
        _ => false,
    };
    r.check("aud", aud_ok, shown(m.get("aud")));
    if introspected {
        let ok = match string(m, "token_type") {
            Typed::Present(t) => is_access_token_type(t),
            Typed::Absent => true,
            Typed::WrongType => false,
        };
        r.check("token_type", ok, shown(m.get("token_type")));
    }
    let skew = iss.skew;
    if introspected && m.get("exp").is_none() {
        r.check(
            "exp",
            true,
            "absent: the answer is reused for the cache TTL",
        );
    } else {
        time_claim(&mut r, m, "exp", |e| {
            (now < e + skew, format!("{e} (now {now}, skew {skew}s)"))
        });
    }
    time_claim(&mut r, m, "nbf", |n| (now + skew >= n, format!("{n}")));
    time_claim(&mut r, m, "iat", |i| {
        (
            i <= now + skew && iss.max_age.is_none_or(|a| i + a >= now),
            format!("{i}"),
        )
    });
    let cnf = m.get("cnf").and_then(Value::as_object);
    let x5t = cnf.and_then(|c| c.get("x5t#S256")).and_then(Value::as_str);
    let jkt = cnf.and_then(|c| c.get("jkt")).and_then(Value::as_str);
    match (x5t, cert) {
        (Some(t), Some(path)) => match cert_thumbprint(path) {
            Ok(have) => r.check(
                "cnf.x5t#S256",
                have == t,
                format!("token {t}, certificate {have}"),
            ),
            Err(e) => r.check("cnf.x5t#S256", false, e),
        },
        (Some(t), None) => r.check(
            "cnf.x5t#S256",
            true,
            format!("{t} (pass --cert to compare)"),
        ),
        (None, _) => {}
    }
    if let Some(j) = jkt {
        r.check(
            "cnf.jkt",
            true,
            format!("{j}: requests need the DPoP scheme and a proof by this key"),
        );
    }
    if let Some(a) = auth {
        let bound = x5t.is_some() || jkt.is_some();
        let ok = match a.profile {
            portcullis_policy::Profile::Bearer => true,
            portcullis_policy::Profile::Fapi2 => bound,
            portcullis_policy::Profile::Fapi1Advanced => x5t.is_some(),
        };
        r.check("profile", ok, format!("route needs {}", a.profile.as_str()));
    }
    print_report(&r);
    if r.failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn shown(v: Option<&Value>) -> String {
    v.map_or_else(|| "absent".to_string(), Value::to_string)
}

fn print_report(r: &Report) {
    println!("checks");
    for l in &r.lines {
        println!("{l}");
    }
    println!(
        "{}",
        if r.failed {
            "result: REFUSED"
        } else {
            "result: accepted"
        }
    );
}
