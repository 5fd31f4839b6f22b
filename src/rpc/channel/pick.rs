//! Which node takes a call: power of two choices on calls in flight
//! weighed by latency, and the candidates of one call across its attempts.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use rand::Rng;

use super::RpcChannel;
use crate::error::BoxError;
use crate::rpc::discovery::Node;

/// How many nodes a call may try before giving up.
pub(super) const MAX_ATTEMPTS: usize = 3;

/// How many times a call turned away by a draining connection goes out
/// again, on top of its attempts and outside the retry budget: nothing of
/// it ran, and each time it goes out on a newer connection. Bounded, as a
/// node's workers may all be replaced in turn.
const DRAINED_AGAIN: usize = 8;

/// Picks by power of two choices: two distinct random nodes not yet tried,
/// the one of lower cost; nodes ejected as outliers only when no other is
/// left. No allocation; while no node is ejected, one look at each.
pub(crate) fn pick(nodes: &[Arc<Node>], tried: &[Arc<Node>]) -> Option<Arc<Node>> {
    let fresh = |n: &Arc<Node>| !tried.iter().any(|t| t.host() == n.host());
    if tried.is_empty() && !nodes.iter().any(|n| n.health.is_ejected()) {
        return choose(nodes, nodes.len(), |_| true);
    }
    let healthy = |n: &Arc<Node>| fresh(n) && !n.health.is_ejected();
    let count = nodes.iter().filter(|n| healthy(n)).count();
    choose(nodes, count, healthy).or_else(|| {
        let count = nodes.iter().filter(|n| fresh(n)).count();
        choose(nodes, count, fresh)
    })
}

/// Power of two choices among the `len` nodes that `keep` keeps.
fn choose(nodes: &[Arc<Node>], len: usize, keep: impl Fn(&Arc<Node>) -> bool) -> Option<Arc<Node>> {
    let nth = |i: usize| {
        if len == nodes.len() {
            nodes.get(i)
        } else {
            nodes.iter().filter(|n| keep(n)).nth(i)
        }
    };
    match len {
        0 => None,
        1 => nth(0).cloned(),
        len => {
            let mut rng = rand::rng();
            let a = rng.random_range(0..len);
            let b = (a + rng.random_range(1..len)) % len;
            let (na, nb) = (nth(a)?, nth(b)?);
            let cheapest = if cheaper(nb, na) { nb } else { na };
            Some(cheapest.clone())
        }
    }
}

/// Whether `a` costs less than `b`: (calls in flight + 1) × latency, as
/// Finagle's peak EWMA balancer weighs nodes, so a node ten times slower
/// than its peers gets a call only when they have ten times its calls in
/// flight. Latencies less than [`LATENCY_GAP`] apart, or unknown, are
/// alike, and calls in flight alone decide: at low load, weighing every
/// small difference would send all calls to the node that answered
/// fastest lately.
fn cheaper(a: &Node, b: &Node) -> bool {
    let (load_a, load_b) = (a.load(), b.load());
    let now = crate::clock::now_ms();
    match (
        a.health.latency.estimate(now),
        b.health.latency.estimate(now),
    ) {
        (Some(rt_a), Some(rt_b)) if rt_a.max(rt_b) >= LATENCY_GAP * rt_a.min(rt_b) => {
            (load_a as f64 + 1.0) * rt_a < (load_b as f64 + 1.0) * rt_b
        }
        _ => load_a < load_b,
    }
}

/// How many times slower than the other a node must be for latency to
/// weigh in a pick.
const LATENCY_GAP: f64 = 2.0;

/// The node of the next attempt: one not tried yet, else a tried one again.
/// A call only comes back for another attempt when it never reached a node
/// (or is idempotent), and then the same node may well take it: a new
/// connection to a node with several workers lands on another worker, and
/// a stream refused by a draining connection goes through on the next.
/// Not a node that refused a call within the moment, though: sent straight
/// back, the call would only be refused again, at the cost of the node's
/// time.
fn next_node(nodes: &[Arc<Node>], tried: &[Arc<Node>]) -> Option<Arc<Node>> {
    pick(nodes, tried).or_else(|| {
        let refusing: Vec<Arc<Node>> = tried
            .iter()
            .filter(|n| n.health.recently_refused())
            .cloned()
            .collect();
        pick(nodes, &refusing)
    })
}

/// The nodes one call tries, in turn: the first from the nodes it started
/// with, the next ones (counted as retries) from those the watch shows
/// now, the failed node having maybe gone meanwhile. The one loop of every
/// send path that tries nodes one after the other.
pub(super) struct Candidates<'a> {
    channel: &'a RpcChannel,
    first: Option<Arc<[Arc<Node>]>>,
    tried: Vec<Arc<Node>>,
    last_error: Option<BoxError>,
    /// Attempts a draining connection turned away.
    drained: usize,
    /// The last attempt was one of them: the next is free.
    free: bool,
}

impl<'a> Candidates<'a> {
    pub(super) fn new(channel: &'a RpcChannel, nodes: Arc<[Arc<Node>]>) -> Self {
        Candidates {
            channel,
            first: Some(nodes),
            tried: Vec::new(),
            last_error: None,
            drained: 0,
            free: false,
        }
    }

    /// The node of the next attempt, or `None` when the call has had its
    /// attempts or no node is left.
    pub(super) fn next(&mut self) -> Option<Arc<Node>> {
        if std::mem::take(&mut self.free) {
            // Sent again as it was: the same node may take it, on a new
            // connection (a node's other workers).
            let (last, earlier) = self.tried.split_last()?;
            let nodes = self.channel.current_nodes();
            return next_node(&nodes, earlier).or_else(|| Some(last.clone()));
        }
        if self.tried.len() - self.drained >= MAX_ATTEMPTS {
            return None;
        }
        let nodes = match self.first.take() {
            Some(nodes) => nodes,
            None => {
                // Retries and hedges share the client's budget.
                let shared = &self.channel.settings.shared;
                if !shared.budget.try_spend() {
                    return None;
                }
                shared.retries.fetch_add(1, Ordering::Relaxed);
                self.channel.current_nodes()
            }
        };
        next_node(&nodes, &self.tried)
    }

    /// Whether this is the first attempt.
    pub(super) fn is_first(&self) -> bool {
        self.tried.is_empty()
    }

    /// The attempt on `node` failed without an answer.
    pub(super) fn failed(&mut self, node: Arc<Node>, error: BoxError) {
        tracing::debug!(host = node.host(), error = %error, "call not delivered; trying another node");
        if self.drained < DRAINED_AGAIN && super::classify::drained(&*error) {
            self.drained += 1;
            self.free = true;
        }
        self.tried.push(node);
        self.last_error = Some(error);
    }

    /// The error of a call that no node took.
    pub(super) fn exhausted(self) -> BoxError {
        self.channel.not_delivered(self.last_error)
    }
}
