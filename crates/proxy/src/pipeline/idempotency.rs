//! Idempotency keys on routes that ask for them (see [`portcullis_state::idempotency`]): the
//! client-scoped key is reserved, or a stored answer replayed, after authorization; the
//! upstream's answer is stored under the key ([`settle`]).

portcullis_base::variants! {
    /// Why a request was refused by the idempotency stage.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum IdempotencyError {
        /// The route requires a key and none was sent.
        KeyMissing,
        /// The key is empty, too long, not printable ASCII, or sent twice.
        KeyInvalid,
        /// A request with this key is still being processed.
        InFlight,
        /// The key was used with another method, path or body.
        Mismatch,
        /// The store cannot be reached: fail closed.
        Unavailable,
    }
}

impl IdempotencyError {
    /// What the audit record says of the key, where the refusal concerns a key the store knows.
    pub fn label(self) -> Option<&'static str> {
        match self {
            IdempotencyError::KeyMissing | IdempotencyError::KeyInvalid => None,
            IdempotencyError::InFlight => Some("in_flight"),
            IdempotencyError::Mismatch => Some("mismatch"),
            IdempotencyError::Unavailable => Some("unavailable"),
        }
    }
}

portcullis_base::variants! {
    /// The statuses an idempotency refusal is answered with (the body follows the route's
    /// `errors`).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Dialect {
        /// RFC 9457 problem+json with the IETF draft's statuses (400, 409, 422, 503).
        Ietf,
        /// OBIE routes (`errors: obie`): a reused key is 400 `UK.OBIE.Header.Invalid` there.
        Obie,
    }
}

impl Dialect {
    pub fn of(route: &portcullis_policy::Route) -> Dialect {
        match route.errors {
            portcullis_policy::ErrorDialect::Obie => Dialect::Obie,
            portcullis_policy::ErrorDialect::Problem => Dialect::Ietf,
        }
    }
}

use std::sync::Arc;

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body_util::BodyExt;

use super::authz::Permit;
use super::binding::BoundToken;
use super::identity::ClientIdentity;
use portcullis_policy::{IdempotencyMode, Route};
use portcullis_state::idempotency::{Begin, IdempotencyConfig, IdempotencyStore, StoredResponse};

/// OBIE `x-idempotency-key` is at most 40 characters.
pub(crate) const MAX_KEY: usize = 40;

/// The header that marks a replayed response.
pub(crate) const REPLAY_HEADER: &str = "x-idempotent-replay";

/// The key the client sent: `x-idempotency-key` (OBIE) or `Idempotency-Key` (IETF draft);
/// both may be sent only with the same value.
pub(crate) fn key(parts: &Parts) -> Result<Option<String>, IdempotencyError> {
    let mut found: Option<&[u8]> = None;
    for name in ["x-idempotency-key", "idempotency-key"] {
        for v in parts.headers.get_all(name) {
            match found {
                Some(f) if f != v.as_bytes() => return Err(IdempotencyError::KeyInvalid),
                _ => found = Some(v.as_bytes()),
            }
        }
    }
    let Some(k) = found else { return Ok(None) };
    let printable = k.iter().all(|b| (0x20..0x7f).contains(b));
    if k.is_empty() || k.len() > MAX_KEY || !printable || k[0] == b' ' || k[k.len() - 1] == b' ' {
        return Err(IdempotencyError::KeyInvalid);
    }
    Ok(Some(String::from_utf8_lossy(k).into_owned()))
}

/// SHA-256 over method, path, query and SHA-256 of the raw body bytes (semantically equal JSON
/// with other bytes is another request; so is the same body with another query).
pub(crate) fn fingerprint(parts: &Parts, body: &[u8]) -> [u8; 32] {
    let mut m = Vec::new();
    m.extend_from_slice(parts.method.as_str().as_bytes());
    m.push(0);
    m.extend_from_slice(parts.uri.path().as_bytes());
    m.push(0);
    // `?` marks a query (even an empty one), so `/p` and `/p?` differ as the upstream sees them.
    if let Some(q) = parts.uri.query() {
        m.push(b'?');
        m.extend_from_slice(q.as_bytes());
    }
    m.push(0);
    m.extend_from_slice(&portcullis_crypto::jose::sha256(body));
    portcullis_crypto::jose::sha256(&m)
}

/// What the idempotency stage decided.
pub(crate) enum Outcome {
    /// The route takes no key, or none was sent on an optional route.
    None,
    /// A stored response to send instead of forwarding.
    Replay(Arc<StoredResponse>),
    /// The key is reserved for this request; complete or drop it.
    Reserved(Reservation),
}

