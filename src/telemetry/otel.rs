//! Spans that leave the process: with `otlp_endpoint` set, every served
//! gRPC call and HTTP request and every call made through an
//! [`Rpc`](crate::rpc::Rpc) channel is an OpenTelemetry span, exported in
//! batches over OTLP/gRPC.
//!
//! The spans are made here with OpenTelemetry's API, not from the log's
//! `tracing` spans: which spans exist must not depend on the log filter,
//! and a call costs no span at all when no endpoint is set (one atomic
//! load). A span's parent is the incoming `traceparent`; the calls made
//! while serving carry the served span's own context on, so that a trace
//! links every hop as parent and child.
//!
//! Each node has its own [`Exporter`] (and an RPC client made from a
//! config its own too): two nodes of one process export to their own
//! collectors, and a call made while serving a request is exported with
//! the spans of the node serving it. Export runs on a thread of its own
//! with its own small runtime: a call never waits on the collector. When the collector is away, the spans of
//! the batches that fail are counted as dropped
//! (`svckit_trace_spans_dropped_total`), and the queue (2,048 spans)
//! drops the newest past its size.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider, SpanData, SpanExporter,
};
use opentelemetry_sdk::Resource;

use crate::error::{Error, Result};

/// A span of this process, ended when dropped.
pub(crate) type Span = opentelemetry_sdk::trace::Span;

/// How long an export may take before its batch counts as dropped.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the exit waits for the last spans to go out.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// One exporter's tracer, and what ends it.
struct Exporting {
    tracer: SdkTracer,
    provider: SdkTracerProvider,
    counters: Arc<Counters>,
    /// Dropped with the exporter: ends the thread of its connection.
    _thread: std::sync::mpsc::SyncSender<()>,
}

impl Drop for Exporting {
    fn drop(&mut self) {
        let _ = self.provider.shutdown_with_timeout(FLUSH_TIMEOUT);
    }
}

#[derive(Default, Debug)]
struct Counters {
    exported: AtomicU64,
    dropped: AtomicU64,
}

/// What the spans of a node say about it.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    /// `service.name`: the binary.
    pub(crate) service: String,
    /// The node's host name.
    pub(crate) host: String,
    /// The node's topic, when it has one.
    pub(crate) topic: Option<String>,
}

/// The span export of one node (or one RPC client): its own connection to
/// its `otlp_endpoint`, its own batches and counters, so that two nodes in
/// one process export to their own collectors. Cheap to clone; the last
/// clone dropped sends what is queued, within a bound.
#[derive(Clone)]
pub(crate) struct Exporter(Arc<Exporting>);

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter")
            .field("counters", &self.0.counters)
            .finish()
    }
}

impl Exporter {
    /// The export named by `config` (`otlp_endpoint`, `otlp_sample_ratio`),
    /// if it names one; a failure to start it is logged, and spans are not
    /// exported.
    pub(crate) fn from_config(config: &crate::config::Config, identity: Identity) -> Option<Self> {
        let endpoint = config.otlp_endpoint.as_ref()?;
        match Exporter::start(&endpoint.0, config.otlp_sample_ratio.0, identity) {
            Ok(exporter) => Some(exporter),
            Err(e) => {
                tracing::error!(error = %e, "spans are not exported");
                None
            }
        }
    }

