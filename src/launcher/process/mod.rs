//! The multi-process launcher (oslo's `ProcessLauncher`, gunicorn's
//! arbiter): a [`Supervisor`] binds the listeners, starts N workers that all
//! accept on them, advertises the node once, and keeps the workers alive.
//!
//! - Workers are this binary re-executed (`spawn.rs`), never a fork of a
//!   running tokio runtime; they get the sockets by the `LISTEN_FDS`
//!   convention (`worker.rs`) and die with the supervisor.
//! - The node is advertised while at least one worker serves, and only
//!   then: a worker tells the supervisor when it serves, and what it
//!   advertises. The record's `workers` is the number that serve.
//! - A worker that exits unasked is restarted at once; while workers keep
//!   dying young (before `min_worker_lifetime`) restarts wait 0.1 s doubling
//!   to 30 s, so a crash loop never spins.
//! - It is driven by [`Control`] requests, as the single launcher is:
//!   a stop leaves the group and stops the workers within
//!   `graceful_shutdown_timeout` (then kills them), a second stop signal
//!   kills at once; a reload re-reads the config and, with
//!   `restart_method = reload`, replaces workers one at a time (a new one
//!   serves before an old one stops), or with `mutate` passes SIGHUP on;
//!   [`Control::AddWorker`] and [`Control::RemoveWorker`] change the count;
//!   a report request writes the supervisor's report (and each worker its
//!   own).
//! - Under systemd (`NOTIFY_SOCKET`), READY=1, RELOADING=1 and STOPPING=1
//!   are sent.

mod binary;
mod calls;
pub(crate) mod notify;
mod pool;
mod spawn;
pub(crate) mod upgrade;
mod watch;
pub(crate) mod worker;

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::{Instant, SystemTime};

use futures::stream::{self, StreamExt};
use nix::sys::signal::Signal;

use self::notify::notify;
use self::pool::{Pool, Program};
use super::advertise::Advertiser;
use super::control::{self, Control, Controls};
use crate::config::{CommonArgs, Config, RestartMethod};
use crate::error::{exit, Error, Result};
use crate::service;
use crate::servicegroup::{self, RegistryHandle};
use crate::telemetry::Telemetry;
use crate::tls::ServerTls;

/// The supervisor of a multi-process node: binds the listeners, runs
/// `workers` copies of a program on them, and advertises the node while
/// one of them serves.
///
/// [`launcher::run`](super::run) uses it for `workers > 1`, with this
/// binary as the program. Tests and embedding programs run it in their own
/// process with [`program`](Self::program) and drive it with
/// [`run_with`](Self::run_with).
#[must_use]
pub struct Supervisor {
    config: Config,
    /// The workers to start with (`config.workers` unless
    /// [`launch`](super::launch) says otherwise).
    pub(super) workers: u32,
    program: Option<Program>,
    reload_from: Option<CommonArgs>,
    telemetry: Option<Telemetry>,
    /// What the image before handed down, after an upgrade in place.
    pub(super) handover: Option<upgrade::Handover>,
}

impl Supervisor {
    /// A supervisor of `config.workers` workers of this binary, run with
    /// this process's arguments.
    pub fn new(config: Config) -> Self {
        Supervisor {
            workers: config.workers.0,
            config,
            program: None,
            reload_from: None,
            telemetry: None,
            handover: None,
        }
    }

    /// The program every worker runs, with its arguments (`args[0]` is its
    /// name): a kit binary whose config names the same node.
    ///
    /// ```
    /// # use svckit::{launcher::Supervisor, Config};
    /// let supervisor = Supervisor::new(Config::default())
    ///     .program("/usr/bin/echo_node", ["echo_node", "--host", "h1"]);
    /// ```
    pub fn program<I, S>(mut self, path: impl Into<PathBuf>, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.program = Some(Program {
            path: path.into(),
            args: args.into_iter().map(Into::into).collect(),
        });
        self
    }

    /// Re-reads the config from these sources on [`Control::Reload`].
    ///
    /// ```
    /// # use svckit::{config::CommonArgs, launcher::Supervisor, Config};
    /// let supervisor = Supervisor::new(Config::default()).reload_from(CommonArgs::default());
    /// ```
    pub fn reload_from(mut self, args: CommonArgs) -> Self {
        self.reload_from = Some(args);
        self
    }

    /// Applies a reloaded `log_level` to the supervisor's own logs.
    ///
    /// ```
    /// # use svckit::{launcher::Supervisor, telemetry::Telemetry, Config};
    /// let config = Config::default();
    /// let telemetry = Telemetry::init(&config);
    /// let supervisor = Supervisor::new(config).telemetry(telemetry);
    /// ```
    pub fn telemetry(mut self, telemetry: Telemetry) -> Self {
        self.telemetry = Some(telemetry);
        self
    }

    /// Runs until the process signals stop it (see [`control::signals`]).
    pub async fn run(self) -> Result<i32> {
        let signals = control::signals()?;
        if self.handover.is_some() {
            upgrade::signals_handled();
        }
        self.run_with(signals).await
    }

