//! The live debug console (`backdoor_port`), in a build with the `console`
//! feature and `--cfg tokio_unstable`: `.ci/run` builds and runs this file
//! so; other builds compile it empty.
//!
//! ```text
//! RUSTFLAGS="--cfg tokio_unstable" cargo test --features console --test console
//! ```
#![cfg(all(feature = "console", tokio_unstable))]

mod support;

use std::time::Duration;

use support::node::Proc;

/// A node with `backdoor_port` answers tokio-console's gRPC API there:
/// `Instrument/WatchUpdates` streams updates of its tasks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backdoor_port_answers_the_consoles_api() {
    let port = support::ports::free_port().to_string();
    let args = [
        "--rpc-listen",
        "127.0.0.1:0",
        "--registry",
        "memory://",
        "--host",
        "c1",
    ];
    let (node, _) = Proc::start_example("echo_node", &args, &[("SVCKIT_BACKDOOR_PORT", &port)]);
    node.wait_for_log("debug console", Duration::from_secs(20));
    let url = format!("http://127.0.0.1:{port}");
    let channel = support::eventually(Duration::from_secs(20), "the console listening", || {
        let url = url.clone();
        async move {
            tonic::transport::Endpoint::from_shared(url)
                .ok()?
                .connect()
                .await
                .ok()
        }
    })
    .await;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    // The messages are read whole, as empty ones: that one arrives is the
    // point, not what it says.
    let path = http::uri::PathAndQuery::from_static(
        "/rs.tokio.console.instrument.Instrument/WatchUpdates",
    );
    let mut updates = grpc
        .server_streaming(
            tonic::Request::new(()),
            path,
            tonic_prost::ProstCodec::<(), ()>::default(),
        )
        .await
        .expect("WatchUpdates answered")
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(20), updates.message())
        .await
        .expect("an update within 20 s")
        .expect("a well-formed stream");
    assert!(first.is_some(), "the stream ended without an update");
    drop(node);
}
