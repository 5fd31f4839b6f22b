//! Prometheus metrics of a node, served at `/metrics`: requests, status
//! codes, latency and requests in flight per gRPC method and HTTP route,
//! and the node's registration state.
//!
//! One [`RequestMetricsLayer`] counts both servers: it labels a gRPC call by
//! its method path and its `grpc-status` (from the trailers, or the headers
//! of a trailers-only reply), and an HTTP request by its matched route and
//! status. A call is measured until its response body ends, so a stream
//! counts for as long as it runs.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

mod layer;
mod outside;
mod totals;

pub use self::layer::RequestMetricsLayer;
use self::layer::{Code, Kind};
use self::outside::ReasonLabel;
pub(crate) use self::outside::{ClientFigures, WorkerFigures};
use self::totals::Totals;
pub(crate) use self::totals::{bounds as latency_bounds, LoadFigures, TotalsSnapshot};
use crate::admission::{AdmissionStats, Load};
use crate::servicegroup::{MembershipStatus, RegistrationState};
use crate::sync::{read, write};
use crate::telemetry::otel::Exporter;
use crate::telemetry::trace::{NodeScope, TraceContextLayer};

/// Labels of a finished request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    /// gRPC method path or HTTP route.
    route: String,
    /// gRPC status name or HTTP status code.
    code: String,
}

/// Labels of a request in flight, or of its latency.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Route {
    route: String,
}

/// The request metrics of one protocol.
#[derive(Clone)]
struct Requests {
    total: Family<Outcome, Counter>,
    duration: Family<Route, Histogram>,
    in_flight: Family<Route, Gauge>,
    /// Each route's metric handles, made once: a request then costs a map
    /// lookup and a few atomic updates, with no label allocated.
    routes: Arc<RwLock<HashMap<String, Arc<RouteMetrics>>>>,
    /// The node's totals, shared by both protocols.
    totals: Arc<Totals>,
}

/// The handles of one route's metrics.
struct RouteMetrics {
    route: String,
    /// The node's totals, for a route of its API.
    totals: Option<Arc<Totals>>,
    in_flight: Gauge,
    duration: Histogram,
    total: Family<Outcome, Counter>,
    outcomes: RwLock<HashMap<Code, Counter>>,
}

impl RouteMetrics {
    fn count(&self, code: Code) {
        if let Some(counter) = read(&self.outcomes).get(&code) {
            counter.inc();
            return;
        }
        let counter = self
            .total
            .get_or_create(&Outcome {
                route: self.route.clone(),
                code: code.label(),
            })
            .clone();
        counter.inc();
        write(&self.outcomes).insert(code, counter);
    }
}

impl Requests {
    fn register(registry: &mut Registry, protocol: &str, totals: Arc<Totals>) -> Self {
        let requests = Requests {
            routes: Arc::default(),
            totals,
            total: Family::default(),
            // 100 µs to about 100 s.
            duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0001, 2.0, 21))
            }),
            in_flight: Family::default(),
        };
        registry.register(
            format!("svckit_{protocol}_requests"),
            format!("{protocol} requests finished, by route and status"),
            requests.total.clone(),
        );
        registry.register(
            format!("svckit_{protocol}_request_duration_seconds"),
            format!("{protocol} request latency until the response ended"),
            requests.duration.clone(),
        );
        registry.register(
            format!("svckit_{protocol}_requests_in_flight"),
            format!("{protocol} requests being served"),
            requests.in_flight.clone(),
        );
        requests
    }

    /// The handles of `route`, made on its first request; `api` says then
    /// whether it counts in the node's totals.
    fn route(&self, route: &str, api: impl FnOnce() -> bool) -> Arc<RouteMetrics> {
        if let Some(found) = read(&self.routes).get(route) {
            return found.clone();
        }
        let labels = Route {
            route: route.to_string(),
        };
        let made = Arc::new(RouteMetrics {
            route: route.to_string(),
            totals: api().then(|| self.totals.clone()),
            in_flight: self.in_flight.get_or_create(&labels).clone(),
            duration: self.duration.get_or_create(&labels).clone(),
            total: self.total.clone(),
            outcomes: RwLock::default(),
        });
        write(&self.routes)
            .entry(route.to_string())
            .or_insert(made)
            .clone()
    }
}

