//! Valid FAPI requests for the load generator: a bound access token per client, a fresh DPoP
//! proof per request, an OBIE detached JWS per body.
//!
//! How it works: [`Fapi::new`] mints each client's token once (signed with the scenario's
//! authorization-server key, bound to the client certificate or to a DPoP key) and prepares
//! everything that does not change per request: the URI, the Host header, the literal headers,
//! the JSON-escaped `htu`, the proof's base64url header with the public JWK. Per request only the
//! changing parts are made: a proof (`jti` random, `iat` now, `htm`/`htu` of the request, `ath`
//! of the token, the latest `DPoP-Nonce` when the server handed one out) signed with the
//! pre-parsed key, `{uuid}` holes, and the JWS. Tokens are re-minted when three quarters of their
//! lifetime have passed, by whichever request notices first; the others keep the current one.
//!
//! The generator shares the machine with the proxy under test, so the per-request work is one
//! signature per proof or JWS and a few small string writes — no JSON trees, no key parsing.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Uri};
use http_body_util::Full;
use serde_json::{json, Map, Value};

use super::scenario::{Binding, ProofMode, Scenario, Text, TokenSpec};
use portcullis_crypto::jose::detached::{ob_header, sign_detached};
use portcullis_crypto::jose::keypair::KeyPair;
use portcullis_crypto::jose::{b64url, sha256_b64url};
use portcullis_tools::client::Answer;

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A fresh random `jti`.
fn jti() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Makes DPoP proofs with one key; the header (with the public JWK) is encoded once.
pub struct Prover {
    key: Arc<KeyPair>,
    header_b64: String,
    /// RFC 7638 thumbprint of the key: the token's `cnf.jkt`.
    pub jkt: String,
}

impl Prover {
    pub fn new(key: Arc<KeyPair>) -> Result<Prover, String> {
        let full = key.public_jwk();
        let mut jwk = Map::new();
        for m in ["kty", "crv", "x", "y", "n", "e"] {
            if let Some(v) = full.get(m) {
                jwk.insert(m.into(), v.clone());
            }
        }
        let jkt = portcullis_crypto::jose::jwk::from_jwk(&jwk)
            .map_err(|e| format!("DPoP key: {e:?}"))?
            .thumbprint;
        let header = json!({"typ": "dpop+jwt", "alg": key.alg.name(), "jwk": Value::Object(jwk)});
        Ok(Prover {
            header_b64: b64url(header.to_string().as_bytes()),
            key,
            jkt,
        })
    }

    /// One proof (RFC 9449 §4.2). `htu_json` is the `htu` already written as a JSON string.
    pub fn proof(
        &self,
        htm: &str,
        htu_json: &str,
        ath: &str,
        nonce: Option<&str>,
        iat: i64,
        jti: &str,
    ) -> String {
        let nonce = nonce.map_or(String::new(), |n| {
            format!(",\"nonce\":{}", Value::String(n.into()))
        });
        let claims = format!(
            "{{\"jti\":\"{jti}\",\"htm\":\"{htm}\",\"htu\":{htu_json},\"iat\":{iat},\"ath\":\"{ath}\"{nonce}}}"
        );
        let mut out = String::with_capacity(self.header_b64.len() + claims.len() * 4 / 3 + 100);
        out.push_str(&self.header_b64);
        out.push('.');
        out.push_str(&b64url(claims.as_bytes()));
        let sig = self.key.sign(out.as_bytes());
        out.push('.');
        out.push_str(&b64url(&sig));
        out
    }
}

/// A minted token and what every request needs from it.
struct Minted {
    authorization: HeaderValue,
    /// `ath`: base64url SHA-256 of the token.
    ath: String,
    /// When to mint the next one (unix seconds).
    refresh_at: i64,
}

struct TokenState {
    current: ArcSwap<Minted>,
    refreshing: AtomicBool,
    prover: Option<Prover>,
}

