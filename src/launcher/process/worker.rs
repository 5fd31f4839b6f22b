//! The worker side of the supervisor protocol, and systemd socket
//! activation, which uses the same convention.
//!
//! A supervisor starts a worker by re-executing its own binary with the same
//! arguments and:
//!
//! - `LISTEN_FDS=N`, `LISTEN_FDNAMES=grpc[:http]`: the shared listeners from
//!   fd 3 on (systemd's `SD_LISTEN_FDS_START`), named by their role;
//! - `SVCKIT_WORKER=<slot>`: this process is worker `slot` of a supervisor;
//! - `SVCKIT_SUPERVISOR_FD=3+N`: a socket to the supervisor. The worker writes
//!   [`READY`] when it serves, followed by what it advertises (a 4-byte big
//!   endian length, then the [`Advert`] as JSON; length 0 for none), which
//!   the supervisor registers for all its workers; then [`BEAT`] every half
//!   `worker_timeout`, from a task on its runtime, so that a worker whose
//!   runtime is blocked (or which is stopped) falls silent and is replaced.
//!   Past `max_requests` (and its jitter) it writes [`RECYCLE`] once, and
//!   the supervisor replaces it as in a reload.
//!   The supervisor writes [`STOP`] to stop it
//!   gracefully, and [`RESTARTS`] with a count whenever a worker had to be
//!   restarted. End-of-file means the supervisor died, and the worker exits
//!   (a backstop to `PR_SET_PDEATHSIG`).
//!
//! The stop request travels on the socket, not as SIGTERM, because systemd
//! (`KillMode=control-group`) and a terminal's Ctrl-C signal every process
//! of the group at once: a worker would take the supervisor's SIGTERM for a
//! second signal and cut its in-flight calls. A signal from outside still
//! stops a worker gracefully, and a repeated stop request does not count as
//! a second signal.
//!
//! Under systemd socket activation (`LISTEN_PID` = this process, no
//! `SVCKIT_WORKER`) a single-process node serves the inherited socket and
//! registers itself as usual.

use std::net::TcpListener;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::launcher::{Control, Controls};
use crate::servicegroup::Advert;
use crate::telemetry::metrics::WorkerFigures;

use crate::error::{exit, Error, Result};

/// The first inherited descriptor (systemd's `SD_LISTEN_FDS_START`).
pub(super) const LISTEN_FD: RawFd = 3;

/// Worker → supervisor: serving.
pub(super) const READY: u8 = b'R';
/// Worker → supervisor: still alive.
pub(super) const BEAT: u8 = b'H';
/// Worker → supervisor: served its `max_requests`; replace me.
pub(super) const RECYCLE: u8 = b'Q';
/// Supervisor → worker: stop gracefully.
pub(super) const STOP: u8 = b'T';
/// Supervisor → worker: the workers restarted so far, as 8 bytes (big
/// endian) after this one, for the worker's metrics.
pub(super) const RESTARTS: u8 = b'C';
/// Supervisor → worker: how many of those were killed for missing their
/// beats, as 8 bytes after this one.
pub(super) const TIMEOUTS: u8 = b'W';

pub(super) const ENV_WORKER: &str = "SVCKIT_WORKER";
pub(super) const ENV_SUPERVISOR_FD: &str = "SVCKIT_SUPERVISOR_FD";

/// What this process inherited.
pub(crate) struct Inherited {
    /// The shared gRPC listener, if one was handed down.
    pub(crate) listener: Option<TcpListener>,
    /// The shared HTTP listener, if one was handed down.
    pub(crate) http_listener: Option<TcpListener>,
    /// `Some(slot)` when this process is a supervised worker.
    pub(crate) worker: Option<u32>,
    supervisor: Option<OwnedFd>,
    /// Where a supervised worker counts its node's calls in flight, in
    /// memory its supervisor reads.
    pub(crate) in_flight: Option<&'static std::sync::atomic::AtomicI64>,
    /// What the supervisor this image replaced handed down (an upgrade in
    /// place).
    pub(crate) upgrade: Option<super::upgrade::Handover>,
}

