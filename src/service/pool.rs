//! The gRPC calls a node serves at once: the adaptive limit
//! (`rpc_admission`, see [`crate::admission::adaptive`]) under the pool's
//! ceiling (`rpc_pool_size`, the analog of oslo.messaging's
//! `executor_thread_pool_size`).
//!
//! A call past the adaptive limit is refused at once. A call over the pool
//! waits up to `rpc_pool_wait` for a slot, then is refused. Either way it is
//! refused before its handler runs, as UNAVAILABLE with the refusal marker
//! (`svckit-refused`): svckit's clients know then that nothing ran and send
//! the call to another node of the topic, idempotent or not; other clients
//! see a plain UNAVAILABLE, which gRPC clients retry. A slot is held until
//! the response body ends, so a stream counts for as long as it runs.
//! Health checks and reflection skip both: an overloaded node must still
//! answer its probes.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use http::HeaderValue;
use http_body::Body;
use http_body_util::{Either, Empty};
use tokio::sync::OwnedSemaphorePermit;
use tower::{Layer, Service};

use crate::admission::{self, Limiter, Slots};
use crate::body::{ended, Polled, Watch, Watched};
use crate::error::BoxError;
use crate::wire::{GRPC_MESSAGE, GRPC_STATUS, REFUSED, UNAVAILABLE};

/// Paths that skip the pool.
const EXEMPT: [&str; 3] = [
    "/grpc.health.v1.Health/",
    "/grpc.reflection.",
    "/xds.service.orca.",
];

/// At most `size` calls at once; see the module docs.
#[derive(Debug, Clone)]
pub(crate) struct RpcPoolLayer {
    limiter: Arc<Limiter>,
    slots: Slots,
}

impl RpcPoolLayer {
    /// `limiter`, then a pool of `size` slots waited for up to `wait`.
    pub(crate) fn new(limiter: Arc<Limiter>, size: usize, wait: Duration) -> Self {
        RpcPoolLayer {
            limiter,
            slots: Slots::new(size, wait),
        }
    }
}

impl<S> Layer<S> for RpcPoolLayer {
    type Service = RpcPool<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcPool {
            inner,
            pool: self.clone(),
        }
    }
}

/// The service of [`RpcPoolLayer`].
#[derive(Debug, Clone)]
pub(crate) struct RpcPool<S> {
    inner: S,
    pool: RpcPoolLayer,
}

impl<S, B, RB> Service<http::Request<B>> for RpcPool<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send,
    B: Send + 'static,
    RB: Body<Data = Bytes> + Send + 'static,
    RB::Error: Into<BoxError>,
{
    type Response = http::Response<Held<Either<RB, Empty<Bytes>>>>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is the pool's, per call.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // The clone that was not driven to readiness; take the ready one.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let path = request.uri().path();
        if EXEMPT.iter().any(|prefix| path.starts_with(prefix)) {
            return Box::pin(async move {
                let response = tower::ServiceExt::ready(&mut inner)
                    .await?
                    .call(request)
                    .await?;
                Ok(response.map(|body| Held::new(Either::Left(body), Slot(None))))
            });
        }
        let pass = match self.pool.limiter.admit_request(request.headers()) {
            Ok(pass) => pass,
            Err(refusal) => return Box::pin(std::future::ready(Ok(refused(refusal.into())))),
        };
        let slots = self.pool.slots.clone();
        let limiter = self.pool.limiter.clone();
        Box::pin(async move {
            let Some(permit) = slots.take().await else {
                limiter.refused_by_pool();
                return Ok(refused(Refusal::Pool));
            };
            if pass.stale() {
                return Ok(refused(Refusal::Limit));
            }
            let response = tower::ServiceExt::ready(&mut inner)
                .await?
                .call(request)
                .await?;
            // The handler answered: its place under the limit is free.
            drop(pass);
            Ok(response.map(|body| Held::new(Either::Left(body), Slot(Some(permit)))))
        })
    }
}

/// Why a call was refused.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    /// The adaptive limit.
    Limit,
    /// A deadline shorter than the queue.
    Deadline,
    /// No pool slot within the wait.
    Pool,
}

impl From<admission::Refusal> for Refusal {
    fn from(refusal: admission::Refusal) -> Self {
        match refusal {
            admission::Refusal::Limit => Refusal::Limit,
            admission::Refusal::Deadline => Refusal::Deadline,
        }
    }
}

/// A trailers-only UNAVAILABLE answer marked as refused.
fn refused<RB>(why: Refusal) -> http::Response<Held<Either<RB, Empty<Bytes>>>> {
    let (marker, message) = match why {
        // Counted in the metrics; one line per refusal would flood the log
        // of a node shedding thousands a second.
        Refusal::Limit => ("limit", "over%20the%20adaptive%20limit"),
        Refusal::Deadline => ("deadline", "deadline%20shorter%20than%20the%20queue"),
        Refusal::Pool => {
            tracing::warn!("rpc_pool_size reached; refusing a call");
            ("pool", "rpc_pool_size%20reached")
        }
    };
    let mut response = http::Response::new(Held::new(Either::Right(Empty::new()), Slot(None)));
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(GRPC_STATUS, UNAVAILABLE.clone());
    headers.insert(GRPC_MESSAGE, HeaderValue::from_static(message));
    headers.insert(REFUSED, HeaderValue::from_static(marker));
    response
}

/// A response body that holds its call's slot until it ends.
pub(crate) type Held<B> = Watched<B, Slot>;

/// A call's pool slot, given back when its response ends.
pub(crate) struct Slot(Option<OwnedSemaphorePermit>);

impl<B: Body> Watch<B> for Slot {
    fn polled(&mut self, polled: &Polled<B>, _: &B) {
        if ended::<B>(polled) {
            self.0 = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};
    use tower::ServiceExt;

    type Reply = http::Response<Held<Either<Full<Bytes>, Empty<Bytes>>>>;

    fn pool(
        size: usize,
    ) -> impl Service<http::Request<()>, Response = Reply, Error = std::convert::Infallible> + Clone
    {
        let echo = tower::service_fn(|_: http::Request<()>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from("x"))))
        });
        let limiter = Limiter::new(false, size, Default::default(), Default::default());
        RpcPoolLayer::new(limiter, size, Duration::ZERO).layer(echo)
    }

    fn call(path: &str) -> http::Request<()> {
        http::Request::builder().uri(path).body(()).unwrap()
    }

    #[tokio::test]
    async fn a_call_over_the_limit_is_refused_until_a_body_ends() {
        let service = pool(1);
        let first = service
            .clone()
            .oneshot(call("/echo.v1.Echo/Echo"))
            .await
            .unwrap();
        assert!(first.headers().get(REFUSED).is_none());

        let second = service
            .clone()
            .oneshot(call("/echo.v1.Echo/Echo"))
            .await
            .unwrap();
        assert_eq!(second.headers()[GRPC_STATUS], "14");
        assert_eq!(second.headers()[REFUSED], "pool");

        // Probes pass a full pool.
        let health = service
            .clone()
            .oneshot(call("/grpc.health.v1.Health/Check"))
            .await
            .unwrap();
        assert!(health.headers().get(REFUSED).is_none());

        // The first call's slot is free once its body ended.
        first.into_body().collect().await.unwrap();
        let third = service.oneshot(call("/echo.v1.Echo/Echo")).await.unwrap();
        assert!(third.headers().get(REFUSED).is_none());
    }
}
