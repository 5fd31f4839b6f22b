//! The file workers are started from. The supervisor resolves the path of
//! its own binary once, at start, and starts each worker from that path,
//! so that after a package upgrade replaced the file, a reload (or any new
//! worker) runs the new binary, not the deleted one `/proc/self/exe` still
//! names. Each change of the file is logged with its size and mtime.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// What tells one version of the file from the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Identity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
}

impl Identity {
    fn of(path: &Path) -> Option<Self> {
        let meta = std::fs::metadata(path).ok()?;
        Some(Identity {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: meta.mtime(),
        })
    }
}

/// The binary of the workers: a path, and the version of it last used.
#[derive(Debug)]
pub(super) struct Binary {
    path: PathBuf,
    last: Option<Identity>,
}

/// What the running binary is, as `/proc/self/exe`.
pub(super) const SELF_EXE: &str = "/proc/self/exe";

impl Binary {
    /// `path`, with `/proc/self/exe` resolved to the file it names when
    /// that file is still there.
    pub(super) fn resolve(path: &Path) -> Self {
        let resolved = if path == Path::new(SELF_EXE) {
            match std::fs::read_link(SELF_EXE) {
                // The kernel marks a file removed since it was run.
                Ok(target) if !target.to_string_lossy().ends_with(" (deleted)") => target,
                _ => path.to_path_buf(),
            }
        } else {
            path.to_path_buf()
        };
        let last = Identity::of(&resolved);
        Binary {
            path: resolved,
            last,
        }
    }

    /// The resolved path.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the file at the path is another one than when resolved (or
    /// last started); a missing file is no change.
    pub(super) fn changed(&self) -> bool {
        Identity::of(&self.path).is_some_and(|now| self.last != Some(now))
    }

    /// The file to start the next worker from: the path, noting a change
    /// of the file there; the running binary while nothing is there (an
    /// upgrade half done).
    pub(super) fn for_next_worker(&mut self) -> PathBuf {
        let Some(now) = Identity::of(&self.path) else {
            tracing::warn!(
                path = %self.path.display(),
                "the binary is gone from its path; starting the running one"
            );
            return PathBuf::from(SELF_EXE);
        };
        if self.last != Some(now) {
            tracing::info!(
                path = %self.path.display(),
                size = now.size,
                mtime = now.mtime,
                "the binary changed; new workers run the new file"
            );
            self.last = Some(now);
        }
        self.path.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_file_is_noticed_and_a_missing_one_falls_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node");
        std::fs::write(&path, b"v1").expect("write");
        let mut binary = Binary::resolve(&path);
        let first = binary.last;
        assert_eq!(binary.for_next_worker(), path);
        // A package manager writes the new file aside, then renames it.
        let new = dir.path().join("node.new");
        std::fs::write(&new, b"version 2").expect("write");
        std::fs::rename(&new, &path).expect("rename");
        assert_eq!(binary.for_next_worker(), path);
        assert_ne!(binary.last, first);
        std::fs::remove_file(&path).expect("remove");
        assert_eq!(binary.for_next_worker(), PathBuf::from(SELF_EXE));
        // The running binary resolves to a real file.
        assert_ne!(
            Binary::resolve(Path::new(SELF_EXE)).path,
            Path::new(SELF_EXE)
        );
    }
}
