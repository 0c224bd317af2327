//! Lingering close: when the proxy ends a connection, the client still receives the last answer.
//!
//! When the proxy answers and closes while the client is still sending — a 431 for a header
//! block over hyper's buffer, a 413 before a large body is read, a GOAWAY — closing the socket
//! with unread bytes in its receive queue makes the kernel send a TCP reset, and a reset can
//! destroy the answer in the client's receive queue before the client reads it: the client
//! sees "connection reset" instead of the status and reason. nginx and Apache avoid this with a
//! lingering close, and so does this module: the TLS stream is handed back when hyper drops
//! it ([`Returnable`]), and [`close`] sends `close_notify`, shuts down the write side and then
//! reads and discards what the client still sends, until it closes or a bound is reached.
//!
//! Bounds (the connection still holds its connection-cap permit meanwhile): at most
//! [`LINGER_TIME`] in all, [`LINGER_READ`] for any one read, [`LINGER_BYTES`] read. The discarded
//! bytes are raw TCP (TLS records are not decrypted) and never looked at.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// Longest a closing connection is drained.
pub(crate) const LINGER_TIME: Duration = Duration::from_secs(2);
/// Longest wait for the client's next bytes while draining.
pub(crate) const LINGER_READ: Duration = Duration::from_millis(500);
/// Most bytes discarded while draining.
pub(crate) const LINGER_BYTES: usize = 8 << 20;

type Tls = TlsStream<TcpStream>;

/// Where a [`Returnable`] puts its stream when it is dropped. Boxed: the slot is allocated
/// with the connection and stays empty while it lives, and room for a whole TLS stream
/// (about 1 KiB) in every idle connection's slot would be memory held for nothing.
pub(crate) type Slot = Arc<Mutex<Option<Box<Tls>>>>;

/// The connection's TLS stream as hyper sees it; on drop the stream goes back to its slot
/// instead of being closed.
pub(crate) struct Returnable {
    io: Option<Tls>,
    slot: Slot,
}

impl Returnable {
    pub(crate) fn new(io: Tls) -> (Returnable, Slot) {
        let slot = Slot::default();
        let r = Returnable {
            io: Some(io),
            slot: Arc::clone(&slot),
        };
        (r, slot)
    }

    fn io(&mut self) -> io::Result<&mut Tls> {
        self.io.as_mut().ok_or(io::ErrorKind::NotConnected.into())
    }
}

impl Drop for Returnable {
    fn drop(&mut self) {
        if let Some(io) = self.io.take() {
            *self.slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(Box::new(io));
        }
    }
}

impl AsyncRead for Returnable {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.io() {
            Ok(io) => Pin::new(io).poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for Returnable {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.io() {
            Ok(io) => Pin::new(io).poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.io() {
            Ok(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.as_ref().is_some_and(|io| io.is_write_vectored())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.io() {
            Ok(io) => Pin::new(io).poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.io() {
            Ok(io) => Pin::new(io).poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

/// Closes the stream in `slot` (if hyper gave it back): `close_notify` and the TCP write side
/// shut down, then the client's remaining bytes drained within the bounds above.
pub(crate) async fn close(slot: &Slot) {
    let Some(mut tls) = slot.lock().unwrap_or_else(|p| p.into_inner()).take() else {
        return;
    };
    let _ = tokio::time::timeout(LINGER_READ, tls.shutdown()).await;
    let (mut tcp, _) = (*tls).into_inner();
    let _ = tcp.shutdown().await;
    let _ = tokio::time::timeout(LINGER_TIME, drain(&mut tcp)).await;
}

async fn drain(tcp: &mut TcpStream) {
    // On the heap: a stack buffer would enlarge every connection's task.
    let mut buf = vec![0u8; 16 * 1024];
    let mut total = 0;
    while total < LINGER_BYTES {
        match tokio::time::timeout(LINGER_READ, tcp.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => total += n,
            _ => return,
        }
    }
}
