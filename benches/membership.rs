//! Membership benchmark on one real etcd: how soon a watcher hears that a
//! node crashed or stopped, how fast 10,000 members list, and how much an
//! idle node asks of etcd.
//!
//! Run with `scripts/bench-membership`, which builds `echo_node` and the
//! `svckit` CLI in release mode first. Each figure is printed as one
//! `name=value …` line, then a summary table against the targets. With
//! `BENCH_SUMMARY=FILE` in the environment, the figures are also appended
//! to FILE in `scripts/bench`'s format (see scripts/lib/summary.sh).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use etcd_client::{PutOptions, Txn, TxnOp};
use nix::sys::signal::Signal;
use svckit::servicegroup::{
    connect, Advert, Endpoints, EventStream, Registry, RegistryOptions, RegistryUrl,
};

// The integration tests' helpers: a real etcd on free ports and kit
// processes, both killed on drop (also when the bench panics).
#[path = "../tests/support/mod.rs"]
mod support;

use support::etcd::Etcd;
use support::node::Proc;
use support::{expect_event, is_join, is_leave};

const CRASH_RUNS: usize = 3;
const GRACEFUL_RUNS: usize = 5;
const CLI_RUNS: usize = 3;
const LIB_RUNS: usize = 5;
const BULK_MEMBERS: usize = 10_000;
/// Every this many bulk members has a liveness key (shows as `up`).
const BULK_ALIVE_EVERY: usize = 10;
const IDLE_WINDOW: Duration = Duration::from_secs(10);

/// The kit's defaults, passed explicitly so that a stray `SVCKIT_*`
/// variable in the environment cannot change what is measured.
const NODE_TIMING: [&str; 4] = ["--report-interval", "1s", "--service-down-time", "5s"];

