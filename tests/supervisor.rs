//! The supervisor in this test process, driven by a stream of controls as
//! the single launcher is, its workers real `echo_node` processes on a
//! real etcd: resize with the record's `workers` checked, worker death and
//! respawn, reload, stop and a second stop.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use futures::StreamExt;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use support::etcd::Etcd;
use support::node::example_bin;
use svckit::config::{CommonArgs, Config};
use svckit::launcher::{Control, Supervisor};
use svckit::servicegroup::{self, Member, Registry};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

#[allow(dead_code)]
#[path = "../examples/common/echo.rs"]
mod echo;

use echo::pb::echo_client::EchoClient;
use echo::pb::EchoRequest;

/// Bound on a worker process starting and serving.
const WAIT: Duration = Duration::from_secs(20);
/// Bound on the record following a change of the serving workers.
const RECORD: Duration = Duration::from_secs(2);

struct Running {
    registry: Registry,
    controls: mpsc::UnboundedSender<Control>,
    run: tokio::task::JoinHandle<svckit::Result<i32>>,
    host: String,
}

/// A supervisor of `workers` echo_node workers, registered as `host`.
async fn supervise(etcd: &Etcd, host: &str, workers: u32, drain_delay: &str) -> Running {
    let url = etcd.url().to_string();
    let env = |name: &str| match name {
        "SVCKIT_REGISTRY" => Some(url.clone()),
        "SVCKIT_HOST" => Some(host.to_string()),
        "SVCKIT_REPORT_INTERVAL" => Some("0.2".into()),
        "SVCKIT_SERVICE_DOWN_TIME" => Some("1".into()),
        "SVCKIT_DRAIN_DELAY" => Some(drain_delay.into()),
        "SVCKIT_WORKERS" => Some(workers.to_string()),
        _ => None,
    };
    let config = Config::load_from(&CommonArgs::default(), env).expect("config");
    let args = [
        "echo_node",
        "--registry",
        &url,
        "--host",
        host,
        "--report-interval",
        "0.2",
        "--service-down-time",
        "1",
    ];
    let (controls, requests) = mpsc::unbounded_channel();
    let supervisor = Supervisor::new(config).program(example_bin("echo_node"), args);
    let run = tokio::spawn(supervisor.run_with(UnboundedReceiverStream::new(requests).boxed()));
    let registry = servicegroup::connect(&etcd.url(), &support::options())
        .await
        .expect("connect to etcd");
    Running {
        registry,
        controls,
        run,
        host: host.into(),
    }
}

impl Running {
    /// The supervisor's exit code, once it returned.
    async fn finish(&mut self) -> i32 {
        (&mut self.run).await.expect("task").expect("supervisor")
    }

    fn send(&self, control: Control) {
        self.controls.send(control).expect("the supervisor runs");
    }

    async fn member(&self) -> Option<Member> {
        self.registry.get("echo", &self.host).await.ok().flatten()
    }

    /// Waits until the node is up with `workers` in its record.
    async fn record_says(&self, workers: u32, within: Duration) -> Member {
        support::eventually(
            within,
            &format!("record with workers = {workers}"),
            || async {
                self.member()
                    .await
                    .filter(|m| m.up && m.record.workers == workers)
            },
        )
        .await
    }

    async fn client(&self) -> EchoClient<tonic::transport::Channel> {
        let member = self.record_says_any().await;
        let url = member
            .record
            .advert
            .endpoints
            .grpc
            .clone()
            .expect("a gRPC endpoint");
        let channel = tonic::transport::Endpoint::from_shared(url)
            .expect("endpoint")
            .connect()
            .await
            .expect("connect");
        EchoClient::new(channel)
    }

    async fn record_says_any(&self) -> Member {
        support::eventually(WAIT, "the node up", || async {
            self.member().await.filter(|m| m.up)
        })
        .await
    }

