//! [`ServiceLauncher`]: every service in this process (oslo's
//! `ServiceLauncher`), driven by [`Control`] requests.

use std::sync::Arc;
use std::time::Duration;

use futures::future::{join_all, select_all};
use futures::stream::{self, StreamExt};

use super::advertise::Advertiser;
use super::control::{self, Control, Controls};
use super::process::worker::Ready;
use crate::config::{CommonArgs, Config};
use crate::error::{exit, Error, Result};
use crate::service::{Service, StartContext};
use crate::servicegroup::RegistryHandle;
use crate::telemetry::metrics::WorkerFigures;
use crate::telemetry::Telemetry;

/// Runs services in the current process until asked to stop.
///
/// Stop requests come from a [`Controls`] stream: the process signals with
/// [`ServiceLauncher::run`], a future with [`ServiceLauncher::run_until`], or
/// any stream with [`ServiceLauncher::run_with`].
///
/// ```no_run
/// # use std::sync::Arc;
/// # struct Echo;
/// # impl svckit::Manager for Echo { fn grpc_services(self: &Arc<Self>, _: &mut svckit::manager::GrpcServices) {} }
/// # async fn demo() -> svckit::Result<()> {
/// use svckit::launcher::ServiceLauncher;
/// use svckit::{Config, Node};
///
/// let config = Config::default();
/// let node = Arc::new(Node::builder(Echo).topic("echo").build(&config));
/// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
/// let run = tokio::spawn(
///     ServiceLauncher::new(config, vec![node]).run_until(async { let _ = stopped.await; }),
/// );
/// // … later:
/// let _ = stop.send(());
/// let code = run.await.expect("launcher task")?;
/// assert_eq!(code, 0);
/// # Ok(()) }
/// ```
#[must_use]
pub struct ServiceLauncher {
    config: Config,
    services: Vec<Arc<dyn Service>>,
    /// Where a reload re-reads the config from; without it a reload applies
    /// the running config again (and still resets the services).
    reload_from: Option<CommonArgs>,
    telemetry: Option<Telemetry>,
    /// Set when this process serves inherited listeners: as one worker of
    /// a supervisor, or under systemd socket activation.
    worker: Option<WorkerSetup>,
}

/// A listener handed down, by a supervisor or by systemd.
pub(super) struct WorkerSetup {
    /// The gRPC listening socket, served instead of binding one.
    pub(super) listener: Option<std::net::TcpListener>,
    /// The HTTP listening socket, likewise.
    pub(super) http_listener: Option<std::net::TcpListener>,
    /// `Some(slot)` for a supervised worker.
    pub(super) worker: Option<u32>,
    /// Where a supervised worker tells its supervisor it serves, and what
    /// to advertise: the supervisor registers the node for all workers.
    pub(super) supervisor: Option<Ready>,
    /// What the supervisor tells of the workers it restarted.
    pub(super) figures: Option<Arc<WorkerFigures>>,
    /// Where the node counts its calls in flight for the supervisor.
    pub(super) in_flight: Option<&'static std::sync::atomic::AtomicI64>,
}

/// How the start phase ended.
enum Started {
    All,
    /// A stop request came first; `count` services (the interrupted one
    /// included) may hold resources and are stopped.
    Interrupted {
        count: usize,
        signal: Option<i32>,
    },
    /// A start failed; the `count` services before it are stopped.
    Failed {
        count: usize,
        error: Error,
    },
}

impl ServiceLauncher {
    /// A launcher for `services` under `config`.
    pub fn new(config: Config, services: Vec<Arc<dyn Service>>) -> Self {
        ServiceLauncher {
            config,
            services,
            reload_from: None,
            telemetry: None,
            worker: None,
        }
    }

    /// Serves an inherited listener (as a supervised worker, or under
    /// systemd socket activation).
    pub(super) fn worker(mut self, setup: WorkerSetup) -> Self {
        self.worker = Some(setup);
        self
    }

    /// Re-reads the config from these sources on [`Control::Reload`].
    ///
    /// ```
    /// # use svckit::{config::CommonArgs, launcher::ServiceLauncher, Config};
    /// let launcher = ServiceLauncher::new(Config::default(), vec![])
    ///     .reload_from(CommonArgs::default());
    /// ```
    pub fn reload_from(mut self, args: CommonArgs) -> Self {
        self.reload_from = Some(args);
        self
    }

