//! Fleet simulator: N simulated nodes on a 3-member etcd cluster on
//! loopback, registered by the library's own code (real leases,
//! keep-alives, records and watches), many per process, with a watcher and
//! a client of the fleet's topic beside them.
//!
//! Run it with `scripts/bench-fleet [--quick]`. For each N it prints one
//! `name=value …` line per figure, then one machine-readable line:
//! `fleet_nodes=N join_s=… peak_etcd_rps=… steady_etcd_rps=… …`.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{stream, StreamExt};
use svckit::rpc::{Rpc, Target};
use svckit::servicegroup::etcd::EtcdDriver;
use svckit::servicegroup::{
    connect, Advert, Endpoints, Event, Membership, Registry, RegistryOptions, RegistryUrl,
};

#[path = "../tests/support/mod.rs"]
mod support;

/// The echo API's stubs.
mod echo {
    #[allow(dead_code, clippy::all)]
    pub mod pb {
        tonic::include_proto!("svckit.examples.echo.v1");
    }
}

use echo::pb::echo_client::EchoClient;
use echo::pb::EchoRequest;

use support::etcd::Cluster;

/// Registry connections the simulated nodes share. Each node is a process
/// of its own to the registry (its own lease, as a real node has), but
/// 10,000 connections would measure this machine's sockets, not etcd.
const CONNECTIONS: usize = 16;
/// Joins in flight at once during a cold start.
const JOINS_IN_FLIGHT: usize = 256;
/// Simulated nodes killed (their leases left to expire) per run.
const KILLED: usize = 100;
const STEADY_WINDOW: Duration = Duration::from_secs(10);
/// How long the bench waits for the fleet to register again after a full
/// etcd restart.
const REREGISTER_BOUND: Duration = Duration::from_secs(60);
/// The kit's defaults; `FLEET_DOWN_TIME_S` sets another down time (the
/// lease TTL), and so another keep-alive interval (0.4 of it).
const REPORT_INTERVAL: Duration = Duration::from_secs(1);
const DOWN_TIME: Duration = Duration::from_secs(5);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--client-probe") {
        return client_probe(&args[at + 1], &args[at + 2], &args[at + 3], &args[at + 4]);
    }
    let quick = args.iter().any(|a| a == "--quick");
    let sizes: Vec<usize> = match std::env::var("FLEET_SIZES") {
        Ok(list) => list
            .split(',')
            .filter_map(|n| n.trim().parse().ok())
            .collect(),
        Err(_) if quick => vec![1_000, 10_000],
        Err(_) => vec![1_000, 5_000, 10_000],
    };
    let soak = match std::env::var("FLEET_SOAK_S")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        Some(secs) => Duration::from_secs(secs),
        None if quick => Duration::from_secs(30),
        None => Duration::from_secs(120),
    };
    let down_time = std::env::var("FLEET_DOWN_TIME_S")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(DOWN_TIME, Duration::from_secs);
    // RUST_LOG=svckit=warn shows what the simulated nodes go through.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "off".into()),
        )
        .try_init();
    // etcd's own raft timing, as a user's cluster runs (the tests use a
    // quicker one, which a starved machine turns into elections).
    let mut cluster = Cluster::start_timed((100, 1000));
    let echo = EchoServer::start();
    println!(
        "etcd_members=3 cores={} soak_s={} down_time_s={}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        soak.as_secs(),
        down_time.as_secs()
    );
    // The simulated nodes stand for thousands of other machines: their
    // threads run at a lower priority (nice 10), so that the CPU they take
    // on this machine goes to the etcd members first, as it would if etcd
    // ran on machines of its own. The members, the echo server and the
    // client probe are started from the main thread, at normal priority.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .on_thread_start(|| {
            // SAFETY: setpriority only reads its arguments; on Linux, who 0
            // with PRIO_PROCESS is the calling thread.
            unsafe { libc::setpriority(libc::PRIO_PROCESS as _, 0, 10) };
        })
        .enable_all()
        .build()
        .expect("runtime");
    for n in sizes {
        let figures = runtime.block_on(run(&mut cluster, &echo.url, n, soak, down_time));
        println!("{figures}");
    }
}

