//! Membership seen from outside: real etcd, real node processes, and the
//! `svckit` CLI as an operator runs it.

mod support;

use std::time::Duration;

use nix::sys::signal::Signal;
use support::etcd::Etcd;
use support::node::{example_bin, quick_node_args, Proc};
use support::{eventually, expect_event, is_join, is_leave};
use svckit::servicegroup::{self, RegistryOptions};

const WAIT: Duration = Duration::from_secs(15);

fn members_json(url: &str) -> Vec<serde_json::Value> {
    let (code, out, err) = Proc::run_cli(&["members", "list", "--registry", url, "--json"]);
    assert_eq!(code, Some(0), "{err}");
    serde_json::from_str(&out).expect("members list --json is a JSON array")
}

fn member<'a>(members: &'a [serde_json::Value], host: &str) -> &'a serde_json::Value {
    members
        .iter()
        .find(|m| m["host"] == host)
        .unwrap_or_else(|| panic!("no {host} in {members:?}"))
}

#[tokio::test]
async fn kill_9_shows_the_node_down_and_the_cli_watcher_gets_leave() {
    let etcd = Etcd::start();
    let url = etcd.url().to_string();
    let watch = Proc::cli(&["members", "watch", "--registry", &url, "--topic", "echo"]);
    let (node, _) = Proc::start_example("echo_node", &quick_node_args(&url, "k1"), &[]);
    eventually(WAIT, "join line", || async {
        (watch.stdout().contains(r#""event":"join""#)).then_some(())
    })
    .await;

    let m = members_json(&url);
    assert_eq!(member(&m, "k1")["state"], "up");
    assert_eq!(member(&m, "k1")["binary"], "echo_node");
    assert!(member(&m, "k1")["endpoint"]
        .as_str()
        .unwrap()
        .starts_with("http://127.0.0.1:"));

    node.signal(Signal::SIGKILL);
    // service_down_time is 1 s; the bound leaves slack for a loaded machine.
    eventually(Duration::from_secs(3), "leave line", || async {
        watch.stdout().contains(r#""event":"leave""#).then_some(())
    })
    .await;
    let m = members_json(&url);
    assert_eq!(
        member(&m, "k1")["state"],
        "down",
        "the record outlives the node"
    );

    for line in watch.stdout().lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("each watch line is JSON");
        assert_eq!(v["member"]["host"], "k1");
    }
}

#[tokio::test]
async fn graceful_stop_is_seen_by_a_watcher_before_the_node_exits() {
    let etcd = Etcd::start();
    let url = etcd.url().to_string();
    let registry = servicegroup::connect(&etcd.url(), &RegistryOptions::default())
        .await
        .unwrap();
    let mut events = registry.watch(Some("echo")).await.unwrap();
    let (mut node, _) = Proc::start_example("echo_node", &quick_node_args(&url, "g1"), &[]);
    expect_event(&mut events, WAIT, "join of g1", is_join("g1")).await;
    node.signal(Signal::SIGTERM);
    // Well under the 1 s lease TTL: the node deleted its key, no expiry.
    expect_event(
        &mut events,
        Duration::from_millis(500),
        "leave of g1",
        is_leave("g1"),
    )
    .await;
    assert!(
        node.wait_exit(Duration::ZERO).is_none(),
        "the leave must be visible before the node stops (drain_delay)"
    );
    let status = node.wait_exit(Duration::from_secs(10)).expect("node exits");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn a_second_node_with_the_same_topic_and_host_is_refused() {
    let etcd = Etcd::start();
    let url = etcd.url().to_string();
    let (_first, _) = Proc::start_example("echo_node", &quick_node_args(&url, "same"), &[]);
    let mut second = Proc::spawn(
        example_bin("echo_node"),
        &quick_node_args(&url, "same"),
        &[],
    );
    let status = second
        .wait_exit(Duration::from_secs(20))
        .expect("second node exits");
    assert_eq!(status.code(), Some(78), "{}", second.stderr());
    let last = second
        .stderr()
        .lines()
        .last()
        .unwrap_or_default()
        .to_string();
    assert!(last.contains("duplicate"), "{}", second.stderr());
    assert!(!second.stderr().contains("panicked"));
}

/// A node's flags with a 10 s down time: only a takeover, never its old
/// lease running out, can let a restart in within that time.
fn long_lease_args<'a>(registry: &'a str, host: &'a str) -> Vec<&'a str> {
    let mut args = quick_node_args(registry, host);
    let down = args
        .iter()
        .position(|a| *a == "--service-down-time")
        .expect("quick_node_args sets a down time");
    args[down + 1] = "10";
    args
}

#[tokio::test]
async fn a_node_killed_and_restarted_at_once_is_registered_and_serving() {
    let etcd = Etcd::start();
    let url = etcd.url().to_string();
    let registry = servicegroup::connect(&etcd.url(), &RegistryOptions::default())
        .await
        .unwrap();
    let mut events = registry.watch(Some("echo")).await.unwrap();
    let args = long_lease_args(&url, "r1");
    let (mut first, first_addr) = Proc::start_example("echo_node", &args, &[]);
    expect_event(&mut events, WAIT, "join of r1", is_join("r1")).await;

    // systemd's Restart=always: SIGKILL, then the same command at once.
    first.signal(Signal::SIGKILL);
    first.wait_exit(WAIT).expect("killed node exits");
    let (mut second, second_addr) = Proc::start_example("echo_node", &args, &[]);
    let new_endpoint = format!("http://{second_addr}");
    assert_ne!(second_addr, first_addr);
    // Registered at its new endpoint well before the old lease (10 s)
    // could have expired.
    let (_, took) = expect_event(&mut events, Duration::from_secs(5), "r1 up again", |e| {
        let m = e.member();
        m.record.advert.host == "r1"
            && m.up
            && m.record.advert.endpoints.grpc.as_ref() == Some(&new_endpoint)
    })
    .await;
    eprintln!("restarted node registered {took:?} after it served");
    assert!(
        second.wait_exit(Duration::ZERO).is_none(),
        "the restarted node exited: {}",
        second.stderr()
    );
    second.wait_for_log("taking it over", WAIT);
    let (code, out, err) = Proc::run_cli(&[
        "call",
        "--registry",
        &url,
        "--topic",
        "echo",
        "--server",
        "r1",
        "ping",
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains(&second.pid().to_string()), "{out}");

    // A second node while this one serves is still a duplicate.
    let mut third = Proc::spawn(example_bin("echo_node"), &args, &[]);
    let status = third
        .wait_exit(Duration::from_secs(20))
        .expect("duplicate exits");
    assert_eq!(status.code(), Some(78), "{}", third.stderr());
    assert!(
        third.stderr().contains(&new_endpoint),
        "the refusal names the live node: {}",
        third.stderr()
    );
}

#[tokio::test]
async fn a_node_restarted_on_its_fixed_port_takes_its_identity_back() {
    let etcd = Etcd::start();
    let url = etcd.url().to_string();
    let registry = servicegroup::connect(&etcd.url(), &RegistryOptions::default())
        .await
        .unwrap();
    let mut events = registry.watch(Some("echo")).await.unwrap();
    let listen = format!("127.0.0.1:{}", support::ports::free_port());
    let mut args = long_lease_args(&url, "f1");
    args[5] = &listen;
    let (mut first, _) = Proc::start_example("echo_node", &args, &[]);
    expect_event(&mut events, WAIT, "join of f1", is_join("f1")).await;
    let first_pid = first.pid();

    // The restart serves on the same address the dead holder advertises:
    // asking it would reach the restart itself.
    first.signal(Signal::SIGKILL);
    first.wait_exit(WAIT).expect("killed node exits");
    let (second, _) = Proc::start_example("echo_node", &args, &[]);
    eventually(
        Duration::from_secs(5),
        "f1 registered by the restart",
        || async {
            let alive = registry.get("echo", "f1").await.ok().flatten()?;
            let owner = Proc::run_cli(&[
                "call",
                "--registry",
                &url,
                "--topic",
                "echo",
                "--server",
                "f1",
                "ping",
            ]);
            (alive.up && owner.1.contains(&second.pid().to_string())).then_some(())
        },
    )
    .await;
    assert_ne!(second.pid(), first_pid);
    second.wait_for_log("taking it over", WAIT);
}

#[tokio::test]
async fn a_node_stopped_past_its_down_time_leaves_and_comes_back() {
    let etcd = Etcd::start();
    let url = etcd.url().to_string();
    let registry = servicegroup::connect(&etcd.url(), &RegistryOptions::default())
        .await
        .unwrap();
    let rpc = svckit::rpc::Rpc::new(registry.clone()).await.unwrap();
    let topic = svckit::rpc::Target::topic("echo");
    let mut events = registry.watch(Some("echo")).await.unwrap();
    let (node, _) = Proc::start_example("echo_node", &quick_node_args(&url, "s1"), &[]);
    expect_event(&mut events, WAIT, "join of s1", is_join("s1")).await;
    rpc.wait_for_nodes(&topic, 1, WAIT).await.unwrap();

    node.signal(Signal::SIGSTOP);
    // service_down_time is 1 s.
    expect_event(
        &mut events,
        Duration::from_secs(4),
        "leave of s1",
        is_leave("s1"),
    )
    .await;
    eventually(WAIT, "the client to drop s1", || async {
        rpc.hosts(&topic).is_empty().then_some(())
    })
    .await;

    node.signal(Signal::SIGCONT);
    let (_, took) = expect_event(
        &mut events,
        Duration::from_millis(2500),
        "s1 back within 2 s of resuming",
        is_join("s1"),
    )
    .await;
    eprintln!("s1 back {took:?} after SIGCONT");
    rpc.wait_for_nodes(&topic, 1, WAIT).await.unwrap();
    assert_eq!(rpc.hosts(&topic), ["s1"]);
    let (code, out, err) = Proc::run_cli(&[
        "call",
        "--registry",
        &url,
        "--topic",
        "echo",
        "--server",
        "s1",
        "ping",
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("\"s1\""), "{out}");
}

#[test]
fn an_unreachable_registry_at_start_exits_69() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let url = format!("etcd://127.0.0.1:{port}");
    let mut node = Proc::spawn(example_bin("echo_node"), &["--registry", &url], &[]);
    let status = node.wait_exit(Duration::from_secs(20)).expect("node exits");
    assert_eq!(status.code(), Some(69), "{}", node.stderr());
    let lines: Vec<_> = node.stderr().lines().map(String::from).collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("echo_node: error: registry unavailable"),
        "{lines:?}"
    );
}

#[tokio::test]
async fn operators_disable_enable_force_down_and_delete_through_the_cli() {
    let etcd = Etcd::start();
    let url = etcd.url().to_string();
    let (node, _) = Proc::start_example("echo_node", &quick_node_args(&url, "a1"), &[]);
    let target = [
        "--registry",
        url.as_str(),
        "--topic",
        "echo",
        "--host",
        "a1",
    ];
    let service = |cmd: &[&str]| {
        let args: Vec<&str> = ["service"]
            .iter()
            .chain(cmd)
            .chain(target.iter())
            .copied()
            .collect();
        Proc::run_cli(&args)
    };

    let (code, out, err) = service(&["disable", "--reason", "disk swap"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("disk swap"), "{out}");
    let m = members_json(&url);
    assert_eq!(member(&m, "a1")["disabled"], true);
    assert_eq!(member(&m, "a1")["disabled_reason"], "disk swap");
    assert_eq!(member(&m, "a1")["state"], "up", "disabled nodes stay up");

    assert_eq!(service(&["enable"]).0, Some(0));
    let m = members_json(&url);
    assert_eq!(member(&m, "a1")["disabled"], false);
    assert!(member(&m, "a1")["disabled_reason"].is_null());

    assert_eq!(service(&["force-down"]).0, Some(0));
    let m = members_json(&url);
    assert_eq!(member(&m, "a1")["forced_down"], true);
    assert_eq!(member(&m, "a1")["state"], "down");
    assert_eq!(service(&["force-down", "--clear"]).0, Some(0));
    assert_eq!(member(&members_json(&url), "a1")["state"], "up");

    // The wide table names every column of the contract.
    let (_, table, _) = Proc::run_cli(&["members", "list", "--registry", &url, "--wide"]);
    for col in [
        "TOPIC",
        "HOST",
        "BINARY",
        "ENDPOINT",
        "STATE",
        "DISABLED",
        "FORCED_DOWN",
        "UPDATED_AT",
    ] {
        assert!(table.contains(col), "{table}");
    }

    let (code, _, err) = Proc::run_cli(&[
        "service",
        "enable",
        "--registry",
        &url,
        "--topic",
        "echo",
        "--host",
        "nope",
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("not found"), "{err}");

    // An up node's record is not deleted by mistake...
    let (code, _, err) = service(&["delete"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("echo/a1 is up") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(member(&members_json(&url), "a1")["state"], "up");
    // ...and when forced, the live node writes it again.
    let (code, out, err) = service(&["delete", "--force"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("writes its record again"), "{out}");
    eventually(Duration::from_millis(2500), "a1's record back", || async {
        let members = members_json(&url);
        members
            .iter()
            .any(|m| m["host"] == "a1" && m["state"] == "up")
            .then_some(())
    })
    .await;

    // A dead node's row stays until an operator deletes it.
    node.signal(Signal::SIGKILL);
    eventually(WAIT, "a1 down", || async {
        (member(&members_json(&url), "a1")["state"] == "down").then_some(())
    })
    .await;
    let (code, out, err) = service(&["delete"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("deleted echo/a1"), "{out}");
    assert!(members_json(&url).iter().all(|m| m["host"] != "a1"));
    let (code, _, err) = service(&["delete"]);
    assert_eq!(code, Some(1), "{err}");
}

#[test]
fn the_cli_pings_by_topic_server_and_fanout() {
    let etcd = Etcd::start();
    let url = etcd.url().to_string();
    let _a = Proc::start_example("echo_node", &quick_node_args(&url, "p1"), &[]);
    let _b = Proc::start_example("echo_node", &quick_node_args(&url, "p2"), &[]);
    let base = ["call", "--registry", url.as_str(), "--topic", "echo"];
    let run = |extra: &[&str]| {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        Proc::run_cli(&args)
    };
    let (code, out, err) = run(&["--fanout", "ping", "--arg", "hi"]);
    assert_eq!(code, Some(0), "{err}");
    let mut hosts: Vec<String> = out
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(v["ok"]["arg"], "hi");
            v["ok"]["host"].as_str().unwrap().to_string()
        })
        .collect();
    hosts.sort();
    assert_eq!(hosts, ["p1", "p2"]);

    let (code, out, _) = run(&["--server", "p2", "ping"]);
    assert_eq!(code, Some(0));
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["ok"]["host"], "p2");

    let (code, _, err) = Proc::run_cli(&["call", "--registry", &url, "--topic", "none", "ping"]);
    assert_eq!(code, Some(69), "{err}");
    assert!(err.contains("no node available for none"), "{err}");
}

#[tokio::test]
async fn the_file_registry_serves_the_cli_without_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    let (node, _) = Proc::start_example("echo_node", &quick_node_args(&url, "f1"), &[]);
    let m = members_json(&url);
    assert_eq!(member(&m, "f1")["state"], "up");
    node.signal(Signal::SIGKILL);
    eventually(WAIT, "f1 down", || async {
        (member(&members_json(&url), "f1")["state"] == "down").then_some(())
    })
    .await;
}

#[test]
fn the_cli_ignores_node_options_in_the_operators_environment() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    let (_node, _) = Proc::start_example("echo_node", &quick_node_args(&url, "o1"), &[]);
    // A shell set up for a node: values a node would refuse.
    let mut cli = Proc::spawn(
        std::path::PathBuf::from(env!("CARGO_BIN_EXE_svckit")),
        &["members", "list", "--json"],
        &[
            ("SVCKIT_REGISTRY", url.as_str()),
            ("SVCKIT_WORKERS", "0"),
            ("SVCKIT_HOST", "bad host!"),
            ("SVCKIT_REPORT_INTERVAL", "soon"),
        ],
    );
    let status = cli.wait_exit(WAIT).expect("svckit exits");
    assert_eq!(status.code(), Some(0), "{}", cli.stderr());
    let members: Vec<serde_json::Value> = serde_json::from_str(&cli.stdout()).unwrap();
    assert_eq!(member(&members, "o1")["state"], "up");
}
