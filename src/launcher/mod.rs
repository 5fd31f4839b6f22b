//! Running services: [`launch`] picks a launcher by worker count, and
//! [`run`] is the whole `main` of a kit binary.
//!
//! Both launchers, [`ServiceLauncher`] (every service in this process) and
//! [`Supervisor`] (one service in N worker processes), are driven by
//! [`Control`] requests. In a process they come from signals (docs/lifecycle.md's
//! table): SIGTERM and SIGINT stop gracefully within
//! `graceful_shutdown_timeout`, a second one exits at once (128 + signal);
//! SIGHUP re-reads the config and applies the mutable options in place (a
//! supervisor may replace its workers); SIGUSR2 writes a state report
//! ([`crate::report`]) to stderr or `report_dir`; SIGTTIN and SIGTTOU add
//! and remove a worker. Embedding programs and tests pass their own stream
//! or a shutdown future instead ([`ServiceLauncher::run_with`],
//! [`Supervisor::run_with`]).
//!
//! Both advertise through one component (`advertise.rs`): it joins the
//! service group once the node serves, keeps the record's `workers` true,
//! writes the ready file, and leaves first at stop.

mod advertise;
mod control;
mod process;
mod single;

use std::future::Future;

use futures::StreamExt;
use std::process::ExitCode;
use std::sync::Arc;

pub use self::control::{signals, until, Control, Controls};
pub use self::process::Supervisor;
pub use self::single::ServiceLauncher;

use self::process::worker::Inherited;
use self::single::WorkerSetup;

use crate::config::{program_name, CommonArgs, Config};
use crate::error::{Error, Result};
use crate::service::Service;
use crate::telemetry::Telemetry;

/// Runs `services` until a signal stops them and returns the exit code.
///
/// `workers` must be at least 1 (0 is a usage error, exit 64). 1 runs the
/// services in this process ([`ServiceLauncher`]); more runs one service in
/// that many worker processes under this one ([`Supervisor`]), which must
/// then be the `main` of its binary: workers re-execute it.
pub async fn launch(
    args: CommonArgs,
    config: Config,
    telemetry: Telemetry,
    services: Vec<Arc<dyn Service>>,
    workers: u32,
) -> Result<i32> {
    start(args, config, telemetry, services, workers, None).await
}

/// [`launch`], for an image that may carry on an upgraded supervisor: one
/// that was handed its workers stays their supervisor, whatever its config
/// now says of their number.
async fn start(
    args: CommonArgs,
    config: Config,
    telemetry: Telemetry,
    services: Vec<Arc<dyn Service>>,
    workers: u32,
    handover: Option<process::upgrade::Handover>,
) -> Result<i32> {
    crate::config::check_workers(workers, "the launcher")?;
    if workers == 1 && handover.is_none() {
        return ServiceLauncher::new(config, services)
            .reload_from(args)
            .telemetry(telemetry)
            .run()
            .await;
    }
    if services.len() != 1 {
        return Err(Error::usage(format!(
            "workers = {workers} runs one service per process; {} were given",
            services.len()
        )));
    }
    let mut supervisor = Supervisor::new(config)
        .reload_from(args)
        .telemetry(telemetry);
    supervisor.workers = workers;
    supervisor.handover = handover;
    supervisor.run().await
}

/// The `main` of a kit binary: loads the config from `args`, sets up
/// logging, builds the services with `make`, launches them, and maps every
/// error to its exit code with a one-line message on stderr.
///
/// ```no_run
/// # use std::sync::Arc;
/// # struct Echo;
/// # impl svckit::Manager for Echo { fn grpc_services(self: &Arc<Self>, _: &mut svckit::manager::GrpcServices) {} }
/// use clap::Parser;
/// use svckit::{config::CommonArgs, Node};
///
/// #[derive(Parser)]
/// struct Args {
///     #[command(flatten)]
///     common: CommonArgs,
/// }
///
/// fn main() -> std::process::ExitCode {
///     svckit::launcher::run(Args::parse().common, |config| async move {
///         Ok(vec![Arc::new(Node::builder(Echo).topic("echo").build(&config)) as _])
///     })
/// }
/// ```
pub fn run<F, Fut>(args: CommonArgs, make: F) -> ExitCode
where
    F: FnOnce(Config) -> Fut,
    Fut: Future<Output = Result<Vec<Arc<dyn Service>>>>,
{
    let program = program_name();
    let code = match run_inner(args, make) {
        Ok(code) => code,
        Err(e) => {
            // The log lines still queued go first: the error is the last
            // line an operator reads.
            crate::telemetry::sink::flush();
            eprintln!("{program}: error: {e}");
            e.exit_code()
        }
    };
    // Exit now: a deadline or a second signal must not wait for tasks that
    // are still running; the log lines still queued go first (each node
    // sent its spans as it stopped).
    crate::telemetry::sink::flush();
    std::process::exit(code)
}

