//! A node's periodic tasks in its lifecycle: they start once the node is
//! registered and stop before it leaves the group.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::eventually;
use svckit::launcher::ServiceLauncher;
use svckit::manager::{GrpcServices, Manager};
use svckit::periodic::PeriodicTask;
use svckit::servicegroup::{self, Registry, RegistryOptions, RegistryUrl};
use svckit::{Config, Node, Service};

/// Records, at each run, whether the registry shows its node up.
struct Watcher {
    registry: Registry,
    seen: Arc<Mutex<Vec<bool>>>,
}

impl Manager for Watcher {
    fn grpc_services(self: &Arc<Self>, _services: &mut GrpcServices) {}

    fn periodic_tasks(self: &Arc<Self>) -> Vec<PeriodicTask<Self>> {
        vec![PeriodicTask::new(
            "look",
            Duration::from_millis(10),
            |w: Arc<Self>| async move {
                let up = w.registry.get("watched", "n1").await?.is_some_and(|m| m.up);
                w.seen.lock().unwrap().push(up);
                Ok(())
            },
        )]
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_run_only_while_the_node_is_registered() {
    let url = RegistryUrl::parse("memory://node-periodic").unwrap();
    let registry = servicegroup::connect(&url, &RegistryOptions::default())
        .await
        .unwrap();
    let config = Config::default()
        .with("registry", &url.to_string())
        .and_then(|c| c.with("host", "n1"))
        .and_then(|c| c.with("periodic_fuzzy_delay", "0"))
        // Long enough for many runs, had the tasks not stopped first.
        .and_then(|c| c.with("drain_delay", "300ms"))
        .unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let watcher = Watcher {
        registry,
        seen: seen.clone(),
    };
    let node = Arc::new(Node::builder(watcher).topic("watched").build(&config));
    let info = node.info().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(
        ServiceLauncher::new(config, vec![node.clone() as Arc<dyn Service>]).run_until(async {
            let _ = stopped.await;
        }),
    );
    let report = eventually(Duration::from_secs(10), "five runs", || {
        let info = info.clone();
        async move {
            let report = info.report().await;
            let runs = report["periodic_tasks"][0]["runs"].as_u64().unwrap_or(0);
            (runs >= 5).then_some(report)
        }
    })
    .await;
    assert_eq!(report["periodic_tasks"][0]["failures"], 0);
    let _ = stop.send(());
    assert_eq!(run.await.unwrap().unwrap(), 0);

    // Nothing runs once stopped, and no run saw the node unregistered:
    // neither before it joined nor while it drained after leaving.
    let report = info.report().await;
    assert_eq!(
        report["periodic_tasks"][0]["next_due"],
        serde_json::Value::Null
    );
    let seen = seen.lock().unwrap().clone();
    assert!(seen.len() >= 5);
    assert!(
        seen.iter().all(|&up| up),
        "a run saw the node down: {seen:?}"
    );
}
