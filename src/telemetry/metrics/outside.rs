//! Figures a node shows that come from outside it: the RPC clients made
//! within it, and what a worker's supervisor tells of the workers it
//! restarted.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct Topic {
    topic: String,
}

/// What an RPC client keeps of the topics it calls, per topic: the
/// routable nodes it sees, the nodes it ejected as outliers, and the
/// restarts of its membership feed. A client
/// made within a node (a request it serves, its manager's hooks) writes the
/// node's, shown on its `/metrics`; any other keeps its own, shown nowhere.
#[derive(Clone, Debug, Default)]
pub(crate) struct ClientFigures {
    pub(super) nodes: Family<Topic, Gauge>,
    pub(super) ejections: Family<Topic, Counter>,
    pub(super) feed_restarts: Family<Topic, Counter>,
}

impl ClientFigures {
    /// Sets the routable nodes of `topic` the client sees.
    pub(crate) fn set_nodes(&self, topic: &str, nodes: usize) {
        self.nodes
            .get_or_create(&Topic {
                topic: topic.to_string(),
            })
            .set(i64::try_from(nodes).unwrap_or(i64::MAX));
    }

    /// Counts an ejection of a node of `topic`.
    pub(crate) fn count_ejection(&self, topic: &str) {
        self.ejections
            .get_or_create(&Topic {
                topic: topic.to_string(),
            })
            .inc();
    }

    /// Counts a restart of the membership feed of `topic`.
    pub(crate) fn count_feed_restart(&self, topic: &str) {
        self.feed_restarts
            .get_or_create(&Topic {
                topic: topic.to_string(),
            })
            .inc();
    }

    /// The restarts of the membership feed of `topic` counted so far.
    #[cfg(test)]
    pub(crate) fn feed_restarts(&self, topic: &str) -> u64 {
        self.feed_restarts
            .get_or_create(&Topic {
                topic: topic.to_string(),
            })
            .get()
    }
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

#[cfg(test)]
mod tests {
    use super::super::Metrics;

    #[test]
    fn a_client_made_within_a_node_counts_on_that_node_alone() {
        let (mine, other) = (Metrics::new(), Metrics::new());
        let clients = mine.node_scope().clients.expect("a node's client figures");
        clients.set_nodes("t", 3);
        clients.count_ejection("t");
        clients.count_feed_restart("t");
        let membership = mine
            .node_scope()
            .membership
            .expect("a node's membership figures");
        membership.restarted("lease keeper", &"a test");
        let text = mine.render(None);
        assert!(
            text.contains("svckit_rpc_client_nodes{topic=\"t\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("svckit_rpc_client_ejections_total{topic=\"t\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("svckit_rpc_client_feed_restarts_total{topic=\"t\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("svckit_membership_task_restarts_total{task=\"lease keeper\"} 1"),
            "{text}"
        );
        let text = other.render(None);
        assert!(!text.contains("topic=\"t\""), "{text}");
        assert!(!text.contains("lease keeper"), "{text}");
    }
}
