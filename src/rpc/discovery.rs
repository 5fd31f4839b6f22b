//! The node sets the channels of one [`Rpc`](super::Rpc) pick from: one
//! service-group watch per topic a channel calls, turned into snapshots of
//! routable nodes, each with its (reused) HTTP/2 connection and load
//! counter.
//!
//! A client pays only for the topics it calls: a topic's watch starts with
//! the first channel to it and stops when the last one is dropped, and
//! records of other topics are never listed, held or woken up for.

use std::collections::{BTreeMap, HashMap};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};

use crate::error::Result;
use crate::servicegroup::backoff::Backoff;
use crate::servicegroup::follow::restarted;
use crate::servicegroup::{Event, EventStream, Member, Registry};
use crate::tls::ClientTls;

use super::Target;

/// One node as channels see it.
pub(crate) struct Node {
    pub(crate) member: Member,
    /// The node's HTTP/2 connection, made on the first call: a client of a
    /// large topic connects to its subset (and the hosts it names), not to
    /// every node it knows. Shared by the node's versions across snapshots.
    channel: Arc<OnceLock<Option<Channel>>>,
    options: Arc<ConnectOptions>,
    /// Calls sent to this node and not yet answered: the p2c load measure.
    pub(crate) pending: Arc<AtomicUsize>,
    /// Hedged calls given up on this node since it last answered: a
    /// stalled node keeps looking loaded after its calls were cancelled.
    pub(crate) abandoned: Arc<AtomicUsize>,
}

impl Node {
    pub(crate) fn host(&self) -> &str {
        &self.member.record.host
    }

    /// The node's connection, made now if this is its first call; `None`
    /// when its endpoint cannot be used (checked before it was listed).
    pub(crate) fn channel(&self) -> Option<Channel> {
        self.channel
            .get_or_init(|| {
                let url = self.member.record.endpoints.grpc.as_deref()?;
                connect(url, &self.options)
            })
            .clone()
    }

    pub(crate) fn load(&self) -> usize {
        self.pending.load(Ordering::Relaxed) + self.abandoned.load(Ordering::Relaxed)
    }

    fn matches(&self, target: &Target) -> bool {
        let r = &self.member.record;
        r.topic == target.topic
            && target.server.as_ref().is_none_or(|s| *s == r.host)
            && target
                .service
                .as_ref()
                .is_none_or(|s| r.services.contains(s))
    }
}

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

/// Which nodes of a large topic a client talks to: the `size` nodes whose
/// rendezvous score with `client` is highest (Google SRE book, ch. 20).
/// Every client ranks the nodes its own way, so the subsets spread over the
/// fleet; a node that joins or leaves moves only the subsets it enters or
/// leaves.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Subsetting {
    pub(crate) client: u64,
    /// 0: no subsetting.
    pub(crate) size: usize,
}

impl Subsetting {
    /// Keeps the `size` best-scoring of `nodes` (all of them when there
    /// are no more).
    fn apply(&self, nodes: &mut Vec<Arc<Node>>) {
        if self.size == 0 || nodes.len() <= self.size {
            return;
        }
        let score = |n: &Arc<Node>| std::cmp::Reverse(rendezvous(self.client, n.host()));
        nodes.select_nth_unstable_by_key(self.size - 1, score);
        nodes.truncate(self.size);
    }
}

