//! Following members on etcd, through restarts, compactions and dead streams.
//!
//! A watcher lists both ranges of its scope (records and liveness, of one
//! topic or of all) at revision R, then watches each range from R + 1, two
//! watches on one stream, and keeps the listing current. It never watches
//! the deployment's root: a client of one topic receives nothing of the
//! others.
//!
//! Each watch delivers its own range in revision order, but the two are not
//! ordered against each other, and a registration writes both at one
//! revision. So events wait in `pending` until both watches have passed
//! their revision (an event, or a progress notification, at or above it),
//! and a revision is applied whole: a joining node is one Join rather than a
//! down member that comes up. The other range's events of a revision
//! follow at once when it has any; a revision still waiting after
//! [`QUIET`] is followed by a progress request, and after [`HOLD`] more is
//! applied anyway (etcd's grpc-proxy never answers one). etcd before 3.4.24
//! (Debian's 3.4.23 among them) answers with its current revision, ahead of
//! history a watch opened in the past has yet to send (etcd issue 15220), so
//! after such an open the watcher neither asks nor believes the answer
//! until each such watch has sent a response reaching the revision etcd was
//! at when it was created, or for [`SYNC_GRACE`] if it has nothing to send
//! (etcd syncs watches every 100 ms); a revision waits that long too.
//! Pending revisions outlive a broken stream: each watch resumes from its
//! own revision and delivers the rest of them.
//!
//! A broken stream (etcd restarted, a member lost its leader or its
//! connection) is opened again after a backoff, each watch from the last
//! revision it delivered, so nothing is received twice; only a compaction,
//! or a cluster that went back in time (wiped), forces a full reload
//! ([`Step::Reload`]). The stream is opened with `hasleader=true`
//! (`ConnectOptions::with_require_leader`), so a member cut off from its
//! quorum ends it instead of leaving it silent, and a stream that stays
//! silent anyway is found by progress requests.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use etcd_client::{
    Event, EventType, WatchOptions, WatchRequestSender, WatchResponse, WatchResponseStream,
};
use futures::future::BoxFuture;
use futures::FutureExt;

use super::keys::{Kind, Snapshot};
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
/// How long a revision seen on one range waits for the other range's
/// events of it before etcd is asked whether there are any.
const QUIET: Duration = Duration::from_millis(10);
/// How long it then waits for the answer before it is applied anyway.
const HOLD: Duration = Duration::from_millis(100);
/// How long after a watch opened in the past a requested progress
/// notification is not believed (several of etcd's 100 ms sync rounds).
const SYNC_GRACE: Duration = Duration::from_millis(500);
/// How many revisions etcd sends a watch catching up on history at most in
/// one response (`watchBatchMaxRevs`).
const HISTORY_BATCH: usize = 1000;
/// The watch id of a progress notification that answers a request, and so
/// speaks for every watch of the stream.
const ALL_WATCHES: i64 = -1;
/// The ranges watched, in the order their watches are created.
const RANGES: [Kind; 2] = [Kind::Record, Kind::Alive];

/// Lists, then streams changes; the first listing's failure is the caller's.
pub(super) async fn watch(inner: Arc<Inner>, topic: Option<String>) -> Result<EventStream> {
    let snapshot = inner.snapshot(topic.as_deref()).await?;
    let first = snapshot.members();
    let name = topic.clone().unwrap_or_else(|| "*".into());
    let backoff = Backoff::new(inner.backoff_max);
    let backoff_max = inner.backoff_max;
    let figures = inner.figures.clone();
    let follower = EtcdFollow {
        inner,
        topic,
        done: [snapshot.revision; RANGES.len()],
        snapshot,
        pending: BTreeMap::new(),
        stream: None,
        backoff,
        failing: false,
    };
    Ok(follow::spawn(name, first, follower, backoff_max, figures))
}

