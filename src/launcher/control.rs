//! What drives a launcher: [`Control`] requests, from signals or from the
//! caller (a test, an embedding program).

use futures::stream::{self, BoxStream, StreamExt};
use tokio::signal::unix::{signal, SignalKind};

use crate::error::Result;

/// A request to a running launcher: the single-process one
/// ([`ServiceLauncher`](super::ServiceLauncher)) or a
/// [`Supervisor`](super::Supervisor).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Control {
    /// Stop gracefully. While stopping, a `Stop` with a signal ends the run
    /// at once with exit code 128 + the signal number, as shells expect; one
    /// without a signal (a supervisor asking again) changes nothing.
    Stop {
        /// The signal number (SIGTERM = 15, SIGINT = 2), if a signal asked.
        signal: Option<i32>,
    },
    /// Re-read the config and apply what may change in place (SIGHUP).
    Reload,
    /// Write the state report to stderr (SIGUSR2).
    Report,
    /// One worker process more (SIGTTIN); a single process has none to add.
    AddWorker,
    /// One worker process less, never below one (SIGTTOU).
    RemoveWorker,
}

/// A stream of requests; it may end (no more requests will come).
pub type Controls = BoxStream<'static, Control>;

/// The process signals as controls: TERM and INT stop, HUP reloads, USR2
/// reports, TTIN and TTOU add and remove a worker. Installed at once, so an
/// early signal takes the graceful path instead of killing the process.
pub fn signals() -> Result<Controls> {
    let kinds = [
        (
            libc::SIGTERM,
            Control::Stop {
                signal: Some(libc::SIGTERM),
            },
        ),
        (
            libc::SIGINT,
            Control::Stop {
                signal: Some(libc::SIGINT),
            },
        ),
        (libc::SIGHUP, Control::Reload),
        (libc::SIGUSR2, Control::Report),
        (libc::SIGTTIN, Control::AddWorker),
        (libc::SIGTTOU, Control::RemoveWorker),
    ];
    let mut streams = Vec::with_capacity(kinds.len());
    for (signo, control) in kinds {
        let mut installed = signal(SignalKind::from_raw(signo))?;
        streams.push(
            stream::poll_fn(move |cx| installed.poll_recv(cx))
                .map(move |()| control)
                .boxed(),
        );
    }
    Ok(stream::select_all(streams).boxed())
}

/// One `Stop` when `shutdown` resolves, then nothing more.
pub fn until<F>(shutdown: F) -> Controls
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    stream::once(async move {
        shutdown.await;
        Control::Stop { signal: None }
    })
    .chain(stream::pending())
    .boxed()
}
