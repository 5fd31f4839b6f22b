//! The node sets the channels of one [`Rpc`](super::Rpc) pick from: one
//! service-group watch per topic a channel calls, turned into snapshots of
//! routable nodes, each with its (reused) HTTP/2 connection and load
//! counter.
//!
//! A client pays only for the topics it calls: a topic's watch starts with
//! the first channel to it and stops when the last one is dropped, and
//! records of other topics are never listed, held or woken up for.

mod latency;
pub(crate) mod outlier;
mod subset;
#[cfg(test)]
mod tests;
mod topics;
mod tracker;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::servicegroup::Member;
use crate::telemetry::metrics::ClientFigures;
use crate::tls::ClientTls;

use super::Target;

pub(crate) use self::subset::Subsetting;
pub(crate) use self::topics::Discovery;

/// A node's HTTP/2 connections: the first made on first use, more (up to
/// `rpc_connections_per_node`) while many calls are in flight on it; and
/// handles on them kept for the next calls.
#[derive(Default)]
pub(crate) struct Conn {
    first: Slot,
    /// The connections past the first, made when a node first has more
    /// calls in flight than [`STREAMS_PER_CONNECTION`].
    more: OnceLock<Box<[Slot]>>,
    /// Turns calls over the connections in use.
    next: AtomicUsize,
}

/// One connection of a node.
#[derive(Default)]
struct Slot {
    once: OnceLock<Option<Channel>>,
    /// Handles given back after their calls. tonic's channel is a buffer in
    /// front of the connection, and readying a new clone of it allocates;
    /// a handle used before does not.
    spare: Mutex<Vec<Channel>>,
}

/// Handles kept per connection: as many as calls in flight at once, up to
/// this.
const MAX_SPARE_HANDLES: usize = 256;

/// Calls in flight on a node per connection before the next one opens
/// (with `rpc_connections_per_node` above 1): one HTTP/2 connection is one
/// task on each side, and its frames are written in turn.
pub(crate) const STREAMS_PER_CONNECTION: usize = 16;

impl Conn {
    /// The first connection, once made (`Some(None)`: its endpoint is
    /// unusable).
    pub(crate) fn get(&self) -> Option<&Option<Channel>> {
        self.first.once.get()
    }

    /// Connection `i` of at most `max`.
    fn slot(&self, i: usize, max: usize) -> &Slot {
        if i == 0 {
            return &self.first;
        }
        let more = self
            .more
            .get_or_init(|| (1..max).map(|_| Slot::default()).collect());
        more.get(i - 1).unwrap_or(&self.first)
    }
}

impl Slot {
    fn spare(&self) -> std::sync::MutexGuard<'_, Vec<Channel>> {
        crate::sync::lock(&self.spare)
    }
}

/// A handle on one of a node's connections, for one call; give it back
/// with [`Node::give_back`].
pub(crate) struct Handle {
    pub(crate) channel: Channel,
    slot: usize,
}

/// One node as channels see it.
pub(crate) struct Node {
    /// Shared with the topic's member map: one copy per record.
    pub(crate) member: Arc<Member>,
    /// The node's HTTP/2 connection, made on the first call: a client of a
    /// large topic connects to its subset (and the hosts it names), not to
    /// every node it knows. Shared by the node's versions across snapshots.
    channel: Arc<Conn>,
    options: Arc<ConnectOptions>,
    /// Calls sent to this node and not yet answered: the p2c load measure.
    pub(crate) pending: Arc<AtomicUsize>,
    /// Hedged calls given up on this node since it last answered: a
    /// stalled node keeps looking loaded after its calls were cancelled.
    pub(crate) abandoned: Arc<AtomicUsize>,
    /// Whether a call took the connection since the last idle sweep.
    used: Arc<AtomicBool>,
    /// Its calls' outcomes and ejection as an outlier.
    pub(crate) health: Arc<outlier::Health>,
}

impl Node {
    pub(crate) fn host(&self) -> &str {
        &self.member.record.advert.host
    }

