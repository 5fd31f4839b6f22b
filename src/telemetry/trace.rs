//! What travels across hops with a request: its W3C trace context and its
//! deadline. The `traceparent` of an incoming request (HTTP or gRPC) is in
//! the request's log span, and the RPC calls made while serving it carry it
//! on to the next node. They also carry what is left of its deadline: the
//! incoming call's `grpc-timeout`, or for an HTTP request
//! `http_request_timeout` from its arrival.
//!
//! Both live in a task-local for the handler's future
//! ([`TraceContextLayer`]); [`crate::rpc::RpcChannel`] copies them into the
//! metadata of each call it sends from there.

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::Either;
use http::HeaderValue;
use opentelemetry::trace::SpanKind;
use opentelemetry::KeyValue;
use tokio::task::futures::TaskLocalFuture;
use tower::{Layer, Service};

use super::metrics::ClientFigures;
use super::otel;
use crate::servicegroup::lag::MembershipFigures;

/// The header name (W3C Trace Context).
pub const TRACEPARENT: &str = "traceparent";

use crate::wire::{parse_grpc_timeout, CRITICALITY, GRPC_TIMEOUT};

/// What the request being served carries on to the calls it makes.
#[derive(Debug, Clone)]
pub struct Served {
    traceparent: Option<HeaderValue>,
    deadline: Option<Instant>,
    /// Its `svckit-criticality`, passed on as it came.
    criticality: Option<HeaderValue>,
    /// The node serving it: the calls it makes are exported with its
    /// spans, and the RPC clients made while serving show on its metrics.
    node: Option<Arc<NodeScope>>,
}

/// What a node hands down to the work it runs, the requests it serves and
/// its manager's hooks: its span export, and the figures its RPC clients
/// keep (an `Rpc` made within shows on the node's `/metrics`).
#[derive(Debug, Clone, Default)]
pub(crate) struct NodeScope {
    pub(crate) exporter: Option<otel::Exporter>,
    pub(crate) clients: Option<ClientFigures>,
    /// How stale the watches of those clients' registry connections are.
    pub(crate) membership: Option<MembershipFigures>,
}

/// Runs `work` as the node of `node` would serve a request, with no
/// request of its own: no traceparent, deadline or criticality.
pub(crate) async fn within<F: std::future::Future>(node: NodeScope, work: F) -> F::Output {
    let served = Served {
        traceparent: None,
        deadline: None,
        criticality: None,
        node: Some(Arc::new(node)),
    };
    CURRENT.scope(served, work).await
}

tokio::task_local! {
    static CURRENT: Served;
}

/// The `traceparent` of the request being served by this task, if any.
pub fn current() -> Option<HeaderValue> {
    CURRENT.try_with(|s| s.traceparent.clone()).ok().flatten()
}

/// When the request being served by this task must be answered, if it has
/// a deadline.
pub fn deadline() -> Option<Instant> {
    CURRENT.try_with(|s| s.deadline).ok().flatten()
}

/// The span export of the node serving this task's request, if it has one.
pub(crate) fn exporter() -> Option<otel::Exporter> {
    from_node(|n| n.exporter.clone())
}

/// `pick` of the node serving this task's request, if any.
fn from_node<T>(pick: impl FnOnce(&NodeScope) -> Option<T>) -> Option<T> {
    CURRENT
        .try_with(|s| s.node.as_deref().and_then(pick))
        .ok()
        .flatten()
}

/// Where the registry connections of the RPC clients made by this task
/// show how stale their watches are: the serving node's metrics, if any.
pub(crate) fn membership_figures() -> Option<MembershipFigures> {
    from_node(|n| n.membership.clone())
}

/// Where the RPC clients made by this task show their figures: the
/// serving node's metrics, if any.
pub(crate) fn client_figures() -> Option<ClientFigures> {
    from_node(|n| n.clients.clone())
}

