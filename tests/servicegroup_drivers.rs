//! One behavioural suite, run against every service-group driver: memory,
//! file (in a tempdir) and a real etcd process.

mod support;

use std::sync::Arc;

use futures::StreamExt;
use std::time::Duration;

use support::etcd::Etcd;
use support::*;
use svckit::servicegroup::file::FileDriver;
use svckit::servicegroup::memory::MemoryDriver;
use svckit::servicegroup::{connect, AdminChange, Event, RegistrationState, Registry, RegistryUrl};
use svckit::ErrorKind;

const WAIT: Duration = Duration::from_secs(5);

/// Which driver runs the suite: the memory driver's members live in this
/// process, so it never asks a holder whether it is alive.
enum Kind {
    Memory,
    File,
    Etcd,
}

async fn behaves_like_a_service_group(registry: Registry, kind: Kind) {
    let t = "compute";
    assert!(registry.list(Some(t)).await.unwrap().is_empty());
    let mut watch = registry.watch(Some(t)).await.unwrap();
    let mut all = registry.watch(None).await.unwrap();

    // Join: up in get and list, and watchers see it. n1 answers health
    // checks, as a live node does.
    let live = live_endpoint().await;
    let node = registry
        .join(registration_at(t, "n1", &live.url))
        .await
        .unwrap();
    assert_eq!(node.status().state, RegistrationState::Registered);
    let m = registry.get(t, "n1").await.unwrap().expect("n1 record");
    assert!(m.up && m.is_routable(), "{m:?}");
    assert_eq!(m.record.advert.binary, "test_node");
    assert_eq!(
        m.record.advert.endpoints.grpc.as_deref(),
        Some(live.url.as_str())
    );
    assert_eq!(m.record.advert.services, ["svckit.test.v1.Test"]);
    expect_event(&mut watch, WAIT, "join of n1", is_join("n1")).await;
    expect_event(&mut all, WAIT, "join of n1 (all topics)", is_join("n1")).await;

    // Topic filtering.
    let other = registry
        .join(registration("scheduler", "s1"))
        .await
        .unwrap();
    expect_event(&mut all, WAIT, "join of s1", is_join("s1")).await;
    let hosts = |ms: Vec<svckit::servicegroup::Member>| -> Vec<(String, String)> {
        ms.into_iter()
            .map(|m| (m.record.advert.topic.clone(), m.record.advert.host.clone()))
            .collect()
    };
    assert_eq!(
        hosts(registry.list(Some(t)).await.unwrap()),
        [(t.into(), "n1".into())]
    );
    assert_eq!(
        hosts(registry.list(None).await.unwrap()),
        [(t.into(), "n1".into()), ("scheduler".into(), "s1".into())]
    );
    assert!(registry.get("scheduler", "n1").await.unwrap().is_none());

    // A second claim on one (topic, host), from elsewhere, is refused while
    // the holder serves; the message names the holder's endpoint.
    match registry
        .join(registration_at(t, "n1", &dead_endpoint()))
        .await
    {
        Err(e) if e.kind() == ErrorKind::Duplicate => {
            let msg = e.to_string();
            assert!(msg.contains("compute/n1"), "{msg}");
            if !matches!(kind, Kind::Memory) {
                assert!(msg.contains(&live.url), "{msg}");
            }
        }
        Err(e) => panic!("expected Duplicate, got {e}"),
        Ok(_) => panic!("a duplicate (topic, host) was accepted"),
    }
    assert!(registry.get(t, "n1").await.unwrap().unwrap().up);

    // Admin state: disable and enable are updates, forced down is a leave.
    let reason = Some("maintenance".to_string());
    let m = registry
        .set_admin(
            t,
            "n1",
            AdminChange::Disable {
                reason: reason.clone(),
            },
        )
        .await
        .unwrap();
    assert!(m.up && m.record.disabled && !m.is_routable());
    assert_eq!(m.record.disabled_reason, reason);
    expect_event(
        &mut watch,
        WAIT,
        "disable of n1",
        |e| matches!(e, Event::Update(m) if m.record.disabled),
    )
    .await;
    let m = registry
        .set_admin(t, "n1", AdminChange::Enable)
        .await
        .unwrap();
    assert!(m.up && !m.record.disabled && m.record.disabled_reason.is_none());
    expect_event(
        &mut watch,
        WAIT,
        "enable of n1",
        |e| matches!(e, Event::Update(m) if !m.record.disabled),
    )
    .await;
    let m = registry
        .set_admin(t, "n1", AdminChange::ForceDown(true))
        .await
        .unwrap();
    assert!(!m.up && m.record.forced_down);
    expect_event(&mut watch, WAIT, "forced down n1", is_leave("n1")).await;
    assert!(!registry.get(t, "n1").await.unwrap().unwrap().up);
    registry
        .set_admin(t, "n1", AdminChange::ForceDown(false))
        .await
        .unwrap();
    expect_event(&mut watch, WAIT, "n1 up again", is_join("n1")).await;
    match registry.set_admin(t, "nobody", AdminChange::Enable).await {
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        other => panic!("expected NotFound, got {other:?}"),
    }

    // Heartbeats keep a node up well past its down time, without events.
    expect_quiet(&mut watch, DOWN_TIME * 2).await;
    assert!(registry.get(t, "n1").await.unwrap().unwrap().up);

    // Leave: a Leave event at once, and the record stays, down.
    registry
        .set_admin(t, "n1", AdminChange::Disable { reason: None })
        .await
        .unwrap();
    expect_event(&mut watch, WAIT, "disable before leave", is_update("n1")).await;
    node.leave().await.unwrap();
    assert_eq!(node.status().state, RegistrationState::Left);
    // Half the down time: a leave, not a heartbeat gone stale.
    let (_, latency) = expect_event(&mut watch, DOWN_TIME / 2, "leave of n1", is_leave("n1")).await;
    eprintln!("graceful leave seen by the watcher after {latency:?}");
    let m = registry
        .get(t, "n1")
        .await
        .unwrap()
        .expect("record outlives the node");
    assert!(!m.up);

    // Joining again keeps the operator's admin state.
    let again = registry.join(registration(t, "n1")).await.unwrap();
    let (event, _) = expect_event(&mut watch, WAIT, "rejoin of n1", is_join("n1")).await;
    assert!(
        event.member().record.disabled,
        "admin state lost on re-registration"
    );
    again.leave().await.unwrap();
    expect_event(&mut watch, WAIT, "second leave of n1", is_leave("n1")).await;

    // Delete removes the record, and watchers are told to forget it.
    assert!(registry.delete(t, "n1").await.unwrap());
    expect_event(&mut watch, WAIT, "deletion of n1", is_delete("n1")).await;
    assert!(registry.get(t, "n1").await.unwrap().is_none());
    assert!(!registry.delete(t, "n1").await.unwrap());

    // service_down_time under 2 x report_interval is raised: a node that
    // heartbeats every 200 ms with a 50 ms down time never looks down.
    let mut reg = registration(t, "n2");
    reg.service_down_time = Duration::from_millis(50);
    let mut watch = registry.watch(Some(t)).await.unwrap();
    let fast = registry.join(reg).await.unwrap();
    expect_event(&mut watch, Duration::from_secs(10), "n2 up", is_join("n2")).await;
    expect_none(
        &mut watch,
        Duration::from_secs(1),
        "n2 looking down",
        is_leave("n2"),
    )
    .await;
    assert!(registry.get(t, "n2").await.unwrap().unwrap().up);
    fast.leave().await.unwrap();
    other.leave().await.unwrap();

    if !matches!(kind, Kind::Memory) {
        // A node that crashed (its lease or heartbeat still fresh, nothing
        // answering at its endpoint) is replaced at once by its restart.
        let crashed = registry
            .join(registration_at(t, "n3", &dead_endpoint()))
            .await
            .unwrap();
        expect_event(&mut watch, WAIT, "join of n3", is_join("n3")).await;
        drop(crashed);
        let restarted = registry
            .join(registration_at(t, "n3", &live.url))
            .await
            .expect("a crashed holder is replaced at once");
        expect_event(&mut watch, WAIT, "n3 up at its new endpoint", |e| {
            let m = e.member();
            m.record.advert.host == "n3"
                && m.up
                && m.record.advert.endpoints.grpc.as_ref() == Some(&live.url)
        })
        .await;
        // The crashed node's lease or heartbeat running out later does not
        // take the new registration down with it.
        let until = tokio::time::Instant::now() + DOWN_TIME * 2;
        while let Ok(Some(Ok(e))) = tokio::time::timeout_at(until, watch.next()).await {
            let m = e.member();
            assert!(m.record.advert.host != "n3" || m.up, "{e:?}");
        }
        assert!(registry.get(t, "n3").await.unwrap().unwrap().up);
        restarted.leave().await.unwrap();
        expect_event(&mut watch, WAIT, "leave of n3", is_leave("n3")).await;
    }

    // The topic watcher never saw the other topic.
    while let Ok(Some(Ok(event))) =
        tokio::time::timeout(Duration::from_millis(300), watch.next()).await
    {
        assert_eq!(event.member().record.advert.topic, t, "{event:?}");
    }
}

