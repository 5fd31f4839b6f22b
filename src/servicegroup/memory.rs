//! The `memory://` driver: one process's service group, for unit tests and
//! single-process tools.
//!
//! Drivers of the same name share one group (a process-wide table), so a
//! test can join with one handle and watch with another. Liveness is a flag
//! owned by the [`Membership`]; leaving or dropping it clears the flag.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::time::SystemTime;

use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::sync::broadcast;

use super::backoff::DEFAULT_BACKOFF_MAX;
use super::diff::{check_identity, key_of, Key};
use super::follow::{self, Follow, Step};
use super::lag::MembershipFigures;
use super::{
    rfc3339, AdminChange, Driver, Event, EventStream, Member, Membership, MembershipStatus,
    Registration, RegistrationState, ServiceRecord,
};
use crate::error::{Error, Result};

/// Groups by name, so that every `memory://name` in a process is one group.
static GROUPS: LazyLock<Mutex<HashMap<String, Arc<Group>>>> = LazyLock::new(Default::default);

/// Events buffered per watcher before it lags and has to resync.
const EVENT_BUFFER: usize = 1024;

/// A service group held in this process's memory.
#[derive(Clone)]
pub struct MemoryDriver {
    group: Arc<Group>,
    /// Where this handle's watchers count their restarts.
    figures: MembershipFigures,
}

struct Group {
    entries: Mutex<BTreeMap<Key, Entry>>,
    /// Sent while `entries` is locked, so a watcher that subscribes under the
    /// lock sees every change after its snapshot exactly once.
    events: broadcast::Sender<Event>,
    next_owner: AtomicU64,
    /// The group's elections, for periodic tasks of topic scope.
    elections: Arc<super::LocalElections>,
}

struct Entry {
    record: ServiceRecord,
    /// The membership holding the liveness flag, if any.
    owner: Option<u64>,
}

impl Entry {
    fn member(&self) -> Member {
        Member {
            record: Arc::new(self.record.clone()),
            up: self.owner.is_some() && !self.record.forced_down,
        }
    }
}

impl MemoryDriver {
    /// The group called `name` in this process (created on first use).
    pub fn named(name: &str) -> Self {
        let mut groups = crate::sync::lock(&GROUPS);
        let group = groups
            .entry(name.to_string())
            .or_insert_with(|| {
                Arc::new(Group {
                    entries: Mutex::new(BTreeMap::new()),
                    events: broadcast::channel(EVENT_BUFFER).0,
                    next_owner: AtomicU64::new(1),
                    elections: super::LocalElections::new(),
                })
            })
            .clone();
        Self {
            group,
            figures: MembershipFigures::default(),
        }
    }

    /// The same, its watchers' restarts counted in `figures` (a node's).
    pub(crate) fn with_figures(mut self, figures: Option<MembershipFigures>) -> Self {
        self.figures = figures.unwrap_or_default();
        self
    }
}

impl Group {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<Key, Entry>> {
        crate::sync::lock(&self.entries)
    }

    /// Applies `change` to one entry under the lock and broadcasts the event.
    fn update<T>(
        &self,
        key: &Key,
        change: impl FnOnce(&mut BTreeMap<Key, Entry>) -> Result<T>,
    ) -> Result<T> {
        let mut entries = self.lock();
        let before = entries.get(key).map(Entry::member);
        let out = change(&mut entries)?;
        let after = entries.get(key).map(Entry::member);
        if let Some(event) = Event::between(before.as_ref(), after.as_ref()) {
            // No receivers is fine: nobody is watching.
            let _ = self.events.send(event);
        }
        Ok(out)
    }

    fn snapshot(entries: &BTreeMap<Key, Entry>, topic: Option<&str>) -> Vec<Member> {
        entries
            .iter()
            .filter(|((t, _), _)| topic.is_none_or(|topic| topic == t))
            .map(|(_, e)| e.member())
            .collect()
    }

    fn release(&self, key: &Key, owner: u64) {
        let _ = self.update(key, |entries| {
            if let Some(entry) = entries.get_mut(key).filter(|e| e.owner == Some(owner)) {
                entry.owner = None;
            }
            Ok(())
        });
    }
}

/// A watcher of one group: the broadcast says which member changed, the
/// table says what it is now.
struct MemoryFollow {
    group: Arc<Group>,
    topic: Option<String>,
    events: broadcast::Receiver<Event>,
}

impl MemoryFollow {
    /// Subscribes again and lists, under one lock, so that every change after
    /// the listing is received exactly once.
    fn resubscribe(&mut self) -> Vec<Member> {
        let entries = self.group.lock();
        self.events = self.group.events.subscribe();
        Group::snapshot(&entries, self.topic.as_deref())
    }
}

impl Follow for MemoryFollow {
    fn list(&mut self) -> BoxFuture<'_, Result<Vec<Member>>> {
        futures::future::ready(Ok(self.resubscribe())).boxed()
    }

    fn next(&mut self) -> BoxFuture<'_, Step> {
        async move {
            loop {
                match self.events.recv().await {
                    Ok(event) => {
                        let m = event.member();
                        if self
                            .topic
                            .as_deref()
                            .is_some_and(|t| t != m.record.advert.topic)
                        {
                            continue;
                        }
                        let key = key_of(m);
                        // The table, not the event: replaying the current
                        // state keeps the view exact when changes raced.
                        let now = self.group.lock().get(&key).map(Entry::member);
                        return Step::Changes(vec![(key, now)]);
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        return Step::Reload {
                            why: format!("the watcher fell {missed} events behind"),
                            now: true,
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        return Step::Reload {
                            why: "the group's event channel closed".into(),
                            now: false,
                        }
                    }
                }
            }
        }
        .boxed()
    }
}