/// The `svckit-criticality` of the request being served by this task, if
/// it had one.
pub(crate) fn criticality() -> Option<HeaderValue> {
    CURRENT.try_with(|s| s.criticality.clone()).ok().flatten()
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

/// Logs a gRPC call that failed: a fault of the server (UNKNOWN, INTERNAL,
/// DATA_LOSS) or of the connection at ERROR, other codes at DEBUG. Those
/// are answers (NOT_FOUND, INVALID_ARGUMENT, ...) or refusals (UNAVAILABLE,
/// RESOURCE_EXHAUSTED) that a node shedding load makes by the thousand,
/// and counts in `/metrics`, where a line each would cost it what it sheds.
pub(crate) fn grpc_failure(
    class: tower_http::classify::GrpcFailureClass,
    latency: Duration,
    _span: &tracing::Span,
) {
    use tower_http::classify::GrpcFailureClass;
    let latency_ms = latency.as_millis();
    match class {
        GrpcFailureClass::Code(code) if matches!(code.get(), 2 | 13 | 15) => {
            tracing::error!(code = code.get(), latency_ms, "call failed");
        }
        GrpcFailureClass::Code(code) => {
            tracing::debug!(code = code.get(), latency_ms, "call failed");
        }
        GrpcFailureClass::Error(error) => {
            tracing::error!(%error, latency_ms, "call failed");
        }
    }
}

fn record_traceparent<B>(span: &tracing::Span, request: &http::Request<B>) {
    if span.is_disabled() {
        return;
    }
    if let Some(parent) = traceparent(request).and_then(|v| v.to_str().ok()) {
        span.record("traceparent", parent);
    }
}

/// Serves each request with its `traceparent` and its deadline as the
/// task's current ones. The deadline is the `grpc-timeout` of the request,
/// or a fixed time from its arrival ([`TraceContextLayer::http`]). With a
/// node's span export, each request is a span too.
#[derive(Debug, Clone, Default)]
pub struct TraceContextLayer {
    request_timeout: Option<Duration>,
    node: Option<Arc<NodeScope>>,
}

impl TraceContextLayer {
    /// For HTTP: each request must be answered within `request_timeout`.
    pub fn http(request_timeout: Duration) -> Self {
        TraceContextLayer {
            request_timeout: Some(request_timeout),
            node: None,
        }
    }

    /// The same layer, each request served by `node`: a span of its
    /// exporter's, the clients made while serving it on its metrics.
    pub(crate) fn with_node(self, node: NodeScope) -> Self {
        TraceContextLayer {
            node: Some(Arc::new(node)),
            ..self
        }
    }
}

impl<S> Layer<S> for TraceContextLayer {
    type Service = TraceContext<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TraceContext {
            inner,
            request_timeout: self.request_timeout,
            node: self.node.clone(),
        }
    }
}

/// The service of [`TraceContextLayer`].
#[derive(Debug, Clone)]
pub struct TraceContext<S> {
    inner: S,
    request_timeout: Option<Duration>,
    node: Option<Arc<NodeScope>>,
}

impl<S> TraceContext<S> {
    /// The exported span of a request served, when export is on; the
    /// layer below ([`RequestMetrics`](super::metrics)) ends it with the
    /// request's outcome.
    fn server_span<B>(
        &self,
        request: &http::Request<B>,
        parent: Option<&HeaderValue>,
    ) -> Option<otel::Span> {
        let exporter = self.node.as_ref()?.exporter.as_ref()?;
        let address = request
            .uri()
            .authority()
            .map(|a| a.host().to_string())
            .or_else(|| {
                let host = request.headers().get(http::header::HOST)?.to_str().ok()?;
                Some(host.rsplit_once(':').map_or(host, |(h, _)| h).to_string())
            });
        let mut attributes = Vec::with_capacity(4);
        if let Some(address) = address {
            attributes.push(KeyValue::new("server.address", address));
        }
        let name = if self.request_timeout.is_some() {
            attributes.push(KeyValue::new(
                "http.request.method",
                request.method().as_str().to_string(),
            ));
            attributes.push(KeyValue::new("url.path", request.uri().path().to_string()));
            request.method().as_str().to_string()
        } else {
            let (service, method) = otel::rpc_names(request.uri().path());
            let name = format!("{service}/{method}");
            attributes.push(KeyValue::new("rpc.system", "grpc"));
            attributes.push(KeyValue::new("rpc.service", service));
            attributes.push(KeyValue::new("rpc.method", method));
            name
        };
        Some(exporter.span(name, SpanKind::Server, parent, attributes))
    }
}

