//! A real `echo_node` process: signals, drain, deadlines, config reload.

mod support;

use std::io::Write;
use std::time::Duration;

use nix::sys::signal::Signal;
use support::node::Proc;

#[allow(dead_code)]
#[path = "../examples/common/echo.rs"]
mod echo;

use echo::pb::echo_client::EchoClient;
use echo::pb::{EchoRequest, SleepRequest};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

fn node(extra: &[&str]) -> (Proc, std::net::SocketAddr) {
    let mut args = vec![
        "--rpc-listen",
        "127.0.0.1:0",
        "--registry",
        "memory://",
        "--host",
        "n1",
    ];
    args.extend_from_slice(extra);
    Proc::start_example("echo_node", &args, &[("SVCKIT_DRAIN_DELAY", "0.3")])
}

async fn client(addr: std::net::SocketAddr) -> EchoClient<tonic::transport::Channel> {
    EchoClient::connect(format!("http://{addr}"))
        .await
        .expect("connect")
}

// The call runs on another thread while this one waits for the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_in_flight_call_finish_and_exits_zero() {
    let (mut node, addr) = node(&["--graceful-shutdown-timeout", "10"]);
    let mut echo = client(addr).await;
    let call = tokio::spawn(async move { echo.sleep(SleepRequest { millis: 2000 }).await });
    node.wait_for_log("sleep started", Duration::from_secs(10));
    node.signal(Signal::SIGTERM);

    let reply = call.await.unwrap().expect("in-flight call completes");
    assert_eq!(reply.into_inner().host, "n1");
    let status = node.wait_exit(Duration::from_secs(10)).expect("node exits");
    assert_eq!(status.code(), Some(0), "{}", node.stderr());
}

// The call runs on another thread while this one waits for the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_goes_not_serving_before_the_listener_closes() {
    let (node, addr) = node(&["--graceful-shutdown-timeout", "10"]);
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel.clone());
    let check = |svc: &str| HealthCheckRequest {
        service: svc.into(),
    };
    let status = health.check(check("")).await.unwrap().into_inner().status;
    assert_eq!(status, ServingStatus::Serving as i32);

    // Keep a call in flight so the server is still up while we look.
    let mut echo = EchoClient::new(channel);
    let call = tokio::spawn(async move { echo.sleep(SleepRequest { millis: 1500 }).await });
    node.wait_for_log("sleep started", Duration::from_secs(10));
    node.signal(Signal::SIGTERM);
    // Within drain_delay: the existing connection still answers, NOT_SERVING.
    let mut statuses = health
        .watch(check(""))
        .await
        .expect("health answers during the drain")
        .into_inner();
    let mut status = ServingStatus::Serving as i32;
    while status != ServingStatus::NotServing as i32 {
        status = tokio::time::timeout(Duration::from_secs(10), statuses.message())
            .await
            .expect("NOT_SERVING within the drain")
            .expect("the health watch answers")
            .expect("the health watch goes on")
            .status;
    }
    let status = health
        .check(check("svckit.examples.echo.v1.Echo"))
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::NotServing as i32);
    call.await.unwrap().expect("in-flight call completes");
}

// The call runs on another thread while this one waits for the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_longer_than_the_deadline_ends_the_process_nonzero_at_the_deadline() {
    let (mut node, addr) = node(&["--graceful-shutdown-timeout", "1"]);
    let mut echo = client(addr).await;
    let call = tokio::spawn(async move { echo.sleep(SleepRequest { millis: 20_000 }).await });
    node.wait_for_log("sleep started", Duration::from_secs(10));
    node.signal(Signal::SIGTERM);

    let status = node
        .wait_exit(Duration::from_secs(8))
        .expect("node exits at the deadline");
    assert_eq!(status.code(), Some(1), "{}", node.stderr());
    assert!(
        node.stderr().contains("graceful shutdown did not finish"),
        "{}",
        node.stderr()
    );
    assert!(call.await.unwrap().is_err(), "the cut-off call must fail");
}