/// Labels of an admission figure.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Protocol {
    protocol: &'static str,
}

/// Labels of a refusal.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Refused {
    protocol: &'static str,
    /// `limit` (the adaptive limit) or `pool` (no slot within the wait).
    reason: &'static str,
}

/// The admission figures of both stacks.
#[derive(Clone, Default)]
struct Admission {
    limit: Family<Protocol, Gauge>,
    in_flight: Family<Protocol, Gauge>,
    refused: Family<Refused, Counter>,
    queue_delay: Family<Protocol, Gauge>,
    /// The node's one reading of load, which both stacks' limits read.
    load: Arc<Load>,
}

impl Admission {
    fn register(registry: &mut Registry) -> Self {
        let admission = Admission::default();
        registry.register(
            "svckit_admission_limit",
            "requests a stack admits at once now: while the node sheds a growing queue, the calls in flight it finishes within the target delay, else the pool size",
            admission.limit.clone(),
        );
        registry.register(
            "svckit_admission_in_flight",
            "requests past admission whose handler has not answered yet",
            admission.in_flight.clone(),
        );
        registry.register(
            "svckit_admission_refused",
            "requests refused before their handler ran: by the adaptive limit, for a deadline shorter than the queue, or for want of a pool slot",
            admission.refused.clone(),
        );
        registry.register(
            "svckit_admission_queue_delay_us",
            "how long a call waits before its handler runs, as last measured, in microseconds",
            admission.queue_delay.clone(),
        );
        admission
    }

    fn stats(&self, protocol: &'static str) -> AdmissionStats {
        let labels = Protocol { protocol };
        let refused = |reason| {
            self.refused
                .get_or_create(&Refused { protocol, reason })
                .clone()
        };
        AdmissionStats {
            in_flight: self.in_flight.get_or_create(&labels).clone(),
            limit: self.limit.get_or_create(&labels).clone(),
            refused_limit: refused("limit"),
            refused_deadline: refused("deadline"),
            refused_pool: refused("pool"),
            queue_delay_us: self.queue_delay.get_or_create(&labels).clone(),
        }
    }
}