    /// A handle on one of the node's connections, made now if this is its
    /// first call there; `None` when its endpoint cannot be used (checked
    /// before it was listed). Hand it back with [`Node::give_back`] after
    /// the call.
    pub(crate) fn channel(&self) -> Option<Handle> {
        // A read first: the flag is written once per sweep, not per call.
        if !self.used.load(Ordering::Relaxed) {
            self.used.store(true, Ordering::Relaxed);
        }
        let max = self.options.connections_per_node.max(1);
        let slot = self.pick_slot(max);
        let conn = self.channel.slot(slot, max);
        if let Some(spare) = conn.spare().pop() {
            return Some(Handle {
                channel: spare,
                slot,
            });
        }
        let channel = conn
            .once
            .get_or_init(|| {
                let url = self.member.record.advert.endpoints.grpc.as_deref()?;
                connect(url, &self.options)
            })
            .clone()?;
        Some(Handle { channel, slot })
    }

    /// The connection for the next call: the first while few calls are in
    /// flight (this one counted), then in turn over one connection per
    /// [`STREAMS_PER_CONNECTION`] of them, up to `max`.
    fn pick_slot(&self, max: usize) -> usize {
        if max == 1 {
            return 0;
        }
        let wanted = self
            .pending
            .load(Ordering::Relaxed)
            .div_ceil(STREAMS_PER_CONNECTION)
            .clamp(1, max);
        if wanted == 1 {
            return 0;
        }
        self.channel.next.fetch_add(1, Ordering::Relaxed) % wanted
    }

    /// Keeps a handle [`Node::channel`] gave for the next call: a handle
    /// keeps what readying it allocated, which a new clone allocates again.
    pub(crate) fn give_back(&self, handle: Handle) {
        let max = self.options.connections_per_node.max(1);
        let mut spare = self.channel.slot(handle.slot, max).spare();
        if spare.len() < MAX_SPARE_HANDLES {
            spare.push(handle.channel);
        }
    }

    /// Whether the node holds a connection that no call took since the
    /// last sweep, and none is in flight; the sweep clears the mark.
    fn idle(&self) -> bool {
        let connected = matches!(self.channel.get(), Some(Some(_)));
        let used = self.used.swap(false, Ordering::Relaxed);
        connected && !used && self.load() == 0
    }

    /// The same node with no connection yet: the next call opens one.
    fn disconnected(&self) -> Node {
        Node {
            member: self.member.clone(),
            channel: Arc::default(),
            options: self.options.clone(),
            pending: self.pending.clone(),
            abandoned: self.abandoned.clone(),
            used: self.used.clone(),
            health: self.health.clone(),
        }
    }

    /// Calls in flight and given up; a node that refused a call a moment
    /// ago counts as full.
    pub(crate) fn load(&self) -> usize {
        let load = self.pending.load(Ordering::Relaxed) + self.abandoned.load(Ordering::Relaxed);
        if self.health.recently_refused() {
            load + REFUSED_LOAD
        } else {
            load
        }
    }

    fn matches(&self, target: &Target) -> bool {
        let r = &self.member.record;
        r.advert.topic == target.topic
            && target.server.as_ref().is_none_or(|s| *s == r.advert.host)
            && target
                .service
                .as_ref()
                .is_none_or(|s| r.advert.services.contains(s))
    }
}

/// What a node that just refused a call weighs in power of two choices.
const REFUSED_LOAD: usize = 1_000;

/// Routable nodes (up, enabled, with a gRPC endpoint), by topic.
#[derive(Default)]
pub(crate) struct Snapshot {
    /// The topic's members were listed: an empty snapshot means no node,
    /// not "not known yet".
    pub(crate) loaded: bool,
    /// What a plain topic target balances over: the client's subset of
    /// the routable nodes (all of them when there are few).
    by_topic: HashMap<String, Arc<[Arc<Node>]>>,
    /// Every routable node, by topic: for `server=` targets (any host,
    /// connected on demand), targets that require a gRPC service, and
    /// fanout.
    all: HashMap<String, Arc<[Arc<Node>]>>,
    /// Up but disabled nodes, by topic: reachable only by a server target
    /// that asks for them.
    disabled: HashMap<String, Vec<Arc<Node>>>,
}