/// Signs an RFC 9068 access token for `spec` (bound as it says) at `iat`; a certificate-bound
/// token needs `cert_thumbprint`.
pub fn mint(
    spec: &TokenSpec,
    cert_thumbprint: Option<&str>,
    jkt: Option<&str>,
    iat: i64,
) -> Result<String, String> {
    let lifetime = spec.lifetime.as_secs() as i64;
    let mut claims = Map::new();
    claims.insert("iss".into(), Value::String(spec.issuer.clone()));
    claims.insert("aud".into(), Value::String(spec.audience.clone()));
    claims.insert("sub".into(), Value::String(spec.subject.clone()));
    claims.insert("client_id".into(), Value::String(spec.client_id.clone()));
    if !spec.scope.is_empty() {
        claims.insert("scope".into(), Value::String(spec.scope.clone()));
    }
    claims.insert("iat".into(), Value::from(iat));
    claims.insert("nbf".into(), Value::from(iat));
    claims.insert("exp".into(), Value::from(iat + lifetime));
    claims.insert("jti".into(), Value::String(jti()));
    match (&spec.binding, jkt) {
        (Binding::Cert, _) => {
            let x5t = cert_thumbprint.ok_or("a certificate-bound token needs a certificate")?;
            claims.insert("cnf".into(), json!({"x5t#S256": x5t}));
        }
        (Binding::Dpop(_), Some(j)) => {
            claims.insert("cnf".into(), json!({"jkt": j}));
        }
        (Binding::Dpop(_), None) => return Err("a DPoP-bound token needs the key".into()),
        (Binding::None, _) => {}
    }
    for (k, v) in &spec.claims {
        claims.insert(k.clone(), v.clone());
    }
    let header = json!({"alg": spec.key.alg.name(), "typ": "at+jwt", "kid": spec.key.kid});
    let input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(Value::Object(claims).to_string().as_bytes())
    );
    let sig = spec.key.sign(input.as_bytes());
    if sig.is_empty() {
        return Err("the authorization-server key could not sign".into());
    }
    Ok(format!("{input}.{}", b64url(&sig)))
}

/// Why a request could not be made.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the request: {0}")]
pub struct BuildError(String);

struct PreparedRoute {
    uri: Uri,
    /// The next `{n}` of a numbered path.
    next: AtomicU64,
    htu_json: String,
    /// `dpop_proof: replay`: the proof of the route's first request, per client.
    replayed: Vec<std::sync::OnceLock<HeaderValue>>,
    /// Literal headers as values; headers with `{uuid}` holes are rendered per request.
    literal: Vec<(HeaderName, HeaderValue)>,
    templated: Vec<(HeaderName, Text)>,
}

/// Builds the requests of one scenario.
pub struct Fapi {
    scenario: Arc<Scenario>,
    host: Option<HeaderValue>,
    routes: Vec<PreparedRoute>,
    tokens: Vec<Option<TokenState>>,
    /// The newest `DPoP-Nonce` the server handed out.
    nonce: ArcSwapOption<String>,
    pub tokens_minted: AtomicU64,
}

const X_JWS_SIGNATURE: HeaderName = HeaderName::from_static("x-jws-signature");
const DPOP: HeaderName = HeaderName::from_static("dpop");