/// A served request's exported span, on its way from [`TraceContext`] to
/// the layer that ends it.
#[derive(Clone)]
pub(crate) struct ServerSpan(Arc<Mutex<Option<otel::Span>>>);

impl ServerSpan {
    fn new(span: otel::Span) -> Self {
        ServerSpan(Arc::new(Mutex::new(Some(span))))
    }

    /// The span, once.
    pub(crate) fn take(&self) -> Option<otel::Span> {
        self.0.lock().ok()?.take()
    }
}

impl<S, B> Service<http::Request<B>> for TraceContext<S>
where
    S: Service<http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    // Not boxed: every request passes here.
    type Future = Either<TaskLocalFuture<Served, S::Future>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let timeout = self.request_timeout.or_else(|| {
            request
                .headers()
                .get(GRPC_TIMEOUT)
                .and_then(parse_grpc_timeout)
        });
        let mut request = request;
        let mut served = Served {
            traceparent: traceparent(&request).cloned(),
            deadline: timeout.and_then(|t| Instant::now().checked_add(t)),
            criticality: request.headers().get(CRITICALITY).cloned(),
            node: self.node.clone(),
        };
        if let Some(span) = self.server_span(&request, served.traceparent.as_ref()) {
            // The calls made while serving are this span's children.
            served.traceparent = otel::traceparent(&span);
            request.extensions_mut().insert(ServerSpan::new(span));
        }
        // A node's requests are always in its scope: an RPC client made
        // while serving one must find the node.
        if served.node.is_none()
            && served.traceparent.is_none()
            && served.deadline.is_none()
            && served.criticality.is_none()
        {
            return Either::Right(self.inner.call(request));
        }
        Either::Left(CURRENT.scope(served, self.inner.call(request)))
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
        let served = Served {
            traceparent: Some(value.clone()),
            deadline: None,
            criticality: None,
            node: None,
        };
        let seen = CURRENT.scope(served, async { current() }).await;
        assert_eq!(seen, Some(value));
    }

    #[tokio::test]
    async fn a_grpc_timeout_or_the_http_request_timeout_is_the_deadline() {
        use tower::ServiceExt;
        let seen = tower::service_fn(|_: http::Request<()>| async {
            Ok::<_, std::convert::Infallible>(deadline())
        });
        let call = |timeout: Option<&'static str>| {
            let mut request = http::Request::builder();
            if let Some(t) = timeout {
                request = request.header(GRPC_TIMEOUT, t);
            }
            request.body(()).unwrap()
        };
        let before = Instant::now();
        let grpc = TraceContextLayer::default().layer(seen);
        let deadline = grpc.clone().oneshot(call(Some("2S"))).await.unwrap();
        let left = deadline.expect("a deadline").duration_since(before);
        assert!(
            left <= Duration::from_secs(2) + Duration::from_millis(500)
                && left >= Duration::from_secs(2)
        );
        assert_eq!(grpc.oneshot(call(None)).await.unwrap(), None);

        let http = TraceContextLayer::http(Duration::from_secs(60)).layer(seen);
        let deadline = http.oneshot(call(Some("2S"))).await.unwrap();
        assert!(deadline.expect("a deadline").duration_since(before) >= Duration::from_secs(60));
    }
}