impl Inherited {
    /// Reads the environment a supervisor (or systemd) set, takes the
    /// descriptors it names, and removes the variables so that processes
    /// this one starts do not inherit them. Call it once, before threads
    /// that read the environment start.
    pub(crate) fn take() -> Result<Self> {
        // A supervisor's upgrade in place hands its state down too.
        let upgrade = super::upgrade::take_env()?;
        let worker = match std::env::var(ENV_WORKER) {
            Ok(slot) => Some(slot.parse::<u32>().map_err(|_| {
                Error::usage(format!("{ENV_WORKER}={slot:?} is not a worker slot"))
            })?),
            Err(_) => None,
        };
        let for_us = match std::env::var("LISTEN_PID") {
            Ok(pid) => pid.parse::<u32>().ok() == Some(std::process::id()),
            // A supervisor cannot know the pid before exec; its workers
            // trust LISTEN_FDS without it.
            Err(_) => worker.is_some(),
        };
        let fds = std::env::var("LISTEN_FDS")
            .ok()
            .and_then(|n| n.parse::<RawFd>().ok())
            .filter(|_| for_us)
            .unwrap_or(0)
            .clamp(0, 64);
        // Unnamed descriptors are gRPC then HTTP, in that order.
        let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
        let mut names = names.split(':');
        let (mut listener, mut http_listener) = (None, None);
        for index in 0..fds {
            // SAFETY: LISTEN_FDS says fds 3.. were handed to this process to
            // own; each is taken exactly once, here.
            let fd = unsafe { OwnedFd::from_raw_fd(LISTEN_FD + index) };
            let socket = TcpListener::from(fd);
            socket.set_nonblocking(true)?;
            let name = names.next().filter(|n| !n.is_empty());
            match (name, index) {
                (Some("http"), _) | (None, 1) => http_listener = Some(socket),
                (Some("grpc"), _) | (None, 0) => listener = Some(socket),
                (Some(other), _) => {
                    tracing::warn!(
                        name = other,
                        "an inherited socket with an unknown name is closed"
                    )
                }
                (None, _) => {}
            }
        }
        let supervisor = match (worker, std::env::var(ENV_SUPERVISOR_FD)) {
            (Some(_), Ok(fd)) if fd.parse::<RawFd>().ok() == Some(LISTEN_FD + fds) => {
                // SAFETY: as above, for the supervisor socket after them.
                Some(unsafe { OwnedFd::from_raw_fd(LISTEN_FD + fds) })
            }
            _ => None,
        };
        let calls = LISTEN_FD + fds + 1;
        let in_flight = match std::env::var(super::calls::ENV_CALLS_FD) {
            Ok(fd) if supervisor.is_some() && fd.parse::<RawFd>().ok() == Some(calls) => {
                Some(super::calls::share(calls)?)
            }
            _ => None,
        };
        for var in [
            "LISTEN_FDS",
            "LISTEN_PID",
            "LISTEN_FDNAMES",
            ENV_WORKER,
            ENV_SUPERVISOR_FD,
            super::calls::ENV_CALLS_FD,
        ] {
            std::env::remove_var(var);
        }
        Ok(Inherited {
            listener,
            http_listener,
            worker,
            supervisor,
            in_flight,
            upgrade,
        })
    }

    /// Starts following the supervisor: its stop requests come out of the
    /// returned stream, and the process exits when it goes away. Also
    /// returns what tells it this worker serves, then beats every `beat`
    /// and asks to be replaced once it answered `recycle` requests; and
    /// what the supervisor tells of the workers it restarted.
    pub(crate) fn follow_supervisor(
        &mut self,
        beat: Option<Duration>,
        recycle: Option<Recycle>,
    ) -> Result<Option<(Ready, Controls, Arc<WorkerFigures>)>> {
        let Some(fd) = self.supervisor.take() else {
            return Ok(None);
        };
        let socket = std::os::unix::net::UnixStream::from(fd);
        socket.set_nonblocking(true)?;
        let socket = UnixStream::from_std(socket)?;
        let (mut reader, writer) = socket.into_split();
        let (tx, rx) = mpsc::unbounded_channel();
        let figures = Arc::new(WorkerFigures::default());
        let told = figures.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 64];
            let mut pending: Vec<u8> = Vec::new();
            loop {
                match reader.read(&mut buf).await {
                    Ok(n) if n > 0 => {
                        pending.extend_from_slice(&buf[..n]);
                        for request in requests(&mut pending) {
                            match request {
                                Request::Stop => {
                                    let _ = tx.send(Control::Stop { signal: None });
                                }
                                Request::Restarts(n) => told.set_restarts(n),
                                Request::Timeouts(n) => told.set_timeouts(n),
                            }
                        }
                    }
                    _ => break,
                }
            }
            tracing::error!("the supervisor is gone; exiting");
            crate::telemetry::sink::flush();
            std::process::exit(exit::FAILURE);
        });
        Ok(Some((
            Ready {
                writer,
                beat,
                recycle,
            },
            UnboundedReceiverStream::new(rx).boxed(),
            figures,
        )))
    }
}