/// A stable 64-bit score of (client, host): FNV-1a over both, then mixed
/// (splitmix64's finaliser) so that close inputs score far apart.
pub(crate) fn rendezvous(client: u64, host: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in client.to_le_bytes().iter().chain(host.as_bytes()) {
        h ^= u64::from(*byte);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Connection settings for nodes.
#[derive(Debug, Clone)]
pub(crate) struct ConnectOptions {
    pub(crate) connect_timeout: Duration,
    /// The subset of a large topic this client balances over.
    pub(crate) subsetting: Subsetting,
    /// For `https://` endpoints.
    pub(crate) tls: Option<ClientTls>,
}

/// Records of one topic counted into a client's total, and out of it
/// when its watch stops.
struct Held<'a> {
    total: &'a AtomicUsize,
    mine: usize,
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
struct Tracker<'a> {
    members: BTreeMap<(String, String), Member>,
    /// Connections by endpoint URL, reused across snapshots (and so across
    /// admin changes) while the member stays routable.
    nodes: HashMap<(String, String), Arc<Node>>,
    options: Arc<ConnectOptions>,
    held: Held<'a>,
    events: &'a std::sync::atomic::AtomicU64,
}

impl Tracker<'_> {
    fn apply(&mut self, event: &Event) {
        self.events.fetch_add(1, Ordering::Relaxed);
        let m = event.member();
        let key = (m.record.topic.clone(), m.record.host.clone());
        match event {
            // A deleted record is forgotten, so the map never outgrows the
            // registry.
            Event::Delete(_) => self.members.remove(&key),
            _ => self.members.insert(key, m.clone()),
        };
    }

    fn snapshot(&mut self) -> Snapshot {
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
                Some(n) if n.member == *member => n.clone(),
                Some(n) => Arc::new(Node {
                    member: member.clone(),
                    channel: n.channel.clone(),
                    options: n.options.clone(),
                    pending: n.pending.clone(),
                    abandoned: n.abandoned.clone(),
                }),
                None if usable(url, &self.options) => Arc::new(Node {
                    member: member.clone(),
                    channel: Arc::new(OnceLock::new()),
                    options: self.options.clone(),
                    pending: Arc::new(AtomicUsize::new(0)),
                    abandoned: Arc::new(AtomicUsize::new(0)),
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
            let endpoint = endpoint
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

/// The topic watches of one client, each started by the first channel to
/// its topic. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Discovery {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    options: ConnectOptions,
    /// How long a watch outlives its last channel ([`LINGER`]).
    linger: Duration,
    /// Records held over all topics, and events applied.
    members: AtomicUsize,
    events: std::sync::atomic::AtomicU64,
    /// The live watches, by topic. A watch's task removes its entry when
    /// the last receiver is gone, under this lock, so that a channel made
    /// meanwhile never subscribes to a task that ended.
    topics: Mutex<HashMap<String, watch::Sender<Arc<Snapshot>>>>,
}

impl Discovery {
    pub(crate) fn new(registry: Registry, options: ConnectOptions) -> Self {
        Discovery {
            inner: Arc::new(Inner {
                registry,
                options,
                linger: LINGER,
                members: AtomicUsize::new(0),
                events: std::sync::atomic::AtomicU64::new(0),
                topics: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The same, with watches retired `linger` after their last channel.
    #[cfg(test)]
    fn with_linger(registry: Registry, options: ConnectOptions, linger: Duration) -> Self {
        let discovery = Discovery::new(registry, options);
        let mut inner = Arc::try_unwrap(discovery.inner).unwrap_or_else(|_| unreachable!());
        inner.linger = linger;
        Discovery {
            inner: Arc::new(inner),
        }
    }

    /// The snapshots of `topic`, its watch started if none runs.
    pub(crate) fn topic(&self, topic: &str) -> watch::Receiver<Arc<Snapshot>> {
        let mut topics = lock(&self.inner.topics);
        if let Some(tx) = topics.get(topic) {
            return tx.subscribe();
        }
        let (tx, rx) = watch::channel(Arc::new(Snapshot::default()));
        topics.insert(topic.to_string(), tx.clone());
        tokio::spawn(follow_topic(self.inner.clone(), topic.to_string(), tx));
        rx
    }

    /// Adds the topics, records and events of this client to `stats`.
    pub(crate) fn add_stats(&self, stats: &mut super::RpcStats) {
        stats.topics_watched = lock(&self.inner.topics).len() as u64;
        stats.members_held = self.inner.members.load(Ordering::Relaxed) as u64;
        stats.membership_events = self.inner.events.load(Ordering::Relaxed);
    }

    /// The topics watched now.
    #[cfg(test)]
    pub(crate) fn watched(&self) -> Vec<String> {
        lock(&self.inner.topics).keys().cloned().collect()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Lists the members of `topic`, then follows its watch; `tx` always holds
/// the latest snapshot. Ends once no channel has used the topic for
/// [`LINGER`]. A watch that ends or a follower that panics is logged,
/// counted and started again (with backoff), so a client never keeps a
/// frozen node set.
async fn follow_topic(inner: Arc<Inner>, topic: String, tx: watch::Sender<Arc<Snapshot>>) {
    tokio::select! {
        () = unused(&inner, &topic, &tx) => {}
        () = keep_following(&inner, &topic, &tx) => {}
    }
}

/// How long a topic's watch outlives its last channel: a caller that makes
/// a channel per request must not start a watch per request.
const LINGER: Duration = Duration::from_secs(30);

/// Resolves once the topic's watch is retired: no channel for [`LINGER`].
async fn unused(inner: &Inner, topic: &str, tx: &watch::Sender<Arc<Snapshot>>) {
    loop {
        tx.closed().await;
        tokio::time::sleep(inner.linger).await;
        if retire(inner, topic, tx) {
            return;
        }
    }
}

async fn keep_following(inner: &Inner, topic: &str, tx: &watch::Sender<Arc<Snapshot>>) {
    let mut tracker = Tracker {
        members: BTreeMap::new(),
        nodes: HashMap::new(),
        options: Arc::new(inner.options.clone()),
        held: Held {
            total: &inner.members,
            mine: 0,
        },
        events: &inner.events,
    };
    let registry = &inner.registry;
    let mut backoff = Backoff::new(registry.backoff_max());
    loop {
        match restart(registry, topic, &mut tracker).await {
            Ok(stream) => {
                backoff.reset();
                tx.send_replace(Arc::new(tracker.snapshot()));
                let followed = AssertUnwindSafe(follow(stream, &mut tracker, tx))
                    .catch_unwind()
                    .await;
                match followed {
                    Ok(()) => restarted("discovery", &"membership watch ended"),
                    Err(_) => restarted("discovery", &"discovery loop panicked"),
                }
            }
            Err(e) => {
                tracing::warn!(%topic, error = %e, "membership watch cannot start yet");
            }
        }
        backoff.wait().await;
    }
}

/// Removes a topic's watch once no channel uses it; `false` when a channel
/// subscribed meanwhile, and the watch goes on.
fn retire(inner: &Inner, topic: &str, tx: &watch::Sender<Arc<Snapshot>>) -> bool {
    let mut topics = lock(&inner.topics);
    // The map's own sender is not a receiver: only channels count.
    if tx.receiver_count() > 0 {
        return false;
    }
    topics.remove(topic);
    crate::telemetry::metrics::set_client_nodes(topic, 0);
    true
}

/// Lists the topic's members (records deleted meanwhile are dropped) and
/// opens its watch.
async fn restart(
    registry: &Registry,
    topic: &str,
    tracker: &mut Tracker<'_>,
) -> Result<EventStream> {
    let events = registry.watch(Some(topic)).await?;
    let members = registry.list(Some(topic)).await?;
    tracker.members = members
        .into_iter()
        .map(|m| ((m.record.topic.clone(), m.record.host.clone()), m))
        .collect();
    Ok(events)
}

/// Applies one watch's events to the tracker and publishes snapshots,
/// until the stream ends.
async fn follow(
    mut events: EventStream,
    tracker: &mut Tracker<'_>,
    tx: &watch::Sender<Arc<Snapshot>>,
) {
    while let Some(first) = events.next().await {
        // Apply everything already queued before publishing, so a burst of
        // events costs one snapshot.
        let mut next = Some(first);
        loop {
            match next {
                Some(Ok(event)) => tracker.apply(&event),
                Some(Err(e)) => tracing::warn!(error = %e, "membership watch error"),
                None => return,
            }
            match events.next().now_or_never() {
                Some(more) => next = more,
                None => break,
            }
        }
        tx.send_replace(Arc::new(tracker.snapshot()));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;
    use std::time::SystemTime;

    use futures::future::BoxFuture;

    use super::*;
    use crate::servicegroup::memory::MemoryDriver;
    use crate::servicegroup::{
        task_restarts, AdminChange, Driver, Endpoints, Membership, Registration,
    };

    fn registration(host: &str) -> Registration {
        Registration {
            topic: "t".into(),
            host: host.into(),
            binary: "b".into(),
            version: "1".into(),
            endpoints: Endpoints {
                grpc: Some("http://127.0.0.1:1".into()),
                http: None,
            },
            services: vec![],
            workers: 1,
            report_interval: Duration::from_secs(1),
            service_down_time: Duration::from_secs(2),
        }
    }

    /// A group whose first watch ends after one event, as a driver's stream
    /// might end for good.
    struct EndsOnce {
        group: MemoryDriver,
        ended: AtomicBool,
    }

    impl Driver for EndsOnce {
        fn join(&self, r: Registration) -> BoxFuture<'_, Result<Box<dyn Membership>>> {
            self.group.join(r)
        }
        fn get<'a>(&'a self, t: &'a str, h: &'a str) -> BoxFuture<'a, Result<Option<Member>>> {
            self.group.get(t, h)
        }
        fn list<'a>(&'a self, t: Option<&'a str>) -> BoxFuture<'a, Result<Vec<Member>>> {
            self.group.list(t)
        }
        fn watch<'a>(&'a self, t: Option<&'a str>) -> BoxFuture<'a, Result<EventStream>> {
            let ends = !self.ended.swap(true, Ordering::SeqCst);
            async move {
                let events = self.group.watch(t).await?;
                Ok(if ends { events.take(1).boxed() } else { events })
            }
            .boxed()
        }
        fn set_admin<'a>(
            &'a self,
            t: &'a str,
            h: &'a str,
            c: AdminChange,
        ) -> BoxFuture<'a, Result<Member>> {
            self.group.set_admin(t, h, c)
        }
        fn delete<'a>(&'a self, t: &'a str, h: &'a str) -> BoxFuture<'a, Result<bool>> {
            self.group.delete(t, h)
        }
    }

    #[tokio::test]
    async fn a_watch_that_ends_is_counted_and_started_again() {
        let registry: Registry = Arc::new(EndsOnce {
            group: MemoryDriver::named("discovery-ends-once"),
            ended: AtomicBool::new(false),
        });
        let before = task_restarts();
        let options = ConnectOptions {
            connect_timeout: Duration::from_secs(1),
            subsetting: Subsetting { client: 1, size: 0 },
            tls: None,
        };
        let discovery = Discovery::new(registry.clone(), options);
        let mut snapshots = discovery.topic("t");
        let topic = Target::topic("t");
        tokio::time::timeout(Duration::from_secs(5), snapshots.wait_for(|s| s.loaded))
            .await
            .expect("the topic is listed")
            .unwrap();
        // The first join is the watch's last event.
        let _a = registry.join(registration("a")).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), async {
            while task_restarts() == before {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the ended watch is counted");
        let _b = registry.join(registration("b")).await.unwrap();
        tokio::time::timeout(
            Duration::from_secs(5),
            snapshots.wait_for(|s| s.nodes(&topic).len() == 2),
        )
        .await
        .expect("changes after the restart reach the client")
        .unwrap();
    }

    #[tokio::test]
    async fn deleted_records_leave_the_member_map() {
        let (total, events) = (AtomicUsize::new(0), std::sync::atomic::AtomicU64::new(0));
        let mut tracker = Tracker {
            members: BTreeMap::new(),
            nodes: HashMap::new(),
            options: Arc::new(ConnectOptions {
                connect_timeout: Duration::from_secs(1),
                subsetting: Subsetting { client: 1, size: 0 },
                tls: None,
            }),
            held: Held {
                total: &total,
                mine: 0,
            },
            events: &events,
        };
        let record = registration("h").to_record(SystemTime::UNIX_EPOCH);
        let up = Member { record, up: true };
        tracker.apply(&Event::Join(up.clone()));
        assert_eq!(tracker.snapshot().nodes(&Target::topic("t")).len(), 1);
        tracker.apply(&Event::Delete(Member { up: false, ..up }));
        assert!(tracker.members.is_empty());
        assert!(tracker.snapshot().nodes(&Target::topic("t")).is_empty());
    }

    #[tokio::test]
    async fn a_topic_is_watched_while_a_channel_uses_it() {
        let registry: Registry = Arc::new(MemoryDriver::named("discovery-topics"));
        let options = ConnectOptions {
            connect_timeout: Duration::from_secs(1),
            subsetting: Subsetting { client: 1, size: 0 },
            tls: None,
        };
        let discovery = Discovery::with_linger(registry.clone(), options, Duration::ZERO);
        assert!(discovery.watched().is_empty(), "nothing before a channel");
        let mut first = discovery.topic("t");
        let second = discovery.topic("t");
        assert_eq!(discovery.watched(), ["t"], "one watch for both");
        first.wait_for(|s| s.loaded).await.unwrap();
        drop(first);
        drop(second);
        // The watch's task notices the last receiver go and retires it.
        tokio::time::timeout(Duration::from_secs(5), async {
            while !discovery.watched().is_empty() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the unused watch stops");
        // A new channel starts it again, and it follows changes.
        let mut again = discovery.topic("t");
        let _a = registry.join(registration("a")).await.unwrap();
        tokio::time::timeout(
            Duration::from_secs(5),
            again.wait_for(|s| s.nodes(&Target::topic("t")).len() == 1),
        )
        .await
        .expect("the restarted watch follows")
        .unwrap();
    }

    fn nodes(hosts: impl IntoIterator<Item = String>) -> Vec<Arc<Node>> {
        hosts
            .into_iter()
            .map(|host| {
                let mut reg = registration(&host);
                reg.host = host;
                let record = reg.to_record(SystemTime::UNIX_EPOCH);
                Arc::new(Node {
                    member: Member { record, up: true },
                    channel: Arc::new(OnceLock::new()),
                    options: Arc::new(ConnectOptions {
                        connect_timeout: Duration::from_secs(1),
                        subsetting: Subsetting { client: 1, size: 0 },
                        tls: None,
                    }),
                    pending: Arc::new(AtomicUsize::new(0)),
                    abandoned: Arc::new(AtomicUsize::new(0)),
                })
            })
            .collect()
    }

    fn subset(client: u64, size: usize, fleet: &[Arc<Node>]) -> Vec<String> {
        let mut chosen = fleet.to_vec();
        Subsetting { client, size }.apply(&mut chosen);
        let mut hosts: Vec<String> = chosen.iter().map(|n| n.host().to_string()).collect();
        hosts.sort();
        hosts
    }

    #[tokio::test]
    async fn subsets_spread_over_the_fleet_and_move_only_what_changed() {
        let fleet = nodes((0..50).map(|i| format!("n{i:02}")));
        let clients: Vec<u64> = (0..20).map(|i| rendezvous(i, "client")).collect();
        // 20 clients of 10 nodes each: 200 places over 50 nodes, 4 each on
        // average.
        let mut load: HashMap<String, usize> = HashMap::new();
        for &client in &clients {
            let chosen = subset(client, 10, &fleet);
            assert_eq!(chosen.len(), 10);
            assert_eq!(chosen, subset(client, 10, &fleet), "deterministic");
            for host in chosen {
                *load.entry(host).or_default() += 1;
            }
        }
        let counts: Vec<usize> = fleet
            .iter()
            .map(|n| load.get(n.host()).copied().unwrap_or(0))
            .collect();
        let max = counts.iter().max().copied().unwrap_or(0);
        let unused = counts.iter().filter(|&&c| c == 0).count();
        // Rendezvous scores are independent: each node's count is
        // Binomial(20, 0.2). An even spread leaves few nodes unused and
        // none with more than three times its share.
        assert!(max <= 10, "a node in {max} of 20 subsets: {counts:?}");
        assert!(unused <= 1, "{unused} nodes in no subset: {counts:?}");

        // One node leaves: only the clients that had it change, by one node.
        let gone = fleet[7].host().to_string();
        let smaller: Vec<Arc<Node>> = fleet.iter().filter(|n| n.host() != gone).cloned().collect();
        for &client in &clients {
            let before = subset(client, 10, &fleet);
            let after = subset(client, 10, &smaller);
            let moved = after.iter().filter(|h| !before.contains(h)).count();
            if before.contains(&gone) {
                assert_eq!(moved, 1, "one replacement for the node that left");
            } else {
                assert_eq!(before, after, "a subset without the node stays as it was");
            }
        }
        // A small topic is not subset.
        assert_eq!(subset(clients[0], 10, &fleet[..8]).len(), 8);
        assert_eq!(
            subset(clients[0], 0, &fleet).len(),
            50,
            "0 turns subsetting off"
        );
    }
}
