//! The dashboard's live view: the members as the service-group watch last
//! showed them, and the event stream every page and script follows.
//!
//! One watch feeds every client. Each change gets a sequence number and is
//! encoded once as a Server-Sent Events frame, shared by every stream (a
//! hundred clients cost a hundred channel slots, not a hundred encodings).
//! A client that comes back with the id of the last frame it saw
//! (`Last-Event-ID`, or `?after=` from the page it rendered) gets what it
//! missed from a short ring; one that is too far behind, or new, or from
//! another process's numbering, gets a snapshot of every member.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, Stream, StreamExt};
use tokio::sync::{broadcast, watch};

use crate::servicegroup::feed::{Members, Project, TopicFeeds};
use crate::servicegroup::{Event, EventView, Member, MemberView, Registry};

/// Frames kept for clients that reconnect.
const RING: usize = 1024;

/// A comment line sent when nothing else was, so that a dead connection is
/// found and proxies do not close an idle one.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// What a browser waits before reconnecting a dropped stream (the SSE
/// `retry` field; its default is about 3 s).
const RETRY_MS: u64 = 1000;

/// (topic, host).
type Key = (String, String);

/// The view and its numbering, under one lock so that a new client's
/// starting point and its subscription agree.
struct State {
    members: BTreeMap<Key, Member>,
    /// The number of the last change applied.
    seq: u64,
    /// The last frames, oldest first, for clients that reconnect.
    ring: VecDeque<(u64, Bytes)>,
    /// The snapshot frame of `seq`, built once for every client that
    /// needs it.
    snapshot: Option<(u64, Bytes)>,
}

/// Shared by the watch task and every handler.
pub(super) struct Live {
    /// Numbers frames of this process: a client's id from another
    /// process (the dashboard restarted) means nothing here.
    epoch: u64,
    state: Mutex<State>,
    frames: broadcast::Sender<(u64, Bytes)>,
    /// `true` once the first listing is in: before, the page would be empty.
    ready: watch::Sender<bool>,
    /// `true` when the dashboard closes: every stream ends, so an HTTP
    /// server can drain.
    closed: watch::Sender<bool>,
    /// The service group's feed of every topic, held while the dashboard
    /// lives.
    feed: Mutex<Option<watch::Receiver<Arc<()>>>>,
}

/// Where a client resumes: `epoch-seq`, as in the frames' `id:` lines.
pub(super) fn parse_id(text: &str) -> Option<(u64, u64)> {
    let (epoch, seq) = text.trim().split_once('-')?;
    Some((epoch.parse().ok()?, seq.parse().ok()?))
}

impl Live {
    /// Starts following `registry`.
    pub(super) fn start(registry: Registry) -> Arc<Live> {
        let live = Arc::new(Live {
            epoch: rand::random::<u32>().into(),
            state: Mutex::new(State {
                members: BTreeMap::new(),
                seq: 0,
                ring: VecDeque::new(),
                snapshot: None,
            }),
            frames: broadcast::channel(RING).0,
            ready: watch::channel(false).0,
            closed: watch::channel(false).0,
            feed: Mutex::new(None),
        });
        let weak = Arc::downgrade(&live);
        let feeds = TopicFeeds::new(registry, Duration::ZERO, move |_| Mirror {
            live: weak.clone(),
        });
        *crate::sync::lock(&live.feed) = Some(feeds.subscribe(None));
        live
    }

    /// Waits up to `within` for the first listing; `false` if it is not in.
    pub(super) async fn wait_ready(&self, within: Duration) -> bool {
        let mut ready = self.ready.subscribe();
        let waited = tokio::time::timeout(within, ready.wait_for(|r| *r)).await;
        matches!(waited, Ok(Ok(_)))
    }

    /// Ends every event stream, now and to come.
    pub(super) fn close(&self) {
        self.closed.send_replace(true);
    }

    /// The members, ordered by (topic, host), and the id of the last change
    /// they include.
    pub(super) fn members(&self) -> (Vec<Member>, String) {
        let state = crate::sync::lock(&self.state);
        (
            state.members.values().cloned().collect(),
            format!("{}-{}", self.epoch, state.seq),
        )
    }

    /// Applies one watch event; ignores one that changes nothing the view
    /// shows (a watch restarted lists members again).
    fn apply(&self, event: &Event) {
        let member = event.member();
        let key = (
            member.record.advert.topic.clone(),
            member.record.advert.host.clone(),
        );
        let mut state = crate::sync::lock(&self.state);
        let new = match event {
            Event::Delete(_) => None,
            _ => Some(member),
        };
        let Some(event) = Event::between(state.members.get(&key), new) else {
            return;
        };
        match new {
            Some(m) => state.members.insert(key, m.clone()),
            None => state.members.remove(&key),
        };
        state.seq += 1;
        let seq = state.seq;
        let frame = self.frame(seq, "member", &EventView::from(&event));
        if state.ring.len() == RING {
            state.ring.pop_front();
        }
        state.ring.push_back((seq, frame.clone()));
        // No receiver is not an error: nobody watches the page.
        let _ = self.frames.send((seq, frame));
    }