#[tokio::test]
async fn memory_driver_behaves_like_a_service_group() {
    behaves_like_a_service_group(Arc::new(MemoryDriver::named("suite")), Kind::Memory).await;
}

#[tokio::test]
async fn file_driver_behaves_like_a_service_group() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Arc::new(FileDriver::open(dir.path(), &options()).unwrap());
    behaves_like_a_service_group(registry, Kind::File).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_driver_behaves_like_a_service_group() {
    let etcd = Etcd::start();
    let registry = connect(&etcd.url(), &options()).await.unwrap();
    behaves_like_a_service_group(registry, Kind::Etcd).await;
}

#[tokio::test]
async fn memory_drivers_of_one_name_share_a_group() {
    let a = MemoryDriver::named("shared-name");
    let b = connect(
        &RegistryUrl::parse("memory://shared-name").unwrap(),
        &options(),
    )
    .await
    .unwrap();
    let c = MemoryDriver::named("another-name");
    use svckit::servicegroup::Driver;
    let node = a.join(registration("t", "h")).await.unwrap();
    assert!(b.get("t", "h").await.unwrap().unwrap().up);
    assert!(c.get("t", "h").await.unwrap().is_none());
    drop(node);
    assert!(
        !b.get("t", "h").await.unwrap().unwrap().up,
        "drop clears liveness"
    );
}
