//! What `svckit xds` puts in a topic's resources reaches clients that are
//! not svckit's: Python grpcio and Node's grpc-js with grpc-js-xds, each
//! through its own xDS resolver, against real echo_nodes and a real etcd.
//! Each test runs once per client, and fails when its feature is off.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::Signal;
use support::certs::{Ca, Leaf};
use support::etcd::Etcd;
use support::node::{quick_node_args, Proc};
use support::xds::{control_plane, control_plane_with, Lang, XdsClient};
use support::{expect_event, is_leave};
use svckit::servicegroup;

#[allow(dead_code)]
#[path = "../examples/common/echo.rs"]
mod echo;

use echo::pb::echo_client::EchoClient;
use echo::pb::EchoRequest;

const WAIT: Duration = Duration::from_secs(20);

/// Two tests of `check`, one per independent client: Python grpcio and
/// Node's grpc-js.
macro_rules! per_client {
    ($check:ident: $python:ident, $node:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $python() {
            $check(Lang::Python).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $node() {
            $check(Lang::Node).await;
        }
    };
}

/// A node that keeps its lease but fails every other call stops getting
/// the client's calls: each topic's Cluster carries the kit's outlier
/// ejection (gRFC A50). Without it, a third of the calls go to the sick
/// node and half of those fail: about 3,300 of 20,000.
async fn leaves_out_a_node_that_fails_half_its_calls(lang: Lang) {
    let etcd = Etcd::start();
    let url = etcd.url().to_string();
    let mut nodes = Vec::new();
    for host in ["a", "b"] {
        nodes.push(Proc::start_example("echo_node", &quick_node_args(&url, host), &[]).0);
    }
    let sick = [("ECHO_FAIL_EVERY", "2")];
    nodes.push(Proc::start_example("echo_node", &quick_node_args(&url, "sick"), &sick).0);
    let (_xds, _, bootstrap, _dir) = control_plane(&url);
    let mut client = XdsClient::start(lang, &bootstrap);
    // The sick node is among the endpoints when the count starts.
    support::poll_until(WAIT, "calls on every node", || {
        client.calls(30).0.len() == 3
    });
    let (hosts, errors) = client.calls_within("calls 20000", Duration::from_secs(300));
    eprintln!(
        "{lang:?} with a sick node: {} of 20,000 calls failed; {hosts:?}",
        errors.len()
    );
    assert!(
        errors.len() <= 200,
        "{} of 20,000 calls failed (hosts {hosts:?}): {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    assert!(hosts.get("a").is_some_and(|n| *n > 5_000), "{hosts:?}");
    assert!(hosts.get("b").is_some_and(|n| *n > 5_000), "{hosts:?}");
}

per_client!(leaves_out_a_node_that_fails_half_its_calls: grpcio_leaves_out_a_node_that_fails_half_its_calls, grpc_js_leaves_out_a_node_that_fails_half_its_calls);

/// A topic's retry policy (gRFC A44) reaches the client: calls a node
/// fails with UNAVAILABLE, named in `retry_on`, are sent again and none is
/// lost; calls failed with INTERNAL, which it does not name, are not. Each
/// node is alone in its topic, so no outlier ejection hides its failures.
/// Without the policy a third of the first topic's calls fail.
async fn retries_the_codes_a_topic_policy_names(lang: Lang) {
    let etcd = Etcd::start();
    let url = etcd.url().to_string();
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies.toml");
    std::fs::write(
        &policies,
        "[default]\nretry_on = [\"unavailable\"]\nretries = 2\nbackoff = \"10ms\"\n",
    )
    .unwrap();
    let mut nodes = vec![Proc::start_example("echo_node", &quick_node_args(&url, "e1"), &[]).0];
    for (topic, code) in [("flaky", "unavailable"), ("broken", "internal")] {
        let mut args = quick_node_args(&url, topic);
        args.extend(["--topic", topic]);
        let env = [("ECHO_FAIL_EVERY", "3"), ("ECHO_FAIL_CODE", code)];
        nodes.push(Proc::start_example("echo_node", &args, &env).0);
    }
    let (_xds, _, bootstrap, _bootstrap_dir) =
        control_plane_with(&url, &["--policies", policies.to_str().unwrap()]);
    let mut client = XdsClient::start(lang, &bootstrap);
    let (_, errors) = client.calls_within("calls 3000 flaky", Duration::from_secs(120));
    eprintln!(
        "{lang:?}, UNAVAILABLE on every third call, retried: {} of 3,000 failed",
        errors.len()
    );
    assert!(
        errors.len() <= 15,
        "{} of 3,000 failed: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    let (_, errors) = client.calls_within("calls 3000 broken", Duration::from_secs(120));
    eprintln!(
        "{lang:?}, INTERNAL on every third call: {} of 3,000 failed",
        errors.len()
    );
    assert!(
        (900..=1100).contains(&errors.len()),
        "{} of 3,000 failed",
        errors.len()
    );
    assert!(
        errors.iter().all(|e| e.starts_with("INTERNAL")),
        "{:?}",
        &errors[..5]
    );
}

per_client!(retries_the_codes_a_topic_policy_names: grpcio_retries_the_codes_a_topic_policy_names, grpc_js_retries_the_codes_a_topic_policy_names);

#[test]
fn svckit_xds_refuses_a_policies_file_a_client_would_reject_and_a_bad_interval() {
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies.toml");
    std::fs::write(
        &policies,
        "[topic.echo]\nretry_on = [\"not-found\"]\nretries = 1\n",
    )
    .unwrap();
    let (code, _, stderr) = Proc::run_cli(&[
        "xds",
        "--registry",
        "memory://",
        "--listen",
        "127.0.0.1:0",
        "--policies",
        policies.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(78), "{stderr}");
    assert!(
        stderr.contains("[topic.echo]: retry_on: \"not-found\""),
        "{stderr}"
    );
    for (interval, says) in [("10ms", "less than 1s"), ("often", "expected")] {
        let (code, _, stderr) = Proc::run_cli(&[
            "xds",
            "--registry",
            "memory://",
            "--listen",
            "127.0.0.1:0",
            "--load-report-interval",
            interval,
        ]);
        assert_eq!(code, Some(64), "{stderr}");
        assert!(
            stderr.contains("--load-report-interval") && stderr.contains(says),
            "{stderr}"
        );
    }
}

/// Which node answered each key of a `keyed` command, or `None` while
/// some key's calls went to more than one node (as they do while the
/// client connects, or takes in a change) or failed.
fn owners(client: &mut XdsClient, keys: usize) -> Option<BTreeMap<String, String>> {
    let seen = client.command_within(&format!("keyed x-user {keys} 5"), WAIT * 3);
    if seen["errors"] != serde_json::json!([]) {
        return None;
    }
    let by_key: BTreeMap<String, BTreeMap<String, u64>> =
        serde_json::from_value(seen["keys"].clone()).expect("keys");
    by_key
        .into_iter()
        .map(|(key, hosts)| match hosts.len() {
            1 => Some((key, hosts.into_keys().next()?)),
            _ => None,
        })
        .collect()
}

/// Ring hash (gRFC A42) keyed by a request header: every call with one
/// key lands on one node, and when a node leaves only its keys move. With
/// round robin each key's calls would spread over all three nodes.
async fn ring_hash_keeps_a_key_on_one_node(lang: Lang) {
    let etcd = Etcd::start();
    let url = etcd.url().to_string();
    let registry = servicegroup::connect(&etcd.url(), &support::options())
        .await
        .expect("connect");
    let mut watch = registry.watch(Some("echo")).await.expect("watch");
    let mut nodes = BTreeMap::new();
    for host in ["a", "b", "c"] {
        nodes.insert(
            host,
            Proc::start_example("echo_node", &quick_node_args(&url, host), &[]).0,
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies.toml");
    std::fs::write(
        &policies,
        "[topic.echo]\nbalance = \"ring_hash\"\nhash_header = \"x-user\"\n",
    )
    .unwrap();
    let (_xds, _, bootstrap, _bootstrap_dir) =
        control_plane_with(&url, &["--policies", policies.to_str().unwrap()]);
    let mut client = XdsClient::start(lang, &bootstrap);
    const KEYS: usize = 40;
    let mut before = BTreeMap::new();
    support::poll_until(WAIT, "each key on one node, keys on all three", || {
        before = owners(&mut client, KEYS).unwrap_or_default();
        before.values().collect::<BTreeSet<_>>().len() == 3
    });
    // The same keys again: the same nodes.
    assert_eq!(owners(&mut client, KEYS), Some(before.clone()));

    let b = nodes.remove("b").expect("b");
    b.signal(Signal::SIGTERM);
    expect_event(&mut watch, WAIT, "b's leave", is_leave("b")).await;
    support::poll_until(WAIT, "each key on one node, none on b", || {
        owners(&mut client, KEYS).is_some_and(|keys| !keys.values().any(|h| h == "b"))
    });
    let after = owners(&mut client, KEYS).expect("each key on one node");
    let moved: Vec<_> = before
        .iter()
        .filter(|(key, host)| after[*key] != **host)
        .collect();
    eprintln!(
        "{lang:?} ring hash: {} of {KEYS} keys were on b, {} moved",
        before.values().filter(|h| *h == "b").count(),
        moved.len()
    );
    assert!(
        moved.iter().all(|(_, host)| *host == "b"),
        "keys of a and c moved: {moved:?}"
    );
}

per_client!(ring_hash_keeps_a_key_on_one_node: grpcio_ring_hash_keeps_a_key_on_one_node, grpc_js_ring_hash_keeps_a_key_on_one_node);

/// How the clients of [`costly_topic`] get the nodes' load reports.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reports {
    /// `OpenRcaService` streams (the default).
    OutOfBand,
    /// The trailer of each answer: `load_reports = "per_call"`, the nodes
    /// with `rpc_load_report_trailer`.
    PerCall,
}

/// Topic `echo` balanced by weighted round robin over nodes a and b, whose
/// calls cost 1 ms of CPU, and `costly`, whose calls cost 3 ms; its nodes,
/// its control plane and the bootstrap naming it.
fn costly_topic(
    etcd: &Etcd,
    reports: Reports,
) -> (Vec<Proc>, Proc, PathBuf, [tempfile::TempDir; 2]) {
    let url = etcd.url().to_string();
    let mut nodes = Vec::new();
    let trailer = if reports == Reports::PerCall {
        "true"
    } else {
        "false"
    };
    for (host, micros) in [("a", "1000"), ("b", "1000"), ("costly", "3000")] {
        let env = [
            ("ECHO_SPIN_US", micros),
            ("SVCKIT_RPC_LOAD_REPORT_TRAILER", trailer),
        ];
        nodes.push(Proc::start_example("echo_node", &quick_node_args(&url, host), &env).0);
    }
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies.toml");
    let mut text = "[topic.echo]\nbalance = \"weighted_round_robin\"\n".to_string();
    if reports == Reports::PerCall {
        text.push_str("load_reports = \"per_call\"\n");
    }
    std::fs::write(&policies, text).unwrap();
    let (xds, _, bootstrap, bootstrap_dir) =
        control_plane_with(&url, &["--policies", policies.to_str().unwrap()]);
    (nodes, xds, bootstrap, [dir, bootstrap_dir])
}

/// The costly node's share of the calls in `hosts`.
fn share(hosts: &BTreeMap<String, u64>) -> f64 {
    let all: u64 = hosts.values().sum();
    hosts.get("costly").copied().unwrap_or(0) as f64 / all.max(1) as f64
}

/// Weighted round robin (gRFC A58) from the nodes' ORCA reports: among
/// three nodes, one whose calls cost three times the CPU gets about a
/// seventh of the calls (weights 1, 1 and ⅓) instead of round robin's
/// third. grpc-js 1.14 takes WRR only with
/// `GRPC_EXPERIMENTAL_XDS_WRR_LB=true`.
async fn weighted_round_robin_sends_fewer_calls_to_a_costly_node(lang: Lang) {
    wrr_shifts_calls_off_the_costly_node(lang, Reports::OutOfBand).await;
}

per_client!(weighted_round_robin_sends_fewer_calls_to_a_costly_node: grpcio_weighted_round_robin_sends_fewer_calls_to_a_costly_node, grpc_js_weighted_round_robin_sends_fewer_calls_to_a_costly_node);

/// The same from the reports in each answer's trailer, with no ORCA
/// stream: without the nodes' trailer the clients have no weight and the
/// costly node keeps its third.
async fn weighted_round_robin_reads_the_reports_each_answer_carries(lang: Lang) {
    wrr_shifts_calls_off_the_costly_node(lang, Reports::PerCall).await;
}

per_client!(weighted_round_robin_reads_the_reports_each_answer_carries: grpcio_weighted_round_robin_reads_the_reports_each_answer_carries, grpc_js_weighted_round_robin_reads_the_reports_each_answer_carries);

async fn wrr_shifts_calls_off_the_costly_node(lang: Lang, reports: Reports) {
    let etcd = Etcd::start();
    let (_nodes, _xds, bootstrap, _dir) = costly_topic(&etcd, reports);
    let env = [("GRPC_EXPERIMENTAL_XDS_WRR_LB", "true")];
    let mut client = XdsClient::start_with(lang, &bootstrap, &env);
    // Weights count once each node has reported for the blackout period.
    let started = std::time::Instant::now();
    support::poll_until(
        Duration::from_secs(60),
        "the costly node's share to fall",
        || {
            let (hosts, errors) = client.calls(300);
            assert!(errors.is_empty(), "{errors:?}");
            share(&hosts) < 0.2
        },
    );
    let shifted = started.elapsed();
    let (hosts, errors) = client.calls_within("calls 3000", Duration::from_secs(120));
    assert!(errors.is_empty(), "{errors:?}");
    eprintln!(
        "{lang:?} WRR: the costly node's share {:.3} (round robin: 0.333), {hosts:?}; shifted after {shifted:.1?}",
        share(&hosts)
    );
    assert!(share(&hosts) < 0.2, "{hosts:?}");
}

/// A client without weighted round robin (grpc-js 1.14 unless
/// `GRPC_EXPERIMENTAL_XDS_WRR_LB=true`) takes the round robin listed after
/// it (gRFC A52) and rejects nothing: the control plane counts no NACK
/// from it, and the costly node keeps its third of the calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_wrr_takes_round_robin_and_sends_no_nack() {
    let etcd = Etcd::start();
    let (_nodes, xds, bootstrap, _dir) = costly_topic(&etcd, Reports::OutOfBand);
    let addr = control_plane_addr(&xds);
    let mut client = XdsClient::start(Lang::Node, &bootstrap);
    for _ in 0..3 {
        let (hosts, errors) = client.calls(600);
        assert!(errors.is_empty(), "{errors:?}");
        assert!((0.3..0.37).contains(&share(&hosts)), "{hosts:?}");
    }
    let metrics = support::dashboard::get(addr, "/metrics").body;
    let client_id = Lang::Node.node_id();
    assert!(
        !metrics.contains(&format!("svckit_xds_nacks_total{{client=\"{client_id}\"")),
        "{metrics}"
    );
    let dump = support::dashboard::get(addr, "/config_dump").body;
    assert!(dump.contains(client_id), "{dump}");
    assert!(!dump.contains("nacked\":{"), "{dump}");
}

/// A client too old for a topic's policy is sent round robin instead and
/// rejects nothing. grpc-js-xds 1.10 (tests/js/old) predates weighted round
/// robin: the control plane reads its release from the user agent in its
/// node, sends it the `echo` Cluster with round robin, and says so in the
/// config dump, while a current grpc-js on the same control plane gets the
/// topic's WRR. Without the version check the old client's Cluster would
/// be the WRR one, and the dump would not list `echo` for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_too_old_for_a_policy_gets_round_robin_and_sends_no_nack() {
    let etcd = Etcd::start();
    let (_nodes, xds, bootstrap, _dir) = costly_topic(&etcd, Reports::OutOfBand);
    let addr = control_plane_addr(&xds);
    let mut old = XdsClient::start(Lang::NodeOld, &bootstrap);
    let env = [("GRPC_EXPERIMENTAL_XDS_WRR_LB", "true")];
    let _current = XdsClient::start_with(Lang::Node, &bootstrap, &env);
    for _ in 0..3 {
        let (hosts, errors) = old.calls(600);
        assert!(errors.is_empty(), "{errors:?}");
        assert!((0.3..0.37).contains(&share(&hosts)), "{hosts:?}");
    }
    let metrics = support::dashboard::get(addr, "/metrics").body;
    assert!(!metrics.contains("svckit_xds_nacks_total{"), "{metrics}");
    let dump: serde_json::Value =
        serde_json::from_str(&support::dashboard::get(addr, "/config_dump").body).unwrap();
    let stream = |lang: Lang| {
        dump["streams"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["node"] == lang.node_id()))
            .unwrap_or_else(|| panic!("no stream of {lang:?} in {dump}"))
            .clone()
    };
    let (old, current) = (stream(Lang::NodeOld), stream(Lang::Node));
    assert_eq!(old["user_agent"], "gRPC Node Pure JS 1.10.1", "{old}");
    assert_eq!(
        old["round_robin_instead"],
        serde_json::json!(["echo"]),
        "{old}"
    );
    assert_eq!(
        current["round_robin_instead"],
        serde_json::json!([]),
        "{current}"
    );
    assert!(old["types"]["Cluster"]["acked"].is_string(), "{old}");
}

/// The address `svckit xds` printed.
fn control_plane_addr(xds: &Proc) -> std::net::SocketAddr {
    xds.stdout()
        .lines()
        .find_map(|l| l.strip_prefix("listening on http://"))
        .and_then(|a| a.trim().parse().ok())
        .expect("the control plane's address")
}

/// A node's out-of-band ORCA stream reports its calls and CPU, and ends
/// with OK when the node stops, so that it does not hold the connection's
/// drain (a stream cut by the drain's end would fail instead).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_reports_its_load_and_ends_the_report_stream_when_it_stops() {
    use svckit::pb::xds::service::orca::v3::open_rca_service_client::OpenRcaServiceClient;
    use svckit::pb::xds::service::orca::v3::OrcaLoadReportRequest;

    let etcd = Etcd::start();
    let url = etcd.url().to_string();
    let env = [("ECHO_SPIN_US", "2000")];
    let (mut node, addr) = Proc::start_example("echo_node", &quick_node_args(&url, "a"), &env);
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut reports = OpenRcaServiceClient::new(channel.clone())
        .stream_core_metrics(OrcaLoadReportRequest {
            report_interval: Some(prost_types::Duration {
                seconds: 0,
                nanos: 100_000_000,
            }),
            request_cost_names: Vec::new(),
        })
        .await
        .expect("the report stream")
        .into_inner();
    let calls = tokio::spawn(async move {
        let mut echo = EchoClient::new(channel);
        for _ in 0..200 {
            echo.echo(EchoRequest::default()).await.expect("echo");
        }
    });
    let mut busy = None;
    while busy.is_none() {
        let report = tokio::time::timeout(WAIT, reports.message())
            .await
            .expect("a report within the wait")
            .expect("a report")
            .expect("the stream goes on");
        if report.rps_fractional > 10.0 {
            busy = Some(report);
        }
    }
    let busy = busy.expect("a busy report");
    eprintln!("ORCA report under calls: {busy:?}");
    // Each call spends 2 ms of CPU: the CPU share follows the calls.
    let cpus = std::thread::available_parallelism().map_or(1, usize::from) as f64;
    assert!(
        busy.cpu_utilization * cpus >= busy.rps_fractional * 0.002 * 0.5,
        "{busy:?}"
    );
    assert!(busy.application_utilization >= busy.cpu_utilization);
    assert_eq!(busy.named_metrics["limit"], 1000.0, "{busy:?}");
    calls.await.expect("the calls");

    node.signal(Signal::SIGTERM);
    let end = tokio::time::timeout(WAIT, async {
        loop {
            match reports.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the stream ends");
    assert!(matches!(end, Ok(None)), "the stream ended with {end:?}");
    assert!(node.wait_exit(WAIT).is_some_and(|s| s.success()));
}

/// With `rpc_load_report_trailer`, every answer, failed ones too, carries
/// the node's load in the `endpoint-load-metrics-bin` trailer (gRFC A51),
/// as a plain tonic client reads it: the calls per second, the errors and
/// the CPU they cost. By default no answer carries it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_option_every_answer_carries_the_node_load_in_a_trailer() {
    use prost::Message;
    use svckit::pb::xds::data::orca::v3::OrcaLoadReport;

    let etcd = Etcd::start();
    let url = etcd.url().to_string();
    let (_plain, plain_addr) =
        Proc::start_example("echo_node", &quick_node_args(&url, "plain"), &[]);
    let env = [
        ("ECHO_SPIN_US", "2000"),
        ("ECHO_FAIL_EVERY", "10"),
        ("SVCKIT_RPC_LOAD_REPORT_TRAILER", "true"),
    ];
    let (_node, addr) = Proc::start_example("echo_node", &quick_node_args(&url, "a"), &env);
    let connect = |addr: std::net::SocketAddr| async move {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("url")
            .connect()
            .await
            .expect("connect");
        EchoClient::new(channel)
    };
    let answer = connect(plain_addr)
        .await
        .echo(EchoRequest::default())
        .await
        .expect("echo");
    assert!(
        answer
            .metadata()
            .get_bin("endpoint-load-metrics-bin")
            .is_none(),
        "{:?}",
        answer.metadata()
    );
    let mut echo = connect(addr).await;
    let report = |metadata: &tonic::metadata::MetadataMap| {
        let value = metadata
            .get_bin("endpoint-load-metrics-bin")
            .unwrap_or_else(|| panic!("no load report in {metadata:?}"));
        OrcaLoadReport::decode(value.to_bytes().expect("base64").as_ref()).expect("a report")
    };
    let (mut answered, mut failed, mut busy) = (0, 0, None::<OrcaLoadReport>);
    // A report covers the last 250 ms or so: a few hundred calls make one
    // busy; 20,000 without one is a failure.
    while answered < 300 || busy.is_none() {
        assert!(answered + failed < 20_000, "no busy report: {busy:?}");
        match echo.echo(EchoRequest::default()).await {
            Ok(response) => {
                answered += 1;
                let r = report(response.metadata());
                if r.rps_fractional > 50.0 && r.eps > 0.0 {
                    busy = Some(r);
                }
            }
            Err(status) => {
                failed += 1;
                report(status.metadata());
            }
        }
    }
    let busy = busy.expect("a busy report");
    eprintln!("per-call load report: {busy:?} ({answered} answered, {failed} failed)");
    assert!(failed > 0);
    // Each call spends 2 ms of CPU: the CPU share follows the calls.
    let cpus = std::thread::available_parallelism().map_or(1, usize::from) as f64;
    assert!(
        busy.cpu_utilization * cpus >= busy.rps_fractional * 0.002 * 0.5,
        "{busy:?}"
    );
    assert!(busy.eps > 0.0 && busy.eps < busy.rps_fractional, "{busy:?}");
    assert!(busy.application_utilization >= busy.cpu_utilization);
}

/// The figure `name{topic="echo",client=…}` on the control plane's
/// `/metrics`, 0 while it is not there.
fn load_figure(addr: std::net::SocketAddr, name: &str, client: &str) -> u64 {
    let metrics = support::dashboard::get(addr, "/metrics").body;
    let prefix = format!("{name}{{topic=\"echo\",client=\"{client}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Load reports (LRS): the client reports the calls it made through a
/// topic to the control plane, which shows them per topic and client on
/// `/metrics` and on its dashboard (`/`, `/api/xds-loads`). Without the
/// Cluster's load reporting server, nothing comes.
async fn reports_its_load_to_the_control_plane(lang: Lang) {
    let etcd = Etcd::start();
    let url = etcd.url().to_string();
    let _nodes: Vec<Proc> = ["a", "b"]
        .into_iter()
        .map(|host| Proc::start_example("echo_node", &quick_node_args(&url, host), &[]).0)
        .collect();
    let (_xds, addr, bootstrap, _dir) = control_plane_with(&url, &["--load-report-interval", "1s"]);
    let addr: std::net::SocketAddr = addr.parse().expect("the control plane's address");
    let mut client = XdsClient::start(lang, &bootstrap);
    let (_, errors) = client.calls(1000);
    assert!(errors.is_empty(), "{errors:?}");
    // With the client's first call, which waited for the channel: 1,001.
    let id = lang.node_id();
    support::poll_until(WAIT, "the calls reported", || {
        load_figure(addr, "svckit_xds_load_calls_succeeded_total", id) >= 1001
    });
    assert_eq!(
        load_figure(addr, "svckit_xds_load_calls_succeeded_total", id),
        1001
    );
    assert_eq!(
        load_figure(addr, "svckit_xds_load_calls_issued_total", id),
        1001
    );
    assert_eq!(
        load_figure(addr, "svckit_xds_load_calls_failed_total", id),
        0
    );
    let loads: serde_json::Value =
        serde_json::from_str(&support::dashboard::get(addr, "/api/xds-loads").body).unwrap();
    let echo = &loads["topics"]["echo"];
    assert_eq!(echo[0]["client"], id, "{loads}");
    assert_eq!(echo[0]["succeeded"], 1001, "{loads}");
    let page = support::dashboard::get(addr, "/").body;
    let row = format!(
        r#"<td class="client">{id}</td><td class="issued">1001</td><td class="succeeded">1001</td><td class="failed">0</td>"#
    );
    assert!(page.contains(&row), "{page}");
}

per_client!(reports_its_load_to_the_control_plane: grpcio_reports_its_load_to_the_control_plane, grpc_js_reports_its_load_to_the_control_plane);

/// `bootstrap` with a `file_watcher` certificate provider named `svckit`
/// holding `ca` and, when given, the client's certificate and key.
fn with_certificates(
    bootstrap: &std::path::Path,
    ca: &std::path::Path,
    identity: Option<&Leaf>,
) -> PathBuf {
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(bootstrap).unwrap()).unwrap();
    let mut config = serde_json::json!({
        "ca_certificate_file": ca,
        "refresh_interval": "600s",
    });
    if let Some(leaf) = identity {
        config["certificate_file"] = serde_json::json!(leaf.cert_file);
        config["private_key_file"] = serde_json::json!(leaf.key_file);
    }
    json["certificate_providers"] = serde_json::json!({
        "svckit": {"plugin_name": "file_watcher", "config": config},
    });
    let path = bootstrap.with_file_name("bootstrap-tls.json");
    std::fs::write(&path, json.to_string()).unwrap();
    path
}

/// Nodes that serve TLS (`https://` endpoints) are reached over TLS
/// (gRFC A29): their Cluster names the bootstrap's certificate provider,
/// whose CA checks the nodes' certificates; with `--tls-client-identity`
/// the client shows its certificate to nodes that require one. Without
/// the Cluster's TLS settings, the client would speak plaintext to a TLS
/// port and every call would fail.
async fn reaches_nodes_that_serve_tls(lang: Lang) {
    let etcd = Etcd::start();
    let url = etcd.url().to_string();
    let dir = tempfile::tempdir().unwrap();
    let nodes_ca = Ca::new(dir.path(), "nodes-ca");
    let node_cert = nodes_ca.issue("node", &["127.0.0.1", "localhost"]);
    let clients_ca = Ca::new(dir.path(), "clients-ca");
    let client_cert = clients_ca.issue("client", &["client.test"]);
    let tls_args = |host: &'static str, topic: &'static str, mutual: bool| {
        let mut args: Vec<String> = quick_node_args(&url, host)
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(["--topic".into(), topic.into()]);
        args.extend([
            "--tls-cert-file".into(),
            node_cert.cert_file.display().to_string(),
        ]);
        args.extend([
            "--tls-key-file".into(),
            node_cert.key_file.display().to_string(),
        ]);
        if mutual {
            args.extend([
                "--tls-client-ca-file".into(),
                clients_ca.cert_file.display().to_string(),
            ]);
        }
        args
    };
    let mut nodes = Vec::new();
    for (host, topic, mutual) in [
        ("a", "echo", false),
        ("b", "echo", false),
        ("m", "mutual", true),
    ] {
        let args = tls_args(host, topic, mutual);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        nodes.push(Proc::start_example("echo_node", &args, &[]).0);
    }
    let secure = [("XDS_CREDENTIALS", "1")];

    // TLS to the nodes, the client checking their certificates.
    let (_xds, _, bootstrap, _bootstrap_dir) = control_plane(&url);
    let bootstrap = with_certificates(&bootstrap, &nodes_ca.cert_file, None);
    let mut client = XdsClient::start_with(lang, &bootstrap, &secure);
    let (hosts, errors) = client.calls(60);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(hosts.keys().collect::<Vec<_>>(), ["a", "b"], "{hosts:?}");
    drop(client);

    // Mutual TLS: the client shows the certificate of its bootstrap.
    let (_xds, _, bootstrap, _bootstrap_dir) = control_plane_with(&url, &["--tls-client-identity"]);
    let bootstrap = with_certificates(&bootstrap, &nodes_ca.cert_file, Some(&client_cert));
    let mut client = XdsClient::start_with(lang, &bootstrap, &secure);
    let (hosts, errors) = client.calls_within("calls 30 mutual", WAIT * 3);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(hosts.keys().collect::<Vec<_>>(), ["m"], "{hosts:?}");
}

per_client!(reaches_nodes_that_serve_tls: grpcio_reaches_nodes_that_serve_tls, grpc_js_reaches_nodes_that_serve_tls);