#[derive(Default)]
struct Figures {
    nodes: usize,
    join_s: f64,
    join_retries: usize,
    peak_rps: f64,
    steady_rps: f64,
    leader_cpu: f64,
    leader_rss_mib: f64,
    detect_p50_s: f64,
    detect_p99_s: f64,
    false_down: usize,
    leader_kill_s: f64,
    reregister_s: f64,
    client_rss_mib: f64,
    client_load_s: f64,
    call_us: f64,
    raw_call_us: f64,
    list_s: f64,
    /// Leader elections the cluster held on its own (not the bench's
    /// leader kill) from the cold start to the leader kill.
    elections: f64,
    /// The members' mean WAL fsync over the same span, in ms.
    fsync_ms: f64,
    /// Leases etcd granted during the cold start: N when no grant was lost
    /// and made again.
    leases_granted: f64,
    /// Per join the watch saw during the cold start, the time from the
    /// writer's stamp (`updated_at`) to the watch applying it: what
    /// `svckit_membership_lag_seconds` measures.
    lags: Vec<f64>,
}

/// The time from a member's record being written to now.
fn lag_of(m: &svckit::servicegroup::Member) -> Option<f64> {
    let written = humantime::parse_rfc3339_weak(&m.record.updated_at).ok()?;
    Some(
        std::time::SystemTime::now()
            .duration_since(written)
            .unwrap_or_default()
            .as_secs_f64(),
    )
}

impl std::fmt::Display for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "fleet_nodes={} join_s={:.1} join_retries={} peak_etcd_rps={:.0} steady_etcd_rps={:.0} \
             steady_rps_per_node={:.2} leader_cpu={:.2} leader_rss_mib={:.0} \
             detect_p50_s={:.2} detect_p99_s={:.2} false_down={} leader_kill_s={:.1} reregister_s={:.1} \
             client_rss_mib={:.1} client_load_s={:.2} call_us={:.0} raw_call_us={:.0} list_s={:.2} \
             elections={:.0} fsync_ms={:.1} leases_granted={:.0} lag_p50_s={:.3} lag_p99_s={:.3}",
            self.nodes,
            self.join_s,
            self.join_retries,
            self.peak_rps,
            self.steady_rps,
            self.steady_rps / self.nodes.max(1) as f64,
            self.leader_cpu,
            self.leader_rss_mib,
            self.detect_p50_s,
            self.detect_p99_s,
            self.false_down,
            self.leader_kill_s,
            self.reregister_s,
            self.client_rss_mib,
            self.client_load_s,
            self.call_us,
            self.raw_call_us,
            self.list_s,
            self.elections,
            self.fsync_ms,
            self.leases_granted,
            percentile(&sorted(&self.lags), 0.50),
            percentile(&sorted(&self.lags), 0.99),
        )
    }
}

fn sorted(values: &[f64]) -> Vec<f64> {
    let mut values = values.to_vec();
    values.sort_by(f64::total_cmp);
    values
}

/// Every simulated node advertises the one echo server of the run: a
/// client's calls through the topic reach a real server, whichever node
/// its balancer picks.
fn advert(topic: &str, i: usize, grpc: &str) -> Advert {
    let host = format!("h{i:05}");
    let endpoints = Endpoints::new(Some(grpc.to_string()), None);
    Advert::new(topic, host, "fleet_node", "1.0.0", endpoints, vec![])
}