    /// Brings the view to `members` (a fresh listing), as events.
    fn resync(&self, members: Vec<Member>) {
        let listed: std::collections::BTreeSet<(&str, &str)> = members
            .iter()
            .map(|m| {
                (
                    m.record.advert.topic.as_str(),
                    m.record.advert.host.as_str(),
                )
            })
            .collect();
        let gone: Vec<Member> = {
            let state = crate::sync::lock(&self.state);
            state
                .members
                .values()
                .filter(|m| {
                    !listed.contains(&(
                        m.record.advert.topic.as_str(),
                        m.record.advert.host.as_str(),
                    ))
                })
                .cloned()
                .collect()
        };
        for member in members {
            self.apply(&Event::Update(member));
        }
        for member in gone {
            self.apply(&Event::Delete(member));
        }
    }

    fn frame(&self, seq: u64, event: &str, data: &impl serde::Serialize) -> Bytes {
        // Serialising plain views of strings and numbers cannot fail.
        let json = serde_json::to_string(data).unwrap_or_else(|_| "null".into());
        Bytes::from(format!(
            "id: {}-{seq}\nevent: {event}\ndata: {json}\n\n",
            self.epoch
        ))
    }

    fn snapshot_frame(&self, state: &mut State) -> (u64, Bytes) {
        if let Some((seq, frame)) = &state.snapshot {
            if *seq == state.seq {
                return (*seq, frame.clone());
            }
        }
        #[derive(serde::Serialize)]
        struct Snapshot<'a> {
            members: Vec<MemberView<'a>>,
        }
        let frame = self.frame(
            state.seq,
            "snapshot",
            &Snapshot {
                members: state.members.values().map(MemberView::from).collect(),
            },
        );
        state.snapshot = Some((state.seq, frame.clone()));
        (state.seq, frame)
    }

    /// The event stream of one client that last saw `after`.
    pub(super) fn stream(
        self: &Arc<Self>,
        after: Option<(u64, u64)>,
    ) -> impl Stream<Item = Bytes> + Send + 'static {
        let (first, rx, last) = {
            let mut state = crate::sync::lock(&self.state);
            // Subscribed under the lock: no frame falls between the replay
            // (or snapshot) and the live ones.
            let rx = self.frames.subscribe();
            let oldest = state.ring.front().map_or(state.seq + 1, |(seq, _)| *seq);
            let mut first = vec![Bytes::from(format!("retry: {RETRY_MS}\n\n"))];
            match after {
                Some((epoch, seen))
                    if epoch == self.epoch && seen <= state.seq && seen + 1 >= oldest =>
                {
                    first.extend(
                        state
                            .ring
                            .iter()
                            .filter(|(seq, _)| *seq > seen)
                            .map(|(_, f)| f.clone()),
                    );
                }
                _ => first.push(self.snapshot_frame(&mut state).1),
            }
            (first, rx, state.seq)
        };
        let follow = Follower {
            live: self.clone(),
            rx,
            last,
            closed: self.closed.subscribe(),
        };
        futures::stream::iter(first).chain(futures::stream::unfold(follow, Follower::next))
    }
}

/// One client's position in the live frames.
struct Follower {
    live: Arc<Live>,
    rx: broadcast::Receiver<(u64, Bytes)>,
    /// The last change this client has.
    last: u64,
    closed: watch::Receiver<bool>,
}

impl Follower {
    async fn next(mut self) -> Option<(Bytes, Self)> {
        loop {
            if *self.closed.borrow() {
                return None;
            }
            let received = tokio::select! {
                received = self.rx.recv() => received,
                _ = self.closed.changed() => return None,
                () = tokio::time::sleep(KEEPALIVE) => {
                    return Some((Bytes::from_static(b": keep-alive\n\n"), self));
                }
            };
            match received {
                Ok((seq, frame)) if seq > self.last => {
                    self.last = seq;
                    return Some((frame, self));
                }
                Ok(_) => continue,
                // Too slow a reader: the frames it missed are gone from the
                // channel, so it gets the whole picture again.
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let (seq, frame) = {
                        let mut state = crate::sync::lock(&self.live.state);
                        self.live.snapshot_frame(&mut state)
                    };
                    self.last = seq;
                    return Some((frame, self));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

/// Mirrors the feed of every topic into the dashboard's view.
struct Mirror {
    live: Weak<Live>,
}

impl Project for Mirror {
    type View = ();

    fn project<'a>(
        &'a mut self,
        members: &'a Members,
        changes: Option<&'a [Event]>,
    ) -> BoxFuture<'a, ()> {
        if let Some(live) = self.live.upgrade() {
            match changes {
                Some(events) => events.iter().for_each(|e| live.apply(e)),
                None => {
                    live.resync(members.values().map(|m| Member::clone(m)).collect());
                    live.ready.send_replace(true);
                }
            }
        }
        futures::future::ready(()).boxed()
    }
}
