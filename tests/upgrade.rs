//! Binary upgrades of a multi-process node, with real processes, signals
//! and files: a package replaces the binary on disk (a new inode at the
//! same path), then SIGHUP. Every worker is replaced with the new file,
//! then the supervisor re-executes it in place, keeping its pid, its
//! sockets, its registration and its workers. A broken new file leaves the
//! old tree serving.

mod support;

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use nix::sys::signal::Signal;
use support::etcd::Etcd;
use support::node::{example_bin, quick_node_args, Proc};
use svckit::rpc::{Rpc, Target};
use svckit::servicegroup::{self, Event};

#[allow(dead_code)]
#[path = "../examples/common/echo.rs"]
mod echo;

use echo::pb::echo_client::EchoClient;
use echo::pb::EchoRequest;

const WAIT: Duration = Duration::from_secs(20);
/// The liveness key of the node the etcd test upgrades.
const ALIVE_KEY: &str = "/test/alive/echo/ul";

/// One test at a time: a binary being written (copied in) must not be
/// inherited, open for writing, by a process another test forks meanwhile,
/// which would make its exec fail with ETXTBSY.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    support::eventually(WAIT, what, || {
        let ok = check();
        async move { ok.then_some(()) }
    })
    .await;
}

/// A supervisor of two workers run from a copy of echo_node installed in
/// `dir`, as a package installs it, once both serve; with the copy's path.
async fn installed(
    dir: &tempfile::TempDir,
    registry: &str,
    host: &str,
    env: &[(&str, &str)],
) -> (Proc, PathBuf) {
    let binary = dir.path().join("echo_node");
    std::fs::copy(example_bin("echo_node"), &binary).expect("install the binary");
    let mut args = quick_node_args(registry, host);
    // Room for a slow start of the upgraded supervisor on a loaded machine.
    if let Some(at) = args.iter().position(|a| *a == "--service-down-time") {
        args[at + 1] = "3";
    }
    args.extend_from_slice(&["--workers", "2"]);
    let mut node = Proc::spawn(binary.clone(), &args, env);
    node.wait_for_endpoint(WAIT);
    wait_until("two workers serving", || node.serving_workers().len() == 2).await;
    (node, binary)
}

/// Replaces the file at `binary` as a package manager does: the new file
/// is written aside, then renamed over the old path. Returns its inode.
fn replace_binary(binary: &Path, contents: Option<&str>) -> u64 {
    use std::os::unix::fs::PermissionsExt;
    let staged = binary.with_extension("dpkg-new");
    match contents {
        None => {
            std::fs::copy(example_bin("echo_node"), &staged).expect("stage the new binary");
        }
        Some(script) => {
            std::fs::write(&staged, script).expect("stage the new binary");
            std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
    std::fs::rename(&staged, binary).expect("replace the binary");
    std::fs::metadata(binary).unwrap().ino()
}

/// The inode of the file process `pid` runs.
fn exe_inode(pid: u32) -> u64 {
    std::fs::metadata(format!("/proc/{pid}/exe"))
        .expect("a live process")
        .ino()
}

/// After the upgrade: the supervisor (same pid) and every serving worker
/// run the file with inode `new`, and no worker is one of `before`.
async fn wait_for_upgrade(node: &Proc, before: &BTreeSet<u32>, new: u64) {
    node.wait_for_log("supervisor upgraded in place", WAIT);
    let replaced = wait_until("every worker replaced", || {
        let now = node.serving_workers();
        now.len() == 2 && now.is_disjoint(before)
    });
    if futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(replaced))
        .await
        .is_err()
    {
        panic!("the workers were not all replaced: {}", node.stderr());
    }
    assert_eq!(
        exe_inode(node.pid()),
        new,
        "the supervisor runs the old file"
    );
    for pid in node.serving_workers() {
        assert_eq!(exe_inode(pid), new, "worker {pid} runs the old binary");
    }
}

/// A package upgrade, then SIGHUP: every worker is replaced by one running
/// the new file (not the deleted one `/proc/self/exe` names), then the
/// supervisor runs it too, under the same pid. The upgraded supervisor
/// handles signals and its adopted workers: a killed worker is restarted,
/// and SIGTERM stops the tree gracefully.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_after_an_upgrade_runs_the_new_binary_everywhere() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().join("registry").display());
    let (mut node, binary) = installed(&dir, &url, "up", &[("SVCKIT_DRAIN_DELAY", "0.2")]).await;
    let before = node.serving_workers();
    let supervisor = node.pid();

    let new = replace_binary(&binary, None);
    node.signal(Signal::SIGHUP);
    wait_for_upgrade(&node, &before, new).await;
    assert!(node.stderr().contains("the binary changed"));
    assert_eq!(node.pid(), supervisor);

    // An adopted worker that dies is restarted by the new image.
    let adopted = node.serving_workers();
    let victim = *adopted.iter().next().unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim as i32), Signal::SIGKILL).unwrap();
    wait_until("the killed worker replaced", || {
        let now = node.serving_workers();
        now.len() == 2 && !now.contains(&victim)
    })
    .await;

    node.signal(Signal::SIGTERM);
    let status = node.wait_exit(WAIT).expect("the supervisor exits");
    assert_eq!(status.code(), Some(0), "{}", node.stderr());
}

