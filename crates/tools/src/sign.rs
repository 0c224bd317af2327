//! `portcullis sign`: make signed requests by hand with a dev key, to try a setup.
//!
//! - `sign keygen` writes a private key and its JWK set (put the set in the
//!   `signatures.client_keys` directory as `<client>.json`);
//! - `sign jws` prints an OBIE `x-jws-signature` for a body;
//! - `sign http` prints the `Content-Digest`, `Signature-Input` and `Signature` headers of an
//!   RFC 9421 request signature (FAPI 2.0: `@method`, `@target-uri`, `authorization`, `dpop`,
//!   `content-digest`, `tag=fapi-2-request`).
//!
//! Each header is printed as `name: value`, ready for `curl -H`. Dev keys only.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use http::HeaderMap;

use portcullis_crypto::httpsig::digest::{content_digest, DigestAlg};
use portcullis_crypto::httpsig::sign::{component, sign, Params};
use portcullis_crypto::httpsig::{registry_name, Message, RequestView};
use portcullis_crypto::jose::detached::{ob_header, sign_detached, Profile};
use portcullis_crypto::jose::keypair::KeyPair;
use portcullis_crypto::jose::Alg;

#[derive(clap::Subcommand)]
pub enum SignCommand {
    /// Write a dev signing key (`<out>/<kid>.key`, PKCS#8 PEM) and its JWK set
    /// (`<out>/<client>.json`, or `<kid>.jwks.json`).
    Keygen {
        #[arg(long, default_value = "PS256")]
        alg: String,
        #[arg(long, default_value = "k1")]
        kid: String,
        /// Name the JWK set `<client>.json`, ready for a `client_keys` directory.
        #[arg(long)]
        client: Option<String>,
        #[arg(long, default_value = "certs")]
        out: PathBuf,
    },
    /// Print an OBIE `x-jws-signature` for a body (detached JWS).
    Jws {
        /// PEM private key (RSA for PS256).
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        kid: String,
        /// obie-3.1.3 (b64: false) or obie-3.1.4 (no b64).
        #[arg(long, default_value = "obie-3.1.4")]
        profile: String,
        /// http://openbanking.org.uk/iss, e.g. `{org-id}/{software-statement-id}`.
        #[arg(long)]
        iss: String,
        #[arg(long, default_value = "openbanking.org.uk")]
        tan: String,
        /// The body file (`-`: standard input). Signed exactly as read.
        #[arg(long, default_value = "-")]
        body: String,
        /// http://openbanking.org.uk/iat (default: now).
        #[arg(long)]
        iat: Option<i64>,
    },
    /// Print RFC 9421 request-signature headers (FAPI 2.0 message signing).
    Http {
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        kid: String,
        #[arg(long, default_value = "POST")]
        method: String,
        /// The external target URI the proxy sees, e.g. https://localhost:8443/payments.
        #[arg(long)]
        url: String,
        /// The body file (`-`: standard input; none: no body).
        #[arg(long)]
        body: Option<String>,
        /// A request header that will be sent (repeatable), e.g. `authorization: DPoP ...`;
        /// `authorization` and `dpop` are covered when given.
        #[arg(long = "header", short = 'H')]
        headers: Vec<String>,
        #[arg(long, default_value = "fapi-2-request")]
        tag: String,
        #[arg(long)]
        nonce: Option<String>,
        #[arg(long, default_value = "sig1")]
        label: String,
        /// `created` (default: now).
        #[arg(long)]
        created: Option<i64>,
    },
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn read_body(spec: &str) -> Result<Vec<u8>, String> {
    if spec == "-" {
        let mut b = Vec::new();
        std::io::stdin()
            .read_to_end(&mut b)
            .map_err(|e| format!("stdin: {e}"))?;
        Ok(b)
    } else {
        std::fs::read(spec).map_err(|e| format!("{spec}: {e}"))
    }
}

fn load_key(path: &Path, kid: &str) -> Result<KeyPair, String> {
    let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    KeyPair::from_pem(&pem, kid).map_err(|e| format!("{}: {e}", path.display()))
}

/// The lines `sign http` prints, for a request with these facts.
#[allow(clippy::too_many_arguments)]
pub fn http_headers(
    key: &KeyPair,
    method: &str,
    url: &str,
    body: Option<&[u8]>,
    extra: &HeaderMap,
    tag: &str,
    nonce: Option<&str>,
    label: &str,
    created: i64,
) -> Result<Vec<(String, String)>, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("--url: {e}"))?;
    let scheme = uri
        .scheme_str()
        .ok_or("--url must be absolute")?
        .to_ascii_lowercase();
    let authority = portcullis_crypto::httpsig::base::normalize_authority(
        &scheme,
        uri.authority()
            .map(|a| a.as_str())
            .ok_or("--url has no authority")?,
    )
    .ok_or("--url authority is not valid")?;
    let mut headers = extra.clone();
    let mut out = Vec::new();
    let mut comps = vec!["@method", "@target-uri"];
    for h in ["authorization", "dpop"] {
        if headers.contains_key(h) {
            comps.push(h);
        }
    }
    if let Some(b) = body.filter(|b| !b.is_empty()) {
        let d = content_digest(DigestAlg::Sha256, b);
        headers.insert(
            "content-digest",
            d.parse().map_err(|_| "content-digest".to_string())?,
        );
        out.push(("Content-Digest".to_string(), d));
        comps.push("content-digest");
    }
    let view = RequestView {
        method,
        scheme: &scheme,
        authority: &authority,
        path: uri.path(),
        query: uri.query(),
        headers: &headers,
    };
    let comps = comps
        .into_iter()
        .map(|c| component(c, &[], &[]))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{e:?}"))?;
    let (input, signature) = sign(
        label,
        comps,
        &Params {
            created,
            keyid: &key.kid,
            alg: registry_name(key.alg),
            nonce,
            tag: Some(tag),
            ..Params::default()
        },
        Message::Request(&view),
        |m| key.sign(m),
    )
    .map_err(|e| format!("cannot sign: {e:?}"))?;
    out.push(("Signature-Input".to_string(), input));
    out.push(("Signature".to_string(), signature));
    Ok(out)
}

