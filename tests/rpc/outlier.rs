//! A sick node (registered, its lease alive, half its calls failing) among
//! healthy ones: the client ejects it, and tries it again after its time.

use std::time::Duration;

use svckit::rpc::{Rpc, RpcOptions, Target};
use tonic::Code;

use crate::echo::pb::echo_client::EchoClient;
use crate::echo::pb::EchoRequest;
use crate::support::etcd::Etcd;
use crate::support::node::{quick_node_args, Proc};
use crate::{load, start_node};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sick_node_is_ejected_then_tried_again_after_its_time() {
    let etcd = Etcd::start();
    let url = etcd.url().to_string();
    let _healthy = [start_node(&etcd, "h1"), start_node(&etcd, "h2")];
    let sick_env = [("ECHO_FAIL_EVERY", "2"), ("SVCKIT_DRAIN_DELAY", "0.3")];
    let _sick: Proc = Proc::start_example("echo_node", &quick_node_args(&url, "sick"), &sick_env).0;
    let registry = svckit::servicegroup::connect(&etcd.url(), &Default::default())
        .await
        .unwrap();
    let mut options = RpcOptions::default();
    options.ejection_time = Duration::from_secs(2);
    let rpc = Rpc::with_options(registry, options).await.unwrap();
    let topic = Target::topic("echo");
    rpc.wait_for_nodes(&topic, 3, Duration::from_secs(10))
        .await
        .unwrap();

    // Not idempotent: a failed answer reaches the caller. Without ejection
    // a sixth of the calls would fail (a third to the sick node, half of
    // those failing).
    let (_, errors) = load(rpc.channel(topic.clone()), 3_000, 16).await;
    assert!(
        errors.iter().all(|e| e.code() == Code::Internal),
        "{errors:?}"
    );
    assert!(errors.len() <= 30, "{} of 3000 calls failed", errors.len());
    let ejected = rpc.stats().ejections;
    assert!(ejected >= 1, "the sick node was not ejected");

    // Its ejection over, it takes calls again (and is soon ejected again).
    let mut client = EchoClient::new(rpc.channel(topic));
    crate::support::eventually(
        Duration::from_secs(10),
        "a reply from the sick node",
        || {
            let mut client = client.clone();
            async move {
                let reply = client
                    .echo(EchoRequest {
                        payload: b"x".to_vec(),
                    })
                    .await;
                reply.ok().filter(|r| r.get_ref().host == "sick").map(drop)
            }
        },
    )
    .await;
    let _ = client.echo(EchoRequest { payload: vec![] }).await;
}

/// A node registered with its lease alive but nothing listening (a process
/// that closed its listener): every call that picks it first needs a
/// retry. Retries stay within the budget: 10% of calls plus 10 a second,
/// after a burst of ten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_stay_within_the_budget() {
    let etcd = Etcd::start();
    let _live = start_node(&etcd, "live");
    let registry = svckit::servicegroup::connect(&etcd.url(), &Default::default())
        .await
        .unwrap();
    let dead = crate::support::registration_at("echo", "dead", &crate::support::dead_endpoint());
    let _dead = registry.join(dead).await.unwrap();
    let mut options = RpcOptions::default();
    // Kept in rotation: the budget alone bounds the retries.
    options.ejection_time = Duration::ZERO;
    let rpc = Rpc::with_options(registry, options).await.unwrap();
    let topic = Target::topic("echo");
    rpc.wait_for_nodes(&topic, 2, Duration::from_secs(10))
        .await
        .unwrap();

    let started = std::time::Instant::now();
    let (replies, errors) = load(rpc.channel(topic), 2_000, 8).await;
    let elapsed = started.elapsed().as_secs_f64();
    let stats = rpc.stats();
    let bound = 10.0 + stats.calls as f64 / 10.0 + 10.0 * elapsed;
    assert!(
        (stats.retries as f64) <= bound + 1.0,
        "{} retries over {} calls in {elapsed:.1}s",
        stats.retries,
        stats.calls
    );
    assert!(stats.retries > 0, "no retry at all");
    // The calls the budget did not cover fail fast, as UNAVAILABLE.
    assert!(stats.over_budget > 0, "{stats:?}");
    assert!(!errors.is_empty());
    assert!(
        errors.iter().all(|e| e.code() == Code::Unavailable),
        "{errors:?}"
    );
    assert_eq!(replies.values().sum::<usize>() + errors.len(), 2_000);
}

