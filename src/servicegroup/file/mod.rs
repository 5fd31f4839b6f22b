//! The `file://` driver: the embedded default for one machine, no etcd.
//!
//! The role of tooz's `file` driver. Records and heartbeats are JSON files
//! under one directory (layout in [`store`]), written atomically so several
//! processes can share it. A member is up while its heartbeat is younger than
//! its service_down_time and it is not forced down. Watchers poll and diff.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;

use self::store::{Alive, Store};
use super::diff::{check_identity, View};
use super::status::StatusCell;
use super::{
    AdminChange, Driver, Election, EventStream, Leadership, Member, Membership, MembershipStatus,
    Registration, RegistryOptions,
};
use crate::error::{Error, Result};

mod election;
mod store;

/// Watchers look at the directory at least this often.
const MAX_POLL: Duration = Duration::from_millis(250);
const MIN_POLL: Duration = Duration::from_millis(20);

/// A service group kept in a directory.
#[derive(Debug, Clone)]
pub struct FileDriver {
    store: Arc<Store>,
}

impl FileDriver {
    /// Opens (creating it if needed) the registry directory `path`. A
    /// directory that cannot be created or written is
    /// [`Error::Unavailable`].
    pub fn open(path: impl AsRef<std::path::Path>, _options: &RegistryOptions) -> Result<Self> {
        Ok(Self {
            store: Arc::new(Store::open(path.as_ref())?),
        })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| Error::Registry(format!("file registry task failed: {e}")))?
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
    let (topic, host) = (&reg.topic, &reg.host);
    let now = SystemTime::now();
    let existing = store.read_alive(topic, host);
    if let Some(other) = existing.as_ref() {
        if other.token != alive.token && other.is_fresh(now) {
            return Err(Error::Duplicate(format!(
                "{topic}/{host} was taken over by pid {}",
                other.pid
            )));
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

/// Registers under the lock: refused while another owner's heartbeat is fresh.
fn register(store: &Store, reg: &Registration, alive: &Alive) -> Result<()> {
    let (topic, host) = (&reg.topic, &reg.host);
    let _lock = store.lock()?;
    let now = SystemTime::now();
    if let Some(other) = store.read_alive(topic, host) {
        if other.token != alive.token && other.is_fresh(now) {
            return Err(Error::Duplicate(format!(
                "{topic}/{host} is held by pid {} (last heartbeat {:.1}s ago)",
                other.pid,
                other.age(now).as_secs_f64()
            )));
        }
    }
    let record = match store.read_record(topic, host) {
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
    store.write_alive(topic, host, alive)
}

struct FileMembership {
    store: Arc<Store>,
    reg: Registration,
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
            let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(task) = task {
                // Waits for a heartbeat in progress, so it cannot write the
                // liveness file again after it is removed below.
                let _ = task.await;
            }
            self.status.left();
            let (store, reg, token) = (self.store.clone(), self.reg.clone(), self.token);
            tokio::task::spawn_blocking(move || {
                let path = store.alive_path(&reg.topic, &reg.host);
                if store
                    .read_alive(&reg.topic, &reg.host)
                    .is_some_and(|a| a.token == token)
                {
                    store.remove(&path)?;
                }
                Ok(())
            })
            .await
            .map_err(|e| Error::Registry(format!("file registry task failed: {e}")))?
        }
        .boxed()
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
        let (s, r, a) = (store.clone(), reg.clone(), alive.clone());
        match tokio::task::spawn_blocking(move || heartbeat(&s, &r, &a)).await {
            Ok(Ok(Beat::Kept)) => status.beat(),
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
            check_identity(&registration.topic, &registration.host)?;
            let down_time = registration.effective_down_time();
            let token = rand::random::<u64>();
            let alive = Alive::new(token, down_time, registration.report_interval);
            let (reg, a) = (registration.clone(), alive.clone());
            self.blocking(move |store| register(store, &reg, &a))
                .await?;
            let name = format!("{}/{}", registration.topic, registration.host);
            let status = Arc::new(StatusCell::registered(name));
            let (stop, stopped) = watch::channel(false);
            let task = tokio::spawn(heartbeat_loop(
                self.store.clone(),
                registration.clone(),
                alive,
                status.clone(),
                stopped,
            ));
            Ok(Box::new(FileMembership {
                store: self.store.clone(),
                reg: registration,
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
            let first = self.blocking(move |store| store.list(t.as_deref())).await?;
            let (tx, rx) = mpsc::channel(1024);
            let driver = self.clone();
            tokio::spawn(async move {
                let mut view = View::default();
                let mut snapshot = Ok(first);
                let mut failing = false;
                loop {
                    let mut poll = MAX_POLL;
                    match snapshot {
                        Ok((members, fastest)) => {
                            failing = false;
                            if let Some(f) = fastest {
                                poll = (f / 4).clamp(MIN_POLL, MAX_POLL);
                            }
                            for event in view.resync(members) {
                                if tx.send(Ok(event)).await.is_err() {
                                    return;
                                }
                            }
                        }
                        Err(e) if !failing => {
                            failing = true;
                            tracing::warn!(error = %e, "file registry unreadable; still polling");
                        }
                        Err(_) => {}
                    }
                    tokio::select! {
                        () = tokio::time::sleep(poll) => {}
                        () = tx.closed() => return,
                    }
                    let t = topic.clone();
                    snapshot = driver.blocking(move |store| store.list(t.as_deref())).await;
                }
            });
            Ok(Box::pin(ReceiverStream::new(rx)) as EventStream)
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
                    .ok_or_else(|| Error::NotFound(format!("service {t}/{h}")))?;
                change.apply(&mut record, SystemTime::now());
                store.write_record(&record)?;
                store
                    .get(&t, &h)?
                    .ok_or_else(|| Error::NotFound(format!("service {t}/{h}")))
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
}
