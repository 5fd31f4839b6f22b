//! etcd's `grpc-proxy` between the kit and etcd: a node registers through
//! it, a client calls by topic through it, the CLI lists through it, and a
//! `kill -9` is seen through its watch within `service_down_time` + 1 s.

mod support;

use std::time::Duration;

use nix::sys::signal::Signal;
use support::etcd::{Etcd, GrpcProxy};
use support::node::{quick_node_args, Proc};
use support::{expect_event, is_join, is_leave, DOWN_TIME};
use svckit::rpc::{Rpc, Target};
use svckit::servicegroup;

#[allow(dead_code)]
#[path = "../examples/common/echo.rs"]
mod echo;

use echo::pb::echo_client::EchoClient;
use echo::pb::EchoRequest;

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_clients_and_the_cli_work_through_etcds_grpc_proxy() {
    let etcd = Etcd::start();
    let proxy = GrpcProxy::start(&etcd);
    let url = proxy.url().to_string();
    let registry = servicegroup::connect(&proxy.url(), &support::options())
        .await
        .expect("connect through the proxy");
    let mut watch = registry.watch(Some("echo")).await.expect("watch");

    let (node, _) = Proc::start_example("echo_node", &quick_node_args(&url, "p1"), &[]);
    expect_event(&mut watch, WAIT, "p1 up through the proxy", is_join("p1")).await;

    // A client by topic, through the proxy.
    let rpc = Rpc::new(registry.clone()).await.expect("client");
    let topic = Target::topic("echo");
    rpc.wait_for_nodes(&topic, 1, WAIT)
        .await
        .expect("p1 routable");
    let reply = EchoClient::new(rpc.channel(topic))
        .echo(EchoRequest {
            payload: b"via proxy".to_vec(),
        })
        .await
        .expect("a call by topic");
    assert_eq!(reply.into_inner().host, "p1");

    // The CLI, through the proxy.
    let (code, out, err) = Proc::run_cli(&["members", "list", "--registry", &url, "--json"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("\"p1\"") && out.contains("\"up\""), "{out}");

    // A crash is seen through the proxy's watch within the lease's TTL
    // and a second.
    node.signal(Signal::SIGKILL);
    expect_event(
        &mut watch,
        DOWN_TIME + Duration::from_secs(1),
        "p1 down through the proxy",
        is_leave("p1"),
    )
    .await;
}
