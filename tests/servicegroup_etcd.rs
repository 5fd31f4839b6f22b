//! The etcd driver against real etcd processes misbehaving: crashes of the
//! node, etcd restarts and wipes, keys and leases removed by hand, a cluster
//! member lost, and no etcd at all.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use support::etcd::{Cluster, Etcd, Proxy};
use support::*;
use svckit::servicegroup::{connect, Election, Event, RegistrationState, Registry, RegistryUrl};
use svckit::ErrorKind;
use tokio::sync::Mutex;

/// These tests measure latencies; running them one at a time keeps two
/// cores from turning scheduling noise into failures.
static SERIAL: Mutex<()> = Mutex::const_new(());

const WAIT: Duration = Duration::from_secs(5);
const ALIVE_KEY: &str = "/test/alive/compute/n1";
const RECORD_KEY: &str = "/test/services/compute/n1";
/// Hand-made faults heal within 2 s; the rest is slack for a loaded machine.
const HEAL: Duration = Duration::from_millis(2500);

async fn raw_client(etcd: &Etcd) -> etcd_client::Client {
    etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .unwrap()
}

async fn is_up(registry: &Registry, host: &str) -> Option<bool> {
    registry
        .get("compute", host)
        .await
        .ok()
        .flatten()
        .map(|m| m.up)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_node_is_down_within_its_down_time() {
    let _serial = SERIAL.lock().await;
    init_tracing();
    let etcd = Etcd::start();
    let registry = connect(&etcd.url(), &options()).await.unwrap();
    let mut watch = registry.watch(Some("compute")).await.unwrap();
    let node = registry.join(registration("compute", "n1")).await.unwrap();
    expect_event(&mut watch, WAIT, "join", is_join("n1")).await;

    // Dropping without leave stops the heartbeats, as a crash would.
    let crashed_at = Instant::now();
    drop(node);
    expect_event(
        &mut watch,
        DOWN_TIME + Duration::from_secs(2),
        "leave",
        is_leave("n1"),
    )
    .await;
    eprintln!("crash detected after {:?}", crashed_at.elapsed());
    assert_eq!(
        is_up(&registry, "n1").await,
        Some(false),
        "record stays, down"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_leave_is_seen_at_once() {
    let _serial = SERIAL.lock().await;
    init_tracing();
    let etcd = Etcd::start();
    let registry = connect(&etcd.url(), &options()).await.unwrap();
    let node = registry.join(registration("compute", "n1")).await.unwrap();
    let mut watch = registry.watch(Some("compute")).await.unwrap();
    expect_event(&mut watch, WAIT, "initial join", is_join("n1")).await;

    node.leave().await.unwrap();
    // Half the lease TTL: only a deleted key, not an expiry, is seen so soon.
    let (_, latency) = expect_event(&mut watch, DOWN_TIME / 2, "leave", is_leave("n1")).await;
    eprintln!("graceful leave seen after {latency:?}");
    let mut raw = raw_client(&etcd).await;
    assert!(raw.get(ALIVE_KEY, None).await.unwrap().kvs().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_an_etcd_restart() {
    let _serial = SERIAL.lock().await;
    init_tracing();
    let mut etcd = Etcd::start();
    let registry = connect(&etcd.url(), &options()).await.unwrap();
    let node = registry.join(registration("compute", "n1")).await.unwrap();
    let mut watch = registry.watch(Some("compute")).await.unwrap();
    expect_event(&mut watch, WAIT, "join", is_join("n1")).await;

    etcd.stop();
    eventually(WAIT, "the node to notice the outage", || async {
        (node.status().state == RegistrationState::Retrying).then_some(())
    })
    .await;
    // A long outage: the retries have backed off several times.
    eventually(WAIT, "several failed retries", || async {
        (node.status().failures >= 4).then_some(())
    })
    .await;
    let before = node.status();
    assert_eq!(before.state, RegistrationState::Retrying, "{before:?}");

    etcd.restart();
    let answering = Instant::now();
    eventually(
        Duration::from_secs(2),
        "re-registration after the restart",
        || async {
            let s = node.status();
            (s.state == RegistrationState::Registered && s.reregistrations > before.reregistrations)
                .then_some(())
        },
    )
    .await;
    eprintln!(
        "re-registered {:?} after etcd answered",
        answering.elapsed()
    );
    assert_eq!(is_up(&registry, "n1").await, Some(true));

    // The watch resumed: it sees new members, and n1 is up in its view.
    let other = registry.join(registration("compute", "n2")).await.unwrap();
    expect_event(
        &mut watch,
        WAIT,
        "join of n2 after the restart",
        is_join("n2"),
    )
    .await;
    other.leave().await.unwrap();
    let (event, _) = expect_event(&mut watch, WAIT, "leave of n2", is_leave("n2")).await;
    assert_eq!(event.member().record.advert.host, "n2");
    node.leave().await.unwrap();
    expect_event(&mut watch, WAIT, "leave of n1", is_leave("n1")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recreates_its_keys_after_an_etcd_wipe() {
    let _serial = SERIAL.lock().await;
    init_tracing();
    let mut etcd = Etcd::start();
    let registry = connect(&etcd.url(), &options()).await.unwrap();
    let node = registry.join(registration("compute", "n1")).await.unwrap();
    let mut watch = registry.watch(Some("compute")).await.unwrap();
    expect_event(&mut watch, WAIT, "join", is_join("n1")).await;

    etcd.wipe();
    let answering = Instant::now();
    eventually(
        Duration::from_secs(3),
        "record and liveness re-created",
        || async { (is_up(&registry, "n1").await == Some(true)).then_some(()) },
    )
    .await;
    eprintln!(
        "keys re-created {:?} after the wiped etcd answered",
        answering.elapsed()
    );
    let mut raw = raw_client(&etcd).await;
    assert_eq!(raw.get(ALIVE_KEY, None).await.unwrap().kvs().len(), 1);
    assert!(node.status().reregistrations >= 1);

    let other = registry.join(registration("compute", "n2")).await.unwrap();
    expect_event(&mut watch, WAIT, "join of n2 after the wipe", is_join("n2")).await;
    drop(other);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restores_a_liveness_key_deleted_by_hand() {
    let _serial = SERIAL.lock().await;
    init_tracing();
    let etcd = Etcd::start();
    let registry = connect(&etcd.url(), &options()).await.unwrap();
    let node = registry.join(registration("compute", "n1")).await.unwrap();
    let mut raw = raw_client(&etcd).await;

    assert_eq!(raw.delete(ALIVE_KEY, None).await.unwrap().deleted(), 1);
    let deleted_at = Instant::now();
    eventually(
        Duration::from_secs(2),
        "the liveness key to be restored",
        || {
            let mut raw = raw.clone();
            async move { (raw.get(ALIVE_KEY, None).await.ok()?.kvs().len() == 1).then_some(()) }
        },
    )
    .await;
    eprintln!("liveness key restored after {:?}", deleted_at.elapsed());
    // The key is back before the session counts the re-registration.
    eventually(WAIT, "a counted re-registration", || async {
        (node.status().reregistrations == 1).then_some(())
    })
    .await;
    assert_eq!(is_up(&registry, "n1").await, Some(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restores_its_record_deleted_by_hand() {
    let _serial = SERIAL.lock().await;
    init_tracing();
    let etcd = Etcd::start();
    let registry = connect(&etcd.url(), &options()).await.unwrap();
    let node = registry.join(registration("compute", "n1")).await.unwrap();
    let mut watch = registry.watch(Some("compute")).await.unwrap();
    expect_event(&mut watch, WAIT, "join", is_join("n1")).await;
    let mut raw = raw_client(&etcd).await;

    // The node still heartbeats, so without its record it would silently
    // drop out of every list and every client.
    assert_eq!(raw.delete(RECORD_KEY, None).await.unwrap().deleted(), 1);
    expect_event(&mut watch, WAIT, "the deletion", is_delete("n1")).await;
    let (event, took) = expect_event(&mut watch, HEAL, "the record back, up", is_join("n1")).await;
    eprintln!("record restored after {took:?}");
    assert_eq!(event.member().record.advert.binary, "test_node");
    assert_eq!(raw.get(RECORD_KEY, None).await.unwrap().kvs().len(), 1);
    eventually(WAIT, "a counted re-registration", || async {
        (node.status().reregistrations >= 1).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reclaims_a_liveness_key_overwritten_by_hand() {
    let _serial = SERIAL.lock().await;
    init_tracing();
    let etcd = Etcd::start();
    let registry = connect(&etcd.url(), &options()).await.unwrap();
    let node = registry.join(registration("compute", "n1")).await.unwrap();
    let mut raw = raw_client(&etcd).await;
    let lease = raw.get(ALIVE_KEY, None).await.unwrap().kvs()[0].lease();

    // Without a lease the key would never expire: n1 would show up forever,
    // even after a crash.
    raw.put(ALIVE_KEY, "{}", None).await.unwrap();
    let new_lease = eventually(HEAL, "the key bound to a lease again", || {
        let mut raw = raw.clone();
        async move {
            let resp = raw.get(ALIVE_KEY, None).await.ok()?;
            resp.kvs().first().map(|kv| kv.lease()).filter(|l| *l != 0)
        }
    })
    .await;
    // The process's lease, which never stopped: the key is claimed with
    // it again.
    assert_eq!(new_lease, lease, "the process's lease holds it again");
    eventually(WAIT, "a counted re-registration", || async {
        (node.status().reregistrations >= 1).then_some(())
    })
    .await;
    assert_eq!(is_up(&registry, "n1").await, Some(true));

    // And it now expires with the node.
    let mut watch = registry.watch(Some("compute")).await.unwrap();
    expect_event(&mut watch, WAIT, "join", is_join("n1")).await;
    drop(node);
    expect_event(&mut watch, DOWN_TIME + HEAL, "leave", is_leave("n1")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_is_bounded_when_etcd_does_not_answer() {
    let _serial = SERIAL.lock().await;
    init_tracing();
    let etcd = Etcd::start();
    // A request timeout well above the leave bound.
    let mut slow = options();
    slow.timeout = Duration::from_secs(10);
    let registry = connect(&etcd.url(), &slow).await.unwrap();
    let node = registry.join(registration("compute", "n1")).await.unwrap();

    etcd.pause();
    let bound = svckit::servicegroup::LEAVE_TIMEOUT + Duration::from_secs(1);
    let left = tokio::time::timeout(bound, node.leave()).await;
    etcd.resume();
    match left {
        Ok(Err(e)) if e.kind() == ErrorKind::Unavailable => eprintln!("leave: {e}"),
        Ok(other) => panic!("expected Unavailable, got {other:?}"),
        Err(_) => panic!("leave still waiting on a silent etcd after {bound:?}"),
    }
    assert_eq!(node.status().state, RegistrationState::Left);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_again_after_its_lease_is_revoked() {
    let _serial = SERIAL.lock().await;
    init_tracing();
    let etcd = Etcd::start();
    let registry = connect(&etcd.url(), &options()).await.unwrap();
    let node = registry.join(registration("compute", "n1")).await.unwrap();
    let mut raw = raw_client(&etcd).await;
    let lease = raw.get(ALIVE_KEY, None).await.unwrap().kvs()[0].lease();
    assert_ne!(lease, 0);

    raw.lease_revoke(lease).await.unwrap();
    let revoked_at = Instant::now();
    let new_lease = eventually(Duration::from_secs(2), "a key bound to a new lease", || {
        let mut raw = raw.clone();
        async move {
            let resp = raw.get(ALIVE_KEY, None).await.ok()?;
            resp.kvs()
                .first()
                .map(|kv| kv.lease())
                .filter(|l| *l != lease)
        }
    })
    .await;
    eprintln!(
        "re-registered {:?} after the lease was revoked",
        revoked_at.elapsed()
    );
    let ttl = raw.lease_time_to_live(new_lease, None).await.unwrap();
    assert_eq!(ttl.granted_ttl(), 1, "TTL = service_down_time");
    assert!(node.status().reregistrations >= 1);
    assert_eq!(is_up(&registry, "n1").await, Some(true));
}

/// The leases etcd holds, and the lease of every key bound to one.
async fn leases(raw: &mut etcd_client::Client) -> (Vec<i64>, BTreeSet<i64>) {
    let held = raw.leases().await.unwrap();
    let held = held.leases().iter().map(|l| l.id()).collect();
    let all = etcd_client::GetOptions::new().with_prefix();
    let keys = raw.get("/", Some(all)).await.unwrap();
    let bound = keys
        .kvs()
        .iter()
        .map(|kv| kv.lease())
        .filter(|&l| l != 0)
        .collect();
    (held, bound)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_process_holds_one_lease_for_all_its_registrations_and_elections() {
    let _serial = SERIAL.lock().await;
    init_tracing();
    let etcd = Etcd::start();
    let registry = connect(&etcd.url(), &options()).await.unwrap();
    let mut watch = registry.watch(None).await.unwrap();
    let compute = registry.join(registration("compute", "n1")).await.unwrap();
    let conductor = registry
        .join(registration("conductor", "n1"))
        .await
        .unwrap();
    let election = Election::new("conductor", "reap", "n1", DOWN_TIME, DOWN_TIME / 5);
    let leader = registry.campaign(election).await.unwrap();
    eventually(WAIT, "leading the election", || async {
        leader.is_leader().then_some(())
    })
    .await;
    let mut raw = raw_client(&etcd).await;
    let (held, bound) = leases(&mut raw).await;
    assert_eq!(held.len(), 1, "leases held: {held:?}");
    assert_eq!(bound.len(), 1, "leases of the keys: {bound:?}");
    // Two liveness keys and an election key.
    let on_lease = raw
        .get("/", Some(etcd_client::GetOptions::new().with_prefix()))
        .await
        .unwrap()
        .kvs()
        .iter()
        .filter(|kv| kv.lease() == held[0])
        .count();
    assert_eq!(on_lease, 3);

    // One registration leaving takes only its own key; the lease lives on
    // for the others, through more than a TTL.
    compute.leave().await.unwrap();
    expect_event(&mut watch, WAIT, "leave of compute/n1", is_leave("n1")).await;
    expect_none(&mut watch, DOWN_TIME * 2, "conductor/n1 down", |e| {
        e.member().record.advert.topic == "conductor" && !e.member().up
    })
    .await;
    assert!(leader.is_leader(), "the election outlived a TTL");
    assert_eq!(leases(&mut raw).await.0, held, "the same lease");

    // The last user revokes it: nothing of the process is left behind.
    leader.resign().await;
    assert_eq!(leases(&mut raw).await.0, held, "still used by conductor/n1");
    conductor.leave().await.unwrap();
    let (held, bound) = leases(&mut raw).await;
    assert!(held.is_empty() && bound.is_empty(), "{held:?} {bound:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_watch_resumes_from_the_last_revision_seen() {
    let _serial = SERIAL.lock().await;
    init_tracing();
    let etcd = Etcd::start();
    let proxy = Proxy::start(&etcd);
    let direct = connect(&etcd.url(), &options()).await.unwrap();
    let watching = connect(&proxy.url(), &options()).await.unwrap();
    let _n1 = direct.join(registration("compute", "n1")).await.unwrap();
    let mut watch = watching.watch(Some("compute")).await.unwrap();
    expect_event(&mut watch, WAIT, "join of n1", is_join("n1")).await;

    // While the watcher is cut off from etcd, n2 comes and goes.
    proxy.cut();
    let n2 = direct.join(registration("compute", "n2")).await.unwrap();
    n2.leave().await.unwrap();
    proxy.restore();

    // Resumed from its last revision, the watcher replays both changes; a
    // reload would only have found a down record (an Update).
    let (first, _) = expect_event(&mut watch, WAIT, "n2's join, replayed", |e| {
        e.member().record.advert.host == "n2"
    })
    .await;
    assert!(matches!(first, Event::Join(_)), "{first:?}");
    expect_event(&mut watch, WAIT, "n2's leave, replayed", is_leave("n2")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_behind_a_compaction_reloads() {
    let _serial = SERIAL.lock().await;
    init_tracing();
    let etcd = Etcd::start();
    let proxy = Proxy::start(&etcd);
    let direct = connect(&etcd.url(), &options()).await.unwrap();
    let watching = connect(&proxy.url(), &options()).await.unwrap();
    let _n1 = direct.join(registration("compute", "n1")).await.unwrap();
    let mut watch = watching.watch(Some("compute")).await.unwrap();
    expect_event(&mut watch, WAIT, "join of n1", is_join("n1")).await;

    proxy.cut();
    let n2 = direct.join(registration("compute", "n2")).await.unwrap();
    n2.leave().await.unwrap();
    let mut raw = raw_client(&etcd).await;
    let revision = raw
        .get("/", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    raw.compact(revision, None).await.unwrap();
    proxy.restore();

    // The history is gone: the watcher lists again and reports the outcome.
    let (first, _) = expect_event(&mut watch, WAIT, "n2 after the reload", |e| {
        e.member().record.advert.host == "n2"
    })
    .await;
    assert!(
        matches!(&first, Event::Update(m) if !m.up),
        "a reload reports n2's down record, not its history: {first:?}"
    );
    // And it follows again from there.
    let _n3 = direct.join(registration("compute", "n3")).await.unwrap();
    expect_event(&mut watch, WAIT, "join of n3", is_join("n3")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeps_going_when_a_cluster_member_dies() {
    let _serial = SERIAL.lock().await;
    init_tracing();
    let mut cluster = Cluster::start();
    let registry = connect(&cluster.url(), &options()).await.unwrap();
    let node = registry.join(registration("compute", "n1")).await.unwrap();
    let mut watch = registry.watch(Some("compute")).await.unwrap();
    expect_event(&mut watch, WAIT, "join", is_join("n1")).await;

    // The client's streams sit on one member we cannot pick, so each member
    // in turn is killed (and brought back, keeping a quorum).
    for i in 0..cluster.members.len() {
        cluster.members[i].stop();
        let killed = Instant::now();
        let last = node.status().last_heartbeat;
        eventually(WAIT, "a heartbeat through another member", || async {
            let s = node.status();
            (s.state == RegistrationState::Registered && s.last_heartbeat != last).then_some(())
        })
        .await;
        // Heartbeats keep the node up for well over its down time.
        let leave = format!("n1 leaving {:?} after member {i} died", killed.elapsed());
        support::expect_none(&mut watch, DOWN_TIME * 2, &leave, is_leave("n1")).await;
        assert_eq!(is_up(&registry, "n1").await, Some(true));
        let host = format!("n{}", i + 2);
        let other = registry.join(registration("compute", &host)).await.unwrap();
        expect_event(&mut watch, WAIT, "a join after the kill", is_join(&host)).await;
        other.leave().await.unwrap();
        expect_event(&mut watch, WAIT, "a leave after the kill", is_leave(&host)).await;
        cluster.members[i].restart();
    }
    eprintln!("after losing each member in turn: {:?}", node.status());
}

#[tokio::test]
async fn unreachable_registry_is_unavailable_promptly() {
    // Ports nobody listens on: one endpoint fails at once, several are
    // retried in turn until the timeout.
    let port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (a, b) = (port(), port());
    for url in [
        format!("etcd://127.0.0.1:{a}"),
        format!("etcd://127.0.0.1:{a},127.0.0.1:{b}"),
    ] {
        let url = RegistryUrl::parse(&url).unwrap();
        // Bounded by the registry timeout, with slack for a loaded machine.
        let bound = options().timeout + Duration::from_secs(1);
        match tokio::time::timeout(bound, connect(&url, &options())).await {
            Ok(Err(e)) if e.kind() == ErrorKind::Unavailable => {
                assert!(e.to_string().contains(&a.to_string()), "{e}")
            }
            Ok(Err(e)) => panic!("expected Unavailable, got {e}"),
            Ok(Ok(_)) => panic!("connected to nothing"),
            Err(_) => panic!("{url}: no answer within {bound:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_ten_thousand_members_quickly() {
    let _serial = SERIAL.lock().await;
    init_tracing();
    let etcd = Etcd::start();
    let registry = connect(&etcd.url(), &options()).await.unwrap();
    let mut raw = raw_client(&etcd).await;
    let record = registration("bulk", "h").to_record(std::time::SystemTime::now());
    for batch in 0..100 {
        let puts: Vec<_> = (0..100)
            .map(|i| {
                let mut r = record.clone();
                r.advert.host = format!("h{:05}", batch * 100 + i);
                let key = format!("/test/services/bulk/{}", r.advert.host);
                etcd_client::TxnOp::put(key, serde_json::to_vec(&r).unwrap(), None)
            })
            .collect();
        raw.txn(etcd_client::Txn::new().and_then(puts))
            .await
            .unwrap();
    }

    let start = Instant::now();
    let members = registry.list(Some("bulk")).await.unwrap();
    let took = start.elapsed();
    eprintln!("listed {} members in {took:?}", members.len());
    assert_eq!(members.len(), 10_000);
    assert!(members
        .windows(2)
        .all(|w| w[0].record.advert.host < w[1].record.advert.host));

    let mut watch = registry.watch(None).await.unwrap();
    expect_event(&mut watch, WAIT, "the last record", |e| {
        e.member().record.advert.host == "h09999"
    })
    .await;
}

/// A watch of one topic is scoped to it: while 5,000 nodes of another
/// topic register (record and liveness key each, as a node writes them),
/// etcd sends the watcher none of their bytes. A watch on the deployment's
/// root would receive every one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_watch_receives_nothing_of_other_topics() {
    let _serial = SERIAL.lock().await;
    init_tracing();
    let etcd = Etcd::start();
    let proxy = Proxy::start(&etcd);
    let direct = connect(&etcd.url(), &options()).await.unwrap();
    let watching = connect(&proxy.url(), &options()).await.unwrap();
    // One real node of the other topic, whose keys the flood copies.
    let _model = direct
        .join(registration("compute2", "model"))
        .await
        .unwrap();
    let mut raw = raw_client(&etcd).await;
    let record = raw
        .get("/test/services/compute2/model", None)
        .await
        .unwrap()
        .kvs()[0]
        .value()
        .to_vec();
    let alive = raw
        .get("/test/alive/compute2/model", None)
        .await
        .unwrap()
        .kvs()[0]
        .value()
        .to_vec();

    let mut watch = watching.watch(Some("echo")).await.unwrap();
    let _echo = direct.join(registration("echo", "e1")).await.unwrap();
    expect_event(&mut watch, WAIT, "join of e1", is_join("e1")).await;

    let before = proxy.received();
    let mut written = 0usize;
    for batch in 0..100 {
        let puts: Vec<etcd_client::TxnOp> = (0..50)
            .flat_map(|i| {
                let host = format!("c{}", batch * 50 + i);
                let record = String::from_utf8_lossy(&record).replace("model", &host);
                [
                    etcd_client::TxnOp::put(
                        format!("/test/services/compute2/{host}"),
                        record,
                        None,
                    ),
                    etcd_client::TxnOp::put(
                        format!("/test/alive/compute2/{host}"),
                        alive.clone(),
                        None,
                    ),
                ]
            })
            .collect();
        written += puts.len();
        raw.txn(etcd_client::Txn::new().and_then(puts))
            .await
            .unwrap();
    }
    assert_eq!(written, 10_000);
    // The watcher is still following: a change of its own topic reaches it.
    let _e2 = direct.join(registration("echo", "e2")).await.unwrap();
    expect_event(&mut watch, WAIT, "join of e2", is_join("e2")).await;
    let received = proxy.received() - before;
    // e2's two keys, a few progress requests and pings: about 1 KB. The
    // 5,000 foreign nodes' keys alone are over 1.5 MB.
    assert!(
        received < 16 * 1024,
        "the echo watcher received {received} bytes while another topic's 5,000 nodes registered"
    );
}

/// A node's two keys, written at one revision, come on the topic's two
/// watches (records, liveness) in no set order; the watcher applies the
/// revision whole, so every joining node is one Join, never a down record
/// first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_node_is_one_join_though_its_keys_come_on_two_watches() {
    let _serial = SERIAL.lock().await;
    init_tracing();
    let etcd = Etcd::start();
    let registry = connect(&etcd.url(), &options()).await.unwrap();
    let mut watch = registry.watch(Some("compute")).await.unwrap();
    let mut nodes = Vec::new();
    for i in 0..40 {
        nodes.push(
            registry
                .join(registration("compute", &format!("n{i}")))
                .await
                .unwrap(),
        );
    }
    let mut first: std::collections::BTreeMap<String, &'static str> = Default::default();
    while first.len() < nodes.len() {
        let (event, _) = expect_event(&mut watch, WAIT, "the nodes' joins", |_| true).await;
        first
            .entry(event.member().record.advert.host.clone())
            .or_insert(event.kind());
    }
    let split: Vec<_> = first.iter().filter(|(_, kind)| **kind != "join").collect();
    assert!(
        split.is_empty(),
        "first events other than a join: {split:?}"
    );
}
