//! No planned event loses a call of a client that never sends a call twice:
//! a plain kit channel (not idempotent), run as its own process
//! (`examples/call_load`), against a node of three workers on a real etcd,
//! through a rolling reload (SIGHUP) and through `max_requests` recycling,
//! at 16 and 64 calls in flight.

mod support;

use std::time::Duration;

use nix::sys::signal::Signal;
use support::etcd::Etcd;
use support::node::{quick_node_args, Proc};

const WAIT: Duration = Duration::from_secs(30);

/// A supervisor of three workers registered at `registry`, once all serve.
fn three_workers(registry: &str, host: &str, env: &[(&str, &str)]) -> Proc {
    let mut args = quick_node_args(registry, host);
    args.extend_from_slice(&["--workers", "3"]);
    let (node, _) = Proc::start_example("echo_node", &args, env);
    support::poll_until(WAIT, "three workers serving", || {
        node.serving_workers().len() == 3
    });
    node
}

/// A plain kit channel's load at `concurrency`, once its first calls were
/// answered.
fn kit_load(registry: &str, concurrency: usize) -> Proc {
    let concurrency = concurrency.to_string();
    let load = Proc::spawn(
        support::node::example_bin("call_load"),
        &["kit", "--registry", registry, "--concurrency", &concurrency],
        &[],
    );
    support::poll_until(WAIT, "the load running", || {
        load.stdout().lines().any(|l| l == "ready")
    });
    load
}

/// Stops the load and reads its last line: (calls, failed).
fn finish(mut load: Proc) -> (u64, u64, String) {
    load.signal(Signal::SIGTERM);
    load.wait_exit(WAIT).expect("the load stops");
    let out = load.stdout();
    let line = out
        .lines()
        .last()
        .unwrap_or_else(|| panic!("no output: {}", load.stderr()));
    let field = |name: &str| -> u64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {line:?}"))
    };
    (
        field("calls"),
        field("failed"),
        format!("{line}\n{}", load.stderr()),
    )
}

async fn reload_under(concurrency: usize) {
    let etcd = Etcd::start();
    let url = etcd.url().to_string();
    let node = three_workers(&url, &format!("zr{concurrency}"), &[]);
    let before = node.serving_workers();
    let load = kit_load(&url, concurrency);
    node.signal(Signal::SIGHUP);
    support::poll_until(WAIT, "every worker replaced", || {
        let now = node.serving_workers();
        now.len() == 3 && now.is_disjoint(&before)
    });
    node.wait_for_log("replacement done", WAIT);
    let (calls, failed, out) = finish(load);
    assert!(calls > 0, "{out}");
    assert_eq!(failed, 0, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_fails_no_call_of_a_plain_kit_channel_at_16_in_flight() {
    reload_under(16).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_fails_no_call_of_a_plain_kit_channel_at_64_in_flight() {
    reload_under(64).await;
}

async fn recycling_under(concurrency: usize) {
    let etcd = Etcd::start();
    let url = etcd.url().to_string();
    let env = [
        ("SVCKIT_MAX_REQUESTS", "2000"),
        ("SVCKIT_MAX_REQUESTS_JITTER", "200"),
    ];
    let node = three_workers(&url, &format!("zm{concurrency}"), &env);
    let load = kit_load(&url, concurrency);
    support::poll_until(WAIT, "five recycles", || {
        node.stderr()
            .matches("worker served max_requests; replacing it")
            .count()
            >= 5
    });
    let (calls, failed, out) = finish(load);
    assert!(calls >= 10_000, "{out}");
    assert_eq!(failed, 0, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recycling_fails_no_call_of_a_plain_kit_channel_at_16_in_flight() {
    recycling_under(16).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recycling_fails_no_call_of_a_plain_kit_channel_at_64_in_flight() {
    recycling_under(64).await;
}
