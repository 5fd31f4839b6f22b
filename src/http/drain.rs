//! How an HTTP server hands its keep-alive connections over when it stops.
//! Closing an idle HTTP/1 connection races the client's next request on
//! it, which then fails (a socket error for `wrk`, a lost request for any
//! client that does not retry). So a draining server first answers each
//! connection's next request with `Connection: close`, which tells the
//! client to take its next one elsewhere, and waits for the connections to
//! go, up to [`GRACE`]; only those still open then (idle ones, HTTP/2 ones,
//! which get a GOAWAY) are shut the usual graceful way.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderValue, Version};
use tokio::sync::Notify;
use tower::Service;

/// How long a draining server waits for its connections to take their
/// last request before it shuts the rest.
pub(super) const GRACE: Duration = Duration::from_secs(1);

/// A server's draining state and its open connections.
#[derive(Debug, Default)]
pub(super) struct Drain {
    draining: AtomicBool,
    open: AtomicUsize,
    closed: Notify,
}

/// One open connection, counted until dropped.
pub(super) struct Open(Arc<Drain>);

impl Drop for Open {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.closed.notify_waiters();
        }
    }
}

impl Drain {
    /// Counts a connection as open while the returned guard lives.
    pub(super) fn open(self: &Arc<Self>) -> Open {
        self.open.fetch_add(1, Ordering::AcqRel);
        Open(self.clone())
    }

    /// From now on every HTTP/1 response closes its connection; resolves
    /// when none is open, or after [`GRACE`].
    pub(super) async fn start(&self) {
        self.draining.store(true, Ordering::Release);
        let all_closed = async {
            loop {
                let closed = self.closed.notified();
                if self.open.load(Ordering::Acquire) == 0 {
                    return;
                }
                closed.await;
            }
        };
        let _ = tokio::time::timeout(GRACE, all_closed).await;
    }

    fn draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
}

/// Adds `Connection: close` to HTTP/1 responses once the server drains.
#[derive(Clone)]
pub(super) struct CloseWhenDraining<S> {
    pub(super) inner: S,
    pub(super) drain: Arc<Drain>,
}

impl<S, B, RB> Service<http::Request<B>> for CloseWhenDraining<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<RB>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let http1 = request.version() <= Version::HTTP_11;
        let drain = self.drain.clone();
        let response = self.inner.call(request);
        Box::pin(async move {
            let mut response = response.await?;
            // Decided when the answer is ready: a request that came in
            // before the drain and ends after it closes its connection too.
            if http1 && drain.draining() {
                response
                    .headers_mut()
                    .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
            }
            Ok(response)
        })
    }
}
