//! Floods of connections to the gRPC port that never speak, or stop half
//! way through their opening: bounded by `rpc_max_connections` (per
//! process, so per worker) and `rpc_handshake_timeout`, while clients that
//! speak are served.

use std::net::SocketAddr;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use svckit::pb::base::v1::base_client::BaseClient;
use svckit::pb::base::v1::ReportRequest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::Code;

use crate::frames::{call_on, h2_client, try_call_on};
use crate::support::node::{example_bin, quick_node_args, Proc};
use crate::{still_serves, WAIT};

/// An Echo request body: an empty message behind its length prefix.
const ECHO_BODY: [u8; 7] = [0, 0, 0, 0, 2, 0x0a, 0x00];

/// This process's (soft, hard) limit on open files.
fn nofile() -> (u64, u64) {
    // SAFETY: a plain system call on a local struct.
    unsafe {
        let mut limit = std::mem::zeroed::<libc::rlimit>();
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        (limit.rlim_cur, limit.rlim_max)
    }
}

/// The flood needs a descriptor per connection: raise this process's soft
/// limit to the hard one, and check that it is enough.
fn raise_nofile(need: u64) {
    // SAFETY: plain system calls on a local struct.
    unsafe {
        let mut limit = std::mem::zeroed::<libc::rlimit>();
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
        }
        assert!(
            limit.rlim_cur >= need,
            "this test needs {need} open files; the hard limit is {}",
            limit.rlim_max
        );
    }
}

fn start(workers: &str, env: &[(&str, &str)]) -> (Proc, SocketAddr, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    let mut args = quick_node_args(&url, "flood");
    args.extend_from_slice(&["--workers", workers]);
    let (proc, addr) = Proc::start_example("echo_node", &args, env);
    (proc, addr, dir)
}

/// `n` connections that never send a byte.
async fn idle_flood(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut streams = Vec::with_capacity(n);
    for i in 0..n {
        match TcpStream::connect(addr).await {
            Ok(stream) => streams.push(stream),
            Err(e) => panic!("connection {i} of the flood failed: {e}"),
        }
    }
    streams
}

/// Each connection, as a future that ends when the server closed it.
fn closings(streams: Vec<TcpStream>) -> FuturesUnordered<BoxFuture<'static, ()>> {
    streams
        .into_iter()
        .map(|mut stream| -> BoxFuture<'static, ()> {
            Box::pin(async move {
                // The server's SETTINGS, maybe a GOAWAY, then EOF or a reset.
                let mut sink = Vec::new();
                let _ = stream.read_to_end(&mut sink).await;
            })
        })
        .collect()
}

/// Waits until `count` of the connections were closed by the server.
async fn wait_closed(
    open: &mut FuturesUnordered<BoxFuture<'static, ()>>,
    count: usize,
    what: &str,
) {
    let mut closed = 0;
    while closed < count {
        match tokio::time::timeout(WAIT, open.next()).await {
            Ok(Some(())) => closed += 1,
            Ok(None) => panic!("only {closed} of {count} {what} were closed: none left"),
            Err(_) => panic!("only {closed} of {count} {what} closed within {WAIT:?}"),
        }
    }
}