fn run_inner<F, Fut>(args: CommonArgs, make: F) -> Result<i32>
where
    F: FnOnce(Config) -> Fut,
    Fut: Future<Output = Result<Vec<Arc<dyn Service>>>>,
{
    // Before any thread starts: it reads and clears the environment.
    let mut inherited = Inherited::take()?;
    let config = Config::load(&args)?;
    crate::telemetry::check_console(&config)?;
    let telemetry = Telemetry::init_process(&config, inherited.worker);
    raise_open_files(&config);
    let runtime = tokio::runtime::Runtime::new()?;
    let result = runtime.block_on(async move {
        let services = make(config.clone()).await?;
        if inherited.worker.is_some() {
            // One worker of a supervisor: serve the shared socket, tell the
            // supervisor when serving, leave registration to it.
            let mut controls = signals()?;
            let mut supervisor = None;
            // A beat every half timeout: one late beat is not a miss.
            let beat = Some(config.worker_timeout / 2).filter(|b| !b.is_zero());
            // gunicorn's max_requests, with its jitter drawn once per worker.
            let recycle = (config.max_requests > 0).then(|| {
                let jitter = rand::random_range(0..=config.max_requests_jitter);
                let counted = services.clone();
                process::worker::Recycle {
                    after: u64::try_from(config.max_requests + jitter).unwrap_or(u64::MAX),
                    served: Box::new(move || counted.iter().map(|s| s.served()).sum()),
                }
            });
            let mut figures = None;
            if let Some((ready, requests, told)) = inherited.follow_supervisor(beat, recycle)? {
                supervisor = Some(ready);
                figures = Some(told);
                controls = futures::stream::select(controls, requests).boxed();
            }
            return ServiceLauncher::new(config, services)
                .reload_from(args)
                .telemetry(telemetry)
                .worker(WorkerSetup {
                    listener: inherited.listener.take(),
                    http_listener: inherited.http_listener.take(),
                    worker: inherited.worker,
                    supervisor,
                    figures,
                    in_flight: inherited.in_flight,
                })
                .run_with(controls)
                .await;
        }
        process::notify::watchdog();
        if inherited.listener.is_some() || inherited.http_listener.is_some() {
            // systemd socket activation: one process on the given sockets.
            return ServiceLauncher::new(config, services)
                .reload_from(args)
                .telemetry(telemetry)
                .worker(WorkerSetup {
                    listener: inherited.listener.take(),
                    http_listener: inherited.http_listener.take(),
                    worker: None,
                    supervisor: None,
                    figures: None,
                    in_flight: None,
                })
                .run()
                .await;
        }
        let workers = config.workers.0;
        let handover = inherited.upgrade.take();
        start(args, config, telemetry, services, workers, handover).await
    });
    // Dropping the runtime would wait for its blocking pool: a manager's
    // stuck `spawn_blocking` must not hold an exit that a deadline or a
    // second signal asked for.
    runtime.shutdown_background();
    result
}

/// A reload's config step, the same in both launchers: re-reads the
/// config from `reload_from` (without it, applies the running one again),
/// takes over what may change in place, and applies a new log filter.
/// `false` when the config no longer loads: the running one is kept, and
/// the error logged, for a typo must not take a node down.
fn reload_config(
    config: &mut Config,
    reload_from: Option<&CommonArgs>,
    telemetry: Option<&Telemetry>,
) -> bool {
    let loaded = match reload_from {
        Some(args) => Config::load(args),
        None => Ok(config.clone()),
    };
    let (applied, ignored) = match loaded.and_then(|new| config.apply_mutable(&new)) {
        Ok(changes) => changes,
        Err(e) => {
            tracing::error!(error = %e, "config reload failed; keeping the running config");
            return false;
        }
    };
    if !ignored.is_empty() {
        tracing::warn!(options = ?ignored, "changed options need a restart; keeping their running values");
    }
    if let Some(telemetry) = telemetry {
        if let Err(e) = telemetry.apply(config) {
            tracing::error!(error = %e, "cannot apply the new log filter");
        }
    }
    tracing::info!(changed = ?applied, log_level = %config.log_level.0, "config reloaded");
    true
}

/// Raises the soft limit on open files to the hard one (as Go programs do
/// at start): every connection holds a descriptor, and the distribution
/// default of 1024 is below the connection limits, so a flood would
/// exhaust the descriptors before `rpc_max_connections` could act. Warns
/// when even the hard limit is below what the limits allow.
fn raise_open_files(config: &Config) {
    // SAFETY: plain system calls on a local struct.
    let limit = unsafe {
        let mut limit = std::mem::zeroed::<libc::rlimit>();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
        limit.rlim_cur
    };
    let http = config
        .http_listen
        .map_or(0, |_| config.http_max_connections);
    // Room for the registry, logs and the manager's own files.
    let wanted = (config.rpc_max_connections + http).saturating_add(256);
    if (wanted as u64) > limit {
        tracing::warn!(
            open_files = limit,
            rpc_max_connections = config.rpc_max_connections,
            http_max_connections = http,
            "the open-file limit is below the connection limits: raise it (ulimit -n, LimitNOFILE) or lower them"
        );
    }
}
