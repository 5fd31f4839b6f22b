//! Figures a node shows that come from outside it: the process's RPC
//! clients, which the manager makes apart from any node, and what a
//! worker's supervisor tells of the workers it restarted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct Topic {
    topic: String,
}

/// Routable nodes per topic as this process's RPC clients see them: the
/// clients are made by the manager, apart from any node, so the gauge is
/// the process's and every node's registry shows it.
pub(super) static CLIENT_NODES: LazyLock<Family<Topic, Gauge>> = LazyLock::new(Family::default);

/// Sets the routable nodes of `topic` seen by this process's RPC clients.
pub(crate) fn set_client_nodes(topic: &str, nodes: usize) {
    CLIENT_NODES
        .get_or_create(&Topic {
            topic: topic.to_string(),
        })
        .set(i64::try_from(nodes).unwrap_or(i64::MAX));
}

/// Nodes this process's RPC clients ejected as outliers, per topic.
pub(super) static CLIENT_EJECTIONS: LazyLock<Family<Topic, Counter>> =
    LazyLock::new(Family::default);

/// Counts an ejection of a node of `topic`.
pub(crate) fn count_ejection(topic: &str) {
    CLIENT_EJECTIONS
        .get_or_create(&Topic {
            topic: topic.to_string(),
        })
        .inc();
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ReasonLabel {
    pub(super) reason: &'static str,
}

/// What a worker's supervisor last told it of the workers it restarted:
/// workers that died, and (of those) workers it killed for missing their
/// beats. Shared by the worker's services, whose metrics show it.
#[derive(Debug, Default)]
pub(crate) struct WorkerFigures {
    restarts: AtomicU64,
    timeouts: AtomicU64,
}

impl WorkerFigures {
    /// The restart count the supervisor sent (every reason).
    pub(crate) fn set_restarts(&self, restarts: u64) {
        self.restarts.store(restarts, Ordering::Relaxed);
    }

    /// How many of the restarts were workers killed as hung.
    pub(crate) fn set_timeouts(&self, timeouts: u64) {
        self.timeouts.store(timeouts, Ordering::Relaxed);
    }

    /// Workers restarted per reason: `exited` (died unasked) and `timeout`
    /// (killed after missing their beats).
    pub(super) fn by_reason(&self) -> [(&'static str, u64); 2] {
        let restarts = self.restarts.load(Ordering::Relaxed);
        let timeouts = self.timeouts.load(Ordering::Relaxed);
        [
            ("exited", restarts.saturating_sub(timeouts)),
            ("timeout", timeouts),
        ]
    }
}