struct EtcdFollow {
    inner: Arc<Inner>,
    topic: Option<String>,
    /// The members as every event applied so far leaves them.
    snapshot: Snapshot,
    /// Per range: the revision through which its watch delivered every
    /// event; the watch resumes after it.
    done: [i64; RANGES.len()],
    /// Events received, by revision, that wait for the other range's watch.
    pending: BTreeMap<i64, Vec<Event>>,
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
    /// The watch id of each range, as etcd confirmed them.
    ids: [i64; RANGES.len()],
    /// Responses that came while the watches were being created.
    early: VecDeque<WatchResponse>,
    ticks: tokio::time::Interval,
    heard: Instant,
    /// How long the oldest pending revision waits.
    hold: Option<Hold>,
    /// Per range: the revision etcd was at when a watch opened in the past
    /// was created, until the watch shows it sent its history through it.
    catching_up: [Option<i64>; RANGES.len()],
    /// When a watch still catching up is taken to be in sync anyway.
    syncing_until: tokio::time::Instant,
}

impl Stream {
    /// Whether a requested progress notification can be believed: no watch
    /// of the stream is still sending history (etcd before 3.4.24 answers
    /// ahead of it).
    fn in_sync(&self) -> bool {
        self.catching_up.iter().all(Option::is_none)
            || tokio::time::Instant::now() >= self.syncing_until
    }
}

/// A revision seen on one range, waiting for the other range's watch.
#[derive(Clone, Copy)]
struct Hold {
    until: tokio::time::Instant,
    /// Whether etcd was asked for a progress notification.
    asked: bool,
}

/// Why following a stream stopped.
enum Broken {
    /// Open it again from the last revision seen.
    Resume(String),
    /// Our revision is gone: list everything again.
    Reload(String),
}

type Changes = Vec<(Key, Option<Member>)>;