fn run_inner(cmd: SignCommand) -> Result<(), String> {
    match cmd {
        SignCommand::Keygen {
            alg,
            kid,
            client,
            out,
        } => {
            let alg = Alg::from_name(&alg)
                .filter(|a| *a != Alg::RS256)
                .ok_or("--alg must be PS256, ES256 or EdDSA")?;
            let k = KeyPair::generate(alg, &kid).map_err(|e| e.to_string())?;
            std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
            let key_path = out.join(format!("{kid}.key"));
            let set_path = out.join(match &client {
                Some(c) => format!("{c}.json"),
                None => format!("{kid}.jwks.json"),
            });
            std::fs::write(&key_path, k.to_pkcs8_pem())
                .map_err(|e| format!("{}: {e}", key_path.display()))?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let _ = std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600));
            }
            std::fs::write(&set_path, k.jwks().to_string())
                .map_err(|e| format!("{}: {e}", set_path.display()))?;
            println!("{}\n{}", key_path.display(), set_path.display());
        }
        SignCommand::Jws {
            key,
            kid,
            profile,
            iss,
            tan,
            body,
            iat,
        } => {
            let k = load_key(&key, &kid)?;
            let profile =
                Profile::from_name(&profile).ok_or("--profile must be obie-3.1.3 or obie-3.1.4")?;
            let body = read_body(&body)?;
            let header = ob_header(profile, k.alg, &kid, iat.unwrap_or_else(now), &iss, &tan);
            println!(
                "x-jws-signature: {}",
                sign_detached(&header, &body, |m| k.sign(m))
            );
        }
        SignCommand::Http {
            key,
            kid,
            method,
            url,
            body,
            headers,
            tag,
            nonce,
            label,
            created,
        } => {
            let k = load_key(&key, &kid)?;
            let mut extra = HeaderMap::new();
            for h in &headers {
                let (n, v) = h
                    .split_once(':')
                    .ok_or_else(|| format!("-H `{h}`: expected `name: value`"))?;
                let name = http::HeaderName::from_bytes(n.trim().to_ascii_lowercase().as_bytes())
                    .map_err(|_| format!("-H `{h}`: bad name"))?;
                extra.append(
                    name,
                    v.trim()
                        .parse()
                        .map_err(|_| format!("-H `{h}`: bad value"))?,
                );
            }
            let body = body.as_deref().map(read_body).transpose()?;
            for (n, v) in http_headers(
                &k,
                &method,
                &url,
                body.as_deref(),
                &extra,
                &tag,
                nonce.as_deref(),
                &label,
                created.unwrap_or_else(now),
            )? {
                println!("{n}: {v}");
            }
        }
    }
    Ok(())
}

pub fn run(cmd: SignCommand) -> ExitCode {
    match run_inner(cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
