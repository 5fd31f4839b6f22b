//! What `cast` and disabled nodes promise.

use std::time::Duration;

use svckit::rpc::{Rpc, RpcOptions, Target};
use svckit::servicegroup::AdminChange;
use svckit::Error;
use tonic::Code;

use crate::echo::pb::echo_client::EchoClient;
use crate::echo::pb::{EchoRequest, SleepRequest};
use crate::support::eventually;
use crate::{fleet, until_gone};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_node_is_reachable_by_name_when_the_caller_asks() {
    let etcd = support_etcd();
    let (_nodes, rpc, registry) = fleet(&etcd, &["n1", "n2"]).await;
    registry
        .set_admin(
            "echo",
            "n1",
            AdminChange::Disable {
                reason: Some("debugging".into()),
            },
        )
        .await
        .unwrap();
    let topic = Target::topic("echo");
    until_gone(&rpc, "n1").await;
    assert_eq!(rpc.hosts(&topic), ["n2"]);

    let err = EchoClient::new(rpc.channel(topic.clone().server("n1")))
        .echo(EchoRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "not without asking: {err:?}");

    let reply = EchoClient::new(rpc.channel(topic.clone().server("n1").include_disabled()))
        .echo(EchoRequest::default())
        .await
        .expect("the disabled node answers when named");
    assert_eq!(reply.into_inner().host, "n1");

    // Asking does not put a disabled node back into balancing by topic.
    assert_eq!(rpc.hosts(&topic.include_disabled()), ["n2"]);
}

fn support_etcd() -> crate::support::etcd::Etcd {
    crate::support::etcd::Etcd::start()
}

async fn cast_sleep(rpc: &Rpc, target: &Target, millis: u64) -> Result<(), Error> {
    rpc.cast(target, |ch| async move {
        EchoClient::new(ch).sleep(SleepRequest { millis }).await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cast_returns_before_the_reply_and_is_bounded() {
    let etcd = support_etcd();
    let (_nodes, _, _) = fleet(&etcd, &["n1"]).await;
    let registry = svckit::servicegroup::connect(&etcd.url(), &Default::default())
        .await
        .unwrap();
    let mut options = RpcOptions::default();
    options.max_casts_in_flight = 3;
    options.response_timeout = Duration::from_secs(10);
    let topic = Target::topic("echo");
    let rpc = crate::client_seeing(registry, options, &topic, 1).await;

    // No node for the target: refused at once. (Checked first: with every
    // cast slot taken, ResourceExhausted would come first.)
    let err = cast_sleep(&rpc, &Target::topic("nothing"), 0)
        .await
        .unwrap_err();
    assert!(
        err.status().map(tonic::Status::code) == Some(Code::Unavailable),
        "{err:?}"
    );

    // Each returns once written, long before the node answers (2 s)...
    for _ in 0..3 {
        cast_sleep(&rpc, &topic, 2_000).await.expect("cast");
    }
    // ...so three are in flight now, and a fourth is refused at once.
    let err = cast_sleep(&rpc, &topic, 0).await.unwrap_err();
    assert!(
        err.status().map(tonic::Status::code) == Some(Code::ResourceExhausted),
        "{err:?}"
    );
    // Once the replies came, casts go out again.
    eventually(Duration::from_secs(20), "a cast slot freed", || async {
        cast_sleep(&rpc, &topic, 0).await.ok()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_node_refuses_calls_and_clients_send_them_to_another_node() {
    let etcd = support_etcd();
    let url = etcd.url().to_string();
    let args = crate::support::node::quick_node_args(&url, "full");
    let (full, _) = crate::support::node::Proc::start_example(
        "echo_node",
        &args,
        &[("SVCKIT_RPC_POOL_SIZE", "1"), ("SVCKIT_RPC_POOL_WAIT", "0")],
    );
    let _other = crate::start_node(&etcd, "other");
    let (rpc, _registry) = crate::rpc_for(&etcd).await;
    let topic = Target::topic("echo");
    rpc.wait_for_nodes(&topic, 2, Duration::from_secs(10))
        .await
        .unwrap();

    // One long call takes the full node's only slot; from another client,
    // so that this one's balancer does not know the node is busy.
    let (other_rpc, _) = crate::rpc_for(&etcd).await;
    other_rpc
        .wait_for_nodes(&topic, 2, Duration::from_secs(10))
        .await
        .unwrap();
    let holder = EchoClient::new(other_rpc.channel(topic.clone().server("full")));
    let held = tokio::spawn(async move {
        let mut holder = holder;
        holder.sleep(SleepRequest { millis: 3_000 }).await
    });
    full.wait_for_log("sleep started", Duration::from_secs(10));

    // Named, the full node refuses at once.
    let err = EchoClient::new(rpc.channel(topic.clone().server("full")))
        .echo(EchoRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        err.message().contains("rpc_pool_size"),
        "the refusal names the limit: {err:?}"
    );

    // By topic, not idempotent: every call is answered, by the other node
    // whenever the full one refused it.
    let mut client = EchoClient::new(rpc.channel(topic.clone()));
    for _ in 0..40 {
        let reply = client
            .echo(EchoRequest::default())
            .await
            .expect("a refused call goes to another node");
        assert_eq!(reply.into_inner().host, "other");
    }
    assert!(
        rpc.stats().retries > 0,
        "some calls were first sent to the full node"
    );

    // Once the slot is free, the node serves again.
    held.await.unwrap().expect("the long call finishes");
    let reply = EchoClient::new(rpc.channel(topic.server("full")))
        .echo(EchoRequest::default())
        .await
        .expect("served again");
    assert_eq!(reply.into_inner().host, "full");
}
