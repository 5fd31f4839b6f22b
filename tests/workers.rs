//! The multi-process launcher with real processes and signals: workers
//! sharing one socket, respawn with backoff, registration once per node,
//! reload, resize, report, and workers dying with their supervisor.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use support::etcd::Etcd;
use support::node::{example_bin, quick_node_args, Proc};
use svckit::servicegroup::{self, Registry};

#[allow(dead_code)]
#[path = "../examples/common/echo.rs"]
mod echo;

use echo::pb::echo_client::EchoClient;
use echo::pb::EchoRequest;

const WAIT: Duration = Duration::from_secs(20);

type Client = EchoClient<tonic::transport::Channel>;

/// A new connection: the kernel hands it to whichever worker accepts.
async fn connect(addr: std::net::SocketAddr) -> Client {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("connect to the node");
    EchoClient::new(channel)
}

async fn pid_of(client: &mut Client) -> u32 {
    client
        .echo(EchoRequest {
            payload: b"p".to_vec(),
        })
        .await
        .expect("echo")
        .into_inner()
        .pid
}

/// Connections until `distinct` workers answered: (client, pid) pairs.
async fn clients_on_workers(addr: std::net::SocketAddr, distinct: usize) -> Vec<(Client, u32)> {
    let mut found: Vec<(Client, u32)> = Vec::new();
    for _ in 0..400 {
        let mut client = connect(addr).await;
        let pid = pid_of(&mut client).await;
        if !found.iter().any(|(_, p)| *p == pid) {
            found.push((client, pid));
            if found.len() >= distinct {
                return found;
            }
        }
    }
    panic!(
        "only {} distinct workers answered 400 connections",
        found.len()
    );
}

fn serving_pids(supervisor: &Proc) -> BTreeSet<u32> {
    supervisor.serving_workers()
}

fn alive(pid: u32) -> bool {
    // A zombie has exited: only a live process has a state other than Z.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z"),
        Err(_) => false,
    }
}

async fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    support::eventually(WAIT, what, || {
        let ok = check();
        async move { ok.then_some(()) }
    })
    .await;
}

fn supervisor(
    registry: &str,
    host: &str,
    workers: &str,
    extra: &[&str],
) -> (Proc, std::net::SocketAddr) {
    let mut args = quick_node_args(registry, host);
    args.extend_from_slice(&["--workers", workers]);
    args.extend_from_slice(extra);
    Proc::start_example("echo_node", &args, &[("SVCKIT_DRAIN_DELAY", "0.2")])
}