impl Follow for EtcdFollow {
    fn list(&mut self) -> BoxFuture<'_, Result<Vec<Member>>> {
        async move {
            self.stream = None;
            self.pending.clear();
            self.snapshot = self.inner.snapshot(self.topic.as_deref()).await?;
            self.done = [self.snapshot.revision; RANGES.len()];
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
                        // Pending revisions wait for the new stream: each
                        // watch resumes after the last event it delivered.
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
    fn options(&self, range: usize) -> WatchOptions {
        WatchOptions::new()
            .with_prefix()
            .with_start_revision(self.done[range] + 1)
            .with_progress_notify()
            .with_prev_key()
    }

    /// Opens one watch per range, each from the revision after the last
    /// one it delivered, and waits for etcd to confirm them.
    async fn open(&mut self) -> std::result::Result<Stream, Broken> {
        let inner = self.inner.clone();
        let topic = self.topic.as_deref();
        let keys = RANGES.map(|kind| inner.layout.range(kind, topic));
        let first = self.options(0);
        let watches = inner.client.watch_client();
        let stream = inner
            .call(|| {
                let (mut watches, options) = (watches.clone(), first.clone());
                let key = keys[0].clone();
                async move { watches.watch(key, Some(options)).await }
            })
            .await
            .map_err(|e| Broken::Resume(e.to_string()))?;
        let (mut requests, mut responses) = stream.split();
        for (range, key) in keys.iter().enumerate().skip(1) {
            requests
                .watch(key.as_str(), Some(self.options(range)))
                .await
                .map_err(|e| Broken::Resume(e.to_string()))?;
        }
        // etcd confirms the watches in the order they were asked for; a
        // confirmed watch's events may come before the next confirmation.
        let mut ids = Vec::with_capacity(RANGES.len());
        let mut early = VecDeque::new();
        let mut behind = Vec::with_capacity(RANGES.len());
        while ids.len() < RANGES.len() {
            let response = tokio::time::timeout(inner.timeout, responses.message())
                .await
                .map_err(|_| Broken::Resume("etcd did not confirm the watch".into()))?
                .map_err(|e| Broken::Resume(e.to_string()))?
                .ok_or_else(|| Broken::Resume("watch stream ended at once".into()))?;
            if !response.created() {
                early.push_back(response);
                continue;
            }
            self.check_history(&response)?;
            if let Some(broken) = cancelled(&response) {
                return Err(broken);
            }
            // A watch starting at or before etcd's revision has history to
            // catch up on before it is in sync.
            let current = response.header().map_or(0, |h| h.revision());
            behind.push((self.done[ids.len()] < current).then_some(current));
            ids.push(response.watch_id());
        }
        let ids: [i64; RANGES.len()] = ids
            .try_into()
            .map_err(|_| Broken::Resume("etcd confirmed too many watches".into()))?;
        let catching_up: [Option<i64>; RANGES.len()] = behind
            .try_into()
            .map_err(|_| Broken::Resume("etcd confirmed too many watches".into()))?;
        if self.failing {
            tracing::info!(topic = ?self.topic, revision = self.snapshot.revision, "membership watch resumed");
            self.failing = false;
        }
        self.backoff.reset();
        let mut ticks = tokio::time::interval(PROGRESS_EVERY);
        ticks.reset();
        // Revisions left pending by the broken stream wait as new ones do.
        let now = tokio::time::Instant::now();
        let hold = (!self.pending.is_empty()).then_some(Hold {
            until: now + QUIET,
            asked: false,
        });
        Ok(Stream {
            requests,
            responses,
            ids,
            early,
            ticks,
            heard: Instant::now(),
            hold,
            catching_up,
            syncing_until: now + SYNC_GRACE,
        })
    }

    /// A cluster behind the revisions this watch saw, or on an older term,
    /// was wiped and rebuilt: those revisions mean nothing there.
    fn check_history(&mut self, response: &WatchResponse) -> std::result::Result<(), Broken> {
        let Some(header) = response.header() else {
            return Ok(());
        };
        let seen = self.done.iter().copied().max().unwrap_or(0);
        if header.revision() < seen || header.raft_term() < self.snapshot.term {
            return Err(Broken::Reload(format!(
                "etcd is at revision {} (term {}), behind the {} (term {}) this watch saw: reloading",
                header.revision(),
                header.raft_term(),
                seen,
                self.snapshot.term
            )));
        }
        self.snapshot.term = header.raft_term();
        Ok(())
    }

    /// Reads one response and returns the members that changed with the
    /// revisions it completes (none for most progress notifications).
    async fn read(&mut self, stream: &mut Stream) -> std::result::Result<Changes, Broken> {
        let response = match stream.early.pop_front() {
            Some(response) => response,
            None => {
                let hold = stream.hold;
                let response = tokio::select! {
                    _ = stream.ticks.tick() => {
                        if stream.heard.elapsed() >= DEAD_AFTER {
                            return Err(Broken::Resume(format!("no answer from etcd for {:?}", stream.heard.elapsed())));
                        }
                        stream.requests.request_progress().await.map_err(|e| Broken::Resume(e.to_string()))?;
                        return Ok(Vec::new());
                    }
                    () = tokio::time::sleep_until(hold.map_or_else(tokio::time::Instant::now, |h| h.until)), if hold.is_some() => {
                        let now = tokio::time::Instant::now();
                        if !stream.in_sync() {
                            // History is still coming: its events, not a
                            // progress answer, end the wait.
                            stream.hold = Some(Hold { until: (now + HOLD).min(stream.syncing_until), asked: false });
                            return Ok(Vec::new());
                        }
                        if !hold.is_some_and(|h| h.asked) {
                            // The other range is quiet: ask etcd to say so.
                            stream.hold = Some(Hold { until: now + HOLD, asked: true });
                            stream.requests.request_progress().await.map_err(|e| Broken::Resume(e.to_string()))?;
                            return Ok(Vec::new());
                        }
                        // No answer at all: what waited is applied, and the
                        // other watch's events of it follow as they come.
                        stream.hold = None;
                        return Ok(self.release(i64::MAX));
                    }
                    response = stream.responses.message() => response,
                };
                response
                    .map_err(|e| Broken::Resume(e.to_string()))?
                    .ok_or_else(|| Broken::Resume("watch stream ended".into()))?
            }
        };
        stream.heard = Instant::now();
        if let Some(broken) = cancelled(&response) {
            return Err(broken);
        }
        let range = stream.ids.iter().position(|&id| id == response.watch_id());
        if response.events().is_empty() {
            // A progress notification: everything up to its revision has
            // been sent, to its watch or (a requested one) to every watch.
            let every = response.watch_id() == ALL_WATCHES;
            if every && !stream.in_sync() {
                // Possibly ahead of history still on its way.
                return Ok(Vec::new());
            }
            if let Some(header) = response.header().filter(|_| every || range.is_some()) {
                self.inner.figures.progressed(self.topic.as_deref());
                for (i, done) in self.done.iter_mut().enumerate() {
                    if every || range == Some(i) {
                        *done = (*done).max(header.revision());
                    }
                }
            }
        } else if let Some(range) = range {
            // History is sent in batches of whole revisions, up to the
            // revision in the header; a batch under etcd's limit is the
            // last, and the watch is then in sync.
            let header = response.header().map_or(0, |h| h.revision());
            if stream.catching_up[range].is_some_and(|at| header >= at)
                && revisions(&response) < HISTORY_BATCH
            {
                stream.catching_up[range] = None;
                if stream.in_sync() {
                    // A revision held for history asks etcd now.
                    if let Some(hold) = stream.hold.as_mut().filter(|h| !h.asked) {
                        hold.until = hold.until.min(tokio::time::Instant::now() + QUIET);
                    }
                }
            }
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                let revision = kv.mod_revision();
                self.done[range] = self.done[range].max(revision);
                self.pending
                    .entry(revision)
                    .or_default()
                    .push(event.clone());
            }
        }
        let floor = self.done.iter().copied().min().unwrap_or(0);
        let changes = self.release(floor);
        if self.pending.is_empty() {
            stream.hold = None;
        } else if stream.hold.is_none() {
            // The other range's events of the same revision follow at once
            // when it has any; only a quiet range costs a progress request.
            stream.hold = Some(Hold {
                until: tokio::time::Instant::now() + QUIET,
                asked: false,
            });
        }
        Ok(changes)
    }

