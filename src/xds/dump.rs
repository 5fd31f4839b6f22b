//! What each ADS stream was sent and what its client answered, for
//! `GET /config_dump`, and the control plane's figures for `/metrics`,
//! NACKs counted per client and resource type among them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;

use super::resources::Kind;
use super::XdsStats;
use crate::sync::lock;

/// Every open stream's exchange, and the NACKs of every stream so far.
#[derive(Default)]
pub(super) struct Dumps {
    next: AtomicU64,
    streams: Mutex<BTreeMap<u64, StreamDump>>,
    nacks: Family<Rejected, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Rejected {
    /// The client's node id, from its bootstrap.
    client: String,
    /// The resource type, e.g. `Listener`.
    r#type: String,
}

#[derive(Default, Serialize)]
struct StreamDump {
    /// The client's node id.
    node: String,
    /// Its library and version, from its node.
    user_agent: String,
    /// Topics whose Cluster it was sent with round robin instead of their
    /// policy, which its version cannot take.
    round_robin_instead: BTreeSet<String>,
    /// By resource type.
    types: BTreeMap<&'static str, TypeDump>,
}

#[derive(Default, Serialize)]
struct TypeDump {
    /// The names subscribed, as of the last response.
    names: Vec<String>,
    /// The version and nonce of the last response.
    version_sent: String,
    nonce: String,
    /// The last version the client accepted.
    acked: Option<String>,
    /// The client's last rejection: the version it kept, and why.
    nacked: Option<Nack>,
}

#[derive(Serialize)]
struct Nack {
    kept_version: String,
    error: String,
}

impl Dumps {
    /// A new stream's id.
    pub(super) fn open(&self) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        lock(&self.streams).insert(id, StreamDump::default());
        id
    }

    pub(super) fn close(&self, id: u64) {
        lock(&self.streams).remove(&id);
    }

    fn with(&self, id: u64, kind: Kind, change: impl FnOnce(&mut TypeDump)) {
        if let Some(stream) = lock(&self.streams).get_mut(&id) {
            change(stream.types.entry(kind.name()).or_default());
        }
    }

    pub(super) fn node(&self, id: u64, node: &str, user_agent: &str) {
        if let Some(stream) = lock(&self.streams).get_mut(&id) {
            stream.node = node.to_string();
            stream.user_agent = user_agent.to_string();
        }
    }

    pub(super) fn held_back(&self, id: u64, topics: BTreeSet<String>) {
        if let Some(stream) = lock(&self.streams).get_mut(&id) {
            stream.round_robin_instead = topics;
        }
    }

    pub(super) fn sent(&self, id: u64, kind: Kind, names: Vec<String>, version: &str, nonce: &str) {
        self.with(id, kind, |t| {
            t.names = names;
            t.version_sent = version.to_string();
            t.nonce = nonce.to_string();
        });
    }

    pub(super) fn acked(&self, id: u64, kind: Kind, version: &str) {
        self.with(id, kind, |t| t.acked = Some(version.to_string()));
    }

    pub(super) fn nacked(&self, id: u64, node: &str, kind: Kind, kept: &str, error: &str) {
        self.nacks
            .get_or_create(&Rejected {
                client: node.to_string(),
                r#type: kind.name().to_string(),
            })
            .inc();
        self.with(id, kind, |t| {
            t.nacked = Some(Nack {
                kept_version: kept.to_string(),
                error: error.to_string(),
            })
        });
    }

    /// Every open stream's exchange, by stream.
    pub(super) fn json(&self) -> serde_json::Value {
        let streams = lock(&self.streams);
        let streams: Vec<&StreamDump> = streams.values().collect();
        serde_json::json!({ "streams": streams })
    }

    /// The control plane's figures, in Prometheus' text format.
    pub(super) fn metrics(&self, stats: &XdsStats, more: impl FnOnce(&mut Registry)) -> String {
        let mut registry = Registry::default();
        let gauge = |value: u64| {
            let g = Gauge::<i64>::default();
            g.set(i64::try_from(value).unwrap_or(i64::MAX));
            g
        };
        let counter = |value: u64| {
            let c = Counter::<u64>::default();
            c.inc_by(value);
            c
        };
        registry.register(
            "svckit_xds_streams",
            "ADS streams open now",
            gauge(stats.streams),
        );
        registry.register(
            "svckit_xds_topics",
            "topics watched now",
            gauge(stats.topics),
        );
        registry.register(
            "svckit_xds_streams_opened",
            "ADS streams opened",
            counter(stats.streams_total),
        );
        registry.register(
            "svckit_xds_responses",
            "responses sent",
            counter(stats.pushes),
        );
        registry.register(
            "svckit_xds_acks",
            "responses the clients accepted",
            counter(stats.acks),
        );
        registry.register(
            "svckit_xds_nacks",
            "responses the clients rejected, per client (node id) and resource type",
            self.nacks.clone(),
        );
        more(&mut registry);
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
        text
    }
}
