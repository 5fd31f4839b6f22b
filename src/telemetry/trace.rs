//! W3C trace context across hops: the `traceparent` of an incoming request
//! (HTTP or gRPC) is in the request's log span, and the RPC calls made
//! while serving it carry it on to the next node.
//!
//! The incoming value lives in a task-local for the handler's future
//! ([`TraceContextLayer`]); [`crate::rpc::RpcChannel`] copies it into the
//! metadata of each call it sends from there.

use std::task::{Context, Poll};

use futures::future::Either;
use http::HeaderValue;
use tokio::task::futures::TaskLocalFuture;
use tower::{Layer, Service};

/// The header name (W3C Trace Context).
pub const TRACEPARENT: &str = "traceparent";

tokio::task_local! {
    static CURRENT: HeaderValue;
}

/// The `traceparent` of the request being served by this task, if any.
pub fn current() -> Option<HeaderValue> {
    CURRENT.try_with(Clone::clone).ok()
}

/// A well-formed `traceparent` header of `request`: version, 32-hex trace
/// id, 16-hex parent id, flags (`00-4bf9…-00f0…-01`).
pub fn traceparent<B>(request: &http::Request<B>) -> Option<&HeaderValue> {
    let value = request.headers().get(TRACEPARENT)?;
    let text = value.to_str().ok()?;
    let parts: Vec<&str> = text.split('-').collect();
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    let ok = parts.len() >= 4
        && hex(parts[0], 2)
        && hex(parts[1], 32)
        && hex(parts[2], 16)
        && hex(parts[3], 2);
    ok.then_some(value)
}

/// The span of an HTTP request, with its `traceparent` when it has one.
/// At INFO: the access log line of each request is logged in it.
pub fn http_span<B>(request: &http::Request<B>) -> tracing::Span {
    let span = tracing::info_span!(
        "request",
        protocol = "http",
        method = %request.method(),
        uri = %request.uri(),
        traceparent = tracing::field::Empty,
    );
    record_traceparent(&span, request);
    span
}

/// The span of a gRPC call, with its `traceparent` when it has one. At
/// DEBUG: at the default log level a call costs no span.
pub fn grpc_span<B>(request: &http::Request<B>) -> tracing::Span {
    let span = tracing::debug_span!(
        "request",
        protocol = "grpc",
        method = %request.uri().path(),
        traceparent = tracing::field::Empty,
    );
    record_traceparent(&span, request);
    span
}

fn record_traceparent<B>(span: &tracing::Span, request: &http::Request<B>) {
    if span.is_disabled() {
        return;
    }
    if let Some(parent) = traceparent(request).and_then(|v| v.to_str().ok()) {
        span.record("traceparent", parent);
    }
}

/// Serves each request with its `traceparent` as the task's current one.
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceContextLayer;

impl<S> Layer<S> for TraceContextLayer {
    type Service = TraceContext<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TraceContext { inner }
    }
}

/// The service of [`TraceContextLayer`].
#[derive(Debug, Clone)]
pub struct TraceContext<S> {
    inner: S,
}

impl<S, B> Service<http::Request<B>> for TraceContext<S>
where
    S: Service<http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    // Not boxed: every request passes here.
    type Future = Either<TaskLocalFuture<HeaderValue, S::Future>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        match traceparent(&request).cloned() {
            Some(value) => Either::Left(CURRENT.scope(value, self.inner.call(request))),
            None => Either::Right(self.inner.call(request)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_traceparents_are_taken() {
        let with = |v: &str| {
            http::Request::builder()
                .header(TRACEPARENT, v)
                .body(())
                .unwrap()
        };
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert!(traceparent(&with(good)).is_some());
        assert!(traceparent(&with("00-xyz-00f067aa0ba902b7-01")).is_none());
        assert!(traceparent(&with("garbage")).is_none());
    }

    #[tokio::test]
    async fn the_current_value_is_the_served_requests() {
        assert!(current().is_none());
        let value =
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let seen = CURRENT.scope(value.clone(), async { current() }).await;
        assert_eq!(seen, Some(value));
    }
}
