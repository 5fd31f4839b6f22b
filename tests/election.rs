//! Leader elections of every service-group driver: one leader at a time,
//! and the election moves when the leader resigns or dies.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::etcd::Etcd;
use support::*;
use svckit::servicegroup::file::FileDriver;
use svckit::servicegroup::memory::MemoryDriver;
use svckit::servicegroup::{connect, Election, Leadership, Registry};

const WAIT: Duration = Duration::from_secs(10);

fn election(candidate: &str) -> Election {
    Election::new(
        "conductor",
        "reap",
        candidate,
        Duration::from_secs(1),
        Duration::from_millis(200),
    )
}

async fn one_leader(candidates: &[&Arc<dyn Leadership>]) -> usize {
    eventually(WAIT, "exactly one leader", || async {
        let leading: Vec<usize> = (0..candidates.len())
            .filter(|&i| candidates[i].is_leader())
            .collect();
        (leading.len() == 1).then(|| leading[0])
    })
    .await
}

/// Two registries of one deployment (two nodes) campaign in one election.
async fn elects_one_leader_at_a_time(a: Registry, b: Registry) {
    let first = a.campaign(election("a")).await.unwrap();
    let second = b.campaign(election("b")).await.unwrap();
    let other_task = b
        .campaign({
            let mut other = election("b");
            other.name = "other".into();
            other
        })
        .await
        .unwrap();
    let leader = one_leader(&[&first, &second]).await;
    eventually(WAIT, "another election to have its own leader", || async {
        other_task.is_leader().then_some(())
    })
    .await;
    let (leading, waiting) = if leader == 0 {
        (first, second)
    } else {
        (second, first)
    };
    leading.resign().await;
    eventually(WAIT, "the other candidate to lead", || async {
        waiting.is_leader().then_some(())
    })
    .await;
    assert!(!leading.is_leader(), "a resigned leader leads no more");
    // Free again: a new candidate takes it, the resigned one stays out.
    waiting.resign().await;
    let third = a.campaign(election("c")).await.unwrap();
    eventually(WAIT, "a new candidate to lead", || async {
        third.is_leader().then_some(())
    })
    .await;
    assert!(!leading.is_leader() && !waiting.is_leader());
}

#[tokio::test]
async fn memory() {
    let registry: Registry = Arc::new(MemoryDriver::named("election-test"));
    elects_one_leader_at_a_time(registry.clone(), registry).await;
}

#[tokio::test]
async fn file() {
    let dir = tempfile::tempdir().unwrap();
    let a: Registry = Arc::new(FileDriver::open(dir.path(), &options()).unwrap());
    let b: Registry = Arc::new(FileDriver::open(dir.path(), &options()).unwrap());
    elects_one_leader_at_a_time(a, b).await;
}

#[tokio::test]
async fn etcd() {
    let etcd = Etcd::start();
    let a = connect(&etcd.url(), &options()).await.unwrap();
    let b = connect(&etcd.url(), &options()).await.unwrap();
    elects_one_leader_at_a_time(a, b).await;
}

#[tokio::test]
async fn etcd_leader_cut_off_steps_down_and_another_takes_over() {
    let mut etcd = Etcd::start();
    let a = connect(&etcd.url(), &options()).await.unwrap();
    let first = a.campaign(election("a")).await.unwrap();
    eventually(WAIT, "a to lead", || async {
        first.is_leader().then_some(())
    })
    .await;
    // Without etcd the leader cannot prove its lease alive: it steps down
    // by itself once the TTL has passed.
    etcd.stop();
    eventually(WAIT, "a to step down", || async {
        (!first.is_leader()).then_some(())
    })
    .await;
    etcd.restart();
    let b = connect(&etcd.url(), &options()).await.unwrap();
    let second = b.campaign(election("b")).await.unwrap();
    one_leader(&[&first, &second]).await;
}