impl Fapi {
    /// Prepares the routes and mints every client's token.
    pub fn new(scenario: Arc<Scenario>) -> Result<Fapi, BuildError> {
        let http2 = scenario.load.http2;
        let t = &scenario.target;
        let host = if http2 {
            None
        } else {
            Some(HeaderValue::from_str(&t.host).map_err(|_| BuildError("bad host".into()))?)
        };
        let mut routes = Vec::new();
        for r in &scenario.routes {
            // A numbered path's URI is made per request; this one (number 0) is not sent.
            let path = r.path.replace(super::scenario::SEQ_HOLE, "0");
            let uri = if http2 {
                format!("https://{}{path}", t.host)
            } else {
                path
            };
            let uri: Uri = uri.parse().map_err(|e| BuildError(format!("{e}")))?;
            let mut literal = Vec::new();
            let mut templated = Vec::new();
            for (n, v) in &r.headers {
                let bytes = v.render();
                if *v == Text::literal(&bytes) {
                    let value = HeaderValue::from_maybe_shared(bytes)
                        .map_err(|_| BuildError(format!("header {n}")))?;
                    literal.push((n.clone(), value));
                } else {
                    templated.push((n.clone(), v.clone()));
                }
            }
            routes.push(PreparedRoute {
                uri,
                next: AtomicU64::new(0),
                htu_json: Value::String(r.htu.clone()).to_string(),
                replayed: scenario
                    .clients
                    .iter()
                    .map(|_| std::sync::OnceLock::new())
                    .collect(),
                literal,
                templated,
            });
        }
        let fapi = Fapi {
            host,
            routes,
            tokens: Vec::new(),
            nonce: ArcSwapOption::empty(),
            tokens_minted: AtomicU64::new(0),
            scenario: Arc::clone(&scenario),
        };
        let mut tokens = Vec::new();
        for c in &scenario.clients {
            let Some(spec) = &c.token else {
                tokens.push(None);
                continue;
            };
            let prover = match &spec.binding {
                Binding::Dpop(k) => Some(Prover::new(Arc::clone(k)).map_err(BuildError)?),
                _ => None,
            };
            let minted = fapi.mint_for(spec, c.cert_thumbprint.as_deref(), prover.as_ref())?;
            tokens.push(Some(TokenState {
                current: ArcSwap::from_pointee(minted),
                refreshing: AtomicBool::new(false),
                prover,
            }));
        }
        Ok(Fapi { tokens, ..fapi })
    }

    fn mint_for(
        &self,
        spec: &TokenSpec,
        thumbprint: Option<&str>,
        prover: Option<&Prover>,
    ) -> Result<Minted, BuildError> {
        let iat = now();
        let token =
            mint(spec, thumbprint, prover.map(|p| p.jkt.as_str()), iat).map_err(BuildError)?;
        self.tokens_minted.fetch_add(1, Ordering::Relaxed);
        let scheme = if prover.is_some() { "DPoP" } else { "Bearer" };
        Ok(Minted {
            authorization: HeaderValue::from_str(&format!("{scheme} {token}"))
                .map_err(|_| BuildError("token is not a header value".into()))?,
            ath: sha256_b64url(token.as_bytes()),
            refresh_at: if spec.refresh_on_expiry {
                i64::MAX
            } else {
                iat + spec.lifetime.as_secs() as i64 * 3 / 4
            },
        })
    }

