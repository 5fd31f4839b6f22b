//! Faults of one node: kill -9, SIGTERM, SIGSTOP past its down time, and
//! its HTTP and gRPC concurrency limits filled.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::echo::pb::echo_client::EchoClient;
use crate::echo::pb::SleepRequest;
use crate::harness::{
    assert_no_failed_call, blocking, serial, CallLoop, Fleet, NodeSpec, Row, WAIT,
};
use crate::support::etcd::Etcd;
use crate::support::{eventually, is_join, is_leave};

/// Calls the loop must make before a fault, so that the fault hits a fleet
/// under way.
pub const WARM: u64 = 100;

pub fn three() -> Vec<NodeSpec> {
    ["n1", "n2", "n3"]
        .iter()
        .map(|h| NodeSpec::echo(h))
        .collect()
}

/// Starts `host` again once its process ended (what a process manager
/// does), and returns once it is up and a call landed on every node again:
/// the time from the restart.
pub async fn bring_back(fleet: &mut Fleet, calls: &CallLoop, host: &str) -> Duration {
    blocking(|| fleet.node_mut(host).wait_exit(WAIT)).expect("the node's process ended");
    let restart = Instant::now();
    fleet.restart(host);
    fleet.event(restart, "the node's join", is_join(host)).await;
    let joined = Instant::now();
    calls
        .wait_hosts_served(&fleet.hosts(), joined, restart, "calls on every node again")
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_a_node() {
    let _serial = serial().await;
    let etcd = blocking(Etcd::start);
    let mut fleet = Fleet::start(&etcd.url(), three()).await;
    let calls = fleet.call_loop(true);
    calls.wait_ok(WARM, "calls before the fault").await;

    let fault = Instant::now();
    fleet.node("n1").signal(Signal::SIGKILL);
    let (_, reflected, _) = fleet.event(fault, "n1's leave", is_leave("n1")).await;
    fleet
        .until_routed(&["n2", "n3"], "n1 out of the client's nodes")
        .await;
    let recovered = bring_back(&mut fleet, &calls, "n1").await;

    let calls = calls.stop().await;
    Row {
        fault: "kill -9 a node (idempotent calls)",
        calls: &calls,
        reflected: Some(reflected),
        recovered: Some(recovered),
        note: "recovered: from the restart".into(),
    }
    .print();
    assert_no_failed_call(&calls, "kill -9");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_a_node() {
    let _serial = serial().await;
    let etcd = blocking(Etcd::start);
    let mut fleet = Fleet::start(&etcd.url(), three()).await;
    // Not idempotent: a graceful stop must drain, not rely on retries.
    let calls = fleet.call_loop(false);
    calls.wait_ok(WARM, "calls before the fault").await;

    let fault = Instant::now();
    fleet.node("n2").signal(Signal::SIGTERM);
    let (_, reflected, _) = fleet.event(fault, "n2's leave", is_leave("n2")).await;
    let status = blocking(|| fleet.node_mut("n2").wait_exit(WAIT)).expect("n2 stops");
    assert_eq!(status.code(), Some(0), "{}", fleet.node("n2").stderr());
    let recovered = bring_back(&mut fleet, &calls, "n2").await;

    let calls = calls.stop().await;
    Row {
        fault: "SIGTERM a node (plain calls)",
        calls: &calls,
        reflected: Some(reflected),
        recovered: Some(recovered),
        note: "left, drained, exit 0; recovered: from the restart".into(),
    }
    .print();
    assert_no_failed_call(&calls, "SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigstop_a_node_past_its_down_time() {
    let _serial = serial().await;
    let etcd = blocking(Etcd::start);
    let mut fleet = Fleet::start(&etcd.url(), three()).await;
    let calls = fleet.call_loop(true);
    calls.wait_ok(WARM, "calls before the fault").await;

    let fault = Instant::now();
    fleet.node("n3").signal(Signal::SIGSTOP);
    // service_down_time is 1 s: the lease runs out while the node sleeps.
    let (_, reflected, _) = fleet.event(fault, "n3's leave", is_leave("n3")).await;
    fleet
        .until_routed(&["n1", "n2"], "n3 out of the client's nodes")
        .await;
    calls
        .wait_ok(WARM, "calls on the other nodes while n3 is frozen")
        .await;
    let resumed = Instant::now();
    fleet.node("n3").signal(Signal::SIGCONT);
    fleet.event(resumed, "n3's join", is_join("n3")).await;
    let joined = Instant::now();
    let recovered = calls
        .wait_hosts_served(&fleet.hosts(), joined, resumed, "calls on every node again")
        .await;

    let calls = calls.stop().await;
    let late = calls
        .failed
        .iter()
        .filter(|s| s.code() != tonic::Code::DeadlineExceeded)
        .count();
    Row {
        fault: "SIGSTOP a node past service_down_time, then SIGCONT",
        calls: &calls,
        reflected: Some(reflected),
        recovered: Some(recovered),
        note: "recovered: from SIGCONT".into(),
    }
    .print();
    // Calls already on the frozen node wait for it (answered on SIGCONT, or
    // DEADLINE_EXCEEDED); nothing else may fail.
    assert_eq!(late, 0, "{:?}", calls.failed);
    assert!(calls.ok > 0);
}

/// `GET path` on a connection of its own; the status code, once answered.
fn http_get(addr: SocketAddr, path: &str) -> u16 {
    let mut conn = TcpStream::connect(addr).expect("connect to the node's HTTP port");
    conn.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    let _ = conn.read_to_string(&mut answer);
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer: {answer:?}"))
}

/// Starts a request that holds a slot of the pool until the connection is
/// dropped.
fn hold(addr: SocketAddr) -> TcpStream {
    let mut conn = TcpStream::connect(addr).expect("connect to the node's HTTP port");
    write!(
        conn,
        "GET /v1/hold?millis=600000 HTTP/1.1\r\nHost: {addr}\r\n\r\n"
    )
    .unwrap();
    conn
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fill_a_nodes_concurrency_limit() {
    let _serial = serial().await;
    let etcd = blocking(Etcd::start);
    const POOL: usize = 2;
    let limited = NodeSpec::echo("n3")
        .example("fault_node")
        .args(&["--http-listen", "127.0.0.1:0"])
        .env("SVCKIT_HTTP_POOL_SIZE", &POOL.to_string())
        .env("SVCKIT_HTTP_POOL_WAIT", "0.2");
    let specs = vec![NodeSpec::echo("n1"), NodeSpec::echo("n2"), limited];
    let mut fleet = Fleet::start(&etcd.url(), specs).await;
    let http: SocketAddr = fleet.node("n3").ready()["http"]
        .as_str()
        .expect("an HTTP endpoint in the ready file")
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let calls = fleet.call_loop(true);
    calls.wait_ok(WARM, "calls before the fault").await;

    let fault = Instant::now();
    let held: Vec<TcpStream> = (0..POOL).map(|_| hold(http)).collect();
    eventually(WAIT, "every pool slot held", || {
        let n = fleet.node("n3").stderr().matches("hold started").count();
        async move { (n >= POOL).then_some(()) }
    })
    .await;
    let asked = Instant::now();
    let code = blocking(|| http_get(http, "/v1/hold?millis=0"));
    let queued = asked.elapsed();
    assert_eq!(code, 503, "a request past http_pool_size");
    // The admin routes skip the pool: the node still says it is alive.
    assert_eq!(blocking(|| http_get(http, "/healthz")), 200);
    let served_before = Instant::now();
    calls
        .wait_hosts_served(
            &fleet.hosts(),
            served_before,
            fault,
            "gRPC calls on every node while n3's HTTP pool is full",
        )
        .await;

    let released = Instant::now();
    drop(held);
    eventually(WAIT, "a free slot after the release", || async {
        (blocking(|| http_get(http, "/v1/hold?millis=0")) == 200).then_some(())
    })
    .await;
    let recovered = released.elapsed();
    let calls = calls.stop().await;
    // Every event since the fill, up to the probe: no node was seen down.
    fleet.probe(&etcd.url(), "probe-pool", Instant::now()).await;
    Row {
        fault: "fill a node's concurrency limit (http_pool_size 2)",
        calls: &calls,
        reflected: None,
        recovered: Some(recovered),
        note: format!(
            "HTTP past the limit: 503 after {:.2} s queued (http_pool_wait 0.2 s); gRPC unaffected; recovered: from the release",
            queued.as_secs_f64()
        ),
    }
    .print();
    assert_no_failed_call(&calls, "concurrency limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fill_a_nodes_grpc_pool() {
    let _serial = serial().await;
    let etcd = blocking(Etcd::start);
    const POOL: usize = 2;
    let limited = NodeSpec::echo("n3")
        .env("SVCKIT_RPC_POOL_SIZE", &POOL.to_string())
        .env("SVCKIT_RPC_POOL_WAIT", "0");
    let specs = vec![NodeSpec::echo("n1"), NodeSpec::echo("n2"), limited];
    let mut fleet = Fleet::start(&etcd.url(), specs).await;
    let grpc = fleet.node("n3").ready()["grpc"]
        .as_str()
        .expect("a gRPC endpoint in the ready file")
        .to_string();
    // Not idempotent: a refused call never ran, so it is sent elsewhere
    // all the same.
    let calls = fleet.call_loop(false);
    calls.wait_ok(WARM, "calls before the fault").await;

    // Long calls from outside the fleet's client take every slot of n3.
    let fault = Instant::now();
    let channel = tonic::transport::Channel::from_shared(grpc)
        .unwrap()
        .connect()
        .await
        .expect("connect to n3");
    let holders: Vec<_> = (0..POOL)
        .map(|_| {
            let mut client = EchoClient::new(channel.clone());
            tokio::spawn(async move { client.sleep(SleepRequest { millis: 2_000 }).await })
        })
        .collect();
    eventually(WAIT, "every slot of n3 held", || {
        let n = fleet.node("n3").stderr().matches("sleep started").count();
        async move { (n >= POOL).then_some(()) }
    })
    .await;
    eventually(WAIT, "n3 refusing calls of the loop", || {
        let refused = fleet.node("n3").stderr().contains("rpc_pool_size reached");
        async move { refused.then_some(()) }
    })
    .await;
    calls.wait_ok(WARM, "calls while n3 is full").await;

    for holder in holders {
        holder.await.unwrap().expect("a long call ends");
    }
    let released = Instant::now();
    let recovered = calls
        .wait_hosts_served(&["n3".to_string()], released, released, "calls on n3 again")
        .await;
    let calls = calls.stop().await;
    fleet
        .probe(&etcd.url(), "probe-rpc-pool", Instant::now())
        .await;
    Row {
        fault: "fill a node's gRPC pool (rpc_pool_size 2)",
        calls: &calls,
        reflected: None,
        recovered: Some(recovered),
        note: format!(
            "calls past the limit refused before their handler and sent to another node (not idempotent); full for {:.1} s; recovered: from the release",
            (released - fault).as_secs_f64()
        ),
    }
    .print();
    assert_no_failed_call(&calls, "gRPC pool full");
}
