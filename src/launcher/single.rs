//! [`ServiceLauncher`]: every service in this process (oslo's
//! `ServiceLauncher`), driven by signals.

use std::sync::Arc;
use std::time::Duration;

use futures::future::{join_all, select_all};
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::config::{CommonArgs, Config, RestartMethod};
use crate::error::{exit, Error, Result};
use crate::service::Service;
use crate::telemetry::Telemetry;

/// Runs services in the current process until SIGTERM or SIGINT.
pub struct ServiceLauncher {
    args: CommonArgs,
    config: Config,
    telemetry: Telemetry,
    services: Vec<Arc<dyn Service>>,
}

struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
    usr2: Signal,
}

impl Signals {
    fn install() -> Result<Self> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
            usr2: signal(SignalKind::user_defined2())?,
        })
    }
}

/// What the launcher was woken by.
enum Wake {
    Stop(i32),
    Reload,
    Report,
    Ended(Result<()>),
}

impl ServiceLauncher {
    /// A launcher for `services`; `args` are kept so SIGHUP can reload the
    /// config from the same sources.
    pub fn new(
        args: CommonArgs,
        config: Config,
        telemetry: Telemetry,
        services: Vec<Arc<dyn Service>>,
    ) -> Self {
        ServiceLauncher {
            args,
            config,
            telemetry,
            services,
        }
    }

    /// Starts every service, serves until a stop signal, stops gracefully,
    /// and returns the exit code.
    pub async fn run(mut self) -> Result<i32> {
        // Installed before anything starts, so an early SIGTERM still takes
        // the graceful path instead of killing the process.
        let mut signals = Signals::install()?;
        for (started, service) in self.services.iter().enumerate() {
            if let Err(e) = service.start().await {
                // The error itself is reported once, by the caller.
                let timeout = self.config.graceful_shutdown_timeout;
                let _ = bounded(
                    timeout,
                    join_all(self.services[..started].iter().map(|s| s.stop())),
                )
                .await;
                return Err(e);
            }
        }

        let signo = loop {
            let ended = select_all(self.services.iter().map(|s| s.wait()));
            let wake = tokio::select! {
                _ = signals.term.recv() => Wake::Stop(libc_signo(SignalKind::terminate())),
                _ = signals.int.recv() => Wake::Stop(libc_signo(SignalKind::interrupt())),
                _ = signals.hup.recv() => Wake::Reload,
                _ = signals.usr2.recv() => Wake::Report,
                (result, _, _) = ended => Wake::Ended(result),
            };
            match wake {
                Wake::Stop(signo) => break signo,
                Wake::Reload => self.reload().await,
                Wake::Report => self.report(),
                Wake::Ended(result) => {
                    // A service died on its own: stop the others and fail.
                    let reason = match result {
                        Err(e) => e,
                        Ok(()) => Error::Io(std::io::Error::other("a service ended unexpectedly")),
                    };
                    tracing::error!(error = %reason, "service ended; stopping");
                    let timeout = self.config.graceful_shutdown_timeout;
                    let _ =
                        bounded(timeout, join_all(self.services.iter().map(|s| s.stop()))).await;
                    return Err(reason);
                }
            }
        };

        let timeout = self.config.graceful_shutdown_timeout;
        tracing::info!(signal = signo, timeout = ?timeout, "stopping gracefully");
        let services = self.services.clone();
        let stop = bounded(timeout, join_all(services.iter().map(|s| s.stop())));
        tokio::pin!(stop);
        loop {
            tokio::select! {
                results = &mut stop => {
                    let results = results.ok_or(Error::ShutdownTimeout(timeout))?;
                    let failed = results.into_iter().filter_map(|r| r.err()).inspect(|e| {
                        tracing::error!(error = %e, "graceful stop failed");
                    }).count();
                    return Ok(if failed == 0 { exit::OK } else { exit::SOFTWARE });
                }
                _ = signals.term.recv() => return Ok(second_signal(SignalKind::terminate())),
                _ = signals.int.recv() => return Ok(second_signal(SignalKind::interrupt())),
                _ = signals.hup.recv() => self.reload().await,
                _ = signals.usr2.recv() => self.report(),
            }
        }
    }

    /// SIGHUP: re-read the config from the same sources and apply what may
    /// change in place. A config that no longer loads is logged and the
    /// running one kept: a typo must not take a node down.
    async fn reload(&mut self) {
        let new = match Config::load(&self.args) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "config reload failed; keeping the running config");
                return;
            }
        };
        let (applied, ignored) = match self.config.apply_mutable(&new) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "config reload failed; keeping the running config");
                return;
            }
        };
        if !ignored.is_empty() {
            tracing::warn!(options = ?ignored, "changed options need a restart; keeping their running values");
        }
        if self.config.restart_method == RestartMethod::Reload {
            tracing::info!("restart_method = reload restarts worker processes; one process applies the mutable options in place");
        }
        if let Err(e) = self.telemetry.apply(&self.config) {
            tracing::error!(error = %e, "cannot apply the new log filter");
        }
        for service in &self.services {
            if let Err(e) = service.reset(&self.config).await {
                tracing::error!(service = %service.name(), error = %e, "reset failed");
            }
        }
        tracing::info!(changed = ?applied, log_level = %self.config.log_level.0, "config reloaded");
    }

    /// SIGUSR2: the state report of every service, to stderr.
    fn report(&self) {
        let report = serde_json::json!({
            "services": self.services.iter().map(|s| s.report()).collect::<Vec<_>>(),
        });
        match serde_json::to_string_pretty(&report) {
            Ok(text) => eprintln!("{text}"),
            Err(e) => tracing::error!(error = %e, "cannot render the report"),
        }
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

fn libc_signo(kind: SignalKind) -> i32 {
    kind.as_raw_value()
}

fn second_signal(kind: SignalKind) -> i32 {
    tracing::warn!(
        signal = kind.as_raw_value(),
        "second stop signal; exiting now"
    );
    exit::signal(kind.as_raw_value())
}
