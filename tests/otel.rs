//! Spans exported over OTLP to an independent receiver (Python, on the
//! generated services of OpenTelemetry's `opentelemetry-proto` package):
//! a request to api_node is one trace holding api_node's HTTP span, its
//! client span and echo_node's server span as parent and child; a collector
//! that is away costs no request and counts the spans dropped; sampling
//! follows the ratio for new traces and the parent's decision otherwise;
//! a malformed endpoint is refused; two nodes of one process export to
//! their own collectors.

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::etcd::Etcd;
use support::node::{quick_node_args, Proc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[allow(dead_code)]
#[path = "../examples/common/echo.rs"]
mod echo;

const WAIT: Duration = Duration::from_secs(30);
/// Batches leave every 100 ms in the tests (OpenTelemetry's
/// `OTEL_BSP_SCHEDULE_DELAY`; 5 s by default).
const QUICK_BATCHES: (&str, &str) = ("OTEL_BSP_SCHEDULE_DELAY", "100");

/// The receiver, its spans read line by line.
struct Receiver {
    child: Child,
    port: u16,
    spans: std::sync::mpsc::Receiver<serde_json::Value>,
    seen: Vec<serde_json::Value>,
}

impl Receiver {
    fn start() -> Receiver {
        support::python::require("grpc, opentelemetry.proto");
        let mut child = support::python::script("otlp_receiver.py")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the OTLP receiver");
        let stdout = child.stdout.take().unwrap();
        let (tx, spans) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let Ok(value) = serde_json::from_str(&line) else {
                    continue;
                };
                if tx.send(value).is_err() {
                    return;
                }
            }
        });
        let first: serde_json::Value = spans.recv_timeout(WAIT).expect("the receiver's port");
        let port = first["port"].as_u64().expect("a port") as u16;
        Receiver {
            child,
            port,
            spans,
            seen: Vec::new(),
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Waits until the spans of `trace_id` satisfy `done`; returns them.
    fn trace(
        &mut self,
        trace_id: &str,
        what: &str,
        done: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + WAIT;
        loop {
            let trace: Vec<_> = self
                .seen
                .iter()
                .filter(|s| s["trace_id"] == trace_id)
                .cloned()
                .collect();
            if done(&trace) {
                return trace;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::task::block_in_place(|| self.spans.recv_timeout(left)) {
                Ok(span) => self.seen.push(span),
                Err(_) => panic!("{what}: not received; spans of the trace: {trace:#?}"),
            }
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn get(addr: SocketAddr, path: &str, traceparent: Option<&str>) -> u16 {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut request = format!("GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n");
    if let Some(tp) = traceparent {
        request.push_str(&format!("traceparent: {tp}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut reply)).await;
    String::from_utf8_lossy(&reply)
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

async fn metric(addr: SocketAddr, name: &str) -> f64 {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n")
        .await
        .expect("send");
    let mut reply = String::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_string(&mut reply)).await;
    reply
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

fn http_addr(proc: &Proc) -> SocketAddr {
    let ready = proc.ready();
    ready["http"]
        .as_str()
        .expect("an http endpoint")
        .trim_start_matches("http://")
        .parse()
        .expect("host:port")
}

/// echo_node e1 and api_node a1 on one etcd, both with `env`.
fn fleet(etcd: &Etcd, env: &[(&str, &str)]) -> (Proc, Proc, SocketAddr) {
    let url = etcd.url().to_string();
    let (echo, _) = Proc::start_example("echo_node", &quick_node_args(&url, "e1"), env);
    let mut args = quick_node_args(&url, "a1");
    args.extend_from_slice(&["--http-listen", "127.0.0.1:0"]);
    let (api, _) = Proc::start_example("api_node", &args, env);
    let addr = http_addr(&api);
    (echo, api, addr)
}

fn find<'a>(
    trace: &'a [serde_json::Value],
    service: &str,
    kind: &str,
) -> Option<&'a serde_json::Value> {
    trace
        .iter()
        .find(|s| s["service"] == service && s["kind"] == kind)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_to_api_node_is_one_trace_across_both_nodes() {
    let mut receiver = Receiver::start();
    let etcd = Etcd::start();
    let endpoint = receiver.endpoint();
    let env = [("SVCKIT_OTLP_ENDPOINT", endpoint.as_str()), QUICK_BATCHES];
    let (_echo, _api, addr) = fleet(&etcd, &env);

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let traceparent = format!("00-{trace_id}-{caller_span}-01");
    support::eventually(WAIT, "api_node to answer", || async {
        (get(addr, "/v1/echo?msg=traced", Some(&traceparent)).await == 200).then_some(())
    })
    .await;
    let trace = receiver.trace(trace_id, "the three spans of the request", |t| {
        find(t, "api_node", "server").is_some()
            && find(t, "api_node", "client").is_some()
            && find(t, "echo_node", "server").is_some()
    });
    let http = find(&trace, "api_node", "server").unwrap();
    let client = find(&trace, "api_node", "client").unwrap();
    let served = find(&trace, "echo_node", "server").unwrap();

    // Parent and child, from the caller down to echo_node.
    assert_eq!(http["parent_span_id"], caller_span, "{http:#}");
    assert_eq!(client["parent_span_id"], http["span_id"], "{client:#}");
    assert_eq!(served["parent_span_id"], client["span_id"], "{served:#}");

    // What each holds.
    assert_eq!(http["name"], "GET /v1/echo");
    assert_eq!(http["attributes"]["http.route"], "/v1/echo");
    assert_eq!(http["attributes"]["http.request.method"], "GET");
    assert_eq!(http["attributes"]["http.response.status_code"], 200);
    assert_eq!(http["resource"]["host.name"], "a1");
    for span in [client, served] {
        assert_eq!(span["name"], "svckit.examples.echo.v1.Echo/Echo");
        assert_eq!(span["attributes"]["rpc.system"], "grpc");
        assert_eq!(
            span["attributes"]["rpc.service"],
            "svckit.examples.echo.v1.Echo"
        );
        assert_eq!(span["attributes"]["rpc.method"], "Echo");
        assert_eq!(span["attributes"]["rpc.grpc.status_code"], 0);
        assert_eq!(span["status"], 0, "unset: not an error");
    }
    assert_eq!(client["attributes"]["svckit.topic"], "echo");
    assert_eq!(client["attributes"]["svckit.host"], "e1");
    assert_eq!(client["attributes"]["server.address"], "127.0.0.1");
    assert_eq!(client["attributes"]["svckit.hedged"], false);
    assert_eq!(client["attributes"]["svckit.retried"], false);
    assert_eq!(served["resource"]["host.name"], "e1");

    // A request without a traceparent starts its own trace at api_node.
    assert_eq!(get(addr, "/v1/echo?msg=root", None).await, 200);
    let deadline = Instant::now() + WAIT;
    let root = loop {
        if let Some(root) = receiver.seen.iter().find(|s| {
            s["service"] == "api_node"
                && s["kind"] == "server"
                && s["parent_span_id"] == ""
                && s["trace_id"] != trace_id
        }) {
            break root.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no root span: {:#?}",
            receiver.seen
        );
        let span =
            tokio::task::block_in_place(|| receiver.spans.recv_timeout(WAIT)).expect("a root span");
        receiver.seen.push(span);
    };
    let root_trace = root["trace_id"].as_str().unwrap().to_string();
    receiver.trace(&root_trace, "echo_node's span under the root", |t| {
        find(t, "echo_node", "server").is_some()
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_away_costs_no_request_and_counts_the_spans_dropped() {
    let etcd = Etcd::start();
    let away = support::dead_endpoint();
    let env = [("SVCKIT_OTLP_ENDPOINT", away.as_str()), QUICK_BATCHES];
    let (_echo, _api, addr) = fleet(&etcd, &env);
    support::eventually(WAIT, "api_node to answer", || async {
        (get(addr, "/v1/echo?msg=x", None).await == 200).then_some(())
    })
    .await;
    for _ in 0..20 {
        assert_eq!(get(addr, "/v1/echo?msg=x", None).await, 200);
    }
    support::eventually(WAIT, "dropped spans counted", || async {
        let dropped = metric(addr, "svckit_trace_spans_dropped_total").await;
        (dropped >= 20.0).then_some(())
    })
    .await;
    assert_eq!(metric(addr, "svckit_trace_spans_exported_total").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_follows_the_ratio_for_new_traces_and_the_parent_otherwise() {
    let mut receiver = Receiver::start();
    let etcd = Etcd::start();
    let endpoint = receiver.endpoint();
    let env = [
        ("SVCKIT_OTLP_ENDPOINT", endpoint.as_str()),
        ("SVCKIT_OTLP_SAMPLE_RATIO", "0"),
        QUICK_BATCHES,
    ];
    let (_echo, _api, addr) = fleet(&etcd, &env);
    support::eventually(WAIT, "api_node to answer", || async {
        (get(addr, "/v1/echo?msg=x", None).await == 200).then_some(())
    })
    .await;
    // Not sampled: new traces (ratio 0), and a parent that says no.
    for _ in 0..10 {
        assert_eq!(get(addr, "/v1/echo?msg=x", None).await, 200);
    }
    let unsampled = "00-11111111111111111111111111111111-00f067aa0ba902b7-00";
    assert_eq!(get(addr, "/v1/echo?msg=x", Some(unsampled)).await, 200);
    // Sampled: a parent that says yes, through both nodes.
    let trace_id = "22222222222222222222222222222222";
    let sampled = format!("00-{trace_id}-00f067aa0ba902b7-01");
    assert_eq!(get(addr, "/v1/echo?msg=x", Some(&sampled)).await, 200);
    receiver.trace(trace_id, "the sampled trace", |t| {
        find(t, "echo_node", "server").is_some() && find(t, "api_node", "server").is_some()
    });
    // By then every batch sent before has arrived: it holds nothing else.
    let others: Vec<_> = receiver
        .seen
        .iter()
        .filter(|s| s["trace_id"] != trace_id)
        .collect();
    assert!(others.is_empty(), "unsampled spans exported: {others:#?}");
}

#[test]
fn a_malformed_otlp_endpoint_is_refused_at_start() {
    let mut node = Proc::spawn(
        support::node::example_bin("echo_node"),
        &quick_node_args("memory://", "bad"),
        &[("SVCKIT_OTLP_ENDPOINT", "collector:4317")],
    );
    let status = node.wait_exit(WAIT).expect("the node exits");
    assert_eq!(status.code(), Some(78), "{}", node.stderr());
    assert!(
        node.stderr().contains("otlp_endpoint") && node.stderr().contains("http://127.0.0.1:4317"),
        "{}",
        node.stderr()
    );
}

/// Two nodes in one process, each with its own `otlp_endpoint`: each
/// node's spans reach its own collector, and none the other's (a span
/// export is the node's, not the process's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_in_one_process_export_to_their_own_collectors() {
    use svckit::service::{Service, StartContext};
    use svckit::{Config, Node};

    let mut receivers = [Receiver::start(), Receiver::start()];
    let traces = [
        "11111111111111111111111111111111",
        "22222222222222222222222222222222",
    ];
    let mut nodes = Vec::new();
    for (host, receiver) in ["a", "b"].into_iter().zip(&receivers) {
        let config = Config::default()
            .with("registry", "memory://otel-two-nodes")
            .and_then(|c| c.with("host", host))
            .and_then(|c| c.with("otlp_endpoint", &receiver.endpoint()))
            .and_then(|c| c.with("drain_delay", "0"))
            .expect("config");
        let node = Arc::new(
            Node::builder(echo::EchoManager::new(host))
                .topic("echo")
                .build(&config),
        );
        node.start(StartContext::new(&config)).await.expect("start");
        nodes.push(node);
    }
    for (node, trace_id) in nodes.iter().zip(traces) {
        let url = node.info().endpoints().grpc.expect("a gRPC endpoint");
        let channel = tonic::transport::Endpoint::from_shared(url)
            .expect("url")
            .connect()
            .await
            .expect("connect");
        let mut request = tonic::Request::new(echo::pb::EchoRequest::default());
        let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
        request
            .metadata_mut()
            .insert("traceparent", traceparent.parse().expect("ascii"));
        echo::pb::echo_client::EchoClient::new(channel)
            .echo(request)
            .await
            .expect("echo");
    }
    // Each node sends what it queued as it stops.
    for node in &nodes {
        node.stop().await.expect("stop");
    }
    for (i, (receiver, host)) in receivers.iter_mut().zip(["a", "b"]).enumerate() {
        let trace = receiver.trace(traces[i], "the node's server span", |t| !t.is_empty());
        assert!(
            trace.iter().all(|s| s["resource"]["host.name"] == host),
            "{trace:#?}"
        );
    }
    // Anything else either received belongs to its own node.
    for (receiver, host) in receivers.iter_mut().zip(["a", "b"]) {
        while let Ok(span) = receiver.spans.recv_timeout(Duration::from_millis(300)) {
            receiver.seen.push(span);
        }
        for span in &receiver.seen {
            assert_eq!(span["resource"]["host.name"], host, "{span:#}");
        }
    }
}

/// Two nodes in one process, one of which calls another topic through an
/// RPC client it makes while serving: only that node's `/metrics` shows
/// the client's view of the topic (a client's figures are its node's, not
/// the process's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rpc_client_made_within_a_node_shows_on_that_node_alone() {
    use svckit::service::{Service, StartContext};
    use svckit::{Config, Node};

    let config = |host: &str, topic: &str| {
        Config::default()
            .with("registry", "memory://client-figures-two-nodes")
            .and_then(|c| c.with("host", host))
            .and_then(|c| c.with("topic", topic))
            .and_then(|c| c.with("http_listen", "127.0.0.1:0"))
            .and_then(|c| c.with("drain_delay", "0"))
            .expect("config")
    };
    let mut nodes = Vec::new();
    for (host, topic) in [("t", "target"), ("a", "echo"), ("b", "echo")] {
        let config = config(host, topic);
        let manager = echo::EchoManager::new(host).with_rpc(config.clone());
        let node = Arc::new(Node::builder(manager).topic(topic).build(&config));
        node.start(StartContext::new(&config)).await.expect("start");
        nodes.push(node);
    }
    let endpoints = |i: usize| nodes[i].info().endpoints();
    // Node t joins its topic, as its launcher would have it.
    let registry = svckit::servicegroup::connect(
        &"memory://client-figures-two-nodes".parse().expect("url"),
        &support::options(),
    )
    .await
    .expect("the memory registry");
    let target = endpoints(0).grpc.expect("t's gRPC endpoint");
    let _joined = registry
        .join(support::registration_at("target", "t", &target))
        .await
        .expect("join");
    let url = endpoints(1).grpc.expect("a gRPC endpoint");
    let channel = tonic::transport::Endpoint::from_shared(url)
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let relayed = echo::pb::work_client::WorkClient::new(channel)
        .relay(echo::pb::RelayRequest {
            topic: "target".into(),
            ..Default::default()
        })
        .await
        .expect("relay")
        .into_inner();
    assert_eq!(relayed.code, 0, "{relayed:?}");
    let metrics = |i: usize| {
        let http = endpoints(i).http.expect("an HTTP endpoint");
        let addr = http
            .trim_start_matches("http://")
            .parse()
            .expect("an address");
        support::dashboard::get(addr, "/metrics").body
    };
    let seen = "svckit_rpc_client_nodes{topic=\"target\"} 1";
    let (a, b) = (metrics(1), metrics(2));
    assert!(a.contains(seen), "{a}");
    assert!(!b.contains("svckit_rpc_client_nodes{topic="), "{b}");
    for node in &nodes {
        node.stop().await.expect("stop");
    }
}