/// A reserved key. Dropped without [`Reservation::complete`], it is released (the request
/// failed or the client went away), so the client may retry.
pub(crate) struct Reservation {
    store: Arc<dyn IdempotencyStore>,
    key: [u8; 32],
    fingerprint: [u8; 32],
    ttl: i64,
    pub release_on_upstream_error: bool,
    done: bool,
}

impl Reservation {
    pub(crate) async fn complete(
        mut self,
        response: StoredResponse,
        now: i64,
    ) -> Result<(), portcullis_state::idempotency::StoreUnavailable> {
        self.done = true;
        self.store
            .complete(self.key, self.fingerprint, response, now, self.ttl)
            .await
    }

    /// Leaves the key reserved until its TTL ends: the upstream may have acted, but there is
    /// no response to replay, so a retry gets 409 rather than a second execution.
    pub(crate) fn keep(mut self) {
        self.done = true;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let store = Arc::clone(&self.store);
        let key = self.key;
        if let Ok(h) = tokio::runtime::Handle::try_current() {
            h.spawn(async move {
                let _ = store.release(key).await;
            });
        }
    }
}

/// Who owns a key. OBIE: a key is idempotent for the same TPP within 24 hours, so the scope is
/// the OAuth client (the verified token's issuer and client id), which survives a certificate
/// rotation or a retry over the TPP's other certificate and tells an aggregator's clients on one
/// certificate apart. Without a token: the certificate's organization id, else its thumbprint,
/// else the peer address.
pub(crate) fn scope(
    identity: &ClientIdentity,
    token: Option<&BoundToken>,
    client_key: &str,
) -> String {
    if let Some(t) = token.map(BoundToken::token) {
        if let Some(cid) = t.client_id.as_deref() {
            // The verified `iss` (a JWT's is checked equal to the issuer's; an introspection
            // answer may omit it, and then the issuer's config name stands in).
            let iss = t
                .claims
                .get("iss")
                .and_then(serde_json::Value::as_str)
                .unwrap_or(&t.issuer);
            return format!("client:{}:{iss}\0{cid}", iss.len());
        }
    }
    if let Some(c) = identity.cert() {
        if let Some(org) = c.organization_identifier.as_deref() {
            return format!("org:{org}");
        }
        return format!("x5t:{}", c.thumbprint);
    }
    client_key.to_string()
}

/// What the idempotency stage needs: the store and the `idempotency:` config of this request's
/// snapshot.
pub(crate) struct Store<'a> {
    pub store: &'a Arc<dyn IdempotencyStore>,
    pub config: &'a IdempotencyConfig,
}

/// On routes with `idempotency`, reserves the client-scoped key or answers from it, with what
/// the audit record says of the key. Takes the authorization's permit, so a refused request
/// never reserves a key.
pub(crate) async fn reserve(
    route: &Route,
    parts: &Parts,
    body: Option<&[u8]>,
    scope: impl FnOnce() -> String,
    _permit: &Permit,
    store: &Store<'_>,
    now: i64,
) -> Result<(Outcome, Option<&'static str>), (IdempotencyError, Dialect)> {
    let mode = route.idempotency;
    if mode == IdempotencyMode::None {
        return Ok((Outcome::None, None));
    }
    let refuse = |e| (e, Dialect::of(route));
    let k = match key(parts).map_err(refuse)? {
        Some(k) => k,
        None if mode == IdempotencyMode::Required => {
            return Err(refuse(IdempotencyError::KeyMissing))
        }
        None => return Ok((Outcome::None, None)),
    };
    // Scoped to the authenticated client: another client's same key is another key.
    let mut scoped = scope().into_bytes();
    scoped.push(0);
    scoped.extend_from_slice(k.as_bytes());
    let key = portcullis_crypto::jose::sha256(&scoped);
    let fp = fingerprint(parts, body.unwrap_or_default());
    let ttl = store.config.ttl.as_secs() as i64;
    let begun = store.store.begin(key, fp, now, ttl).await;
    match begun {
        Err(_) => Err(refuse(IdempotencyError::Unavailable)),
        Ok(Begin::InFlight) => Err(refuse(IdempotencyError::InFlight)),
        Ok(Begin::Mismatch) => Err(refuse(IdempotencyError::Mismatch)),
        Ok(Begin::Completed(r)) => Ok((Outcome::Replay(r), Some("replayed"))),
        Ok(Begin::Reserved) => Ok((
            Outcome::Reserved(Reservation {
                store: Arc::clone(store.store),
                key,
                fingerprint: fp,
                ttl,
                release_on_upstream_error: store.config.release_on_upstream_error,
                done: false,
            }),
            Some("new"),
        )),
    }
}

