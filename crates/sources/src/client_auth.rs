//! How the proxy proves who it is to a control-plane API that wants an access token: a bearer
//! token from a file a secret manager rotates, or an OAuth 2.0 client credentials grant
//! (RFC 6749 §4.4) against the operator's authorization server.
//!
//! Neither token is ever logged: failures name the file or the token endpoint's status and
//! OAuth `error` code only.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use serde_json::Value;

use crate::https::{form_encode, oauth_error, oauth_form_post, ClientAuth};

/// How often a token file is looked at: a rotated token is in use within about a second, and a
/// busy proxy does not stat the file on every request.
const FILE_CHECK: Duration = Duration::from_secs(1);

/// A token answer is small; anything bigger is not one.
const MAX_BODY: usize = 64 * 1024;

/// RFC 6750 §2.1 `b64token`: the only tokens that can travel in `Authorization: Bearer`.
pub fn is_b64token(t: &str) -> bool {
    let body = t.trim_end_matches('=');
    !body.is_empty()
        && t.len() <= 16 * 1024
        && body.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
        })
}

/// A bearer token kept in a file (a mounted secret): re-read when the file's modification time
/// or length changes, so a rotation takes effect without a config reload.
pub struct TokenFile {
    path: PathBuf,
    state: Mutex<FileState>,
}

#[derive(Default)]
struct FileState {
    checked: Option<Instant>,
    stamp: Option<(Option<SystemTime>, u64)>,
    token: Option<String>,
}

impl TokenFile {
    pub fn new(path: PathBuf) -> TokenFile {
        TokenFile {
            path,
            state: Mutex::new(FileState::default()),
        }
    }

    /// The token the file holds now; `None` when it is missing, empty or not a `b64token`.
    pub fn token(&self) -> Option<String> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.checked.is_some_and(|t| t.elapsed() < FILE_CHECK) {
            return s.token.clone();
        }
        s.checked = Some(Instant::now());
        let Ok(meta) = std::fs::metadata(&self.path) else {
            s.stamp = None;
            s.token = None;
            return None;
        };
        let stamp = (meta.modified().ok(), meta.len());
        if s.stamp != Some(stamp) {
            s.stamp = Some(stamp);
            s.token = std::fs::read_to_string(&self.path)
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| is_b64token(t));
        }
        s.token.clone()
    }

    /// The service refused the token: look at the file again on the next call.
    pub fn recheck(&self) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.checked = None;
        s.stamp = None;
    }
}

/// Where and how to ask for a client credentials token.
#[derive(Clone)]
pub struct TokenEndpoint {
    pub uri: http::Uri,
    /// Trust for the endpoint (and the client certificate, for `tls_client_auth`).
    pub tls: Arc<rustls::ClientConfig>,
    pub auth: ClientAuth,
    /// The `scope` to ask for, if any.
    pub scope: Option<String>,
    pub timeout: Duration,
}

/// Why no token could be had.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenFailure {
    Request,
    Timeout,
    Connect,
    /// A non-200 answer, with the OAuth `error` code when the body has a printable one.
    Status(http::StatusCode, Option<String>),
    Body,
    /// Not a JSON object with a `b64token` `access_token` of `token_type` Bearer.
    NotAToken,
}

impl std::fmt::Display for TokenFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("token request: ")?;
        match self {
            TokenFailure::Request => f.write_str("the request could not be built"),
            TokenFailure::Timeout => f.write_str("no answer in time"),
            TokenFailure::Connect => f.write_str("connection or TLS failure"),
            TokenFailure::Status(s, Some(e)) => write!(f, "status {}, error {e}", s.as_u16()),
            TokenFailure::Status(s, None) => write!(f, "status {}", s.as_u16()),
            TokenFailure::Body => f.write_str("the answer body could not be read"),
            TokenFailure::NotAToken => {
                f.write_str("the answer is not a Bearer access_token (RFC 6749 §5.1)")
            }
        }
    }
}

/// A failed token request is not retried for this long: every lookup in that second fails
/// closed at once instead of queueing behind another doomed request.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Without `expires_in` (RFC 6749 §5.1 makes it optional), a token is reused this long.
const DEFAULT_LIFETIME: u64 = 60;

#[derive(Default)]
struct Cached {
    token: Option<(String, Instant)>,
    failed: Option<(Instant, TokenFailure)>,
}

/// Client credentials tokens, cached until shortly before they expire; one request at a time.
pub struct ClientCredentials {
    endpoint: TokenEndpoint,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    cached: tokio::sync::Mutex<Cached>,
    /// Token requests sent.
    pub requests: AtomicU64,
}

impl ClientCredentials {
    pub fn new(endpoint: TokenEndpoint) -> ClientCredentials {
        ClientCredentials {
            client: crate::https::pinned_https_client(&endpoint.tls, endpoint.timeout),
            endpoint,
            cached: tokio::sync::Mutex::new(Cached::default()),
            requests: AtomicU64::new(0),
        }
    }

