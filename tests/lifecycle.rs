//! The node lifecycle in process, driven through the launcher's controls:
//! hook order against health and registration, failing hooks, reload and
//! reset, cleanup after the drain.

mod support;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::StreamExt;
use svckit::launcher::{Control, ServiceLauncher};
use svckit::manager::{GrpcServices, Manager};
use svckit::service::NodeInfo;
use svckit::servicegroup::{self, Event};
use svckit::{BoxError, Config, Node, Service};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const WAIT: Duration = Duration::from_secs(10);

/// A manager that records each hook, with what the world looked like then.
#[derive(Default)]
struct Recorder {
    log: Mutex<Vec<String>>,
    fail: Option<&'static str>,
    node: OnceLock<Arc<NodeInfo>>,
}

impl Recorder {
    fn failing(hook: &'static str) -> Self {
        Recorder {
            fail: Some(hook),
            ..Default::default()
        }
    }

    fn record(&self, entry: String) {
        self.log.lock().unwrap().push(entry);
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    async fn hook(&self, name: &'static str) -> Result<(), BoxError> {
        self.record(name.to_string());
        if self.fail == Some(name) {
            return Err(format!("{name} failed on purpose").into());
        }
        Ok(())
    }

    /// The node's overall health as a client sees it, if it answers.
    async fn health(&self) -> Option<i32> {
        let url = self.node.get()?.endpoints().grpc?;
        let channel = tonic::transport::Endpoint::from_shared(url)
            .ok()?
            .connect()
            .await
            .ok()?;
        let mut client = HealthClient::new(channel);
        let reply = client
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .ok()?;
        Some(reply.into_inner().status)
    }
}

/// The manager is shared with the test through an `Arc`.
struct Shared(Arc<Recorder>);

impl Manager for Shared {
    fn grpc_services(self: &Arc<Self>, _services: &mut GrpcServices) {}

    async fn init_host(&self) -> Result<(), BoxError> {
        self.0.hook("init_host").await
    }

    async fn pre_start_hook(&self) -> Result<(), BoxError> {
        self.0.hook("pre_start_hook").await
    }

    async fn post_start_hook(&self) -> Result<(), BoxError> {
        // The server answers already, but says it does not serve yet.
        let health = self.0.health().await;
        self.0.record(format!("post_start_hook health={health:?}"));
        if self.0.fail == Some("post_start_hook") {
            return Err("post_start_hook failed on purpose".into());
        }
        Ok(())
    }

    async fn reset(&self) -> Result<(), BoxError> {
        self.0.hook("reset").await
    }

