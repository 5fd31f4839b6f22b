//! At fleet scale, a client pays only for the topics it calls: with 50,000
//! service records of another topic in a real etcd, a client of topic
//! `echo` holds, and is woken up for, `echo`'s records alone.

mod support;

use std::time::{Duration, SystemTime};

use etcd_client::{Client, GetOptions, Txn, TxnOp};
use support::etcd::Etcd;
use support::{eventually, live_endpoint, registration_at};
use svckit::rpc::{Rpc, Target};
use svckit::servicegroup::etcd::EtcdDriver;
use svckit::servicegroup::{self, Advert, Driver, Endpoints, EventStream, Membership};

const FOREIGN: usize = 50_000;
const WAIT: Duration = Duration::from_secs(20);

/// Puts `count` records of topic `topic` straight into etcd, as a fleet's
/// nodes would have left them, 128 to a transaction (etcd's limit).
async fn put_records(client: &mut Client, topic: &str, hosts: std::ops::Range<usize>) {
    let now = SystemTime::now();
    let hosts: Vec<usize> = hosts.collect();
    for chunk in hosts.chunks(128) {
        let ops: Vec<TxnOp> = chunk
            .iter()
            .map(|i| {
                let host = format!("h{i:05}");
                let endpoints = Endpoints::new(Some(format!("http://{host}:7000")), None);
                let advert =
                    Advert::new(topic, host.as_str(), "compute_node", "1", endpoints, vec![]);
                let record = advert
                    .registration(1, Duration::from_secs(1), Duration::from_secs(5))
                    .to_record(now);
                let value = serde_json::to_vec(&record).expect("encode a record");
                TxnOp::put(format!("/test/services/{topic}/{host}"), value, None)
            })
            .collect();
        client
            .txn(Txn::new().and_then(ops))
            .await
            .expect("put a batch of records");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_of_other_topics_cost_a_client_nothing() {
    let etcd = Etcd::start();
    let mut raw = Client::connect([etcd.endpoint()], None)
        .await
        .expect("raw etcd client");
    put_records(&mut raw, "compute", 0..FOREIGN).await;

    let registry = servicegroup::connect(&etcd.url(), &support::options())
        .await
        .expect("connect");
    let live = live_endpoint().await;
    let _e1 = registry
        .join(registration_at("echo", "e1", &live.url))
        .await
        .expect("join");

    let rpc = Rpc::new(registry.clone()).await.expect("client");
    assert_eq!(rpc.stats().topics_watched, 0, "nothing before a channel");
    let echo = Target::topic("echo");
    let channel = rpc.channel(echo.clone());
    rpc.wait_for_nodes(&echo, 1, WAIT).await.expect("e1 seen");
    let stats = rpc.stats();
    assert_eq!(stats.topics_watched, 1, "{stats:?}");
    assert_eq!(
        stats.members_held, 1,
        "only echo's record is held: {stats:?}"
    );

    // Churn on the other topic: a thousand records written and deleted.
    put_records(&mut raw, "compute", FOREIGN..FOREIGN + 1_000).await;
    raw.delete(
        "/test/services/compute/h5",
        Some(etcd_client::DeleteOptions::new().with_prefix()),
    )
    .await
    .expect("delete a range of records");
    // Then one change on echo: the client sees it, and only it.
    let events_before = rpc.stats().membership_events;
    let _e2 = registry
        .join(registration_at("echo", "e2", &live.url))
        .await
        .expect("join");
    rpc.wait_for_nodes(&echo, 2, WAIT).await.expect("e2 seen");
    let stats = rpc.stats();
    assert_eq!(stats.members_held, 2, "{stats:?}");
    assert!(
        stats.membership_events - events_before <= 2,
        "woken up for other topics: {stats:?}"
    );
    assert_eq!(channel.hosts().len(), 2);

    // A topic's watch runs while a channel uses it: a second topic adds a
    // second watch, and holds its own records only.
    let compute = rpc.channel(Target::topic("compute"));
    eventually(WAIT, "compute listed", || async {
        (rpc.stats().members_held as usize > 2).then_some(())
    })
    .await;
    assert_eq!(rpc.stats().topics_watched, 2);
    drop(compute);
}

/// Nodes of one fleet, in the storm tests.
const STORM: usize = 50;

/// Joins [`STORM`] nodes of topic `storm` through `driver`, each a process
/// of its own to etcd (its own lease), with a heartbeat a second and a
/// lease of five (a keep-alive every 2 s, 0.4 of the TTL); returns once
/// `watch` saw them all join.
async fn join_storm(driver: &EtcdDriver, watch: &mut EventStream) -> Vec<Box<dyn Membership>> {
    let mut nodes = Vec::new();
    for i in 0..STORM {
        let mut reg = support::registration("storm", &format!("s{i:02}"));
        reg.report_interval = Duration::from_secs(1);
        reg.service_down_time = Duration::from_secs(5);
        let node = driver.as_another_process();
        nodes.push(node.join(reg).await.expect("join"));
    }
    for _ in 0..STORM {
        support::expect_event(watch, WAIT, "a join", |e| e.kind() == "join").await;
    }
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_wide_outage_is_healed_without_writes_and_no_node_looks_down() {
    let etcd = Etcd::start();
    let proxy = support::etcd::Proxy::start(&etcd);
    let through_proxy = EtcdDriver::connect(&proxy.url(), &support::options())
        .await
        .expect("connect through the proxy");
    let direct = servicegroup::connect(&etcd.url(), &support::options())
        .await
        .expect("connect");
    let mut watch = direct.watch(Some("storm")).await.expect("watch");
    // The outage below breaks every node's streams at once, and no lease
    // expires.
    let nodes = join_storm(&through_proxy, &mut watch).await;
    let joined_at = |m: &svckit::servicegroup::Member| m.record.updated_at.clone();
    let before: Vec<String> = direct
        .list(Some("storm"))
        .await
        .expect("list")
        .iter()
        .map(joined_at)
        .collect();

    // Every connection of the fleet breaks at once, as in a leader loss.
    proxy.cut();
    proxy.restore();
    let healed = async {
        for node in &nodes {
            eventually(WAIT, "every node registered again", || async {
                let s = node.status();
                (s.reregistrations >= 1
                    && s.state == svckit::servicegroup::RegistrationState::Registered)
                    .then_some(())
            })
            .await;
        }
    };
    // Meanwhile no node is ever seen down.
    let quiet = support::expect_none(
        &mut watch,
        Duration::from_secs(4),
        "a node seen down",
        |e| e.kind() == "leave",
    );
    tokio::join!(healed, quiet);

    // No node gave up, and none had to register anew: each resumed its
    // lease, so the outage cost etcd no write (records as they were).
    let members = direct.list(Some("storm")).await.expect("list");
    assert_eq!(members.len(), STORM);
    assert!(members.iter().all(|m| m.up), "{members:?}");
    let after: Vec<String> = members.iter().map(joined_at).collect();
    assert_eq!(before, after, "records were written again");
}

/// Leases that end together (an outage longer than the TTL, a cluster too
/// loaded to answer, or an operator revoking them) do not bring the fleet
/// back in one instant: each node grants and registers again at a random
/// point of its keep-alive interval, and every node does come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_lost_together_are_granted_again_spread_over_the_interval() {
    let etcd = Etcd::start();
    let driver = EtcdDriver::connect(&etcd.url(), &support::options())
        .await
        .expect("connect");
    let registry = servicegroup::connect(&etcd.url(), &support::options())
        .await
        .expect("connect");
    let mut watch = registry.watch(Some("storm")).await.expect("watch");
    let nodes = join_storm(&driver, &mut watch).await;
    let raw = Client::connect([etcd.endpoint()], None)
        .await
        .expect("raw etcd client");
    let alive = raw
        .kv_client()
        .get("/test/alive/storm/", Some(GetOptions::new().with_prefix()))
        .await
        .expect("the liveness keys");
    let leases: std::collections::BTreeSet<i64> = alive.kvs().iter().map(|kv| kv.lease()).collect();
    assert_eq!(leases.len(), STORM, "one lease per process");

    // Every lease ends in the same instant.
    let revokes = leases.iter().map(|&lease| {
        let mut leases = raw.lease_client();
        async move { leases.revoke(lease).await.expect("revoke") }
    });
    futures::future::join_all(revokes).await;
    let revoked = std::time::Instant::now();

    // Each node shows down, then joins again: the joins come over the
    // interval, not all at once.
    let mut back = std::collections::BTreeMap::new();
    while back.len() < STORM {
        let (event, _) =
            support::expect_event(&mut watch, WAIT, "a node back", |e| e.kind() == "join").await;
        back.entry(event.member().record.advert.host.clone())
            .or_insert_with(|| revoked.elapsed());
    }
    let (first, last) = (back.values().min(), back.values().max());
    let span = last.zip(first).map(|(l, f)| *l - *f).unwrap_or_default();
    // 50 random points of a 2 s interval span about 1.9 s; grants made at
    // once come back within a few hundred milliseconds.
    assert!(
        span >= Duration::from_secs(1),
        "the fleet came back within {span:?}: {back:?}"
    );
    // A watcher may see a node's key before the node has read etcd's answer
    // to its own write, so each node's state is awaited, not sampled.
    for node in &nodes {
        eventually(WAIT, "each node registered again", || async {
            let status = node.status();
            (status.state == servicegroup::RegistrationState::Registered
                && status.reregistrations >= 1)
                .then_some(())
        })
        .await;
    }
    let members = registry.list(Some("storm")).await.expect("list");
    assert!(members.iter().all(|m| m.up), "{members:?}");
}
