//! Answers that arrive after the client gave up on their calls.
//!
//! A node that answers a call just after its deadline passed sends frames
//! for a stream the client has reset. h2 remembers only a few reset streams
//! for a moment; it answers the rest with a reset of its own and, by
//! default, closes the connection (failing every call on it) after 1,024 of
//! them over the connection's life. The kit's clients must keep their
//! connection. The node here is a bare HTTP/2 server that answers every
//! call only once the client has reset it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use svckit::rpc::Target;
use svckit::servicegroup::{Advert, Endpoints};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tonic::Code;

use crate::echo::pb::echo_client::EchoClient;
use crate::echo::pb::SleepRequest;
use crate::support::etcd::Etcd;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;

/// What the bare server saw.
#[derive(Default)]
struct Seen {
    connections: AtomicUsize,
    requests: AtomicUsize,
    late_answers: AtomicUsize,
    goaways: AtomicUsize,
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("a small frame");
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.extend([kind, flags]);
    out.extend(stream.to_be_bytes());
    out.extend(payload);
    out
}

/// One connection: settings exchanged, pings answered, requests left
/// unanswered until the client resets them, then answered (`:status 200`).
async fn serve(mut conn: TcpStream, seen: Arc<Seen>) -> std::io::Result<()> {
    let mut preface = [0; 24];
    conn.read_exact(&mut preface).await?;
    assert_eq!(preface, PREFACE, "an HTTP/2 client");
    conn.write_all(&frame(SETTINGS, 0, 0, &[])).await?;
    loop {
        let mut head = [0; 9];
        conn.read_exact(&mut head).await?;
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let (kind, flags) = (head[3], head[4]);
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0; len];
        conn.read_exact(&mut payload).await?;
        match kind {
            SETTINGS if flags & 1 == 0 => conn.write_all(&frame(SETTINGS, 1, 0, &[])).await?,
            PING if flags & 1 == 0 => conn.write_all(&frame(PING, 1, 0, &payload)).await?,
            HEADERS => {
                seen.requests.fetch_add(1, Ordering::SeqCst);
            }
            RST_STREAM => {
                // `:status 200` (static table entry 8), END_STREAM and
                // END_HEADERS: an answer just too late.
                conn.write_all(&frame(HEADERS, 0x5, stream, &[0x88]))
                    .await?;
                seen.late_answers.fetch_add(1, Ordering::SeqCst);
            }
            GOAWAY => {
                seen.goaways.fetch_add(1, Ordering::SeqCst);
            }
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_after_the_deadline_do_not_cost_the_connection() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let accepting = {
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                seen.connections.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(conn, seen.clone()));
            }
        })
    };

    let etcd = Etcd::start();
    let (rpc, registry) = crate::rpc_for(&etcd).await;
    let endpoints = Endpoints::new(Some(format!("http://{addr}")), None);
    let advert = Advert::new("late", "bare", "bare_h2", "1.0.0", endpoints, vec![]);
    let _member = registry
        .join(advert.registration(1, Duration::from_secs(1), Duration::from_secs(5)))
        .await
        .expect("join");
    let target = Target::topic("late");
    rpc.wait_for_nodes(&target, 1, Duration::from_secs(10))
        .await
        .expect("the bare node visible");

    // 3,000 calls, 500 at a time, each given up after 100 ms: far more
    // resets at once than h2 remembers, so most answers find their stream
    // forgotten, and together they pass h2's default limit of 1,024.
    const CALLS: usize = 3_000;
    const AT_ONCE: usize = 500;
    let channel = rpc.channel(target).timeout(Duration::from_millis(100));
    for _ in 0..CALLS / AT_ONCE {
        let calls = (0..AT_ONCE).map(|_| {
            let mut client = EchoClient::new(channel.clone());
            async move { client.sleep(SleepRequest { millis: 0 }).await }
        });
        for result in futures::future::join_all(calls).await {
            let err = result.expect_err("the bare node never answers in time");
            assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
        }
    }
    // Every call was reset and answered; the last answers are on their way.
    crate::support::eventually(
        Duration::from_secs(10),
        "every call answered late",
        || async { (seen.late_answers.load(Ordering::SeqCst) >= CALLS).then_some(()) },
    )
    .await;
    // One more call, once all of them were read: it goes out on the same
    // connection, which the client never gave up.
    let mut client = EchoClient::new(channel.clone());
    let err = client
        .sleep(SleepRequest { millis: 0 })
        .await
        .expect_err("the bare node never answers in time");
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(seen.requests.load(Ordering::SeqCst) > CALLS / 2);
    assert_eq!(
        seen.goaways.load(Ordering::SeqCst),
        0,
        "the client closed its connection"
    );
    assert_eq!(seen.connections.load(Ordering::SeqCst), 1);
    accepting.abort();
}
