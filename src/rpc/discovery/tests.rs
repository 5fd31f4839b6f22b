use std::sync::atomic::AtomicBool;
use std::time::SystemTime;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};

use super::subset::rendezvous;
use super::tracker::Tracker;
use super::*;
use crate::error::Result;
use crate::servicegroup::feed::Members;
use crate::servicegroup::memory::MemoryDriver;
use crate::servicegroup::{
    AdminChange, Driver, Endpoints, Event, EventStream, Membership, Registration, Registry,
};

fn registration(host: &str) -> Registration {
    Registration {
        advert: crate::servicegroup::Advert {
            topic: "t".into(),
            host: host.into(),
            binary: "b".into(),
            version: "1".into(),
            endpoints: Endpoints {
                grpc: Some("http://127.0.0.1:1".into()),
                http: None,
            },
            services: vec![],
        },
        workers: 1,
        report_interval: Duration::from_secs(1),
        service_down_time: Duration::from_secs(2),
        resume: None,
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
    let figures = ClientFigures::default();
    let options = ConnectOptions {
        connect_timeout: Duration::from_secs(1),
        connections_per_node: 1,
        figures: figures.clone(),
        subsetting: Subsetting { client: 1, size: 0 },
        tls: None,
        idle_timeout: None,
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
        while figures.feed_restarts("t") == 0 {
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
    let mut tracker = tracker(1, None);
    let record = registration("h").to_record(SystemTime::UNIX_EPOCH);
    let up = Member {
        record: record.into(),
        up: true,
    };
    tracker.apply(&Event::Join(up.clone()));
    assert_eq!(tracker.snapshot().nodes(&Target::topic("t")).len(), 1);
    tracker.apply(&Event::Delete(Member { up: false, ..up }));
    assert!(tracker.members.is_empty());
    assert!(tracker.snapshot().nodes(&Target::topic("t")).is_empty());
}

#[tokio::test]
async fn a_connection_no_call_took_between_two_sweeps_is_dropped() {
    let mut tracker = tracker(1, Some(Duration::from_secs(1)));
    let record = registration("h").to_record(SystemTime::UNIX_EPOCH);
    tracker.apply(&Event::Join(Member {
        record: record.into(),
        up: true,
    }));
    let topic = Target::topic("t");
    let connected =
        |snapshot: &Snapshot| matches!(snapshot.nodes(&topic)[0].channel.get(), Some(Some(_)));
    let first = tracker.snapshot();
    assert!(!tracker.close_idle(), "nothing to close before a call");
    first.nodes(&topic)[0].channel().expect("a connection");
    // Used since the last sweep: kept; a sweep later, unused: dropped.
    assert!(!tracker.close_idle());
    assert!(connected(&tracker.snapshot()));
    // A call in flight keeps it too.
    first.nodes(&topic)[0]
        .pending
        .fetch_add(1, Ordering::Relaxed);
    assert!(!tracker.close_idle());
    first.nodes(&topic)[0]
        .pending
        .fetch_sub(1, Ordering::Relaxed);
    assert!(tracker.close_idle());
    let after = tracker.snapshot();
    assert!(!connected(&after), "the next snapshot has no connection");
    // Its load counters are the node's still, and a call connects again.
    assert!(Arc::ptr_eq(
        &after.nodes(&topic)[0].pending,
        &first.nodes(&topic)[0].pending
    ));
    after.nodes(&topic)[0].channel().expect("a new connection");
    assert!(connected(&after));
}

#[tokio::test]
async fn a_topic_is_watched_while_a_channel_uses_it() {
    let registry: Registry = Arc::new(MemoryDriver::named("discovery-topics"));
    let options = ConnectOptions {
        connect_timeout: Duration::from_secs(1),
        connections_per_node: 1,
        figures: Default::default(),
        subsetting: Subsetting { client: 1, size: 0 },
        tls: None,
        idle_timeout: None,
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
            reg.advert.host = host;
            let record = reg.to_record(SystemTime::UNIX_EPOCH);
            Arc::new(Node {
                member: Arc::new(Member {
                    record: record.into(),
                    up: true,
                }),
                channel: Arc::default(),
                options: Arc::new(ConnectOptions {
                    connect_timeout: Duration::from_secs(1),
                    connections_per_node: 1,
                    figures: Default::default(),
                    subsetting: Subsetting { client: 1, size: 0 },
                    tls: None,
                    idle_timeout: None,
                }),
                pending: Arc::new(AtomicUsize::new(0)),
                abandoned: Arc::new(AtomicUsize::new(0)),
                used: Arc::new(AtomicBool::new(false)),
                health: Arc::default(),
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

#[test]
fn a_node_failing_in_a_row_is_ejected_but_never_more_than_half_nor_the_last() {
    let base = Duration::from_secs(30);
    let three = nodes(["a", "b", "c"].map(String::from));
    // Answers that are failures eject after five in a row.
    for i in 0..outlier::CONSECUTIVE {
        assert!(!three[0].health.is_ejected(), "ejected after {i}");
        outlier::failed(&three[0], &three, base);
    }
    assert!(three[0].health.is_ejected());
    assert_eq!(outlier::ejected(&three), 1);
    // A second node failing as badly stays in: two of three is more than
    // half.
    for _ in 0..outlier::CONSECUTIVE * 4 {
        outlier::failed(&three[1], &three, base);
    }
    assert!(!three[1].health.is_ejected());
    assert_eq!(outlier::ejected(&three), 1);
    // Picks leave the ejected node out while others are left.
    for _ in 0..100 {
        let picked = crate::rpc::channel::pick_for_test(&three, &[]).unwrap();
        assert_ne!(picked.host(), "a");
    }
    // Alone in its topic, a node is never ejected.
    let one = nodes(["z".to_string()]);
    for _ in 0..outlier::CONSECUTIVE * 4 {
        outlier::failed(&one[0], &one, base);
    }
    assert!(!one[0].health.is_ejected());
}

#[test]
fn a_node_failing_well_above_its_peers_is_ejected_and_not_when_all_fail() {
    let base = Duration::from_secs(30);
    // One node fails one call in three, never twice in a row; its peers
    // answer: an outlier once its window has the volume.
    let sick = nodes(["a", "b", "c"].map(String::from));
    for round in 0..outlier::MIN_VOLUME * 2 {
        for peer in &sick[1..] {
            peer.health.succeeded();
        }
        if round % 3 == 0 {
            outlier::failed(&sick[0], &sick, base);
        } else {
            sick[0].health.succeeded();
        }
    }
    assert!(sick[0].health.is_ejected(), "a third of its calls failed");
    // Every node failing alike (the callee's dependency down): no outlier.
    let all = nodes(["d", "e", "f"].map(String::from));
    for round in 0..outlier::MIN_VOLUME * 2 {
        for node in &all {
            if round % 3 == 0 {
                outlier::failed(node, &all, base);
            } else {
                node.health.succeeded();
            }
        }
    }
    assert_eq!(outlier::ejected(&all), 0);
}

#[tokio::test]
async fn a_busy_node_gets_one_more_connection_per_sixteen_calls_in_flight() {
    let mut tracker = tracker(3, None);
    let record = registration("h").to_record(SystemTime::UNIX_EPOCH);
    tracker.apply(&Event::Join(Member {
        record: record.into(),
        up: true,
    }));
    let snapshot = tracker.snapshot();
    let node = &snapshot.nodes(&Target::topic("t"))[0];
    let slots = |n: usize| -> std::collections::BTreeSet<usize> {
        (0..n)
            .map(|_| {
                let handle = node.channel().expect("a connection");
                let slot = handle.slot;
                node.give_back(handle);
                slot
            })
            .collect()
    };
    // A few calls in flight: the first connection alone.
    node.pending
        .store(STREAMS_PER_CONNECTION, Ordering::Relaxed);
    assert_eq!(slots(10), [0].into());
    assert!(node.channel.more.get().is_none(), "no second one made");
    // More: a second connection, then a third, never past the bound.
    node.pending
        .store(STREAMS_PER_CONNECTION + 1, Ordering::Relaxed);
    assert_eq!(slots(10), [0, 1].into());
    node.pending
        .store(10 * STREAMS_PER_CONNECTION, Ordering::Relaxed);
    assert_eq!(slots(10), [0, 1, 2].into());
    // Back to few: the first again.
    node.pending.store(1, Ordering::Relaxed);
    assert_eq!(slots(10), [0].into());
}

/// A tracker of one client, with `connections` per node and connections
/// closed after `idle_timeout`, and the members its feed would hold.
fn tracker(connections: usize, idle_timeout: Option<Duration>) -> Fixture {
    let options = Arc::new(ConnectOptions {
        connect_timeout: Duration::from_secs(1),
        connections_per_node: connections,
        figures: Default::default(),
        subsetting: Subsetting { client: 1, size: 0 },
        tls: None,
        idle_timeout,
    });
    Fixture {
        tracker: Tracker::new("t", options, Arc::default(), Arc::default()),
        members: Members::new(),
    }
}

struct Fixture {
    tracker: Tracker,
    members: Members,
}

impl Fixture {
    fn apply(&mut self, event: &Event) {
        crate::servicegroup::feed::apply(&mut self.members, event);
    }

    fn snapshot(&mut self) -> Snapshot {
        self.tracker.snapshot(&self.members)
    }

    fn close_idle(&mut self) -> bool {
        self.tracker.close_idle()
    }
}
