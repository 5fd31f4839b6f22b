//! Starting one worker: re-execute this binary with the listener and the
//! supervisor socket at fixed descriptors (see [`super::worker`]).

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream as StdUnixStream;

use tokio::net::UnixStream;
use tokio::process::{Child, Command};

use super::calls::{CallCount, ENV_CALLS_FD};
use super::pool::Program;
use super::worker::{ENV_SUPERVISOR_FD, ENV_WORKER, LISTEN_FD};
use crate::error::Result;

/// A started worker process and the supervisor's end of its socket.
pub(super) struct Spawned {
    pub(super) child: Child,
    /// Read by the watcher task: the readiness byte.
    pub(super) socket: UnixStream,
    /// A second handle on the same socket, for the supervisor's requests.
    pub(super) requests: StdUnixStream,
    /// The worker's calls in flight, as it counts them.
    pub(super) calls: CallCount,
}

/// The most listeners handed to a worker (gRPC, HTTP).
const MAX_LISTENERS: usize = 2;

/// Starts worker `slot` of `program` serving `listeners`, named by role
/// (`grpc`, `http`).
pub(super) fn spawn(program: &Program, slot: u32, listeners: &[(&str, RawFd)]) -> Result<Spawned> {
    let count = listeners.len().min(MAX_LISTENERS);
    let mut fds = [-1; MAX_LISTENERS];
    for (fd, (_, listener)) in fds.iter_mut().zip(listeners) {
        *fd = *listener;
    }
    let names: Vec<&str> = listeners.iter().take(count).map(|(n, _)| *n).collect();
    let supervisor_fd = LISTEN_FD + count as RawFd;
    let (ours, theirs) = StdUnixStream::pair()?;
    let (calls, calls_fd) = CallCount::new()?;
    // The path of the supervisor's binary (see `super::binary`): after an
    // upgrade replaced the file, new workers run the new one.
    let mut command = Command::new(&program.path);
    let mut args = program.args.iter();
    if let Some(arg0) = args.next() {
        // Names in logs and the binary name in the record stay the same.
        command.arg0(arg0);
    }
    command
        .args(args)
        .env("LISTEN_FDS", count.to_string())
        .env("LISTEN_FDNAMES", names.join(":"))
        .env_remove("LISTEN_PID")
        // Only the supervisor speaks to systemd.
        .env_remove("NOTIFY_SOCKET")
        .env(ENV_WORKER, slot.to_string())
        .env(ENV_SUPERVISOR_FD, supervisor_fd.to_string())
        .env(ENV_CALLS_FD, (supervisor_fd + 1).to_string())
        .stdin(std::process::Stdio::null());
    let theirs_fd = theirs.as_raw_fd();
    let shared_fd = calls_fd.as_raw_fd();
    let supervisor = std::process::id();
    // SAFETY: only async-signal-safe calls (fcntl, dup2, close, prctl,
    // getppid, _exit) run between fork and exec.
    unsafe {
        command.pre_exec(move || place_fds(&fds[..count], [theirs_fd, shared_fd], supervisor));
    }
    let child = command.spawn()?;
    drop(theirs);
    drop(calls_fd);
    ours.set_nonblocking(true)?;
    let requests = ours.try_clone()?;
    Ok(Spawned {
        child,
        socket: UnixStream::from_std(ours)?,
        requests,
        calls,
    })
}

/// In the child: move the listeners to 3, 4… and the socket and the call
/// count right after them (clearing close-on-exec), and die with the
/// supervisor.
fn place_fds(listeners: &[RawFd], after: [RawFd; 2], supervisor: u32) -> std::io::Result<()> {
    let check = |r: libc::c_int| {
        if r < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(r)
        }
    };
    // SAFETY: plain syscalls on descriptors this process owns; no
    // allocation between fork and exec.
    unsafe {
        // Copies above the targets first, so no dup2 clobbers a source.
        let mut copies = [-1; MAX_LISTENERS + 2];
        for (copy, fd) in copies.iter_mut().zip(listeners.iter().chain(&after)) {
            *copy = check(libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 10))?;
        }
        for (target, copy) in (LISTEN_FD..).zip(&copies[..listeners.len() + after.len()]) {
            check(libc::dup2(*copy, target))?;
            libc::close(*copy);
        }
        check(libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
        ))?;
        // The supervisor may have died before the prctl took effect.
        if libc::getppid() as u32 != supervisor {
            libc::_exit(1);
        }
    }
    Ok(())
}