async fn registry(etcd: &Etcd) -> Registry {
    servicegroup::connect(&etcd.url(), &support::options())
        .await
        .expect("connect to etcd")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_workers_share_the_socket_and_the_node_registers_once() {
    let etcd = Etcd::start();
    let url = etcd.url().to_string();
    let (node, addr) = supervisor(&url, "w4", "4", &[]);
    wait_until("four workers serving", || serving_pids(&node).len() == 4).await;

    let on = clients_on_workers(addr, 3).await;
    let pids: BTreeSet<u32> = on.iter().map(|(_, p)| *p).collect();
    assert!(pids.len() >= 3, "{pids:?}");
    assert!(pids.is_subset(&serving_pids(&node)), "{pids:?}");

    let members = registry(&etcd).await.list(Some("echo")).await.unwrap();
    assert_eq!(members.len(), 1, "{members:?}");
    assert!(members[0].up);
    assert_eq!(members[0].record.workers, 4);
    let (code, out, _) = Proc::run_cli(&["members", "list", "--registry", &url, "--json"]);
    assert_eq!(code, Some(0));
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rows.as_array().map(Vec::len), Some(1), "{out}");
    assert_eq!(rows[0]["workers"], 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_is_replaced_and_the_others_keep_serving() {
    let etcd = Etcd::start();
    let (node, addr) = supervisor(
        &etcd.url().to_string(),
        "wk",
        "3",
        &["--http-listen", "127.0.0.1:0"],
    );
    wait_until("three workers serving", || serving_pids(&node).len() == 3).await;
    let http: std::net::SocketAddr = node.ready()["http"]
        .as_str()
        .and_then(|u| u.strip_prefix("http://"))
        .and_then(|a| a.parse().ok())
        .expect("an HTTP endpoint in the ready file");
    let restarts = || {
        support::dashboard::get(http, "/metrics")
            .body
            .lines()
            .find_map(|l| l.strip_prefix("svckit_worker_restarts_total{reason=\"exited\"} "))
            .map(str::to_string)
    };
    assert_eq!(restarts().as_deref(), Some("0"));
    let mut on = clients_on_workers(addr, 2).await;
    let (_, victim) = on.remove(0);
    let (mut survivor, survivor_pid) = on.remove(0);

    kill(Pid::from_raw(victim as i32), Signal::SIGKILL).unwrap();
    for _ in 0..50 {
        assert_eq!(
            pid_of(&mut survivor).await,
            survivor_pid,
            "a call to another worker failed"
        );
    }
    wait_until("a replacement worker serving", || {
        let pids = serving_pids(&node);
        pids.len() == 3 && !pids.contains(&victim)
    })
    .await;
    assert!(
        node.stderr().contains("killed by SIGKILL"),
        "{}",
        node.stderr()
    );
    // Every worker, the survivors and the replacement, counts the restart:
    // asked several times, answers come from several workers.
    for _ in 0..12 {
        assert_eq!(restarts().as_deref(), Some("1"));
    }
}

/// A stopped worker (SIGSTOP: as a runtime that blocks, it sends no beat)
/// is killed and replaced within `worker_timeout` + 2 s; meanwhile the
/// other worker serves calls by topic, and the restart is counted with
/// its reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_worker_is_killed_and_replaced_after_worker_timeout() {
    let etcd = Etcd::start();
    let url = etcd.url().to_string();
    let mut args = quick_node_args(&url, "hung");
    args.extend_from_slice(&["--workers", "2", "--http-listen", "127.0.0.1:0"]);
    let env = [
        ("SVCKIT_DRAIN_DELAY", "0.2"),
        ("SVCKIT_WORKER_TIMEOUT", "2"),
    ];
    let (node, addr) = Proc::start_example("echo_node", &args, &env);
    wait_until("two workers serving", || serving_pids(&node).len() == 2).await;
    let mut on = clients_on_workers(addr, 2).await;
    let (mut inside, victim) = on.remove(0);
    let (mut survivor, survivor_pid) = on.remove(0);
    // One call inside the victim when it stops: the one call that fails
    // with it, and the count the supervisor logs when it kills it.
    let held = tokio::spawn(async move {
        inside
            .sleep(echo::pb::SleepRequest { millis: 30_000 })
            .await
    });
    node.wait_for_log("sleep started", WAIT);

    kill(Pid::from_raw(victim as i32), Signal::SIGSTOP).unwrap();
    let stopped = std::time::Instant::now();
    // New connections, those of a client by topic among them, go to the
    // worker that accepts them.
    let rpc = svckit::rpc::Rpc::new(registry(&etcd).await)
        .await
        .expect("rpc client");
    let mut by_topic = EchoClient::new(rpc.channel(svckit::rpc::Target::topic("echo")));
    for _ in 0..20 {
        let reply = by_topic
            .echo(EchoRequest::default())
            .await
            .expect("a call by topic while a worker is stopped");
        assert_eq!(reply.into_inner().pid, survivor_pid);
        assert_eq!(pid_of(&mut survivor).await, survivor_pid);
    }
    support::eventually(
        Duration::from_secs(4),
        "the stopped worker replaced within worker_timeout + 2 s",
        || {
            let pids = serving_pids(&node);
            let replaced = pids.len() == 2 && !pids.contains(&victim) && !alive(victim);
            async move { replaced.then_some(()) }
        },
    )
    .await;
    let waited = stopped.elapsed();
    let log = node.stderr();
    let killed = log
        .lines()
        .find(|l| l.contains("sent no beat within worker_timeout"))
        .unwrap_or_else(|| panic!("no kill logged: {log}"));
    assert!(killed.contains("calls_in_flight=1"), "{killed}");
    let held = held.await.expect("the held call's task");
    assert!(held.is_err(), "the call inside the killed worker: {held:?}");
    let http: std::net::SocketAddr = node.ready()["http"]
        .as_str()
        .and_then(|u| u.strip_prefix("http://"))
        .and_then(|a| a.parse().ok())
        .expect("an HTTP endpoint in the ready file");
    support::eventually(WAIT, "the restart counted as a timeout", || async {
        let metrics = support::dashboard::get(http, "/metrics").body;
        metrics
            .lines()
            .any(|l| l == r#"svckit_worker_restarts_total{reason="timeout"} 1"#)
            .then_some(())
    })
    .await;
    eprintln!("stopped worker replaced after {waited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_die_with_a_killed_supervisor_and_the_lease_expires() {
    let etcd = Etcd::start();
    let (node, _) = supervisor(&etcd.url().to_string(), "wd", "2", &[]);
    wait_until("two workers serving", || serving_pids(&node).len() == 2).await;
    let workers = serving_pids(&node);
    let registry = registry(&etcd).await;
    let mut watch = registry.watch(Some("echo")).await.unwrap();
    support::expect_event(&mut watch, WAIT, "the node up", support::is_join("wd")).await;

    node.signal(Signal::SIGKILL);
    wait_until("every worker gone", || workers.iter().all(|p| !alive(*p))).await;
    // The lease outlives the supervisor by at most service_down_time (1 s).
    support::expect_event(
        &mut watch,
        Duration::from_secs(5),
        "the node's leave",
        support::is_leave("wd"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttin_and_ttou_change_the_worker_count_and_usr2_reports() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    let (node, _) = supervisor(&url, "wt", "2", &[]);
    let registry = servicegroup::connect(
        &servicegroup::RegistryUrl::parse(&url).unwrap(),
        &support::options(),
    )
    .await
    .unwrap();
    // The record's `workers` follows the workers that serve, within 2 s.
    let record_says = |workers: u32| {
        let registry = registry.clone();
        async move {
            support::eventually(
                Duration::from_secs(2),
                &format!("the record saying workers = {workers}"),
                || async {
                    let member = registry.get("echo", "wt").await.ok().flatten()?;
                    (member.up && member.record.workers == workers).then_some(())
                },
            )
            .await
        }
    };
    wait_until("two workers serving", || serving_pids(&node).len() == 2).await;
    record_says(2).await;

    node.signal(Signal::SIGTTIN);
    wait_until("three workers serving", || serving_pids(&node).len() == 3).await;
    record_says(3).await;
    // One at a time: signals of one kind sent together may arrive as one.
    node.signal(Signal::SIGTTOU);
    record_says(2).await;
    wait_until("two workers serving", || serving_pids(&node).len() == 2).await;
    node.signal(Signal::SIGTTOU);
    record_says(1).await;
    wait_until("one worker serving", || serving_pids(&node).len() == 1).await;
    // Never below one.
    node.signal(Signal::SIGTTOU);

    node.signal(Signal::SIGUSR2);
    node.wait_for_log("workers_wanted: 1\n", WAIT);
    let pid = serving_pids(&node).into_iter().next().unwrap();
    // Each worker writes its own report too, with its pid in its process
    // section.
    node.wait_for_log(&format!("\n  pid: {pid}\n"), WAIT);
    assert_eq!(serving_pids(&node).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_replaces_every_worker_without_a_failed_call() {
    use svckit::rpc::{Rpc, Target};
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    let (node, _) = supervisor(&url, "wr", "2", &[]);
    wait_until("two workers serving", || serving_pids(&node).len() == 2).await;
    let before = serving_pids(&node);
    let registry = servicegroup::connect(
        &svckit::servicegroup::RegistryUrl::parse(&url).unwrap(),
        &support::options(),
    )
    .await
    .unwrap();
    let rpc = Rpc::new(registry).await.unwrap();
    let target = Target::topic("echo");
    rpc.wait_for_nodes(&target, 1, WAIT).await.unwrap();

    // A steady load through the kit's client while the workers are
    // replaced. Echo is safe to repeat, so the channel is idempotent: a
    // call caught by a worker closing its connections is sent again (a
    // call the closing connection refused is sent again on any channel).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let stop = stop.clone();
            let mut client = EchoClient::new(rpc.channel(target.clone()).idempotent());
            tokio::spawn(async move {
                let (mut pids, mut calls, mut errors) = (BTreeSet::new(), 0u32, Vec::new());
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    calls += 1;
                    match client
                        .echo(EchoRequest {
                            payload: b"x".to_vec(),
                        })
                        .await
                    {
                        Ok(reply) => {
                            pids.insert(reply.into_inner().pid);
                        }
                        Err(e) => errors.push(e),
                    }
                }
                (pids, calls, errors)
            })
        })
        .collect();
    node.signal(Signal::SIGHUP);
    wait_until("every worker replaced", || {
        let now = serving_pids(&node);
        now.len() == 2 && now.is_disjoint(&before)
    })
    .await;
    // Calls reach a new worker before the load stops.
    let new = serving_pids(&node);
    let probe = EchoClient::new(rpc.channel(target.clone()));
    support::eventually(WAIT, "a call served by a new worker", || {
        let (new, mut probe) = (new.clone(), probe.clone());
        async move {
            let pid = probe
                .echo(EchoRequest {
                    payload: b"p".to_vec(),
                })
                .await
                .ok()?
                .into_inner()
                .pid;
            new.contains(&pid).then_some(())
        }
    })
    .await;
    drop(probe);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut pids, mut calls, mut errors) = (BTreeSet::new(), 0, Vec::new());
    for task in tasks {
        let (p, c, e) = task.await.unwrap();
        pids.extend(p);
        calls += c;
        errors.extend(e);
    }
    assert!(
        errors.is_empty(),
        "{} of {calls} calls failed: {errors:?}",
        errors.len()
    );
    assert!(pids.iter().any(|p| before.contains(p)), "{pids:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_workers_gracefully() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    let (mut node, _) = supervisor(&url, "ws", "2", &[]);
    wait_until("two workers serving", || serving_pids(&node).len() == 2).await;
    let workers = serving_pids(&node);
    node.signal(Signal::SIGTERM);
    let status = node.wait_exit(WAIT).expect("the supervisor exits");
    assert_eq!(status.code(), Some(0), "{}", node.stderr());
    assert!(workers.iter().all(|p| !alive(*p)));
    // Stopped through the supervisor socket: a graceful exit each, not a
    // second signal's 143.
    assert_eq!(
        node.stderr().matches("reason=exit code 0").count(),
        2,
        "{}",
        node.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_looping_worker_backs_off_and_the_node_is_down_until_one_serves() {
    let etcd = Etcd::start();
    let url = etcd.url().to_string();
    let registry = registry(&etcd).await;
    let mut watch = registry.watch(Some("echo")).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("fail");
    let flag_arg = flag.display().to_string();
    let mut args = quick_node_args(&url, "wc");
    args.extend_from_slice(&["--workers", "2", "--fail-while", &flag_arg]);
    let mut node = Proc::spawn(example_bin("fault_node"), &args, &[]);
    node.wait_for_endpoint(WAIT);
    support::expect_event(&mut watch, WAIT, "the node up", support::is_join("wc")).await;

    // Both workers serve first: the node is up with one, and a worker
    // still starting when the flag appears would fail instead.
    wait_until("two workers serving", || serving_pids(&node).len() == 2).await;
    // Every worker now fails in init_host: kill the serving ones, both of
    // them (the log that names them is read by another thread).
    std::fs::write(&flag, b"").unwrap();
    for pid in serving_pids(&node) {
        kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    }
    support::expect_event(&mut watch, WAIT, "the node down", support::is_leave("wc")).await;
    let member = registry
        .get("echo", "wc")
        .await
        .unwrap()
        .expect("the record stays");
    assert!(!member.up);

    // Restarts slow down: the delays logged grow.
    wait_until("six restarts", || {
        node.stderr().matches("restarting worker").count() >= 6
    })
    .await;
    let delays: Vec<u32> = node
        .stderr()
        .lines()
        .filter(|l| l.contains("restarting worker"))
        .filter_map(|l| support::node::log_field(l, "delay_ms"))
        .collect();
    assert!(delays.windows(2).all(|w| w[0] <= w[1]), "{delays:?}");
    assert!(delays.last().is_some_and(|d| *d >= 800), "{delays:?}");
    assert!(
        node.wait_exit(Duration::ZERO).is_none(),
        "the supervisor stays up"
    );

    // A worker that serves again brings the node back.
    std::fs::remove_file(&flag).unwrap();
    support::expect_event(
        &mut watch,
        Duration::from_secs(60),
        "the node up again",
        support::is_join("wc"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_to_a_supervisor_under_load_fails_no_call() {
    use svckit::rpc::{Rpc, RpcOptions, Target};
    let etcd = Etcd::start();
    let url = etcd.url().to_string();
    let (mut workers, _) = supervisor(&url, "wl", "2", &[]);
    let (_single, _) = Proc::start_example(
        "echo_node",
        &quick_node_args(&url, "sl"),
        &[("SVCKIT_DRAIN_DELAY", "0.2")],
    );
    let rpc = Rpc::with_options(registry(&etcd).await, {
        let mut options = RpcOptions::default();
        options.response_timeout = Duration::from_secs(10);
        options
    })
    .await
    .unwrap();
    let target = Target::topic("echo");
    rpc.wait_for_nodes(&target, 2, WAIT).await.unwrap();

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let (stop, mut client) = (stop.clone(), EchoClient::new(rpc.channel(target.clone())));
            tokio::spawn(async move {
                let (mut hosts, mut errors) = (BTreeSet::new(), Vec::new());
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match client
                        .echo(EchoRequest {
                            payload: b"l".to_vec(),
                        })
                        .await
                    {
                        Ok(reply) => {
                            hosts.insert(reply.into_inner().host);
                        }
                        Err(e) => errors.push(e),
                    }
                }
                (hosts, errors)
            })
        })
        .collect();
    // Both nodes answer before the stop.
    support::eventually(WAIT, "calls on both nodes", || async {
        (rpc.hosts(&target).len() == 2).then_some(())
    })
    .await;
    workers.signal(Signal::SIGTERM);
    let status = workers.wait_exit(WAIT).expect("the supervisor exits");
    assert_eq!(status.code(), Some(0), "{}", workers.stderr());
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut hosts = BTreeSet::new();
    for task in tasks {
        let (h, errors) = task.await.unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        hosts.extend(h);
    }
    assert!(hosts.contains("wl") && hosts.contains("sl"), "{hosts:?}");
}

/// `max_requests = 1000` over two workers: 6,000 calls, from four clients
/// (four connections, spread by the kernel), recycle the workers several
/// times, each replaced as in a reload, and no call fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_are_recycled_after_max_requests_without_a_failed_call() {
    use svckit::rpc::{Rpc, Target};
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    let mut args = quick_node_args(&url, "wm");
    args.extend_from_slice(&["--workers", "2"]);
    let env = [
        ("SVCKIT_DRAIN_DELAY", "0.2"),
        ("SVCKIT_MAX_REQUESTS", "1000"),
        ("SVCKIT_MAX_REQUESTS_JITTER", "100"),
    ];
    let (node, _) = Proc::start_example("echo_node", &args, &env);
    wait_until("two workers serving", || serving_pids(&node).len() == 2).await;
    let registry_url = svckit::servicegroup::RegistryUrl::parse(&url).unwrap();
    let target = Target::topic("echo");
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let registry = servicegroup::connect(&registry_url, &support::options())
            .await
            .unwrap();
        let rpc = Rpc::new(registry).await.unwrap();
        rpc.wait_for_nodes(&target, 1, WAIT).await.unwrap();
        let mut client = EchoClient::new(rpc.channel(target.clone()).idempotent());
        tasks.push(tokio::spawn(async move {
            let (mut pids, mut errors) = (BTreeSet::new(), Vec::new());
            for _ in 0..1_500 {
                match client.echo(EchoRequest::default()).await {
                    Ok(reply) => {
                        pids.insert(reply.into_inner().pid);
                    }
                    Err(e) => errors.push(e),
                }
            }
            drop(rpc);
            (pids, errors)
        }));
    }
    let (mut pids, mut errors) = (BTreeSet::new(), Vec::new());
    for task in tasks {
        let (p, e) = task.await.unwrap();
        pids.extend(p);
        errors.extend(e);
    }
    assert!(
        errors.is_empty(),
        "{} calls failed: {errors:?}",
        errors.len()
    );
    // Two workers at a time, each replaced after 1,000 to 1,100 calls.
    assert!(
        pids.len() >= 5,
        "6,000 calls were served by {} workers: {pids:?}",
        pids.len()
    );
    assert!(node
        .stderr()
        .contains("worker served max_requests; replacing it"));
}
