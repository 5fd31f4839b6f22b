//! [`Discovery`]: one client's topic watches, each started by the first
//! channel to its topic and retired after its last.

use std::collections::{BTreeMap, HashMap};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use tokio::sync::watch;

use super::tracker::{Held, Tracker};
use super::{ConnectOptions, Snapshot};
use crate::error::Result;
use crate::servicegroup::backoff::Backoff;
use crate::servicegroup::follow::restarted;
use crate::servicegroup::{EventStream, Registry};

/// The topic watches of one client, each started by the first channel to
/// its topic. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Discovery {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    options: ConnectOptions,
    /// How long a watch outlives its last channel ([`LINGER`]).
    linger: Duration,
    /// Records held over all topics, and events applied.
    members: AtomicUsize,
    events: std::sync::atomic::AtomicU64,
    /// The live watches, by topic. A watch's task removes its entry when
    /// the last receiver is gone, under this lock, so that a channel made
    /// meanwhile never subscribes to a task that ended.
    topics: Mutex<HashMap<String, watch::Sender<Arc<Snapshot>>>>,
}

impl Discovery {
    pub(crate) fn new(registry: Registry, options: ConnectOptions) -> Self {
        Discovery {
            inner: Arc::new(Inner {
                registry,
                options,
                linger: LINGER,
                members: AtomicUsize::new(0),
                events: std::sync::atomic::AtomicU64::new(0),
                topics: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The same, with watches retired `linger` after their last channel.
    #[cfg(test)]
    pub(super) fn with_linger(
        registry: Registry,
        options: ConnectOptions,
        linger: Duration,
    ) -> Self {
        let discovery = Discovery::new(registry, options);
        let mut inner = Arc::try_unwrap(discovery.inner).unwrap_or_else(|_| unreachable!());
        inner.linger = linger;
        Discovery {
            inner: Arc::new(inner),
        }
    }

    /// The snapshots of `topic`, its watch started if none runs.
    pub(crate) fn topic(&self, topic: &str) -> watch::Receiver<Arc<Snapshot>> {
        let mut topics = lock(&self.inner.topics);
        if let Some(tx) = topics.get(topic) {
            return tx.subscribe();
        }
        let (tx, rx) = watch::channel(Arc::new(Snapshot::default()));
        topics.insert(topic.to_string(), tx.clone());
        tokio::spawn(follow_topic(self.inner.clone(), topic.to_string(), tx));
        rx
    }

    /// Adds the topics, records and events of this client to `stats`.
    pub(crate) fn add_stats(&self, stats: &mut crate::rpc::RpcStats) {
        stats.topics_watched = lock(&self.inner.topics).len() as u64;
        stats.members_held = self.inner.members.load(Ordering::Relaxed) as u64;
        stats.membership_events = self.inner.events.load(Ordering::Relaxed);
    }

    /// The topics watched now.
    #[cfg(test)]
    pub(crate) fn watched(&self) -> Vec<String> {
        lock(&self.inner.topics).keys().cloned().collect()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Lists the members of `topic`, then follows its watch; `tx` always holds
/// the latest snapshot. Ends once no channel has used the topic for
/// [`LINGER`]. A watch that ends or a follower that panics is logged,
/// counted and started again (with backoff), so a client never keeps a
/// frozen node set.
async fn follow_topic(inner: Arc<Inner>, topic: String, tx: watch::Sender<Arc<Snapshot>>) {
    tokio::select! {
        () = unused(&inner, &topic, &tx) => {}
        () = keep_following(&inner, &topic, &tx) => {}
    }
}

/// How long a topic's watch outlives its last channel: a caller that makes
/// a channel per request must not start a watch per request.
const LINGER: Duration = Duration::from_secs(30);

/// Resolves once the topic's watch is retired: no channel for [`LINGER`].
async fn unused(inner: &Inner, topic: &str, tx: &watch::Sender<Arc<Snapshot>>) {
    loop {
        tx.closed().await;
        tokio::time::sleep(inner.linger).await;
        if retire(inner, topic, tx) {
            return;
        }
    }
}

async fn keep_following(inner: &Inner, topic: &str, tx: &watch::Sender<Arc<Snapshot>>) {
    let mut tracker = Tracker {
        members: BTreeMap::new(),
        nodes: HashMap::new(),
        options: Arc::new(inner.options.clone()),
        held: Held {
            total: &inner.members,
            mine: 0,
        },
        events: &inner.events,
    };
    let registry = &inner.registry;
    let mut backoff = Backoff::new(registry.backoff_max());
    loop {
        match restart(registry, topic, &mut tracker).await {
            Ok(stream) => {
                backoff.reset();
                tx.send_replace(Arc::new(tracker.snapshot()));
                let idle_timeout = inner.options.idle_timeout;
                let followed = AssertUnwindSafe(follow(stream, &mut tracker, tx, idle_timeout))
                    .catch_unwind()
                    .await;
                match followed {
                    Ok(()) => restarted("discovery", &"membership watch ended"),
                    Err(_) => restarted("discovery", &"discovery loop panicked"),
                }
            }
            Err(e) => {
                tracing::warn!(%topic, error = %e, "membership watch cannot start yet");
            }
        }
        backoff.wait().await;
    }
}

/// Removes a topic's watch once no channel uses it; `false` when a channel
/// subscribed meanwhile, and the watch goes on.
fn retire(inner: &Inner, topic: &str, tx: &watch::Sender<Arc<Snapshot>>) -> bool {
    let mut topics = lock(&inner.topics);
    // The map's own sender is not a receiver: only channels count.
    if tx.receiver_count() > 0 {
        return false;
    }
    topics.remove(topic);
    crate::telemetry::metrics::set_client_nodes(topic, 0);
    true
}

/// Lists the topic's members (records deleted meanwhile are dropped) and
/// opens its watch.
async fn restart(
    registry: &Registry,
    topic: &str,
    tracker: &mut Tracker<'_>,
) -> Result<EventStream> {
    let events = registry.watch(Some(topic)).await?;
    let members = registry.list(Some(topic)).await?;
    tracker.members = members
        .into_iter()
        .map(|m| ((m.record.topic.clone(), m.record.host.clone()), Arc::new(m)))
        .collect();
    Ok(events)
}

/// Applies one watch's events to the tracker and publishes snapshots,
/// until the stream ends. Every half `idle_timeout` it closes the
/// connections no call took since the last look: a connection closes after
/// between one half and one whole `idle_timeout` unused.
async fn follow(
    mut events: EventStream,
    tracker: &mut Tracker<'_>,
    tx: &watch::Sender<Arc<Snapshot>>,
    idle_timeout: Option<Duration>,
) {
    let mut sweeps = idle_timeout.map(|t| {
        let half = (t / 2).max(Duration::from_millis(1));
        tokio::time::interval_at(tokio::time::Instant::now() + half, half)
    });
    loop {
        let sweep = async {
            match &mut sweeps {
                Some(ticks) => ticks.tick().await,
                None => std::future::pending().await,
            }
        };
        let first = tokio::select! {
            first = events.next() => first,
            _ = sweep => {
                if tracker.close_idle() {
                    tx.send_replace(Arc::new(tracker.snapshot()));
                }
                continue;
            }
        };
        let Some(first) = first else {
            return;
        };
        // Apply everything already queued before publishing, so a burst of
        // events costs one snapshot.
        let mut next = Some(first);
        loop {
            match next {
                Some(Ok(event)) => tracker.apply(&event),
                Some(Err(e)) => tracing::warn!(error = %e, "membership watch error"),
                None => return,
            }
            match events.next().now_or_never() {
                Some(more) => next = more,
                None => break,
            }
        }
        tx.send_replace(Arc::new(tracker.snapshot()));
    }
}
