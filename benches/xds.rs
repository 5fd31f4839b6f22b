//! The xDS control plane under many clients: one `svckit xds` process
//! (release build) over a real etcd, 1,000 ADS streams on their own
//! connections, each subscribed to a topic's listener, cluster and
//! endpoints and ACKing every response, as a gRPC client does.
//!
//! Prints, in rounds that alternate a join and a leave of a member:
//! - the control plane's RSS idle and with the streams open;
//! - the CPU it spends on one push to every stream (all threads, from
//!   `/proc/PID/task/*/schedstat`);
//! - the time from the registry's answer to the change until the first,
//!   median, 99th-percentile and last stream holds the new endpoints;
//! - with Python grpcio's own xDS client calling `xds:///echo` in a loop,
//!   the time from the watch seeing a new echo_node join until its first
//!   call lands there (`tests/py/xds_client.py`).
//!
//! Run it with `scripts/bench-xds`; `XDS_STREAMS` and `XDS_ROUNDS` change
//! the stream count (1,000) and the rounds (5).

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use futures::StreamExt;
use prost::Message;
use svckit::servicegroup::{self, Event, Membership, Registry};
use tokio::sync::mpsc;

#[path = "../tests/support/mod.rs"]
mod support;

use support::etcd::Etcd;
use support::node::{quick_node_args, Proc};

const TYPES: [&str; 3] = [
    "type.googleapis.com/envoy.config.listener.v3.Listener",
    "type.googleapis.com/envoy.config.cluster.v3.Cluster",
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
];
const WAIT: Duration = Duration::from_secs(60);

fn main() {
    let streams: usize = env_or("XDS_STREAMS", 1_000);
    let rounds: usize = env_or("XDS_ROUNDS", 5);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(streams, rounds));
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn run(streams: usize, rounds: usize) {
    let etcd = Etcd::start();
    let url = etcd.url().to_string();
    let registry = servicegroup::connect(&etcd.url(), &support::options())
        .await
        .expect("connect to etcd");
    // A topic of 10 members for the streams (their endpoints need not
    // answer: only the control plane is measured).
    let mut members = Vec::new();
    for i in 0..10 {
        let reg = support::registration_at(
            "bulk",
            &format!("m{i}"),
            &format!("http://127.0.0.1:{}", 20_000 + i),
        );
        members.push(registry.join(reg).await.expect("join"));
    }
    let mut xds = Proc::cli(&["xds", "--registry", &url, "--listen", "127.0.0.1:0"]);
    support::poll_until(WAIT, "svckit xds to listen", || {
        xds.stdout().contains("listening on")
    });
    let addr = xds
        .stdout()
        .lines()
        .find_map(|l| l.strip_prefix("listening on http://").map(str::to_string))
        .expect("bound address");
    let pid = xds.pid();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_rss = rss_kib(pid);

    let (tx, mut arrivals) = mpsc::unbounded_channel::<(usize, usize, Instant)>();
    let opened = Instant::now();
    for id in 0..streams {
        tokio::spawn(stream(addr.clone(), id, tx.clone()));
    }
    // Every stream holds the first endpoints.
    let mut first = vec![false; streams];
    let mut ready = 0;
    while ready < streams {
        let (id, endpoints, _) = tokio::time::timeout(WAIT, arrivals.recv())
            .await
            .expect("every stream gets its first endpoints")
            .expect("streams run");
        if endpoints == 10 && !first[id] {
            first[id] = true;
            ready += 1;
        }
    }
    let open_s = opened.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let busy_rss = rss_kib(pid);
    println!(
        "xds_streams={streams} open_all_s={open_s:.2} rss_idle_mib={:.1} rss_streams_mib={:.1} kib_per_stream={:.1}",
        idle_rss / 1024.0,
        busy_rss / 1024.0,
        (busy_rss - idle_rss) / streams as f64
    );

    let mut cpu_ms = Vec::new();
    let mut spread = Vec::new();
    let mut extra: Option<Box<dyn Membership>> = None;
    for round in 0..rounds {
        let want = if extra.is_some() { 10 } else { 11 };
        let cpu0 = cpu_ns(pid);
        let changed = if let Some(member) = extra.take() {
            member.leave().await.expect("leave");
            Instant::now()
        } else {
            let reg = support::registration_at("bulk", "extra", "http://127.0.0.1:20100");
            extra = Some(registry.join(reg).await.expect("join"));
            Instant::now()
        };
        let mut times = Vec::with_capacity(streams);
        while times.len() < streams {
            let (_, endpoints, at) = tokio::time::timeout(WAIT, arrivals.recv())
                .await
                .expect("every stream gets the push")
                .expect("streams run");
            if endpoints == want {
                times.push(at.saturating_duration_since(changed).as_secs_f64() * 1000.0);
            }
        }
        // The ACKs that follow are part of a push's cost.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let cpu = (cpu_ns(pid) - cpu0) as f64 / 1e6;
        times.sort_by(f64::total_cmp);
        let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
        println!(
            "round={round} change={} push_cpu_ms={cpu:.1} first_ms={:.1} p50_ms={:.1} p99_ms={:.1} last_ms={:.1}",
            if want == 11 { "join" } else { "leave" },
            at(0.0),
            at(0.5),
            at(0.99),
            at(1.0)
        );
        cpu_ms.push(cpu);
        spread.push(at(1.0));
    }

    let py = python_rounds(&url, &addr, &registry, rounds).await;
    println!(
        "xds_summary streams={streams} rss_streams_mib={:.1} push_cpu_ms={} all_streams_ms={} grpcio_first_call_ms={}",
        busy_rss / 1024.0,
        mmm(&mut cpu_ms),
        mmm(&mut spread),
        mmm(&mut py.clone())
    );
    drop(members);
    xds.signal(nix::sys::signal::Signal::SIGTERM);
    let _ = xds.wait_exit(WAIT);
}

