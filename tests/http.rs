//! HTTP on a node, with real processes and raw sockets: api_node in front of
//! echo_node, nova's limits (414, 431, 413, slow clients, the pool), the
//! admin endpoints, metrics read by an independent parser, trace context
//! across the hop, and bad input the node survives.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use nix::sys::signal::Signal;
use support::etcd::Etcd;
use support::node::{quick_node_args, Proc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(20);

/// A response read off a raw socket.
#[derive(Debug)]
struct Reply {
    status: u16,
    body: String,
}

/// Sends `request` as is and reads one response (the connection closes).
async fn raw(addr: SocketAddr, request: &[u8]) -> Reply {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("send");
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut buf)).await;
    parse(&buf)
}

/// Status 0: no response before the connection closed or the wait ended.
fn parse(buf: &[u8]) -> Reply {
    let text = String::from_utf8_lossy(buf);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    Reply { status, body }
}

async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut request = format!("GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    raw(addr, request.as_bytes()).await
}

/// Chunked bodies are rare here; axum answers with content-length.
fn json(reply: &Reply) -> serde_json::Value {
    serde_json::from_str(&reply.body).unwrap_or_else(|e| panic!("{e}: {reply:?}"))
}

fn http_addr(proc: &Proc) -> SocketAddr {
    let ready = proc.ready();
    let url = ready["http"]
        .as_str()
        .expect("an http endpoint in the ready file");
    url.trim_start_matches("http://")
        .parse()
        .expect("host:port")
}

struct Fleet {
    _etcd: Etcd,
    echo: Vec<Proc>,
    api: Proc,
    api_addr: SocketAddr,
}

