//! Runs a node of the downstream crate's manager and calls it by topic,
//! with every call shape.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use svckit::config::{CommonArgs, Config};
use svckit::launcher::ServiceLauncher;
use svckit::rpc::{Rpc, Target};
use svckit::Node;
use svckit_downstream::pb::tally_client::TallyClient;
use svckit_downstream::pb::{AddRequest, CountRequest};
use svckit_downstream::TallyManager;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_of_this_crate_answers_every_call_shape_by_topic() {
    let config = Config::load_from(&CommonArgs::default(), |name| match name {
        "SVCKIT_REGISTRY" => Some("memory://downstream".into()),
        "SVCKIT_HOST" => Some("d1".into()),
        _ => None,
    })
    .expect("config");
    let node = Arc::new(
        Node::builder(TallyManager::new("d1"))
            .topic("tally")
            .build(&config),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let launcher = ServiceLauncher::new(config.clone(), vec![node]);
    let run = tokio::spawn(launcher.run_until(async {
        let _ = stopped.await;
    }));

    let rpc = Rpc::from_config(&config).await.expect("client");
    let topic = Target::topic("tally");
    rpc.wait_for_nodes(&topic, 1, Duration::from_secs(10))
        .await
        .expect("the node is visible");
    let mut tally = TallyClient::new(rpc.channel(topic));

    let total = tally.add(AddRequest { a: 2, b: 3 }).await.unwrap();
    assert_eq!(total.into_inner().value, 5);

    let counted: Vec<i64> = tally
        .count(CountRequest { upto: 4 })
        .await
        .unwrap()
        .into_inner()
        .map(|t| t.unwrap().value)
        .collect()
        .await;
    assert_eq!(counted, [1, 2, 3, 4]);

    let numbers = (1..=10).map(|a| AddRequest { a, b: 0 });
    let sum = tally.sum(futures::stream::iter(numbers)).await.unwrap();
    assert_eq!(sum.into_inner().value, 55);

    let (tx, rx) = mpsc::channel(1);
    let mut running = tally
        .running(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut expected = 0;
    for a in 1..=5 {
        tx.send(AddRequest { a, b: 0 }).await.unwrap();
        expected += a;
        let total = running.next().await.unwrap().unwrap();
        assert_eq!((total.value, total.host.as_str()), (expected, "d1"));
    }
    drop(tx);
    assert!(running.next().await.is_none());

    let _ = stop.send(());
    let code = run.await.expect("launcher task").expect("launcher");
    assert_eq!(code, 0, "a graceful stop exits 0");
}
