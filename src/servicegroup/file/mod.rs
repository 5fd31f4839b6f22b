//! The `file://` driver: the embedded default for one machine, no etcd.
//!
//! The role of tooz's `file` driver. Records and heartbeats are JSON files
//! under one directory (layout in the `store` module), written atomically so several
//! processes can share it. A member is up while its heartbeat is younger than
//! its service_down_time and it is not forced down. Watchers poll and diff.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use self::store::{Alive, Store};
use super::diff::check_identity;
use super::follow::{self, Follow, Step};
use super::lag::MembershipFigures;
use super::status::StatusCell;
use super::{
    rfc3339, AdminChange, Driver, Election, EventStream, Leadership, Member, Membership,
    MembershipStatus, Registration, RegistryOptions, LEAVE_TIMEOUT,
};
use crate::error::{Error, Result};

mod claim;
mod election;
mod store;

/// Watchers look at the directory at least this often.
const MAX_POLL: Duration = Duration::from_millis(250);
const MIN_POLL: Duration = Duration::from_millis(20);

/// A service group kept in a directory.
#[derive(Debug, Clone)]
pub struct FileDriver {
    store: Arc<Store>,
    /// Cap on the delay between a watcher's failed listings.
    backoff_max: Duration,
    /// Where a watcher's restart is counted.
    figures: MembershipFigures,
}

impl FileDriver {
    /// Opens (creating it if needed) the registry directory `path`. A
    /// directory that cannot be created or written is
    /// [`ErrorKind::Unavailable`](crate::ErrorKind::Unavailable).
    pub fn open(path: impl AsRef<std::path::Path>, options: &RegistryOptions) -> Result<Self> {
        Ok(Self {
            store: Arc::new(Store::open(path.as_ref(), options.timeout)?),
            backoff_max: options.backoff_max,
            figures: options.figures.clone().unwrap_or_default(),
        })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| Error::registry("file registry task failed", e))?
    }
}

/// How often to look again: four times per shortest heartbeat period.
fn poll_for(fastest: Option<Duration>) -> Duration {
    fastest.map_or(MAX_POLL, |f| (f / 4).clamp(MIN_POLL, MAX_POLL))
}

/// A watcher of the directory: there are no change notifications across
/// processes, so it lists and lets the view diff.
struct FileFollow {
    driver: FileDriver,
    topic: Option<String>,
    poll: Duration,
}

impl FileFollow {
    async fn listing(&mut self) -> Result<Vec<Member>> {
        let t = self.topic.clone();
        let (members, fastest) = self
            .driver
            .blocking(move |store| store.list(t.as_deref()))
            .await?;
        self.poll = poll_for(fastest);
        Ok(members)
    }
}

impl Follow for FileFollow {
    fn list(&mut self) -> BoxFuture<'_, Result<Vec<Member>>> {
        self.listing().boxed()
    }

    fn next(&mut self) -> BoxFuture<'_, Step> {
        async move {
            tokio::time::sleep(self.poll).await;
            match self.listing().await {
                Ok(members) => Step::Whole(members),
                Err(e) => Step::Reload {
                    why: format!("file registry unreadable: {e}"),
                    now: false,
                },
            }
        }
        .boxed()
    }
}

/// What one heartbeat found.
enum Beat {
    Kept,
    /// The liveness file or the record had been removed and was written again.
    Restored,
}

/// Refreshes the liveness file, restoring it (and the record) if someone
/// removed them, unless another live owner took the (topic, host) over.
fn heartbeat(store: &Store, reg: &Registration, alive: &Alive) -> Result<Beat> {
    let (topic, host) = (&reg.advert.topic, &reg.advert.host);
    let now = SystemTime::now();
    let existing = store.read_alive(topic, host);
    if let Some(other) = existing.as_ref() {
        if other.token != alive.token && other.is_fresh(now) {
            return Err(Error::duplicate(
                &format!("{topic}/{host}"),
                &format!("taken over by pid {}", other.pid),
            ));
        }
    }
    store.write_alive(topic, host, &alive.touched())?;
    let mut restored = existing.is_none();
    if store.read_record(topic, host)?.is_none() {
        let _lock = store.lock()?;
        if store.read_record(topic, host)?.is_none() {
            store.write_record(&reg.to_record(now))?;
            restored = true;
        }
    }
    Ok(if restored { Beat::Restored } else { Beat::Kept })
}

/// What a registration attempt found.
enum Claim {
    /// Registered.
    Done,
    /// Another owner's heartbeat is fresh: ask it before taking over.
    Held {
        holder: Alive,
        /// Its gRPC endpoint (from its liveness file, else the record).
        url: Option<String>,
    },
}

