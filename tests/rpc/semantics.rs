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
    let rpc = Rpc::with_options(
        registry,
        RpcOptions {
            max_casts_in_flight: 3,
            response_timeout: Duration::from_secs(10),
            ..RpcOptions::default()
        },
    )
    .await
    .unwrap();
    let topic = Target::topic("echo");
    rpc.wait_for_nodes(&topic, 1, Duration::from_secs(10))
        .await
        .unwrap();

    // Each returns once written, long before the node answers (2 s)...
    for _ in 0..3 {
        cast_sleep(&rpc, &topic, 2_000).await.expect("cast");
    }
    // ...so three are in flight now, and a fourth is refused at once.
    let err = cast_sleep(&rpc, &topic, 0).await.unwrap_err();
    assert!(
        matches!(&err, Error::Status(s) if s.code() == Code::ResourceExhausted),
        "{err:?}"
    );
    // Once the replies came, casts go out again.
    eventually(Duration::from_secs(20), "a cast slot freed", || async {
        cast_sleep(&rpc, &topic, 0).await.ok()
    })
    .await;

    let err = cast_sleep(&rpc, &Target::topic("nothing"), 0)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Status(s) if s.code() == Code::Unavailable),
        "{err:?}"
    );
}
