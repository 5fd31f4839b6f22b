//! Watching members on etcd, through restarts, compactions and dead streams.
//!
//! A watcher lists both prefixes at revision R, then watches from R + 1. Any
//! trouble — the stream breaks, etcd restarts or is wiped, the revision was
//! compacted, or the stream goes silent — ends in the same resync: list
//! again, emit what differs from what this watcher last reported, watch from
//! the new revision. The event stream itself never ends.

use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{EventType, WatchOptions};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::keys::Snapshot;
use super::{Backoff, Inner};
use crate::error::Result;
use crate::servicegroup::diff::{Key, View};
use crate::servicegroup::{Event, EventStream};

/// How often a quiet watch asks etcd to prove it is still there (etcd's own
/// progress notifications come every 10 minutes by default).
const PROGRESS_EVERY: Duration = Duration::from_secs(2);
/// Silence after which a watch stream counts as dead.
const DEAD_AFTER: Duration = Duration::from_secs(8);

/// Lists, then streams changes; the first listing's failure is the caller's.
pub(super) async fn watch(inner: Arc<Inner>, topic: Option<String>) -> Result<EventStream> {
    let first = inner.snapshot(topic.as_deref()).await?;
    let (tx, rx) = mpsc::channel(1024);
    tokio::spawn(
        Watcher {
            inner,
            topic,
            tx,
            view: View::default(),
        }
        .run(first),
    );
    Ok(Box::pin(ReceiverStream::new(rx)))
}

struct Watcher {
    inner: Arc<Inner>,
    topic: Option<String>,
    tx: mpsc::Sender<Result<Event>>,
    /// What this watcher has reported, so a resync emits only differences.
    view: View,
}

/// Why following a watch stream stopped.
enum Ended {
    /// Nobody reads the events any more.
    Closed,
    /// Start over from a fresh listing; `now` skips the backoff.
    Resync { why: String, now: bool },
}

impl Watcher {
    async fn run(mut self, first: Snapshot) {
        let mut backoff = Backoff::new();
        let mut next = Some(first);
        let mut failing = false;
        loop {
            let snapshot = match next.take() {
                Some(s) => Ok(s),
                None => self.inner.snapshot(self.topic.as_deref()).await,
            };
            let ended = match snapshot {
                Ok(mut snapshot) => {
                    if failing {
                        tracing::info!(topic = ?self.topic, "membership watch resumed");
                        failing = false;
                    }
                    let events = self.view.resync(snapshot.members());
                    if !self.send(events).await {
                        return;
                    }
                    self.follow(&mut snapshot, &mut backoff).await
                }
                Err(e) => Ended::Resync {
                    why: e.to_string(),
                    now: false,
                },
            };
            match ended {
                Ended::Closed => return,
                Ended::Resync { why, now } => {
                    if !failing {
                        tracing::warn!(topic = ?self.topic, reason = %why, "membership watch interrupted; resyncing");
                        failing = true;
                    } else {
                        tracing::debug!(topic = ?self.topic, reason = %why, "resync failed");
                    }
                    if !now {
                        tokio::select! {
                            () = tokio::time::sleep(backoff.next_delay()) => {}
                            () = self.tx.closed() => return,
                        }
                    }
                }
            }
        }
    }

    async fn send(&self, events: impl IntoIterator<Item = Event>) -> bool {
        for event in events {
            if self.tx.send(Ok(event)).await.is_err() {
                return false;
            }
        }
        true
    }

    fn in_topic(&self, key: &Key) -> bool {
        self.topic.as_deref().is_none_or(|t| t == key.0)
    }

    /// Applies watch events to `snapshot` until the stream fails.
    async fn follow(&mut self, snapshot: &mut Snapshot, backoff: &mut Backoff) -> Ended {
        let inner = self.inner.clone();
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(snapshot.revision + 1)
            .with_progress_notify()
            .with_prev_key();
        let watches = inner.client.watch_client();
        let stream = inner
            .call(|| {
                let (mut watches, options) = (watches.clone(), options.clone());
                let root = inner.layout.root();
                async move { watches.watch(root, Some(options)).await }
            })
            .await;
        let (mut requests, mut responses) = match stream {
            Ok(stream) => stream.split(),
            Err(e) => {
                return Ended::Resync {
                    why: e.to_string(),
                    now: false,
                }
            }
        };
        backoff.reset();
        let mut ticks = tokio::time::interval(PROGRESS_EVERY);
        ticks.tick().await;
        let mut heard = Instant::now();
        loop {
            let response = tokio::select! {
                () = self.tx.closed() => return Ended::Closed,
                _ = ticks.tick() => {
                    if heard.elapsed() >= DEAD_AFTER {
                        let why = format!("no answer from etcd for {:?}", heard.elapsed());
                        return Ended::Resync { why, now: true };
                    }
                    if let Err(e) = requests.request_progress().await {
                        return Ended::Resync { why: e.to_string(), now: false };
                    }
                    continue;
                }
                response = responses.message() => response,
            };
            let response = match response {
                Ok(Some(r)) => r,
                Ok(None) => {
                    return Ended::Resync {
                        why: "watch stream ended".into(),
                        now: false,
                    }
                }
                Err(e) => {
                    return Ended::Resync {
                        why: e.to_string(),
                        now: false,
                    }
                }
            };
            heard = Instant::now();
            if response.compact_revision() > 0 || response.canceled() {
                let why = format!(
                    "watch canceled (compacted to revision {}): {}",
                    response.compact_revision(),
                    response.cancel_reason()
                );
                return Ended::Resync { why, now: true };
            }
            // One revision (a registration's two puts) arrives in one
            // response: apply it whole before diffing, so a joining node is
            // one Join rather than an Update then a Join.
            let mut touched: Vec<Key> = Vec::new();
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                snapshot.revision = snapshot.revision.max(kv.mod_revision());
                if !inner
                    .layout
                    .parse(kv.key())
                    .is_some_and(|(_, k)| self.in_topic(&k))
                {
                    continue;
                }
                let key = match event.event_type() {
                    EventType::Put => snapshot.apply_put(&inner.layout, kv),
                    EventType::Delete => snapshot.apply_delete(&inner.layout, kv.key()),
                };
                if let Some(key) = key {
                    if !touched.contains(&key) {
                        touched.push(key);
                    }
                }
            }
            let events: Vec<Event> = touched
                .into_iter()
                .filter_map(|key| {
                    let member = snapshot.member(&key);
                    self.view.set(key, member)
                })
                .collect();
            if !self.send(events).await {
                return Ended::Closed;
            }
        }
    }
}
