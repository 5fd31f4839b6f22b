//! Leader election for the `file://` driver: an exclusive `flock` on
//! `{dir}/elections/{topic}/{name}.lock`. The kernel drops the lock when its
//! holder exits, even on `kill -9`, so another process of the machine takes
//! the election at its next look.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use nix::fcntl::{Flock, FlockArg};

use crate::error::Result;
use crate::servicegroup::{Election, Leadership};

/// A candidacy: leader while it holds the lock file's lock.
pub(super) struct FileLeadership {
    path: PathBuf,
    candidate: String,
    /// `None` once resigned: a resigned candidate never locks again.
    held: Mutex<Option<Option<Flock<File>>>>,
}

impl FileLeadership {
    /// A candidacy on the lock file at `path` (its directory is created).
    pub(super) fn new(path: PathBuf, election: &Election) -> Result<Arc<Self>> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        Ok(Arc::new(FileLeadership {
            path,
            candidate: election.candidate.clone(),
            held: Mutex::new(Some(None)),
        }))
    }

    /// Takes the lock if it is free; `None` when another process holds it.
    fn try_lock(&self) -> Option<Flock<File>> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.path)
            .map_err(|e| tracing::warn!(path = %self.path.display(), error = %e, "cannot open the election lock file"))
            .ok()?;
        let mut lock = Flock::lock(file, FlockArg::LockExclusiveNonblock).ok()?;
        // Who leads, for operators: best effort.
        let _ = lock.set_len(0);
        let _ = writeln!(*lock, "{} {}", self.candidate, std::process::id());
        tracing::info!(election = %self.path.display(), candidate = %self.candidate, "elected leader");
        Some(lock)
    }
}

impl Leadership for FileLeadership {
    fn is_leader(&self) -> bool {
        let mut held = crate::sync::lock(&self.held);
        match &mut *held {
            None => false,
            Some(lock) => {
                if lock.is_none() {
                    *lock = self.try_lock();
                }
                lock.is_some()
            }
        }
    }

    fn resign(&self) -> BoxFuture<'_, ()> {
        // Dropping the lock unlocks it.
        crate::sync::lock(&self.held).take();
        Box::pin(async {})
    }
}

/// The lock file's name for an election (task names may hold anything).
pub(super) fn lock_name(election: &Election) -> String {
    let safe: String = election
        .name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{safe}.lock")
}
