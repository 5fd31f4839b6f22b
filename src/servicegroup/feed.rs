//! [`TopicFeeds`]: one shared membership subscription per topic.
//!
//! Every consumer of membership inside the kit (the RPC client's
//! discovery, the xDS control plane, the dashboard) subscribes here rather
//! than keeping a topic map and a follow loop of its own. A topic's feed
//! starts with its first subscriber: it opens the topic's watch, lists the
//! topic, and from then on applies the watch's events to its members; a
//! watch that fails or ends is opened again with backoff (counted as a
//! restart), and a burst of events is applied whole before the view is
//! made again. The feed retires `linger` after its last subscriber let go.
//!
//! What a subscriber receives is its own [`Project::View`] of the members,
//! made by the consumer's [`Project`] on the feed's task (connections for
//! the RPC client, resources for xDS).

use std::collections::{BTreeMap, HashMap};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use tokio::sync::watch;

use super::backoff::Backoff;
use super::diff::{key_of, Key};
use super::{Event, EventStream, Member, Registry};
use crate::error::Result;
use crate::sync::lock;

/// A topic's members, by (topic, host).
pub(crate) type Members = BTreeMap<Key, Arc<Member>>;

/// What one consumer makes of a topic's members.
pub(crate) trait Project: Send + 'static {
    /// What subscribers receive.
    type View: Default + Send + Sync + 'static;

    /// The view of `members`. `changes` are the events just applied, in
    /// order; `None` after a listing, when `members` replaced what was
    /// known.
    fn project<'a>(
        &'a mut self,
        members: &'a Members,
        changes: Option<&'a [Event]>,
    ) -> BoxFuture<'a, Self::View>;

    /// How often [`Project::tick`] runs, if ever.
    fn every(&self) -> Option<Duration> {
        None
    }

    /// A new view without a membership change (connections closed for
    /// idleness), or `None` when nothing changed.
    fn tick(&mut self, _members: &Members) -> Option<Self::View> {
        None
    }

    /// The feed is starting again after its watch ended or a projection
    /// panicked (logged already): where the consumer counts it.
    fn on_restart(&mut self) {}
}

/// The feeds of one registry for one kind of consumer. Cheap to clone.
pub(crate) struct TopicFeeds<P: Project> {
    inner: Arc<Inner<P>>,
}

impl<P: Project> Clone for TopicFeeds<P> {
    fn clone(&self) -> Self {
        TopicFeeds {
            inner: self.inner.clone(),
        }
    }
}

/// Where a feed publishes its views.
type Views<P> = watch::Sender<Arc<<P as Project>::View>>;

/// The projector of a new feed, for its topic (`None`: every topic).
type Make<P> = Box<dyn Fn(Option<&str>) -> P + Send + Sync>;

struct Inner<P: Project> {
    registry: Registry,
    linger: Duration,
    make: Make<P>,
    /// The live feeds. A feed's task removes its entry, under this lock,
    /// once it has had no subscriber for `linger`, so that a subscriber
    /// that comes meanwhile never joins a task that ended.
    topics: Mutex<HashMap<Option<String>, Views<P>>>,
    /// Bumped after every new view of any topic.
    changed: watch::Sender<u64>,
}

impl<P: Project> TopicFeeds<P> {
    /// Feeds of `registry` whose views `make` makes, each retired `linger`
    /// after its last subscriber.
    pub(crate) fn new(
        registry: Registry,
        linger: Duration,
        make: impl Fn(Option<&str>) -> P + Send + Sync + 'static,
    ) -> Self {
        TopicFeeds {
            inner: Arc::new(Inner {
                registry,
                linger,
                make: Box::new(make),
                topics: Mutex::new(HashMap::new()),
                changed: watch::channel(0).0,
            }),
        }
    }

    /// The views of `topic` (`None`: every topic), its feed started if none
    /// runs. Until the first listing the view is `P::View::default()`.
    pub(crate) fn subscribe(&self, topic: Option<&str>) -> watch::Receiver<Arc<P::View>> {
        let key = topic.map(str::to_string);
        let mut topics = lock(&self.inner.topics);
        if let Some(tx) = topics.get(&key) {
            return tx.subscribe();
        }
        let (tx, rx) = watch::channel(Arc::new(P::View::default()));
        topics.insert(key.clone(), tx.clone());
        tokio::spawn(run(self.inner.clone(), key, tx));
        rx
    }

    /// Bumped after every new view of any topic.
    pub(crate) fn changes(&self) -> watch::Receiver<u64> {
        self.inner.changed.subscribe()
    }

    /// The topics fed now (`None`: every topic).
    pub(crate) fn watched(&self) -> Vec<Option<String>> {
        lock(&self.inner.topics).keys().cloned().collect()
    }
}

