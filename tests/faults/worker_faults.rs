//! Faults of a multi-worker node: one worker killed (the supervisor
//! replaces it, the node stays up), then the supervisor killed (its
//! workers die with it and the node leaves).

use std::collections::BTreeSet;
use std::time::Instant;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::harness::{assert_no_failed_call, blocking, serial, Fleet, NodeSpec, Row, WAIT};
use crate::node_faults::WARM;
use crate::support::etcd::Etcd;
use crate::support::node::Proc;
use crate::support::{eventually, is_join, is_leave};

/// The worker pids the supervisor's log shows serving.
fn serving_pids(supervisor: &Proc) -> BTreeSet<u32> {
    let log = supervisor.stderr();
    let pid = |line: &str| -> Option<u32> {
        let rest = line.split(" pid=").nth(1)?;
        rest.split_whitespace().next()?.parse().ok()
    };
    let mut pids = BTreeSet::new();
    for line in log.lines().filter(|l| l.contains("pool: worker serving")) {
        pids.extend(pid(line));
    }
    for line in log
        .lines()
        .filter(|l| l.contains("pool: worker stopped") || l.contains("pool: worker exited"))
    {
        if let Some(p) = pid(line) {
            pids.remove(&p);
        }
    }
    pids
}

/// A zombie has exited: only a live process has a state other than Z.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z"),
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_a_worker_then_the_supervisor() {
    let _serial = serial().await;
    let etcd = blocking(Etcd::start);
    let specs = vec![
        NodeSpec::echo("n1"),
        NodeSpec::echo("n2"),
        NodeSpec::echo("w3").args(&["--workers", "2"]),
    ];
    let mut fleet = Fleet::start(&etcd.url(), specs).await;
    eventually(WAIT, "two workers serving", || {
        let n = serving_pids(fleet.node("w3")).len();
        async move { (n == 2).then_some(()) }
    })
    .await;

    // One worker: the other keeps the socket served, the supervisor starts
    // a replacement, and the node never leaves.
    let calls = fleet.call_loop(true);
    calls.wait_ok(WARM, "calls before the fault").await;
    let workers = serving_pids(fleet.node("w3"));
    let victim = *workers.iter().next().unwrap();
    let fault = Instant::now();
    kill(Pid::from_raw(victim as i32), Signal::SIGKILL).unwrap();
    eventually(WAIT, "a replacement worker serving", || {
        let pids = serving_pids(fleet.node("w3"));
        let replaced = pids.len() == 2 && !pids.contains(&victim);
        async move { replaced.then_some(()) }
    })
    .await;
    let replaced = Instant::now();
    let recovered = calls
        .wait_hosts_served(&fleet.hosts(), replaced, fault, "calls on every node again")
        .await;
    // Every event up to a probe's: the node was never seen down.
    fleet.probe(&etcd.url(), "probe-worker", fault).await;
    let worker_calls = calls.stop().await;
    Row {
        fault: "kill -9 one worker of a 2-worker node",
        calls: &worker_calls,
        reflected: None,
        recovered: Some(recovered),
        note: "node never seen down; recovered: replacement serving".into(),
    }
    .print();

    // The supervisor: its workers die with it, the lease runs out.
    let calls = fleet.call_loop(true);
    calls.wait_ok(WARM, "calls before the fault").await;
    let fault = Instant::now();
    fleet.node("w3").signal(Signal::SIGKILL);
    let (_, reflected, _) = fleet.event(fault, "w3's leave", is_leave("w3")).await;
    fleet
        .until_routed(&["n1", "n2"], "w3 out of the client's nodes")
        .await;
    blocking(|| fleet.node_mut("w3").wait_exit(WAIT)).expect("the supervisor ended");
    let workers = serving_pids(fleet.node("w3"));
    eventually(WAIT, "every worker gone with its supervisor", || {
        let gone = workers.iter().all(|p| !alive(*p));
        async move { gone.then_some(()) }
    })
    .await;
    let restart = Instant::now();
    fleet.restart("w3");
    fleet.event(restart, "w3's join", is_join("w3")).await;
    let joined = Instant::now();
    let recovered = calls
        .wait_hosts_served(&fleet.hosts(), joined, restart, "calls on every node again")
        .await;
    let supervisor_calls = calls.stop().await;
    Row {
        fault: "kill -9 the supervisor of a 2-worker node",
        calls: &supervisor_calls,
        reflected: Some(reflected),
        recovered: Some(recovered),
        note: "workers die with it; recovered: from the restart".into(),
    }
    .print();

    assert_no_failed_call(&worker_calls, "worker kill");
    assert_no_failed_call(&supervisor_calls, "supervisor kill");
}
