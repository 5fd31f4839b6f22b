//! The pool's side of an upgrade in place (see [`super::super::upgrade`]):
//! what it hands down, and adopting what was handed down.

use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::time::{Duration, Instant};

use super::super::upgrade::Adopted;
use super::super::watch::adopted_exit;
use super::{Pool, State, Worker};
use crate::error::Result;
use crate::servicegroup::Advert;

impl Pool {
    /// Whether the pool may be handed down: no replacement under way, no
    /// worker starting or due to start, and the last replacement done.
    pub(in super::super) fn settled(&self) -> bool {
        self.rolling.is_none()
            && self.respawns.is_empty()
            && self.workers.values().all(|w| w.state != State::Starting)
    }

    /// Whether the last rolling replacement stopped at a replacement that
    /// failed to serve.
    pub(in super::super) fn roll_failed(&self) -> bool {
        self.roll_failed
    }

    /// The arguments every worker (and the supervisor) runs with.
    pub(in super::super) fn args(&self) -> &[std::ffi::OsString] {
        &self.program.args
    }

    /// The listeners, by role, as handed down.
    pub(in super::super) fn listener_fds(&self) -> Vec<(String, RawFd)> {
        self.listeners
            .iter()
            .map(|(name, l)| ((*name).to_string(), l.as_raw_fd()))
            .collect()
    }

    /// The workers, as handed down.
    pub(in super::super) fn handover(&self) -> Vec<Adopted> {
        self.workers
            .values()
            .map(|w| Adopted {
                slot: w.slot,
                pid: w.pid,
                fd: w.requests.as_raw_fd(),
                retiring: w.state == State::Retiring,
                age_ms: u64::try_from(w.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            })
            .collect()
    }

    /// Adopts the workers the image before an upgrade started, with its
    /// counters and advert.
    pub(in super::super) fn adopt(
        &mut self,
        workers: Vec<Adopted>,
        restarts: u64,
        timeouts: u64,
        advert: Option<Advert>,
    ) -> Result<()> {
        (self.restarts, self.timeouts, self.advert) = (restarts, timeouts, advert);
        for adopted in workers {
            // SAFETY: the handover names this descriptor as the socket of
            // one worker, handed to this image to own; taken once, here.
            let socket = unsafe { StdUnixStream::from_raw_fd(adopted.fd) };
            socket.set_nonblocking(true)?;
            let requests = socket.try_clone()?;
            let socket = tokio::net::UnixStream::from_std(socket)?;
            let id = self.next_id;
            self.next_id += 1;
            let started = Instant::now()
                .checked_sub(Duration::from_millis(adopted.age_ms))
                .unwrap_or_else(Instant::now);
            let state = if adopted.retiring {
                State::Retiring
            } else {
                State::Ready
            };
            tracing::info!(
                slot = adopted.slot,
                pid = adopted.pid,
                retiring = adopted.retiring,
                "worker adopted"
            );
            self.workers.insert(
                id,
                Worker {
                    slot: adopted.slot,
                    pid: adopted.pid,
                    started,
                    state,
                    hung: false,
                    requests,
                    calls: None,
                },
            );
            self.watch(id, adopted_exit(adopted.pid), socket, true);
        }
        Ok(())
    }
}

/// The listeners handed down, by role.
pub(in super::super) fn listeners(
    fds: &[(String, RawFd)],
) -> Result<Vec<(&'static str, TcpListener)>> {
    fds.iter()
        .map(|(name, fd)| {
            let role = if name == "http" { "http" } else { "grpc" };
            // SAFETY: the handover names this descriptor as a listening
            // socket handed to this image to own; taken once, here.
            let listener = unsafe { TcpListener::from_raw_fd(*fd) };
            Ok((role, listener))
        })
        .collect()
}
