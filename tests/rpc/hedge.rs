//! Hedged idempotent calls while one node stalls (SIGSTOP).

use std::time::Duration;

use nix::sys::signal::Signal;
use svckit::config::{CommonArgs, Config};
use svckit::rpc::{HedgeDelay, Rpc, Target};

use crate::echo::pb::echo_client::EchoClient;
use crate::echo::pb::{EchoRequest, SleepRequest};
use crate::fleet;
use crate::support::node::Proc;

/// Stops a node until dropped.
struct Stalled<'a>(&'a Proc);

impl<'a> Stalled<'a> {
    /// Returns once every thread of the node is stopped: a thread that was
    /// already running may otherwise answer one more call.
    fn new(proc: &'a Proc) -> Self {
        proc.signal(Signal::SIGSTOP);
        let tasks = format!("/proc/{}/task", proc.pid());
        let stopped = || {
            std::fs::read_dir(&tasks).is_ok_and(|dir| {
                dir.flatten().all(|task| {
                    std::fs::read_to_string(task.path().join("stat"))
                        .ok()
                        .and_then(|stat| {
                            let state = stat.rsplit_once(')')?.1.split_whitespace().next()?;
                            Some(state == "T" || state == "t")
                        })
                        .unwrap_or(false)
                })
            })
        };
        // The kernel tells no one when a thread stops: read its state.
        let what = format!("every thread of node {} stopped", proc.pid());
        crate::support::poll_until(Duration::from_secs(10), &what, stopped);
        Stalled(proc)
    }
}

impl Drop for Stalled<'_> {
    fn drop(&mut self) {
        self.0.signal(Signal::SIGCONT);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hedged_calls_get_around_a_stalled_node_within_the_budget() {
    let etcd = crate::support::etcd::Etcd::start();
    let (nodes, _, _) = fleet(&etcd, &["n1", "n2", "n3"]).await;
    let url = etcd.url().to_string();
    // Hedging as a deployment turns it on: the `rpc_hedge_delay` option.
    let config = Config::load_from(&CommonArgs::default(), |name| match name {
        "SVCKIT_REGISTRY" => Some(url.clone()),
        "SVCKIT_RPC_HEDGE_DELAY" => Some("20ms".into()),
        "SVCKIT_RPC_RESPONSE_TIMEOUT" => Some("30s".into()),
        _ => None,
    })
    .expect("config");
    let rpc = Rpc::from_config(&config).await.expect("client");
    let topic = Target::topic("echo");
    rpc.wait_for_nodes(&topic, 3, Duration::from_secs(10))
        .await
        .unwrap();
    // Connect to every node before one stalls.
    rpc.fanout(&topic, |ch| async move {
        EchoClient::new(ch).echo(EchoRequest::default()).await
    })
    .await
    .unwrap();

    let stalled = Stalled::new(&nodes[0]);
    let mut echo = EchoClient::new(rpc.channel(topic.clone()).idempotent());
    // Calls land on the stalled node one time in three until one is
    // hedged; after that the node counts as loaded (its copy was given up)
    // and new calls avoid it. Every call is answered, by another node.
    let mut calls = 0;
    while calls < 20 || rpc.stats().hedges == 0 {
        assert!(
            calls < 200,
            "no hedge after {calls} calls: {:?}",
            rpc.stats()
        );
        let reply = echo
            .echo(EchoRequest::default())
            .await
            .expect("a hedged call completes while a node stalls");
        assert_ne!(reply.into_inner().host, "n1");
        calls += 1;
    }
    drop(stalled);

    // Every call outlasts a 1 ms hedging delay: each would hedge, and the
    // budget allows ten at once, then one per ten calls and ten a second.
    let mut slow = EchoClient::new(
        rpc.channel(topic.clone())
            .hedge(HedgeDelay::Fixed(Duration::from_millis(1))),
    );
    let before = rpc.stats();
    let started = std::time::Instant::now();
    for _ in 0..100 {
        slow.sleep(SleepRequest { millis: 20 })
            .await
            .expect("a hedged slow call");
    }
    let after = rpc.stats();
    let (calls, hedges) = (after.calls - before.calls, after.hedges - before.hedges);
    assert_eq!(calls, 100, "{after:?}");
    // The budget, shared with retries: ten at once, a tenth of the calls,
    // and ten a second.
    let bound = 10 + calls / 10 + (10.0 * started.elapsed().as_secs_f64()).ceil() as u64;
    assert!(
        hedges <= bound,
        "{hedges} hedges in {calls} calls: beyond the budget of {bound}"
    );
    assert!(
        hedges >= 10,
        "only {hedges} hedges: the budget was not used"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_hedging_learns_the_targets_latency_then_hedges() {
    let etcd = crate::support::etcd::Etcd::start();
    let (nodes, rpc, _) = fleet(&etcd, &["n1", "n2", "n3"]).await;
    let mut echo = EchoClient::new(rpc.channel(Target::topic("echo")).hedge(HedgeDelay::Auto));
    // The p95 is known after the first 64 answers; nothing is hedged before.
    for _ in 0..64 {
        echo.echo(EchoRequest::default()).await.expect("a call");
    }
    let stalled = Stalled::new(&nodes[0]);
    let mut calls = 0;
    while rpc.stats().hedges == 0 {
        assert!(
            calls < 200,
            "no hedge after {calls} calls: {:?}",
            rpc.stats()
        );
        let reply = echo
            .echo(EchoRequest::default())
            .await
            .expect("a hedged call completes while a node stalls");
        assert_ne!(reply.into_inner().host, "n1");
        calls += 1;
    }
    drop(stalled);
}
