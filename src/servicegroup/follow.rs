//! The one loop behind every driver's [`Driver::watch`](super::Driver::watch).
//!
//! A driver says how to list its members and how to wait for the next
//! change ([`Follow`]); [`spawn`] owns the rest, the same for etcd, files and
//! memory: the view of what this watcher has reported (so that a reload emits
//! only differences), backoff between failed reloads, one log line per
//! outage, and a panic in the driver's code logged, counted in the
//! connection's [`MembershipFigures`] and followed by a reload instead of a
//! silently ended stream.

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::backoff::Backoff;
use super::diff::{Key, View};
use super::lag::MembershipFigures;
use super::{Event, EventStream, Member};
use crate::error::Result;

/// Events buffered per watcher before the driver waits for its reader.
const BUFFER: usize = 1024;

/// What a follower found next.
pub(crate) enum Step {
    /// Some members changed: their new states (`None`: the record is gone).
    Changes(Vec<(Key, Option<Member>)>),
    /// The whole truth for this watcher (a driver that polls).
    Whole(Vec<Member>),
    /// The follower lost track (a compaction, a wiped registry, a lagging
    /// reader): list again. `now` skips the backoff.
    Reload { why: String, now: bool },
}

/// How one driver follows its registry.
pub(crate) trait Follow: Send + 'static {
    /// Every member this watcher covers, and a fresh point to follow from.
    fn list(&mut self) -> BoxFuture<'_, Result<Vec<Member>>>;
    /// Waits for the next step.
    fn next(&mut self) -> BoxFuture<'_, Step>;
}

/// Streams `first` as events, then every change `follow` finds, until the
/// stream is dropped.
pub(crate) fn spawn(
    name: String,
    first: Vec<Member>,
    follow: impl Follow,
    backoff_max: Duration,
    figures: MembershipFigures,
) -> EventStream {
    let (tx, rx) = mpsc::channel(BUFFER);
    let watcher = Watcher {
        name,
        tx,
        view: View::default(),
        backoff: Backoff::new(backoff_max),
        figures,
    };
    tokio::spawn(watcher.run(first, follow));
    Box::pin(ReceiverStream::new(rx))
}

struct Watcher {
    /// The topic watched, for log lines.
    name: String,
    tx: mpsc::Sender<Result<Event>>,
    /// What this watcher has reported, so a reload emits only differences.
    view: View,
    backoff: Backoff,
    /// Where a restart is counted.
    figures: MembershipFigures,
}

impl Watcher {
    async fn run(mut self, first: Vec<Member>, mut follow: impl Follow) {
        let mut snapshot = Some(first);
        let mut failing = false;
        loop {
            let members = match snapshot.take() {
                Some(members) => members,
                None => {
                    let listed = tokio::select! {
                        listed = AssertUnwindSafe(follow.list()).catch_unwind() => listed,
                        () = self.tx.closed() => return,
                    };
                    match listed {
                        Ok(Ok(members)) => members,
                        Ok(Err(e)) => {
                            tracing::debug!(watch = %self.name, error = %e, "reload failed");
                            if !self.pause().await {
                                return;
                            }
                            continue;
                        }
                        Err(_) => {
                            self.figures
                                .restarted("membership watch", &"listing panicked");
                            if !self.pause().await {
                                return;
                            }
                            continue;
                        }
                    }
                }
            };
            if failing {
                tracing::info!(watch = %self.name, "membership watch resumed");
                failing = false;
            }
            let events = self.view.resync(members);
            if !self.send(events).await {
                return;
            }
            // Follow until the driver loses track.
            let (why, now) = loop {
                let step = tokio::select! {
                    step = AssertUnwindSafe(follow.next()).catch_unwind() => step,
                    () = self.tx.closed() => return,
                };
                let events = match step {
                    Ok(Step::Changes(changes)) => changes
                        .into_iter()
                        .filter_map(|(key, member)| self.view.set(key, member))
                        .collect(),
                    Ok(Step::Whole(members)) => self.view.resync(members),
                    Ok(Step::Reload { why, now }) => break (why, now),
                    Err(_) => {
                        self.figures
                            .restarted("membership watch", &"following panicked");
                        break ("the watch loop panicked".to_string(), false);
                    }
                };
                self.backoff.reset();
                if !self.send(events).await {
                    return;
                }
            };
            if !failing {
                tracing::warn!(watch = %self.name, reason = %why, "membership watch interrupted; reloading");
                failing = true;
            }
            if !now && !self.pause().await {
                return;
            }
        }
    }

    /// Waits the next backoff delay; `false` when the reader went away.
    async fn pause(&mut self) -> bool {
        tokio::select! {
            () = self.backoff.wait() => true,
            () = self.tx.closed() => false,
        }
    }

    async fn send(&self, events: Vec<Event>) -> bool {
        for event in events {
            if self.tx.send(Ok(event)).await.is_err() {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;
    use crate::servicegroup::diff::key_of;

    fn member(host: &str) -> Member {
        crate::servicegroup::diff::test_member(host, true)
    }

    /// Panics on its first step, then reports `b` deleted.
    struct Flaky {
        steps: u32,
    }

    impl Follow for Flaky {
        fn list(&mut self) -> BoxFuture<'_, Result<Vec<Member>>> {
            futures::future::ready(Ok(vec![member("a"), member("b")])).boxed()
        }

        fn next(&mut self) -> BoxFuture<'_, Step> {
            self.steps += 1;
            let step = self.steps;
            async move {
                match step {
                    1 => panic!("a bug in a driver"),
                    2 => Step::Changes(vec![(key_of(&member("b")), None)]),
                    _ => futures::future::pending().await,
                }
            }
            .boxed()
        }
    }

    #[tokio::test]
    async fn a_panicking_follower_is_counted_and_followed_again() {
        let figures = MembershipFigures::default();
        let mut events = spawn(
            "t".into(),
            vec![member("a")],
            Flaky { steps: 0 },
            Duration::ZERO,
            figures.clone(),
        );
        let mut seen = Vec::new();
        while seen.len() < 3 {
            let event = tokio::time::timeout(Duration::from_secs(5), events.next())
                .await
                .expect("the watch goes on after the panic")
                .expect("the stream does not end")
                .expect("no error");
            seen.push((event.kind(), event.member().record.advert.host.clone()));
        }
        // a from the first listing, b from the reload after the panic, then
        // b's deletion from the restarted follower.
        assert_eq!(
            seen,
            [
                ("join", "a".into()),
                ("join", "b".into()),
                ("delete", "b".into())
            ]
        );
        assert_eq!(figures.restarts("membership watch"), 1);
    }
}
