//! Overload on real nodes and a real etcd: the adaptive admission of a node
//! whose CPU is full, over gRPC and HTTP, and deadlines that travel from an
//! HTTP request through api_node and echo_node into a nested call.

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::etcd::Etcd;
use support::node::{example_bin, quick_node_args, Proc};
use svckit::rpc::{Rpc, RpcOptions, Target};
use svckit::servicegroup::{self, RegistryOptions};
use tonic::Code;
use tower::{Layer, ServiceExt};

#[allow(dead_code)]
#[path = "../examples/common/echo.rs"]
mod echo;

use echo::pb::echo_client::EchoClient;
use echo::pb::work_client::WorkClient;
use echo::pb::{SleepRequest, SpinRequest};

const WAIT: Duration = Duration::from_secs(20);

fn http_addr(proc: &Proc) -> SocketAddr {
    let ready = proc.ready();
    let url = ready["http"].as_str().expect("an http endpoint");
    url.trim_start_matches("http://")
        .parse()
        .expect("host:port")
}

/// The first CPU this test may run on.
fn first_cpu() -> String {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .expect("Cpus_allowed_list")
        .trim();
    list.split([',', '-']).next().unwrap_or("0").to_string()
}

/// `callers` callers of Spin(`micros`) at once, each calling again when
/// answered, until aborted; counts the answers and the refusals.
async fn load(
    url: String,
    callers: usize,
    micros: u64,
    answered: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
) {
    let channel = tonic::transport::Endpoint::from_shared(url)
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let callers: Vec<_> = (0..callers)
        .map(|_| {
            let mut client = WorkClient::new(channel.clone());
            let (answered, refused) = (answered.clone(), refused.clone());
            tokio::spawn(async move {
                loop {
                    match client.spin(SpinRequest { micros }).await {
                        Ok(_) => answered.fetch_add(1, Ordering::Relaxed),
                        Err(status) if status.code() == Code::Unavailable => {
                            refused.fetch_add(1, Ordering::Relaxed)
                        }
                        Err(status) => panic!("neither answered nor refused: {status}"),
                    };
                }
            })
        })
        .collect();
    // Aborting this task drops the callers' handles, not the callers: end
    // them with it.
    struct AbortAll(Vec<tokio::task::JoinHandle<()>>);
    impl Drop for AbortAll {
        fn drop(&mut self) {
            self.0.iter().for_each(tokio::task::JoinHandle::abort);
        }
    }
    let callers = AbortAll(callers);
    futures::future::pending::<()>().await;
    drop(callers);
}

/// `calls` Spin calls at once of `micros` each; (answered, refused).
async fn burst(url: &str, calls: usize, micros: u64) -> (usize, usize) {
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let calls: Vec<_> = (0..calls)
        .map(|_| {
            let mut client = WorkClient::new(channel.clone());
            tokio::spawn(async move { client.spin(SpinRequest { micros }).await })
        })
        .collect();
    let (mut answered, mut refused) = (0, 0);
    for call in calls {
        match call.await.expect("call task") {
            Ok(_) => answered += 1,
            Err(status) if status.code() == Code::Unavailable => refused += 1,
            Err(status) => panic!("neither answered nor refused: {status}"),
        }
    }
    (answered, refused)
}