/// `min/median/max`.
fn mmm(values: &mut [f64]) -> String {
    if values.is_empty() {
        return "-".into();
    }
    values.sort_by(f64::total_cmp);
    format!(
        "{:.1}/{:.1}/{:.1}",
        values[0],
        values[values.len() / 2],
        values[values.len() - 1]
    )
}

/// One ADS client on its own connection: subscribes to topic `bulk`,
/// ACKs everything, and reports each EDS response's endpoint count.
async fn stream(addr: String, id: usize, arrivals: mpsc::UnboundedSender<(usize, usize, Instant)>) {
    let mut client = match AggregatedDiscoveryServiceClient::connect(format!("http://{addr}")).await
    {
        Ok(c) => c,
        Err(e) => panic!("stream {id}: connect: {e}"),
    };
    let (requests, rx) = mpsc::unbounded_channel();
    for type_url in TYPES {
        let _ = requests.send(DiscoveryRequest {
            type_url: type_url.into(),
            resource_names: vec!["bulk".into()],
            ..Default::default()
        });
    }
    let mut responses = client
        .stream_aggregated_resources(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
        .await
        .expect("open the stream")
        .into_inner();
    while let Some(Ok(response)) = responses.next().await {
        let now = Instant::now();
        let _ = requests.send(DiscoveryRequest {
            type_url: response.type_url.clone(),
            resource_names: vec!["bulk".into()],
            version_info: response.version_info.clone(),
            response_nonce: response.nonce.clone(),
            ..Default::default()
        });
        if response.type_url == TYPES[2] {
            let endpoints = response
                .resources
                .first()
                .and_then(|any| ClusterLoadAssignment::decode(any.value.as_slice()).ok())
                .map_or(0, |cla| {
                    cla.endpoints.iter().map(|l| l.lb_endpoints.len()).sum()
                });
            if arrivals.send((id, endpoints, now)).is_err() {
                return;
            }
        }
    }
}

/// Python grpcio calling `xds:///echo` in a loop: for each round a new
/// echo_node joins, and the figure is the time from the watch seeing the
/// join to its first call landing there.
async fn python_rounds(url: &str, addr: &str, registry: &Registry, rounds: usize) -> Vec<f64> {
    let probe = Command::new("python3")
        .args(["-c", "import grpc, grpc_tools"])
        .output();
    if !probe.is_ok_and(|p| p.status.success()) {
        println!("grpcio: not measured: pip install -r tests/py/requirements.txt");
        return Vec::new();
    }
    let mut watch = registry.watch(Some("echo")).await.expect("watch");
    let (_seed, _) = Proc::start_example("echo_node", &quick_node_args(url, "seed"), &[]);
    let dir = tempfile::tempdir().expect("temp dir");
    let bootstrap = dir.path().join("bootstrap.json");
    let config = serde_json::json!({
        "xds_servers": [{"server_uri": addr, "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}],
        "node": {"id": "bench", "locality": {}},
    });
    std::fs::write(&bootstrap, config.to_string()).expect("bootstrap");
    let mut child = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/py/xds_client.py"
        ))
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/proto"))
        .env("GRPC_XDS_BOOTSTRAP", &bootstrap)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut stdin = child.stdin.take().expect("stdin");
    let lines = Arc::new(std::sync::Mutex::new(
        BufReader::new(child.stdout.take().expect("stdout")).lines(),
    ));
    let read =
        |lines: &Arc<std::sync::Mutex<std::io::Lines<BufReader<std::process::ChildStdout>>>>| {
            let line = lines.lock().unwrap().next().expect("a line").expect("read");
            serde_json::from_str::<serde_json::Value>(&line).expect("json")
        };
    tokio::task::block_in_place(|| read(&lines));
    tokio::task::block_in_place(|| {
        writeln!(stdin, "start").expect("write");
        read(&lines)
    });
    let mut figures = Vec::new();
    for round in 0..rounds {
        let host = format!("j{round}");
        let (mut node, _) = Proc::start_example("echo_node", &quick_node_args(url, &host), &[]);
        let joined = loop {
            match tokio::time::timeout(WAIT, watch.next()).await {
                Ok(Some(Ok(Event::Join(m)))) if m.record.host == host => break unix_now(),
                Ok(Some(Ok(_))) => {}
                other => panic!("watch: {other:?}"),
            }
        };
        let first = loop {
            let seen = tokio::task::block_in_place(|| {
                writeln!(stdin, "take").expect("write");
                read(&lines)
            });
            if let Some(t) = seen["first"][&host].as_f64() {
                break t;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let ms = (first - joined) * 1000.0;
        println!("grpcio round={round} first_call_ms={ms:.0}");
        figures.push(ms);
        node.signal(nix::sys::signal::Signal::SIGTERM);
        let _ = node.wait_exit(WAIT);
    }
    let _ = child.kill();
    let _ = child.wait();
    figures
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn rss_kib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0.0)
}

/// CPU time of every thread of `pid`, in ns.
fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|t| t.ok())
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}