struct MemoryMembership {
    group: Arc<Group>,
    key: Key,
    owner: u64,
    left: AtomicBool,
}

impl Membership for MemoryMembership {
    fn status(&self) -> MembershipStatus {
        let left = self.left.load(Ordering::SeqCst);
        MembershipStatus {
            state: if left {
                RegistrationState::Left
            } else {
                RegistrationState::Registered
            },
            last_heartbeat: (!left).then(|| rfc3339(SystemTime::now())),
            reregistrations: 0,
            failures: 0,
            heartbeat_latency: None,
        }
    }

    fn leave(&self) -> BoxFuture<'_, Result<()>> {
        self.left.store(true, Ordering::SeqCst);
        self.group.release(&self.key, self.owner);
        futures::future::ready(Ok(())).boxed()
    }

    fn set_workers(&self, workers: u32) -> BoxFuture<'_, Result<()>> {
        let result = self.group.update(&self.key, |entries| {
            let entry = entries
                .get_mut(&self.key)
                .ok_or_else(|| Error::not_found(&self.key.0, &self.key.1))?;
            entry.record.workers = workers;
            entry.record.updated_at = rfc3339(SystemTime::now());
            Ok(())
        });
        futures::future::ready(result).boxed()
    }
}

impl Drop for MemoryMembership {
    fn drop(&mut self) {
        self.group.release(&self.key, self.owner);
    }
}

impl Driver for MemoryDriver {
    fn campaign(
        &self,
        election: super::Election,
    ) -> BoxFuture<'_, Result<Arc<dyn super::Leadership>>> {
        let leadership: Arc<dyn super::Leadership> = self.group.elections.campaign(&election);
        async move { Ok(leadership) }.boxed()
    }

    fn join(&self, registration: Registration) -> BoxFuture<'_, Result<Box<dyn Membership>>> {
        async move {
            check_identity(&registration.advert.topic, &registration.advert.host)?;
            registration.effective_down_time();
            let key = (
                registration.advert.topic.clone(),
                registration.advert.host.clone(),
            );
            let owner = self.group.next_owner.fetch_add(1, Ordering::Relaxed);
            self.group.update(&key, |entries| {
                let now = SystemTime::now();
                match entries.get_mut(&key) {
                    Some(Entry { owner: Some(_), .. }) => Err(Error::duplicate(
                        &format!("{}/{}", key.0, key.1),
                        "another membership of this process",
                    )),
                    Some(entry) => {
                        registration.refresh_record(&mut entry.record, now);
                        entry.owner = Some(owner);
                        Ok(())
                    }
                    None => {
                        let record = registration.to_record(now);
                        entries.insert(
                            key.clone(),
                            Entry {
                                record,
                                owner: Some(owner),
                            },
                        );
                        Ok(())
                    }
                }
            })?;
            Ok(Box::new(MemoryMembership {
                group: self.group.clone(),
                key,
                owner,
                left: AtomicBool::new(false),
            }) as Box<dyn Membership>)
        }
        .boxed()
    }

    fn get<'a>(&'a self, topic: &'a str, host: &'a str) -> BoxFuture<'a, Result<Option<Member>>> {
        let key = (topic.to_string(), host.to_string());
        let member = self.group.lock().get(&key).map(Entry::member);
        futures::future::ready(Ok(member)).boxed()
    }

    fn list<'a>(&'a self, topic: Option<&'a str>) -> BoxFuture<'a, Result<Vec<Member>>> {
        let members = Group::snapshot(&self.group.lock(), topic);
        futures::future::ready(Ok(members)).boxed()
    }

    fn watch<'a>(&'a self, topic: Option<&'a str>) -> BoxFuture<'a, Result<EventStream>> {
        let mut follower = MemoryFollow {
            group: self.group.clone(),
            topic: topic.map(str::to_string),
            events: self.group.events.subscribe(),
        };
        let first = follower.resubscribe();
        let name = follower.topic.clone().unwrap_or_else(|| "*".into());
        let figures = self.figures.clone();
        let stream = follow::spawn(name, first, follower, DEFAULT_BACKOFF_MAX, figures);
        futures::future::ready(Ok(stream)).boxed()
    }

    fn set_admin<'a>(
        &'a self,
        topic: &'a str,
        host: &'a str,
        change: AdminChange,
    ) -> BoxFuture<'a, Result<Member>> {
        let key = (topic.to_string(), host.to_string());
        let result = self.group.update(&key, |entries| {
            let entry = entries
                .get_mut(&key)
                .ok_or_else(|| Error::not_found(topic, host))?;
            change.apply(&mut entry.record, SystemTime::now());
            Ok(entry.member())
        });
        futures::future::ready(result).boxed()
    }

    fn delete<'a>(&'a self, topic: &'a str, host: &'a str) -> BoxFuture<'a, Result<bool>> {
        let key = (topic.to_string(), host.to_string());
        let result = self
            .group
            .update(&key, |entries| Ok(entries.remove(&key).is_some()));
        futures::future::ready(result).boxed()
    }
}