/// A node held to one CPU, sent far more CPU-bound calls at once than it
/// finishes from its first call on, refuses the excess instead of queueing
/// it (it never saw a short queue, so it probes for one first), counts the
/// refusals and shows its limit; once the load ends, it admits a burst
/// whole again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adaptive_admission_refuses_past_the_limit_and_recovers() {
    let etcd = Etcd::start();
    let url = etcd.url().to_string();
    let mut args = vec!["-c".to_string(), first_cpu()];
    args.push(example_bin("echo_node").display().to_string());
    args.extend(quick_node_args(&url, "busy").iter().map(|s| s.to_string()));
    args.extend(["--http-listen".into(), "127.0.0.1:0".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut node = Proc::spawn(PathBuf::from("taskset"), &args, &[]);
    let grpc = format!("http://{}", node.wait_for_endpoint(WAIT));
    let http = http_addr(&node);

    // 64 callers at once of 2 ms of CPU each, on one CPU: the node
    // finishes one at a time, so most of them are past any limit that keeps
    // latency near 2 ms.
    let answered = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let load = tokio::spawn(load(
        grpc.clone(),
        64,
        2_000,
        answered.clone(),
        refused.clone(),
    ));
    support::eventually(WAIT, "refusals under load", || async {
        (refused.load(Ordering::Relaxed) > 0).then_some(())
    })
    .await;
    load.abort();
    let _ = load.await;
    let refused = refused.load(Ordering::Relaxed);
    assert!(
        answered.load(Ordering::Relaxed) > 0,
        "some calls are still served"
    );
    let report = support::dashboard::get(http, "/debug/report").json();
    let grpc_admission = &report["admission"]["grpc"];
    assert!(
        grpc_admission["refused_limit"].as_u64().unwrap_or(0) >= refused as u64,
        "{report:#}"
    );
    let metrics = support::dashboard::get(http, "/metrics").body;
    let counted = metrics
        .lines()
        .find(|l| {
            l.starts_with("svckit_admission_refused_total")
                && l.contains("protocol=\"grpc\"")
                && l.contains("reason=\"limit\"")
        })
        .unwrap_or_else(|| panic!("no refusal counter in:\n{metrics}"));
    let counted: f64 = counted
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .expect("a count");
    assert!(counted >= refused as f64, "{counted} < {refused}");
    assert!(metrics.contains("svckit_admission_limit{protocol=\"grpc\"}"));
    assert!(metrics.contains("svckit_admission_in_flight{protocol=\"grpc\"}"));

    // Health checks pass whatever the load.
    let channel = tonic::transport::Endpoint::from_shared(grpc.clone())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("health answers");

    // The load is over: a burst of four short calls is admitted whole once
    // the CPU cooled down.
    support::eventually(WAIT, "a whole burst admitted after the load", || async {
        let (answered, _) = burst(&grpc, 4, 200).await;
        (answered == 4).then_some(())
    })
    .await;
    drop(node);
}

async fn rpc_for(etcd: &Etcd) -> Rpc {
    let registry = servicegroup::connect(&etcd.url(), &RegistryOptions::default())
        .await
        .expect("connect to etcd");
    Rpc::with_options(registry, {
        let mut options = RpcOptions::default();
        options.response_timeout = Duration::from_secs(30);
        options
    })
    .await
    .expect("rpc client")
}

/// The `deadline_ms` field of the first log line with `message`.
fn logged_deadline(node: &Proc, message: &str) -> u64 {
    let log = node.stderr();
    let line = log
        .lines()
        .find(|l| l.contains(message))
        .unwrap_or_else(|| panic!("no {message:?} in:\n{log}"));
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("deadline_ms="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no deadline in {line:?}"))
}

/// HTTP alike: a node held to one CPU and flooded with requests that
/// compute answers the excess at once with 503 and `Retry-After`, and its
/// admin endpoints answer whatever the load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adaptive_admission_answers_http_with_503_and_retry_after() {
    let etcd = Etcd::start();
    let url = etcd.url().to_string();
    let mut args = vec!["-c".to_string(), first_cpu()];
    args.push(example_bin("fault_node").display().to_string());
    args.extend(
        quick_node_args(&url, "busy-http")
            .iter()
            .map(|s| s.to_string()),
    );
    args.extend(["--http-listen".into(), "127.0.0.1:0".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut node = Proc::spawn(PathBuf::from("taskset"), &args, &[]);
    node.wait_for_endpoint(WAIT);
    let http = http_addr(&node);

    // 32 clients, each sending the next request of 2 ms of CPU as soon as
    // the last is answered; the first refusal is handed over.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (refusals, refused) = std::sync::mpsc::channel();
    let clients: Vec<_> = (0..32)
        .map(|_| {
            let (stop, refusals) = (stop.clone(), refusals.clone());
            std::thread::spawn(move || {
                let mut other = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let reply = support::dashboard::get(http, "/v1/spin?micros=2000");
                    match reply.status {
                        200 => {}
                        503 => {
                            let _ = refusals.send(reply);
                        }
                        status => other.push(format!("{status} {}", reply.body)),
                    }
                }
                other
            })
        })
        .collect();
    let refusal = tokio::task::spawn_blocking(move || refused.recv_timeout(WAIT))
        .await
        .expect("waiting task");
    // The admin endpoints skip admission, even now.
    let health = tokio::task::spawn_blocking(move || support::dashboard::get(http, "/healthz"));
    let health = health.await.expect("health task");
    stop.store(true, Ordering::Relaxed);
    let mut other = Vec::new();
    for client in clients {
        other.extend(client.join().expect("client thread"));
    }
    let refusal = refusal.expect("a 503 under load");
    assert!(
        refusal.headers.contains("retry-after: 1"),
        "{}",
        refusal.headers
    );
    assert_eq!(health.status, 200);
    assert!(other.is_empty(), "neither answered nor refused: {other:?}");
    let metrics = support::dashboard::get(http, "/metrics").body;
    let refused_by_limit = metrics
        .lines()
        .find(|l| {
            l.starts_with("svckit_admission_refused_total")
                && l.contains("protocol=\"http\"")
                && l.contains("reason=\"limit\"")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no HTTP refusal counter in:\n{metrics}"));
    assert!(refused_by_limit > 0.0, "refused by the pool, not the limit");
    drop(node);
}

/// A call made while serving another carries what is left of its
/// deadline; with nothing left, it is not sent at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_inherits_the_deadline_of_the_call_it_serves_and_is_not_sent_past_it() {
    let etcd = Etcd::start();
    let url = etcd.url().to_string();
    let (node, _) = Proc::start_example("echo_node", &quick_node_args(&url, "e1"), &[]);
    let rpc = rpc_for(&etcd).await;
    let topic = Target::topic("echo");
    rpc.wait_for_nodes(&topic, 1, WAIT).await.expect("e1 seen");

    // Served with 3 s left: the call sent from there has a little less.
    let sleep = |rpc: Rpc| {
        tower::service_fn(move |_: http::Request<()>| {
            let rpc = rpc.clone();
            async move {
                let reply = EchoClient::new(rpc.channel(Target::topic("echo")))
                    .sleep(SleepRequest { millis: 1 })
                    .await;
                Ok::<_, std::convert::Infallible>(reply.map(|_| ()))
            }
        })
    };
    let serving = |timeout: &str| {
        http::Request::builder()
            .header("grpc-timeout", timeout)
            .body(())
            .expect("request")
    };
    let served = svckit::telemetry::trace::TraceContextLayer::default().layer(sleep(rpc.clone()));
    served
        .clone()
        .oneshot(serving("3S"))
        .await
        .expect("infallible")
        .expect("the nested call succeeds");
    let deadline = logged_deadline(&node, "sleep started");
    assert!(
        (2_000..3_000).contains(&deadline),
        "the nested call had {deadline} ms"
    );

    // Served with nothing left: the call fails here and reaches no node.
    let expired = served
        .oneshot(serving("1n"))
        .await
        .expect("infallible")
        .expect_err("no time left");
    assert_eq!(expired.code(), Code::DeadlineExceeded, "{expired}");
    assert_eq!(rpc.stats().expired, 1);
    EchoClient::new(rpc.channel(topic))
        .sleep(SleepRequest { millis: 1 })
        .await
        .expect("a call with time left");
    support::eventually(WAIT, "the last call's log line", || async {
        (node.stderr().matches("sleep started").count() >= 2).then_some(())
    })
    .await;
    assert_eq!(
        node.stderr().matches("sleep started").count(),
        2,
        "the call past its deadline reached the node"
    );
}

/// GET /v1/relay on api_node (http_request_timeout 3 s) asks echo_node to
/// call Sleep on its topic in turn: each hop has less of the same deadline,
/// and the HTTP client gets 504 when it ends (from the nested call that
/// ran out of it first, or from its own timeout), not after the sleep.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_travels_from_api_node_through_echo_node_into_a_nested_call() {
    let etcd = Etcd::start();
    let url = etcd.url().to_string();
    let (relay, _) = Proc::start_example("echo_node", &quick_node_args(&url, "e1"), &[]);
    let mut args = quick_node_args(&url, "a1");
    args.extend_from_slice(&["--http-listen", "127.0.0.1:0"]);
    let (api, _) = Proc::start_example("api_node", &args, &[("SVCKIT_HTTP_REQUEST_TIMEOUT", "3")]);
    let api_addr = http_addr(&api);
    support::eventually(WAIT, "echo reachable through api_node", || async {
        (support::dashboard::get(api_addr, "/v1/echo?msg=x").status == 200).then_some(())
    })
    .await;

    let reply = support::dashboard::get(api_addr, "/v1/relay?ms=20000");
    assert_eq!(reply.status, 504, "{}", reply.body);
    let at_relay = logged_deadline(&relay, "relay started");
    let at_sleep = logged_deadline(&relay, "sleep started");
    assert!(
        at_relay <= 3_000 && at_relay > 2_000,
        "relay had {at_relay} ms"
    );
    assert!(
        at_sleep < at_relay,
        "sleep had {at_sleep} ms, relay {at_relay}"
    );
    assert!(at_sleep > 1_000, "sleep had {at_sleep} ms");
}