    /// A token still good for a while: the cached one, or a new one. Concurrent callers wait
    /// for the one request in flight (single flight) rather than each asking.
    pub async fn token(&self) -> Result<String, TokenFailure> {
        let mut c = self.cached.lock().await;
        if let Some((t, until)) = &c.token {
            if Instant::now() < *until {
                return Ok(t.clone());
            }
        }
        if let Some((at, why)) = &c.failed {
            if at.elapsed() < RETRY_AFTER {
                return Err(why.clone());
            }
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
        match self.request().await {
            Ok((token, lifetime)) => {
                // Renewed a little early, so a token is not presented in its last seconds.
                let early = (lifetime / 5).min(30);
                let until = Instant::now() + Duration::from_secs(lifetime - early);
                c.token = Some((token.clone(), until));
                c.failed = None;
                Ok(token)
            }
            Err(why) => {
                c.token = None;
                c.failed = Some((Instant::now(), why.clone()));
                Err(why)
            }
        }
    }

    /// The service refused `token`: ask for a new one next time.
    pub async fn forget(&self, token: &str) {
        let mut c = self.cached.lock().await;
        if c.token.as_ref().is_some_and(|(t, _)| t == token) {
            c.token = None;
        }
    }

    async fn request(&self) -> Result<(String, u64), TokenFailure> {
        let e = &self.endpoint;
        let mut body = "grant_type=client_credentials".to_string();
        if let Some(scope) = &e.scope {
            body.push_str("&scope=");
            body.push_str(&form_encode(scope));
        }
        let req =
            oauth_form_post(e.uri.clone(), body, &e.auth).map_err(|_| TokenFailure::Request)?;
        let resp = tokio::time::timeout(e.timeout, self.client.request(req))
            .await
            .map_err(|_| TokenFailure::Timeout)?
            .map_err(|_| TokenFailure::Connect)?;
        let status = resp.status();
        let bytes = tokio::time::timeout(
            e.timeout,
            Limited::new(resp.into_body(), MAX_BODY).collect(),
        )
        .await
        .map_err(|_| TokenFailure::Timeout)?
        .map_err(|_| TokenFailure::Body)?
        .to_bytes();
        if status != http::StatusCode::OK {
            return Err(TokenFailure::Status(status, oauth_error(&bytes)));
        }
        token_answer(&bytes).ok_or(TokenFailure::NotAToken)
    }
}

/// The access token and its lifetime in seconds from an RFC 6749 §5.1 answer.
fn token_answer(body: &[u8]) -> Option<(String, u64)> {
    let m = portcullis_base::json::parse_object(body)?;
    let token = m.get("access_token")?.as_str()?;
    let bearer = m
        .get("token_type")?
        .as_str()?
        .eq_ignore_ascii_case("bearer");
    let lifetime = match m.get("expires_in") {
        None | Some(Value::Null) => DEFAULT_LIFETIME,
        Some(v) => v.as_u64()?.min(86_400),
    };
    (bearer && is_b64token(token)).then(|| (token.to_string(), lifetime))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_answer_is_a_bearer_b64token_with_an_optional_lifetime() {
        assert_eq!(
            token_answer(
                br#"{"access_token":"abc.DEF-_~+/==","token_type":"bearer","expires_in":300}"#
            ),
            Some(("abc.DEF-_~+/==".into(), 300))
        );
        assert_eq!(
            token_answer(br#"{"access_token":"t","token_type":"Bearer"}"#),
            Some(("t".into(), DEFAULT_LIFETIME))
        );
        for bad in [
            &br#"{"access_token":"t","token_type":"DPoP","expires_in":300}"#[..],
            br#"{"access_token":"a b","token_type":"Bearer"}"#,
            br#"{"access_token":"t\r\nX: y","token_type":"Bearer"}"#,
            br#"{"access_token":"","token_type":"Bearer"}"#,
            br#"{"access_token":"t","token_type":"Bearer","expires_in":-1}"#,
            br#"{"access_token":"t","token_type":"Bearer","expires_in":"300"}"#,
            br#"{"token_type":"Bearer"}"#,
            br#"{"access_token":"t"}"#,
            b"[]",
            b"",
        ] {
            assert_eq!(token_answer(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn a_token_file_is_reread_when_it_changes_and_unusable_contents_give_no_token() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("token");
        std::fs::write(&p, "first\n").unwrap();
        let f = TokenFile::new(p.clone());
        assert_eq!(f.token().as_deref(), Some("first"));
        std::fs::write(&p, "second-token").unwrap();
        // Within the second the answer is the one already read...
        assert_eq!(f.token().as_deref(), Some("first"));
        // ...and after it (or when the service refused the token) the file is looked at again.
        f.recheck();
        assert_eq!(f.token().as_deref(), Some("second-token"));
        for bad in ["", "   \n", "two words", "x\ny"] {
            std::fs::write(&p, bad).unwrap();
            f.recheck();
            assert_eq!(f.token(), None, "{bad:?}");
        }
        std::fs::remove_file(&p).unwrap();
        f.recheck();
        assert_eq!(f.token(), None);
    }

    #[test]
    fn a_failure_names_the_status_and_oauth_code_only() {
        let s = TokenFailure::Status(
            http::StatusCode::UNAUTHORIZED,
            Some("invalid_client".into()),
        );
        assert_eq!(
            s.to_string(),
            "token request: status 401, error invalid_client"
        );
    }
}
