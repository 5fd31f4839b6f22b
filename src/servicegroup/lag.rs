//! How stale this process's view of membership is, per topic watched.
//!
//! - `svckit_membership_lag_seconds{topic}`: from the moment a writer put a
//!   member's key (the time it stamps into the value, just before etcd
//!   commits it) to the moment a watcher of this process applied it. Clocks
//!   of different hosts add their skew; on one host it is the watch's own
//!   delay. Only puts carry a stamp: a lease that expires has none.
//! - `svckit_membership_progress_timestamp_seconds{topic}`: when etcd last
//!   told a watcher that it had been sent everything up to a revision; the
//!   age of that proof is `time() - ` this.
//!
//! - `svckit_membership_task_restarts_total{task}`: the connection's
//!   background loops (watches, lease keepers, registrations) restarted
//!   after a panic or an unexpected end.
//!
//! All are a registry connection's ([`MembershipFigures`]): its watches,
//! one per topic, are shared by every client of the connection.

use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Topic {
    topic: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Task {
    task: &'static str,
}

/// Lags from 1 ms to about 33 s.
fn buckets() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.001, 2.0, 16,
    ))
}

type Lags = Family<Topic, Histogram, fn() -> Histogram>;

/// One registry connection's figures of how stale its watches are. A
/// connection an `Rpc` makes within a node (`Rpc::from_config` in a
/// request it serves or its manager's hooks) writes the node's, shown on
/// its `/metrics`; any other keeps its own, shown nowhere.
#[derive(Clone, Debug)]
pub(crate) struct MembershipFigures {
    lag: Lags,
    progress: Family<Topic, Gauge<f64, AtomicU64>>,
    restarts: Family<Task, Counter>,
}

impl Default for MembershipFigures {
    fn default() -> Self {
        MembershipFigures {
            lag: Family::new_with_constructor(buckets),
            progress: Family::default(),
            restarts: Family::default(),
        }
    }
}

impl MembershipFigures {
    /// A put was written at `written` and applied `now`.
    pub(crate) fn observe(&self, topic: Option<&str>, now: SystemTime, written: SystemTime) {
        // A stamp from a clock ahead of ours counts as no lag rather than none.
        let lag = now.duration_since(written).unwrap_or(Duration::ZERO);
        self.lag
            .get_or_create(&label(topic))
            .observe(lag.as_secs_f64());
    }

    /// etcd proved a watcher of `topic` current.
    pub(crate) fn progressed(&self, topic: Option<&str>) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        self.progress
            .get_or_create(&label(topic))
            .set(now.as_secs_f64());
    }

    /// Logs and counts one restart of the connection's background `task`.
    pub(crate) fn restarted(&self, task: &'static str, why: &dyn std::fmt::Display) {
        let restarts = self.restarts.get_or_create(&Task { task }).inc() + 1;
        tracing::error!(task, reason = %why, restarts, "membership task failed; restarting it");
    }

    /// The restarts of `task` counted so far.
    #[cfg(test)]
    pub(crate) fn restarts(&self, task: &'static str) -> u64 {
        self.restarts.get_or_create(&Task { task }).get()
    }

    /// Registers the families in a node's `registry`.
    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "svckit_membership_lag_seconds",
            "time from a member's key being written to a watch of this node's RPC clients applying it, per topic",
            self.lag.clone(),
        );
        registry.register(
            "svckit_membership_progress_timestamp_seconds",
            "unix time at which etcd last proved a watch of this node's RPC clients current (a progress notification), per topic",
            self.progress.clone(),
        );
        registry.register(
            "svckit_membership_task_restarts",
            "background loops (watches, lease keepers, registrations) of this node's registry connections restarted after a panic or an unexpected end, per task",
            self.restarts.clone(),
        );
    }
}

fn label(topic: Option<&str>) -> Topic {
    Topic {
        topic: topic.unwrap_or("*").to_string(),
    }
}
