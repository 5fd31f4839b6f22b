//! The server side of a handshake: accepted connections become TLS streams,
//! each handshake bounded by [`HANDSHAKE_TIMEOUT`](super::HANDSHAKE_TIMEOUT)
//! and run in its own task, so a slow or silent client holds up no one.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use super::HANDSHAKE_TIMEOUT;

/// A connection of a listener that may or may not speak TLS.
pub(crate) enum MaybeTls<IO> {
    /// No TLS configured.
    Plain(IO),
    /// After a completed handshake.
    Tls(Box<TlsStream<IO>>),
}

/// Runs the handshake on `io`; `None` when it failed or took too long
/// (plaintext sent to a TLS listener ends here).
pub(crate) async fn handshake<IO>(acceptor: &TlsAcceptor, io: IO) -> Option<MaybeTls<IO>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io)).await {
        Ok(Ok(tls)) => Some(MaybeTls::Tls(Box::new(tls))),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake refused");
            None
        }
        Err(_) => {
            tracing::debug!(timeout = ?HANDSHAKE_TIMEOUT, "TLS handshake not finished in time");
            None
        }
    }
}

/// The connections of `accepted`, through TLS when `acceptor` is given.
/// The accepting task ends when the returned stream is dropped (the server
/// stopped accepting), which closes the listener.
pub(crate) fn incoming<S, IO>(
    accepted: S,
    acceptor: Option<TlsAcceptor>,
) -> BoxStream<'static, io::Result<MaybeTls<IO>>>
where
    S: Stream<Item = io::Result<IO>> + Send + 'static,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Some(acceptor) = acceptor else {
        return accepted.map(|r| r.map(MaybeTls::Plain)).boxed();
    };
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let mut accepted = std::pin::pin!(accepted);
        loop {
            let next = tokio::select! {
                () = tx.closed() => break,
                next = accepted.next() => next,
            };
            let io = match next {
                None => break,
                Some(Ok(io)) => io,
                Some(Err(e)) => {
                    if tx.send(Err(e)).await.is_err() {
                        break;
                    }
                    continue;
                }
            };
            let (tx, acceptor) = (tx.clone(), acceptor.clone());
            tokio::spawn(async move {
                if let Some(tls) = handshake(&acceptor, io).await {
                    let _ = tx.send(Ok(tls)).await;
                }
            });
        }
    });
    ReceiverStream::new(rx).boxed()
}

impl<IO: Connected + AsyncRead + AsyncWrite + Unpin> Connected for MaybeTls<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        match self {
            MaybeTls::Plain(io) => io.connect_info(),
            MaybeTls::Tls(tls) => tls.get_ref().0.connect_info(),
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for MaybeTls<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(io) => Pin::new(io).poll_read(cx, buf),
            MaybeTls::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for MaybeTls<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(io) => Pin::new(io).poll_write(cx, buf),
            MaybeTls::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            MaybeTls::Tls(tls) => Pin::new(tls.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            MaybeTls::Plain(io) => io.is_write_vectored(),
            MaybeTls::Tls(tls) => tls.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(io) => Pin::new(io).poll_flush(cx),
            MaybeTls::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(io) => Pin::new(io).poll_shutdown(cx),
            MaybeTls::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}