    /// Applies the pending revisions up to `upto`, each whole, and returns
    /// the members they changed.
    fn release(&mut self, upto: i64) -> Changes {
        let later = self.pending.split_off(&upto.saturating_add(1));
        let ready = std::mem::replace(&mut self.pending, later);
        let layout = &self.inner.layout;
        let now = SystemTime::now();
        let mut changes = Vec::new();
        for (revision, events) in ready {
            let mut touched: Vec<Key> = Vec::new();
            for event in &events {
                let Some(kv) = event.kv() else { continue };
                let key = match event.event_type() {
                    EventType::Put => {
                        let key = self.snapshot.apply_put(layout, kv);
                        if let Some(stamp) = super::keys::written_at(layout, kv) {
                            self.inner
                                .figures
                                .observe(self.topic.as_deref(), now, stamp);
                        }
                        key
                    }
                    EventType::Delete => self.snapshot.apply_delete(layout, kv.key()),
                };
                if let Some(key) = key {
                    if !touched.contains(&key) {
                        touched.push(key);
                    }
                }
            }
            self.snapshot.revision = self.snapshot.revision.max(revision);
            changes.extend(touched.into_iter().map(|key| {
                let member = self.snapshot.member(&key);
                (key, member)
            }));
        }
        changes
    }
}

/// How many revisions a response's events span.
fn revisions(response: &WatchResponse) -> usize {
    let mut revisions: Vec<i64> = response
        .events()
        .iter()
        .filter_map(|e| e.kv().map(|kv| kv.mod_revision()))
        .collect();
    revisions.dedup();
    revisions.len()
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