/// Every metric of a node, and the registry that renders them.
pub struct Metrics {
    registry: Registry,
    grpc: Requests,
    http: Requests,
    registered: Gauge,
    heartbeat_failures: Gauge<u64, AtomicU64>,
    heartbeat_latency: Gauge<f64, AtomicU64>,
    reregistrations: Gauge<u64, AtomicU64>,
    log_lines_dropped: Counter,
    spans_exported: Counter,
    spans_dropped: Counter,
    admission: Admission,
    /// The node's span export, when it has an `otlp_endpoint`.
    exporter: Option<Exporter>,
    /// Workers restarted, by reason, as the supervisor last told.
    worker_restarts: Family<ReasonLabel, Counter>,
    /// The figures of the RPC clients made within the node.
    clients: ClientFigures,
    /// How stale their watches are.
    membership: crate::servicegroup::lag::MembershipFigures,
    /// Where they come from, once the node runs as a supervised worker.
    worker_figures: std::sync::OnceLock<Arc<WorkerFigures>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh set of metrics.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let totals = Arc::new(Totals::default());
        let grpc = Requests::register(&mut registry, "grpc", totals.clone());
        let http = Requests::register(&mut registry, "http", totals);
        let registered = Gauge::default();
        registry.register(
            "svckit_registered",
            "1 while the node is registered in the service group and its heartbeats succeed",
            registered.clone(),
        );
        let heartbeat_failures = Gauge::<u64, AtomicU64>::default();
        registry.register(
            "svckit_heartbeat_failures",
            "heartbeat or registration attempts that failed since the node joined",
            heartbeat_failures.clone(),
        );
        let heartbeat_latency = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "svckit_heartbeat_latency_seconds",
            "round trip of the node's last successful heartbeat to the registry",
            heartbeat_latency.clone(),
        );
        // Both reasons show from the start, at 0.
        let worker_restarts = Family::<ReasonLabel, Counter>::default();
        for reason in ["exited", "timeout"] {
            drop(worker_restarts.get_or_create(&ReasonLabel { reason }));
        }
        registry.register(
            "svckit_worker_restarts",
            "workers the supervisor restarted, by reason: exited (died unasked) or timeout (killed after missing its beats for worker_timeout)",
            worker_restarts.clone(),
        );
        let clients = ClientFigures::default();
        registry.register(
            "svckit_rpc_client_nodes",
            "routable nodes per topic, as the RPC clients made within this node see them",
            clients.nodes.clone(),
        );
        registry.register(
            "svckit_rpc_client_ejections",
            "nodes the RPC clients made within this node left out as outliers (failing well above their peers), per topic",
            clients.ejections.clone(),
        );
        registry.register(
            "svckit_rpc_client_feed_restarts",
            "restarts of the membership feed of the RPC clients made within this node after its watch ended or it panicked, per topic",
            clients.feed_restarts.clone(),
        );
        let reregistrations = Gauge::<u64, AtomicU64>::default();
        registry.register(
            "svckit_reregistrations",
            "times the node registered again (lease lost, key deleted, etcd restarted)",
            reregistrations.clone(),
        );
        let log_lines_dropped = Counter::default();
        registry.register(
            "svckit_log_lines_dropped",
            "log lines dropped because the log sink (stderr) did not take them",
            log_lines_dropped.clone(),
        );
        let spans_exported = Counter::default();
        registry.register(
            "svckit_trace_spans_exported",
            "spans the OTLP collector took (otlp_endpoint)",
            spans_exported.clone(),
        );
        let spans_dropped = Counter::default();
        registry.register(
            "svckit_trace_spans_dropped",
            "spans dropped because the OTLP collector did not take them (away, or too slow)",
            spans_dropped.clone(),
        );
        let membership = crate::servicegroup::lag::MembershipFigures::default();
        membership.register(&mut registry);
        let admission = Admission::register(&mut registry);
        Metrics {
            spans_exported,
            spans_dropped,
            admission,
            exporter: None,
            worker_restarts,
            clients,
            membership,
            worker_figures: std::sync::OnceLock::new(),
            registry,
            grpc,
            http,
            registered,
            heartbeat_failures,
            heartbeat_latency,
            reregistrations,
            log_lines_dropped,
        }
    }

    /// These metrics, with the node's span export.
    pub(crate) fn with_exporter(mut self, exporter: Option<Exporter>) -> Self {
        self.exporter = exporter;
        self
    }

    /// Counts the node's calls in flight in `slot` too (a supervised
    /// worker's, which its supervisor reads).
    pub(crate) fn share_in_flight(&self, slot: &'static std::sync::atomic::AtomicI64) {
        self.grpc.totals.share_in_flight(slot);
    }

    /// Shows what `figures` holds, as this node's worker restarts.
    pub(crate) fn worker_figures(&self, figures: Arc<WorkerFigures>) {
        let _ = self.worker_figures.set(figures);
    }

    /// The node's span export, if it has one.
    pub(crate) fn exporter(&self) -> Option<&Exporter> {
        self.exporter.as_ref()
    }

    /// The layer that starts the span of each gRPC call served (with the
    /// node's export) and hands on its trace context and deadline.
    pub(crate) fn trace_context(&self) -> TraceContextLayer {
        TraceContextLayer::default().with_node(self.node_scope())
    }

    /// What the node hands down to the requests it serves and its
    /// manager's hooks: its span export and its RPC clients' figures.
    pub(crate) fn node_scope(&self) -> NodeScope {
        NodeScope {
            exporter: self.exporter.clone(),
            clients: Some(self.clients.clone()),
            membership: Some(self.membership.clone()),
        }
    }

    /// The layer that counts gRPC calls.
    pub fn grpc_layer(&self) -> RequestMetricsLayer {
        RequestMetricsLayer::new(self.grpc.clone(), Kind::Grpc, true, self.exporter.is_some())
    }

    /// The layer that counts HTTP requests of the node's API (apply it as
    /// an axum route layer, so that the matched route is known).
    pub fn http_layer(&self) -> RequestMetricsLayer {
        RequestMetricsLayer::new(self.http.clone(), Kind::Http, true, self.exporter.is_some())
    }

    /// The same for the operations endpoints, which the node's totals
    /// leave out.
    pub fn http_ops_layer(&self) -> RequestMetricsLayer {
        RequestMetricsLayer::new(
            self.http.clone(),
            Kind::Http,
            false,
            self.exporter.is_some(),
        )
    }

    /// The node's totals over its API (`Base/Stats`).
    pub(crate) fn totals(&self) -> TotalsSnapshot {
        self.grpc.totals.snapshot()
    }

    /// What the node's load reports read (`OpenRcaService` and the
    /// per-call trailer): its totals and its gRPC admission figures.
    pub(crate) fn load_figures(&self) -> LoadFigures {
        LoadFigures::new(self.grpc.totals.clone(), self.admission("grpc"))
    }

    /// The admission figures of one stack (`grpc` or `http`).
    pub(crate) fn admission(&self, protocol: &'static str) -> AdmissionStats {
        self.admission.stats(protocol)
    }

    /// The node's reading of load, shared by its gRPC and HTTP stacks.
    pub(crate) fn load(&self) -> Arc<Load> {
        self.admission.load.clone()
    }

    /// The admission figures of both stacks, for the report.
    pub(crate) fn admission_report(&self) -> serde_json::Value {
        let one = |protocol| {
            let stats = self.admission.stats(protocol);
            serde_json::json!({
                "limit": stats.limit.get(),
                "in_flight": stats.in_flight.get(),
                "refused_limit": stats.refused_limit.get(),
                "refused_pool": stats.refused_pool.get(),
                "refused_deadline": stats.refused_deadline.get(),
                "queue_delay_us": stats.queue_delay_us.get(),
            })
        };
        serde_json::json!({ "grpc": one("grpc"), "http": one("http") })
    }

    /// The Prometheus text exposition, with the registration state as of
    /// `status` (`None`: not registered).
    pub fn render(&self, status: Option<&MembershipStatus>) -> String {
        let registered = status.is_some_and(|s| s.state == RegistrationState::Registered);
        self.registered.set(i64::from(registered));
        if let Some(status) = status {
            self.heartbeat_failures.set(status.failures);
            if let Some(latency) = status.heartbeat_latency {
                self.heartbeat_latency.set(latency.as_secs_f64());
            }
            self.reregistrations.set(status.reregistrations);
        }
        let dropped = crate::telemetry::sink::dropped_lines();
        let seen = self.log_lines_dropped.get();
        if dropped > seen {
            self.log_lines_dropped.inc_by(dropped - seen);
        }
        if let Some(figures) = self.worker_figures.get() {
            for (reason, now) in figures.by_reason() {
                let counter = self.worker_restarts.get_or_create(&ReasonLabel { reason });
                let seen = counter.get();
                if now > seen {
                    counter.inc_by(now - seen);
                }
            }
        }
        if let Some((exported, dropped)) = self.exporter.as_ref().map(Exporter::counts) {
            for (counter, now) in [
                (&self.spans_exported, exported),
                (&self.spans_dropped, dropped),
            ] {
                let seen = counter.get();
                if now > seen {
                    counter.inc_by(now - seen);
                }
            }
        }
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }
}
