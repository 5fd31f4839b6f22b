//! The multi-process launcher (oslo's `ProcessLauncher`, gunicorn's
//! arbiter): a supervisor binds the listener, starts N workers that all
//! accept on it, registers the node once, and keeps the workers alive.
//!
//! - Workers are this binary re-executed (`spawn.rs`), never a fork of a
//!   running tokio runtime; they get the socket by the `LISTEN_FDS`
//!   convention (`worker.rs`) and die with the supervisor.
//! - The node is advertised while at least one worker serves, and only
//!   then: a worker tells the supervisor when it serves.
//! - A worker that exits unasked is restarted at once; while workers keep
//!   dying young (before `min_worker_lifetime`) restarts wait 0.1 s doubling
//!   to 30 s, so a crash loop never spins.
//! - Signals: TERM/INT leave the group, stop the workers within
//!   `graceful_shutdown_timeout` (then KILL), a second one kills at once;
//!   HUP re-reads the config and, with `restart_method = reload`, replaces
//!   workers one at a time (a new one serves before an old one stops), or
//!   with `mutate` passes HUP on; TTIN/TTOU add or remove a worker; USR2
//!   prints a report (and each worker prints its own).
//! - Under systemd (`NOTIFY_SOCKET`), READY=1, RELOADING=1 and STOPPING=1
//!   are sent.

mod notify;
mod pool;
mod spawn;
pub(crate) mod worker;

use std::sync::Arc;

use crate::config::{CommonArgs, Config};
use crate::error::{Error, Result};
use crate::service::{self, Service};
use crate::servicegroup::{self, Endpoints};
use crate::telemetry::Telemetry;
use crate::tls::ServerTls;

pub use self::pool::ProcessLauncher;

/// Runs `services` as `workers` processes under a supervisor (this process).
pub(super) async fn supervise(
    args: CommonArgs,
    config: Config,
    telemetry: Telemetry,
    services: Vec<Arc<dyn Service>>,
    workers: u32,
) -> Result<i32> {
    let [service] = &services[..] else {
        return Err(Error::Usage(format!(
            "workers = {workers} runs one service per process; {} were given",
            services.len()
        )));
    };
    // The registry first, as a single node does: unreachable is exit 69
    // before any worker starts.
    // Each worker serves TLS itself; the files are checked here so that
    // unusable ones refuse the start (exit 78) instead of failing workers.
    let tls = ServerTls::from_config(&config)?.is_some();
    let registry = servicegroup::connect(&config.registry, &config.registry_options()).await?;
    let listener = service::bind(config.rpc_listen)?;
    let grpc = service::advertised_url(listener.local_addr()?, &config.host, tls);
    let mut listeners = vec![("grpc", listener)];
    let mut http = None;
    if let Some(addr) = config.http_listen {
        let listener = service::bind(addr)?;
        http = Some(service::advertised_url(
            listener.local_addr()?,
            &config.host,
            tls,
        ));
        listeners.push(("http", listener));
    }
    let endpoints = Endpoints {
        grpc: Some(grpc),
        http,
    };
    let registration = service.registration(endpoints, workers);
    ProcessLauncher::new(config, listeners, registry, registration, workers)
        .reload_from(args)
        .telemetry(telemetry)
        .run()
        .await
}