/// `flood` idle connections against `workers` processes of `limit`
/// connections each, with a handshake timeout of an hour: whatever the
/// node closes now, it closed for the limit, and a new client still gets
/// in while the newest idle connections hold every slot.
async fn an_idle_flood_past_the_limit(workers: usize, limit: usize, flood: usize) {
    raise_nofile(flood as u64 + 256);
    let limit_text = limit.to_string();
    let (mut node, addr, _dir) = start(
        &workers.to_string(),
        &[
            ("SVCKIT_RPC_MAX_CONNECTIONS", &limit_text),
            ("SVCKIT_RPC_HANDSHAKE_TIMEOUT", "1h"),
        ],
    );
    let mut open = closings(idle_flood(addr, flood).await);
    wait_closed(
        &mut open,
        flood - workers * limit,
        "idle connections past the limit",
    )
    .await;
    still_serves(addr).await;
    assert!(
        node.wait_exit(Duration::ZERO).is_none(),
        "the node is still up"
    );
    drop(open);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_flood_past_the_limit_is_closed_and_a_new_client_gets_in() {
    an_idle_flood_past_the_limit(1, 500, 2000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_worker_bounds_its_own_connections() {
    an_idle_flood_past_the_limit(2, 300, 1500).await;
}

/// With every slot held by clients that spoke, a new connection is closed
/// at once, and gets in once a slot is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_node_closes_new_connections_until_a_slot_is_free() {
    let (_node, addr, _dir) = start("1", &[("SVCKIT_RPC_MAX_CONNECTIONS", "2")]);
    let mut first = h2_client(addr).await;
    let mut second = h2_client(addr).await;
    for client in [&mut first, &mut second] {
        let (status, text) = call_on(client, addr, &ECHO_BODY).await;
        assert_eq!(status, Some(Code::Ok), "{text}");
    }
    let mut newcomer = closings(vec![TcpStream::connect(addr).await.unwrap()]);
    wait_closed(&mut newcomer, 1, "connections past a full node").await;

    drop(first);
    crate::support::eventually(WAIT, "a slot freed for a new client", || async {
        let tcp = TcpStream::connect(addr).await.ok()?;
        let (mut client, connection) = h2::client::handshake(tcp).await.ok()?;
        tokio::spawn(connection);
        let (status, _) = try_call_on(&mut client, addr, &ECHO_BODY).await.ok()?;
        (status == Some(Code::Ok)).then_some(())
    })
    .await;
    // The client that held its slot all along still has its connection.
    let (status, text) = call_on(&mut second, addr, &ECHO_BODY).await;
    assert_eq!(status, Some(Code::Ok), "{text}");

    // The report counts the connection closed at once.
    let report = crate::support::eventually(WAIT, "the node's report", || async {
        let channel = crate::channel_to(addr).await.ok()?;
        BaseClient::new(channel).report(ReportRequest {}).await.ok()
    })
    .await;
    let report: serde_json::Value = serde_json::from_str(&report.into_inner().json).unwrap();
    let refused = report["node"]["connections"]["refused"].as_u64();
    assert!(refused >= Some(1), "{report:#}");
}

/// Idle connections, and connections that stop part way through their
/// opening, are closed once `rpc_handshake_timeout` passes; a client that
/// spoke keeps its connection past it.
async fn silent_and_stalled_connections_time_out(workers: &str) {
    const FLOOD: usize = 2000;
    raise_nofile(FLOOD as u64 + 256);
    let (mut node, addr, _dir) = start(workers, &[("SVCKIT_RPC_HANDSHAKE_TIMEOUT", "1")]);
    let mut spoke = h2_client(addr).await;
    let (status, text) = call_on(&mut spoke, addr, &ECHO_BODY).await;
    assert_eq!(status, Some(Code::Ok), "{text}");

    let mut streams = idle_flood(addr, FLOOD).await;
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut settings_cut = preface.to_vec();
    settings_cut.extend_from_slice(&[0, 0, 6, 4, 0]);
    let mut payload_cut = preface.to_vec();
    payload_cut.extend_from_slice(&[0, 0, 12, 4, 0, 0, 0, 0, 0, 0, 3, 0]);
    for stalled in [
        &b"P"[..],
        &preface[..10],
        preface,
        &settings_cut,
        &payload_cut,
    ] {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(stalled).await.unwrap();
        streams.push(stream);
    }
    // Answered while the flood is open (the default limit is far above it).
    still_serves(addr).await;

    let count = streams.len();
    let mut open = closings(streams);
    wait_closed(&mut open, count, "silent and stalled connections").await;

    let (status, text) = call_on(&mut spoke, addr, &ECHO_BODY).await;
    assert_eq!(status, Some(Code::Ok), "{text}");
    assert!(
        node.wait_exit(Duration::ZERO).is_none(),
        "the node is still up"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_stalled_connections_are_closed_after_the_handshake_timeout() {
    silent_and_stalled_connections_time_out("1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_workers_silent_connections_are_closed_after_the_handshake_timeout() {
    silent_and_stalled_connections_time_out("2").await;
}

/// echo_node started under `prlimit --nofile=SOFT:HARD`.
fn start_with_open_files(
    soft: u64,
    hard: u64,
    env: &[(&str, &str)],
) -> (Proc, SocketAddr, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    let limits = format!("--nofile={soft}:{hard}");
    let bin = example_bin("echo_node");
    let mut args = vec![limits.as_str(), bin.to_str().unwrap()];
    args.extend(quick_node_args(&url, "nofile"));
    let mut proc = Proc::spawn("prlimit".into(), &args, env);
    let addr = proc.wait_for_endpoint(WAIT);
    (proc, addr, dir)
}

/// Started with the common soft limit of open files far below the
/// connection limit, the node raises it to the hard limit: a flood larger
/// than the soft limit does not run it out of descriptors, and a new
/// client still gets in long before any handshake timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_raises_its_open_file_limit_before_a_flood() {
    const FLOOD: usize = 1000;
    raise_nofile(FLOOD as u64 + 256);
    let (_, hard) = nofile();
    let (mut node, addr, _dir) =
        start_with_open_files(128, hard, &[("SVCKIT_RPC_HANDSHAKE_TIMEOUT", "1h")]);
    let idle = idle_flood(addr, FLOOD).await;
    still_serves(addr).await;
    assert!(
        node.wait_exit(Duration::ZERO).is_none(),
        "the node is still up"
    );
    assert!(
        !node.stderr().contains("open-file limit"),
        "{}",
        node.stderr()
    );
    drop(idle);
}

/// A hard limit of open files below the connection limits is named at
/// start.
#[test]
fn a_hard_open_file_limit_below_the_connection_limits_is_warned_about() {
    let (node, _addr, _dir) = start_with_open_files(128, 128, &[]);
    node.wait_for_log("open-file limit is below the connection limits", WAIT);
}
