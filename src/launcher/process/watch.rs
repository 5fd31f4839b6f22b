//! A worker's watcher: what its socket to the supervisor says (serving,
//! its beats, a request to be replaced) and its exit, as [`Event`]s.

use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use super::worker::{MAX_ADVERT, READY, RECYCLE};
use crate::servicegroup::Advert;

/// What a worker's watcher task reports.
pub(super) enum Event {
    /// The worker serves, and advertises this.
    Ready(u64, Option<Advert>),
    /// The worker sent no beat for `worker_timeout`.
    Hung(u64),
    /// The worker served its `max_requests`.
    Recycle(u64),
    Exited(u64, std::process::ExitStatus),
}

/// A worker's exit, as the supervisor learns it.
pub(super) type Exit = BoxFuture<'static, std::io::Result<std::process::ExitStatus>>;

/// Watches worker `id` until it `exit`s. With a `timeout`, a worker that
/// does not serve, or once serving sends nothing, for that long is
/// reported hung. An adopted worker (an upgrade) is `serving` already.
pub(super) async fn watch(
    id: u64,
    exit: Exit,
    mut socket: tokio::net::UnixStream,
    timeout: Option<Duration>,
    serving: bool,
    events: mpsc::UnboundedSender<Event>,
) {
    let mut child = exit.fuse();
    let exited = |status: std::io::Result<std::process::ExitStatus>| {
        if let Ok(status) = status {
            let _ = events.send(Event::Exited(id, status));
        }
        // The socket closes when this task ends, after the worker
        // is gone.
    };
    // A worker has worker_timeout to serve, as gunicorn's boot.
    let silence = timeout.unwrap_or(Duration::MAX);
    if !serving {
        tokio::select! {
            ready = tokio::time::timeout(silence, read_ready(&mut socket)) => match ready {
                Ok(Some(advert)) => {
                    let _ = events.send(Event::Ready(id, advert));
                }
                // Closed or out of turn: wait for its exit.
                Ok(None) => return exited((&mut child).await),
                Err(_) => {
                    let _ = events.send(Event::Hung(id));
                    return exited((&mut child).await);
                }
            },
            status = &mut child => return exited(status),
        }
    }
    // Serving: a worker beats every half timeout, and may ask to be
    // replaced; any message is a sign of life.
    let mut message = [0u8; 64];
    loop {
        tokio::select! {
            heard = tokio::time::timeout(silence, socket.read(&mut message)) => match heard {
                Ok(Ok(n)) if n > 0 => {
                    if message[..n].contains(&RECYCLE) {
                        let _ = events.send(Event::Recycle(id));
                    }
                }
                // Closed: its exit follows.
                Ok(_) => return exited((&mut child).await),
                Err(_) => {
                    let _ = events.send(Event::Hung(id));
                    return exited((&mut child).await);
                }
            },
            status = &mut child => return exited(status),
        }
    }
}

/// Reads a worker's readiness and advert; `None` when it closed or spoke
/// out of turn before serving.
async fn read_ready(socket: &mut tokio::net::UnixStream) -> Option<Option<Advert>> {
    let mut head = [0u8; 5];
    socket.read_exact(&mut head).await.ok()?;
    if head[0] != READY {
        return None;
    }
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len == 0 {
        return Some(None);
    }
    if len > MAX_ADVERT {
        tracing::error!(len, "a worker's advert is too large; ignored");
        return Some(None);
    }
    let mut json = vec![0u8; len];
    socket.read_exact(&mut json).await.ok()?;
    match serde_json::from_slice(&json) {
        Ok(advert) => Some(Some(advert)),
        Err(e) => {
            tracing::error!(error = %e, "a worker's advert is unreadable; ignored");
            Some(None)
        }
    }
}

/// The exit of an adopted worker: a child of this process that it did not
/// start (the image before an upgrade did), so not a tokio [`Child`]. Its
/// pidfd turns readable when it exits; then it is reaped.
///
/// [`Child`]: tokio::process::Child
pub(super) fn adopted_exit(pid: i32) -> Exit {
    async move {
        // SAFETY: pidfd_open takes a pid and flags and returns a new
        // descriptor, owned below.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if let Ok(fd) = std::os::fd::RawFd::try_from(fd) {
            if fd >= 0 {
                // SAFETY: a descriptor just returned to this process.
                let fd =
                    unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
                // SAFETY: the AsyncFd owns the descriptor, open until it
                // is dropped.
                if let Ok(fd) = unsafe { tokio::io::unix::AsyncFd::register(fd) } {
                    let _ = fd.readable().await;
                }
            }
        }
        // Without a pidfd (an old kernel), or once it fired: wait for it.
        tokio::task::spawn_blocking(move || {
            let mut status = 0;
            // SAFETY: waits for one child of this process.
            let reaped = unsafe { libc::waitpid(pid, &mut status, 0) };
            if reaped < 0 {
                let error = std::io::Error::last_os_error();
                // Reaped already, by the image before the exec, after it
                // wrote the handover: it is gone all the same.
                if error.raw_os_error() == Some(libc::ECHILD) {
                    return Ok(std::os::unix::process::ExitStatusExt::from_raw(0));
                }
                return Err(error);
            }
            Ok(std::os::unix::process::ExitStatusExt::from_raw(status))
        })
        .await
        .map_err(std::io::Error::other)?
    }
    .boxed()
}
