//! Starting one worker: re-execute this binary with the listener and the
//! supervisor socket at fixed descriptors (see [`super::worker`]).

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream as StdUnixStream;

use tokio::net::UnixStream;
use tokio::process::{Child, Command};

use super::worker::{ENV_SUPERVISOR_FD, ENV_WORKER, LISTEN_FD, SUPERVISOR_FD};
use crate::error::Result;

/// A started worker process and the supervisor's end of its socket.
pub(super) struct Spawned {
    pub(super) child: Child,
    /// Read by the watcher task: the readiness byte.
    pub(super) socket: UnixStream,
    /// A second handle on the same socket, for the supervisor's requests.
    pub(super) requests: StdUnixStream,
}

/// Starts worker `slot` serving `listener`.
pub(super) fn spawn(slot: u32, listener: RawFd) -> Result<Spawned> {
    let (ours, theirs) = StdUnixStream::pair()?;
    let exe = std::env::current_exe()?;
    let mut command = Command::new(exe);
    command
        .args(std::env::args_os().skip(1))
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", "grpc")
        .env_remove("LISTEN_PID")
        // Only the supervisor speaks to systemd.
        .env_remove("NOTIFY_SOCKET")
        .env(ENV_WORKER, slot.to_string())
        .env(ENV_SUPERVISOR_FD, SUPERVISOR_FD.to_string())
        .stdin(std::process::Stdio::null());
    let theirs_fd = theirs.as_raw_fd();
    let supervisor = std::process::id();
    // SAFETY: only async-signal-safe calls (fcntl, dup2, close, prctl,
    // getppid, _exit) run between fork and exec.
    unsafe {
        command.pre_exec(move || place_fds(listener, theirs_fd, supervisor));
    }
    let child = command.spawn()?;
    drop(theirs);
    ours.set_nonblocking(true)?;
    let requests = ours.try_clone()?;
    Ok(Spawned {
        child,
        socket: UnixStream::from_std(ours)?,
        requests,
    })
}

/// In the child: move the two descriptors to 3 and 4 (clearing
/// close-on-exec), and die with the supervisor.
fn place_fds(listener: RawFd, socket: RawFd, supervisor: u32) -> std::io::Result<()> {
    let check = |r: libc::c_int| {
        if r < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(r)
        }
    };
    // SAFETY: plain syscalls on descriptors this process owns.
    unsafe {
        // Copies above 4 first, so neither dup2 clobbers the other source.
        let l = check(libc::fcntl(listener, libc::F_DUPFD_CLOEXEC, 10))?;
        let s = check(libc::fcntl(socket, libc::F_DUPFD_CLOEXEC, 10))?;
        check(libc::dup2(l, LISTEN_FD))?;
        check(libc::dup2(s, SUPERVISOR_FD))?;
        libc::close(l);
        libc::close(s);
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