    /// The pids of workers answering on new connections, until `count`
    /// distinct ones answered (each new connection lands on whichever
    /// worker accepts it first).
    async fn worker_pids(&self, count: usize) -> BTreeSet<u32> {
        let pids = std::sync::Mutex::new(BTreeSet::new());
        support::eventually(WAIT, &format!("{count} workers answering"), || async {
            let mut client = self.client().await;
            let reply = client
                .echo(EchoRequest {
                    payload: b"p".to_vec(),
                })
                .await
                .ok()?;
            let mut pids = pids.lock().unwrap();
            pids.insert(reply.into_inner().pid);
            (pids.len() >= count).then_some(())
        })
        .await;
        pids.into_inner().unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_and_remove_worker_keep_the_records_workers_true() {
    let etcd = Etcd::start();
    let mut node = supervise(&etcd, "s1", 2, "0").await;
    node.record_says(2, WAIT).await;

    // One more: the record says 3 once the third worker serves.
    node.send(Control::AddWorker);
    node.worker_pids(3).await;
    node.record_says(3, RECORD).await;

    // Two less: the retired workers stop serving at once.
    node.send(Control::RemoveWorker);
    node.record_says(2, RECORD).await;
    node.send(Control::RemoveWorker);
    let member = node.record_says(1, RECORD).await;
    assert!(member.up);

    // Never below one.
    node.send(Control::RemoveWorker);
    node.send(Control::Stop { signal: None });
    assert_eq!(node.finish().await, 0);
    let member = node.member().await.expect("the record stays");
    assert!(!member.up, "a stopped node is down");
    assert_eq!(member.record.workers, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_worker_is_respawned_and_the_record_follows() {
    let etcd = Etcd::start();
    let mut node = supervise(&etcd, "s2", 2, "0").await;
    node.record_says(2, WAIT).await;
    let before = node.worker_pids(2).await;
    let victim = *before.iter().next().expect("a worker");
    kill(Pid::from_raw(victim as i32), Signal::SIGKILL).expect("kill a worker");
    // A new worker serves in its place, and the node stayed up.
    support::eventually(WAIT, "a respawned worker", || async {
        let pids = node.worker_pids(2).await;
        (!pids.contains(&victim)).then_some(())
    })
    .await;
    node.record_says(2, RECORD).await;
    node.send(Control::Stop { signal: None });
    assert_eq!(node.finish().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_replaces_every_worker_and_the_node_stays_up() {
    let etcd = Etcd::start();
    let mut node = supervise(&etcd, "s3", 2, "0").await;
    node.record_says(2, WAIT).await;
    let mut events = node
        .registry
        .watch(Some("echo"))
        .await
        .expect("watch the topic");
    let before = node.worker_pids(2).await;
    node.send(Control::Reload);
    support::eventually(WAIT, "two new workers", || async {
        let pids = node.worker_pids(2).await;
        pids.is_disjoint(&before).then_some(())
    })
    .await;
    node.record_says(2, RECORD).await;
    // No leave was ever seen: a reload keeps the node advertised.
    while let Ok(Some(event)) = tokio::time::timeout(Duration::ZERO, events.next()).await {
        let event = event.expect("event");
        assert_ne!(event.kind(), "leave", "{event:?}");
    }
    node.send(Control::Stop { signal: None });
    assert_eq!(node.finish().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_stop_signal_ends_a_graceful_stop_at_once() {
    let etcd = Etcd::start();
    // An hour of drain delay: the first stop cannot end by itself.
    let mut node = supervise(&etcd, "s4", 2, "3600").await;
    node.record_says(2, WAIT).await;
    let pids = node.worker_pids(2).await;
    node.send(Control::Stop {
        signal: Some(libc::SIGTERM),
    });
    // The first stop leaves the group before it waits.
    support::eventually(WAIT, "the node down", || async {
        node.member().await.filter(|m| !m.up)
    })
    .await;
    // A stop without a signal changes nothing; one with a signal ends it.
    node.send(Control::Stop { signal: None });
    node.send(Control::Stop {
        signal: Some(libc::SIGTERM),
    });
    let code = node.finish().await;
    assert_eq!(code, 128 + libc::SIGTERM);
    for pid in pids {
        support::eventually(WAIT, "the workers killed", || async {
            let gone = kill(Pid::from_raw(pid as i32), None).is_err() || zombie(pid);
            gone.then_some(())
        })
        .await;
    }
}

fn zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().next())
            == Some("Z")
    })
}