    /// Reaches the registry (exit 69 when it is down), binds the
    /// listeners, starts the workers and supervises them until a
    /// [`Control::Stop`]; returns the exit code.
    pub async fn run_with(self, controls: Controls) -> Result<i32> {
        let config = self.config;
        // Each worker serves TLS itself; the files are checked here so that
        // unusable ones refuse the start (exit 78) instead of failing workers.
        ServerTls::from_config(&config)?;
        let registry = RegistryHandle::new(config.registry.clone(), config.registry_options());
        // The registry must answer before any worker starts.
        registry.get().await?;
        // After an upgrade in place: what the image before handed down.
        let handover = self.handover;
        let listeners = match &handover {
            Some(handover) => pool::listeners(&handover.listeners)?,
            None => {
                let mut listeners = vec![("grpc", service::bind(config.rpc_listen)?)];
                if let Some(addr) = config.http_listen {
                    listeners.push(("http", service::bind(addr)?));
                }
                listeners
            }
        };
        // Only a supervisor that runs its own binary upgrades itself.
        let self_binary = self
            .program
            .is_none()
            .then(|| binary::Binary::resolve(std::path::Path::new(binary::SELF_EXE)));
        let program = match self.program {
            Some(program) => program,
            None => Program {
                path: binary::SELF_EXE.into(),
                args: std::env::args_os().collect(),
            },
        };
        let (mut pool, events) = Pool::new(
            program,
            listeners,
            self.workers,
            config.min_worker_lifetime,
            config.worker_timeout,
        );
        let mut started_at = SystemTime::now();
        let mut session = None;
        if let Some(handover) = handover {
            session.clone_from(&handover.registration);
            pool.adopt(
                handover.workers,
                handover.restarts,
                handover.timeouts,
                handover.advert,
            )?;
            started_at =
                SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(handover.started_at_ms);
            tracing::info!(pid = std::process::id(), "supervisor upgraded in place");
        }
        let running = Running {
            advertiser: Advertiser::new(registry, &config).resume(session),
            config,
            reload_from: self.reload_from,
            telemetry: self.telemetry,
            pool,
            events,
            notified_ready: false,
            started_at,
            self_binary,
            upgrading: false,
        };
        running.run(controls.chain(stream::pending()).boxed()).await
    }
}

/// A supervisor at work.
struct Running {
    config: Config,
    reload_from: Option<CommonArgs>,
    telemetry: Option<Telemetry>,
    pool: Pool,
    events: tokio::sync::mpsc::UnboundedReceiver<pool::Event>,
    advertiser: Advertiser,
    notified_ready: bool,
    started_at: SystemTime,
    /// This process's binary, when it runs its own as workers: a reload
    /// that finds it replaced upgrades the supervisor too.
    self_binary: Option<binary::Binary>,
    /// Replacing the workers before an upgrade in place.
    upgrading: bool,
}

impl Running {
    async fn run(mut self, mut controls: Controls) -> Result<i32> {
        tracing::info!(
            workers = self.pool.target(),
            pid = std::process::id(),
            "supervisor starting workers"
        );
        self.pool.start_all();
        let stop_signal = loop {
            self.pool.start_due();
            let serving = self.pool.serving();
            if let Err(e) = self.advertiser.tend(self.pool.advert(), serving).await {
                // Another live node holds this identity: nothing to serve for.
                self.pool.signal_all(Signal::SIGKILL);
                return Err(e);
            }
            if serving > 0 && self.advertiser.status().is_some() && !self.notified_ready {
                notify("READY=1");
                self.notified_ready = true;
            }
            if self.upgrading && self.pool.settled() {
                self.upgrade();
            }
            let wake = [self.pool.next_wake(), self.advertiser.next_wake()]
                .into_iter()
                .flatten()
                .min();
            tokio::select! {
                control = controls.next() => match control {
                    Some(Control::Stop { signal }) => break signal,
                    Some(Control::Reload) => self.reload().await,
                    Some(Control::Report) => self.report(),
                    Some(Control::AddWorker) => self.pool.resize(self.pool.target().saturating_add(1)),
                    Some(Control::RemoveWorker) => self.pool.resize(self.pool.target().saturating_sub(1)),
                    None => {}
                },
                Some(event) = self.events.recv() => self.pool.handle(event),
                () = sleep_until(wake) => {}
            }
        };
        self.stop(stop_signal, &mut controls).await
    }

