//! [`Tracker`]: one topic's nodes, made from its feed's members and
//! turned into snapshots.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;

use super::{usable, ConnectOptions, Node, Snapshot};
use crate::servicegroup::feed::{Members, Project};
use crate::servicegroup::Event;

/// Records of one topic counted into a client's total, and out of it
/// when its watch stops.
pub(super) struct Held {
    pub(super) total: Arc<AtomicUsize>,
    pub(super) mine: usize,
}

impl Held {
    fn set(&mut self, count: usize) {
        self.total.fetch_add(count, Ordering::Relaxed);
        self.total.fetch_sub(self.mine, Ordering::Relaxed);
        self.mine = count;
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.total.fetch_sub(self.mine, Ordering::Relaxed);
    }
}

/// Keeps one topic's connections current with its members.
pub(super) struct Tracker {
    pub(super) topic: String,
    /// Connections by endpoint URL, reused across snapshots (and so across
    /// admin changes) while the member stays routable.
    pub(super) nodes: HashMap<(String, String), Arc<Node>>,
    pub(super) options: Arc<ConnectOptions>,
    pub(super) held: Held,
    pub(super) events: Arc<AtomicU64>,
}

impl Tracker {
    pub(super) fn new(
        topic: &str,
        options: Arc<ConnectOptions>,
        total: Arc<AtomicUsize>,
        events: Arc<AtomicU64>,
    ) -> Self {
        Tracker {
            topic: topic.to_string(),
            nodes: HashMap::new(),
            options,
            held: Held { total, mine: 0 },
            events,
        }
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

    pub(super) fn snapshot(&mut self, members: &Members) -> Snapshot {
        self.held.set(members.len());
        let mut by_topic: HashMap<String, Vec<Arc<Node>>> = HashMap::new();
        let mut disabled: HashMap<String, Vec<Arc<Node>>> = HashMap::new();
        let mut live = HashMap::new();
        for (key, member) in members {
            let Some(url) = member.record.advert.endpoints.grpc.as_deref() else {
                continue;
            };
            if !member.up {
                continue;
            }
            let reuse = self
                .nodes
                .get(key)
                .filter(|n| n.member.record.advert.endpoints.grpc.as_deref() == Some(url));
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
        self.options
            .figures
            .set_nodes(&self.topic, by_topic.get(&self.topic).map_or(0, Vec::len));
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

impl Project for Tracker {
    type View = Snapshot;

    fn project<'a>(
        &'a mut self,
        members: &'a Members,
        changes: Option<&'a [Event]>,
    ) -> BoxFuture<'a, Snapshot> {
        let applied = changes.map_or(0, <[Event]>::len);
        self.events.fetch_add(applied as u64, Ordering::Relaxed);
        futures::future::ready(self.snapshot(members)).boxed()
    }

    /// Every half `idle_timeout` the connections no call took since the
    /// last look close: a connection closes after between one half and one
    /// whole `idle_timeout` unused.
    fn every(&self) -> Option<Duration> {
        self.options.idle_timeout.map(|t| t / 2)
    }

    fn tick(&mut self, members: &Members) -> Option<Snapshot> {
        self.close_idle().then(|| self.snapshot(members))
    }

    fn on_restart(&mut self) {
        self.options.figures.count_feed_restart(&self.topic);
    }
}

impl Drop for Tracker {
    /// The topic's watch stopped: this client routes to none of its nodes.
    fn drop(&mut self) {
        self.options.figures.set_nodes(&self.topic, 0);
    }
}
