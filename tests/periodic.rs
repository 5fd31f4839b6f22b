//! Periodic tasks of `topic` scope across real node processes on a real
//! etcd: one node of the topic runs the task at a time, and another takes
//! over when it is killed.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;
use support::etcd::Etcd;
use support::node::Proc;

/// The nodes' lease TTL and the task's spacing.
const DOWN_TIME: &str = "2";
const SPACING: &str = "0.5";
/// etcd looks for expired leases every 500 ms, so a dead leader's election
/// key may outlive its TTL by that much.
const LEASE_EXPIRY_CHECK: Duration = Duration::from_millis(500);
/// Room for process scheduling on a loaded test machine.
const SLACK: Duration = Duration::from_secs(1);

/// One run of `tick`: (host, start ms, end ms); the pid is in [`pids`].
type Run = (String, u128, u128);

fn runs(file: &Path) -> Vec<Run> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            assert_eq!(f.len(), 4, "bad tick line {l:?}");
            (
                f[0].to_string(),
                f[2].parse().unwrap(),
                f[3].parse().unwrap(),
            )
        })
        .collect()
}

/// The processes that ran `tick`.
fn pids(file: &Path) -> BTreeSet<u32> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(1)?.parse().ok())
        .collect()
}

/// Runs that overlapped another run in time.
fn overlaps(runs: &[Run]) -> Vec<(Run, Run)> {
    let mut sorted = runs.to_vec();
    sorted.sort_by_key(|r| r.1);
    sorted
        .windows(2)
        .filter(|w| w[1].1 < w[0].2)
        .map(|w| (w[0].clone(), w[1].clone()))
        .collect()
}

/// The runs are lines in a file written by other processes: no event to
/// wait for but the file's content.
fn wait_until(within: Duration, what: &str, check: impl FnMut() -> bool) {
    support::poll_until(within, what, check);
}

#[test]
fn a_topic_task_runs_on_one_node_at_a_time_and_moves_when_its_node_dies() {
    let etcd = Etcd::start();
    let url = etcd.url().to_string();
    let dir = tempfile::tempdir().unwrap();
    let ticks = dir.path().join("ticks");
    let ticks_env = ticks.to_string_lossy().into_owned();
    let hosts = ["p1", "p2", "p3"];
    let mut nodes: Vec<(String, Proc)> = hosts
        .iter()
        .map(|host| {
            let args = [
                "--registry",
                &url,
                "--host",
                host,
                "--report-interval",
                "0.2",
                "--service-down-time",
                DOWN_TIME,
            ];
            let env = [
                ("ECHO_TICK_FILE", ticks_env.as_str()),
                ("ECHO_TICK_SPACING", SPACING),
                ("ECHO_TICK_MILLIS", "100"),
                ("SVCKIT_PERIODIC_FUZZY_DELAY", "0"),
            ];
            let (proc, _) = Proc::start_example("echo_node", &args, &env);
            (host.to_string(), proc)
        })
        .collect();

    // All three serve; the task runs, always on the same one node.
    wait_until(Duration::from_secs(10), "ten runs of tick", || {
        runs(&ticks).len() >= 10
    });
    let before = runs(&ticks);
    let leaders: BTreeSet<_> = before.iter().map(|r| r.0.clone()).collect();
    assert_eq!(leaders.len(), 1, "several nodes ran the task: {before:?}");
    let leader = before[0].0.clone();

    // kill -9 the leader: no resignation, its lease has to expire.
    let index = nodes.iter().position(|(h, _)| *h == leader).unwrap();
    let (_, mut dead) = nodes.remove(index);
    dead.signal(Signal::SIGKILL);
    dead.wait_exit(Duration::from_secs(5))
        .expect("killed node exits");
    let killed_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let takeover = Duration::from_secs_f64(
        DOWN_TIME.parse::<f64>().unwrap() + SPACING.parse::<f64>().unwrap(),
    ) + LEASE_EXPIRY_CHECK;
    wait_until(takeover + SLACK, "another node to run the task", || {
        runs(&ticks).iter().any(|r| r.0 != leader)
    });

    // A few more runs, then the whole history: one node at a time.
    let taken = runs(&ticks).len();
    wait_until(Duration::from_secs(10), "five more runs", || {
        runs(&ticks).len() >= taken + 5
    });
    let all = runs(&ticks);
    assert_eq!(overlaps(&all), vec![], "two nodes ran the task at once");
    let after: BTreeSet<_> = all
        .iter()
        .filter(|r| r.1 > killed_at)
        .map(|r| r.0.clone())
        .collect();
    assert_eq!(after.len(), 1, "one new leader: {after:?}");
    assert!(!after.contains(&leader));
    for (_, node) in &nodes {
        node.signal(Signal::SIGTERM);
    }
}