/// Registers under the lock, unless another owner's heartbeat is fresh;
/// `replace` is the token of an owner found dead, whose file may be
/// overwritten.
fn register(
    store: &Store,
    reg: &Registration,
    alive: &Alive,
    replace: Option<u64>,
) -> Result<Claim> {
    let (topic, host) = (&reg.advert.topic, &reg.advert.host);
    let _lock = store.lock()?;
    let now = SystemTime::now();
    let existing = store.read_record(topic, host);
    if let Some(other) = store.read_alive(topic, host) {
        if other.token != alive.token && other.is_fresh(now) && replace != Some(other.token) {
            let recorded = existing
                .ok()
                .flatten()
                .and_then(|r| r.advert.endpoints.grpc);
            let url = other.grpc.clone().or(recorded);
            return Ok(Claim::Held { holder: other, url });
        }
    }
    let record = match existing {
        Ok(Some(mut record)) => {
            reg.refresh_record(&mut record, now);
            record
        }
        Ok(None) => reg.to_record(now),
        Err(e) => {
            tracing::warn!(%topic, %host, error = %e, "replacing an unreadable service record");
            reg.to_record(now)
        }
    };
    store.write_record(&record)?;
    store.write_alive(topic, host, alive)?;
    Ok(Claim::Done)
}

struct FileMembership {
    store: Arc<Store>,
    reg: Registration,
    /// The record's `workers`, read by every heartbeat that restores it.
    workers: Arc<AtomicU32>,
    token: u64,
    status: Arc<StatusCell>,
    stop: watch::Sender<bool>,
    task: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl Membership for FileMembership {
    fn status(&self) -> MembershipStatus {
        self.status.snapshot()
    }

    fn leave(&self) -> BoxFuture<'_, Result<()>> {
        async move {
            let _ = self.stop.send(true);
            let task = crate::sync::lock(&self.task).take();
            let abort = task.as_ref().map(JoinHandle::abort_handle);
            let (store, reg, token) = (self.store.clone(), self.reg.clone(), self.token);
            let leaving = async {
                if let Some(task) = task {
                    // Waits for a heartbeat in progress, so it cannot write
                    // the liveness file again after it is removed below.
                    let _ = task.await;
                }
                self.status.left();
                tokio::task::spawn_blocking(move || {
                    let path = store.alive_path(&reg.advert.topic, &reg.advert.host);
                    if store
                        .read_alive(&reg.advert.topic, &reg.advert.host)
                        .is_some_and(|a| a.token == token)
                    {
                        store.remove(&path)?;
                    }
                    Ok(())
                })
                .await
                .map_err(|e| Error::registry("file registry task failed", e))?
            };
            match tokio::time::timeout(LEAVE_TIMEOUT, leaving).await {
                Ok(result) => result,
                Err(elapsed) => {
                    if let Some(abort) = abort {
                        abort.abort();
                    }
                    self.status.left();
                    Err(Error::unavailable(
                        format!(
                            "leaving {}/{}: the registry directory did not answer within \
                             {LEAVE_TIMEOUT:?}; the heartbeat goes stale by itself",
                            self.reg.advert.topic, self.reg.advert.host
                        ),
                        elapsed,
                    ))
                }
            }
        }
        .boxed()
    }

    fn set_workers(&self, workers: u32) -> BoxFuture<'_, Result<()>> {
        self.workers.store(workers, Ordering::SeqCst);
        let (store, t, h) = (
            self.store.clone(),
            self.reg.advert.topic.clone(),
            self.reg.advert.host.clone(),
        );
        async move {
            tokio::task::spawn_blocking(move || {
                let _lock = store.lock()?;
                let mut record = store
                    .read_record(&t, &h)?
                    .ok_or_else(|| Error::not_found(&t, &h))?;
                record.workers = workers;
                record.updated_at = rfc3339(SystemTime::now());
                store.write_record(&record)
            })
            .await
            .map_err(|e| Error::registry("file registry task failed", e))?
        }
        .boxed()
    }

    fn session(&self) -> Option<String> {
        Some(format!("file-token:{:x}", self.token))
    }
}

impl Drop for FileMembership {
    fn drop(&mut self) {
        // The heartbeat stops; the member turns down after service_down_time.
        let _ = self.stop.send(true);
    }
}

async fn heartbeat_loop(
    store: Arc<Store>,
    reg: Registration,
    workers: Arc<AtomicU32>,
    alive: Alive,
    status: Arc<StatusCell>,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticks = tokio::time::interval(reg.report_interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        let (s, mut r, a) = (store.clone(), reg.clone(), alive.clone());
        r.workers = workers.load(Ordering::SeqCst);
        let started = Instant::now();
        match tokio::task::spawn_blocking(move || heartbeat(&s, &r, &a)).await {
            Ok(Ok(Beat::Kept)) => status.beat(Some(started.elapsed())),
            Ok(Ok(Beat::Restored)) => status.reregistered(),
            Ok(Err(e)) => status.failed(&e),
            Err(e) => status.failed(&e),
        }
    }
}

