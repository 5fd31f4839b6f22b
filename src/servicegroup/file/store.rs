//! The on-disk layout of the file registry, and atomic reads and writes of it.
//!
//! ```text
//! {dir}/services/{topic}/{host}.json   the ServiceRecord (docs/membership.md)
//! {dir}/alive/{topic}/{host}.json      the heartbeat: time, owner, down time
//! {dir}/.lock                          flock taken by read-modify-writes
//! ```
//!
//! Every write goes to a temporary file in the same directory and is renamed
//! into place, so readers in other processes see the old or the new content,
//! never half of it. The heartbeat only ever writes the liveness file, which
//! is why an operator's change to the record cannot be lost to it.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::fcntl::{Flock, FlockArg};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::servicegroup::{rfc3339, Member, ServiceRecord};

/// The content of a liveness file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Alive {
    /// Last heartbeat, milliseconds since the Unix epoch (what is compared).
    pub heartbeat_ms: u64,
    /// The same time in RFC 3339, for people reading the file.
    pub heartbeat: String,
    pub pid: u32,
    /// Identifies the membership that owns the file, across processes.
    pub token: u64,
    /// The owner's effective service_down_time: older heartbeats mean down.
    pub down_time_ms: u64,
    /// The owner's heartbeat period; watchers poll faster than this.
    pub report_interval_ms: u64,
    /// The owner's gRPC endpoint: where a node joining with the same
    /// identity asks whether the owner is still alive.
    #[serde(default)]
    pub grpc: Option<String>,
}

impl Alive {
    pub(super) fn new(
        token: u64,
        down_time: Duration,
        report_interval: Duration,
        grpc: Option<String>,
    ) -> Self {
        let now = SystemTime::now();
        Self {
            heartbeat_ms: unix_ms(now),
            heartbeat: rfc3339(now),
            pid: std::process::id(),
            token,
            down_time_ms: millis(down_time),
            report_interval_ms: millis(report_interval),
            grpc,
        }
    }

    /// The same liveness with a heartbeat taken now.
    pub(super) fn touched(&self) -> Self {
        let now = SystemTime::now();
        Self {
            heartbeat_ms: unix_ms(now),
            heartbeat: rfc3339(now),
            ..self.clone()
        }
    }

    /// A heartbeat from the future (clock steps) counts as fresh.
    pub(super) fn is_fresh(&self, now: SystemTime) -> bool {
        unix_ms(now).saturating_sub(self.heartbeat_ms) < self.down_time_ms
    }

