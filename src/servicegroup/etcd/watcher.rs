//! Following members on etcd, through restarts, compactions and dead streams.
//!
//! A watcher lists both prefixes at revision R, then watches from R + 1 and
//! keeps the listing current. A broken stream (etcd restarted, a member lost
//! its leader or its connection) is opened again from the last revision seen,
//! after a backoff, so nothing is listed twice; only a compaction, or a
//! cluster that went back in time (wiped), forces a full reload
//! ([`Step::Reload`]). The stream is opened with `hasleader=true`
//! (`ConnectOptions::with_require_leader`), so a member cut off from its
//! quorum ends it instead of leaving it silent, and a stream that stays
//! silent anyway is found by progress requests.

use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{
    EventType, WatchOptions, WatchRequestSender, WatchResponse, WatchResponseStream,
};
use futures::future::BoxFuture;
use futures::FutureExt;

use super::keys::Snapshot;
use super::Inner;
use crate::error::Result;
use crate::servicegroup::backoff::Backoff;
use crate::servicegroup::diff::Key;
use crate::servicegroup::follow::{self, Follow, Step};
use crate::servicegroup::{EventStream, Member};

/// How often a quiet watch asks etcd to prove it is still there (etcd's own
/// progress notifications come every 10 minutes by default).
const PROGRESS_EVERY: Duration = Duration::from_secs(2);
/// Silence after which a watch stream counts as dead.
const DEAD_AFTER: Duration = Duration::from_secs(8);

/// Lists, then streams changes; the first listing's failure is the caller's.
pub(super) async fn watch(inner: Arc<Inner>, topic: Option<String>) -> Result<EventStream> {
    let snapshot = inner.snapshot(topic.as_deref()).await?;
    let first = snapshot.members();
    let name = topic.clone().unwrap_or_else(|| "*".into());
    let backoff = Backoff::new(inner.backoff_max);
    let backoff_max = inner.backoff_max;
    let follower = EtcdFollow {
        inner,
        topic,
        snapshot,
        stream: None,
        backoff,
        failing: false,
    };
    Ok(follow::spawn(name, first, follower, backoff_max))
}

struct EtcdFollow {
    inner: Arc<Inner>,
    topic: Option<String>,
    /// The members at `snapshot.revision`, the last revision seen.
    snapshot: Snapshot,
    stream: Option<Stream>,
    /// Between attempts to open the stream again.
    backoff: Backoff,
    /// Whether the stream is down (logged once per outage).
    failing: bool,
}

/// An open watch stream and how recently it was heard from.
struct Stream {
    requests: WatchRequestSender,
    responses: WatchResponseStream,
    ticks: tokio::time::Interval,
    heard: Instant,
}

/// Why following a stream stopped.
enum Broken {
    /// Open it again from the last revision seen.
    Resume(String),
    /// Our revision is gone: list everything again.
    Reload(String),
}

impl Follow for EtcdFollow {
    fn list(&mut self) -> BoxFuture<'_, Result<Vec<Member>>> {
        async move {
            self.stream = None;
            self.snapshot = self.inner.snapshot(self.topic.as_deref()).await?;
            Ok(self.snapshot.members())
        }
        .boxed()
    }

    fn next(&mut self) -> BoxFuture<'_, Step> {
        async move {
            loop {
                let broken = match self.stream.take() {
                    None => match self.open().await {
                        Ok(stream) => {
                            self.stream = Some(stream);
                            continue;
                        }
                        Err(broken) => broken,
                    },
                    Some(mut stream) => match self.read(&mut stream).await {
                        Ok(changes) => {
                            self.stream = Some(stream);
                            if changes.is_empty() {
                                continue;
                            }
                            return Step::Changes(changes);
                        }
                        Err(broken) => broken,
                    },
                };
                match broken {
                    Broken::Reload(why) => return Step::Reload { why, now: true },
                    Broken::Resume(why) => {
                        if !self.failing {
                            tracing::warn!(topic = ?self.topic, reason = %why, revision = self.snapshot.revision,
                                "membership watch stream broken; resuming from the last revision seen");
                            self.failing = true;
                        } else {
                            tracing::debug!(topic = ?self.topic, reason = %why, "watch stream still down");
                        }
                        self.backoff.wait().await;
                    }
                }
            }
        }
        .boxed()
    }
}