impl Driver for FileDriver {
    fn campaign(&self, election: Election) -> BoxFuture<'_, Result<Arc<dyn Leadership>>> {
        async move {
            check_identity(&election.topic, &election.candidate)?;
            let path = self
                .store
                .elections_dir(&election.topic)
                .join(election::lock_name(&election));
            let leadership: Arc<dyn Leadership> = election::FileLeadership::new(path, &election)?;
            Ok(leadership)
        }
        .boxed()
    }

    fn join(&self, registration: Registration) -> BoxFuture<'_, Result<Box<dyn Membership>>> {
        async move {
            check_identity(&registration.advert.topic, &registration.advert.host)?;
            let down_time = registration.effective_down_time();
            // A resumed session keeps its liveness token: the liveness
            // file stays this node's.
            let resumed = registration.resume.as_deref().map(|resume| {
                let token = resume
                    .strip_prefix("file-token:")
                    .and_then(|t| u64::from_str_radix(t, 16).ok());
                if token.is_none() {
                    tracing::warn!(resume, "not a file registry session; joining afresh");
                }
                token
            });
            let token = resumed.flatten().unwrap_or_else(rand::random::<u64>);
            let alive = Alive::new(
                token,
                down_time,
                registration.report_interval,
                registration.advert.endpoints.grpc.clone(),
            );
            self.claim(&registration, &alive).await?;
            let name = format!("{}/{}", registration.advert.topic, registration.advert.host);
            let status = Arc::new(StatusCell::registered(name));
            let (stop, stopped) = watch::channel(false);
            let workers = Arc::new(AtomicU32::new(registration.workers));
            let task = tokio::spawn(heartbeat_loop(
                self.store.clone(),
                registration.clone(),
                workers.clone(),
                alive,
                status.clone(),
                stopped,
            ));
            Ok(Box::new(FileMembership {
                store: self.store.clone(),
                reg: registration,
                workers,
                token,
                status,
                stop,
                task: std::sync::Mutex::new(Some(task)),
            }) as Box<dyn Membership>)
        }
        .boxed()
    }

    fn get<'a>(&'a self, topic: &'a str, host: &'a str) -> BoxFuture<'a, Result<Option<Member>>> {
        let (t, h) = (topic.to_string(), host.to_string());
        async move {
            check_identity(&t, &h)?;
            self.blocking(move |store| store.get(&t, &h)).await
        }
        .boxed()
    }

    fn list<'a>(&'a self, topic: Option<&'a str>) -> BoxFuture<'a, Result<Vec<Member>>> {
        let topic = topic.map(str::to_string);
        async move {
            let (members, _) = self
                .blocking(move |store| store.list(topic.as_deref()))
                .await?;
            Ok(members)
        }
        .boxed()
    }

    fn watch<'a>(&'a self, topic: Option<&'a str>) -> BoxFuture<'a, Result<EventStream>> {
        let topic = topic.map(str::to_string);
        async move {
            let t = topic.clone();
            let (first, fastest) = self.blocking(move |store| store.list(t.as_deref())).await?;
            let name = topic.clone().unwrap_or_else(|| "*".into());
            let follower = FileFollow {
                driver: self.clone(),
                topic,
                poll: poll_for(fastest),
            };
            Ok(follow::spawn(
                name,
                first,
                follower,
                self.backoff_max,
                self.figures.clone(),
            ))
        }
        .boxed()
    }

    fn set_admin<'a>(
        &'a self,
        topic: &'a str,
        host: &'a str,
        change: AdminChange,
    ) -> BoxFuture<'a, Result<Member>> {
        let (t, h) = (topic.to_string(), host.to_string());
        async move {
            check_identity(&t, &h)?;
            self.blocking(move |store| {
                let _lock = store.lock()?;
                let mut record = store
                    .read_record(&t, &h)?
                    .ok_or_else(|| Error::not_found(&t, &h))?;
                change.apply(&mut record, SystemTime::now());
                store.write_record(&record)?;
                store.get(&t, &h)?.ok_or_else(|| Error::not_found(&t, &h))
            })
            .await
        }
        .boxed()
    }

    fn delete<'a>(&'a self, topic: &'a str, host: &'a str) -> BoxFuture<'a, Result<bool>> {
        let (t, h) = (topic.to_string(), host.to_string());
        async move {
            check_identity(&t, &h)?;
            self.blocking(move |store| {
                let _lock = store.lock()?;
                let existed = store.remove(&store.record_path(&t, &h))?;
                store.remove(&store.alive_path(&t, &h))?;
                Ok(existed)
            })
            .await
        }
        .boxed()
    }

    fn backoff_max(&self) -> Duration {
        self.backoff_max
    }
}
