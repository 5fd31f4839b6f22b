//! The gRPC server's connections: counted for the report, at most
//! `rpc_max_connections` at once ([`Admission`]), and each closed unless its
//! client sends its opening within `rpc_handshake_timeout` ([`Opening`]).
//! Each accepted stream holds a guard that counts it until it is dropped.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::admission::{Admission, Ticket};

/// Connections of one server.
#[derive(Debug)]
pub(crate) struct Connections {
    open: AtomicU64,
    accepted: AtomicU64,
    /// Refused because every slot was held by a client that had spoken.
    refused: AtomicU64,
    admission: Arc<Admission>,
    handshake_timeout: Duration,
    /// Connections closed by the server whose client has not closed its
    /// side yet (see [`Counted`]'s drop).
    lingering: AtomicU64,
    lingered: tokio::sync::Notify,
}

/// How long a closed connection waits for its client to close its side.
const LINGER: Duration = Duration::from_secs(2);

/// The counts as the report shows them.
#[derive(Debug, Clone, Copy, Serialize)]
#[non_exhaustive]
pub struct ConnectionCounts {
    /// Connections open now.
    pub open: u64,
    /// Connections accepted since the start.
    pub accepted: u64,
    /// Connections closed at once since the start, because
    /// `rpc_max_connections` clients that had spoken held every slot.
    pub refused: u64,
}

impl Connections {
    /// At most `max` connections at once, each given `handshake_timeout`
    /// to send its opening.
    pub(crate) fn new(max: usize, handshake_timeout: Duration) -> Self {
        Connections {
            open: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            admission: Admission::new(max),
            handshake_timeout,
            lingering: AtomicU64::new(0),
            lingered: tokio::sync::Notify::new(),
        }
    }

    pub(crate) fn counts(&self) -> ConnectionCounts {
        ConnectionCounts {
            open: self.open.load(Ordering::Relaxed),
            accepted: self.accepted.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
        }
    }