    /// Applies a reloaded `log_level` through this handle.
    ///
    /// ```
    /// # use svckit::{launcher::ServiceLauncher, telemetry::Telemetry, Config};
    /// let config = Config::default();
    /// let telemetry = Telemetry::init(&config);
    /// let launcher = ServiceLauncher::new(config, vec![]).telemetry(telemetry);
    /// ```
    pub fn telemetry(mut self, telemetry: Telemetry) -> Self {
        self.telemetry = Some(telemetry);
        self
    }

    /// Runs until SIGTERM or SIGINT (see [`control::signals`]).
    pub async fn run(self) -> Result<i32> {
        let signals = control::signals()?;
        self.run_with(signals).await
    }

    /// Runs until `shutdown` resolves, then stops gracefully.
    pub async fn run_until<F>(self, shutdown: F) -> Result<i32>
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.run_with(control::until(shutdown)).await
    }

    /// Starts every service, serves until a [`Control::Stop`], stops in the
    /// drain order, and returns the exit code. A stop request during the
    /// start interrupts it (a hanging `init_host` or an unreachable registry
    /// cannot hold the process); a failed start stops what had started and
    /// returns the error.
    pub async fn run_with(mut self, controls: Controls) -> Result<i32> {
        // A stream that ended just sends nothing more.
        let mut controls = controls.chain(stream::pending()).boxed();
        let services = self.services.clone();
        let registry =
            RegistryHandle::new(self.config.registry.clone(), self.config.registry_options());
        let supervisor = self.worker.as_mut().and_then(|w| w.supervisor.take());
        let supervised = supervisor.is_some();
        let mut advertiser = match supervisor {
            Some(ready) => Advertiser::for_supervisor(registry.clone(), &self.config, ready),
            None => Advertiser::new(registry.clone(), &self.config),
        };
        let started = self
            .start(&registry, supervised, &mut advertiser, &mut controls)
            .await;
        match started {
            Started::All => advertiser.all_started(),
            Started::Interrupted { count, signal } => {
                tracing::info!(?signal, "stop requested during start");
                return self
                    .stop(&services[..count], &mut advertiser, &mut controls)
                    .await;
            }
            Started::Failed { count, error } => {
                // The error itself is reported once, by the caller.
                let _ = self
                    .stop(&services[..count], &mut advertiser, &mut controls)
                    .await;
                return Err(error);
            }
        }

        loop {
            let ended = select_all(services.iter().map(|s| s.wait()));
            tokio::select! {
                control = controls.next() => match control {
                    Some(Control::Stop { signal }) => {
                        tracing::info!(?signal, timeout = ?self.config.graceful_shutdown_timeout, "stopping gracefully");
                        return self.stop(&services, &mut advertiser, &mut controls).await;
                    }
                    Some(control) => self.handle(control).await,
                    None => {}
                },
                (result, _, _) = ended => {
                    // A service died on its own: stop the others and fail.
                    let reason = result.err().unwrap_or_else(|| {
                        Error::from(std::io::Error::other("a service ended unexpectedly"))
                    });
                    tracing::error!(error = %reason, "service ended; stopping");
                    let _ = self.stop(&services, &mut advertiser, &mut controls).await;
                    return Err(reason);
                }
            }
        }
    }

    /// Reaches the registry (unless a supervisor advertises this process),
    /// then starts and advertises each service in turn. A stop request
    /// interrupts any step.
    async fn start(
        &mut self,
        registry: &RegistryHandle,
        supervised: bool,
        advertiser: &mut Advertiser,
        controls: &mut Controls,
    ) -> Started {
        // An unreachable registry fails the start (exit 69) before anything
        // is bound or initialised.
        if !supervised {
            match self.interruptible(registry.get(), controls).await {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => return Started::Failed { count: 0, error },
                Err(signal) => return Started::Interrupted { count: 0, signal },
            }
        }
        let services = self.services.clone();
        for (index, service) in services.iter().enumerate() {
            let mut context = StartContext::new(&self.config);
            context.registry = registry.clone();
            if let Some(worker) = &mut self.worker {
                context.listener = worker.listener.take();
                context.http_listener = worker.http_listener.take();
                context.worker = worker.worker;
                context.figures.clone_from(&worker.figures);
                context.in_flight = worker.in_flight;
            }
            if supervised {
                // The supervisor left the group and waited already.
                context.drain_delay = Duration::ZERO;
            }
            let start_and_advertise = async {
                // The failed service cleaned up after itself.
                let advert = service
                    .start(context)
                    .await
                    .map_err(|error| (index, error))?;
                // Advertised only now: a node is never listed before it can
                // answer. A failed join stops the started service too.
                advertiser
                    .advertise(advert)
                    .await
                    .map_err(|error| (index + 1, error))
            };
            match self.interruptible(start_and_advertise, controls).await {
                Ok(Ok(advertised)) => service.advertised(advertised).await,
                Ok(Err((count, error))) => return Started::Failed { count, error },
                Err(signal) => {
                    return Started::Interrupted {
                        count: index + 1,
                        signal,
                    }
                }
            }
        }
        Started::All
    }

    /// Runs `step` of the start; `Err(signal)` when a stop request came
    /// first. Reports are written meanwhile; reloads wait.
    async fn interruptible<F: std::future::Future>(
        &self,
        step: F,
        controls: &mut Controls,
    ) -> std::result::Result<F::Output, Option<i32>> {
        tokio::pin!(step);
        loop {
            tokio::select! {
                output = &mut step => return Ok(output),
                control = controls.next() => match control {
                    Some(Control::Stop { signal }) => return Err(signal),
                    Some(Control::Report) => self.report(),
                    Some(Control::Reload) => {
                        tracing::info!("reload requested during start; the config just loaded stays");
                    }
                    Some(_) | None => {}
                },
            }
        }
    }

    /// A request while serving, other than a stop.
    async fn handle(&mut self, control: Control) {
        match control {
            Control::Reload => self.reload().await,
            Control::Report => self.report(),
            Control::AddWorker | Control::RemoveWorker => {
                tracing::info!(
                    ?control,
                    "a single process has no workers to add or remove; set `workers` above 1"
                );
            }
            Control::Stop { .. } => {}
        }
    }

    /// Leaves the service group, then stops `services` together, all
    /// within `graceful_shutdown_timeout`. A stop signal now ends the run
    /// at once; a stop request without one changes nothing.
    async fn stop(
        &mut self,
        services: &[Arc<dyn Service>],
        advertiser: &mut Advertiser,
        controls: &mut Controls,
    ) -> Result<i32> {
        let timeout = self.config.graceful_shutdown_timeout;
        let leave_then_stop = async {
            // Stop advertising first: watchers see the leave at once.
            advertiser.leave().await;
            join_all(services.iter().map(|s| s.stop())).await
        };
        let stop = bounded(timeout, leave_then_stop);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                results = &mut stop => {
                    let results = results.ok_or(Error::shutdown_timeout(timeout))?;
                    let failed = results.into_iter().filter_map(|r| r.err()).inspect(|e| {
                        tracing::error!(error = %e, "graceful stop failed");
                    }).count();
                    return Ok(if failed == 0 { exit::OK } else { exit::SOFTWARE });
                }
                control = controls.next() => match control {
                    Some(Control::Stop { signal: Some(signal) }) => {
                        tracing::warn!(signal, "second stop signal; exiting now");
                        return Ok(exit::signal(signal));
                    }
                    // Asked again without a signal: already under way.
                    Some(Control::Stop { signal: None }) => {}
                    Some(control) => self.handle(control).await,
                    None => {}
                },
            }
        }
    }

    /// Re-reads the config from the same sources and applies what may
    /// change in place, then resets every service. A config that no longer
    /// loads is logged and the running one kept: a typo must not take a
    /// node down.
    async fn reload(&mut self) {
        let reload_from = self.reload_from.as_ref();
        if !super::reload_config(&mut self.config, reload_from, self.telemetry.as_ref()) {
            return;
        }
        for service in &self.services {
            if let Err(e) = service.reset(&self.config).await {
                tracing::error!(service = %service.name(), error = %e, "reset failed");
            }
        }
    }

    /// The state report of every service, as text to stderr or to a file
    /// in `report_dir`. Built on a task of its own: asking the registry for
    /// the members must not hold signal handling.
    fn report(&self) {
        let services = self.services.clone();
        let report_dir = self.config.report_dir.clone();
        tokio::spawn(async move {
            let reports = join_all(services.iter().map(|s| s.report())).await;
            let report = match <[serde_json::Value; 1]>::try_from(reports) {
                // One service (the usual node): its sections at the top.
                Ok([one]) => one,
                Err(all) => serde_json::json!({ "services": all }),
            };
            crate::report::emit(
                &report,
                report_dir.as_deref(),
                &crate::config::program_name(),
            );
        });
    }
}

/// Runs `fut` within `timeout` (zero: no bound); `None` when it ran out.
async fn bounded<F: std::future::Future>(timeout: Duration, fut: F) -> Option<F::Output> {
    if timeout.is_zero() {
        Some(fut.await)
    } else {
        match tokio::time::timeout(timeout, fut).await {
            Ok(out) => Some(out),
            Err(_) => {
                tracing::error!(timeout = ?timeout, "graceful stop timed out; in-flight work is cut off");
                None
            }
        }
    }
}