fn main() {
    let bins = Binaries::find();
    let etcd = Etcd::start();
    let registry_url = format!("etcd://{}", etcd.endpoint());
    let url = RegistryUrl::parse(&registry_url).expect("registry URL");
    let bench = Bench {
        bins,
        etcd: &etcd,
        registry_url,
        url,
    };
    println!(
        "etcd={} prefix=/svckit cores={}",
        etcd.endpoint(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    let crash = bench.leave_after(Signal::SIGKILL, "crash", CRASH_RUNS);
    let crash_ms = median(&crash);
    println!(
        "crash_to_leave_ms={crash_ms:.1} runs_ms={} report_interval=1s service_down_time=5s",
        join_ms(&crash)
    );

    let graceful = bench.leave_after(Signal::SIGTERM, "graceful", GRACEFUL_RUNS);
    let graceful_ms = median(&graceful);
    println!(
        "graceful_leave_ms={graceful_ms:.1} runs_ms={}",
        join_ms(&graceful)
    );

    let list = bench.list_bulk();
    let cli_ms = median(&list.cli);
    let lib_ms = median(&list.lib);
    println!(
        "list_10k_cli_ms={cli_ms:.1} runs_ms={} entries={} up={}",
        join_ms(&list.cli),
        list.entries,
        list.up
    );
    println!("list_10k_lib_ms={lib_ms:.1} runs_ms={}", join_ms(&list.lib));

    let idle = bench.idle_node_load();
    let msgs_rps = idle.node.msgs_received_per_s(&idle.baseline);
    println!(
        "idle_node_etcd_rps={msgs_rps:.2} basis=msgs_received handled_rps={:.2} started_rps={:.2} \
         msgs_received_rps={msgs_rps:.2} baseline_handled_rps={:.2} baseline_msgs_received_rps={:.2} window_s={}",
        idle.node.handled_per_s(&idle.baseline),
        idle.node.started_per_s(&idle.baseline),
        idle.baseline.handled / IDLE_WINDOW.as_secs_f64(),
        idle.baseline.msgs_received / IDLE_WINDOW.as_secs_f64(),
        IDLE_WINDOW.as_secs()
    );
    println!("idle_node_etcd_msgs_by_method={}", idle.node.by_method());

    println!();
    let rows = [
        Row::new(
            "crash_to_leave_ms",
            crash_ms,
            Some(6000.0),
            "nova 60 s; tooz on etcd 30 s; go-zero 10 s",
        ),
        Row::new(
            "graceful_leave_ms",
            graceful_ms,
            Some(100.0),
            "nova: never leaves, ages out in 60 s",
        ),
        Row::new("list_10k_cli_ms", cli_ms, Some(300.0), "-"),
        Row::new("list_10k_lib_ms", lib_ms, None, "-"),
        Row::new("idle_node_etcd_rps", msgs_rps, Some(2.0), "-"),
    ];
    println!(
        "{:<20} {:>10} {:>8} {:<4} reference",
        "metric", "measured", "target", "met"
    );
    for row in rows {
        println!("{row}");
    }

    if let Some(path) = std::env::var_os("BENCH_SUMMARY") {
        let lines = [
            summary_line(
                "crash_leave",
                "kill -9 → watcher's leave event",
                "ms",
                &ms(&crash),
                "value<=6000;nova 60 s, go-zero 10 s",
            ),
            summary_line(
                "graceful_leave",
                "graceful stop → watcher's leave event",
                "ms",
                &ms(&graceful),
                "value<=100;nova: ages out in 60 s",
            ),
            summary_line(
                "list_cli",
                "list 10k records, svckit members list --json",
                "ms",
                &ms(&list.cli),
                "value<=300",
            ),
            summary_line(
                "list_lib",
                "list 10k records, library Registry::list",
                "ms",
                &ms(&list.lib),
                "-",
            ),
            summary_line(
                "idle_etcd",
                "etcd load of one idle node",
                "msgs/s",
                &[msgs_rps],
                "value<=2",
            ),
        ];
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .expect("open BENCH_SUMMARY");
        file.write_all(lines.concat().as_bytes())
            .expect("append to BENCH_SUMMARY");
    }
}

/// One figure for `scripts/bench`, one value per run, with no baseline (the
/// references in `goal` are other systems' figures).
fn summary_line(id: &str, measure: &str, unit: &str, runs: &[f64], goal: &str) -> String {
    let values: Vec<String> = runs.iter().map(|v| format!("{v:.2}")).collect();
    format!(
        "{id}\t{measure}\t{unit}\t{}\t-\t-\t{goal}\n",
        values.join(",")
    )
}

fn ms(times: &[Duration]) -> Vec<f64> {
    times.iter().map(|t| t.as_secs_f64() * 1e3).collect()
}

/// The built `echo_node` example and `svckit` CLI.
struct Binaries {
    echo_node: PathBuf,
    svckit: PathBuf,
}

impl Binaries {
    /// Looks beside this bench executable (`target/release/deps/..`), then
    /// in `$CARGO_TARGET_DIR/release`, then in `target/release`.
    fn find() -> Binaries {
        let mut dirs = Vec::new();
        if let Some(dir) = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent()?.parent().map(Path::to_path_buf))
        {
            dirs.push(dir);
        }
        if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
            dirs.push(PathBuf::from(target).join("release"));
        }
        dirs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release"));
        let found = dirs.iter().find_map(|dir| {
            let bins = Binaries {
                echo_node: dir.join("examples/echo_node"),
                svckit: dir.join("svckit"),
            };
            (bins.echo_node.is_file() && bins.svckit.is_file()).then_some(bins)
        });
        found.unwrap_or_else(|| {
            let looked: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
            eprintln!(
                "membership bench: examples/echo_node and svckit are not built in any of {}; \
                 run `cargo build --release --examples --bins` first (scripts/bench-membership does)",
                looked.join(", ")
            );
            std::process::exit(1);
        })
    }
}

struct Bench<'a> {
    bins: Binaries,
    etcd: &'a Etcd,
    registry_url: String,
    url: RegistryUrl,
}

