//! PEM files that are read again when they change: certificates, keys and
//! CAs are rotated by replacing the files, with no restart.
//!
//! A file's stamp (modification time, length, inode) is checked on every
//! use, which is one `stat` per file per handshake. A new version that does
//! not parse (a key written before its certificate, a half-copied file)
//! leaves the last good one in use, with a warning; the next change of the
//! files is tried again.

use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;

use crate::error::{Error, Result};

/// What identifies one version of a file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamps(paths: &[PathBuf]) -> Option<Vec<Stamp>> {
    paths
        .iter()
        .map(|p| {
            std::fs::metadata(p).ok().map(|m| Stamp {
                modified: m.modified().ok(),
                len: m.len(),
                inode: m.ino(),
            })
        })
        .collect()
}

type Loader<T> = Box<dyn Fn() -> Result<T> + Send + Sync>;

/// A value built from files, built again when one of them changes.
pub(crate) struct Reloading<T> {
    /// For log lines: which option's files these are.
    what: &'static str,
    paths: Vec<PathBuf>,
    load: Loader<T>,
    current: Mutex<(Option<Vec<Stamp>>, Arc<T>)>,
}

impl<T> fmt::Debug for Reloading<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reloading")
            .field("what", &self.what)
            .field("paths", &self.paths)
            .finish_non_exhaustive()
    }
}

impl<T> Reloading<T> {
    /// Loads the value once; a failure here is the caller's (a refused
    /// start), later failures only keep the old value.
    pub(crate) fn new(
        what: &'static str,
        paths: Vec<PathBuf>,
        load: impl Fn() -> Result<T> + Send + Sync + 'static,
    ) -> Result<Self> {
        let stamp = stamps(&paths);
        let value = load()?;
        Ok(Self {
            what,
            paths,
            load: Box::new(load),
            current: Mutex::new((stamp, Arc::new(value))),
        })
    }

    /// The value for the files as they are now.
    pub(crate) fn get(&self) -> Arc<T> {
        let now = stamps(&self.paths);
        let mut current = crate::sync::lock(&self.current);
        // A file missing for a moment (replaced by delete + create) keeps
        // the old value until it is back.
        if now.is_none() || now == current.0 {
            return current.1.clone();
        }
        match (self.load)() {
            Ok(value) => {
                tracing::info!(what = self.what, "TLS files changed; new version in use");
                *current = (now, Arc::new(value));
            }
            Err(e) => {
                tracing::warn!(what = self.what, error = %e, "TLS files changed but cannot be used; keeping the previous version");
                current.0 = now;
            }
        }
        current.1.clone()
    }
}

fn read(option: &str, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| Error::config_from(format!("cannot read {option} {}", path.display()), e))
}

/// Every certificate in a PEM file, at least one.
pub(crate) fn certificates(option: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = read(option, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| {
            Error::config(format!(
                "{option} {} is not a PEM certificate file: {e}",
                path.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(Error::config(format!(
            "{option} {} holds no PEM certificate",
            path.display()
        )));
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub(crate) fn private_key(option: &str, path: &Path) -> Result<PrivateKeyDer<'static>> {
    let pem = read(option, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        Error::config(format!(
            "{option} {} holds no usable PEM private key: {e}",
            path.display()
        ))
    })
}

/// The CA certificates of a PEM file, as trust roots.
pub(crate) fn roots(option: &str, path: &Path) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(option, path)? {
        roots.add(cert).map_err(|e| {
            Error::config(format!(
                "{option} {} holds a certificate that cannot be a CA: {e}",
                path.display()
            ))
        })?;
    }
    Ok(roots)
}
