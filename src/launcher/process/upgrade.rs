//! The supervisor's upgrade in place. When a reload finds the supervisor's
//! binary replaced on disk (a package upgrade), the supervisor first
//! replaces its workers with the new file, one at a time, as in any
//! reload. Only once every new worker serves, proof that the new file runs
//! this node, does it re-execute the new file in place: the same pid, so
//! systemd's main pid and the workers' parent stay. It hands down, through
//! `SVCKIT_UPGRADE` and descriptors left open across the exec:
//!
//! - the listening sockets, which never close;
//! - each worker's pid, slot and socket: the new image adopts them;
//! - its registration (the etcd lease, the file registry's token), which
//!   the new image carries on, so watchers see no leave;
//! - its restart counters, advert and start time.
//!
//! The signals the launcher handles are blocked across the exec, and
//! unblocked once the new image handles them: a SIGTERM or SIGHUP sent
//! meanwhile waits instead of killing the supervisor. A new file whose
//! worker does not serve never gets this far: the reload stops and the old
//! supervisor and workers go on serving.

use std::ffi::{CString, OsString};
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow, Signal};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::servicegroup::Advert;

/// The environment variable the new image reads its [`Handover`] from.
pub(crate) const ENV_UPGRADE: &str = "SVCKIT_UPGRADE";

/// What a supervisor hands down to its upgraded image.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Handover {
    /// The listening sockets, by role (`grpc`, `http`).
    pub(super) listeners: Vec<(String, RawFd)>,
    pub(super) workers: Vec<Adopted>,
    /// The registration's [`Membership::session`](crate::servicegroup::Membership::session),
    /// which the upgraded image's first join resumes.
    pub(super) registration: Option<String>,
    pub(super) restarts: u64,
    pub(super) timeouts: u64,
    pub(super) advert: Option<Advert>,
    /// When the supervisor process started, in ms since the epoch.
    pub(super) started_at_ms: u64,
}

/// A worker the new image adopts.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Adopted {
    pub(super) slot: u32,
    pub(super) pid: i32,
    /// The supervisor's end of its socket.
    pub(super) fd: RawFd,
    /// Asked to stop already: its exit is not restarted.
    pub(super) retiring: bool,
    /// How long it has run, in ms.
    pub(super) age_ms: u64,
}

impl Handover {
    fn fds(&self) -> impl Iterator<Item = RawFd> + '_ {
        self.listeners
            .iter()
            .map(|(_, fd)| *fd)
            .chain(self.workers.iter().map(|w| w.fd))
    }
}

/// Reads and removes `SVCKIT_UPGRADE`: what the supervisor this image
/// replaced handed down, if it did. Called once, before threads start.
pub(crate) fn take_env() -> Result<Option<Handover>> {
    let Some(text) = std::env::var_os(ENV_UPGRADE) else {
        return Ok(None);
    };
    std::env::remove_var(ENV_UPGRADE);
    let handover: Handover = serde_json::from_slice(text.as_bytes())
        .map_err(|e| Error::usage(format!("{ENV_UPGRADE} is unreadable: {e}")))?;
    // Back to close-on-exec: the next exec hands down only what it names.
    for fd in handover.fds() {
        set_cloexec(fd, true)?;
    }
    Ok(Some(handover))
}

/// The signals held across the exec: those the launcher handles.
fn held() -> SigSet {
    let mut set = SigSet::empty();
    for signal in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGUSR2,
        Signal::SIGTTIN,
        Signal::SIGTTOU,
    ] {
        set.add(signal);
    }
    set
}

/// In an upgraded image, once its signal handlers are installed: lets the
/// signals held across the exec (and any sent meanwhile) through.
pub(crate) fn signals_handled() {
    let _ = pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&held()), None);
}

/// Re-executes `binary` in place with `args`, handing `handover` down.
/// Returns only when the exec failed, with everything as it was.
pub(super) fn exec(binary: &Path, args: &[OsString], handover: &Handover) -> Error {
    // The workers die with the thread that started them (PDEATHSIG), and
    // an exec ends every thread but the caller's: the supervisor starts
    // them, and execs, on the process's main thread only.
    if nix::unistd::gettid() != nix::unistd::getpid() {
        return Error::usage("the supervisor does not run on its process's main thread");
    }
    let json = match serde_json::to_string(handover) {
        Ok(json) => json,
        Err(e) => return Error::usage(format!("cannot write the handover: {e}")),
    };
    let cstring = |bytes: &[u8]| CString::new(bytes).map_err(|e| Error::usage(e.to_string()));
    let built = (|| -> Result<(CString, Vec<CString>, Vec<CString>)> {
        let path = cstring(binary.as_os_str().as_bytes())?;
        let argv = args
            .iter()
            .map(|a| cstring(a.as_bytes()))
            .collect::<Result<Vec<_>>>()?;
        let mut envp = Vec::new();
        for (key, value) in std::env::vars_os() {
            if key != ENV_UPGRADE {
                let mut pair = key.as_bytes().to_vec();
                pair.push(b'=');
                pair.extend_from_slice(value.as_bytes());
                envp.push(cstring(&pair)?);
            }
        }
        envp.push(cstring(format!("{ENV_UPGRADE}={json}").as_bytes())?);
        Ok((path, argv, envp))
    })();
    let (path, argv, envp) = match built {
        Ok(built) => built,
        Err(e) => return e,
    };
    for fd in handover.fds() {
        if let Err(e) = set_cloexec(fd, false) {
            restore(handover);
            return e;
        }
    }
    let mut before = SigSet::empty();
    if let Err(e) = pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&held()), Some(&mut before)) {
        restore(handover);
        return Error::from(std::io::Error::from(e));
    }
    crate::telemetry::sink::flush();
    // Only returns on failure.
    let Err(errno) = nix::unistd::execve(&path, &argv, &envp);
    let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&before), None);
    restore(handover);
    Error::from(std::io::Error::from(errno))
}

/// After a failed exec: the descriptors close on exec again.
fn restore(handover: &Handover) {
    for fd in handover.fds() {
        let _ = set_cloexec(fd, true);
    }
}

fn set_cloexec(fd: RawFd, on: bool) -> Result<()> {
    let flags = if on { libc::FD_CLOEXEC } else { 0 };
    // SAFETY: F_SETFD on a descriptor this process owns changes only its
    // close-on-exec flag.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, flags) } < 0 {
        return Err(Error::from(std::io::Error::last_os_error()));
    }
    Ok(())
}
