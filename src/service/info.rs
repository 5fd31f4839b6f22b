//! [`NodeInfo`]: what a node is and where it stands, shared by the node, its
//! `Base` API and its reports.
//!
//! Locks: identity fields are plain (set at build), write-once data sits in
//! `OnceLock`, and what changes (config on SIGHUP, membership at stop) in an
//! `RwLock` whose poisoning is recovered from: every write stores a whole
//! value, so a panic elsewhere cannot leave it half-written.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::conn::{ConnectionCounts, Connections};
use crate::config::Config;

use super::Advertised;
use crate::periodic::Timer;
use crate::servicegroup::{self, Endpoints, MembershipStatus, Registry, RegistryHandle};
use crate::sync::{read, write};
use crate::telemetry::metrics::Metrics;
use crate::telemetry::otel;

/// Bound on asking the registry for the members shown in a report: a report
/// is for debugging a node whose registry may be the problem.
pub const MEMBERS_TIMEOUT: Duration = Duration::from_secs(2);

/// Where a node stands in its lifecycle, for reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum NodeState {
    /// Built, not started.
    Created,
    /// Binding, running the start hooks, registering.
    Starting,
    /// Serving calls.
    Serving,
    /// Leaving the group and draining.
    Stopping,
    /// Stopped (or its start failed).
    Stopped,
}

/// A node's identity and state.
pub struct NodeInfo {
    /// The host name the node registers as (with `topic`, its identity).
    pub host: String,
    /// The topic served.
    pub topic: String,
    /// The binary name recorded in the service record (nova's `binary`).
    pub binary: String,
    /// The software version recorded in the service record.
    pub version: String,
    /// When the node was built, for the report's uptime.
    pub started_at: SystemTime,
    config: RwLock<Config>,
    /// Known once the listeners are bound; a node binds once.
    endpoints: OnceLock<Endpoints>,
    /// The gRPC service names advertised, known once the server is built.
    services: OnceLock<Vec<String>>,
    /// How the launcher advertised the node (set once it did).
    advertised: RwLock<Advertised>,
    /// Serving and advertised: what `/readyz` answers.
    ready: AtomicBool,
    metrics: Arc<Metrics>,
    /// The process's registry, handed down at start: for elections and the
    /// members list of the report.
    registry: RwLock<Option<RegistryHandle>>,
    /// The worker slot in a multi-process node, known at start.
    worker: OnceLock<Option<u32>>,
    state: tokio::sync::watch::Sender<NodeState>,
    /// The gRPC server's connections, counted for the report.
    pub(super) connections: Arc<Connections>,
    /// The periodic task timer, while one runs in this process.
    periodic: RwLock<Option<Arc<Timer>>>,
}

impl NodeInfo {
    pub(super) fn new(
        host: String,
        topic: String,
        binary: String,
        version: String,
        config: Config,
    ) -> Self {
        let connections =
            Connections::new(config.rpc_max_connections, config.rpc_handshake_timeout);
        // The node's own span export, to its own otlp_endpoint.
        let identity = otel::Identity {
            service: binary.clone(),
            host: host.clone(),
            topic: Some(topic.clone()),
        };
        let exporter = otel::Exporter::from_config(&config, identity);
        NodeInfo {
            host,
            topic,
            binary,
            version,
            started_at: SystemTime::now(),
            config: RwLock::new(config),
            endpoints: OnceLock::new(),
            services: OnceLock::new(),
            advertised: RwLock::new(Advertised::default()),
            ready: AtomicBool::new(false),
            metrics: Arc::new(Metrics::new().with_exporter(exporter)),
            registry: RwLock::new(None),
            worker: OnceLock::new(),
            state: tokio::sync::watch::Sender::new(NodeState::Created),
            periodic: RwLock::new(None),
            connections: Arc::new(connections),
        }
    }

    /// Whether the node serves and is advertised (or, as a worker, serves).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    pub(super) fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// The node's metrics.
    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The registration's health, while this process holds it.
    pub fn membership_status(&self) -> Option<MembershipStatus> {
        read(&self.advertised).status()
    }

    /// The config in force (after any SIGHUP).
    pub fn config(&self) -> Config {
        crate::sync::read(&self.config).clone()
    }

    pub(super) fn set_config(&self, config: Config) {
        *crate::sync::write(&self.config) = config;
    }

    /// The advertised endpoints (empty until the listeners are bound).
    pub fn endpoints(&self) -> Endpoints {
        self.endpoints.get().cloned().unwrap_or_default()
    }

    pub(super) fn set_endpoints(&self, endpoints: Endpoints) {
        let _ = self.endpoints.set(endpoints);
    }

    /// The gRPC service names advertised (empty until the server is built).
    pub fn services(&self) -> Vec<String> {
        self.services.get().cloned().unwrap_or_default()
    }

    pub(super) fn set_services(&self, services: Vec<String>) {
        let _ = self.services.set(services);
    }

    pub(super) fn set_advertised(&self, advertised: Advertised) {
        *write(&self.advertised) = advertised;
    }