struct ListTimes {
    cli: Vec<Duration>,
    lib: Vec<Duration>,
    entries: usize,
    up: usize,
}

struct IdleLoad {
    baseline: Counters,
    node: Counters,
}

impl Bench<'_> {
    /// An `echo_node` on topic `echo`, registered (its "node serving and
    /// registered" line is out).
    fn start_node(&self, host: &str) -> Proc {
        let mut args = vec![
            "--registry",
            &self.registry_url,
            "--host",
            host,
            "--rpc-listen",
            "127.0.0.1:0",
            "--log-level",
            "info",
        ];
        args.extend(NODE_TIMING);
        let mut node = Proc::spawn(self.bins.echo_node.clone(), &args, &[]);
        node.wait_for_endpoint(Duration::from_secs(30));
        node
    }

    async fn registry(&self) -> Registry {
        connect(&self.url, &RegistryOptions::default())
            .await
            .expect("connect to the bench etcd")
    }

    /// Starts a node per run, waits for a watcher to see it join, sends
    /// `signal`, and times the watcher's Leave event.
    ///
    /// A node killed right after it joins dies with a fresh lease, so the
    /// crash figure is the worst case: the whole TTL (`service_down_time`)
    /// plus etcd's expiry check, where a crash at a random moment would be
    /// up to one `report_interval` sooner.
    fn leave_after(&self, signal: Signal, name: &str, runs: usize) -> Vec<Duration> {
        runtime().block_on(async {
            let registry = self.registry().await;
            let mut events: EventStream = registry
                .watch(Some("echo"))
                .await
                .expect("watch topic echo");
            let mut times = Vec::new();
            for run in 1..=runs {
                let host = format!("{name}-{run}");
                let mut node = self.start_node(&host);
                expect_event(
                    &mut events,
                    Duration::from_secs(10),
                    "the join",
                    is_join(&host),
                )
                .await;
                let sent = Instant::now();
                node.signal(signal);
                expect_event(
                    &mut events,
                    Duration::from_secs(20),
                    "the leave",
                    is_leave(&host),
                )
                .await;
                times.push(sent.elapsed());
                node.wait_exit(Duration::from_secs(10))
                    .unwrap_or_else(|| panic!("{host} did not exit after {signal}"));
            }
            times
        })
    }

    /// Writes the bulk records straight to etcd, then times the CLI and the
    /// library listing them.
    fn list_bulk(&self) -> ListTimes {
        runtime().block_on(async {
            let alive = write_bulk(&self.etcd.endpoint()).await;
            let mut cli = Vec::new();
            for _ in 0..CLI_RUNS {
                let (took, entries, up) = self.cli_list();
                assert_eq!(entries, BULK_MEMBERS, "svckit members list --json entries");
                assert_eq!(up, alive, "svckit members list --json members up");
                cli.push(took);
            }
            let registry = self.registry().await;
            let mut lib = Vec::new();
            for _ in 0..LIB_RUNS {
                let start = Instant::now();
                let members = registry.list(Some("bulk")).await.expect("list topic bulk");
                lib.push(start.elapsed());
                assert_eq!(members.len(), BULK_MEMBERS, "registry.list members");
            }
            ListTimes {
                cli,
                lib,
                // As every CLI run printed (checked above).
                entries: BULK_MEMBERS,
                up: alive,
            }
        })
    }

    /// One `svckit members list --json` run: wall time, entries, entries up.
    fn cli_list(&self) -> (Duration, usize, usize) {
        let start = Instant::now();
        let out = Command::new(&self.bins.svckit)
            .args(["members", "list", "--registry", &self.registry_url])
            .args(["--topic", "bulk", "--json"])
            .stdin(Stdio::null())
            .output()
            .expect("run svckit members list");
        let took = start.elapsed();
        assert!(
            out.status.success(),
            "svckit members list failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let members: Vec<serde_json::Value> =
            serde_json::from_slice(&out.stdout).expect("svckit members list --json output");
        let up = members.iter().filter(|m| m["state"] == "up").count();
        (took, members.len(), up)
    }

    /// etcd's gRPC counters over a window with no client at all, then over
    /// one with a single idle node. No watcher is connected in either: the
    /// runtimes of the earlier phases are gone with their connections.
    fn idle_node_load(&self) -> IdleLoad {
        let endpoint = self.etcd.endpoint();
        let baseline = Counters::over_window(&endpoint);
        let mut node = self.start_node("idle-1");
        // Let registration settle (lease grant, claim, keep-alive and watch
        // streams opening) so the window holds only the steady state.
        std::thread::sleep(Duration::from_secs(1));
        let busy = Counters::over_window(&endpoint);
        node.signal(Signal::SIGTERM);
        node.wait_exit(Duration::from_secs(10))
            .expect("idle node did not exit after SIGTERM");
        IdleLoad {
            baseline,
            node: busy,
        }
    }
}

