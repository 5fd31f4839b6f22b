//! Service records written by hand as bytes that are no record, in etcd and
//! in a file registry: `members list`, `members watch` and the RPC client's
//! discovery skip them with a warning, and never fail or crash.

use std::path::PathBuf;
use std::time::Duration;

use svckit::rpc::{Rpc, Target};

use crate::echo::pb::echo_client::EchoClient;
use crate::echo::pb::EchoRequest;
use crate::support::etcd::Etcd;
use crate::support::node::{quick_node_args, Proc};
use crate::WAIT;

/// Where the bad records go.
enum Store {
    Etcd(Box<etcd_client::Client>),
    File(PathBuf),
}

impl Store {
    async fn get(&mut self, host: &str) -> Vec<u8> {
        match self {
            Store::Etcd(client) => {
                let found = client
                    .get(format!("/test/services/echo/{host}"), None)
                    .await
                    .unwrap();
                found.kvs()[0].value().to_vec()
            }
            Store::File(dir) => {
                std::fs::read(dir.join(format!("services/echo/{host}.json"))).unwrap()
            }
        }
    }

    async fn put(&mut self, host: &str, value: &[u8]) {
        match self {
            Store::Etcd(client) => {
                client
                    .put(format!("/test/services/echo/{host}"), value, None)
                    .await
                    .unwrap();
            }
            Store::File(dir) => {
                let topic = dir.join("services/echo");
                std::fs::create_dir_all(&topic).unwrap();
                std::fs::write(topic.join(format!("{host}.json")), value).unwrap();
            }
        }
    }
}

/// Hosts and the bad bytes stored as their records.
fn bad_records(good: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    let good: serde_json::Value = serde_json::from_slice(good).unwrap();
    let mut wrong_type = good.clone();
    wrong_type["workers"] = serde_json::json!("many");
    vec![
        ("not-json", b"{not json".to_vec()),
        ("empty", Vec::new()),
        ("wrong-shape", br#"{"topic": 1, "endpoints": []}"#.to_vec()),
        ("an-array", b"[1, 2, 3]".to_vec()),
        ("wrong-type", serde_json::to_vec(&wrong_type).unwrap()),
        // The good node's record, copied under another key: not that member.
        ("impostor", serde_json::to_vec(&good).unwrap()),
        ("deep", vec![b'['; 1 << 20]),
        ("huge", format!("\"{}\"", "x".repeat(1 << 20)).into_bytes()),
        ("not-utf8", b"\xff\xfe\xfd".to_vec()),
    ]
}

fn hosts_listed(url: &str) -> (Vec<String>, String) {
    let (code, out, err) = Proc::run_cli(&["members", "list", "--registry", url, "--json"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let members: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let hosts = members
        .iter()
        .filter_map(|m| m["host"].as_str().map(str::to_string))
        .collect();
    (hosts, err)
}

/// `svckit service VERB --host good [ARGS…]` on topic echo.
fn admin_good(url: &str, verb_and_args: &[&str]) {
    let mut args = vec!["service", verb_and_args[0], "--registry", url];
    args.extend_from_slice(&["--topic", "echo", "--host", "good"]);
    args.extend_from_slice(&verb_and_args[1..]);
    let (code, _, err) = Proc::run_cli(&args);
    assert_eq!(code, Some(0), "{err}");
}

/// The good node serves on `url`; bad records are written while a watcher
/// runs; list, watch and discovery see the good node alone.
async fn bad_records_are_skipped(url: &str, mut store: Store) {
    let (_node, _) = Proc::start_example("echo_node", &quick_node_args(url, "good"), &[]);
    let watch = Proc::cli(&["members", "watch", "--registry", url, "--topic", "echo"]);
    crate::support::eventually(WAIT, "the watcher's first event", || async {
        watch.stdout().contains("\"good\"").then_some(())
    })
    .await;

    let bad = bad_records(&store.get("good").await);
    for (host, value) in &bad {
        store.put(host, value).await;
    }
    // A real change after the bad ones: once the watcher shows it, it has
    // been through every bad record.
    admin_good(url, &["disable", "--reason", "after the bad records"]);
    crate::support::eventually(WAIT, "the watcher's update", || async {
        watch
            .stdout()
            .contains("after the bad records")
            .then_some(())
    })
    .await;
    let mut watch = watch;
    assert!(
        watch.wait_exit(Duration::ZERO).is_none(),
        "members watch ended:\n{}",
        watch.stderr()
    );
    for line in watch.stdout().lines() {
        let event: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
        assert_eq!(event["member"]["host"], "good", "{line}");
    }
    // Its warnings were written before the update, but stderr is read by
    // another thread than stdout: wait for them to arrive.
    watch.wait_for_log("not-json", WAIT);
    let stderr = watch.stderr();
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains("service record"), "no warning:\n{stderr}");
    // Once per bad record, not once per look at the registry.
    let warnings = stderr.lines().filter(|l| l.contains("not-json")).count();
    assert_eq!(warnings, 1, "{stderr}");

    let (hosts, err) = hosts_listed(url);
    assert_eq!(hosts, ["good"]);
    for (host, _) in &bad {
        assert!(err.contains(host), "no warning about {host}:\n{err}");
    }

    // A client discovering the topic reaches the good node, and only it.
    admin_good(url, &["enable"]);
    let registry = svckit::servicegroup::connect(&url.parse().unwrap(), &crate::support::options())
        .await
        .unwrap();
    let rpc = Rpc::new(registry).await.unwrap();
    rpc.wait_for_nodes(&Target::topic("echo"), 1, WAIT)
        .await
        .unwrap();
    let reply = EchoClient::new(rpc.channel(Target::topic("echo")))
        .echo(EchoRequest {
            payload: b"x".to_vec(),
        })
        .await
        .expect("the good node answers");
    assert_eq!(reply.into_inner().host, "good");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_records_in_etcd_are_skipped_with_a_warning() {
    let etcd = Etcd::start();
    let client = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .unwrap();
    bad_records_are_skipped(&etcd.url().to_string(), Store::Etcd(Box::new(client))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_records_in_a_file_registry_are_skipped_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    bad_records_are_skipped(&url, Store::File(dir.path().to_path_buf())).await;
    // A file where a topic's directory belongs, and a directory where a
    // record belongs.
    std::fs::write(dir.path().join("services/not-a-topic"), b"x").unwrap();
    std::fs::create_dir_all(dir.path().join("services/echo/a-dir.json")).unwrap();
    let (hosts, err) = hosts_listed(&url);
    assert_eq!(hosts, ["good"], "{err}");
}
