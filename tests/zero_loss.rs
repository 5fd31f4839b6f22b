//! No planned event loses a call of a client that never sends a call twice.
//! Each event runs on a real etcd under two such clients at once, each its
//! own process: a plain kit channel by topic, not idempotent
//! (`examples/call_load kit`), and Python grpcio on the node's address
//! (`tests/py/load_client.py`), at 16 and at 64 calls in flight each. The
//! events: a rolling reload (SIGHUP), `max_requests` recycling (at least
//! five recycles), one worker less (SIGTTOU), an upgrade of the whole tree
//! (the binary replaced on disk, then SIGHUP), and SIGTERM to one of two
//! nodes.
//!
//! tonic's own `Channel` is left out here: hyper's client fails a request
//! it queued just as a GOAWAY arrives, and tonic does not send it again
//! (`scripts/bench-lifecycle` counts those).

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use support::etcd::Etcd;
use support::node::{example_bin, quick_node_args, Proc};

const WAIT: Duration = Duration::from_secs(30);

/// A supervisor of `workers` workers registered at `registry`, run from
/// `binary`, once all serve; with its gRPC address.
fn supervisor(
    binary: PathBuf,
    registry: &str,
    host: &str,
    workers: &str,
    env: &[(&str, &str)],
) -> (Proc, SocketAddr) {
    let mut args = quick_node_args(registry, host);
    // Room for the upgraded supervisor's start on a loaded machine.
    if let Some(at) = args.iter().position(|a| *a == "--service-down-time") {
        args[at + 1] = "3";
    }
    args.extend_from_slice(&["--workers", workers]);
    let mut node = Proc::spawn(binary, &args, env);
    let addr = node.wait_for_endpoint(WAIT);
    let count: usize = workers.parse().expect("a count");
    support::poll_until(WAIT, "every worker serving", || {
        node.serving_workers().len() == count
    });
    (node, addr)
}

/// The two loads, started once both had a call answered.
struct Loads(Vec<Proc>);

impl Loads {
    /// A plain kit channel by topic, and grpcio on `targets` (one address,
    /// or several behind `ipv4:` with round robin).
    fn start(registry: &str, targets: &str, concurrency: usize) -> Loads {
        support::python::require("grpc, grpc_tools");
        let concurrency = concurrency.to_string();
        let kit = Proc::spawn(
            example_bin("call_load"),
            &["kit", "--registry", registry, "--concurrency", &concurrency],
            &[],
        );
        let proto = format!("{}/proto", env!("CARGO_MANIFEST_DIR"));
        let script = format!("{}/tests/py/load_client.py", env!("CARGO_MANIFEST_DIR"));
        let grpcio = Proc::spawn(
            PathBuf::from("python3"),
            &[&script, &proto, targets, &concurrency],
            &[],
        );
        let loads = Loads(vec![kit, grpcio]);
        for load in &loads.0 {
            support::poll_until(WAIT, "a load running", || {
                load.stdout().lines().any(|l| l == "ready")
            });
        }
        loads
    }

    /// Stops both and checks that each made calls and lost none.
    fn finish(self) {
        for mut load in self.0 {
            load.signal(Signal::SIGTERM);
            load.wait_exit(WAIT).expect("the load stops");
            let out = load.stdout();
            let line = out.lines().last().unwrap_or_default().to_string();
            let report = format!("{line}\n{}", load.stderr());
            let field = |name: &str| -> u64 {
                line.split_whitespace()
                    .find_map(|w| w.strip_prefix(&format!("{name}=")))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("no {name} in:\n{report}"))
            };
            assert!(field("calls") > 0, "{report}");
            assert_eq!(field("failed"), 0, "{report}");
        }
    }
}

fn target(addr: SocketAddr) -> String {
    addr.to_string()
}

