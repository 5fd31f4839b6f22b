//! What the kit's channel sends again: a call a node turned away before
//! processing it (REFUSED_STREAM, as a draining HTTP/2 server does) goes out
//! again even on a channel that is not idempotent; a call the node started,
//! then broke off, is not sent twice. The node is a bare HTTP/2 server that
//! counts the streams it sees.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use svckit::rpc::{Rpc, Target};
use tonic::Code;

use crate::echo::pb::echo_client::EchoClient;
use crate::echo::pb::EchoRequest;
use crate::support::etcd::Etcd;

/// What the bare node does with the streams it gets.
#[derive(Clone, Copy)]
enum Script {
    /// Refuses the first stream unread (REFUSED_STREAM), answers the others.
    RefuseFirst,
    /// Reads every request whole, then resets its stream (INTERNAL_ERROR).
    BreakOffAfterReading,
}

/// A bare HTTP/2 node on loopback; its URL and the streams it saw.
async fn bare_node(script: Script) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(AtomicUsize::new(0));
    let counted = seen.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let seen = counted.clone();
            tokio::spawn(async move {
                let Ok(mut connection) = h2::server::handshake(socket).await else {
                    return;
                };
                // Each stream is served by a task of its own, so that the
                // connection keeps being polled (its frames read, its pings
                // answered) while a request's body is still on its way.
                while let Some(Ok((request, mut respond))) = connection.accept().await {
                    let nth = seen.fetch_add(1, Ordering::SeqCst);
                    if matches!(script, Script::RefuseFirst) && nth == 0 {
                        respond.send_reset(h2::Reason::REFUSED_STREAM);
                        continue;
                    }
                    tokio::spawn(async move {
                        let mut body = request.into_body();
                        while let Some(Ok(chunk)) = body.data().await {
                            let _ = body.flow_control().release_capacity(chunk.len());
                        }
                        if matches!(script, Script::BreakOffAfterReading) {
                            respond.send_reset(h2::Reason::INTERNAL_ERROR);
                            return;
                        }
                        let head = http::Response::builder()
                            .status(200)
                            .header("content-type", "application/grpc")
                            .body(())
                            .unwrap();
                        let Ok(mut send) = respond.send_response(head, false) else {
                            return;
                        };
                        // An empty EchoResponse: no compression, length 0.
                        let _ = send.send_data(Bytes::from_static(&[0, 0, 0, 0, 0]), false);
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                        let _ = send.send_trailers(trailers);
                    });
                }
            });
        }
    });
    (url, seen)
}

/// A plain channel (not idempotent) to topic `echo`, whose one node is
/// the bare node at `url`.
async fn client(etcd: &Etcd, url: &str) -> (Rpc, Box<dyn svckit::servicegroup::Membership>) {
    let registry = svckit::servicegroup::connect(&etcd.url(), &Default::default())
        .await
        .unwrap();
    let member = registry
        .join(crate::support::registration_at("echo", "bare", url))
        .await
        .unwrap();
    let rpc = Rpc::new(registry).await.unwrap();
    rpc.wait_for_nodes(&Target::topic("echo"), 1, Duration::from_secs(10))
        .await
        .unwrap();
    (rpc, member)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_stream_is_sent_again_on_a_channel_that_is_not_idempotent() {
    let etcd = Etcd::start();
    let (url, seen) = bare_node(Script::RefuseFirst).await;
    let (rpc, _member) = client(&etcd, &url).await;
    let mut echo = EchoClient::new(rpc.channel(Target::topic("echo")));
    echo.echo(EchoRequest::default())
        .await
        .expect("answered on the second try");
    assert_eq!(
        seen.load(Ordering::SeqCst),
        2,
        "refused once, then answered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_the_node_started_is_not_sent_twice() {
    let etcd = Etcd::start();
    let (url, seen) = bare_node(Script::BreakOffAfterReading).await;
    let (rpc, _member) = client(&etcd, &url).await;
    let mut echo = EchoClient::new(rpc.channel(Target::topic("echo")));
    let status = echo
        .echo(EchoRequest::default())
        .await
        .expect_err("broken off");
    assert_ne!(status.code(), Code::Ok);
    assert_eq!(seen.load(Ordering::SeqCst), 1, "sent once: {status}");
}
