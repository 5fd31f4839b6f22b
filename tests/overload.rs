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

/// A node held to one CPU, under `taskset`, with an HTTP listener; its
/// gRPC and HTTP addresses.
fn pinned_node(etcd: &Etcd, example: &str, host: &str) -> (Proc, String, SocketAddr) {
    let url = etcd.url().to_string();
    let mut args = vec!["-c".to_string(), first_cpu()];
    args.push(example_bin(example).display().to_string());
    args.extend(quick_node_args(&url, host).iter().map(|s| s.to_string()));
    args.extend(["--http-listen".into(), "127.0.0.1:0".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut node = Proc::spawn(PathBuf::from("taskset"), &args, &[]);
    let grpc = format!("http://{}", node.wait_for_endpoint(WAIT));
    let http = http_addr(&node);
    (node, grpc, http)
}

/// One Spin call of `micros` with `criticality` and a deadline; `Ok(true)`
/// answered in time, `Ok(false)` refused, `Err` anything else.
async fn spin_once(
    channel: tonic::transport::Channel,
    micros: u64,
    criticality: &'static str,
    deadline: Duration,
) -> Result<bool, tonic::Status> {
    let mut client = WorkClient::new(channel);
    let mut request = tonic::Request::new(SpinRequest { micros });
    request.set_timeout(deadline);
    request
        .metadata_mut()
        .insert("svckit-criticality", criticality.parse().expect("ascii"));
    match client.spin(request).await {
        Ok(_) => Ok(true),
        Err(status) if status.code() == Code::Unavailable => Ok(false),
        Err(status) => Err(status),
    }
}

/// What an open loop's calls of one criticality came to.
#[derive(Debug, Default, Clone, Copy)]
struct Outcome {
    answered: usize,
    refused: usize,
    /// Admitted, but not answered within the deadline.
    late: usize,
}

/// `rate` calls a second for `secs`, due whatever the answers (an open
/// loop), every other one `sheddable` and the others `critical`, each with
/// a 1 s deadline; per criticality, sheddable first.
async fn open_loop(url: &str, micros: u64, rate: f64, secs: f64) -> [Outcome; 2] {
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let calls = (rate * secs) as usize;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(calls);
    for i in 0..calls {
        tokio::time::sleep_until(start + interval.mul_f64(i as f64)).await;
        let criticality = if i % 2 == 0 { "sheddable" } else { "critical" };
        let channel = channel.clone();
        tasks.push((
            i % 2,
            tokio::spawn(spin_once(
                channel,
                micros,
                criticality,
                Duration::from_secs(1),
            )),
        ));
    }
    let mut counts = [Outcome::default(); 2];
    for (class, task) in tasks {
        match task.await.expect("call task") {
            Ok(true) => counts[class].answered += 1,
            Ok(false) => counts[class].refused += 1,
            // Not answered within its deadline: no goodput (the node's
            // timer says DEADLINE_EXCEEDED, this client's CANCELLED).
            Err(status) if matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled) => {
                counts[class].late += 1
            }
            Err(status) => panic!("neither answered nor refused: {status}"),
        }
    }
    counts
}

/// The admission counter of `protocol` and `reason` on `/metrics`.
fn refusals_counted(http: SocketAddr, protocol: &str, reason: &str) -> f64 {
    let metrics = support::dashboard::get(http, "/metrics").body;
    metrics
        .lines()
        .find(|l| {
            l.starts_with("svckit_admission_refused_total")
                && l.contains(&format!("protocol=\"{protocol}\""))
                && l.contains(&format!("reason=\"{reason}\""))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no {protocol}/{reason} refusal counter in:\n{metrics}"))
}

/// A node held to one CPU, with the default admission. A closed loop of 64
/// callers of 2 ms of CPU each queues ~128 ms and is refused nothing: each
/// caller waits for its answer, so refusing would only send it straight
/// back. Then an open loop at three times what the closed loop got answered
/// is shed: refusals, `sheddable` calls refused before `critical` ones,
/// and the answers in time (goodput) stay well above what a node that
/// queued everything would give (its queue passes the 1 s deadline).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_sheds_a_growing_queue_and_never_a_closed_loop() {
    let etcd = Etcd::start();
    let (node, grpc, http) = pinned_node(&etcd, "echo_node", "busy");

    let answered = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let load = tokio::spawn(load(
        grpc.clone(),
        64,
        2_000,
        answered.clone(),
        refused.clone(),
    ));
    support::eventually(WAIT, "the closed loop answered", || async {
        (answered.load(Ordering::Relaxed) >= 200).then_some(())
    })
    .await;
    let (start_count, start) = (answered.load(Ordering::Relaxed), std::time::Instant::now());
    support::eventually(WAIT, "1,500 more calls answered", || async {
        (answered.load(Ordering::Relaxed) >= start_count + 1_500).then_some(())
    })
    .await;
    let capacity =
        (answered.load(Ordering::Relaxed) - start_count) as f64 / start.elapsed().as_secs_f64();

    load.abort();
    let _ = load.await;
    assert_eq!(
        refused.load(Ordering::Relaxed),
        0,
        "a closed loop was refused"
    );
    assert_eq!(refusals_counted(http, "grpc", "limit"), 0.0);

    // Three times the capacity, for three seconds. A node that queued
    // every call would hold two seconds of work after one, and answer
    // most calls past their 1 s deadline; a shedding one answers those it
    // admits in time, and refuses sheddable calls before critical ones.
    let overload = tokio::spawn({
        let grpc = grpc.clone();
        async move { open_loop(&grpc, 2_000, 3.0 * capacity, 3.0).await }
    });
    // Once the node sheds, its queue is longer than a 100 µs deadline: a
    // call with one is refused before it waits, for that reason.
    support::eventually(WAIT, "shedding under the open loop", || async {
        (refusals_counted(http, "grpc", "limit") > 0.0).then_some(())
    })
    .await;
    let short = tonic::transport::Endpoint::from_shared(grpc.clone())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    // One such call every 10 ms while the open loop lasts, until one is
    // refused: the queue's length varies from one moment to the next.
    while !overload.is_finished() && refusals_counted(http, "grpc", "deadline") == 0.0 {
        let _ = spin_once(short.clone(), 2_000, "critical", Duration::from_micros(100)).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let [sheddable, critical] = overload.await.expect("the open loop");
    assert!(
        refusals_counted(http, "grpc", "deadline") > 0.0,
        "no call refused for a deadline shorter than the queue"
    );
    let log = node.stderr();
    let shedding: Vec<&str> = log.lines().filter(|l| l.contains("admission:")).collect();
    let reasons: Vec<String> = ["limit", "deadline", "pool"]
        .iter()
        .map(|r| format!("{r} {}", refusals_counted(http, "grpc", r)))
        .collect();
    let summary = format!(
        "sheddable {sheddable:?}, critical {critical:?}, capacity {capacity:.0}/s, refused by {}\n{}",
        reasons.join(", "),
        shedding.join("\n")
    );
    assert!(
        sheddable.refused + critical.refused > 0,
        "an open loop at 3x was not shed: {summary}"
    );
    assert!(sheddable.refused > critical.refused, "{summary}");
    let answered = sheddable.answered + critical.answered;
    let late = sheddable.late + critical.late;
    assert!(
        late * 10 <= answered,
        "admitted calls answered late: {summary}"
    );
    assert!(
        answered as f64 >= 0.4 * 3.0 * capacity,
        "the node answered too few: {summary}"
    );
    assert!(refusals_counted(http, "grpc", "limit") > 0.0);

    // Health checks pass whatever the load, and a burst is admitted whole
    // once the queue is gone.
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

/// HTTP alike: 32 clients on a node held to one CPU, each sending its next
/// request of 2 ms of CPU when the last is answered, are a closed loop:
/// none gets a 503, and the admin endpoints answer meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_loop_of_http_clients_is_refused_nothing() {
    let etcd = Etcd::start();
    let (node, _, http) = pinned_node(&etcd, "fault_node", "busy-http");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..32)
        .map(|_| {
            let (stop, answered) = (stop.clone(), answered.clone());
            std::thread::spawn(move || {
                let mut other = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let reply = support::dashboard::get(http, "/v1/spin?micros=2000");
                    match reply.status {
                        200 => {
                            answered.fetch_add(1, Ordering::Relaxed);
                        }
                        status => other.push(format!("{status} {}", reply.body)),
                    }
                }
                other
            })
        })
        .collect();
    support::eventually(WAIT, "1,000 requests answered", || async {
        (answered.load(Ordering::Relaxed) >= 1_000).then_some(())
    })
    .await;
    let health = tokio::task::spawn_blocking(move || support::dashboard::get(http, "/healthz"));
    let health = health.await.expect("health task");
    stop.store(true, Ordering::Relaxed);
    let mut other = Vec::new();
    for client in clients {
        other.extend(client.join().expect("client thread"));
    }
    assert_eq!(health.status, 200);
    assert!(other.is_empty(), "not answered: {other:?}");
    assert_eq!(refusals_counted(http, "http", "limit"), 0.0);
    drop(node);
}

/// Handlers that wait on I/O (here `Sleep`, as a call to another node or a
/// database waits) are no queue, however many run. A node answers two
/// callers of a 20 ms handler; then 62 more join, one every 4 ms, as the
/// clients of a fleet start: a closed loop whose calls in flight grow for
/// a quarter of a second while the time in the node stays at 20 ms. A
/// plain tonic client, which retries nothing, gets every call answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_of_handlers_waiting_on_io_ramping_in_are_refused_nothing() {
    let etcd = Etcd::start();
    let (node, grpc, http) = pinned_node(&etcd, "echo_node", "io-bound");
    let channel = tonic::transport::Endpoint::from_shared(grpc)
        .expect("url")
        .connect()
        .await
        .expect("connect");
    // The ramp starts once the first two callers made 50 calls (half a
    // second of a light load).
    let (warm, warmed) = tokio::sync::watch::channel(0usize);
    let warm = Arc::new(warm);
    let callers: Vec<_> = (0..64u64)
        .map(|i| {
            let mut client = EchoClient::new(channel.clone());
            let (warm, mut warmed) = (warm.clone(), warmed.clone());
            tokio::spawn(async move {
                if i >= 2 {
                    let _ = warmed.wait_for(|n| *n >= 50).await;
                    tokio::time::sleep(Duration::from_millis(4 * (i - 2))).await;
                }
                let mut failed = Vec::new();
                for _ in 0..60 {
                    match client.sleep(SleepRequest { millis: 20 }).await {
                        Ok(_) => warm.send_modify(|n| *n += 1),
                        Err(status) => failed.push(status.code()),
                    }
                }
                failed
            })
        })
        .collect();
    let mut failed = Vec::new();
    for caller in callers {
        failed.extend(caller.await.expect("caller task"));
    }
    assert!(
        failed.is_empty(),
        "{} of 3,840 calls failed: {:?}",
        failed.len(),
        failed.iter().take(5).collect::<Vec<_>>()
    );
    assert_eq!(refusals_counted(http, "grpc", "limit"), 0.0);
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

/// A kit client calling a node that refuses every call throttles itself:
/// after its first few refusals, most calls fail at the client and never
/// reach the node (the SRE book's adaptive throttling), so a client that
/// keeps calling costs a shedding node little. The node's one slot is held
/// by a long call from a plain tonic client; it refuses the rest at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kit_client_throttles_itself_against_a_node_that_refuses_everything() {
    let etcd = Etcd::start();
    let url = etcd.url().to_string();
    let mut args = quick_node_args(&url, "full");
    args.extend(["--http-listen", "127.0.0.1:0"]);
    let env = [
        ("SVCKIT_RPC_ADMISSION", "static"),
        ("SVCKIT_RPC_POOL_SIZE", "1"),
        ("SVCKIT_RPC_POOL_WAIT", "0s"),
    ];
    let (node, addr) = Proc::start_example("echo_node", &args, &env);
    let http = http_addr(&node);
    let mut holder = EchoClient::new(
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("url")
            .connect()
            .await
            .expect("connect"),
    );
    let held = tokio::spawn(async move { holder.sleep(SleepRequest { millis: 60_000 }).await });
    support::eventually(WAIT, "the slot held", || async {
        (node.stderr().contains("sleep started")).then_some(())
    })
    .await;

    let rpc = rpc_for(&etcd).await;
    let topic = Target::topic("echo");
    rpc.wait_for_nodes(&topic, 1, WAIT)
        .await
        .expect("the node seen");
    let mut client = EchoClient::new(rpc.channel(topic));
    const CALLS: usize = 2_000;
    for _ in 0..CALLS {
        let status = client
            .sleep(SleepRequest { millis: 0 })
            .await
            .expect_err("no call is answered");
        assert_eq!(status.code(), Code::Unavailable, "{status}");
    }
    let throttled = rpc.stats().throttled;
    let refused = refusals_counted(http, "grpc", "pool");
    eprintln!("{CALLS} calls: {throttled} failed at the client, {refused} refused by the node");
    assert_eq!(
        throttled as f64 + refused,
        CALLS as f64,
        "every call either throttled or refused"
    );
    assert!(
        refused <= CALLS as f64 / 10.0,
        "{refused} of {CALLS} calls reached the refusing node"
    );
    held.abort();
    drop(node);
}
