//! Every gRPC call shape through a channel: unary, server streaming, client
//! streaming and bidirectional, by topic, by server, and while the node
//! leaves.

use std::time::Duration;

use futures::StreamExt;
use nix::sys::signal::Signal;
use svckit::rpc::{RpcChannel, Target};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::echo::pb::echo_client::EchoClient;
use crate::echo::pb::{EchoRequest, EchoStreamRequest};
use crate::{fleet, until_gone};

fn message(i: usize) -> EchoRequest {
    EchoRequest {
        payload: format!("m{i}").into_bytes(),
    }
}

/// One call of each shape; returns the host of every reply.
async fn every_shape(channel: RpcChannel) -> Vec<String> {
    let mut client = EchoClient::new(channel);
    let mut hosts = Vec::new();

    let unary = client.echo(message(0)).await.expect("unary").into_inner();
    assert_eq!(unary.payload, b"m0");
    hosts.push(unary.host);

    let mut replies = client
        .echo_stream(EchoStreamRequest {
            payload: b"s".to_vec(),
            count: 5,
            interval_millis: 0,
        })
        .await
        .expect("server stream")
        .into_inner();
    let mut count = 0;
    while let Some(reply) = replies.next().await {
        let reply = reply.expect("stream message");
        assert_eq!(reply.payload, b"s");
        hosts.push(reply.host);
        count += 1;
    }
    assert_eq!(count, 5);

    let collected = client
        .collect(futures::stream::iter((0..10).map(message)))
        .await
        .expect("client stream")
        .into_inner();
    assert_eq!((collected.count, collected.bytes), (10, 20));
    hosts.push(collected.host);

    // Each message is answered before the next is sent: a channel that
    // waited for the whole request body would hang here.
    let (tx, rx) = mpsc::channel(1);
    let mut chat = client
        .chat(ReceiverStream::new(rx))
        .await
        .expect("bidi call")
        .into_inner();
    for i in 0..5 {
        tx.send(message(i)).await.expect("send");
        let reply = chat.next().await.expect("a reply").expect("reply ok");
        assert_eq!(reply.payload, message(i).payload);
        hosts.push(reply.host);
    }
    drop(tx);
    assert!(
        chat.next().await.is_none(),
        "the chat ends with its request"
    );
    hosts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_shape_works_by_topic() {
    let etcd = crate::support::etcd::Etcd::start();
    let (_nodes, rpc, _) = fleet(&etcd, &["n1", "n2", "n3"]).await;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..4 {
        seen.extend(every_shape(rpc.channel(Target::topic("echo"))).await);
    }
    assert!(seen.len() > 1, "calls by topic are spread: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_shape_works_by_server() {
    let etcd = crate::support::etcd::Etcd::start();
    let (_nodes, rpc, _) = fleet(&etcd, &["n1", "n2", "n3"]).await;
    let hosts = every_shape(rpc.channel(Target::topic("echo").server("n2"))).await;
    assert!(hosts.iter().all(|h| h == "n2"), "{hosts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_in_flight_finish_while_their_node_leaves() {
    let etcd = crate::support::etcd::Etcd::start();
    let (mut nodes, rpc, _) = fleet(&etcd, &["n1", "n2", "n3"]).await;
    let mut on_n1 = EchoClient::new(rpc.channel(Target::topic("echo").server("n1")));

    let mut server_stream = on_n1
        .echo_stream(EchoStreamRequest {
            payload: b"s".to_vec(),
            count: 10,
            interval_millis: 100,
        })
        .await
        .expect("server stream")
        .into_inner();
    let first = server_stream.next().await.expect("first").expect("ok");
    assert_eq!(first.host, "n1");

    let (collect_tx, collect_rx) = mpsc::channel(1);
    let mut collect_client = on_n1.clone();
    let collect = tokio::spawn(async move {
        collect_client
            .collect(ReceiverStream::new(collect_rx))
            .await
            .map(|r| r.into_inner())
    });
    collect_tx.send(message(0)).await.expect("send");

    let (chat_tx, chat_rx) = mpsc::channel(1);
    let mut chat = on_n1
        .chat(ReceiverStream::new(chat_rx))
        .await
        .expect("bidi call")
        .into_inner();
    chat_tx.send(message(0)).await.expect("send");
    assert_eq!(chat.next().await.expect("reply").expect("ok").host, "n1");

    nodes[0].signal(Signal::SIGTERM);
    let topic = Target::topic("echo");
    until_gone(&rpc, "n1").await;

    // New calls of every shape go to the others.
    for _ in 0..3 {
        let hosts = every_shape(rpc.channel(topic.clone())).await;
        assert!(hosts.iter().all(|h| h != "n1"), "{hosts:?}");
    }

    // The calls in flight on n1 run to their end.
    for i in 1..4 {
        chat_tx.send(message(i)).await.expect("send");
        let reply = chat.next().await.expect("reply").expect("ok");
        assert_eq!(
            (reply.host.as_str(), reply.payload),
            ("n1", message(i).payload)
        );
    }
    drop(chat_tx);
    assert!(chat.next().await.is_none());
    for i in 1..4 {
        collect_tx.send(message(i)).await.expect("send");
    }
    drop(collect_tx);
    let collected = collect.await.unwrap().expect("client stream completes");
    assert_eq!((collected.count, collected.host.as_str()), (4, "n1"));
    let mut rest = 0;
    while let Some(reply) = server_stream.next().await {
        assert_eq!(reply.expect("stream message").host, "n1");
        rest += 1;
    }
    assert_eq!(rest, 9, "the server stream is complete");

    let status = nodes[0]
        .wait_exit(Duration::from_secs(20))
        .expect("n1 stops once its calls are done");
    assert_eq!(status.code(), Some(0));
}

/// This process's resident set, in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_64_mib_client_stream_goes_through_without_being_held() {
    const CHUNK: usize = 64 * 1024;
    const CHUNKS: usize = 1024;
    let etcd = crate::support::etcd::Etcd::start();
    let (_nodes, rpc, _) = fleet(&etcd, &["n1"]).await;
    let mut client = EchoClient::new(rpc.channel(Target::topic("echo")));
    // Warm up the connection and the allocator before measuring.
    client.echo(message(0)).await.expect("warm-up");

    let before = rss_kib();
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(before));
    let seen = peak.clone();
    // Chunks are made as the transport asks for them, never all at once.
    let chunks = futures::stream::iter(0..CHUNKS).map(move |i| {
        if i % 32 == 0 {
            seen.fetch_max(rss_kib(), std::sync::atomic::Ordering::Relaxed);
        }
        EchoRequest {
            payload: vec![i as u8; CHUNK],
        }
    });
    let collected = client
        .collect(chunks)
        .await
        .expect("64 MiB client stream")
        .into_inner();
    assert_eq!(collected.count, CHUNKS as u64);
    assert_eq!(collected.bytes, (CHUNK * CHUNKS) as u64);
    let peak = peak
        .load(std::sync::atomic::Ordering::Relaxed)
        .max(rss_kib());
    let grown_mib = peak.saturating_sub(before) / 1024;
    assert!(
        grown_mib <= 8,
        "the client's RSS grew by {grown_mib} MiB while streaming 64 MiB"
    );
}
