//! Leader election on etcd's election API: one campaign per (topic, task)
//! under `{prefix}/elections/{topic}/{name}`, on a lease of its own with
//! TTL = the node's `service_down_time`. A leader that dies stops keeping
//! its lease alive; etcd deletes its key when the lease expires and the
//! next candidate's campaign returns.
//!
//! A leader counts itself leader only while it can prove its lease is
//! alive (the last keep-alive answer plus the TTL, counted from when the
//! request was sent): cut off from etcd it steps down by itself, before
//! another node can be elected.

use std::sync::{Arc, Mutex, PoisonError};

use futures::future::BoxFuture;
use tokio::sync::watch;
use tokio::time::Instant;

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
        let campaign = Campaign {
            inner,
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
        let until = *self
            .leads_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
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
        *self
            .leads_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = until;
    }

    /// Campaigns term after term until stopped; every failure is logged and
    /// retried with a capped backoff.
    async fn run(self, mut stopped: watch::Receiver<bool>) {
        let mut backoff = Backoff::new(self.inner.backoff_max);
        loop {
            if *stopped.borrow_and_update() {
                return;
            }
            match self.term(&mut stopped, &mut backoff).await {
                Ended::Stopped => return,
                Ended::Lost(e) => {
                    self.set_leads_until(None);
                    tracing::warn!(election = %self.name, error = %e, "election campaign interrupted; campaigning again");
                }
            }
            tokio::select! {
                _ = stopped.changed() => return,
                _ = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
    }

    /// One lease: campaign on it, then lead until it is lost or stopped.
    async fn term(&self, stopped: &mut watch::Receiver<bool>, backoff: &mut Backoff) -> Ended {
        let ttl = self.election.ttl;
        let ttl_secs = i64::try_from(ttl.as_secs_f64().ceil() as u64)
            .unwrap_or(i64::MAX)
            .max(1);
        let leases = self.inner.client.lease_client();
        let granted_at = Instant::now();
        let lease = match self
            .inner
            .call(|| {
                let mut leases = leases.clone();
                async move { leases.grant(ttl_secs, None).await }
            })
            .await
        {
            Ok(granted) => granted.id(),
            Err(e) => return Ended::Lost(e),
        };
        let ended = self.lead(lease, granted_at, stopped, backoff).await;
        self.set_leads_until(None);
        // Revoking deletes our key at once, so the next candidate need not
        // wait for the TTL.
        if let Err(e) = self.inner.revoke(lease).await {
            tracing::debug!(election = %self.name, error = %e, "lease revoke failed; it expires by itself");
        }
        ended
    }

    async fn lead(
        &self,
        lease: i64,
        granted_at: Instant,
        stopped: &mut watch::Receiver<bool>,
        backoff: &mut Backoff,
    ) -> Ended {
        let ttl = self.election.ttl;
        let leases = self.inner.client.lease_client();
        let keep_alive = self.inner.call(|| {
            let mut leases = leases.clone();
            async move { leases.keep_alive(lease).await }
        });
        let (mut keeper, mut acks) = match keep_alive.await {
            Ok(pair) => pair,
            Err(e) => return Ended::Lost(e),
        };
        // Not bounded by the request timeout: it returns when we win.
        let mut elections = self.inner.client.election_client();
        let campaign =
            elections.campaign(self.name.clone(), self.election.candidate.clone(), lease);
        tokio::pin!(campaign);
        let mut elected = false;
        let mut proven_at = granted_at;
        let mut sent_at = granted_at;
        let mut ticks = tokio::time::interval(self.election.keepalive);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let lost = |what: String| Ended::Lost(Error::Unavailable { what, source: None });
        loop {
            tokio::select! {
                _ = stopped.changed() => return Ended::Stopped,
                won = &mut campaign, if !elected => match won {
                    Ok(_) => {
                        elected = true;
                        backoff.reset();
                        self.set_leads_until(Some(proven_at + ttl));
                        tracing::info!(election = %self.name, candidate = %self.election.candidate, "elected leader");
                    }
                    Err(e) => return Ended::Lost(Error::unavailable(format!("etcd at {}", self.inner.endpoints), e)),
                },
                _ = ticks.tick() => {
                    if proven_at.elapsed() >= ttl {
                        return lost(format!("no keep-alive answer for {:?}", proven_at.elapsed()));
                    }
                    sent_at = Instant::now();
                    if let Err(e) = keeper.keep_alive().await {
                        return lost(format!("keep-alive failed: {e}"));
                    }
                }
                ack = acks.message() => match ack {
                    Ok(Some(ack)) if ack.ttl() > 0 => {
                        proven_at = sent_at;
                        if elected {
                            self.set_leads_until(Some(proven_at + ttl));
                        }
                    }
                    Ok(Some(_)) => return lost("the election lease expired".into()),
                    Ok(None) => return lost("the keep-alive stream ended".into()),
                    Err(e) => return Ended::Lost(Error::unavailable(format!("etcd at {}", self.inner.endpoints), e)),
                },
            }
        }
    }
}

/// Starts campaigning in `election`.
pub(super) fn campaign(inner: Arc<Inner>, election: Election) -> Result<Arc<dyn Leadership>> {
    Ok(Arc::new(EtcdLeadership::start(inner, election)))
}