/// Feeds `topic` until it is retired.
async fn run<P: Project>(
    inner: Arc<Inner<P>>,
    topic: Option<String>,
    tx: watch::Sender<Arc<P::View>>,
) {
    tokio::select! {
        () = unused(&inner, &topic, &tx) => {}
        () = keep_following(&inner, topic.as_deref(), &tx) => {}
    }
}

/// Resolves once the feed is retired: no subscriber for `linger`.
async fn unused<P: Project>(
    inner: &Inner<P>,
    topic: &Option<String>,
    tx: &watch::Sender<Arc<P::View>>,
) {
    loop {
        tx.closed().await;
        tokio::time::sleep(inner.linger).await;
        let mut topics = lock(&inner.topics);
        // The map's own sender is not a receiver: only subscribers count.
        if tx.receiver_count() == 0 {
            topics.remove(topic);
            return;
        }
    }
}

/// Lists and follows the topic for as long as the feed lives; a watch that
/// ends, or a projector that panics, is counted and started again.
async fn keep_following<P: Project>(
    inner: &Inner<P>,
    topic: Option<&str>,
    tx: &watch::Sender<Arc<P::View>>,
) {
    let registry = &inner.registry;
    let name = topic.unwrap_or("*");
    let mut project = (inner.make)(topic);
    let mut backoff = Backoff::new(registry.backoff_max());
    loop {
        match start(registry, topic).await {
            Ok((events, listed)) => {
                backoff.reset();
                let mut members: Members = listed
                    .into_iter()
                    .map(|m| (key_of(&m), Arc::new(m)))
                    .collect();
                let followed = AssertUnwindSafe(async {
                    let view = project.project(&members, None).await;
                    publish(inner, tx, view);
                    follow(inner, events, &mut members, &mut project, tx).await;
                })
                .catch_unwind()
                .await;
                let why = match followed {
                    Ok(()) => "membership watch ended",
                    Err(_) => "membership feed panicked",
                };
                tracing::error!(topic = %name, reason = why, "membership feed failed; restarting it");
                project.on_restart();
            }
            Err(e) => {
                tracing::warn!(topic = %name, error = %e, "membership watch cannot start yet");
            }
        }
        backoff.wait().await;
    }
}

/// Opens the watch first, then lists: a change between the two arrives on
/// the watch, and applying it again is harmless.
async fn start(registry: &Registry, topic: Option<&str>) -> Result<(EventStream, Vec<Member>)> {
    let events = registry.watch(topic).await?;
    let members = registry.list(topic).await?;
    Ok((events, members))
}

fn publish<P: Project>(inner: &Inner<P>, tx: &watch::Sender<Arc<P::View>>, view: P::View) {
    tx.send_replace(Arc::new(view));
    inner.changed.send_modify(|n| *n = n.wrapping_add(1));
}

/// Applies the watch's events to `members` and publishes views, until the
/// stream ends.
async fn follow<P: Project>(
    inner: &Inner<P>,
    mut events: EventStream,
    members: &mut Members,
    project: &mut P,
    tx: &watch::Sender<Arc<P::View>>,
) {
    let mut ticks = project.every().map(|every| {
        let every = every.max(Duration::from_millis(1));
        tokio::time::interval_at(tokio::time::Instant::now() + every, every)
    });
    let mut changes = Vec::new();
    loop {
        let tick = async {
            match &mut ticks {
                Some(ticks) => ticks.tick().await,
                None => std::future::pending().await,
            }
        };
        let first = tokio::select! {
            first = events.next() => first,
            _ = tick => {
                if let Some(view) = project.tick(members) {
                    publish(inner, tx, view);
                }
                continue;
            }
        };
        // Everything already queued is applied before the view is made
        // again, so a burst of events costs one view.
        let mut next = first;
        loop {
            match next {
                Some(Ok(event)) => {
                    apply(members, &event);
                    changes.push(event);
                }
                Some(Err(e)) => tracing::warn!(error = %e, "membership watch error"),
                None => return,
            }
            match events.next().now_or_never() {
                Some(more) => next = more,
                None => break,
            }
        }
        let view = project.project(members, Some(&changes)).await;
        changes.clear();
        publish(inner, tx, view);
    }
}

/// Applies one event to `members`. A deleted record is forgotten, so the
/// map never outgrows the registry.
pub(crate) fn apply(members: &mut Members, event: &Event) {
    let member = event.member();
    let key = key_of(member);
    match event {
        Event::Delete(_) => members.remove(&key),
        _ => members.insert(key, Arc::new(member.clone())),
    };
}
