//! [`RequestMetricsLayer`]: one layer for both servers, measuring each
//! request until its response body ends.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http_body::Body;
use tower::{Layer, Service};

use opentelemetry::trace::Span as _;
use opentelemetry::KeyValue;

use super::{totals, Requests, RouteMetrics};
use crate::body::{Polled, Watch, Watched};
use crate::telemetry::otel;
use crate::telemetry::trace::ServerSpan;
use crate::wire::GRPC_STATUS;

/// How a request ended, cheap to carry until it is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Code {
    /// A gRPC status code.
    Grpc(i32),
    /// An HTTP status.
    Http(u16),
    /// The response body was dropped before its end: the client went away.
    Dropped,
    /// The response body failed.
    Failed,
}

impl Code {
    /// A failure of the server: the gRPC codes OpenTelemetry counts as
    /// server errors, an HTTP 5xx, or a body that failed or was cut off.
    pub(super) fn is_failure(self) -> bool {
        match self {
            Code::Grpc(code) => matches!(code, 2 | 4 | 12 | 13 | 14 | 15),
            Code::Http(status) => status >= 500,
            Code::Dropped | Code::Failed => true,
        }
    }

    pub(super) fn label(self) -> String {
        match self {
            Code::Grpc(code) => format!("{:?}", tonic::Code::from_i32(code)),
            Code::Http(status) => status.to_string(),
            Code::Dropped => "Cancelled".into(),
            Code::Failed => "Error".into(),
        }
    }
}

#[derive(Clone, Copy)]
pub(super) enum Kind {
    Grpc,
    Http,
}

/// Counts requests through the service it wraps (see the module docs).
#[derive(Clone)]
pub struct RequestMetricsLayer {
    requests: Requests,
    kind: Kind,
    /// Counts in the node's totals (the API, not the operations endpoints).
    api: bool,
    /// The node exports spans: requests carry one to end here.
    traced: bool,
}

impl RequestMetricsLayer {
    pub(super) fn new(requests: Requests, kind: Kind, api: bool, traced: bool) -> Self {
        RequestMetricsLayer {
            requests,
            kind,
            api,
            traced,
        }
    }
}

impl<S> Layer<S> for RequestMetricsLayer {
    type Service = RequestMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestMetrics {
            inner,
            requests: self.requests.clone(),
            kind: self.kind,
            api: self.api,
            traced: self.traced,
        }
    }
}

/// The service of [`RequestMetricsLayer`].
#[derive(Clone)]
pub struct RequestMetrics<S> {
    inner: S,
    requests: Requests,
    kind: Kind,
    api: bool,
    traced: bool,
}

impl<S, B, RB> Service<http::Request<B>> for RequestMetrics<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    RB: Body,
{
    type Response = http::Response<Measured<RB>>;
    type Error = S::Error;
    type Future = MeasuredFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // Looked up only with export on: every request passes here.
        let span = self
            .traced
            .then(|| request.extensions_mut().remove::<ServerSpan>())
            .flatten()
            .and_then(|s| s.take())
            .map(|mut span| {
                if let (Kind::Http, Some(route)) = (
                    self.kind,
                    request.extensions().get::<axum::extract::MatchedPath>(),
                ) {
                    span.update_name(format!("{} {}", request.method(), route.as_str()));
                    span.set_attribute(KeyValue::new("http.route", route.as_str().to_string()));
                }
                span
            });
        let route = match self.kind {
            Kind::Http => request
                .extensions()
                .get::<axum::extract::MatchedPath>()
                .map_or("unmatched", |p| p.as_str()),
            Kind::Grpc => request.uri().path(),
        };
        let (api, kind) = (self.api, self.kind);
        let route = self.requests.route(route, || {
            api && (matches!(kind, Kind::Http) || totals::counts_grpc(route))
        });
        route.in_flight.inc();
        if let Some(totals) = &route.totals {
            totals.started();
        }
        MeasuredFuture {
            inner: self.inner.call(request),
            record: Some(Record {
                route,
                started: Instant::now(),
                code: None,
                span,
            }),
            kind: self.kind,
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`RequestMetrics`]; not boxed, as every
    /// request and call passes here.
    pub struct MeasuredFuture<F> {
        #[pin]
        inner: F,
        record: Option<Record>,
        kind: Kind,
    }
}

