//! An echo node whose hooks misbehave on demand, for testing what runs it
//! (the launcher, a supervisor, systemd units):
//!
//! ```text
//! cargo run --example fault_node -- --init-delay 30s      # a slow init_host
//! cargo run --example fault_node -- --fail init_host      # a hook that fails
//! cargo run --example fault_node -- --block-cleanup       # cleanup_host stuck in blocking code
//! cargo run --example fault_node -- --workers 2 --fail-while /tmp/broken   # a crash loop
//! ```
//!
//! With `--http-listen` it also serves `GET /v1/hold?millis=N`, which holds
//! one of the node's `http_pool_size` slots for that long: how tests fill
//! the node's concurrency limit; and `GET /v1/spin?micros=N`, which
//! computes for that long: how tests fill its CPU.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::Query;
use axum::routing::get;
use axum::Router;
use clap::Parser;
use serde::Deserialize;
use svckit::config::CommonArgs;
use svckit::manager::{GrpcServices, Manager};
use svckit::{BoxError, Node};

#[path = "common/echo.rs"]
mod echo;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// How long init_host takes (e.g. 30s).
    #[arg(long, value_parser = humantime::parse_duration)]
    init_delay: Option<Duration>,
    /// The hook that fails: init_host, pre_start_hook, post_start_hook or cleanup_host.
    #[arg(long)]
    fail: Option<String>,
    /// cleanup_host waits on blocking code that never returns.
    #[arg(long)]
    block_cleanup: bool,
    /// init_host fails while this file exists (a crash loop an operator can end).
    #[arg(long, value_name = "FILE")]
    fail_while: Option<std::path::PathBuf>,
}

struct Faulty {
    echo: Arc<echo::EchoManager>,
    init_delay: Option<Duration>,
    fail: Option<String>,
    block_cleanup: bool,
    fail_while: Option<std::path::PathBuf>,
}

impl Faulty {
    fn outcome(&self, hook: &str) -> Result<(), BoxError> {
        match &self.fail {
            Some(f) if f == hook => Err(format!("{hook} failed on purpose").into()),
            _ => Ok(()),
        }
    }
}

impl Manager for Faulty {
    fn grpc_services(self: &Arc<Self>, services: &mut GrpcServices) {
        self.echo.grpc_services(services);
    }

    fn http_routes(self: &Arc<Self>) -> Option<Router> {
        Some(
            Router::new()
                .route("/v1/hold", get(hold))
                .route("/v1/spin", get(spin)),
        )
    }

    async fn init_host(&self) -> Result<(), BoxError> {
        if let Some(delay) = self.init_delay {
            tracing::info!(?delay, "init_host started");
            tokio::time::sleep(delay).await;
        }
        if let Some(flag) = self.fail_while.as_ref().filter(|f| f.exists()) {
            return Err(format!("init_host fails while {} exists", flag.display()).into());
        }
        self.outcome("init_host")
    }

    async fn pre_start_hook(&self) -> Result<(), BoxError> {
        self.outcome("pre_start_hook")
    }

    async fn post_start_hook(&self) -> Result<(), BoxError> {
        self.outcome("post_start_hook")
    }

    async fn cleanup_host(&self) -> Result<(), BoxError> {
        if self.block_cleanup {
            tracing::info!("cleanup_host blocking");
            let _ =
                tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_secs(3600))).await;
        }
        self.outcome("cleanup_host")
    }
}

#[derive(Deserialize)]
struct Hold {
    millis: u64,
}

/// Answers after `millis` (at most an hour), holding its pool slot; a client
/// that hangs up ends it early.
async fn hold(Query(q): Query<Hold>) -> &'static str {
    // Tests wait for this line to know the slot is taken.
    tracing::info!(millis = q.millis, "hold started");
    tokio::time::sleep(Duration::from_millis(q.millis.min(3_600_000))).await;
    "released\n"
}

#[derive(Deserialize)]
struct Spin {
    micros: u64,
}

/// Answers after computing for `micros` of CPU time (at most a second).
async fn spin(Query(q): Query<Spin>) -> &'static str {
    let work = Duration::from_micros(q.micros).min(echo::spin::MAX_SPIN);
    echo::spin::spin(work).await;
    "done\n"
}

fn main() -> std::process::ExitCode {
    let args = svckit::config::parse_args::<Args>();
    let (init_delay, fail, block_cleanup, fail_while) = (
        args.init_delay,
        args.fail,
        args.block_cleanup,
        args.fail_while,
    );
    svckit::launcher::run(args.common, move |config| async move {
        let manager = Faulty {
            echo: Arc::new(echo::EchoManager::new(config.host().clone())),
            init_delay,
            fail,
            block_cleanup,
            fail_while,
        };
        let node = Node::builder(manager)
            .binary("fault_node")
            .topic("echo")
            .build(&config);
        Ok(vec![Arc::new(node) as Arc<dyn svckit::Service>])
    })
}