    /// The client's current token, minting a new one first when it is due.
    fn token(&self, client: usize, now: i64) -> Option<(Arc<Minted>, Option<&Prover>)> {
        let state = self.tokens.get(client)?.as_ref()?;
        let mut current = state.current.load_full();
        if now >= current.refresh_at
            && state
                .refreshing
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            let c = &self.scenario.clients[client];
            if let Some(spec) = &c.token {
                if let Ok(m) =
                    self.mint_for(spec, c.cert_thumbprint.as_deref(), state.prover.as_ref())
                {
                    state.current.store(Arc::new(m));
                    current = state.current.load_full();
                }
            }
            state.refreshing.store(false, Ordering::Release);
        }
        Some((current, state.prover.as_ref()))
    }

    /// Whether this client's token is re-minted only when refused as expired.
    pub fn refreshes_on_expiry(&self, client: usize) -> bool {
        self.scenario
            .clients
            .get(client)
            .and_then(|c| c.token.as_ref())
            .is_some_and(|t| t.refresh_on_expiry)
    }

    /// Mints a new token for `client` now (its current one was refused as expired); a
    /// refresh already under way elsewhere is left to finish.
    pub fn refresh(&self, client: usize) {
        let Some(state) = self.tokens.get(client).and_then(Option::as_ref) else {
            return;
        };
        if state
            .refreshing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return;
        }
        let c = &self.scenario.clients[client];
        if let Some(spec) = &c.token {
            if let Ok(m) = self.mint_for(spec, c.cert_thumbprint.as_deref(), state.prover.as_ref())
            {
                state.current.store(Arc::new(m));
            }
        }
        state.refreshing.store(false, Ordering::Release);
    }

    /// Whether this client's requests carry DPoP proofs.
    pub fn uses_dpop(&self, client: usize) -> bool {
        self.tokens
            .get(client)
            .and_then(Option::as_ref)
            .is_some_and(|t| t.prover.is_some())
    }

    /// One request of `route` as `client`.
    pub fn request(&self, route: usize, client: usize) -> Result<Request<Full<Bytes>>, BuildError> {
        let r = &self.scenario.routes[route];
        let prepared = &self.routes[route];
        let now = now();
        let body = r.body.as_ref().map_or_else(Bytes::new, Text::render);
        let mut req = Request::new(Full::new(body.clone()));
        *req.method_mut() = r.method.clone();
        // A numbered path (attack scenarios) is made per request: its URI and its DPoP htu.
        let numbered = if r.numbered {
            let n = prepared.next.fetch_add(1, Ordering::Relaxed);
            let path = r.path.replace(super::scenario::SEQ_HOLE, &n.to_string());
            let t = &self.scenario.target;
            let uri = if self.scenario.load.http2 {
                format!("https://{}{path}", t.host)
            } else {
                path.clone()
            };
            let uri: Uri = uri.parse().map_err(|e| BuildError(format!("{e}")))?;
            let htu = portcullis_crypto::jose::dpop::normalize_htu(&format!(
                "{}{}",
                t.base_url,
                uri.path()
            ))
            .ok_or_else(|| BuildError("htu".into()))?;
            Some((uri, Value::String(htu).to_string()))
        } else {
            None
        };
        let (uri, htu_json) = match &numbered {
            Some((uri, htu)) => (uri, htu.as_str()),
            None => (&prepared.uri, prepared.htu_json.as_str()),
        };
        *req.uri_mut() = uri.clone();
        let h = req.headers_mut();
        if let Some(host) = &self.host {
            h.insert(http::header::HOST, host.clone());
        }
        if let Some((minted, prover)) = self.token(client, now) {
            h.insert(http::header::AUTHORIZATION, minted.authorization.clone());
            if let Some(p) = prover.filter(|_| r.dpop_proof != ProofMode::None) {
                let fresh = || {
                    let nonce = self.nonce.load();
                    let proof = p.proof(
                        r.method.as_str(),
                        htu_json,
                        &minted.ath,
                        nonce.as_deref().map(String::as_str),
                        now,
                        &jti(),
                    );
                    HeaderValue::from_str(&proof).map_err(|_| BuildError("proof".into()))
                };
                let value = match r.dpop_proof {
                    // The first proof made is kept (a racing second one is dropped unsent).
                    ProofMode::Replay => {
                        let slot = &prepared.replayed[client];
                        match slot.get() {
                            Some(v) => v.clone(),
                            None => {
                                let v = fresh()?;
                                slot.get_or_init(|| v).clone()
                            }
                        }
                    }
                    _ => fresh()?,
                };
                h.insert(DPOP, value);
            }
        }
        for (n, v) in &prepared.literal {
            h.append(n.clone(), v.clone());
        }
        for (n, t) in &prepared.templated {
            let v = HeaderValue::from_maybe_shared(t.render())
                .map_err(|_| BuildError(format!("header {n}")))?;
            h.append(n.clone(), v);
        }
        if let Some(j) = &r.jws {
            let header = ob_header(j.profile, j.key.alg, &j.key.kid, now, &j.iss, &j.tan);
            let sig = sign_detached(&header, &body, |m| j.key.sign(m));
            h.insert(
                X_JWS_SIGNATURE,
                HeaderValue::from_str(&sig).map_err(|_| BuildError("jws".into()))?,
            );
        }
        Ok(req)
    }

    /// Takes note of an answer: keeps a `DPoP-Nonce` it hands out. Returns whether the request
    /// should be sent again at once with a new proof (401 `use_dpop_nonce`, RFC 9449 §8).
    pub fn observe(&self, a: &Answer) -> bool {
        let Some(n) = a.headers.get("dpop-nonce").and_then(|v| v.to_str().ok()) else {
            return false;
        };
        if self.nonce.load().as_deref().map(String::as_str) != Some(n) {
            self.nonce.store(Some(Arc::new(n.to_string())));
        }
        a.status == http::StatusCode::UNAUTHORIZED
            && a.headers
                .get_all(http::header::WWW_AUTHENTICATE)
                .iter()
                .any(|v| v.to_str().is_ok_and(|s| s.contains("use_dpop_nonce")))
    }
}

#[cfg(test)]
mod tests;