    /// Resolves once no closed connection is left waiting for its client
    /// (at most [`LINGER`] after the last closed): a worker that exits
    /// sooner would reset them.
    pub(crate) async fn lingered(&self) {
        loop {
            let notified = self.lingered.notified();
            if self.lingering.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Wraps an accepted stream so that it counts as open while it lives
    /// and is closed if its client stays silent; `None` (the stream is
    /// dropped, so closed) when no slot can be had.
    pub(crate) fn track(self: &Arc<Self>, stream: TcpStream) -> Option<Counted> {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        let Some(ticket) = self.admission.admit() else {
            self.refused.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("rpc_max_connections reached; closing a new connection");
            return None;
        };
        self.open.fetch_add(1, Ordering::Relaxed);
        Some(Counted {
            stream: Some(stream),
            connections: self.clone(),
            ticket,
            opening: Some(Opening::new(self.handshake_timeout)),
        })
    }
}

/// An accepted TCP stream, counted until dropped.
///
/// Dropped, it closes the way an HTTP/2 server must after its last GOAWAY:
/// it shuts its side (FIN), then reads and discards until the client
/// closes its own, or [`LINGER`]. A socket closed with unread data sends a
/// reset, and a client whose last requests crossed the GOAWAY would lose
/// the GOAWAY with them: with it, it knows they were never processed and
/// sends them again on another connection.
pub(crate) struct Counted {
    /// `None` only once dropped.
    stream: Option<TcpStream>,
    connections: Arc<Connections>,
    ticket: Ticket,
    /// `Some` until the client has sent its opening.
    opening: Option<Opening>,
}

/// What a client sends first, watched as the server reads it: the HTTP/2
/// preface and the first frame after it (SETTINGS), or, on a TLS
/// connection, the first record (its ClientHello). Done when all of it
/// arrived; a client that connects and stays silent, or stops half way,
/// is cut off at the deadline.
struct Opening {
    deadline: Pin<Box<Sleep>>,
    /// Bytes read so far.
    seen: usize,
    /// The first bytes, enough to read the length of the first frame.
    head: [u8; OPENING_HEAD],
}

/// The HTTP/2 client preface's length.
const PREFACE: usize = 24;
/// The preface and an HTTP/2 frame header (3 bytes length, type, flags,
/// stream id).
const OPENING_HEAD: usize = PREFACE + 9;
/// The TLS record type of a handshake message, a TLS connection's first byte.
const TLS_HANDSHAKE: u8 = 0x16;

impl Opening {
    fn new(timeout: Duration) -> Self {
        Opening {
            deadline: Box::pin(tokio::time::sleep(timeout)),
            seen: 0,
            head: [0; OPENING_HEAD],
        }
    }

    /// Takes the next bytes read; true once the whole opening arrived.
    fn feed(&mut self, bytes: &[u8]) -> bool {
        let start = self.seen;
        self.seen = self.seen.saturating_add(bytes.len());
        if start < OPENING_HEAD {
            let n = bytes.len().min(OPENING_HEAD - start);
            self.head[start..start + n].copy_from_slice(&bytes[..n]);
        }
        self.needed().is_some_and(|needed| self.seen >= needed)
    }

    /// The length of the whole opening, once its head says.
    fn needed(&self) -> Option<usize> {
        let h = &self.head;
        if self.seen >= 5 && h[0] == TLS_HANDSHAKE {
            // A record header: type, version (2), length (2).
            return Some(5 + usize::from(u16::from_be_bytes([h[3], h[4]])));
        }
        if self.seen < OPENING_HEAD {
            return None;
        }
        let length = u32::from_be_bytes([0, h[PREFACE], h[PREFACE + 1], h[PREFACE + 2]]);
        Some(OPENING_HEAD + length as usize)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.connections.open.fetch_sub(1, Ordering::Relaxed);
        let (Some(stream), Ok(runtime)) =
            (self.stream.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let connections = self.connections.clone();
        connections.lingering.fetch_add(1, Ordering::AcqRel);
        runtime.spawn(async move {
            let _ = tokio::time::timeout(LINGER, linger(stream)).await;
            if connections.lingering.fetch_sub(1, Ordering::AcqRel) == 1 {
                connections.lingered.notify_waiters();
            }
        });
    }
}

/// Shuts the write side, then reads until the peer closes.
async fn linger(mut stream: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if stream.shutdown().await.is_err() {
        return;
    }
    let mut sink = [0u8; 4096];
    while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
}

impl Counted {
    /// The stream; an error only for a connection already closed.
    fn io(&mut self) -> io::Result<Pin<&mut TcpStream>> {
        self.stream
            .as_mut()
            .map(Pin::new)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }
}

impl Connected for Counted {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        match &self.stream {
            Some(stream) => stream.connect_info(),
            None => TcpConnectInfo {
                local_addr: None,
                remote_addr: None,
            },
        }
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(opening) = &mut this.opening {
            if this.ticket.poll_evicted(cx).is_ready() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "rpc_max_connections reached and this client had not spoken",
                )));
            }
            if opening.deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no HTTP/2 preface and SETTINGS within rpc_handshake_timeout",
                )));
            }
        }
        let before = buf.filled().len();
        let read = match this.io() {
            Ok(stream) => stream.poll_read(cx, buf),
            Err(e) => return Poll::Ready(Err(e)),
        };
        if let (Poll::Ready(Ok(())), Some(opening)) = (&read, &mut this.opening) {
            if opening.feed(&buf.filled()[before..]) {
                this.ticket.spoke();
                this.opening = None;
            }
        }
        read
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.io() {
            Ok(stream) => stream.poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.io() {
            Ok(stream) => stream.poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.as_ref().is_some_and(|s| s.is_write_vectored())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.io() {
            Ok(stream) => stream.poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The write side closes in the lingering close, after the last
        // frame: a shutdown now would send FIN, then a reset at the close.
        let _ = cx;
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opening() -> Opening {
        Opening {
            deadline: Box::pin(tokio::time::sleep_until(tokio::time::Instant::now())),
            seen: 0,
            head: [0; OPENING_HEAD],
        }
    }

    /// The preface and a SETTINGS frame header announcing `length` bytes.
    fn h2_head(length: u32) -> Vec<u8> {
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        bytes.extend_from_slice(&length.to_be_bytes()[1..]);
        bytes.extend_from_slice(&[4, 0, 0, 0, 0, 0]);
        bytes
    }

    #[tokio::test]
    async fn an_h2_opening_is_the_preface_and_the_whole_first_frame() {
        let head = h2_head(12);
        let mut o = opening();
        assert!(!o.feed(&head[..10]));
        assert!(!o.feed(&head[10..]), "the frame's payload is missing");
        assert!(!o.feed(&[0; 11]), "one byte short");
        assert!(o.feed(&[0]));

        // All at once, with more behind it.
        let mut o = opening();
        let mut all = h2_head(6);
        all.extend_from_slice(&[0; 40]);
        assert!(o.feed(&all));

        // An empty SETTINGS frame, a byte at a time.
        let mut o = opening();
        let head = h2_head(0);
        let last = head.len() - 1;
        assert!(head[..last].iter().all(|b| !o.feed(&[*b])));
        assert!(o.feed(&head[last..]));
    }

    #[tokio::test]
    async fn a_tls_opening_is_the_first_record() {
        let mut o = opening();
        assert!(!o.feed(&[TLS_HANDSHAKE, 3, 1, 0x01]));
        assert!(!o.feed(&[0x00]), "the record's 256 bytes are missing");
        assert!(!o.feed(&[0; 255]));
        assert!(o.feed(&[0]));
    }

    #[tokio::test]
    async fn garbage_never_overflows() {
        let mut o = opening();
        assert!(!o.feed(&[0xff; OPENING_HEAD]));
        assert_eq!(o.needed(), Some(OPENING_HEAD + 0xff_ffff));
        assert!(!o.feed(&[]));
    }
}
