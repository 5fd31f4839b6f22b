//! The exported span of a client call (with `otlp_endpoint` set): started
//! when the call enters the channel, told which nodes the balancer picked
//! and whether the call was hedged or retried, and ended with the call's
//! status when its response ends.

use std::sync::{Arc, Mutex};
use std::task::Poll;

use opentelemetry::trace::{Span as _, SpanKind};
use opentelemetry::KeyValue;
use tonic::body::Body;
use tonic::Status;

use super::super::discovery::Node;
use super::super::Target;
use crate::body::{Polled, Watch, Watched};
use crate::error::BoxError;
use crate::telemetry::otel;
use crate::telemetry::trace::TRACEPARENT;
use crate::wire::GRPC_STATUS;

/// The span of one call, in the request's extensions on its way through
/// the send paths.
#[derive(Clone)]
pub(super) struct ClientSpan(Arc<Mutex<Call>>);

struct Call {
    span: otel::Span,
    attempts: u32,
    hedged: bool,
}

impl ClientSpan {
    /// A span of `exporter`'s for `request` to `target`; its context
    /// replaces the request's `traceparent`, whose span (the caller's, or
    /// the request being served) becomes its parent.
    pub(super) fn start(
        request: &mut http::Request<Body>,
        target: &Target,
        parent: Option<http::HeaderValue>,
        exporter: &otel::Exporter,
    ) -> ClientSpan {
        let (service, method) = otel::rpc_names(request.uri().path());
        let name = format!("{service}/{method}");
        let attributes = vec![
            KeyValue::new("rpc.system", "grpc"),
            KeyValue::new("rpc.service", service),
            KeyValue::new("rpc.method", method),
            KeyValue::new("svckit.topic", target.topic.clone()),
        ];
        let parent = request.headers().get(TRACEPARENT).cloned().or(parent);
        let span = exporter.span(name, SpanKind::Client, parent.as_ref(), attributes);
        if let Some(context) = otel::traceparent(&span) {
            request.headers_mut().insert(TRACEPARENT, context);
        }
        let call = ClientSpan(Arc::new(Mutex::new(Call {
            span,
            attempts: 0,
            hedged: false,
        })));
        request.extensions_mut().insert(call.clone());
        call
    }

    /// Notes that a copy of the call goes to `node` (a hedge when
    /// `hedge`), if the call has a span.
    pub(super) fn attempt(extensions: &http::Extensions, node: &Node, hedge: bool) {
        let Some(ClientSpan(call)) = extensions.get::<ClientSpan>() else {
            return;
        };
        let Ok(mut call) = call.lock() else {
            return;
        };
        call.attempts += 1;
        call.hedged |= hedge;
        let host = node.host().to_string();
        let address = node
            .member
            .record
            .advert
            .endpoints
            .grpc
            .as_deref()
            .and_then(|url| url.parse::<http::Uri>().ok())
            .and_then(|uri| Some((uri.host()?.to_string(), uri.port_u16())));
        call.span.set_attribute(KeyValue::new("svckit.host", host));
        if let Some((address, port)) = address {
            call.span
                .set_attribute(KeyValue::new("server.address", address));
            if let Some(port) = port {
                call.span
                    .set_attribute(KeyValue::new("server.port", i64::from(port)));
            }
        }
    }

    /// Ends the span with the call's outcome: at once for a failure, when
    /// the response body ends (its trailers hold the status) otherwise.
    pub(super) fn finish(
        self,
        result: Result<http::Response<Body>, BoxError>,
    ) -> Result<http::Response<Body>, BoxError> {
        {
            let Ok(mut call) = self.0.lock() else {
                return result;
            };
            let (attempts, hedged) = (call.attempts, call.hedged);
            call.span.set_attributes([
                KeyValue::new("svckit.hedged", hedged),
                KeyValue::new("svckit.retried", attempts > 1 && !hedged),
                KeyValue::new("svckit.attempts", i64::from(attempts)),
            ]);
            match &result {
                Err(e) => {
                    let code = e
                        .downcast_ref::<Status>()
                        .map_or(tonic::Code::Unavailable, Status::code);
                    status(&mut call.span, code as i32);
                    return result;
                }
                Ok(response) => {
                    if let Some(code) = response.headers().get(GRPC_STATUS) {
                        status(&mut call.span, parse_code(code));
                    }
                }
            }
        }
        let response = result?;
        Ok(response.map(|body| Body::new(Traced::new(body, Some(self)))))
    }
}

fn parse_code(value: &http::HeaderValue) -> i32 {
    tonic::Code::from_bytes(value.as_bytes()) as i32
}

/// A client span's status: any code but OK is an error of the call.
fn status(span: &mut otel::Span, code: i32) {
    span.set_attribute(KeyValue::new("rpc.grpc.status_code", i64::from(code)));
    if code != 0 {
        otel::fail(span, format!("{:?}", tonic::Code::from_i32(code)));
    }
}

/// A response body that ends its call's span when it ends.
type Traced = Watched<Body, Option<ClientSpan>>;

impl Watch<Body> for Option<ClientSpan> {
    fn polled(&mut self, polled: &Polled<Body>, _: &Body) {
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(|t| t.get(GRPC_STATUS)) {
                    if let Some(call) = self.take() {
                        if let Ok(mut call) = call.0.lock() {
                            status(&mut call.span, parse_code(code));
                        }
                    }
                }
            }
            Poll::Ready(Some(Err(e))) => {
                if let Some(call) = self.take() {
                    if let Ok(mut call) = call.0.lock() {
                        status(&mut call.span, e.code() as i32);
                    }
                }
            }
            Poll::Ready(None) => {
                self.take();
            }
            Poll::Pending => {}
        }
    }
}