    /// The graceful stop: leave the group, give clients the drain delay to
    /// act on it while the workers still accept, then stop the workers
    /// within `graceful_shutdown_timeout`. A second stop signal kills them.
    async fn stop(mut self, signal: Option<i32>, controls: &mut Controls) -> Result<i32> {
        notify("STOPPING=1");
        let timeout = self.config.graceful_shutdown_timeout;
        tracing::info!(?signal, ?timeout, "stopping workers gracefully");
        {
            let (advertiser, pool) = (&mut self.advertiser, &self.pool);
            let drain_delay = self.config.drain_delay;
            let leave_and_wait = async {
                advertiser.leave().await;
                tokio::time::sleep(drain_delay).await;
            };
            tokio::pin!(leave_and_wait);
            loop {
                tokio::select! {
                    () = &mut leave_and_wait => break,
                    control = controls.next() => if let Some(code) = second_stop(control, pool) {
                        return Ok(code);
                    },
                }
            }
        }
        self.pool.stop_all();
        let deadline = (!timeout.is_zero()).then(|| tokio::time::Instant::now() + timeout);
        let mut timed_out = false;
        while !self.pool.is_empty() {
            tokio::select! {
                control = controls.next() => {
                    if control == Some(Control::Report) {
                        self.report();
                    } else if let Some(code) = second_stop(control, &self.pool) {
                        return Ok(code);
                    }
                }
                Some(event) = self.events.recv() => self.pool.handle(event),
                () = sleep_until_tokio(deadline), if !timed_out => {
                    tracing::error!(?timeout, remaining = self.pool.len(), "graceful stop timed out; killing the remaining workers");
                    self.pool.signal_all(Signal::SIGKILL);
                    timed_out = true;
                }
            }
        }
        tracing::info!("all workers stopped");
        if timed_out {
            return Err(Error::shutdown_timeout(timeout));
        }
        Ok(exit::OK)
    }

    /// A reload: re-read the config, then replace or reset the workers.
    async fn reload(&mut self) {
        notify("RELOADING=1");
        let reload_from = self.reload_from.as_ref();
        let reloaded = super::reload_config(&mut self.config, reload_from, self.telemetry.as_ref());
        if self
            .self_binary
            .as_ref()
            .is_some_and(binary::Binary::changed)
            && !self.upgrading
        {
            // The new file serves first, in every worker; then the
            // supervisor runs it too (see `upgrade`).
            tracing::info!(
                "the supervisor's binary changed; replacing the workers, then the supervisor"
            );
            self.upgrading = true;
            self.pool.replace_all();
            return;
        }
        if !reloaded {
            // The workers would load the same config: they keep running.
            notify("READY=1");
            return;
        }
        match self.config.restart_method {
            RestartMethod::Mutate => self.pool.signal_all(Signal::SIGHUP),
            RestartMethod::Reload => self.pool.replace_all(),
        }
        notify("READY=1");
    }

    /// Once the workers run the new binary: re-executes it in place. When
    /// a new worker did not serve, or the exec fails, the supervisor goes
    /// on as it is.
    fn upgrade(&mut self) {
        self.upgrading = false;
        if self.pool.roll_failed() {
            tracing::error!(
                "the new binary did not serve in a worker; the supervisor keeps the old one"
            );
            notify("READY=1");
            return;
        }
        let Some(binary) = self.self_binary.as_ref() else {
            return;
        };
        let handover = upgrade::Handover {
            listeners: self.pool.listener_fds(),
            workers: self.pool.handover(),
            registration: self.advertiser.handover(),
            restarts: self.pool.restarts(),
            timeouts: self.pool.timeouts(),
            advert: self.pool.advert().cloned(),
            started_at_ms: self
                .started_at
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        };
        tracing::info!(path = %binary.path().display(), workers = handover.workers.len(), "re-executing the supervisor's new binary in place");
        let error = upgrade::exec(binary.path(), self.pool.args(), &handover);
        tracing::error!(error = %error, "cannot re-execute the supervisor; it keeps the old binary");
        notify("READY=1");
    }

    /// The supervisor's report (stderr or `report_dir`); each worker
    /// writes its own.
    fn report(&self) {
        let uptime = SystemTime::now()
            .duration_since(self.started_at)
            .unwrap_or_default();
        let status = self.advertiser.status();
        let report = serde_json::json!({
            "supervisor": {
                "pid": std::process::id(),
                "started_at": servicegroup::rfc3339(self.started_at),
                "uptime_secs": uptime.as_secs_f64(),
                "workers_wanted": self.pool.target(),
                "workers_serving": self.pool.serving(),
                "restarts": self.pool.restarts(),
                "timeouts": self.pool.timeouts(),
                "registered": status.is_some(),
                "membership": status,
            },
            "workers": self.pool.report(),
        });
        crate::report::emit(&report, self.config.report_dir.as_deref(), "supervisor");
        self.pool.signal_all(Signal::SIGUSR2);
    }
}

/// During a stop: a stop request with a signal kills the workers and gives
/// the exit code; anything else changes nothing.
fn second_stop(control: Option<Control>, pool: &Pool) -> Option<i32> {
    match control {
        Some(Control::Stop {
            signal: Some(signal),
        }) => {
            tracing::warn!(signal, "second stop signal; killing the workers");
            pool.signal_all(Signal::SIGKILL);
            Some(exit::signal(signal))
        }
        _ => None,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_tokio(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