async fn run(
    cluster: &mut Cluster,
    echo_url: &str,
    n: usize,
    soak: Duration,
    down_time: Duration,
) -> Figures {
    let url = cluster.url();
    let topic = format!("fleet{n}");
    let mut options = RegistryOptions::default();
    options.timeout = Duration::from_secs(10);
    let mut drivers = Vec::new();
    for _ in 0..CONNECTIONS {
        drivers.push(EtcdDriver::connect(&url, &options).await.expect("connect"));
    }
    let watcher = connect(&url, &options).await.expect("connect");
    let mut watch = watcher.watch(Some(&topic)).await.expect("watch");
    let endpoints: Vec<String> = cluster.members.iter().map(|m| m.endpoint()).collect();
    let mut figures = Figures {
        nodes: n,
        ..Figures::default()
    };

    // Cold start: every node joins, JOINS_IN_FLIGHT at a time. A join that
    // etcd did not answer in time is tried again after a random pause, as
    // a supervisor (or systemd restarting a node) would: counted.
    let sampler = RateSampler::start(endpoints.clone());
    let health_before = ClusterHealth::read(&endpoints);
    let started = Instant::now();
    let retried = AtomicUsize::new(0);
    let joins = stream::iter(0..n)
        .map(|i| {
            let registry: Registry = Arc::new(drivers[i % CONNECTIONS].as_another_process());
            let registration =
                advert(&topic, i, echo_url).registration(1, REPORT_INTERVAL, down_time);
            let host = registration.advert.host.clone();
            let retried = &retried;
            async move {
                loop {
                    match registry.join(registration.clone()).await {
                        Ok(member) => return (host, member),
                        Err(e) if e.kind() == svckit::ErrorKind::Unavailable => {
                            retried.fetch_add(1, Ordering::Relaxed);
                            let pause = Duration::from_secs(2).mul_f64(rand::random::<f64>());
                            tokio::time::sleep(pause).await;
                        }
                        Err(e) => panic!("a join: {e}"),
                    }
                }
            }
        })
        .buffer_unordered(JOINS_IN_FLIGHT)
        .collect::<HashMap<String, Box<dyn Membership>>>();
    // The watch is read while the nodes join, as a client would: each
    // join's lag is from its write to the watch applying it.
    let seen = async {
        let mut up = HashSet::new();
        let mut lags = Vec::with_capacity(n);
        while up.len() < n {
            match watch.next().await {
                Some(Ok(Event::Join(m))) => {
                    if let Some(lag) = lag_of(&m) {
                        lags.push(lag);
                    }
                    up.insert(m.record.advert.host.clone());
                }
                Some(Ok(_)) => {}
                other => panic!("the watch failed during the cold start: {other:?}"),
            }
        }
        lags
    };
    let (mut members, lags) = tokio::join!(joins, seen);
    figures.lags = lags;
    figures.join_retries = retried.load(Ordering::Relaxed);
    figures.join_s = started.elapsed().as_secs_f64();
    figures.leases_granted = ClusterHealth::read(&endpoints).since(&health_before).leases;
    figures.peak_rps = sampler.stop().await;
    eprintln!("fleet: {n} nodes up in {:.1}s", figures.join_s);

    // Steady state: etcd requests per second, and the busiest member's CPU.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = scrape_all(&endpoints);
    let cpu_before: Vec<f64> = cluster.members.iter().map(|m| cpu_secs(m.pid())).collect();
    tokio::time::sleep(STEADY_WINDOW).await;
    let after = scrape_all(&endpoints);
    let cpu_after: Vec<f64> = cluster.members.iter().map(|m| cpu_secs(m.pid())).collect();
    figures.steady_rps = (after - before) / STEADY_WINDOW.as_secs_f64();
    let (busiest, cpu) = cpu_after
        .iter()
        .zip(&cpu_before)
        .map(|(a, b)| (a - b) / STEADY_WINDOW.as_secs_f64())
        .enumerate()
        .fold(
            (0, 0.0),
            |best, (i, c)| if c > best.1 { (i, c) } else { best },
        );
    figures.leader_cpu = cpu;
    figures.leader_rss_mib = rss_mib(cluster.members[busiest].pid());
    eprintln!("fleet: steady {:.0} etcd requests/s", figures.steady_rps);

    // A client of the whole topic, in a process of its own.
    let probe = probe_client(&url, &topic, n, echo_url);
    figures.client_rss_mib = probe.field("client_rss_mib=");
    figures.client_load_s = probe.field("client_load_s=");
    figures.call_us = probe.field("call_us=");
    figures.raw_call_us = probe.field("raw_call_us=");
    figures.list_s = cli_list_secs(&url, &topic);

    // kill -9 of KILLED nodes: their heartbeats stop, their leases expire.
    let step = (n / KILLED).max(1);
    let victims: Vec<String> = (0..n)
        .step_by(step)
        .take(KILLED)
        .map(|i| format!("h{i:05}"))
        .collect();
    let killed_at = Instant::now();
    for host in &victims {
        drop(members.remove(host));
    }
    let victims: HashSet<String> = victims.into_iter().collect();
    let mut detected = Vec::new();
    let mut false_down = 0;
    let deadline = tokio::time::Instant::now() + down_time * 4;
    while detected.len() < victims.len() {
        match tokio::time::timeout_at(deadline, watch.next()).await {
            Ok(Some(Ok(Event::Leave(m)))) if victims.contains(&m.record.advert.host) => {
                detected.push(killed_at.elapsed().as_secs_f64());
            }
            Ok(Some(Ok(Event::Leave(_)))) => false_down += 1,
            Ok(Some(Ok(_))) => {}
            Ok(other) => panic!("the watch failed: {other:?}"),
            Err(_) => {
                eprintln!(
                    "fleet: only {} of {} kills seen",
                    detected.len(),
                    victims.len()
                );
                break;
            }
        }
    }
    detected.sort_by(f64::total_cmp);
    eprintln!("fleet: {} of {} kills seen", detected.len(), KILLED);
    figures.detect_p50_s = percentile(&detected, 0.50);
    figures.detect_p99_s = percentile(&detected, 0.99);

    // Soak: no live node may ever be seen down.
    let soak_end = tokio::time::Instant::now() + soak;
    while let Ok(event) = tokio::time::timeout_at(soak_end, watch.next()).await {
        match event {
            Some(Ok(Event::Leave(_))) => false_down += 1,
            Some(Ok(_)) => {}
            other => panic!("the watch failed during the soak: {other:?}"),
        }
    }
    figures.false_down = false_down;

    // kill -9 of the etcd leader: the others elect a new one, and every
    // node's lease outlives the election. Timed until every node has had a
    // keep-alive answered again; a node seen down meanwhile is a false down.
    eprintln!("fleet: soak done, {false_down} false downs; killing the etcd leader");
    let leader = (0..cluster.members.len())
        .find(|&i| is_leader(&endpoints[i]))
        .unwrap_or(0);
    let beats: HashMap<&String, Option<String>> = members
        .iter()
        .map(|(host, m)| (host, m.status().last_heartbeat))
        .collect();
    let health = ClusterHealth::read(&endpoints).since(&health_before);
    (figures.elections, figures.fsync_ms) = (health.elections, health.fsync_ms);
    let killed = Instant::now();
    cluster.members[leader].stop();
    let mut leader_downs = 0;
    loop {
        let waiting = members
            .iter()
            .filter(|(host, m)| m.status().last_heartbeat == beats[host])
            .count();
        if waiting == 0 {
            break;
        }
        if killed.elapsed() > REREGISTER_BOUND {
            eprintln!("fleet: {waiting} nodes without a heartbeat {REREGISTER_BOUND:?} after the leader kill");
            for (host, m) in members
                .iter()
                .filter(|(host, m)| m.status().last_heartbeat == beats[host])
                .take(5)
            {
                eprintln!("fleet: {host}: {:?}", m.status());
            }
            break;
        }
        if let Ok(Some(Ok(Event::Leave(_)))) =
            tokio::time::timeout(Duration::from_millis(200), watch.next()).await
        {
            leader_downs += 1;
        }
    }
    figures.leader_kill_s = killed.elapsed().as_secs_f64();
    cluster.members[leader].restart();
    figures.false_down += leader_downs;
    eprintln!(
        "fleet: every node kept alive {:.1}s after the leader kill, {leader_downs} seen down",
        figures.leader_kill_s
    );

    // A full etcd restart: every node registers again.
    eprintln!("fleet: restarting etcd");
    let restarted = Instant::now();
    cluster.restart_all();
    let registered = |m: &dyn Membership| {
        let s = m.status();
        s.reregistrations > 0 && s.state == svckit::servicegroup::RegistrationState::Registered
    };
    loop {
        let waiting = members.values().filter(|m| !registered(m.as_ref())).count();
        if waiting == 0 {
            break;
        }
        if restarted.elapsed() > REREGISTER_BOUND {
            eprintln!("fleet: {waiting} nodes not registered again after {REREGISTER_BOUND:?}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    figures.reregister_s = restarted.elapsed().as_secs_f64();
    eprintln!(
        "fleet: registered again {:.1}s after the restart",
        figures.reregister_s
    );

    // Leave, so that the next N starts from a quiet cluster.
    let leaves = stream::iter(members.into_values())
        .map(|m| async move {
            let _ = m.leave().await;
        })
        .buffer_unordered(JOINS_IN_FLIGHT)
        .collect::<Vec<()>>();
    leaves.await;
    figures
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let at = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[at.min(sorted.len() - 1)]
}

/// etcd requests received, over all members: unary calls and the messages
/// of streams (each keep-alive is one).
fn scrape_all(endpoints: &[String]) -> f64 {
    endpoints.iter().map(|e| scrape(e)).sum()
}

fn scrape(endpoint: &str) -> f64 {
    metrics(endpoint)
        .lines()
        .filter(|l| l.starts_with("grpc_server_msg_received_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// A member's /metrics text; empty when it does not answer.
fn metrics(endpoint: &str) -> String {
    let mut text = String::new();
    if let Ok(mut conn) = TcpStream::connect(endpoint) {
        let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = write!(conn, "GET /metrics HTTP/1.0\r\nHost: {endpoint}\r\n\r\n");
        let _ = conn.read_to_string(&mut text);
    }
    text
}

/// What tells an overloaded cluster: leader elections (the most any
/// member saw) and WAL fsyncs (over all members), as counters.
#[derive(Default)]
struct ClusterHealth {
    elections: f64,
    fsync_s: f64,
    fsyncs: f64,
    fsync_ms: f64,
    /// Leases granted (the most any member applied).
    leases: f64,
}

impl ClusterHealth {
    fn read(endpoints: &[String]) -> ClusterHealth {
        let mut health = ClusterHealth::default();
        for endpoint in endpoints {
            let text = metrics(endpoint);
            let value = |name: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
                    .unwrap_or(0.0)
            };
            health.elections = health
                .elections
                .max(value("etcd_server_leader_changes_seen_total "));
            health.leases = health
                .leases
                .max(value("etcd_debugging_lease_granted_total "));
            health.fsync_s += value("etcd_disk_wal_fsync_duration_seconds_sum ");
            health.fsyncs += value("etcd_disk_wal_fsync_duration_seconds_count ");
        }
        health
    }

    /// The change since `before`, with the mean fsync over it.
    fn since(&self, before: &ClusterHealth) -> ClusterHealth {
        let fsyncs = self.fsyncs - before.fsyncs;
        let fsync_s = self.fsync_s - before.fsync_s;
        ClusterHealth {
            elections: self.elections - before.elections,
            leases: self.leases - before.leases,
            fsync_s,
            fsyncs,
            fsync_ms: if fsyncs > 0.0 {
                fsync_s / fsyncs * 1e3
            } else {
                0.0
            },
        }
    }
}

/// Whether the member at `endpoint` leads the cluster, from its /metrics.
fn is_leader(endpoint: &str) -> bool {
    metrics(endpoint)
        .lines()
        .any(|l| l.trim() == "etcd_server_is_leader 1")
}

/// Samples the cluster's request rate every second until stopped; returns
/// the highest.
struct RateSampler {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::sync::oneshot::Receiver<f64>,
}

impl RateSampler {
    fn start(endpoints: Vec<String>) -> RateSampler {
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let (done, task) = tokio::sync::oneshot::channel();
        // A thread of its own, not the runtime's blocking pool: a bench that
        // panics must not wait for it at the runtime's shutdown.
        std::thread::spawn(move || {
            let mut last = scrape_all(&endpoints);
            let mut at = Instant::now();
            let mut peak: f64 = 0.0;
            let running = |stopped: &mut tokio::sync::oneshot::Receiver<()>| {
                matches!(
                    stopped.try_recv(),
                    Err(tokio::sync::oneshot::error::TryRecvError::Empty)
                )
            };
            while running(&mut stopped) {
                std::thread::sleep(Duration::from_secs(1));
                let now = scrape_all(&endpoints);
                peak = peak.max((now - last) / at.elapsed().as_secs_f64());
                (last, at) = (now, Instant::now());
            }
            let _ = done.send(peak);
        });
        RateSampler { stop, task }
    }

    async fn stop(self) -> f64 {
        let _ = self.stop.send(());
        self.task.await.unwrap_or(0.0)
    }
}

fn cpu_secs(pid: Option<u32>) -> f64 {
    let Some(pid) = pid else { return 0.0 };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    // utime and stime, fields 14 and 15 of the whole line.
    let ticks: f64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum())
        .unwrap_or(0.0);
    ticks / 100.0
}

fn rss_mib(pid: Option<u32>) -> f64 {
    let Some(pid) = pid else { return 0.0 };
    status_kib(pid, "VmRSS:") / 1024.0
}

fn status_kib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0.0)
}

/// What the client probe printed.
struct Probe(String);

impl Probe {
    fn field(&self, name: &str) -> f64 {
        self.0
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.parse().ok())
            .unwrap_or(f64::NAN)
    }
}

/// Runs this binary as a client of `topic` alone: its peak RSS, the time
/// its first channel took to know the topic, and its calls' cost.
fn probe_client(url: &RegistryUrl, topic: &str, n: usize, echo_url: &str) -> Probe {
    let exe = std::env::current_exe().expect("this bench");
    let out = Command::new(exe)
        .args([
            "--client-probe",
            &url.to_string(),
            topic,
            &n.to_string(),
            echo_url,
        ])
        .output()
        .expect("run the client probe");
    if !out.status.success() {
        eprintln!(
            "fleet: client probe failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Probe(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Sequential calls per round of the call-cost comparison.
const PROBE_CALLS: usize = 2_000;

/// The client probe's process: one `Rpc`, one channel to the topic. Its
/// calls through the topic (pick among its subset of N nodes, then the
/// call) are timed against a plain tonic channel to the same echo server,
/// 5 rounds alternating; the medians are printed.
fn client_probe(url: &str, topic: &str, n: &str, echo_url: &str) {
    let n: usize = n.parse().expect("a node count");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let url = RegistryUrl::parse(url).expect("registry URL");
        let registry: Registry = connect(&url, &RegistryOptions::default())
            .await
            .expect("connect");
        let started = Instant::now();
        let rpc = Rpc::new(registry).await.expect("client");
        let target = Target::topic(topic);
        let channel = rpc.channel(target.clone());
        rpc.wait_for_nodes(&target, n.min(32), Duration::from_secs(120))
            .await
            .expect("the topic's nodes");
        let loaded = started.elapsed().as_secs_f64();
        let stats = rpc.stats();
        let rss = status_kib(std::process::id(), "VmHWM:") / 1024.0;
        let raw = tonic::transport::Endpoint::from_shared(echo_url.to_string())
            .expect("echo URL")
            .tcp_nodelay(true)
            .connect()
            .await
            .expect("connect to the echo server");
        let mut kit = EchoClient::new(channel);
        let mut thin = EchoClient::new(raw);
        let (mut kit_us, mut raw_us) = (Vec::new(), Vec::new());
        for _ in 0..5 {
            kit_us.push(time_calls(&mut kit).await);
            raw_us.push(time_calls(&mut thin).await);
        }
        kit_us.sort_by(f64::total_cmp);
        raw_us.sort_by(f64::total_cmp);
        println!(
            "client_rss_mib={rss:.1} client_load_s={loaded:.2} members_held={} call_us={:.1} raw_call_us={:.1}",
            stats.members_held, kit_us[2], raw_us[2],
        );
    });
}

/// Microseconds per sequential echo call through `client`.
async fn time_calls<C>(client: &mut EchoClient<C>) -> f64
where
    C: tonic::client::GrpcService<tonic::body::Body>,
    C::Error: Into<tonic::codegen::StdError>,
    C::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <C::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    let started = Instant::now();
    for _ in 0..PROBE_CALLS {
        let request = EchoRequest {
            payload: vec![0; 64],
        };
        client.echo(request).await.expect("an echo call");
    }
    started.elapsed().as_secs_f64() * 1e6 / PROBE_CALLS as f64
}

/// `raw_echo serve`, the thinnest echo server, in a process of its own.
struct EchoServer {
    child: std::process::Child,
    url: String,
}

impl EchoServer {
    fn start() -> EchoServer {
        let bin = release_bin("examples/raw_echo")
            .expect("raw_echo is built (cargo build --release --example raw_echo)");
        let mut child = Command::new(bin)
            .args(["serve", "127.0.0.1:0"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start raw_echo");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("raw_echo's stdout");
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("raw_echo's address");
        let addr = line.trim().trim_start_matches("listening on ");
        EchoServer {
            url: format!("http://{addr}"),
            child,
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `svckit members list --topic T --json` at N, in seconds.
fn cli_list_secs(url: &RegistryUrl, topic: &str) -> f64 {
    let Some(svckit) = release_bin("svckit") else {
        return f64::NAN;
    };
    let started = Instant::now();
    let out = Command::new(svckit)
        .args([
            "members",
            "list",
            "--registry",
            &url.to_string(),
            "--topic",
            topic,
            "--json",
        ])
        .output()
        .expect("run svckit members list");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    started.elapsed().as_secs_f64()
}

fn release_bin(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?.parent()?.to_path_buf();
    [
        dir.join(name),
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("target/release")
            .join(name),
    ]
    .into_iter()
    .find(|p| p.is_file())
}