    /// The process's registry, if it is connected.
    pub fn registry(&self) -> Option<Registry> {
        read(&self.registry).as_ref()?.connected()
    }

    pub(super) fn registry_handle(&self) -> Option<RegistryHandle> {
        read(&self.registry).clone()
    }

    pub(super) fn set_registry(&self, registry: RegistryHandle) {
        *write(&self.registry) = Some(registry);
    }

    /// `Some(slot)` when the node runs as worker `slot` of a multi-process
    /// node (`None` before the start too).
    pub fn worker(&self) -> Option<u32> {
        self.worker.get().copied().flatten()
    }

    pub(super) fn set_worker(&self, worker: Option<u32>) {
        let _ = self.worker.set(worker);
    }

    /// The gRPC connections open now and accepted since the start.
    pub fn connections(&self) -> ConnectionCounts {
        self.connections.counts()
    }

    /// Where the node stands in its lifecycle.
    pub fn state(&self) -> NodeState {
        *self.state.borrow()
    }

    pub(super) fn set_state(&self, state: NodeState) {
        self.state.send_replace(state);
    }

    /// Resolves once the node leaves [`NodeState::Serving`] for a stop:
    /// what long-lived streams end on, so that they do not hold the drain.
    pub(crate) async fn stopping(&self) {
        let mut state = self.state.subscribe();
        let _ = state
            .wait_for(|s| matches!(s, NodeState::Stopping | NodeState::Stopped))
            .await;
    }

    pub(crate) fn periodic(&self) -> Option<Arc<Timer>> {
        read(&self.periodic).clone()
    }

    pub(super) fn set_periodic(&self, timer: Option<Arc<Timer>>) {
        *write(&self.periodic) = timer;
    }

    /// How long the process has run.
    pub(crate) fn uptime(&self) -> std::time::Duration {
        SystemTime::now()
            .duration_since(self.started_at)
            .unwrap_or_default()
    }

    /// The node's state report (see [`crate::report`]): identity, build,
    /// process, lifecycle, registration, the members of its topic the
    /// registry shows (asked within a short bound), periodic tasks,
    /// the tokio runtime, and the config with secrets as `***`.
    pub async fn report(&self) -> serde_json::Value {
        let config = self.config();
        let options: serde_json::Map<_, _> = config
            .entries()
            .into_iter()
            .map(|(name, value, source)| {
                (
                    name.to_string(),
                    serde_json::json!({ "value": value, "source": source.to_string() }),
                )
            })
            .collect();
        let uptime = self.uptime();
        serde_json::json!({
            "package": { "name": env!("CARGO_PKG_NAME"), "version": env!("CARGO_PKG_VERSION") },
            "build": crate::report::build(),
            "node": {
                "host": self.host,
                "topic": self.topic,
                "binary": self.binary,
                "version": self.version,
                "state": self.state(),
                "worker": self.worker(),
                "endpoints": self.endpoints(),
                "services": self.services(),
                "connections": self.connections(),
            },
            "process": {
                "pid": std::process::id(),
                "ppid": nix::unistd::getppid().as_raw(),
                "cmdline": std::env::args().collect::<Vec<_>>(),
                "started_at": servicegroup::rfc3339(self.started_at),
                "uptime_secs": uptime.as_secs_f64(),
                "log_lines_dropped": crate::telemetry::sink::dropped_lines(),
            },
            "admission": self.metrics.admission_report(),
            "registration": self.registration(),
            "members": self.members_seen().await,
            "periodic_tasks": self.periodic().map(|t| t.status()).unwrap_or_default(),
            "runtime": crate::report::runtime(),
            "config": options,
        })
    }

    /// Where the node's registration stands; a worker leaves it to its
    /// supervisor.
    fn registration(&self) -> serde_json::Value {
        let advertised = read(&self.advertised);
        match advertised.status() {
            Some(status) => serde_json::json!(status),
            None if advertised.is_by_supervisor() => serde_json::json!({ "state": "supervisor" }),
            None => serde_json::json!({ "state": "unregistered" }),
        }
    }

    /// The members of this node's topic as the registry shows them.
    async fn members_seen(&self) -> serde_json::Value {
        let Some(registry) = self.registry() else {
            return serde_json::Value::Null;
        };
        match tokio::time::timeout(MEMBERS_TIMEOUT, registry.list(Some(&self.topic))).await {
            Ok(Ok(members)) => members
                .iter()
                .map(|m| {
                    serde_json::json!({
                        "host": m.record.advert.host,
                        "state": m.state(),
                        "disabled": m.record.disabled,
                        "forced_down": m.record.forced_down,
                        "endpoint": m.record.advert.endpoints.grpc,
                        "version": m.record.advert.version,
                    })
                })
                .collect(),
            Ok(Err(e)) => serde_json::json!({ "error": e.to_string() }),
            Err(_) => {
                serde_json::json!({ "error": format!("no answer within {MEMBERS_TIMEOUT:?}") })
            }
        }
    }
}