async fn reload_under(concurrency: usize) {
    let etcd = Etcd::start();
    let url = etcd.url().to_string();
    let host = format!("zr{concurrency}");
    let (node, addr) = supervisor(example_bin("echo_node"), &url, &host, "3", &[]);
    let before = node.serving_workers();
    let loads = Loads::start(&url, &target(addr), concurrency);
    node.signal(Signal::SIGHUP);
    support::poll_until(WAIT, "every worker replaced", || {
        let now = node.serving_workers();
        now.len() == 3 && now.is_disjoint(&before)
    });
    node.wait_for_log("replacement done", WAIT);
    loads.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_loses_no_call_at_16_in_flight() {
    reload_under(16).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_loses_no_call_at_64_in_flight() {
    reload_under(64).await;
}

async fn recycling_under(concurrency: usize) {
    let etcd = Etcd::start();
    let url = etcd.url().to_string();
    let env = [
        ("SVCKIT_MAX_REQUESTS", "2000"),
        ("SVCKIT_MAX_REQUESTS_JITTER", "200"),
    ];
    let host = format!("zm{concurrency}");
    let (node, addr) = supervisor(example_bin("echo_node"), &url, &host, "3", &env);
    let loads = Loads::start(&url, &target(addr), concurrency);
    support::poll_until(WAIT, "five recycles", || {
        node.stderr()
            .matches("worker served max_requests; replacing it")
            .count()
            >= 5
    });
    loads.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recycling_loses_no_call_at_16_in_flight() {
    recycling_under(16).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recycling_loses_no_call_at_64_in_flight() {
    recycling_under(64).await;
}

async fn one_worker_less_under(concurrency: usize) {
    let etcd = Etcd::start();
    let url = etcd.url().to_string();
    let host = format!("zt{concurrency}");
    let (node, addr) = supervisor(example_bin("echo_node"), &url, &host, "3", &[]);
    let loads = Loads::start(&url, &target(addr), concurrency);
    node.signal(Signal::SIGTTOU);
    node.wait_for_log("pool: worker stopped", WAIT);
    assert_eq!(node.serving_workers().len(), 2);
    loads.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_less_loses_no_call_at_16_in_flight() {
    one_worker_less_under(16).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_less_loses_no_call_at_64_in_flight() {
    one_worker_less_under(64).await;
}

/// Replaces the file at `binary` as a package manager does: written
/// aside, then renamed over it.
fn replace_binary(binary: &Path) {
    let staged = binary.with_extension("dpkg-new");
    std::fs::copy(example_bin("echo_node"), &staged).expect("stage the new binary");
    std::fs::rename(&staged, binary).expect("replace the binary");
}

async fn upgrade_under(concurrency: usize) {
    let etcd = Etcd::start();
    let url = etcd.url().to_string();
    let dir = tempfile::tempdir().expect("temp dir");
    let binary = dir.path().join("echo_node");
    std::fs::copy(example_bin("echo_node"), &binary).expect("install the binary");
    let host = format!("zu{concurrency}");
    let (node, addr) = supervisor(binary.clone(), &url, &host, "2", &[]);
    let before = node.serving_workers();
    let loads = Loads::start(&url, &target(addr), concurrency);
    replace_binary(&binary);
    node.signal(Signal::SIGHUP);
    node.wait_for_log("supervisor upgraded in place", WAIT);
    support::poll_until(WAIT, "every worker replaced", || {
        let now = node.serving_workers();
        now.len() == 2 && now.is_disjoint(&before)
    });
    loads.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_of_the_whole_tree_loses_no_call_at_16_in_flight() {
    upgrade_under(16).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_of_the_whole_tree_loses_no_call_at_64_in_flight() {
    upgrade_under(64).await;
}

async fn one_of_two_nodes_stopped_under(concurrency: usize) {
    let etcd = Etcd::start();
    let url = etcd.url().to_string();
    let env = [("SVCKIT_DRAIN_DELAY", "0.5")];
    let (mut first, a) = supervisor(
        example_bin("echo_node"),
        &url,
        &format!("za{concurrency}"),
        "2",
        &env,
    );
    let (_second, b) = supervisor(
        example_bin("echo_node"),
        &url,
        &format!("zb{concurrency}"),
        "2",
        &env,
    );
    let loads = Loads::start(&url, &format!("ipv4:{a},{b}"), concurrency);
    first.signal(Signal::SIGTERM);
    let status = first.wait_exit(WAIT).expect("the node stops");
    assert!(status.success(), "{status}: {}", first.stderr());
    loads.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_to_one_of_two_nodes_loses_no_call_at_16_in_flight() {
    one_of_two_nodes_stopped_under(16).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_to_one_of_two_nodes_loses_no_call_at_64_in_flight() {
    one_of_two_nodes_stopped_under(64).await;
}

/// `api_node --workers 2` in front of an echo node, under `wrk` with 32
/// connections until `event` has run on the api node and the new workers
/// answered a few hundred requests: no response but 2xx, and no socket
/// error.
async fn http_under(event: &str, env: &[(&str, &str)]) {
    let etcd = Etcd::start();
    let url = etcd.url().to_string();
    let _echo = Proc::start_example("echo_node", &quick_node_args(&url, "ze"), &[]);
    let host = format!("zh-{event}");
    let mut args = quick_node_args(&url, &host);
    args.extend_from_slice(&["--workers", "2", "--http-listen", "127.0.0.1:0"]);
    let (api, _) = Proc::start_example("api_node", &args, env);
    support::poll_until(WAIT, "two workers serving", || {
        api.serving_workers().len() == 2
    });
    let http = api.ready()["http"]
        .as_str()
        .expect("an http endpoint")
        .to_string();
    let before = api.serving_workers();
    // Stopped by SIGINT (wrk then prints its figures) once the event is
    // over, however long a loaded machine takes to get there.
    let mut wrk = Proc::spawn(
        PathBuf::from("wrk"),
        &[
            "-t2",
            "-c32",
            "-d",
            "600s",
            &format!("{http}/v1/echo?msg=x"),
        ],
        &[],
    );
    match event {
        "reload" => {
            support::poll_until(WAIT, "requests answered", || {
                api.stderr().matches("/v1/echo").count() >= 100
            });
            api.signal(Signal::SIGHUP);
            support::poll_until(WAIT, "both workers replaced", || {
                let now = api.serving_workers();
                now.len() == 2 && now.is_disjoint(&before)
            });
        }
        _ => {
            support::poll_until(WAIT, "three recycles", || {
                api.stderr()
                    .matches("worker served max_requests; replacing it")
                    .count()
                    >= 3
            });
        }
    }
    let answered = api.stderr().matches("/v1/echo").count();
    support::poll_until(WAIT, "requests answered after the event", || {
        api.stderr().matches("/v1/echo").count() >= answered + 300
    });
    wrk.signal(Signal::SIGINT);
    wrk.wait_exit(WAIT).expect("wrk ends on SIGINT");
    let out = wrk.stdout();
    assert!(out.contains("requests in"), "{out}\n{}", wrk.stderr());
    // What the api node said of requests it did not answer with 200.
    let log = api.stderr();
    let said: Vec<&str> = log
        .lines()
        .filter(|l| {
            (l.contains("status=") && !l.contains("status=200"))
                || l.contains("admission:")
                || l.contains("WARN")
                || l.contains("ERROR")
        })
        .take(20)
        .collect();
    let said = said.join("\n");
    assert!(!out.contains("Non-2xx"), "{out}\n{said}");
    assert!(!out.contains("Socket errors"), "{out}\n{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_reload_answers_every_request_with_2xx_and_no_socket_error() {
    http_under("reload", &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_recycling_answers_every_request_with_2xx_and_no_socket_error() {
    let env = [
        ("SVCKIT_MAX_REQUESTS", "1500"),
        ("SVCKIT_MAX_REQUESTS_JITTER", "150"),
    ];
    http_under("recycle", &env).await;
}

/// One HTTP/2 frame: (type, flags, stream id, payload).
type Frame = (u8, u8, u32, Vec<u8>);

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

async fn read_frame(tcp: &mut tokio::net::TcpStream) -> Option<Frame> {
    use tokio::io::AsyncReadExt;
    let mut head = [0u8; 9];
    tcp.read_exact(&mut head).await.ok()?;
    let length = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0; length];
    tcp.read_exact(&mut payload).await.ok()?;
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    Some((head[3], head[4], stream, payload))
}

/// HEADERS of an `Echo/Sleep` call, HPACK without Huffman or indexing.
fn sleep_headers(authority: &str) -> Vec<u8> {
    let mut block = vec![0x83, 0x86]; // :method POST, :scheme http
    let literal = |block: &mut Vec<u8>, index: u8, value: &str| {
        block.push(index);
        block.push(value.len() as u8);
        block.extend_from_slice(value.as_bytes());
    };
    literal(&mut block, 0x04, "/svckit.examples.echo.v1.Echo/Sleep");
    literal(&mut block, 0x01, authority);
    for (name, value) in [("content-type", "application/grpc"), ("te", "trailers")] {
        block.push(0x00);
        block.push(name.len() as u8);
        block.extend_from_slice(name.as_bytes());
        block.push(value.len() as u8);
        block.extend_from_slice(value.as_bytes());
    }
    block
}

/// A client whose stream crossed a stopping node's GOAWAY may still send
/// frames for it: a WINDOW_UPDATE for a stream above the GOAWAY's last
/// stream id is ignored, like its DATA, and the connection's other calls
/// finish (grpcio does this; the node used to end the connection with
/// PROTOCOL_ERROR and cut every call on it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_for_a_stream_that_crossed_the_goaway_cost_no_other_call() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let registry = format!("file://{}", dir.path().display());
    let (node, addr) = Proc::start_example(
        "echo_node",
        &quick_node_args(&registry, "zg"),
        &[("SVCKIT_DRAIN_DELAY", "0")],
    );
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut opening = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    opening.extend(frame(4, 0, 0, &[]));
    // Sleep(400 ms): still running when the stop begins.
    opening.extend(frame(1, 0x4, 1, &sleep_headers(&addr.to_string())));
    opening.extend(frame(0, 0x1, 1, &[0, 0, 0, 0, 3, 0x08, 0x90, 0x03]));
    tcp.write_all(&opening).await.expect("send");
    let mut stopping = false;
    let mut crossed = false;
    let mut answered = false;
    let outcome = tokio::time::timeout(WAIT, async {
        while let Some((kind, flags, stream, payload)) = read_frame(&mut tcp).await {
            match kind {
                // The node's SETTINGS: acknowledged; then it is asked to stop.
                4 if flags & 1 == 0 => {
                    tcp.write_all(&frame(4, 1, 0, &[])).await.expect("ack");
                    if !stopping {
                        stopping = true;
                        node.signal(Signal::SIGTERM);
                    }
                }
                // Its graceful PING, answered.
                6 if flags & 1 == 0 => {
                    tcp.write_all(&frame(6, 1, 0, &payload))
                        .await
                        .expect("pong");
                }
                7 => {
                    let last = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]])
                        & 0x7fff_ffff;
                    let code = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
                    assert_eq!(code, 0, "GOAWAY with error code {code}");
                    if last == 1 && !crossed {
                        // The final GOAWAY: a stream opened after it, and a
                        // window update for it.
                        crossed = true;
                        let mut late = frame(1, 0x4, 3, &sleep_headers(&addr.to_string()));
                        late.extend(frame(8, 0, 3, &1000u32.to_be_bytes()));
                        tcp.write_all(&late).await.expect("late frames");
                    }
                }
                3 if stream == 1 => panic!("the call was reset"),
                // Trailers ending stream 1: the call finished.
                1 if stream == 1 && flags & 1 == 1 => answered = true,
                _ => {}
            }
        }
    })
    .await;
    assert!(outcome.is_ok(), "the connection did not end");
    assert!(crossed, "no final GOAWAY seen");
    assert!(answered, "the call in flight was not answered");
}