impl EtcdFollow {
    /// Opens a stream from the revision after the last one seen and waits
    /// for etcd to confirm it.
    async fn open(&mut self) -> std::result::Result<Stream, Broken> {
        let inner = self.inner.clone();
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(self.snapshot.revision + 1)
            .with_progress_notify()
            .with_prev_key();
        let watches = inner.client.watch_client();
        let stream = inner
            .call(|| {
                let (mut watches, options) = (watches.clone(), options.clone());
                let root = inner.layout.root();
                async move { watches.watch(root, Some(options)).await }
            })
            .await
            .map_err(|e| Broken::Resume(e.to_string()))?;
        let (requests, mut responses) = stream.split();
        let created = tokio::time::timeout(inner.timeout, responses.message())
            .await
            .map_err(|_| Broken::Resume("etcd did not confirm the watch".into()))?
            .map_err(|e| Broken::Resume(e.to_string()))?
            .ok_or_else(|| Broken::Resume("watch stream ended at once".into()))?;
        if let Some(header) = created.header() {
            // A cluster behind our revision, or on an older term, was wiped
            // and rebuilt: our revision means nothing there.
            if header.revision() < self.snapshot.revision || header.raft_term() < self.snapshot.term
            {
                return Err(Broken::Reload(format!(
                    "etcd is at revision {} (term {}), behind the {} (term {}) this watch saw: reloading",
                    header.revision(),
                    header.raft_term(),
                    self.snapshot.revision,
                    self.snapshot.term
                )));
            }
            self.snapshot.term = header.raft_term();
        }
        if let Some(broken) = cancelled(&created) {
            return Err(broken);
        }
        if self.failing {
            tracing::info!(topic = ?self.topic, revision = self.snapshot.revision, "membership watch resumed");
            self.failing = false;
        }
        self.backoff.reset();
        let mut ticks = tokio::time::interval(PROGRESS_EVERY);
        ticks.reset();
        Ok(Stream {
            requests,
            responses,
            ticks,
            heard: Instant::now(),
        })
    }

    /// Reads one response and applies it to the snapshot; returns the
    /// members it changed (none for progress notifications).
    async fn read(
        &mut self,
        stream: &mut Stream,
    ) -> std::result::Result<Vec<(Key, Option<Member>)>, Broken> {
        let response = tokio::select! {
            _ = stream.ticks.tick() => {
                if stream.heard.elapsed() >= DEAD_AFTER {
                    return Err(Broken::Resume(format!("no answer from etcd for {:?}", stream.heard.elapsed())));
                }
                stream.requests.request_progress().await.map_err(|e| Broken::Resume(e.to_string()))?;
                return Ok(Vec::new());
            }
            response = stream.responses.message() => response,
        };
        let response = response
            .map_err(|e| Broken::Resume(e.to_string()))?
            .ok_or_else(|| Broken::Resume("watch stream ended".into()))?;
        stream.heard = Instant::now();
        if let Some(broken) = cancelled(&response) {
            return Err(broken);
        }
        let layout = &self.inner.layout;
        // One revision (a registration's two puts) is applied whole before
        // diffing, so a joining node is one Join rather than an Update then
        // a Join. A response replaying history holds several revisions:
        // each is diffed on its own, so a node that came and went while the
        // stream was down is a Join then a Leave, as it happened.
        let mut changes = Vec::new();
        let mut touched: Vec<Key> = Vec::new();
        let mut at = None;
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            if at.is_some_and(|rev| rev != kv.mod_revision()) {
                changes.extend(self.changes(&mut touched));
            }
            at = Some(kv.mod_revision());
            self.snapshot.revision = self.snapshot.revision.max(kv.mod_revision());
            let in_topic = |k: &Key| self.topic.as_deref().is_none_or(|t| t == k.0);
            if !layout.parse(kv.key()).is_some_and(|(_, k)| in_topic(&k)) {
                continue;
            }
            let key = match event.event_type() {
                EventType::Put => self.snapshot.apply_put(layout, kv),
                EventType::Delete => self.snapshot.apply_delete(layout, kv.key()),
            };
            if let Some(key) = key {
                if !touched.contains(&key) {
                    touched.push(key);
                }
            }
        }
        changes.extend(self.changes(&mut touched));
        // Progress notifications carry the revision everything before
        // has been sent for: resume from there.
        if let Some(header) = response.header() {
            if response.events().is_empty() {
                self.snapshot.revision = self.snapshot.revision.max(header.revision());
            }
        }
        Ok(changes)
    }

    /// The members `touched` (now emptied) name, as the snapshot has them.
    fn changes(&self, touched: &mut Vec<Key>) -> Vec<(Key, Option<Member>)> {
        touched
            .drain(..)
            .map(|key| {
                let member = self.snapshot.member(&key);
                (key, member)
            })
            .collect()
    }
}

/// A cancelled watch: compacted past our revision (reload), or refused for
/// another reason, e.g. no leader (resume).
fn cancelled(response: &WatchResponse) -> Option<Broken> {
    if response.compact_revision() > 0 {
        return Some(Broken::Reload(format!(
            "watch revision compacted (to {})",
            response.compact_revision()
        )));
    }
    response
        .canceled()
        .then(|| Broken::Resume(format!("watch canceled: {}", response.cancel_reason())))
}
