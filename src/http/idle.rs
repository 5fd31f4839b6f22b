//! `client_socket_timeout`: a connection with nothing read or written for
//! that long is closed.
//!
//! Re-arming a timer on every read and write puts each request through the
//! runtime's timer lock several times, which the worker threads then contend
//! for. Here one timer ticks every quarter of the timeout, I/O only marks
//! the connection active, and a connection is closed after four quiet ticks
//! in a row: between the timeout and 1.25 times it after the last byte.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Quiet ticks that close a connection.
const TICKS: u32 = 4;

/// A stream closed with [`io::ErrorKind::TimedOut`] once idle for
/// `timeout` (see the module docs for the precision).
pub(crate) struct IdleTimeout<S> {
    inner: S,
    /// `None`: no timeout.
    timer: Option<Timer>,
}

struct Timer {
    tick: Duration,
    sleep: Pin<Box<Sleep>>,
    /// Some byte moved since the last tick.
    active: bool,
    quiet_ticks: u32,
}

impl<S> IdleTimeout<S> {
    /// `timeout` zero: never closed for idleness.
    pub(crate) fn new(inner: S, timeout: Duration) -> Self {
        let timer = (!timeout.is_zero()).then(|| {
            let tick = timeout / TICKS;
            Timer {
                tick,
                sleep: Box::pin(tokio::time::sleep(tick)),
                active: false,
                quiet_ticks: 0,
            }
        });
        IdleTimeout { inner, timer }
    }

    fn moved(&mut self) {
        if let Some(timer) = &mut self.timer {
            timer.active = true;
        }
    }

    /// Called while the inner stream waits: the tick wakes the task, and
    /// the last quiet tick ends the connection.
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let Some(timer) = &mut self.timer else {
            return Ok(());
        };
        while timer.sleep.as_mut().poll(cx).is_ready() {
            if std::mem::take(&mut timer.active) {
                timer.quiet_ticks = 0;
            } else {
                timer.quiet_ticks += 1;
                if timer.quiet_ticks >= TICKS {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "client_socket_timeout: nothing read or written",
                    ));
                }
            }
            // From now, not from the missed deadline: a task that was not
            // polled for a while gets whole ticks, not a burst of them.
            let next = Instant::now() + timer.tick;
            timer.sleep.as_mut().reset(next);
        }
        Ok(())
    }

    fn pending<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        match self.check(cx) {
            Ok(()) => Poll::Pending,
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for IdleTimeout<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                this.moved();
                Poll::Ready(result)
            }
            Poll::Pending => this.pending(cx),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for IdleTimeout<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(result) => {
                this.moved();
                Poll::Ready(result)
            }
            Poll::Pending => this.pending(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(result) => {
                this.moved();
                Poll::Ready(result)
            }
            Poll::Pending => this.pending(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Ready(result) => Poll::Ready(result),
            Poll::Pending => this.pending(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_shutdown(cx) {
            Poll::Ready(result) => Poll::Ready(result),
            Poll::Pending => this.pending(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Paused clock: the ticks are the runtime's, not the machine's.
    #[tokio::test(start_paused = true)]
    async fn a_quiet_stream_is_closed_between_the_timeout_and_a_quarter_more() {
        let (near, _far) = tokio::io::duplex(64);
        let mut stream = IdleTimeout::new(near, Duration::from_secs(100));
        let start = Instant::now();
        let mut byte = [0u8; 1];
        let err = stream.read(&mut byte).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_secs(100) && waited <= Duration::from_secs(125),
            "closed after {waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn traffic_keeps_a_stream_open_and_the_count_starts_again_after_it() {
        let (near, mut far) = tokio::io::duplex(64);
        let mut stream = IdleTimeout::new(near, Duration::from_secs(100));
        let start = Instant::now();
        // A byte every 60 s for 10 minutes: never quiet for the timeout.
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_secs(60)).await;
            far.write_all(b"x").await.unwrap();
            let mut byte = [0u8; 1];
            stream.read_exact(&mut byte).await.unwrap();
        }
        let last = Instant::now();
        let mut byte = [0u8; 1];
        let err = stream.read(&mut byte).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(last - start >= Duration::from_secs(600));
        let quiet = last.elapsed();
        assert!(
            quiet >= Duration::from_secs(100) && quiet <= Duration::from_secs(125),
            "closed {quiet:?} after the last byte"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn zero_is_no_timeout() {
        let (near, mut far) = tokio::io::duplex(64);
        let mut stream = IdleTimeout::new(near, Duration::ZERO);
        let reader = tokio::spawn(async move {
            let mut byte = [0u8; 1];
            stream.read_exact(&mut byte).await.map(|_| byte[0])
        });
        tokio::time::sleep(Duration::from_secs(86_400)).await;
        far.write_all(b"y").await.unwrap();
        assert_eq!(reader.await.unwrap().unwrap(), b'y');
    }
}