// The call runs on another thread while this one waits for the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_exits_at_once() {
    let (mut node, addr) = node(&["--graceful-shutdown-timeout", "30"]);
    let mut echo = client(addr).await;
    let _call = tokio::spawn(async move { echo.sleep(SleepRequest { millis: 20_000 }).await });
    node.wait_for_log("sleep started", Duration::from_secs(10));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut statuses = HealthClient::new(channel)
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health watch")
        .into_inner();
    node.signal(Signal::SIGTERM);
    // The graceful stop is under way once the node turns NOT_SERVING.
    loop {
        let status = tokio::time::timeout(Duration::from_secs(10), statuses.message())
            .await
            .expect("NOT_SERVING after SIGTERM")
            .expect("the health watch answers")
            .expect("the health watch goes on")
            .status;
        if status == ServingStatus::NotServing as i32 {
            break;
        }
    }
    assert!(
        node.wait_exit(Duration::ZERO).is_none(),
        "still draining after one SIGTERM"
    );
    node.signal(Signal::SIGTERM);
    // Far below the 30 s deadline: only the second signal can end it.
    let status = node
        .wait_exit(Duration::from_secs(10))
        .expect("second SIGTERM exits at once");
    assert_eq!(status.code(), Some(128 + 15), "{}", node.stderr());
}

#[tokio::test]
async fn sighup_applies_the_log_level_from_the_edited_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.toml");
    std::fs::write(&path, "log_level = \"info\"\n").unwrap();
    let (node, addr) = node(&["--config", path.to_str().unwrap()]);
    let mut echo = client(addr).await;
    echo.echo(EchoRequest {
        payload: b"a".to_vec(),
    })
    .await
    .unwrap();
    assert!(
        !node.stderr().contains("DEBUG"),
        "debug logs at info:\n{}",
        node.stderr()
    );

    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(b"log_level = \"debug\"\n").unwrap();
    drop(f);
    node.signal(Signal::SIGHUP);
    node.wait_for_log("config reloaded", Duration::from_secs(5));

    // Same connection as before the reload: nothing was dropped.
    echo.echo(EchoRequest {
        payload: b"b".to_vec(),
    })
    .await
    .expect("call after SIGHUP");
    node.wait_for_log("DEBUG", Duration::from_secs(5));
}

#[tokio::test]
async fn sighup_with_a_broken_config_keeps_running_on_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.toml");
    std::fs::write(&path, "log_level = \"info\"\n").unwrap();
    let (node, addr) = node(&["--config", path.to_str().unwrap()]);
    std::fs::write(&path, "log_level = \"svckit=loud\"\n").unwrap();
    node.signal(Signal::SIGHUP);
    node.wait_for_log("config reload failed", Duration::from_secs(5));
    let mut echo = client(addr).await;
    let reply = echo
        .echo(EchoRequest {
            payload: b"x".to_vec(),
        })
        .await
        .unwrap();
    assert_eq!(reply.into_inner().payload, b"x");
}

/// A fault_node: the echo manager with hooks that misbehave on demand.
fn fault_node(extra: &[&str]) -> Proc {
    let mut args = vec![
        "--rpc-listen",
        "127.0.0.1:0",
        "--registry",
        "memory://",
        "--host",
        "f1",
    ];
    args.extend_from_slice(extra);
    Proc::spawn(
        support::node::example_bin("fault_node"),
        &args,
        &[("SVCKIT_DRAIN_DELAY", "0")],
    )
}

#[test]
fn sigterm_during_init_host_stops_the_start_and_exits_zero() {
    let mut node = fault_node(&["--init-delay", "1h"]);
    node.wait_for_log("init_host started", Duration::from_secs(30));
    node.signal(Signal::SIGTERM);
    // Far below the hour init_host would take.
    let status = node
        .wait_exit(Duration::from_secs(10))
        .expect("a stop during init_host ends the start");
    assert_eq!(status.code(), Some(0), "{}", node.stderr());
}