    pub(super) fn age(&self, now: SystemTime) -> Duration {
        Duration::from_millis(unix_ms(now).saturating_sub(self.heartbeat_ms))
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    millis(t.duration_since(UNIX_EPOCH).unwrap_or_default())
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The registry directory.
#[derive(Debug, Clone)]
pub(super) struct Store {
    dir: PathBuf,
    /// How long to wait for the lock before giving up (`registry_timeout`):
    /// a process stopped while holding it must not hang every other one.
    lock_timeout: Duration,
    /// Unreadable records already warned about: a watcher lists the
    /// directory on every poll, and one bad file must not log every time.
    warned: Arc<Mutex<BTreeSet<(String, String)>>>,
}

impl Store {
    /// Creates the layout and proves the directory is writable.
    pub(super) fn open(dir: &Path, lock_timeout: Duration) -> Result<Self> {
        let store = Self {
            dir: dir.to_path_buf(),
            lock_timeout,
            warned: Arc::default(),
        };
        let probe = || -> io::Result<()> {
            fs::create_dir_all(dir.join("services"))?;
            fs::create_dir_all(dir.join("alive"))?;
            let probe = dir.join(format!(".probe.{}", std::process::id()));
            write_atomic(&probe, b"{}")?;
            fs::remove_file(probe)
        };
        probe().map_err(|e| {
            Error::unavailable(
                format!(
                    "file registry {}: the directory is not creatable or not writable",
                    dir.display()
                ),
                e,
            )
        })?;
        Ok(store)
    }

    pub(super) fn record_path(&self, topic: &str, host: &str) -> PathBuf {
        self.dir
            .join("services")
            .join(topic)
            .join(format!("{host}.json"))
    }

    /// Where the lock files of a topic's elections live.
    pub(super) fn elections_dir(&self, topic: &str) -> PathBuf {
        self.dir.join("elections").join(topic)
    }

    pub(super) fn alive_path(&self, topic: &str, host: &str) -> PathBuf {
        self.dir
            .join("alive")
            .join(topic)
            .join(format!("{host}.json"))
    }

    /// Serialises read-modify-writes of records across processes; released
    /// on drop. Waits at most `lock_timeout` for another holder (a process
    /// stopped with SIGSTOP, or stuck, keeps it forever), then fails with
    /// [`ErrorKind::Unavailable`](crate::ErrorKind::Unavailable) naming the lock file.
    pub(super) fn lock(&self) -> Result<Flock<File>> {
        let path = self.dir.join(".lock");
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        let deadline = std::time::Instant::now() + self.lock_timeout;
        let mut pause = Duration::from_millis(1);
        loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => return Ok(lock),
                Err((back, nix::errno::Errno::EWOULDBLOCK)) => {
                    if std::time::Instant::now() >= deadline {
                        return Err(Error::unavailable(
                            format!(
                                "file registry lock {} is held by another process for over {:?}",
                                path.display(),
                                self.lock_timeout
                            ),
                            io::Error::from(nix::errno::Errno::EWOULDBLOCK),
                        ));
                    }
                    file = back;
                    // Called on blocking threads only: sleeping here is fine.
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(20));
                }
                Err((_, errno)) => return Err(Error::from(io::Error::from(errno))),
            }
        }
    }

    pub(super) fn read_record(&self, topic: &str, host: &str) -> Result<Option<ServiceRecord>> {
        match fs::read(self.record_path(topic, host)) {
            Ok(bytes) => ServiceRecord::decode(&bytes, topic, host).map(Some),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub(super) fn write_record(&self, record: &ServiceRecord) -> Result<()> {
        write_json(
            &self.record_path(&record.advert.topic, &record.advert.host),
            record,
        )
    }

    /// The liveness file; an unreadable one counts as absent (it is rewritten
    /// by its owner within one report interval).
    pub(super) fn read_alive(&self, topic: &str, host: &str) -> Option<Alive> {
        read_json(&self.alive_path(topic, host)).ok().flatten()
    }

    pub(super) fn write_alive(&self, topic: &str, host: &str, alive: &Alive) -> Result<()> {
        write_json(&self.alive_path(topic, host), alive)
    }

    pub(super) fn remove(&self, path: &Path) -> Result<bool> {
        match fs::remove_file(path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    fn member(&self, record: ServiceRecord, now: SystemTime) -> Member {
        let alive = self
            .read_alive(&record.advert.topic, &record.advert.host)
            .is_some_and(|a| a.is_fresh(now));
        let up = alive && !record.forced_down;
        Member {
            record: Arc::new(record),
            up,
        }
    }

    pub(super) fn get(&self, topic: &str, host: &str) -> Result<Option<Member>> {
        let now = SystemTime::now();
        Ok(self
            .read_record(topic, host)?
            .map(|record| self.member(record, now)))
    }

    /// Members ordered by (topic, host), and the shortest report interval
    /// among their heartbeats (how often a watcher should look again).
    pub(super) fn list(&self, topic: Option<&str>) -> Result<(Vec<Member>, Option<Duration>)> {
        let now = SystemTime::now();
        let services = self.dir.join("services");
        let topics = match topic {
            Some(t) => vec![t.to_string()],
            None => names(&services, None)?,
        };
        let mut members = Vec::new();
        let mut fastest: Option<u64> = None;
        for topic in topics {
            let hosts = match names(&services.join(&topic), Some(".json")) {
                Ok(hosts) => hosts,
                // A file put by hand where a topic's directory belongs.
                Err(e) => {
                    tracing::warn!(%topic, error = %e, "skipping an unreadable topic directory");
                    continue;
                }
            };
            for host in hosts {
                let read = self.read_record(&topic, &host);
                let mut warned = crate::sync::lock(&self.warned);
                let record = match read {
                    Ok(Some(record)) => {
                        if !warned.is_empty() {
                            warned.remove(&(topic.clone(), host.clone()));
                        }
                        record
                    }
                    // Deleted between the directory read and now.
                    Ok(None) => continue,
                    Err(e) => {
                        if warned.insert((topic.clone(), host.clone())) {
                            tracing::warn!(%topic, %host, error = %e, "skipping unreadable service record");
                        } else {
                            tracing::debug!(%topic, %host, error = %e, "skipping unreadable service record");
                        }
                        continue;
                    }
                };
                drop(warned);
                if let Some(alive) = self.read_alive(&topic, &host) {
                    fastest = Some(fastest.map_or(alive.report_interval_ms, |f| {
                        f.min(alive.report_interval_ms)
                    }));
                }
                members.push(self.member(record, now));
            }
        }
        members.sort_by(|a, b| {
            (&a.record.advert.topic, &a.record.advert.host)
                .cmp(&(&b.record.advert.topic, &b.record.advert.host))
        });
        Ok((members, fastest.map(Duration::from_millis)))
    }
}

/// Entry names in `dir` (without `suffix` when given); temporary and hidden
/// files are skipped, a missing directory is empty.
fn names(dir: &Path, suffix: Option<&str>) -> Result<Vec<String>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    for entry in entries {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') {
            continue;
        }
        match suffix {
            Some(s) => {
                if let Some(stem) = name.strip_suffix(s) {
                    out.push(stem.to_string());
                }
            }
            None => out.push(name.to_string()),
        }
    }
    out.sort();
    Ok(out)
}

fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::registry(format!("{}: invalid JSON", path.display()), e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(value)
        .map_err(|e| Error::registry(format!("cannot encode {}", path.display()), e))?;
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)?;
    }
    Ok(write_atomic(path, &bytes)?)
}

/// Writes a temporary file beside `path` and renames it over `path`; a
/// failed write leaves no temporary file behind.
fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    // Hidden, so that directory listings never take it for a member.
    let mut tmp = tempfile::Builder::new().prefix(".tmp.").tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_data()?;
    tmp.persist(path).map(drop).map_err(|e| e.error)
}
