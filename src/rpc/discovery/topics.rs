//! [`Discovery`]: one client's topics, each fed by the service group's
//! shared [`TopicFeeds`] from the first channel to it until
//! [`LINGER`] after its last.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::tracker::Tracker;
use super::{ConnectOptions, Snapshot};
use crate::servicegroup::feed::TopicFeeds;
use crate::servicegroup::Registry;

/// How long a topic's watch outlives its last channel: a caller that makes
/// a channel per request must not start a watch per request.
const LINGER: Duration = Duration::from_secs(30);

/// The topics of one client, each watched from its first channel on.
/// Cheap to clone.
#[derive(Clone)]
pub(crate) struct Discovery {
    feeds: TopicFeeds<Tracker>,
    /// Records held over all topics, and events applied.
    members: Arc<AtomicUsize>,
    events: Arc<AtomicU64>,
}

impl Discovery {
    pub(crate) fn new(registry: Registry, options: ConnectOptions) -> Self {
        Self::with_linger(registry, options, LINGER)
    }

    /// The same, with watches retired `linger` after their last channel.
    pub(super) fn with_linger(
        registry: Registry,
        options: ConnectOptions,
        linger: Duration,
    ) -> Self {
        let options = Arc::new(options);
        let members = Arc::new(AtomicUsize::new(0));
        let events = Arc::new(AtomicU64::new(0));
        let (held, counted) = (members.clone(), events.clone());
        let feeds = TopicFeeds::new(registry, linger, move |topic| {
            Tracker::new(
                topic.unwrap_or_default(),
                options.clone(),
                held.clone(),
                counted.clone(),
            )
        });
        Discovery {
            feeds,
            members,
            events,
        }
    }

    /// The snapshots of `topic`, its watch started if none runs.
    pub(crate) fn topic(&self, topic: &str) -> watch::Receiver<Arc<Snapshot>> {
        self.feeds.subscribe(Some(topic))
    }

    /// Adds the topics, records and events of this client to `stats`.
    pub(crate) fn add_stats(&self, stats: &mut crate::rpc::RpcStats) {
        stats.topics_watched = self.feeds.watched().len() as u64;
        stats.members_held = self.members.load(Ordering::Relaxed) as u64;
        stats.membership_events = self.events.load(Ordering::Relaxed);
    }

    /// The topics watched now.
    #[cfg(test)]
    pub(crate) fn watched(&self) -> Vec<String> {
        self.feeds.watched().into_iter().flatten().collect()
    }
}
