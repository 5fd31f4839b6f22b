//! Outlier ejection: a node whose lease is alive but which fails its calls
//! (a bad disk, a broken dependency, a bug in one build) is left out of
//! picks for a while, as Envoy and proxyless gRPC do.
//!
//! Per node: consecutive failures, and calls and failures over a window.
//! A node is ejected after [`CONSECUTIVE`] failures in a row, or when,
//! over at least [`MIN_VOLUME`] calls of its window, it failed at least
//! [`MIN_RATIO`] of them and [`PEER_FACTOR`] times as often as its peers
//! did (a whole topic failing is the callee's dependency, not one node).
//! Its ejection lasts the base time × the times it was ejected (capped at
//! ten), then it is picked again; never more than half of a topic's nodes
//! are out, and never the last one.
//!
//! Failures: transport errors, UNAVAILABLE, INTERNAL, UNKNOWN and
//! DEADLINE_EXCEEDED. Application answers (NOT_FOUND, INVALID_ARGUMENT, …)
//! are answers.

use crate::clock::now_ms;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tonic::Code;

use super::Node;

/// Failures in a row that eject a node.
pub(crate) const CONSECUTIVE: u32 = 5;
/// Calls a window needs before its failure ratio counts.
pub(crate) const MIN_VOLUME: u32 = 20;
/// The failure ratio from which a node may be an outlier.
pub(crate) const MIN_RATIO: f64 = 0.2;
/// How many times its peers' failure ratio an outlier's must be.
pub(crate) const PEER_FACTOR: f64 = 3.0;
/// The window over which ratios are counted.
const WINDOW: Duration = Duration::from_secs(10);
/// How long a node that refused a call counts as full.
const REFUSED_FOR: Duration = Duration::from_millis(100);
/// The longest ejection, in base times.
const MAX_MULTIPLIER: u32 = 10;

/// Whether a gRPC status says the node, not the request, is at fault.
pub(crate) fn is_failure(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable | Code::Internal | Code::Unknown | Code::DeadlineExceeded
    )
}

/// One node's record of its calls, shared by its versions across
/// snapshots.
#[derive(Default)]
pub(crate) struct Health {
    consecutive: AtomicU32,
    calls: AtomicU32,
    failures: AtomicU32,
    window_start_ms: AtomicU64,
    /// 0 when not ejected.
    ejected_until_ms: AtomicU64,
    /// When the node last refused a call (0: never).
    refused_at_ms: AtomicU64,
    ejections: AtomicU32,
    /// How long it takes to answer, for balancers to weigh it by.
    pub(crate) latency: super::latency::PeakEwma,
}

impl Health {
    /// Whether the node is out of picks now. An ejection found over is
    /// ended here.
    pub(crate) fn is_ejected(&self) -> bool {
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        if until == 0 {
            return false;
        }
        if now_ms() < until {
            return true;
        }
        // Over: the first to notice gives the node back.
        let _ =
            self.ejected_until_ms
                .compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed);
        false
    }

    fn window(&self, now: u64) {
        let start = self.window_start_ms.load(Ordering::Relaxed);
        let window = u64::try_from(WINDOW.as_millis()).unwrap_or(u64::MAX);
        if now.saturating_sub(start) >= window
            && self
                .window_start_ms
                .compare_exchange(start, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.calls.store(0, Ordering::Relaxed);
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    /// The node's failure ratio over its window, if it saw enough calls.
    fn ratio(&self) -> Option<f64> {
        let calls = self.calls.load(Ordering::Relaxed);
        (calls >= MIN_VOLUME)
            .then(|| f64::from(self.failures.load(Ordering::Relaxed)) / f64::from(calls))
    }

    /// The node refused a call before its handler ran: for
    /// [`REFUSED_FOR`], balancers send elsewhere. Not a failure: a full
    /// node sheds load, and ejecting it would shrink capacity under load.
    pub(crate) fn refused(&self) {
        self.refused_at_ms.store(now_ms().max(1), Ordering::Relaxed);
    }

    /// Whether the node refused a call within [`REFUSED_FOR`].
    pub(crate) fn recently_refused(&self) -> bool {
        let at = self.refused_at_ms.load(Ordering::Relaxed);
        let window = u64::try_from(REFUSED_FOR.as_millis()).unwrap_or(u64::MAX);
        at != 0 && now_ms().saturating_sub(at) < window
    }

    /// A call answered.
    pub(crate) fn succeeded(&self) {
        self.window(now_ms());
        self.calls.fetch_add(1, Ordering::Relaxed);
        if self.consecutive.load(Ordering::Relaxed) != 0 {
            self.consecutive.store(0, Ordering::Relaxed);
        }
    }
}

/// A call on `node` failed: ejects it if it is an outlier among `peers`
/// (the topic's nodes, `node` among them) and the cap allows, for
/// `base` × its ejections. Returns whether it was ejected.
pub(crate) fn failed(node: &Node, peers: &[Arc<Node>], base: Duration) -> bool {
    let health = &node.health;
    let now = now_ms();
    health.window(now);
    health.calls.fetch_add(1, Ordering::Relaxed);
    health.failures.fetch_add(1, Ordering::Relaxed);
    let in_a_row = health.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
    if base.is_zero() || health.is_ejected() {
        return false;
    }
    let outlier =
        in_a_row >= CONSECUTIVE || health.ratio().is_some_and(|r| above_peers(r, node, peers));
    if !outlier {
        return false;
    }
    // Never more than half of the topic, and so never the last node.
    let out = peers.iter().filter(|n| n.health.is_ejected()).count();
    if (out + 1) * 2 > peers.len() {
        return false;
    }
    let times = health.ejections.fetch_add(1, Ordering::Relaxed) + 1;
    let span = base * times.min(MAX_MULTIPLIER);
    let until = now + u64::try_from(span.as_millis()).unwrap_or(u64::MAX);
    if health
        .ejected_until_ms
        .compare_exchange(0, until, Ordering::Relaxed, Ordering::Relaxed)
        .is_err()
    {
        return false;
    }
    // Back from the ejection with a clean slate.
    health.consecutive.store(0, Ordering::Relaxed);
    health.calls.store(0, Ordering::Relaxed);
    health.failures.store(0, Ordering::Relaxed);
    tracing::warn!(
        host = node.host(),
        topic = %node.member.record.advert.topic,
        failures_in_a_row = in_a_row,
        ejected_for = ?span,
        "node failing well above its peers; ejected"
    );
    true
}

/// Whether `ratio` is well above the failure ratio of `node`'s peers.
fn above_peers(ratio: f64, node: &Node, peers: &[Arc<Node>]) -> bool {
    if ratio < MIN_RATIO {
        return false;
    }
    let (sum, count) = peers
        .iter()
        .filter(|p| !std::ptr::eq(p.as_ref(), node) && p.host() != node.host())
        .filter_map(|p| p.health.ratio())
        .fold((0.0, 0u32), |(s, c), r| (s + r, c + 1));
    let peers_ratio = if count == 0 {
        0.0
    } else {
        sum / f64::from(count)
    };
    ratio >= PEER_FACTOR * peers_ratio
}

/// Ejected nodes among `nodes`.
pub(crate) fn ejected(nodes: &[Arc<Node>]) -> usize {
    nodes.iter().filter(|n| n.health.is_ejected()).count()
}