/// Puts the bulk service records (and liveness for every
/// [`BULK_ALIVE_EVERY`]th) under `/svckit`, 100 puts per transaction (etcd
/// allows 128); returns how many are alive.
async fn write_bulk(endpoint: &str) -> usize {
    let mut client = etcd_client::Client::connect([endpoint], None)
        .await
        .expect("raw etcd client");
    // Long enough to outlive the bench; the keys go with etcd.
    let lease = client
        .lease_grant(600, None)
        .await
        .expect("grant the bulk lease")
        .id();
    let now = SystemTime::now();
    let hosts: Vec<String> = (0..BULK_MEMBERS).map(|i| format!("h{i:05}")).collect();
    let mut alive = 0;
    for chunk in hosts.chunks(100) {
        let mut ops = Vec::with_capacity(chunk.len() * 2);
        for host in chunk {
            let endpoints = Endpoints::new(Some(format!("http://{host}:7000")), None);
            let services = vec!["svckit.examples.echo.v1.Echo".into()];
            let advert = Advert::new("bulk", host, "bulk_node", "1.0.0", endpoints, services);
            let record = advert
                .registration(1, Duration::from_secs(1), Duration::from_secs(5))
                .to_record(now);
            let value = serde_json::to_vec(&record).expect("encode a service record");
            ops.push(TxnOp::put(
                format!("/svckit/services/bulk/{host}"),
                value,
                None,
            ));
        }
        client
            .txn(Txn::new().and_then(ops))
            .await
            .expect("put a batch of service records");
    }
    for chunk in hosts.chunks(100 * BULK_ALIVE_EVERY) {
        let ops: Vec<TxnOp> = chunk
            .iter()
            .step_by(BULK_ALIVE_EVERY)
            .map(|host| {
                let value = serde_json::json!({
                    "pid": 0, "lease": format!("{lease:x}"), "since": now, "token": 0,
                });
                TxnOp::put(
                    format!("/svckit/alive/bulk/{host}"),
                    value.to_string(),
                    Some(PutOptions::new().with_lease(lease)),
                )
            })
            .collect();
        alive += ops.len();
        client
            .txn(Txn::new().and_then(ops))
            .await
            .expect("put a batch of liveness keys");
    }
    alive
}

/// Sums of etcd's gRPC server counters (Prometheus `/metrics`), or their
/// growth over a window.
#[derive(Debug, Default)]
struct Counters {
    handled: f64,
    started: f64,
    msgs_received: f64,
    /// `grpc_server_msg_received_total` per `grpc_method`.
    msgs_by_method: BTreeMap<String, f64>,
}