#[test]
fn sigterm_while_the_registry_does_not_answer_stops_at_once() {
    // A listener that accepts and never answers: an etcd black hole.
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("etcd://{}", hole.local_addr().unwrap());
    let mut node = Proc::spawn(
        support::node::example_bin("echo_node"),
        &["--registry", &url, "--host", "b1"],
        &[("SVCKIT_REGISTRY_TIMEOUT", "1h")],
    );
    let (_held, _) = hole.accept().expect("the node connects to the registry");
    node.signal(Signal::SIGTERM);
    let status = node
        .wait_exit(Duration::from_secs(10))
        .expect("a stop while waiting for etcd ends the start");
    assert_eq!(status.code(), Some(0), "{}", node.stderr());
}

#[test]
fn a_second_sigterm_exits_even_while_blocking_code_runs() {
    let mut node = fault_node(&["--block-cleanup", "--graceful-shutdown-timeout", "1h"]);
    node.wait_for_endpoint(Duration::from_secs(30));
    node.signal(Signal::SIGTERM);
    node.wait_for_log("cleanup_host blocking", Duration::from_secs(10));
    node.signal(Signal::SIGTERM);
    let status = node
        .wait_exit(Duration::from_secs(10))
        .expect("the second SIGTERM does not wait for the blocking pool");
    assert_eq!(status.code(), Some(128 + 15), "{}", node.stderr());
}

#[test]
fn the_deadline_ends_a_stop_stuck_in_blocking_code() {
    let mut node = fault_node(&["--block-cleanup", "--graceful-shutdown-timeout", "1"]);
    node.wait_for_endpoint(Duration::from_secs(30));
    node.signal(Signal::SIGTERM);
    node.wait_for_log("cleanup_host blocking", Duration::from_secs(10));
    let status = node
        .wait_exit(Duration::from_secs(10))
        .expect("the deadline does not wait for the blocking pool");
    assert_eq!(status.code(), Some(1), "{}", node.stderr());
}

#[test]
fn a_failing_hook_exits_70_naming_it() {
    for hook in ["init_host", "pre_start_hook", "post_start_hook"] {
        let mut node = fault_node(&["--fail", hook]);
        let status = node
            .wait_exit(Duration::from_secs(30))
            .expect("a failed start exits");
        assert_eq!(status.code(), Some(70), "{hook}: {}", node.stderr());
        let stderr = node.stderr();
        let last = stderr.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("fault_node: error: ") && last.contains(hook),
            "{hook}: {stderr}"
        );
    }
}

/// Under systemd's watchdog (`WatchdogSec=` sets `WATCHDOG_USEC`), a
/// single process sends `WATCHDOG=1` to `NOTIFY_SOCKET` every half period;
/// meant for another process (`WATCHDOG_PID`), it sends none.
#[test]
fn a_single_process_keeps_the_systemd_watchdog_fed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&path).expect("bind");
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let notify = path.display().to_string();
    let env = [
        ("NOTIFY_SOCKET", notify.as_str()),
        ("WATCHDOG_USEC", "200000"),
    ];
    let mut args = vec!["--rpc-listen", "127.0.0.1:0", "--registry", "memory://"];
    args.extend_from_slice(&["--host", "w1"]);
    let (fed, _) = Proc::start_example("echo_node", &args, &env);
    let mut buf = [0u8; 256];
    let mut beats = 0;
    while beats < 3 {
        let n = socket.recv(&mut buf).expect("a datagram from the node");
        if &buf[..n] == b"WATCHDOG=1" {
            beats += 1;
        }
    }
    drop(fed);

    let path = dir.path().join("other.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&path).expect("bind");
    let notify = path.display().to_string();
    let env = [
        ("NOTIFY_SOCKET", notify.as_str()),
        ("WATCHDOG_USEC", "200000"),
        ("WATCHDOG_PID", "1"),
    ];
    args[5] = "w2";
    let (other, _) = Proc::start_example("echo_node", &args, &env);
    other.wait_for_log("node serving", Duration::from_secs(20));
    // Three periods of the watchdog without a keep-alive.
    socket
        .set_read_timeout(Some(Duration::from_millis(600)))
        .expect("timeout");
    while let Ok(n) = socket.recv(&mut buf) {
        assert_ne!(
            &buf[..n],
            b"WATCHDOG=1",
            "a watchdog meant for pid 1 was fed"
        );
    }
}