/// A node of two workers running `tick` with `scope`, until `done` holds
/// for the tick file; returns the pids that ran it.
fn two_workers_tick(scope: &str, what: &str, done: impl Fn(&Path) -> bool) -> BTreeSet<u32> {
    let dir = tempfile::tempdir().unwrap();
    let registry = format!("file://{}", dir.path().join("registry").display());
    let ticks = dir.path().join("ticks");
    let ticks_env = ticks.to_string_lossy().into_owned();
    let args = ["--registry", &registry, "--host", "w", "--workers", "2"];
    let env = [
        ("ECHO_TICK_FILE", ticks_env.as_str()),
        ("ECHO_TICK_SCOPE", scope),
        ("ECHO_TICK_SPACING", "0.1"),
        ("ECHO_TICK_MILLIS", "1"),
        ("SVCKIT_PERIODIC_FUZZY_DELAY", "0"),
    ];
    let (node, _) = Proc::start_example("echo_node", &args, &env);
    wait_until(Duration::from_secs(10), what, || done(&ticks));
    node.signal(Signal::SIGTERM);
    pids(&ticks)
}

#[test]
fn a_node_task_runs_in_one_worker_and_a_worker_task_in_each() {
    let node_scope = two_workers_tick("node", "ten runs", |t| runs(t).len() >= 10);
    assert_eq!(node_scope.len(), 1, "a node task ran in {node_scope:?}");
    let worker_scope = two_workers_tick("worker", "runs in both workers", |t| pids(t).len() >= 2);
    assert_eq!(worker_scope.len(), 2, "{worker_scope:?}");
}

/// The leases etcd holds, and the leases the keys under `/` are bound to.
fn leases(etcd: &Etcd) -> (BTreeSet<i64>, BTreeSet<i64>) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut raw = etcd_client::Client::connect([etcd.endpoint()], None)
            .await
            .unwrap();
        let held = raw.leases().await.unwrap();
        let held = held.leases().iter().map(|l| l.id()).collect();
        let all = etcd_client::GetOptions::new().with_prefix();
        let keys = raw.get("/", Some(all)).await.unwrap();
        let bound = keys.kvs().iter().map(|kv| kv.lease()).collect();
        (held, bound)
    })
}

#[test]
fn a_node_and_its_task_election_share_one_lease_revoked_at_stop() {
    let etcd = Etcd::start();
    let url = etcd.url().to_string();
    let dir = tempfile::tempdir().unwrap();
    let ticks = dir.path().join("ticks");
    let ticks_env = ticks.to_string_lossy().into_owned();
    let args = [
        "--registry",
        &url,
        "--host",
        "l1",
        "--report-interval",
        "0.2",
    ];
    let env = [
        ("ECHO_TICK_FILE", ticks_env.as_str()),
        ("ECHO_TICK_SPACING", "0.1"),
        ("ECHO_TICK_MILLIS", "1"),
        ("SVCKIT_PERIODIC_FUZZY_DELAY", "0"),
    ];
    let (mut node, _) = Proc::start_example("echo_node", &args, &env);
    // Running the task proves the node won its election.
    wait_until(Duration::from_secs(10), "a run of tick", || {
        !runs(&ticks).is_empty()
    });
    let (held, bound) = leases(&etcd);
    assert_eq!(held.len(), 1, "leases held: {held:?}");
    // The record is the one key bound to no lease.
    let mut expected = held.clone();
    expected.insert(0);
    assert_eq!(bound, expected, "the liveness and election keys share it");

    node.signal(Signal::SIGTERM);
    let status = node.wait_exit(Duration::from_secs(10)).expect("node stops");
    assert!(status.success(), "{status:?}");
    let (held, bound) = leases(&etcd);
    assert!(held.is_empty(), "left behind: {held:?}");
    assert_eq!(bound, BTreeSet::from([0]), "only the record stays");
}