impl Counters {
    fn scrape(endpoint: &str) -> Counters {
        let mut conn = TcpStream::connect(endpoint).expect("connect to etcd for /metrics");
        conn.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("set a read timeout");
        write!(conn, "GET /metrics HTTP/1.0\r\nHost: {endpoint}\r\n\r\n")
            .expect("send the /metrics request");
        let mut text = String::new();
        conn.read_to_string(&mut text)
            .expect("read the /metrics response");
        assert!(
            text.starts_with("HTTP/1.") && text.contains(" 200 "),
            "etcd /metrics answered: {}",
            text.lines().next().unwrap_or_default()
        );
        let mut counters = Counters::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let name = series.split('{').next().unwrap_or(series);
            match name {
                "grpc_server_handled_total" => counters.handled += value,
                "grpc_server_started_total" => counters.started += value,
                "grpc_server_msg_received_total" => {
                    counters.msgs_received += value;
                    let method = label(series, "grpc_method").unwrap_or("?");
                    *counters.msgs_by_method.entry(method.into()).or_default() += value;
                }
                _ => {}
            }
        }
        assert!(
            counters.msgs_received > 0.0,
            "etcd /metrics has no grpc_server_msg_received_total"
        );
        counters
    }

    /// Growth of the counters over [`IDLE_WINDOW`].
    fn over_window(endpoint: &str) -> Counters {
        let before = Counters::scrape(endpoint);
        std::thread::sleep(IDLE_WINDOW);
        let after = Counters::scrape(endpoint);
        let mut msgs_by_method = after.msgs_by_method;
        for (method, n) in &mut msgs_by_method {
            *n -= before.msgs_by_method.get(method).copied().unwrap_or(0.0);
        }
        msgs_by_method.retain(|_, n| *n != 0.0);
        Counters {
            handled: after.handled - before.handled,
            started: after.started - before.started,
            msgs_received: after.msgs_received - before.msgs_received,
            msgs_by_method,
        }
    }

    fn handled_per_s(&self, baseline: &Counters) -> f64 {
        (self.handled - baseline.handled) / IDLE_WINDOW.as_secs_f64()
    }

    fn started_per_s(&self, baseline: &Counters) -> f64 {
        (self.started - baseline.started) / IDLE_WINDOW.as_secs_f64()
    }

    fn msgs_received_per_s(&self, baseline: &Counters) -> f64 {
        (self.msgs_received - baseline.msgs_received) / IDLE_WINDOW.as_secs_f64()
    }

    /// `Method:count,…` over the window, or `none`.
    fn by_method(&self) -> String {
        if self.msgs_by_method.is_empty() {
            return "none".into();
        }
        let parts: Vec<String> = self
            .msgs_by_method
            .iter()
            .map(|(method, n)| format!("{method}:{n}"))
            .collect();
        parts.join(",")
    }
}

/// The value of `name="…"` in a Prometheus series.
fn label<'a>(series: &'a str, name: &str) -> Option<&'a str> {
    let start = series.find(&format!("{name}=\""))? + name.len() + 2;
    let len = series[start..].find('"')?;
    Some(&series[start..start + len])
}

/// A fresh runtime per phase: dropping it closes every etcd connection and
/// watch the phase opened.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn median(times: &[Duration]) -> f64 {
    let mut ms = ms(times);
    ms.sort_by(f64::total_cmp);
    ms[ms.len() / 2]
}

fn join_ms(times: &[Duration]) -> String {
    let ms: Vec<String> = times
        .iter()
        .map(|t| format!("{:.1}", t.as_secs_f64() * 1e3))
        .collect();
    ms.join(",")
}

/// One line of the summary table.
struct Row {
    metric: &'static str,
    measured: f64,
    /// Upper bound, if the metric has one.
    target: Option<f64>,
    reference: &'static str,
}

impl Row {
    fn new(
        metric: &'static str,
        measured: f64,
        target: Option<f64>,
        reference: &'static str,
    ) -> Row {
        Row {
            metric,
            measured,
            target,
            reference,
        }
    }
}

impl std::fmt::Display for Row {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (target, met) = match self.target {
            Some(t) => (
                format!("<= {t}"),
                if self.measured <= t { "yes" } else { "NO" },
            ),
            None => ("-".into(), "-"),
        };
        write!(
            f,
            "{:<20} {:>10.2} {:>8} {:<4} {}",
            self.metric, self.measured, target, met, self.reference
        )
    }
}
