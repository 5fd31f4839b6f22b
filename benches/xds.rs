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
//!   call lands there (`tests/py/xds_client.py`);
//! - with grpcio calling a topic balanced by weighted round robin, the time
//!   from a costly node's first ORCA load report to its share of calls
//!   falling below a fifth;
//! - the size of `GET /config_dump` with one more stream subscribed to
//!   1,000 topics, and how long it takes.
//!
//! Run it with `scripts/bench-xds`; `XDS_STREAMS` and `XDS_ROUNDS` change
//! the stream count (1,000) and the rounds (5).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use futures::StreamExt;
use prost::Message;
use svckit::servicegroup::{self, Event, Membership, Registry};
use tokio::sync::mpsc;

#[path = "../tests/support/mod.rs"]
mod support;

use support::etcd::Etcd;
use support::node::{quick_node_args, Proc};
use support::xds::{Lang, XdsClient};

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
    // Topic `wrr` is balanced by weighted round robin (the ORCA rounds).
    let dir = tempfile::tempdir().expect("temp dir");
    let policies = dir.path().join("policies.toml");
    std::fs::write(
        &policies,
        "[topic.wrr]\nbalance = \"weighted_round_robin\"\n",
    )
    .expect("policies");
    let mut xds = Proc::cli(&[
        "xds",
        "--registry",
        &url,
        "--listen",
        "127.0.0.1:0",
        "--policies",
        policies.to_str().expect("a UTF-8 path"),
    ]);
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

    let bootstrap = dir.path().join("bootstrap.json");
    let config = serde_json::json!({
        "xds_servers": [{"server_uri": addr, "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}],
        "node": {"id": "bench", "locality": {}},
    });
    std::fs::write(&bootstrap, config.to_string()).expect("bootstrap");
    let mut py = python_rounds(&url, &bootstrap, &registry, rounds).await;
    let mut orca = orca_rounds(&url, &bootstrap, rounds).await;
    let (dump_kib, dump_ms) = dump_at_topics(&registry, &addr, 1_000).await;
    println!(
        "config_dump topics=1000 streams={} kib={dump_kib:.0} ms={dump_ms:.1}",
        streams + 1
    );
    println!(
        "xds_summary streams={streams} rss_streams_mib={:.1} push_cpu_ms={} all_streams_ms={} grpcio_first_call_ms={} orca_first_report_to_shift_ms={} dump_1000_topics_kib={dump_kib:.0}",
        busy_rss / 1024.0,
        mmm(&mut cpu_ms),
        mmm(&mut spread),
        mmm(&mut py),
        mmm(&mut orca)
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

/// Opens an ADS stream on `client` subscribed to the listener, cluster and
/// endpoints of `names`: where to send the next requests, and the responses.
async fn subscribe(
    client: &mut AggregatedDiscoveryServiceClient<tonic::transport::Channel>,
    names: &[String],
) -> (
    mpsc::UnboundedSender<DiscoveryRequest>,
    tonic::Streaming<DiscoveryResponse>,
) {
    let (requests, rx) = mpsc::unbounded_channel();
    for type_url in TYPES {
        let _ = requests.send(DiscoveryRequest {
            type_url: type_url.into(),
            resource_names: names.to_vec(),
            ..Default::default()
        });
    }
    let responses = client
        .stream_aggregated_resources(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
        .await
        .expect("open the stream")
        .into_inner();
    (requests, responses)
}

/// The ACK of `response`, as a gRPC client sends it.
fn ack(response: &DiscoveryResponse, names: &[String]) -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: response.type_url.clone(),
        resource_names: names.to_vec(),
        version_info: response.version_info.clone(),
        response_nonce: response.nonce.clone(),
        ..Default::default()
    }
}

/// One ADS client on its own connection: subscribes to topic `bulk`,
/// ACKs everything, and reports each EDS response's endpoint count.
async fn stream(addr: String, id: usize, arrivals: mpsc::UnboundedSender<(usize, usize, Instant)>) {
    let mut client = match AggregatedDiscoveryServiceClient::connect(format!("http://{addr}")).await
    {
        Ok(c) => c,
        Err(e) => panic!("stream {id}: connect: {e}"),
    };
    let names = ["bulk".to_string()];
    let (requests, mut responses) = subscribe(&mut client, &names).await;
    while let Some(Ok(response)) = responses.next().await {
        let now = Instant::now();
        let _ = requests.send(ack(&response, &names));
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
async fn python_rounds(
    url: &str,
    bootstrap: &Path,
    registry: &Registry,
    rounds: usize,
) -> Vec<f64> {
    let mut watch = registry.watch(Some("echo")).await.expect("watch");
    let (_seed, _) = Proc::start_example("echo_node", &quick_node_args(url, "seed"), &[]);
    let mut client = XdsClient::start(Lang::Python, bootstrap);
    client.command("start");
    let mut figures = Vec::new();
    for round in 0..rounds {
        let host = format!("j{round}");
        let (mut node, _) = Proc::start_example("echo_node", &quick_node_args(url, &host), &[]);
        let joined = loop {
            match tokio::time::timeout(WAIT, watch.next()).await {
                Ok(Some(Ok(Event::Join(m)))) if m.record.advert.host == host => break unix_now(),
                Ok(Some(Ok(_))) => {}
                other => panic!("watch: {other:?}"),
            }
        };
        let first = loop {
            let seen = client.command("take");
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
    figures
}

/// Weighted round robin from ORCA reports: topic `wrr` has two nodes whose
/// calls cost 1 ms of CPU and one whose calls cost 3 ms. Each round a new
/// grpcio client calls it in a loop; the figure is the time from the
/// costly node's first load report on the client's stream (its debug log)
/// until a 100 ms window of the client's calls gives it less than a fifth
/// of them (round robin gives it a third).
async fn orca_rounds(url: &str, bootstrap: &Path, rounds: usize) -> Vec<f64> {
    let mut nodes = Vec::new();
    for (host, micros) in [("w1", "1000"), ("w2", "1000"), ("wcostly", "3000")] {
        let mut args = quick_node_args(url, host);
        args.extend(["--topic", "wrr"]);
        let env = [
            ("ECHO_SPIN_US", micros),
            ("SVCKIT_LOG_LEVEL", "info,svckit::service::orca=debug"),
        ];
        nodes.push(Proc::start_example("echo_node", &args, &env).0);
    }
    const FIRST: &str = "first load report of a stream";
    let mut figures = Vec::new();
    for round in 0..rounds {
        let before = nodes[2].stderr().matches(FIRST).count();
        let mut client = XdsClient::start_with(Lang::Python, bootstrap, &[("XDS_TOPIC", "wrr")]);
        client.command("start");
        let reported = loop {
            let log = nodes[2].stderr();
            if log.matches(FIRST).count() > before {
                let line = log.lines().rfind(|l| l.contains(FIRST)).unwrap_or_default();
                let ms = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("unix_ms="))
                    .and_then(|v| v.parse::<f64>().ok())
                    .expect("unix_ms in the first report's log line");
                break ms / 1000.0;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let shifted = loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let seen = client.command("take");
            let hosts: BTreeMap<String, u64> =
                serde_json::from_value(seen["hosts"].clone()).expect("hosts");
            let all: u64 = hosts.values().sum();
            let costly = hosts.get("wcostly").copied().unwrap_or(0);
            if all >= 20 && (costly as f64) < all as f64 / 5.0 {
                break unix_now();
            }
        };
        client.command("stop");
        let ms = (shifted - reported) * 1000.0;
        println!("orca round={round} first_report_to_shifted_share_ms={ms:.0}");
        figures.push(ms);
    }
    figures
}

/// `GET /config_dump` with one more ADS stream subscribed to `topics`
/// topics of one member each: its size in KiB and how long it took.
async fn dump_at_topics(registry: &Registry, addr: &str, topics: usize) -> (f64, f64) {
    let mut members = Vec::with_capacity(topics);
    for i in 0..topics {
        let reg = support::registration_at(&format!("t{i}"), "m", "http://127.0.0.1:20200");
        members.push(registry.join(reg).await.expect("join"));
    }
    let names: Vec<String> = (0..topics).map(|i| format!("t{i}")).collect();
    let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    let (requests, mut responses) = subscribe(&mut client, &names).await;
    let mut endpoints = std::collections::BTreeSet::new();
    while endpoints.len() < topics {
        let response = tokio::time::timeout(WAIT, responses.next())
            .await
            .expect("every topic's endpoints")
            .expect("the stream runs")
            .expect("a response");
        let _ = requests.send(ack(&response, &names));
        if response.type_url == TYPES[2] {
            for any in &response.resources {
                if let Ok(cla) = ClusterLoadAssignment::decode(any.value.as_slice()) {
                    endpoints.insert(cla.cluster_name);
                }
            }
        }
    }
    let addr: std::net::SocketAddr = addr.parse().expect("address");
    let started = Instant::now();
    let dump = tokio::task::spawn_blocking(move || support::dashboard::get(addr, "/config_dump"))
        .await
        .expect("dump");
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(dump.status, 200);
    drop(members);
    (dump.body.len() as f64 / 1024.0, ms)
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
