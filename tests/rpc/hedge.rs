//! Hedged idempotent calls while one node stalls (SIGSTOP).

use std::time::Duration;

use nix::sys::signal::Signal;
use svckit::config::{CommonArgs, Config};
use svckit::rpc::{HedgeDelay, Rpc, Target};
use tonic::Code;

use crate::echo::pb::echo_client::EchoClient;
use crate::echo::pb::EchoRequest;
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
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !stopped() {
            assert!(
                std::time::Instant::now() < deadline,
                "node {} did not stop",
                proc.pid()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
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
    // Calls land on the stalled node one time in three; each of those is
    // answered by the hedge. Stop after three hedges, well within the
    // budget's first burst of ten.
    let mut calls = 0;
    while rpc.stats().hedges < 3 {
        assert!(
            calls < 100,
            "no hedges after {calls} calls: {:?}",
            rpc.stats()
        );
        let reply = echo
            .echo(EchoRequest::default())
            .await
            .expect("a hedged call completes while a node stalls");
        assert_ne!(reply.into_inner().host, "n1");
        calls += 1;
    }

    // Past the budget: hedges stay within 10 + calls/10, and a call the
    // budget cannot hedge ends at its deadline, not in some other error.
    let short = EchoClient::new(
        rpc.channel(topic.clone())
            .hedge(HedgeDelay::Fixed(Duration::from_millis(20)))
            .timeout(Duration::from_millis(300)),
    );
    let before = rpc.stats();
    for _ in 0..60 {
        match short.clone().echo(EchoRequest::default()).await {
            Ok(reply) => assert_ne!(reply.into_inner().host, "n1"),
            Err(status) => assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}"),
        }
    }
    let after = rpc.stats();
    assert!(after.calls >= before.calls + 60, "{after:?}");
    assert!(
        after.hedges <= 10 + after.calls / 10,
        "hedges beyond the budget: {after:?}"
    );
    drop(stalled);
}
