//! RPC through discovery against a real etcd and real echo_node processes:
//! every call shape, node churn, hedging and the client's bounds.

#[path = "../support/mod.rs"]
mod support;

mod basics;
mod drain;
mod hedge;
mod late;
mod outlier;
mod semantics;
mod shapes;

use std::collections::HashMap;
use std::time::Duration;

use support::etcd::Etcd;
use support::node::{quick_node_args, Proc};
use svckit::rpc::{Rpc, RpcOptions, Target};
use svckit::servicegroup::{self, RegistryOptions};

#[allow(dead_code)]
#[path = "../../examples/common/echo.rs"]
mod echo;

use echo::pb::echo_client::EchoClient;
use echo::pb::EchoRequest;

pub const ECHO_V1: &str = "svckit.examples.echo.v1.Echo";

pub fn start_node(etcd: &Etcd, host: &str) -> Proc {
    let url = etcd.url().to_string();
    let args = quick_node_args(&url, host);
    let (proc, _) = Proc::start_example("echo_node", &args, &[("SVCKIT_DRAIN_DELAY", "0.3")]);
    proc
}

pub async fn rpc_for(etcd: &Etcd) -> (Rpc, svckit::servicegroup::Registry) {
    let registry = servicegroup::connect(&etcd.url(), &RegistryOptions::default())
        .await
        .expect("connect to etcd");
    let rpc = Rpc::with_options(registry.clone(), {
        let mut options = RpcOptions::default();
        options.response_timeout = Duration::from_secs(10);
        options
    })
    .await
    .expect("rpc client");
    (rpc, registry)
}

/// A client of `registry` with `options`, once it sees `nodes` nodes of
/// `target`.
pub async fn client_seeing(
    registry: svckit::servicegroup::Registry,
    options: RpcOptions,
    target: &Target,
    nodes: usize,
) -> Rpc {
    let rpc = Rpc::with_options(registry, options)
        .await
        .expect("rpc client");
    rpc.wait_for_nodes(target, nodes, Duration::from_secs(10))
        .await
        .expect("nodes visible to the client");
    rpc
}

pub async fn fleet(
    etcd: &Etcd,
    hosts: &[&str],
) -> (Vec<Proc>, Rpc, svckit::servicegroup::Registry) {
    let procs = hosts.iter().map(|h| start_node(etcd, h)).collect();
    let (rpc, registry) = rpc_for(etcd).await;
    rpc.wait_for_nodes(&Target::topic("echo"), hosts.len(), Duration::from_secs(10))
        .await
        .expect("nodes visible to the client");
    (procs, rpc, registry)
}

/// Runs `calls` echo calls at `concurrency`; returns replies per host and
/// the errors.
pub async fn load(
    channel: svckit::rpc::RpcChannel,
    calls: usize,
    concurrency: usize,
) -> (HashMap<String, usize>, Vec<tonic::Status>) {
    let per_task = calls / concurrency;
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let mut client = EchoClient::new(channel.clone());
            tokio::spawn(async move {
                let mut hosts = Vec::new();
                let mut errors = Vec::new();
                for _ in 0..per_task {
                    match client
                        .echo(EchoRequest {
                            payload: b"x".to_vec(),
                        })
                        .await
                    {
                        Ok(r) => hosts.push(r.into_inner().host),
                        Err(e) => errors.push(e),
                    }
                }
                (hosts, errors)
            })
        })
        .collect();
    let mut counts = HashMap::new();
    let mut errors = Vec::new();
    for t in tasks {
        let (hosts, errs) = t.await.unwrap();
        for h in hosts {
            *counts.entry(h).or_insert(0) += 1;
        }
        errors.extend(errs);
    }
    (counts, errors)
}

/// Waits until `host` is out of the client's nodes for topic `echo`.
pub async fn until_gone(rpc: &Rpc, host: &str) {
    let topic = Target::topic("echo");
    support::eventually(
        Duration::from_secs(10),
        "the node out of the client's nodes",
        || {
            let gone = !rpc.hosts(&topic).iter().any(|h| h == host);
            async move { gone.then_some(()) }
        },
    )
    .await;
}
