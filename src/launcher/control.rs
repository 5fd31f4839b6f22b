//! What drives a launcher: [`Control`] requests, from signals or from the
//! caller (a test, an embedding program).

use futures::stream::{self, BoxStream, StreamExt};
use tokio::signal::unix::{signal, SignalKind};

use crate::error::Result;

/// A request to a running launcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
}

/// A stream of requests; it may end (no more requests will come).
pub type Controls = BoxStream<'static, Control>;

/// The process signals as controls: TERM and INT stop, HUP reloads, USR2
/// reports. Installed at once, so an early signal takes the graceful path
/// instead of killing the process.
pub fn signals() -> Result<Controls> {
    let kinds = [
        SignalKind::terminate(),
        SignalKind::interrupt(),
        SignalKind::hangup(),
        SignalKind::user_defined2(),
    ];
    let mut streams = Vec::with_capacity(kinds.len());
    for kind in kinds {
        let mut installed = signal(kind)?;
        let control = match kind.as_raw_value() {
            n if n == SignalKind::hangup().as_raw_value() => Control::Reload,
            n if n == SignalKind::user_defined2().as_raw_value() => Control::Report,
            n => Control::Stop { signal: Some(n) },
        };
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
