//! Body admission: the declared length against the route's limit (before any crypto), and the
//! body itself — buffered once, up to the limit, when a later stage reads it; otherwise streamed
//! where the framing allows it. The bytes the stages checked are the bytes forwarded.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::http::HttpError;
use portcullis_base::body::{empty, full, BoxError, ProxyBody};
use portcullis_policy::{IdempotencyMode, Route};

/// Why a body could not be admitted; `client_gone` when the client closed the connection or
/// reset the stream while sending it (no answer will reach it).
#[derive(Debug)]
pub(crate) struct BodyRefused {
    pub(crate) error: HttpError,
    pub(crate) client_gone: bool,
}

impl From<HttpError> for BodyRefused {
    fn from(error: HttpError) -> Self {
        BodyRefused {
            error,
            client_gone: false,
        }
    }
}

/// The admitted body: what is forwarded, and the bytes when they were buffered for a stage.
pub(crate) struct Admitted {
    pub(crate) forward: ProxyBody,
    pub(crate) buffered: Option<Bytes>,
}

/// Whether a stage after binding reads the request body, so it must be buffered (once, up to
/// the route limit) before those stages run.
pub(crate) fn needed(route: &Route) -> bool {
    route.authz.reads_body()
        || route.signature.is_some()
        || route.contract.as_ref().is_some_and(|c| c.reads_body())
        || route.idempotency != IdempotencyMode::None
}

/// Admits the body of a request whose declared length (if any) is within the route's limit.
pub(crate) async fn admit(
    body: Incoming,
    route: &Route,
    declared: Option<u64>,
    version: http::Version,
    timeout: Duration,
) -> Result<Admitted, BodyRefused> {
    if needed(route) {
        let bytes = buffer(body, route.body_limit, timeout).await?;
        return Ok(Admitted {
            forward: full(bytes.clone()),
            buffered: Some(bytes),
        });
    }
    let forward = stream(body, declared, version, route.body_limit, timeout).await?;
    Ok(Admitted {
        forward,
        buffered: None,
    })
}

/// Reads the whole body, up to `limit` bytes and within `timeout`.
async fn buffer(body: Incoming, limit: u64, timeout: Duration) -> Result<Bytes, BodyRefused> {
    let limited = Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX));
    match tokio::time::timeout(timeout, limited.collect()).await {
        Err(_) => Err(HttpError::BodyTimeout.into()),
        Ok(Err(e)) => Err(read_error(&e)),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

/// The body to forward. A declared length is streamed (hyper enforces it). A body of unknown
/// length (chunked, or HTTP/2 without content-length) is buffered up to the limit first, so an
/// oversize body is refused with 413 before anything reaches the upstream.
///
/// HTTP/2 bodies are buffered too: the length an HTTP/2 request declares is only checked
/// against its DATA frames when the stream ends, and an answer sent before then would let
/// excess data follow a request the upstream already took. Client trailers are never forwarded
/// (they could carry fields the header checks never saw).
async fn stream(
    body: Incoming,
    declared: Option<u64>,
    version: http::Version,
    limit: u64,
    timeout: Duration,
) -> Result<ProxyBody, BodyRefused> {
    if let Some(len) = declared {
        if len == 0 && body.is_end_stream() {
            return Ok(empty());
        }
        if version != http::Version::HTTP_2 {
            return Ok(NoTrailers(body).boxed_unsync());
        }
    }
    if body.is_end_stream() {
        return Ok(empty());
    }
    Ok(full(buffer(body, limit, timeout).await?))
}

/// Why a request body could not be read.
fn read_error(e: &BoxError) -> BodyRefused {
    if e.is::<LengthLimitError>() {
        return HttpError::BodyTooLarge.into();
    }
    BodyRefused {
        error: HttpError::BodyRead,
        client_gone: peer_left(e.as_ref()),
    }
}

/// Whether an error (or one of its sources) says the client went away: the connection ended
/// before the declared length (HTTP/1.1), or the peer reset the stream (HTTP/2).
fn peer_left(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            if matches!(
                io.kind(),
                K::UnexpectedEof | K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe
            ) {
                return true;
            }
        }
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            if h.is_incomplete_message() || h.is_canceled() {
                return true;
            }
        }
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            if h2.is_remote() && h2.is_reset() {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

/// Drops the body of a refused request. A small declared remainder is read and dropped first
/// (never forwarded), so HTTP/2 ends the stream cleanly instead of resetting it while the client
/// is still sending, and HTTP/1 keeps the connection in sync. A large or unknown-length body is
/// not read: the stream is reset or the connection closed instead.
pub(crate) async fn discard(body: Incoming) {
    const DRAIN_MAX: u64 = 64 * 1024;
    if !body.is_end_stream() && body.size_hint().upper().is_some_and(|n| n <= DRAIN_MAX) {
        let drain = Limited::new(body, DRAIN_MAX as usize).collect();
        let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
    }
}

/// A streamed request body without its trailers.
struct NoTrailers(Incoming);

impl Body for NoTrailers {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            return match Pin::new(&mut self.0).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) if !frame.is_data() => continue,
                Poll::Ready(other) => Poll::Ready(other.map(|r| r.map_err(BoxError::from))),
                Poll::Pending => Poll::Pending,
            };
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.0.size_hint()
    }
}