/// Response headers that are not stored: they describe one exchange, not the resource (the
/// proxy sets its own `Date`, interaction id and nonce on the replay), or must not be handed
/// out twice.
const NOT_STORED: [&str; 6] = [
    "date",
    "content-length",
    "x-fapi-interaction-id",
    "dpop-nonce",
    "set-cookie",
    REPLAY_HEADER,
];

/// The response of a replayed key: the stored status, headers and body, marked as a replay.
pub(crate) fn replay(stored: &StoredResponse) -> http::Response<Bytes> {
    let mut resp = http::Response::new(stored.body.clone());
    *resp.status_mut() =
        http::StatusCode::from_u16(stored.status).unwrap_or(http::StatusCode::BAD_GATEWAY);
    let h = resp.headers_mut();
    for (name, value) in &stored.headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value),
        ) {
            h.append(n, v);
        }
    }
    h.insert(REPLAY_HEADER, HeaderValue::from_static("true"));
    resp
}

fn stored_headers(h: &HeaderMap) -> Vec<(String, Vec<u8>)> {
    h.iter()
        .filter(|(n, _)| !NOT_STORED.contains(&n.as_str()))
        .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
        .collect()
}

/// The whole body, or `None` when it is larger than `limit` or fails.
async fn read_bounded(mut body: portcullis_base::body::ProxyBody, limit: usize) -> Option<Bytes> {
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.ok()?.into_data() {
            if buf.len() + data.len() > limit {
                return None;
            }
            buf.extend_from_slice(&data);
        }
    }
    Some(buf.freeze())
}

/// What happened to a reserved key once the upstream answered.
pub(crate) enum Settled<B> {
    /// The response to send (stored for replay, or the key released / kept).
    Send(B),
    /// The body could not be read in full (too large beyond the hard limit, or it failed):
    /// the key stays reserved (the upstream may have acted) and the response is withheld.
    Withheld,
}

/// Stores the upstream's answer under a reserved key: 5xx releases the key when so configured
/// (the client may retry); any other response is read (up to `max_stored` bytes) and stored,
/// so a retry replays it. A larger body is still sent, and the key stays reserved until its
/// TTL (retries get 409, never a second execution).
pub(crate) async fn settle(
    reservation: Reservation,
    parts: &http::response::Parts,
    body: portcullis_base::body::ProxyBody,
    max_stored: usize,
    now: i64,
) -> (Settled<Bytes>, &'static str) {
    const HARD_LIMIT: usize = 16 * 1024 * 1024;
    let status = parts.status.as_u16();
    let release = parts.status.is_server_error() && reservation.release_on_upstream_error;
    let Some(bytes) = read_bounded(body, HARD_LIMIT).await else {
        reservation.keep();
        return (Settled::Withheld, "kept");
    };
    if release {
        drop(reservation);
        return (Settled::Send(bytes), "released");
    }
    if bytes.len() > max_stored {
        reservation.keep();
        return (Settled::Send(bytes), "kept");
    }
    let stored = StoredResponse {
        status,
        headers: stored_headers(&parts.headers),
        body: bytes.clone(),
    };
    let label = match reservation.complete(stored, now).await {
        Ok(()) => "stored",
        // The store went away after the reservation: the key stays reserved there (or expires)
        // and the client still gets the answer.
        Err(_) => "store_failed",
    };
    (Settled::Send(bytes), label)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::post("/pay");
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn keys_are_bounded_printable_and_unambiguous() {
        assert_eq!(key(&parts(&[])), Ok(None));
        assert_eq!(
            key(&parts(&[("x-idempotency-key", "abc")])),
            Ok(Some("abc".into()))
        );
        assert_eq!(
            key(&parts(&[("idempotency-key", "abc")])),
            Ok(Some("abc".into()))
        );
        assert_eq!(
            key(&parts(&[
                ("idempotency-key", "abc"),
                ("x-idempotency-key", "abc")
            ])),
            Ok(Some("abc".into()))
        );
        let bad = IdempotencyError::KeyInvalid;
        assert_eq!(
            key(&parts(&[
                ("idempotency-key", "abc"),
                ("x-idempotency-key", "abd")
            ])),
            Err(bad)
        );
        assert_eq!(
            key(&parts(&[("x-idempotency-key", &"a".repeat(41))])),
            Err(bad)
        );
        assert_eq!(key(&parts(&[("x-idempotency-key", "")])), Err(bad));
        assert_eq!(key(&parts(&[("x-idempotency-key", " a")])), Err(bad));
        assert_eq!(key(&parts(&[("x-idempotency-key", "a\tb")])), Err(bad));
        assert!(key(&parts(&[("x-idempotency-key", &"a".repeat(40))])).is_ok());
    }
}
