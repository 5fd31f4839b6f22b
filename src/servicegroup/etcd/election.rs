//! Leader election on etcd's election API: one campaign per (topic, task)
//! under `{prefix}/elections/{topic}/{name}`, on the process's shared lease
//! (TTL = the node's `service_down_time`). A leader that dies stops keeping
//! its lease alive; etcd deletes its key when the lease expires and the
//! next candidate's campaign returns. A candidate that stops deletes its
//! own key, `{name}/{lease in hex}` as etcd names it, since the lease
//! lives on with the process.
//!
//! A leader counts itself leader only while it can prove its lease is
//! alive (the last keep-alive answer plus the TTL, counted from when the
//! request was sent): cut off from etcd it steps down by itself, before
//! another node can be elected.

use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use tokio::sync::watch;
use tokio::time::Instant;

use etcd_client::{Compare, CompareOp, Txn, TxnOp};

use super::lease::{changed_state, keepalive_interval, ttl_secs, LeaseUse, SharedLease};
use super::Inner;
use crate::error::{Error, Result};
use crate::servicegroup::backoff::Backoff;
use crate::servicegroup::{Election, Leadership};

/// A candidacy campaigning in the background.
pub(super) struct EtcdLeadership {
    /// `Some(until)` while leader: the lease is proven alive until then.
    leads_until: Arc<Mutex<Option<Instant>>>,
    stop: watch::Sender<bool>,
    task: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl EtcdLeadership {
    pub(super) fn start(inner: Arc<Inner>, election: Election) -> Self {
        let leads_until = Arc::new(Mutex::new(None));
        let (stop, stopped) = watch::channel(false);
        let name = format!(
            "{}elections/{}/{}",
            inner.layout.root(),
            election.topic,
            election.name
        );
        let shared = SharedLease::acquire(
            &inner,
            ttl_secs(election.ttl),
            keepalive_interval(election.keepalive, election.ttl),
        );
        let campaign = Campaign {
            inner,
            shared,
            name,
            election,
            leads_until: leads_until.clone(),
        };
        let task = tokio::spawn(campaign.run(stopped));
        EtcdLeadership {
            leads_until,
            stop,
            task: tokio::sync::Mutex::new(Some(task)),
        }
    }
}

impl Leadership for EtcdLeadership {
    fn is_leader(&self) -> bool {
        let until = *crate::sync::lock(&self.leads_until);
        until.is_some_and(|until| Instant::now() < until)
    }

    fn resign(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.stop.send_replace(true);
            if let Some(task) = self.task.lock().await.take() {
                let _ = task.await;
            }
        })
    }
}

impl Drop for EtcdLeadership {
    fn drop(&mut self) {
        // The campaign task revokes its lease on the way out.
        self.stop.send_replace(true);
    }
}

struct Campaign {
    inner: Arc<Inner>,
    shared: LeaseUse,
    name: String,
    election: Election,
    leads_until: Arc<Mutex<Option<Instant>>>,
}

enum Ended {
    Stopped,
    Lost(Error),
}

impl Campaign {
    fn set_leads_until(&self, until: Option<Instant>) {
        *crate::sync::lock(&self.leads_until) = until;
    }

    /// Campaigns term after term until stopped; every failure is logged and
    /// retried with a capped backoff. The last user of the process's lease
    /// revokes it on the way out.
    async fn run(self, mut stopped: watch::Receiver<bool>) {
        let mut backoff = Backoff::new(self.inner.backoff_max);
        loop {
            if *stopped.borrow_and_update() {
                break;
            }
            match self.term(&mut stopped, &mut backoff).await {
                Ended::Stopped => break,
                Ended::Lost(e) => {
                    self.set_leads_until(None);
                    tracing::warn!(election = %self.name, error = %e, "election campaign interrupted; campaigning again");
                }
            }
            tokio::select! {
                _ = stopped.changed() => break,
                _ = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
        if let Err(e) = self.shared.release().await {
            tracing::debug!(election = %self.name, error = %e, "lease revoke failed; it expires by itself");
        }
    }

    /// One candidacy on the current lease: campaign, then lead until the
    /// lease is lost or the campaign stopped.
    async fn term(&self, stopped: &mut watch::Receiver<bool>, backoff: &mut Backoff) -> Ended {
        let lease = match self.shared.current().await {
            Ok(lease) => lease,
            Err(e) => return Ended::Lost(e),
        };
        let ended = self.lead(lease, stopped, backoff).await;
        self.set_leads_until(None);
        // Deleting our key lets the next candidate in at once, rather than
        // when the process's lease expires (which, shared, it may never).
        let key = format!("{}/{lease:x}", self.name);
        let withdraw = Txn::new()
            .when([Compare::lease(key.as_str(), CompareOp::Equal, lease)])
            .and_then([TxnOp::delete(key.as_str(), None)]);
        if let Err(e) = self.inner.txn(withdraw).await {
            tracing::debug!(election = %self.name, error = %e, "withdrawing from the election failed; the key goes with the lease");
        }
        ended
    }

    async fn lead(
        &self,
        lease: i64,
        stopped: &mut watch::Receiver<bool>,
        backoff: &mut Backoff,
    ) -> Ended {
        let ttl = self.election.ttl;
        let mut state = self.shared.subscribe();
        // Not bounded by the request timeout: it returns when we win.
        let mut elections = self.inner.client.election_client();
        let campaign =
            elections.campaign(self.name.clone(), self.election.candidate.clone(), lease);
        tokio::pin!(campaign);
        let mut elected = false;
        let lost = |what: String| Ended::Lost(Error::unavailable_msg(what));
        loop {
            tokio::select! {
                _ = stopped.changed() => return Ended::Stopped,
                won = &mut campaign, if !elected => match won {
                    Ok(_) => {
                        elected = true;
                        backoff.reset();
                        let now = *state.borrow();
                        if now.id != lease {
                            return lost(format!("lease {lease:x} was replaced"));
                        }
                        self.set_leads_until(Some(now.proven_at + ttl));
                        tracing::info!(election = %self.name, candidate = %self.election.candidate, "elected leader");
                    }
                    Err(e) => return Ended::Lost(Error::unavailable(format!("etcd at {}", self.inner.endpoints), e)),
                },
                changed = state.changed() => {
                    let now = match changed_state(changed, &mut state, lease) {
                        Ok(now) => now,
                        Err(why) => return lost(why),
                    };
                    if elected {
                        self.set_leads_until(Some(now.proven_at + ttl));
                    }
                }
            }
        }
    }
}

/// Starts campaigning in `election`.
pub(super) fn campaign(inner: Arc<Inner>, election: Election) -> Result<Arc<dyn Leadership>> {
    Ok(Arc::new(EtcdLeadership::start(inner, election)))
}