/// A request of the supervisor.
#[derive(Debug, PartialEq)]
enum Request {
    Stop,
    Restarts(u64),
    Timeouts(u64),
}

/// Takes the whole requests off the front of `pending`; a count cut off by
/// the read stays for the next one.
fn requests(pending: &mut Vec<u8>) -> Vec<Request> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < pending.len() {
        match pending[at] {
            STOP => {
                out.push(Request::Stop);
                at += 1;
            }
            kind @ (RESTARTS | TIMEOUTS) => {
                let Some(count) = pending.get(at + 1..at + 9) else {
                    break;
                };
                let mut be = [0u8; 8];
                be.copy_from_slice(count);
                let count = u64::from_be_bytes(be);
                out.push(if kind == RESTARTS {
                    Request::Restarts(count)
                } else {
                    Request::Timeouts(count)
                });
                at += 9;
            }
            // Unknown bytes are skipped: an older worker ignores what a
            // newer supervisor adds.
            _ => at += 1,
        }
    }
    pending.drain(..at);
    out
}

/// Tells the supervisor this worker serves, then that it lives.
pub(crate) struct Ready {
    writer: tokio::net::unix::OwnedWriteHalf,
    beat: Option<Duration>,
    recycle: Option<Recycle>,
}

/// When a worker asks to be replaced (gunicorn's `max_requests`): once its
/// services answered `after` requests, as `served` counts them.
pub(crate) struct Recycle {
    pub(crate) after: u64,
    pub(crate) served: Box<dyn Fn() -> u64 + Send + Sync>,
}

/// How often a worker with `max_requests` looks at its count.
const RECYCLE_CHECK: Duration = Duration::from_millis(100);

/// The largest advert a supervisor reads.
pub(super) const MAX_ADVERT: usize = 1 << 20;

impl Ready {
    /// Writes the readiness byte and the advert; a supervisor that is gone
    /// is noticed by the reader, not here.
    pub(crate) fn send(self, advert: Option<&Advert>) {
        let Ready {
            mut writer,
            beat,
            mut recycle,
        } = self;
        let mut message = vec![READY, 0, 0, 0, 0];
        if let Some(advert) = advert {
            match serde_json::to_vec(advert) {
                Ok(json) if json.len() <= MAX_ADVERT => {
                    message[1..5].copy_from_slice(&(json.len() as u32).to_be_bytes());
                    message.extend_from_slice(&json);
                }
                Ok(_) => tracing::error!("the advert is too large for the supervisor"),
                Err(e) => tracing::error!(error = %e, "cannot encode the advert"),
            }
        }
        // On this runtime: a runtime that blocks stops beating. The
        // socket stays open: closing it is how the supervisor would see us
        // go.
        tokio::spawn(async move {
            if writer.write_all(&message).await.is_err() {
                return;
            }
            let mut next_beat = beat.map(|every| tokio::time::Instant::now() + every);
            loop {
                let next_check = recycle
                    .as_ref()
                    .map(|_| tokio::time::Instant::now() + RECYCLE_CHECK);
                let Some(wake) = next_beat.into_iter().chain(next_check).min() else {
                    std::future::pending::<()>().await;
                    return;
                };
                tokio::time::sleep_until(wake).await;
                let served = recycle.as_ref().map(|r| ((r.served)(), r.after));
                if let Some((served, _)) = served.filter(|(served, after)| served >= after) {
                    tracing::info!(
                        served,
                        "served max_requests; asking the supervisor for a replacement"
                    );
                    recycle = None;
                    if writer.write_all(&[RECYCLE]).await.is_err() {
                        return;
                    }
                }
                let now = tokio::time::Instant::now();
                if let (Some(at), Some(every)) = (next_beat, beat) {
                    if at <= now {
                        next_beat = Some(now + every);
                        if writer.write_all(&[BEAT]).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_read_whole_across_reads() {
        let mut pending = vec![STOP, RESTARTS, 0, 0, 0];
        assert_eq!(requests(&mut pending), [Request::Stop]);
        pending.extend_from_slice(&[0, 0, 0, 0, 3, b'x', STOP, TIMEOUTS, 0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(
            requests(&mut pending),
            [Request::Restarts(3), Request::Stop, Request::Timeouts(1)]
        );
        assert!(pending.is_empty());
    }
}
