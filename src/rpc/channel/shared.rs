//! What the channels of one [`Rpc`](crate::rpc::Rpc) share, and the
//! client's counters.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;

use super::budget::RetryBudget;
use super::hedge::Latency;
use super::throttle::Throttle;
use crate::rpc::Target;
use crate::sync::lock;
use crate::telemetry::metrics::ClientFigures;
use crate::telemetry::otel::Exporter;

/// What the channels of one [`Rpc`](super::Rpc) share: counters, the retry
/// budget, latency histograms and the bound on casts.
pub(in crate::rpc) struct Shared {
    pub(super) calls: AtomicU64,
    pub(super) retries: AtomicU64,
    pub(super) hedges: AtomicU64,
    pub(super) ejections: AtomicU64,
    pub(super) expired: AtomicU64,
    /// An outlier's first ejection; 0 turns ejection off.
    pub(super) ejection: Duration,
    pub(super) budget: RetryBudget,
    /// Per target, for `HedgeDelay::Auto`; looked up when a channel is
    /// made hedged, never per call.
    latencies: Mutex<HashMap<Target, Arc<Latency>>>,
    /// Casts in flight, bounded.
    pub(in crate::rpc) casts: Arc<Semaphore>,
    /// Per topic, looked up when a channel is made.
    throttles: Mutex<HashMap<String, Arc<Throttle>>>,
    /// The client's span export (from its config's `otlp_endpoint`), for
    /// calls not made while serving a request of a node that exports.
    pub(super) exporter: Option<Exporter>,
    /// Where ejections per topic are shown.
    pub(super) figures: ClientFigures,
}

impl Shared {
    pub(in crate::rpc) fn new(
        max_casts: usize,
        ejection: Duration,
        exporter: Option<Exporter>,
        figures: ClientFigures,
    ) -> Self {
        Shared {
            exporter,
            figures,
            calls: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            hedges: AtomicU64::new(0),
            ejections: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            ejection,
            budget: RetryBudget::default(),
            latencies: Mutex::new(HashMap::new()),
            casts: Arc::new(Semaphore::new(max_casts)),
            throttles: Mutex::new(HashMap::new()),
        }
    }

    pub(in crate::rpc) fn stats(&self) -> RpcStats {
        RpcStats {
            calls: self.calls.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            hedges: self.hedges.load(Ordering::Relaxed),
            ejections: self.ejections.load(Ordering::Relaxed),
            expired: self.expired.load(Ordering::Relaxed),
            over_budget: self.budget.refused(),
            throttled: lock(&self.throttles).values().map(|t| t.throttled()).sum(),
            ..RpcStats::default()
        }
    }

    pub(super) fn latency(&self, target: &Target) -> Arc<Latency> {
        lock(&self.latencies)
            .entry(target.clone())
            .or_default()
            .clone()
    }

    pub(super) fn throttle(&self, topic: &str) -> Arc<Throttle> {
        let mut map = lock(&self.throttles);
        if let Some(throttle) = map.get(topic) {
            return throttle.clone();
        }
        map.entry(topic.to_string()).or_default().clone()
    }
}

/// Counters of a client ([`Rpc::stats`](crate::rpc::Rpc::stats)), since it
/// started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct RpcStats {
    /// Calls made through the client's channels.
    pub calls: u64,
    /// Extra attempts after a failed one (on another node).
    pub retries: u64,
    /// Extra copies sent by hedging.
    pub hedges: u64,
    /// Nodes ejected as outliers (failing well above their peers).
    pub ejections: u64,
    /// Calls not sent because the request being served, whose deadline
    /// they inherit, had no time left.
    pub expired: u64,
    /// Retries and hedges not made because the retry budget was spent.
    pub over_budget: u64,
    /// Calls failed locally because their topic's nodes refused most
    /// recent calls (adaptive throttling).
    pub throttled: u64,
    /// Topics whose membership the client follows now: those its channels
    /// call (and, for a while, called).
    pub topics_watched: u64,
    /// Service records the client holds, over the topics it follows.
    pub members_held: u64,
    /// Membership events the client has applied.
    pub membership_events: u64,
}