/// echo_node e1 and e2, and api_node in front of them, on one etcd.
async fn fleet(api_env: &[(&str, &str)], echo_extra: &[&str]) -> Fleet {
    let etcd = Etcd::start();
    let url = etcd.url().to_string();
    let echo = ["e1", "e2"]
        .iter()
        .map(|host| {
            let mut args = quick_node_args(&url, host);
            args.extend_from_slice(echo_extra);
            Proc::start_example("echo_node", &args, &[]).0
        })
        .collect();
    let mut args = quick_node_args(&url, "a1");
    args.extend_from_slice(&["--http-listen", "127.0.0.1:0"]);
    let (api, _) = Proc::start_example("api_node", &args, api_env);
    let api_addr = http_addr(&api);
    // Both echo nodes are known to the api node's client before tests call.
    support::eventually(
        WAIT,
        "both echo nodes reachable through api_node",
        || async {
            let e2 = get(api_addr, "/v1/echo?msg=x&server=e2", &[]).await.status == 200;
            let e1 = get(api_addr, "/v1/echo?msg=x&server=e1", &[]).await.status == 200;
            (e1 && e2).then_some(())
        },
    )
    .await;
    Fleet {
        _etcd: etcd,
        echo,
        api,
        api_addr,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_node_calls_echo_by_topic_and_by_server_and_lists_members() {
    let f = fleet(&[], &[]).await;
    let reply = get(f.api_addr, "/v1/echo?msg=hello", &[]).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let body = json(&reply);
    assert_eq!(body["msg"], "hello");
    assert!(body["host"] == "e1" || body["host"] == "e2", "{body}");

    for host in ["e1", "e2"] {
        let reply = get(f.api_addr, &format!("/v1/echo?msg=m&server={host}"), &[]).await;
        assert_eq!(json(&reply)["host"], host);
    }
    let members = json(&get(f.api_addr, "/v1/members", &[]).await);
    let hosts: Vec<&str> = members
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["host"].as_str())
        .collect();
    assert_eq!(hosts, ["a1", "e1", "e2"], "{members}");
    // The api node advertises its HTTP endpoint in its record.
    let api = members
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["host"] == "a1")
        .unwrap();
    assert_eq!(
        api["endpoints"]["http"],
        format!("http://{}", f.api_addr),
        "{api}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_urls_headers_and_bodies_get_414_431_413() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    let mut args = quick_node_args(&url, "l1");
    args.extend_from_slice(&["--http-listen", "127.0.0.1:0"]);
    let (node, _) = Proc::start_example(
        "echo_node",
        &args,
        &[
            ("SVCKIT_MAX_URL_LEN", "1024"),
            ("SVCKIT_MAX_HEADER_LINE", "1024"),
            ("SVCKIT_MAX_REQUEST_BODY", "1024"),
        ],
    );
    let addr = http_addr(&node);
    let long = "a".repeat(2000);
    assert_eq!(
        get(addr, &format!("/healthz?{long}"), &[]).await.status,
        414
    );
    assert_eq!(get(addr, "/healthz", &[("x-big", &long)]).await.status, 431);
    let post = format!(
        "POST /healthz HTTP/1.1\r\nhost: t\r\ncontent-length: 5000\r\nconnection: close\r\n\r\n{}",
        "b".repeat(5000)
    );
    assert_eq!(raw(addr, post.as_bytes()).await.status, 413);
    // Within the limits, the same requests pass.
    assert_eq!(
        get(addr, "/healthz?short", &[("x-small", "1")])
            .await
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sending_headers_slowly_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    let mut args = quick_node_args(&url, "s1");
    args.extend_from_slice(&["--http-listen", "127.0.0.1:0"]);
    let (node, _) = Proc::start_example("echo_node", &args, &[("SVCKIT_HEADER_READ_TIMEOUT", "1")]);
    let addr = http_addr(&node);
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // One byte every 200 ms: the whole head would take over 30 s.
    let head = format!(
        "GET /healthz HTTP/1.1\r\nhost: t\r\nx-slow: {}\r\n\r\n",
        "z".repeat(100)
    );
    let mut cut_off = false;
    for byte in head.as_bytes() {
        if stream.write_all(&[*byte]).await.is_err() {
            cut_off = true;
            break;
        }
        let mut buf = [0u8; 512];
        match tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await {
            // The server answered (408) or closed: it gave up on us.
            Ok(Ok(_)) | Ok(Err(_)) => {
                cut_off = true;
                break;
            }
            Err(_) => {}
        }
    }
    assert!(
        cut_off,
        "a slow client kept its connection for the whole head"
    );
    // Others are still served.
    assert_eq!(get(addr, "/healthz", &[]).await.status, 200);
}

/// Reads one response off a keep-alive connection: the head, then
/// content-length bytes of body. `None` once the server closed it.
async fn read_response(stream: &mut TcpStream) -> Option<Reply> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                return Some(parse(&buf));
            }
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_quiet_past_client_socket_timeout_is_closed_and_a_busy_one_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    let mut args = quick_node_args(&url, "q1");
    args.extend_from_slice(&["--http-listen", "127.0.0.1:0"]);
    // The header-read timeout, which also bounds the wait for the next
    // request on a kept-alive connection, is far beyond this test's waits.
    let (node, _) = Proc::start_example(
        "echo_node",
        &args,
        &[
            ("SVCKIT_CLIENT_SOCKET_TIMEOUT", "1"),
            ("SVCKIT_HEADER_READ_TIMEOUT", "600"),
        ],
    );
    let addr = http_addr(&node);

    // Busy for three timeouts on one connection: never cut.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let start = std::time::Instant::now();
    let mut served = 0;
    while start.elapsed() < Duration::from_secs(3) {
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: t\r\n\r\n")
            .await
            .unwrap();
        let reply = read_response(&mut stream)
            .await
            .unwrap_or_else(|| panic!("a busy connection was closed after {served} requests"));
        assert_eq!(reply.status, 200);
        served += 1;
    }

    // Then quiet: closed, long before the header-read timeout.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(WAIT, stream.read_to_end(&mut rest)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "a quiet connection stayed open: {closed:?}"
    );
    // Others are still served.
    assert_eq!(get(addr, "/healthz", &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_pool_sheds_with_503_and_recovers() {
    let f = fleet(
        &[
            ("SVCKIT_HTTP_POOL_SIZE", "2"),
            ("SVCKIT_HTTP_POOL_WAIT", "0.2"),
        ],
        &[],
    )
    .await;
    // Both echo nodes frozen: api_node's calls hang and hold their slots.
    for echo in &f.echo {
        echo.signal(Signal::SIGSTOP);
    }
    let held: Vec<_> = (0..2)
        .map(|_| {
            let addr = f.api_addr;
            tokio::spawn(async move { get(addr, "/v1/echo?msg=held", &[]).await })
        })
        .collect();
    // The admin endpoints skip the pool: /metrics shows both slots taken.
    support::eventually(WAIT, "two requests in flight", || async {
        let text = get(f.api_addr, "/metrics", &[]).await.body;
        text.lines()
            .any(|l| l == r#"svckit_http_requests_in_flight{route="/v1/echo"} 2"#)
            .then_some(())
    })
    .await;
    let shed = get(f.api_addr, "/v1/echo?msg=more", &[]).await;
    assert_eq!(shed.status, 503, "{shed:?}");
    assert_eq!(get(f.api_addr, "/healthz", &[]).await.status, 200);
    for echo in &f.echo {
        echo.signal(Signal::SIGCONT);
    }
    for call in held {
        assert_eq!(call.await.unwrap().status, 200);
    }
    assert_eq!(get(f.api_addr, "/v1/echo?msg=after", &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_turns_503_during_the_drain_before_the_listener_closes() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    let mut args = quick_node_args(&url, "r1");
    args.extend_from_slice(&["--http-listen", "127.0.0.1:0"]);
    let (mut node, _) = Proc::start_example("echo_node", &args, &[("SVCKIT_DRAIN_DELAY", "3")]);
    let addr = http_addr(&node);
    assert_eq!(get(addr, "/readyz", &[]).await.status, 200);
    assert_eq!(get(addr, "/healthz", &[]).await.status, 200);
    node.signal(Signal::SIGTERM);
    support::eventually(WAIT, "/readyz 503 while draining", || async {
        (get(addr, "/readyz", &[]).await.status == 503).then_some(())
    })
    .await;
    // Still alive while it drains.
    assert_eq!(get(addr, "/healthz", &[]).await.status, 200);
    let status = node.wait_exit(WAIT).expect("the node exits");
    assert_eq!(status.code(), Some(0), "{}", node.stderr());
}

/// `/metrics` read by an independent parser (Python's prometheus_client):
/// `name{label=value,…}` → value, labels sorted.
fn parse_metrics(text: &str) -> HashMap<String, f64> {
    let script = r##"
import sys
from prometheus_client.parser import text_string_to_metric_families
text = sys.stdin.read().replace("# EOF\n", "")
for family in text_string_to_metric_families(text):
    for s in family.samples:
        labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
        print(f"{s.name}{{{labels}}} {s.value}")
"##;
    let mut child = std::process::Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client could not parse /metrics (pip install -r tests/py/requirements.txt): {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_as_prometheus_text_and_count_the_requests() {
    let f = fleet(&[], &[]).await;
    for _ in 0..3 {
        assert_eq!(get(f.api_addr, "/v1/echo?msg=count", &[]).await.status, 200);
    }
    let text = get(f.api_addr, "/metrics", &[]).await.body;
    let samples = parse_metrics(&text);
    // The warm-up calls of `fleet` count too: at least the three made here.
    let count = samples
        .get("svckit_http_requests_total{code=200,route=/v1/echo}")
        .unwrap_or_else(|| panic!("no /v1/echo 200 count in:\n{text}"));
    assert!(*count >= 3.0, "{text}");
    // The api node's RPC client sees both echo nodes.
    assert_eq!(
        samples.get("svckit_rpc_client_nodes{topic=echo}"),
        Some(&2.0),
        "{text}"
    );
    assert_eq!(samples.get("svckit_registered{}"), Some(&1.0), "{text}");
    // A node joining the topic reaches the api node's watch: its lag is
    // measured, and etcd's progress answers are stamped.
    let url = f._etcd.url().to_string();
    let (_e3, _) = Proc::start_example("echo_node", &quick_node_args(&url, "e3"), &[]);
    support::eventually(
        WAIT,
        "e3's join measured and a progress stamped",
        || async {
            let samples = parse_metrics(&get(f.api_addr, "/metrics", &[]).await.body);
            let lags = samples.get("svckit_membership_lag_seconds_count{topic=echo}")?;
            let progress =
                samples.get("svckit_membership_progress_timestamp_seconds{topic=echo}")?;
            (*lags >= 1.0 && *progress > 1.7e9).then_some(())
        },
    )
    .await;
    // Set once a keep-alive was answered (one report interval in).
    support::eventually(WAIT, "a timed heartbeat in /metrics", || async {
        let text = get(f.api_addr, "/metrics", &[]).await.body;
        let latency = parse_metrics(&text)
            .get("svckit_heartbeat_latency_seconds{}")
            .copied();
        latency.filter(|l| *l > 0.0)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traceparent_sent_to_api_node_shows_up_in_echo_nodes_span() {
    // gRPC call spans are at DEBUG, so that calls cost no span by default.
    let f = fleet(
        &[],
        &[
            "--log-level",
            "info,tower_http=debug,svckit::telemetry=debug",
        ],
    )
    .await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    let reply = get(
        f.api_addr,
        "/v1/echo?msg=traced&server=e2",
        &[("traceparent", &traceparent)],
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    f.echo[1].wait_for_log(trace_id, WAIT);
    f.api.wait_for_log(trace_id, WAIT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_endless_headers_idle_floods_and_cut_bodies_leave_the_node_up() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    let mut args = quick_node_args(&url, "g1");
    args.extend_from_slice(&["--http-listen", "127.0.0.1:0"]);
    let (mut node, _) = Proc::start_example(
        "echo_node",
        &args,
        &[
            ("SVCKIT_HEADER_READ_TIMEOUT", "1"),
            ("SVCKIT_HTTP_MAX_CONNECTIONS", "2000"),
            ("SVCKIT_MAX_HEADER_LINE", "1024"),
        ],
    );
    let addr = http_addr(&node);

    // A request line of garbage.
    assert_eq!(
        raw(addr, b"\x16\x03\x01garbage garbage\r\n\r\n")
            .await
            .status,
        400
    );

    // A header block that never ends: cut off, not buffered forever.
    let mut endless = TcpStream::connect(addr).await.unwrap();
    endless
        .write_all(b"GET /healthz HTTP/1.1\r\n")
        .await
        .unwrap();
    let line = format!("x-more: {}\r\n", "m".repeat(1000));
    let mut refused = false;
    for _ in 0..1000 {
        if endless.write_all(line.as_bytes()).await.is_err() {
            refused = true;
            break;
        }
    }
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(WAIT, endless.read_to_end(&mut buf))
        .await
        .is_ok();
    assert!(
        refused || closed,
        "an endless header block kept its connection"
    );
    assert_eq!(get(addr, "/healthz", &[]).await.status, 200);

    // 10,000 idle connections: beyond the connection limit each takes the
    // slot of the oldest silent one, the header-read timeout frees the
    // rest; a client that speaks is still answered.
    let mut idle = Vec::new();
    for _ in 0..10_000 {
        match TcpStream::connect(addr).await {
            Ok(s) => idle.push(s),
            Err(_) => break,
        }
    }
    assert!(idle.len() > 1000, "only {} connections opened", idle.len());
    let served = tokio::time::timeout(WAIT * 3, get(addr, "/healthz", &[])).await;
    assert_eq!(served.expect("answered despite the idle flood").status, 200);
    drop(idle);

    // A body that stops half way.
    let mut cut = TcpStream::connect(addr).await.unwrap();
    cut.write_all(b"POST /healthz HTTP/1.1\r\nhost: t\r\ncontent-length: 1000\r\n\r\nhalf")
        .await
        .unwrap();
    assert_eq!(get(addr, "/healthz", &[]).await.status, 200);
    drop(cut);

    assert!(
        node.wait_exit(Duration::ZERO).is_none(),
        "the node is still up"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_and_http_share_one_port_when_configured() {
    let etcd = Etcd::start();
    let url = etcd.url().to_string();
    let shared = [("SVCKIT_HTTP_SHARED_PORT", "true")];
    let (echo, echo_port) = Proc::start_example("echo_node", &quick_node_args(&url, "e1"), &shared);
    let (api, api_port) = Proc::start_example("api_node", &quick_node_args(&url, "a1"), &shared);
    for node in [&echo, &api] {
        let ready = node.ready();
        assert_eq!(ready["http"], ready["grpc"], "one advertised port");
    }
    assert_eq!(http_addr(&api), api_port);

    // HTTP to api_node's gRPC port, which calls echo_node over gRPC on the
    // port echo_node shares with its own HTTP.
    support::eventually(WAIT, "api_node routes to e1", || async {
        let reply = get(api_port, "/v1/echo?msg=shared", &[]).await;
        (reply.status == 200).then_some(reply)
    })
    .await;
    let reply = get(api_port, "/v1/echo?msg=shared", &[]).await;
    assert_eq!(json(&reply)["host"], "e1", "{reply:?}");
    assert_eq!(get(echo_port, "/healthz", &[]).await.status, 200);
    assert_eq!(get(echo_port, "/readyz", &[]).await.status, 200);

    // gRPC straight to the shared port: health, then a call, counted on the
    // same port's /metrics; a path neither side knows is a plain 404.
    let channel = tonic::transport::Channel::from_shared(format!("http://{echo_port}"))
        .unwrap()
        .connect()
        .await
        .expect("gRPC connection to the shared port");
    let health = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("health over the shared port")
        .into_inner();
    assert_eq!(
        health.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let metrics = get(echo_port, "/metrics", &[]).await.body;
    assert!(
        metrics.contains(
            r#"svckit_grpc_requests_total{route="/svckit.examples.echo.v1.Echo/Echo",code="Ok"}"#
        ),
        "{metrics}"
    );
    assert_eq!(get(echo_port, "/nowhere", &[]).await.status, 404);

    // Both ways at once is a mistake: exit 78 naming the options.
    let mut args = quick_node_args(&url, "e2");
    args.extend_from_slice(&["--http-listen", "127.0.0.1:0"]);
    let mut both = Proc::spawn(support::node::example_bin("echo_node"), &args, &shared);
    let status = both.wait_exit(WAIT).expect("exits");
    assert_eq!(status.code(), Some(78), "{}", both.stderr());
    assert!(
        both.stderr().contains("http_shared_port"),
        "{}",
        both.stderr()
    );
}

/// api_node with stderr (and stdout) on pipes that nobody reads, as behind
/// a stuck log shipper: every request is still answered, and the lines it
/// could not write are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_log_pipe_nobody_reads_keeps_serving_and_counts_the_dropped_lines() {
    let etcd = Etcd::start();
    let url = etcd.url().to_string();
    let _echo = Proc::start_example("echo_node", &quick_node_args(&url, "e1"), &[]).0;
    let dir = tempfile::tempdir().unwrap();
    let ready = dir.path().join("ready.json");
    let mut args = quick_node_args(&url, "a1");
    // Many lines per request: the pipe's 64 KiB and the writer's queue fill
    // within the first few hundred requests.
    args.extend_from_slice(&["--http-listen", "127.0.0.1:0", "--log-level", "trace"]);
    /// Kills the node however the test ends.
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut api = std::process::Command::new(support::node::example_bin("api_node"))
        .args(&args)
        .env("SVCKIT_READY_FILE", &ready)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start api_node");
    // Held open and never read.
    let _unread = (api.stdout.take(), api.stderr.take());
    let _api = Killed(api);
    support::poll_until(WAIT, "api_node's ready file", || ready.exists());
    let text = std::fs::read_to_string(&ready).unwrap();
    let ready: serde_json::Value = serde_json::from_str(&text).unwrap();
    let addr: SocketAddr = ready["http"]
        .as_str()
        .unwrap()
        .trim_start_matches("http://")
        .parse()
        .unwrap();

    let loads = (0..4).map(|_| {
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            for _ in 0..250 {
                statuses.push(get(addr, "/v1/echo?msg=x", &[]).await.status);
            }
            statuses
        })
    });
    for load in loads {
        let statuses = load.await.unwrap();
        assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    }
    assert_eq!(get(addr, "/healthz", &[]).await.status, 200);
    let metrics = get(addr, "/metrics", &[]).await.body;
    let dropped: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("svckit_log_lines_dropped_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no dropped-lines counter in {metrics}"));
    assert!(dropped > 0, "no line dropped with nobody reading");
}