    /// Starts the export to `endpoint` (`http://host:4317`). `ratio`
    /// samples the traces this exporter starts; a span with a parent
    /// follows its parent's decision.
    pub(crate) fn start(endpoint: &str, ratio: f64, identity: Identity) -> Result<Self> {
        // The exporter's connection lives on a runtime of its own: the
        // batch thread waits on it, and the caller's runtime may stop
        // first. The runtime's thread ends with the exporter.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("svckit-otlp")
            .enable_all()
            .build()?;
        let exporter = {
            let _entered = runtime.enter();
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .with_timeout(EXPORT_TIMEOUT)
                .build()
                .map_err(|e| Error::config(format!("otlp_endpoint {endpoint}: {e}")))?
        };
        let (ended, end) = std::sync::mpsc::sync_channel::<()>(0);
        std::thread::Builder::new()
            .name("svckit-otlp".into())
            .spawn(move || {
                let _entered = runtime.enter();
                // Returns once the exporter is dropped (the sender gone).
                let _ = end.recv();
            })?;
        let counters = Arc::new(Counters::default());
        let exporter = Counting {
            inner: exporter,
            counters: counters.clone(),
        };
        let mut resource = Resource::builder()
            .with_service_name(identity.service)
            .with_attributes([
                KeyValue::new("host.name", identity.host.clone()),
                KeyValue::new("service.instance.id", identity.host),
                KeyValue::new("process.pid", i64::from(std::process::id())),
            ]);
        if let Some(topic) = identity.topic {
            resource = resource.with_attributes([KeyValue::new("svckit.topic", topic)]);
        }
        let provider = SdkTracerProvider::builder()
            .with_span_processor(BatchSpanProcessor::builder(exporter).build())
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                ratio,
            ))))
            .with_resource(resource.build())
            .build();
        let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "svckit");
        tracing::info!(%endpoint, ratio, "exporting spans over OTLP");
        Ok(Exporter(Arc::new(Exporting {
            tracer,
            provider,
            counters,
            _thread: ended,
        })))
    }

    /// Sends the spans still queued, within a bound: at a node's stop.
    pub(crate) fn flush(&self) {
        let _ = self.0.provider.force_flush();
    }

    /// Spans exported, and spans dropped because the collector did not
    /// take them: for `/metrics`.
    pub(crate) fn counts(&self) -> (u64, u64) {
        let c = &self.0.counters;
        (
            c.exported.load(Ordering::Relaxed),
            c.dropped.load(Ordering::Relaxed),
        )
    }

    /// A span of `kind` under `parent` (a `traceparent` value; none starts
    /// a trace).
    pub(crate) fn span(
        &self,
        name: impl Into<Cow<'static, str>>,
        kind: SpanKind,
        parent: Option<&HeaderValue>,
        attributes: Vec<KeyValue>,
    ) -> Span {
        let parent = match parent.and_then(parse) {
            Some(remote) => Context::new().with_remote_span_context(remote),
            None => Context::new(),
        };
        let tracer = &self.0.tracer;
        tracer
            .span_builder(name)
            .with_kind(kind)
            .with_attributes(attributes)
            .start_with_context(tracer, &parent)
    }
}

/// The `traceparent` that makes `span` the parent of the next hop.
pub(crate) fn traceparent(span: &Span) -> Option<HeaderValue> {
    let context = span.span_context();
    if !context.is_valid() {
        return None;
    }
    HeaderValue::from_str(&format!(
        "00-{}-{}-{:02x}",
        context.trace_id(),
        context.span_id(),
        context.trace_flags().to_u8()
    ))
    .ok()
}

/// A W3C `traceparent`'s span context (already checked for its shape by
/// the layer that takes it).
fn parse(value: &HeaderValue) -> Option<SpanContext> {
    let text = value.to_str().ok()?;
    let mut parts = text.split('-');
    let _version = parts.next()?;
    let trace_id = TraceId::from_hex(parts.next()?).ok()?;
    let span_id = SpanId::from_hex(parts.next()?).ok()?;
    let flags = u8::from_str_radix(parts.next()?, 16).ok()?;
    let context = SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags),
        true,
        TraceState::default(),
    );
    context.is_valid().then_some(context)
}

/// `rpc.service` and `rpc.method` of a gRPC path (`/pkg.Service/Method`).
pub(crate) fn rpc_names(path: &str) -> (String, String) {
    let path = path.trim_start_matches('/');
    match path.rsplit_once('/') {
        Some((service, method)) => (service.to_string(), method.to_string()),
        None => (path.to_string(), String::new()),
    }
}

/// Marks a span failed (an error status) with `description`.
pub(crate) fn fail(span: &mut Span, description: String) {
    span.set_status(opentelemetry::trace::Status::error(description));
}

/// The exporter, counting what it exports and what it drops.
#[derive(Debug)]
struct Counting<E> {
    inner: E,
    counters: Arc<Counters>,
}

impl<E: SpanExporter> SpanExporter for Counting<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len() as u64;
        let result = self.inner.export(batch).await;
        let counter = match result {
            Ok(()) => &self.counters.exported,
            Err(_) => &self.counters.dropped,
        };
        counter.fetch_add(n, Ordering::Relaxed);
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_parse_to_their_ids() {
        let value =
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let context = parse(&value).expect("valid");
        assert_eq!(
            context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(context.span_id().to_string(), "00f067aa0ba902b7");
        assert!(context.is_sampled());
        let zero =
            HeaderValue::from_static("00-00000000000000000000000000000000-00f067aa0ba902b7-01");
        assert!(parse(&zero).is_none(), "an all-zero trace id is invalid");
    }

    #[test]
    fn grpc_paths_name_service_and_method() {
        assert_eq!(
            rpc_names("/svckit.examples.echo.v1.Echo/Echo"),
            ("svckit.examples.echo.v1.Echo".into(), "Echo".into())
        );
    }
}
