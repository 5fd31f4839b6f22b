//! Unary calls by topic, server and fanout; node churn; deadlines.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use svckit::rpc::Target;
use svckit::servicegroup::AdminChange;
use tonic::Code;

use crate::echo::pb::echo_client::EchoClient;
use crate::echo::pb::{EchoRequest, SleepRequest};
use crate::support::etcd::Etcd;
use crate::support::eventually;
use crate::{fleet, load, ECHO_V1};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_by_topic_spread_over_every_node() {
    let etcd = Etcd::start();
    let (_nodes, rpc, _) = fleet(&etcd, &["n1", "n2", "n3"]).await;
    let (counts, errors) = load(rpc.channel(Target::topic("echo")), 600, 8).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(counts.len(), 3, "{counts:?}");
    for (host, n) in &counts {
        assert!(*n >= 60, "{host} starved: {counts:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_by_server_land_on_that_host_only() {
    let etcd = Etcd::start();
    let (_nodes, rpc, _) = fleet(&etcd, &["n1", "n2", "n3"]).await;
    let (counts, errors) = load(rpc.channel(Target::topic("echo").server("n2")), 100, 4).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(counts.keys().collect::<Vec<_>>(), vec!["n2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_returns_one_reply_per_up_node() {
    let etcd = Etcd::start();
    let (_nodes, rpc, _) = fleet(&etcd, &["n1", "n2", "n3"]).await;
    let replies = rpc
        .fanout(&Target::topic("echo"), |ch| async move {
            EchoClient::new(ch)
                .echo(EchoRequest {
                    payload: b"all".to_vec(),
                })
                .await
                .map(|r| r.into_inner())
        })
        .await
        .unwrap();
    let mut hosts: Vec<_> = replies
        .iter()
        .map(|r| {
            let reply = r.result.as_ref().expect("every node answers");
            assert_eq!(reply.host, r.host, "the reply comes from the node it names");
            r.host.clone()
        })
        .collect();
    hosts.sort();
    assert_eq!(hosts, ["n1", "n2", "n3"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_node_is_an_immediate_unavailable_naming_the_target() {
    let etcd = Etcd::start();
    let (_nodes, rpc, _) = fleet(&etcd, &["n1"]).await;
    for target in [Target::topic("nothing"), Target::topic("echo").server("n9")] {
        // Within an hour's deadline: a call that waited for a node would end
        // DeadlineExceeded (or hang the test), not Unavailable.
        let channel = rpc
            .channel(target.clone())
            .timeout(Duration::from_secs(3600));
        let err = EchoClient::new(channel)
            .echo(EchoRequest::default())
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        assert!(err.message().contains(&target.to_string()), "{err:?}");
    }
    let fan = rpc
        .fanout(&Target::topic("nothing"), |_| async {
            Ok::<_, tonic::Status>(())
        })
        .await;
    assert!(fan.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_reach_the_caller_intact() {
    let etcd = Etcd::start();
    let (_nodes, rpc, _) = fleet(&etcd, &["n1"]).await;
    let err = EchoClient::new(rpc.channel(Target::topic("echo")))
        .sleep(SleepRequest { millis: u64::MAX })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("millis must be at most"), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_required_service_filters_nodes() {
    let etcd = Etcd::start();
    let (_nodes, rpc, _) = fleet(&etcd, &["n1", "n2"]).await;
    let v1 = Target::topic("echo").require_service(ECHO_V1);
    let (counts, errors) = load(rpc.channel(v1), 40, 2).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(counts.values().sum::<usize>(), 40);

    // Every node serves only v1: a v2 target has no node, at once.
    let v2 = Target::topic("echo").require_service("svckit.examples.echo.v2.Echo");
    assert!(rpc.hosts(&v2).is_empty());
    let err = EchoClient::new(rpc.channel(v2))
        .echo(EchoRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_stops_new_calls_and_enable_brings_them_back() {
    let etcd = Etcd::start();
    let (_nodes, rpc, registry) = fleet(&etcd, &["n1", "n2", "n3"]).await;
    let topic = Target::topic("echo");
    registry
        .set_admin(
            "echo",
            "n1",
            AdminChange::Disable {
                reason: Some("maintenance".into()),
            },
        )
        .await
        .unwrap();
    eventually(
        Duration::from_secs(10),
        "n1 out of the client's nodes",
        || async { (!rpc.hosts(&topic).contains(&"n1".to_string())).then_some(()) },
    )
    .await;
    let (counts, errors) = load(rpc.channel(topic.clone()), 300, 6).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert!(
        !counts.contains_key("n1"),
        "disabled node got calls: {counts:?}"
    );

    registry
        .set_admin("echo", "n1", AdminChange::Enable)
        .await
        .unwrap();
    rpc.wait_for_nodes(&topic, 3, Duration::from_secs(5))
        .await
        .unwrap();
    let (counts, _) = load(rpc.channel(topic), 300, 6).await;
    assert!(
        counts.get("n1").copied().unwrap_or(0) > 0,
        "enabled node gets no calls: {counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_fails_no_idempotent_call() {
    let etcd = Etcd::start();
    let (nodes, rpc, _) = fleet(&etcd, &["n1", "n2", "n3"]).await;
    let topic = Target::topic("echo");
    let channel = rpc.channel(topic.clone()).idempotent();
    let batches = Arc::new(AtomicUsize::new(0));
    let done = batches.clone();
    let steady = tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(5);
        let (mut counts, mut errors) = (HashMap::new(), Vec::new());
        while Instant::now() < deadline {
            let (c, e) = load(channel.clone(), 40, 4).await;
            for (h, n) in c {
                *counts.entry(h).or_insert(0) += n;
            }
            errors.extend(e);
            done.fetch_add(1, Ordering::SeqCst);
        }
        (counts, errors)
    });
    calls_flowing(&batches).await;
    nodes[0].signal(Signal::SIGKILL);
    // The lease runs out (service_down_time 1 s) and the watch drops the node.
    eventually(
        Duration::from_secs(10),
        "n1 out of the client's nodes",
        || async { (!rpc.hosts(&topic).contains(&"n1".to_string())).then_some(()) },
    )
    .await;
    let (counts_after_leave, errors_after_leave) = load(rpc.channel(topic.clone()), 200, 4).await;
    let (counts, errors) = steady.await.unwrap();
    assert!(errors.is_empty(), "idempotent calls failed: {errors:?}");
    assert!(counts.values().sum::<usize>() > 100, "{counts:?}");
    assert!(errors_after_leave.is_empty(), "{errors_after_leave:?}");
    assert!(
        !counts_after_leave.contains_key("n1"),
        "{counts_after_leave:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_fails_no_call() {
    let etcd = Etcd::start();
    let (mut nodes, rpc, _) = fleet(&etcd, &["n1", "n2", "n3"]).await;
    let channel = rpc.channel(Target::topic("echo"));
    let batches = Arc::new(AtomicUsize::new(0));
    let done = batches.clone();
    let steady = tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(3);
        let (mut total, mut errors) = (0, Vec::new());
        while Instant::now() < deadline {
            let (c, e) = load(channel.clone(), 40, 4).await;
            total += c.values().sum::<usize>();
            errors.extend(e);
            done.fetch_add(1, Ordering::SeqCst);
        }
        (total, errors)
    });
    calls_flowing(&batches).await;
    nodes[1].signal(Signal::SIGTERM);
    let status = nodes[1]
        .wait_exit(Duration::from_secs(10))
        .expect("node stops");
    assert_eq!(status.code(), Some(0));
    let (total, errors) = steady.await.unwrap();
    assert!(
        errors.is_empty(),
        "calls failed during a graceful stop: {errors:?}"
    );
    assert!(total > 100, "{total}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_end_at_the_channel_deadline_or_a_shorter_one_the_caller_set() {
    let etcd = Etcd::start();
    let (_nodes, rpc, _) = fleet(&etcd, &["n1"]).await;
    let slow = || SleepRequest { millis: 5_000 };

    let channel = rpc
        .channel(Target::topic("echo"))
        .timeout(Duration::from_millis(300));
    // The node would answer after 5 s: an error means the deadline ended it.
    let err = EchoClient::new(channel).sleep(slow()).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");

    // The channel allows 10 s; the caller asks for 300 ms, and that wins.
    let mut request = tonic::Request::new(slow());
    request.set_timeout(Duration::from_millis(300));
    let err = EchoClient::new(rpc.channel(Target::topic("echo")))
        .sleep(request)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");

    // A deadline longer than the call leaves it alone.
    let reply = EchoClient::new(rpc.channel(Target::topic("echo")))
        .sleep(SleepRequest { millis: 100 })
        .await
        .expect("a short call within the deadline");
    assert_eq!(reply.into_inner().host, "n1");
}

/// Waits until the steady load has finished a few batches of calls: the
/// fault comes while calls flow.
async fn calls_flowing(batches: &AtomicUsize) {
    eventually(Duration::from_secs(10), "calls flowing", || async {
        (batches.load(Ordering::SeqCst) >= 3).then_some(())
    })
    .await;
}

/// Established TCP connections whose local end is `port` (the node's side
/// of each client connection), from the kernel's table.
fn connections_to(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields
                .get(1)
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            local_port == Some(port) && fields.get(3) == Some(&"01")
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_closes_and_the_next_call_opens_another() {
    let etcd = Etcd::start();
    let url = etcd.url().to_string();
    let args = crate::support::node::quick_node_args(&url, "i1");
    let (_node, addr) = crate::support::node::Proc::start_example("echo_node", &args, &[]);
    let registry = svckit::servicegroup::connect(&etcd.url(), &Default::default())
        .await
        .unwrap();
    let mut options = svckit::rpc::RpcOptions::default();
    options.idle_timeout = Some(Duration::from_millis(400));
    let target = Target::topic("echo").server("i1");
    let rpc = crate::client_seeing(registry, options, &target, 1).await;
    let mut client = EchoClient::new(rpc.channel(target));
    let echo = || EchoRequest {
        payload: b"x".to_vec(),
    };
    // Calls paced well within the idle timeout keep the connection.
    let mut pace = tokio::time::interval(Duration::from_millis(100));
    for _ in 0..6 {
        pace.tick().await;
        client.echo(echo()).await.unwrap();
        assert_eq!(connections_to(addr.port()), 1);
    }
    // Unused, it closes; the kernel's table is what shows it.
    crate::support::poll_until(Duration::from_secs(5), "the idle connection closed", || {
        connections_to(addr.port()) == 0
    });
    client.echo(echo()).await.expect("a new connection");
    assert_eq!(connections_to(addr.port()), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_node_gets_one_more_connection_per_sixteen_calls_up_to_the_bound() {
    use svckit::pb::base::v1::{base_client::BaseClient, ReportRequest};
    let etcd = Etcd::start();
    let url = etcd.url().to_string();
    // Nothing shed: the calls wait in the node's pool instead.
    let (_node, _) = crate::support::node::Proc::start_example(
        "echo_node",
        &crate::support::node::quick_node_args(&url, "n1"),
        &[("SVCKIT_RPC_ADMISSION", "static")],
    );
    let (_, registry) = crate::rpc_for(&etcd).await;
    let mut options = svckit::rpc::RpcOptions::default();
    options.connections_per_node = 3;
    let topic = Target::topic("echo");
    let rpc = crate::client_seeing(registry, options, &topic, 1).await;
    // One call alone: one connection.
    let mut base = BaseClient::new(rpc.channel(topic.clone()));
    let accepted = |report: &str| -> u64 {
        let report: serde_json::Value = serde_json::from_str(report).unwrap();
        report["node"]["connections"]["accepted"].as_u64().unwrap()
    };
    let first = base.report(ReportRequest {}).await.unwrap().into_inner();
    assert_eq!(accepted(&first.json), 1);
    // 64 in flight at once: one more per 16, three at most.
    let channel = rpc.channel(topic);
    let calls = (0..64).map(|_| {
        let mut client = EchoClient::new(channel.clone());
        async move { client.sleep(SleepRequest { millis: 300 }).await }
    });
    for result in futures::future::join_all(calls).await {
        result.expect("every call answered");
    }
    let after = base.report(ReportRequest {}).await.unwrap().into_inner();
    assert_eq!(accepted(&after.json), 3, "{}", after.json);
}
