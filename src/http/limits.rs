//! The request limits nova puts on its WSGI server, as tower layers: the
//! request line and header lines ([`LineLimitLayer`]: 414, 431) and the
//! requests served at once ([`HttpPoolLayer`]: the adaptive limit, then
//! the pool's wait; 503 with `Retry-After` either way).

use std::future::{ready, Ready};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::response::{IntoResponse, Response};
use futures::future::{BoxFuture, Either};
use http::StatusCode;
use tower::{Layer, Service};

use std::sync::Arc;

use crate::admission::{Limiter, Slots};

/// Refuses a request target longer than `max_url_len` (414) and a header
/// line longer than `max_header_line` (431), before any handler runs.
#[derive(Debug, Clone, Copy)]
pub struct LineLimitLayer {
    /// Longest path and query, in bytes.
    pub max_url_len: usize,
    /// Longest `name: value` header line, in bytes.
    pub max_header_line: usize,
}

impl<S> Layer<S> for LineLimitLayer {
    type Service = LineLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LineLimit {
            inner,
            limits: *self,
        }
    }
}

/// The service of [`LineLimitLayer`].
#[derive(Debug, Clone)]
pub struct LineLimit<S> {
    inner: S,
    limits: LineLimitLayer,
}

impl<S, B> Service<http::Request<B>> for LineLimit<S>
where
    S: Service<http::Request<B>, Response = Response> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    // Not boxed: every request passes here.
    type Future = Either<Ready<Result<Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let target = request
            .uri()
            .path_and_query()
            .map_or(0, |pq| pq.as_str().len());
        if target > self.limits.max_url_len {
            return Either::Left(ready(Ok(StatusCode::URI_TOO_LONG.into_response())));
        }
        let longest = request
            .headers()
            .iter()
            .map(|(name, value)| name.as_str().len() + 2 + value.len())
            .max()
            .unwrap_or(0);
        if longest > self.limits.max_header_line {
            return Either::Left(ready(Ok(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE.into_response()
            )));
        }
        Either::Right(self.inner.call(request))
    }
}

/// A request past the adaptive limit (`rpc_admission = adaptive`, see
/// [`crate::admission::adaptive`]) gets 503 at once. Then at most `size`
/// requests are in their handlers at once; a request waits up to `wait`
/// for a slot, then gets 503 (eventlet's green pool, with a bound on the
/// wait so that an overload sheds instead of queueing forever).
#[derive(Debug, Clone)]
pub struct HttpPoolLayer {
    limiter: Arc<Limiter>,
    slots: Slots,
}

impl HttpPoolLayer {
    /// `limiter`, then a pool of `size` slots.
    pub(crate) fn new(limiter: Arc<Limiter>, size: usize, wait: Duration) -> Self {
        HttpPoolLayer {
            limiter,
            slots: Slots::new(size, wait),
        }
    }
}

/// 503 with `Retry-After: 1`: nothing of the request ran.
fn unavailable() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(http::header::RETRY_AFTER, "1")],
    )
        .into_response()
}

impl<S> Layer<S> for HttpPoolLayer {
    type Service = HttpPool<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HttpPool {
            inner,
            pool: self.clone(),
        }
    }
}

/// The service of [`HttpPoolLayer`].
#[derive(Debug, Clone)]
pub struct HttpPool<S> {
    inner: S,
    pool: HttpPoolLayer,
}

impl<S, B> Service<http::Request<B>> for HttpPool<S>
where
    S: Service<http::Request<B>, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send,
    B: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response, S::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is the pool's, per request.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let Ok(pass) = self.pool.limiter.admit_request(request.headers()) else {
            return Box::pin(ready(Ok(unavailable())));
        };
        let slots = self.pool.slots.clone();
        let limiter = self.pool.limiter.clone();
        // The clone that was not driven to readiness; take the ready one.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let Some(permit) = slots.take().await else {
                limiter.refused_by_pool();
                tracing::warn!("http_pool_size reached; answering 503");
                return Ok(unavailable());
            };
            let response = tower::ServiceExt::ready(&mut inner)
                .await?
                .call(request)
                .await;
            drop((permit, pass));
            response
        })
    }
}
