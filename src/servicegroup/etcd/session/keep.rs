//! Following a registration: the shared lease's state and a watch on our
//! own keys (see [`super`]).

use etcd_client::{EventType, WatchOptions};
use tokio::sync::watch;
use tokio::time::Instant;

use super::super::lease::changed_state;
use super::{Ended, Session};
use crate::error::{Error, Result};
use crate::servicegroup::backoff::{spread, Backoff};

impl Session {
    /// Follows the shared lease and watches our keys until the lease is
    /// lost or a key changed by hand. A lost watch is not a lost
    /// registration: the watch is opened again from the last revision it
    /// covered, spread over an interval (an election breaks every node's
    /// watch at once), with nothing else asked of etcd.
    pub(super) async fn keep(
        &self,
        lease: i64,
        revision: i64,
        stop: &mut watch::Receiver<bool>,
    ) -> Ended {
        let mut state = self.shared.subscribe();
        if state.borrow_and_update().id != lease {
            return Ended::Lost(Error::unavailable_msg(format!(
                "lease {lease:x} was replaced"
            )));
        }
        // Every change to our keys up to `seen` has been looked at.
        let mut seen = revision;
        let mut changes = match self.watch_keys(seen).await {
            Ok(stream) => Some(stream),
            Err(e) => return Ended::Lost(e),
        };
        self.status.beat(None);
        let (mut acks, mut failures) = (state.borrow().acks, state.borrow().failures);
        // Keep-alives failed since the last answer: the next answer means
        // the registration held through an outage.
        let mut failing = false;
        let mut rewatch_at = None;
        let mut backoff = Backoff::new(self.inner.backoff_max);
        let lost = |what: String| Ended::Lost(Error::unavailable_msg(what));
        loop {
            tokio::select! {
                _ = stop.changed() => return Ended::Stopped,
                changed = state.changed() => {
                    let now = match changed_state(changed, &mut state, lease) {
                        Ok(now) => now,
                        Err(why) => return lost(why),
                    };
                    if now.failures != failures {
                        failures = now.failures;
                        failing = true;
                        self.status.failed(&self.shared.last_error());
                    }
                    if now.acks != acks {
                        acks = now.acks;
                        if std::mem::take(&mut failing) {
                            self.status.reregistered();
                        }
                        self.status.beat(now.rtt);
                    }
                }
                change = next_change(&mut changes) => {
                    let broken = match change {
                        Ok(Some(resp)) if resp.canceled() && resp.compact_revision() > 0 => {
                            // History we had not seen is gone: check the
                            // keys themselves.
                            return lost(format!("watch on our keys canceled: {}", resp.cancel_reason()));
                        }
                        Ok(Some(resp)) if resp.canceled() => resp.cancel_reason().to_string(),
                        Ok(Some(resp)) => {
                            if let Some(why) = self.foreign_change(&resp, lease) {
                                // A change by hand, not an outage.
                                return Ended::Lost(Error::registry_msg(why));
                            }
                            let newest = resp.events().iter().filter_map(|e| e.kv()).map(|kv| kv.mod_revision()).max();
                            seen = seen.max(newest.unwrap_or(seen));
                            continue;
                        }
                        Ok(None) => "closed".to_string(),
                        Err(e) => e.to_string(),
                    };
                    tracing::debug!(member = %self.status.name(), why = %broken, "watch on our keys lost; watching again");
                    changes = None;
                    rewatch_at = Some(Instant::now() + spread(self.interval));
                }
                () = sleep_until(rewatch_at) => match self.watch_keys(seen).await {
                    Ok(stream) => {
                        changes = Some(stream);
                        rewatch_at = None;
                        backoff.reset();
                    }
                    Err(e) => {
                        tracing::debug!(member = %self.status.name(), error = %e, "cannot watch our keys yet");
                        rewatch_at = Some(Instant::now() + backoff.next_delay_spread(self.interval));
                    }
                },
            }
        }
    }

    /// A watch on our liveness key and record, from just after `seen`.
    async fn watch_keys(&self, seen: i64) -> Result<etcd_client::WatchStream> {
        let watches = self.inner.client.watch_client();
        let from = WatchOptions::new().with_start_revision(seen + 1);
        let mut changes = self
            .inner
            .call(|| {
                let (mut watches, from) = (watches.clone(), from.clone());
                let key = self.alive_key.clone();
                async move { watches.watch(key, Some(from)).await }
            })
            .await?;
        // The record on the same stream: deleted by hand, it is written again.
        changes
            .watch(self.record_key.as_str(), Some(from))
            .await
            .map_err(|e| Error::unavailable("watching the service record", e))?;
        Ok(changes)
    }

    /// Whether a change to our keys undoes the registration: the liveness
    /// key deleted or bound to another lease (overwritten by hand), or the
    /// record deleted.
    fn foreign_change(&self, resp: &etcd_client::WatchResponse, lease: i64) -> Option<String> {
        resp.events().iter().find_map(|event| {
            let kv = event.kv()?;
            let key = kv.key();
            match event.event_type() {
                EventType::Delete if key == self.alive_key.as_bytes() => {
                    Some("liveness key deleted".into())
                }
                EventType::Delete if key == self.record_key.as_bytes() => {
                    Some("service record deleted".into())
                }
                EventType::Put if key == self.alive_key.as_bytes() && kv.lease() != lease => {
                    Some(format!(
                        "liveness key overwritten (bound to lease {:x}, not ours)",
                        kv.lease()
                    ))
                }
                _ => None,
            }
        })
    }
}

/// The next message of a watch; never, while there is none.
async fn next_change(
    changes: &mut Option<etcd_client::WatchStream>,
) -> std::result::Result<Option<etcd_client::WatchResponse>, etcd_client::Error> {
    match changes {
        Some(stream) => stream.message().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
