//! [`Tracker`]: one topic's members and their nodes, kept current from its
//! watch and turned into snapshots.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use super::{usable, ConnectOptions, Node, Snapshot};
use crate::servicegroup::{Event, Member};

/// Records of one topic counted into a client's total, and out of it
/// when its watch stops.
pub(super) struct Held<'a> {
    pub(super) total: &'a AtomicUsize,
    pub(super) mine: usize,
}

impl Held<'_> {
    fn set(&mut self, count: usize) {
        self.total.fetch_add(count, Ordering::Relaxed);
        self.total.fetch_sub(self.mine, Ordering::Relaxed);
        self.mine = count;
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.total.fetch_sub(self.mine, Ordering::Relaxed);
    }
}

/// Keeps the members and their connections current from the watch.
pub(super) struct Tracker<'a> {
    pub(super) members: BTreeMap<(String, String), Arc<Member>>,
    /// Connections by endpoint URL, reused across snapshots (and so across
    /// admin changes) while the member stays routable.
    pub(super) nodes: HashMap<(String, String), Arc<Node>>,
    pub(super) options: Arc<ConnectOptions>,
    pub(super) held: Held<'a>,
    pub(super) events: &'a std::sync::atomic::AtomicU64,
}

impl Tracker<'_> {
    pub(super) fn apply(&mut self, event: &Event) {
        self.events.fetch_add(1, Ordering::Relaxed);
        let m = event.member();
        let key = (m.record.topic.clone(), m.record.host.clone());
        match event {
            // A deleted record is forgotten, so the map never outgrows the
            // registry.
            Event::Delete(_) => self.members.remove(&key),
            _ => self.members.insert(key, Arc::new(m.clone())),
        };
    }

    /// Drops the connections no call took since the last sweep; whether
    /// any was, and a new snapshot is due. A connection closes once the
    /// snapshots and calls holding it are gone.
    pub(super) fn close_idle(&mut self) -> bool {
        let mut closed = 0;
        for node in self.nodes.values_mut() {
            if node.idle() {
                *node = Arc::new(node.disconnected());
                closed += 1;
            }
        }
        if closed > 0 {
            tracing::debug!(connections = closed, "closing idle connections");
        }
        closed > 0
    }

    pub(super) fn snapshot(&mut self) -> Snapshot {
        self.held.set(self.members.len());
        let mut by_topic: HashMap<String, Vec<Arc<Node>>> = HashMap::new();
        let mut disabled: HashMap<String, Vec<Arc<Node>>> = HashMap::new();
        let mut live = HashMap::new();
        for (key, member) in &self.members {
            let Some(url) = member.record.endpoints.grpc.as_deref() else {
                continue;
            };
            if !member.up {
                continue;
            }
            let reuse = self
                .nodes
                .get(key)
                .filter(|n| n.member.record.endpoints.grpc.as_deref() == Some(url));
            let node = match reuse {
                Some(n) if *n.member == **member => n.clone(),
                Some(n) => Arc::new(Node {
                    member: member.clone(),
                    channel: n.channel.clone(),
                    options: n.options.clone(),
                    pending: n.pending.clone(),
                    abandoned: n.abandoned.clone(),
                    used: n.used.clone(),
                    health: n.health.clone(),
                }),
                None if usable(url, &self.options) => Arc::new(Node {
                    member: member.clone(),
                    channel: Arc::default(),
                    options: self.options.clone(),
                    pending: Arc::new(AtomicUsize::new(0)),
                    abandoned: Arc::new(AtomicUsize::new(0)),
                    used: Arc::new(AtomicBool::new(false)),
                    health: Arc::default(),
                }),
                None => continue,
            };
            let group = if member.is_routable() {
                &mut by_topic
            } else {
                &mut disabled
            };
            group.entry(key.0.clone()).or_default().push(node.clone());
            live.insert(key.clone(), node);
        }
        // Nodes no longer routable drop out here; calls in flight hold their
        // own channel clone and finish on it.
        self.nodes = live;
        for (topic, _) in self.members.keys() {
            crate::telemetry::metrics::set_client_nodes(
                topic,
                by_topic.get(topic).map_or(0, Vec::len),
            );
        }
        let mut all = HashMap::new();
        let mut subsets = HashMap::new();
        for (topic, nodes) in by_topic {
            let mut subset = nodes.clone();
            self.options.subsetting.apply(&mut subset);
            subsets.insert(topic.clone(), subset.into());
            all.insert(topic, nodes.into());
        }
        Snapshot {
            loaded: true,
            by_topic: subsets,
            all,
            disabled,
        }
    }
}