impl<F, RB, E> std::future::Future for MeasuredFuture<F>
where
    F: std::future::Future<Output = Result<http::Response<RB>, E>>,
{
    type Output = Result<http::Response<Measured<RB>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        // An error or a dropped future records the request as it is dropped.
        let response = std::task::ready!(this.inner.poll(cx))?;
        let mut record = this.record.take();
        if let Some(record) = record.as_mut() {
            record.code = match this.kind {
                Kind::Http => Some(Code::Http(response.status().as_u16())),
                // A trailers-only reply (an error before any message).
                Kind::Grpc => response.headers().get(GRPC_STATUS).map(grpc_code),
            };
        }
        Poll::Ready(Ok(response.map(|body| Measured::new(body, record))))
    }
}

fn grpc_code(value: &http::HeaderValue) -> Code {
    let code = std::str::from_utf8(value.as_bytes())
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
        .unwrap_or(tonic::Code::Unknown as i32);
    Code::Grpc(code)
}

/// What is recorded when a response ends (once, when dropped).
pub struct Record {
    route: Arc<RouteMetrics>,
    started: Instant,
    code: Option<Code>,
    /// The request's exported span, ended with it.
    span: Option<otel::Span>,
}

impl Drop for Record {
    fn drop(&mut self) {
        let code = self.code.unwrap_or(Code::Dropped);
        if let Some(mut span) = self.span.take() {
            end_span(&mut span, code);
        }
        self.route.in_flight.dec();
        self.route.count(code);
        let took = self.started.elapsed();
        if let Some(totals) = &self.route.totals {
            totals.ended(code, took);
        }
        self.route.duration.observe(took.as_secs_f64());
    }
}

/// Sets a served span's outcome; the span ends when dropped.
fn end_span(span: &mut otel::Span, code: Code) {
    let attribute = match code {
        Code::Grpc(number) => KeyValue::new("rpc.grpc.status_code", i64::from(number)),
        Code::Http(status) => KeyValue::new("http.response.status_code", i64::from(status)),
        Code::Dropped | Code::Failed => KeyValue::new("error.type", code.label()),
    };
    span.set_attribute(attribute);
    // The codes that say the server failed; the others are answers.
    if code.is_failure() {
        otel::fail(span, code.label());
    }
}

/// A response body that records its request when it ends (or is dropped).
pub type Measured<B> = Watched<B, Option<Record>>;

impl<B: Body> Watch<B> for Option<Record> {
    fn polled(&mut self, polled: &Polled<B>, _: &B) {
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(trailers), Some(record)) = (frame.trailers_ref(), self.as_mut()) {
                    if let Some(status) = trailers.get(GRPC_STATUS) {
                        record.code = Some(grpc_code(status));
                    }
                }
            }
            Poll::Ready(None) => {
                if let Some(mut record) = self.take() {
                    // A gRPC body that ended without a status in its
                    // trailers already had it in its headers (or is OK).
                    record
                        .code
                        .get_or_insert(Code::Grpc(tonic::Code::Ok as i32));
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(mut record) = self.take() {
                    record.code = Some(Code::Failed);
                }
            }
            Poll::Pending => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Metrics;
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn grpc_calls_are_counted_by_method_and_status_when_their_body_ends() {
        let metrics = Metrics::new();
        let service = tower::service_fn(|request: http::Request<()>| async move {
            let status = if request.uri().path().ends_with("/Fail") {
                "5"
            } else {
                "0"
            };
            let response = http::Response::builder()
                .header(GRPC_STATUS, status)
                .body(http_body_util::Full::new(bytes::Bytes::from_static(b"x")))
                .unwrap();
            Ok::<_, std::convert::Infallible>(response)
        });
        let mut service = metrics.grpc_layer().layer(service);
        for path in ["/pkg.S/Ok", "/pkg.S/Ok", "/pkg.S/Fail"] {
            let request = http::Request::builder().uri(path).body(()).unwrap();
            let response = tower::ServiceExt::oneshot(&mut service, request)
                .await
                .unwrap();
            // Still in flight until its body ends.
            assert!(metrics.render(None).contains(&format!(
                "svckit_grpc_requests_in_flight{{route=\"{path}\"}} 1"
            )));
            response.into_body().collect().await.unwrap();
        }
        let text = metrics.render(None);
        for line in [
            r#"svckit_grpc_requests_total{route="/pkg.S/Ok",code="Ok"} 2"#,
            r#"svckit_grpc_requests_total{route="/pkg.S/Fail",code="NotFound"} 1"#,
            r#"svckit_grpc_requests_in_flight{route="/pkg.S/Ok"} 0"#,
            r#"svckit_grpc_request_duration_seconds_count{route="/pkg.S/Ok"} 2"#,
        ] {
            assert!(text.lines().any(|l| l == line), "no {line} in\n{text}");
        }
    }
}