impl Snapshot {
    /// The nodes a target may use. A plain topic target shares the
    /// snapshot's slice: no allocation on the call path.
    pub(crate) fn nodes(&self, target: &Target) -> Arc<[Arc<Node>]> {
        if target.include_disabled && target.server.is_some() {
            let disabled = self.disabled.get(&target.topic).into_iter().flatten();
            let enabled = self
                .all
                .get(&target.topic)
                .into_iter()
                .flat_map(|n| n.iter());
            return enabled
                .chain(disabled)
                .filter(|n| n.matches(target))
                .cloned()
                .collect();
        }
        if target.server.is_none() && target.service.is_none() {
            return match self.by_topic.get(&target.topic) {
                Some(nodes) => nodes.clone(),
                None => Arc::new([]),
            };
        }
        match self.all.get(&target.topic) {
            None => Arc::new([]),
            Some(nodes) => nodes
                .iter()
                .filter(|n| n.matches(target))
                .cloned()
                .collect(),
        }
    }

    /// The nodes this client balances `topic` over (its subset): the peers
    /// a node is compared with, and of which at most half are ejected.
    pub(crate) fn peers(&self, topic: &str) -> Arc<[Arc<Node>]> {
        match self.by_topic.get(topic) {
            Some(nodes) => nodes.clone(),
            None => Arc::new([]),
        }
    }

    /// Every routable host `target` matches, beyond the subset: what a
    /// fanout calls.
    pub(crate) fn all_hosts(&self, target: &Target) -> Vec<String> {
        self.all
            .get(&target.topic)
            .into_iter()
            .flat_map(|nodes| nodes.iter())
            .filter(|n| n.matches(target))
            .map(|n| n.host().to_string())
            .collect()
    }
}

/// Connection settings for nodes.
#[derive(Debug, Clone)]
pub(crate) struct ConnectOptions {
    pub(crate) connect_timeout: Duration,
    /// The subset of a large topic this client balances over.
    pub(crate) subsetting: Subsetting,
    /// For `https://` endpoints.
    pub(crate) tls: Option<ClientTls>,
    /// A connection no call took for about this long is closed (`None`:
    /// kept).
    pub(crate) idle_timeout: Option<Duration>,
    /// HTTP/2 connections a node may get while many calls are in flight.
    pub(crate) connections_per_node: usize,
    /// Where the routable nodes per topic are shown.
    pub(crate) figures: ClientFigures,
}

/// Whether a node's endpoint can be connected to (checked when it is
/// listed, so that a call never picks a node it cannot reach); warns once
/// per listing when not.
fn usable(url: &str, options: &ConnectOptions) -> bool {
    let plain = match (url.strip_prefix("https://"), &options.tls) {
        (None, _) => url.to_string(),
        (Some(rest), Some(_)) => format!("http://{rest}"),
        (Some(_), None) => {
            tracing::warn!(url, "member serves TLS and no tls_ca_file is set; skipped");
            return false;
        }
    };
    match Endpoint::from_shared(plain) {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(url, error = %e, "member advertises an invalid endpoint; skipped");
            false
        }
    }
}

fn connect(url: &str, options: &ConnectOptions) -> Option<Channel> {
    // tonic does TLS only with its own fixed configuration; the connector
    // does it instead (files re-read on change), so tonic sees plain http.
    let (url, tls) = match (url.strip_prefix("https://"), &options.tls) {
        (None, _) => (url.to_string(), None),
        (Some(rest), Some(tls)) => (format!("http://{rest}"), Some(tls.connector())),
        (Some(_), None) => {
            tracing::warn!(url, "member serves TLS and no tls_ca_file is set; skipped");
            return None;
        }
    };
    match Endpoint::from_shared(url.clone()) {
        Ok(endpoint) => {
            let endpoint = crate::wire::client_http2(endpoint)
                .connect_timeout(options.connect_timeout)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(30))
                .keep_alive_while_idle(true);
            Some(match tls {
                Some(connector) => endpoint.connect_with_connector_lazy(connector),
                None => endpoint.connect_lazy(),
            })
        }
        Err(e) => {
            tracing::warn!(url, error = %e, "member advertises an invalid endpoint; skipped");
            None
        }
    }
}