/// Every node of the topic full (one slot each, held by another client's
/// long call): they refuse every call, and this client soon stops sending
/// most of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_throttling_engages_when_every_node_refuses() {
    use crate::echo::pb::SleepRequest;
    let etcd = Etcd::start();
    let url = etcd.url().to_string();
    let full = [("SVCKIT_RPC_POOL_SIZE", "1"), ("SVCKIT_RPC_POOL_WAIT", "0")];
    let nodes: Vec<Proc> = ["f1", "f2"]
        .iter()
        .map(|h| Proc::start_example("echo_node", &quick_node_args(&url, h), &full).0)
        .collect();
    let (holder, _) = crate::rpc_for(&etcd).await;
    let topic = Target::topic("echo");
    holder
        .wait_for_nodes(&topic, 2, Duration::from_secs(10))
        .await
        .unwrap();
    for (host, node) in ["f1", "f2"].iter().zip(&nodes) {
        let mut client = EchoClient::new(holder.channel(topic.clone().server(*host)));
        tokio::spawn(async move { client.sleep(SleepRequest { millis: 20_000 }).await });
        node.wait_for_log("sleep started", Duration::from_secs(10));
    }

    let (rpc, _) = crate::rpc_for(&etcd).await;
    rpc.wait_for_nodes(&topic, 2, Duration::from_secs(10))
        .await
        .unwrap();
    let (replies, errors) = load(rpc.channel(topic), 300, 4).await;
    assert!(replies.is_empty(), "{replies:?}");
    assert!(
        errors.iter().all(|e| e.code() == Code::Unavailable),
        "{errors:?}"
    );
    let stats = rpc.stats();
    assert!(
        stats.throttled >= 200,
        "only {} of 300 calls failed locally: {stats:?}",
        stats.throttled
    );
}

/// A node a hundred times slower than its peers (its lease alive, every
/// answer right, only 100 ms late) gets few calls: power of two choices
/// weighs calls in flight by each node's latency. On calls in flight alone
/// the slow node takes 80 or more of the 1,000. Its delay is far above what
/// a busy test machine adds to a healthy answer: a healthy node measured
/// within half of the slow one's latency counts as alike, and a 20 ms delay
/// let scheduling stalls on a loaded machine hand it 39 calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_node_gets_few_calls() {
    let etcd = Etcd::start();
    let url = etcd.url().to_string();
    let _healthy = [start_node(&etcd, "h1"), start_node(&etcd, "h2")];
    let slow_env = [("ECHO_DELAY_US", "100000"), ("SVCKIT_DRAIN_DELAY", "0.3")];
    let _slow: Proc = Proc::start_example("echo_node", &quick_node_args(&url, "slow"), &slow_env).0;
    let (rpc, _registry) = crate::rpc_for(&etcd).await;
    let topic = Target::topic("echo");
    rpc.wait_for_nodes(&topic, 3, Duration::from_secs(10))
        .await
        .unwrap();

    let (hosts, errors) = load(rpc.channel(topic), 1_000, 2).await;
    assert!(errors.is_empty(), "{errors:?}");
    let slow = hosts.get("slow").copied().unwrap_or(0);
    // Each client learns each node's latency from its answers, and tries
    // an avoided node again once a second: a few calls, not a third.
    assert!(
        slow <= 20,
        "the slow node took {slow} of 1000 calls: {hosts:?}"
    );
    assert!(
        hosts.get("h1").is_some_and(|&n| n > 300) && hosts.get("h2").is_some_and(|&n| n > 300),
        "{hosts:?}"
    );
}

/// Two nodes failing every call: the first one is ejected after its
/// failures in a row, the second never (never more than half of the nodes,
/// never the last one), so every call still reaches a node and gets that
/// node's own error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_more_than_half_of_the_nodes_are_ever_ejected() {
    let etcd = Etcd::start();
    let url = etcd.url().to_string();
    let env = [("ECHO_FAIL_EVERY", "1"), ("SVCKIT_DRAIN_DELAY", "0.3")];
    let _sick: Vec<Proc> = ["s1", "s2"]
        .iter()
        .map(|h| Proc::start_example("echo_node", &quick_node_args(&url, h), &env).0)
        .collect();
    let (rpc, _registry) = crate::rpc_for(&etcd).await;
    let topic = Target::topic("echo");
    rpc.wait_for_nodes(&topic, 2, Duration::from_secs(10))
        .await
        .unwrap();
    let (hosts, errors) = load(rpc.channel(topic), 200, 4).await;
    assert!(hosts.is_empty(), "{hosts:?}");
    assert_eq!(errors.len(), 200);
    assert!(
        errors
            .iter()
            .all(|e| e.code() == Code::Internal && e.message().ends_with("fails on purpose")),
        "{errors:?}"
    );
    assert_eq!(rpc.stats().ejections, 1, "{:?}", rpc.stats());
}