    async fn cleanup_host(&self) -> Result<(), BoxError> {
        self.0.hook("cleanup_host").await
    }
}

struct Setup {
    recorder: Arc<Recorder>,
    node: Arc<dyn Service>,
    config: Config,
    registry: servicegroup::Registry,
}

async fn setup(test: &str, recorder: Recorder) -> Setup {
    let config = Config::default()
        .with("host", "h1")
        .and_then(|c| c.with("registry", &format!("memory://{test}")))
        .and_then(|c| c.with("drain_delay", "0"))
        .unwrap();
    let recorder = Arc::new(recorder);
    let node = Node::builder(Shared(recorder.clone()))
        .topic("life")
        .build(&config);
    let _ = recorder.node.set(node.info().clone());
    let registry = servicegroup::connect(config.registry(), &config.registry_options())
        .await
        .unwrap();
    Setup {
        recorder,
        node: Arc::new(node),
        config,
        registry,
    }
}

type Controls = mpsc::UnboundedSender<Control>;

fn launch(setup: &Setup) -> (Controls, tokio::task::JoinHandle<svckit::Result<i32>>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let launcher = ServiceLauncher::new(setup.config.clone(), vec![setup.node.clone()]);
    let run = tokio::spawn(launcher.run_with(UnboundedReceiverStream::new(rx).boxed()));
    (tx, run)
}

const SERVING: i32 = ServingStatus::Serving as i32;
const NOT_SERVING: i32 = ServingStatus::NotServing as i32;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_run_in_the_lifecycle_order_and_cleanup_follows_the_drain() {
    let s = setup("order", Recorder::default()).await;
    let mut watch = s.registry.watch(Some("life")).await.unwrap();
    let (controls, run) = launch(&s);

    // Registration comes last: by the time a watcher sees the node, every
    // start hook ran and health says SERVING.
    support::expect_event(&mut watch, WAIT, "the node's join", support::is_join("h1")).await;
    assert_eq!(s.recorder.health().await, Some(SERVING));
    assert_eq!(
        s.recorder.log(),
        [
            "init_host".to_string(),
            "pre_start_hook".to_string(),
            format!("post_start_hook health=Some({NOT_SERVING})"),
        ]
    );

    controls.send(Control::Stop { signal: None }).unwrap();
    support::expect_event(
        &mut watch,
        WAIT,
        "the node's leave",
        support::is_leave("h1"),
    )
    .await;
    let code = tokio::time::timeout(WAIT, run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(code, 0);
    // cleanup_host ran once the server had drained: nothing answers now.
    assert_eq!(
        s.recorder.log().last().map(String::as_str),
        Some("cleanup_host")
    );
    assert_eq!(s.recorder.health().await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_start_hook_aborts_the_start_with_its_error() {
    for hook in ["init_host", "pre_start_hook", "post_start_hook"] {
        let s = setup(&format!("fail-{hook}"), Recorder::failing(hook)).await;
        let (_controls, run) = launch(&s);
        let err = tokio::time::timeout(WAIT, run)
            .await
            .unwrap()
            .unwrap()
            .unwrap_err();
        assert!(
            err.kind() == svckit::ErrorKind::Hook && err.to_string().starts_with(hook),
            "{hook}: {err:?}"
        );
        assert_eq!(err.exit_code(), svckit::error::exit::SOFTWARE);
        // Never advertised, and nothing listens any more.
        assert!(s.registry.list(Some("life")).await.unwrap().is_empty());
        assert_eq!(s.recorder.health().await, None, "{hook}");
        // What init_host set up is released; a failed init_host has nothing
        // to release.
        let cleaned = s.recorder.log().iter().any(|e| e == "cleanup_host");
        assert_eq!(
            cleaned,
            hook != "init_host",
            "{hook}: {:?}",
            s.recorder.log()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_cleanup_host_makes_the_stop_fail() {
    let s = setup("fail-cleanup", Recorder::failing("cleanup_host")).await;
    let mut watch = s.registry.watch(Some("life")).await.unwrap();
    let (controls, run) = launch(&s);
    support::expect_event(&mut watch, WAIT, "the node's join", support::is_join("h1")).await;
    controls.send(Control::Stop { signal: None }).unwrap();
    let code = tokio::time::timeout(WAIT, run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(code, svckit::error::exit::SOFTWARE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_the_new_config_and_resets_the_manager() {
    let s = setup("reload", Recorder::default()).await;
    let mut watch = s.registry.watch(Some("life")).await.unwrap();
    let (controls, run) = launch(&s);
    support::expect_event(&mut watch, WAIT, "the node's join", support::is_join("h1")).await;

    controls.send(Control::Reload).unwrap();
    support::eventually(WAIT, "reset after the reload", || async {
        s.recorder.log().iter().any(|e| e == "reset").then_some(())
    })
    .await;
    // Still registered and serving: a reload is no restart.
    assert_eq!(s.recorder.health().await, Some(SERVING));
    let member = s.registry.get("life", "h1").await.unwrap().unwrap();
    assert!(member.up);

    controls.send(Control::Stop { signal: None }).unwrap();
    let code = tokio::time::timeout(WAIT, run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(code, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_stop_ends_the_run_at_once() {
    let s = setup("second-stop", Recorder::default()).await;
    let mut watch = s.registry.watch(Some("life")).await.unwrap();
    // A drain that would take an hour.
    let config = s.config.clone().with("drain_delay", "1h").unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let launcher = ServiceLauncher::new(config.clone(), vec![s.node.clone()]);
    s.node.reset(&config).await.unwrap();
    let run = tokio::spawn(launcher.run_with(UnboundedReceiverStream::new(rx).boxed()));
    support::expect_event(&mut watch, WAIT, "the node's join", support::is_join("h1")).await;
    tx.send(Control::Stop { signal: Some(15) }).unwrap();
    support::expect_event(&mut watch, WAIT, "the leave", |e| {
        matches!(e, Event::Leave(_))
    })
    .await;
    tx.send(Control::Stop { signal: Some(15) }).unwrap();
    let code = tokio::time::timeout(WAIT, run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(code, 128 + 15);
}