/// A broken upgrade: the new file exits at once, or never serves. SIGHUP
/// starts one replacement worker, which fails; the reload stops there, the
/// supervisor keeps its old binary, and the old workers go on serving,
/// neither replaced nor joined by a crash loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_upgrade_leaves_the_old_tree_serving() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().join("registry").display());
    let env = [
        ("SVCKIT_DRAIN_DELAY", "0.2"),
        ("SVCKIT_WORKER_TIMEOUT", "2"),
    ];
    let (node, binary) = installed(&dir, &url, "broken", &env).await;
    let before = node.serving_workers();
    let old = exe_inode(node.pid());

    replace_binary(&binary, Some("#!/bin/sh\nexit 70\n"));
    node.signal(Signal::SIGHUP);
    node.wait_for_log("the supervisor keeps the old one", WAIT);
    assert_eq!(node.serving_workers(), before);
    assert_eq!(exe_inode(node.pid()), old);
    assert!(node
        .stderr()
        .contains("a replacement worker failed to start"));
    assert_eq!(
        node.stderr().matches("restarting worker").count(),
        0,
        "{}",
        node.stderr()
    );

    // One that never reports serving is killed after worker_timeout, with
    // the same outcome.
    replace_binary(&binary, Some("#!/bin/sh\nexec sleep 3600\n"));
    node.signal(Signal::SIGHUP);
    node.wait_for_log("did not report serving within worker_timeout", WAIT);
    support::eventually(WAIT, "the upgrade given up", || async {
        (node
            .stderr()
            .matches("the supervisor keeps the old one")
            .count()
            == 2)
            .then_some(())
    })
    .await;
    assert_eq!(node.serving_workers(), before);
    assert_eq!(exe_inode(node.pid()), old);
    assert!(!node.stderr().contains("upgraded in place"));
}

/// The whole tree upgraded under load on etcd: clients calling by topic
/// throughout see no failed call, and a watcher of the topic never sees
/// the node leave: the upgraded supervisor carries its lease on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_tree_upgrades_under_load_without_a_failed_call_or_a_leave() {
    let _serial = SERIAL.lock().await;
    let etcd = Etcd::start();
    let url = etcd.url().to_string();
    let dir = tempfile::tempdir().unwrap();
    let (mut node, binary) = installed(&dir, &url, "ul", &[("SVCKIT_DRAIN_DELAY", "0.3")]).await;
    let before = node.serving_workers();
    let mut raw = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .unwrap();
    let alive_lease = |resp: etcd_client::GetResponse| resp.kvs().first().map(|kv| kv.lease());
    let lease = alive_lease(raw.get(ALIVE_KEY, None).await.unwrap());
    assert!(lease.is_some(), "the node is not registered");

    let registry = servicegroup::connect(&etcd.url(), &support::options())
        .await
        .unwrap();
    let mut watch = registry.watch(Some("echo")).await.unwrap();
    let target = Target::topic("echo");
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let rpc = Rpc::new(registry.clone()).await.unwrap();
        rpc.wait_for_nodes(&target, 1, WAIT).await.unwrap();
        let mut client = EchoClient::new(rpc.channel(target.clone()).idempotent());
        let stop = stop.clone();
        clients.push(tokio::spawn(async move {
            let (mut pids, mut errors, mut calls) = (BTreeSet::new(), Vec::new(), 0u64);
            while !stop.load(Ordering::Relaxed) {
                calls += 1;
                match client.echo(EchoRequest::default()).await {
                    Ok(reply) => {
                        pids.insert(reply.into_inner().pid);
                    }
                    Err(e) => {
                        // One is a failure; more would only spin.
                        errors.push(e);
                        break;
                    }
                }
            }
            drop(rpc);
            (pids, errors, calls)
        }));
    }

    let new = replace_binary(&binary, None);
    node.signal(Signal::SIGHUP);
    wait_for_upgrade(&node, &before, new).await;
    let after = node.serving_workers();
    // Calls reach the adopted workers once the old ones are gone.
    let answered_after = support::eventually(WAIT, "calls served by the new workers", || {
        let after = after.clone();
        let registry = registry.clone();
        let target = target.clone();
        async move {
            let rpc = Rpc::new(registry).await.ok()?;
            rpc.wait_for_nodes(&target, 1, WAIT).await.ok()?;
            let mut client = EchoClient::new(rpc.channel(target));
            let pid = client
                .echo(EchoRequest::default())
                .await
                .ok()?
                .into_inner()
                .pid;
            after.contains(&pid).then_some(pid)
        }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let (mut pids, mut errors, mut calls) = (BTreeSet::new(), Vec::new(), 0);
    for task in clients {
        let (p, e, c) = task.await.unwrap();
        pids.extend(p);
        errors.extend(e);
        calls += c;
    }
    eprintln!("{calls} calls through the upgrade, served by workers {pids:?}");
    if std::env::var_os("UPGRADE_LOG").is_some() {
        eprintln!("{}", node.stderr());
    }
    assert!(
        errors.is_empty(),
        "{} of {calls} calls failed: {errors:?}",
        errors.len()
    );
    assert!(pids.iter().any(|p| before.contains(p)), "{pids:?}");
    assert!(after.contains(&answered_after));

    // The upgraded supervisor carried its lease on: its liveness key was
    // never deleted nor claimed again under another lease.
    assert_eq!(alive_lease(raw.get(ALIVE_KEY, None).await.unwrap()), lease);
    // The watcher saw no leave of the node through the upgrade.
    while let Ok(Some(event)) = tokio::time::timeout(Duration::from_millis(100), watch.next()).await
    {
        if let Ok(Event::Leave(member)) = event {
            panic!("the node was seen leaving during the upgrade: {member:?}");
        }
    }
    node.signal(Signal::SIGTERM);
    let status = node.wait_exit(WAIT).expect("the supervisor exits");
    assert_eq!(status.code(), Some(0), "{}", node.stderr());
}
