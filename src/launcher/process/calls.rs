//! A worker's calls in flight, in a page of memory it shares with its
//! supervisor. A worker whose runtime is blocked, or which is stopped, can
//! say nothing; the supervisor that kills it for missing its beats reads
//! here how many calls were inside it, and logs them.
//!
//! The supervisor makes the page (`memfd_create`), maps it and hands the
//! descriptor down after the supervisor socket; the worker maps it and
//! counts its node's calls there (the calls of its API: not health checks,
//! reflection or the base service), as the node's own totals do.

use std::num::NonZeroUsize;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicI64, Ordering};

use nix::sys::memfd::{memfd_create, MFdFlags};
use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};

use crate::error::Result;

/// The worker's environment variable naming the descriptor.
pub(super) const ENV_CALLS_FD: &str = "SVCKIT_CALLS_FD";

const LEN: NonZeroUsize = NonZeroUsize::new(std::mem::size_of::<AtomicI64>()).unwrap();

/// A mapping of the shared count.
pub(super) struct CallCount {
    page: NonNull<std::ffi::c_void>,
}

// SAFETY: the mapping is only read and written through an atomic.
unsafe impl Send for CallCount {}
// SAFETY: as above.
unsafe impl Sync for CallCount {}

impl CallCount {
    /// A new count at 0, and the descriptor to hand to the worker.
    pub(super) fn new() -> Result<(CallCount, OwnedFd)> {
        let fd =
            memfd_create(c"svckit-calls", MFdFlags::MFD_CLOEXEC).map_err(std::io::Error::from)?;
        nix::unistd::ftruncate(&fd, LEN.get() as i64).map_err(std::io::Error::from)?;
        let count = Self::map(&fd)?;
        Ok((count, fd))
    }

    fn map(fd: &OwnedFd) -> Result<CallCount> {
        // SAFETY: a fresh shared mapping of a descriptor at least LEN long,
        // page-aligned, so an AtomicI64 at its start is aligned; it is
        // unmapped only on drop, after the last read.
        let page = unsafe {
            mmap(
                None,
                LEN,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                fd,
                0,
            )
        }
        .map_err(std::io::Error::from)?;
        Ok(CallCount { page })
    }

    fn atomic(&self) -> &AtomicI64 {
        // SAFETY: see `map`: aligned, sized and alive as long as self.
        unsafe { self.page.cast::<AtomicI64>().as_ref() }
    }

    /// The calls in flight in the worker now.
    pub(super) fn get(&self) -> i64 {
        self.atomic().load(Ordering::Relaxed).max(0)
    }
}

impl Drop for CallCount {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once.
        let _ = unsafe { munmap(self.page, LEN.get()) };
    }
}

/// In a worker: the counter of the page whose descriptor the supervisor
/// handed down, where the node counts its calls in flight for as long as
/// the process runs.
pub(super) fn share(fd: RawFd) -> Result<&'static AtomicI64> {
    // SAFETY: the supervisor handed this descriptor to this process to own
    // (named by ENV_CALLS_FD); it is taken once, here.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let count = CallCount::map(&fd)?;
    // The process counts into it until it exits.
    let count: &'static CallCount = Box::leak(Box::new(count));
    Ok(count.atomic())
}
