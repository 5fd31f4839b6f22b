//! One node's registration on etcd: the lease, its keep-alive, and the loop
//! that gets the node registered again after anything goes wrong.
//!
//! The loop never gives up (tooz and kratos members silently vanish after a
//! lease loss): a failed keep-alive, an expired or revoked lease, a deleted
//! liveness key, an etcd restart or wipe all lead to the same path — grant a
//! new lease and put both keys again, retrying with capped backoff until etcd
//! answers.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use etcd_client::{
    Compare, CompareOp, EventType, PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::keys::{AliveValue, Kind};
use super::{encode, etcd_code, Inner, CAS_ATTEMPTS};
use crate::error::{Error, Result};
use crate::servicegroup::backoff::Backoff;
use crate::servicegroup::status::StatusCell;
use crate::servicegroup::{rfc3339, Membership, MembershipStatus, Registration, ServiceRecord};

/// Registers `reg` and starts keeping it registered.
pub(super) async fn join(inner: Arc<Inner>, reg: Registration) -> Result<EtcdMembership> {
    let down_time = reg.effective_down_time();
    let session = Arc::new(Session {
        record_key: inner.layout.key(Kind::Record, &reg.topic, &reg.host),
        alive_key: inner.layout.key(Kind::Alive, &reg.topic, &reg.host),
        ttl: ttl_secs(down_time),
        down_time,
        token: rand::random(),
        status: StatusCell::registered(format!("{}/{}", reg.topic, reg.host)),
        lease: AtomicI64::new(0),
        inner,
        reg,
    });
    let revision = session.register(None).await?;
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(session.clone().run(revision, stopped));
    Ok(EtcdMembership {
        session,
        stop,
        task: Mutex::new(Some(task)),
    })
}

/// The lease TTL for a down time: whole seconds, rounded up, at least 1.
pub(super) fn ttl_secs(down_time: Duration) -> i64 {
    let secs = down_time.as_secs() + u64::from(down_time.subsec_nanos() > 0);
    i64::try_from(secs.max(1)).unwrap_or(i64::MAX)
}

struct Session {
    inner: Arc<Inner>,
    reg: Registration,
    record_key: String,
    alive_key: String,
    ttl: i64,
    down_time: Duration,
    token: u64,
    status: StatusCell,
    /// The lease currently holding the liveness key.
    lease: AtomicI64,
}

/// Why keeping a lease alive stopped.
enum Ended {
    Stopped,
    Lost(Error),
}

impl Session {
    /// Grants a lease and claims the liveness key with it; returns the
    /// revision of the claim. `previous` is our own earlier lease, which may
    /// still hold the key (after an etcd restart, say).
    async fn register(&self, previous: Option<i64>) -> Result<i64> {
        let leases = self.inner.client.lease_client();
        let ttl = self.ttl;
        let lease = self
            .inner
            .call(|| {
                let mut leases = leases.clone();
                async move { leases.grant(ttl, None).await }
            })
            .await?
            .id();
        match self.claim(lease, previous).await {
            Ok(revision) => {
                self.lease.store(lease, Ordering::SeqCst);
                Ok(revision)
            }
            Err(e) => {
                self.revoke_later(lease);
                Err(e)
            }
        }
    }

    async fn claim(&self, lease: i64, previous: Option<i64>) -> Result<i64> {
        let alive = encode(&AliveValue {
            pid: std::process::id(),
            lease: format!("{lease:x}"),
            since: rfc3339(SystemTime::now()),
            token: self.token,
        })?;
        // The liveness key's mod revision when it is ours to take back.
        let mut ours: Option<i64> = None;
        for _ in 0..CAS_ATTEMPTS {
            let found = self.inner.get(&self.record_key, None).await?;
            let now = SystemTime::now();
            let (record, record_rev) = match found.kvs().first() {
                Some(kv) => match serde_json::from_slice::<ServiceRecord>(kv.value()) {
                    Ok(mut record) => {
                        self.reg.refresh_record(&mut record, now);
                        (record, kv.mod_revision())
                    }
                    Err(_) => (self.reg.to_record(now), kv.mod_revision()),
                },
                None => (self.reg.to_record(now), 0),
            };
            let alive_guard = match ours {
                None => Compare::create_revision(self.alive_key.as_str(), CompareOp::Equal, 0),
                Some(rev) => Compare::mod_revision(self.alive_key.as_str(), CompareOp::Equal, rev),
            };
            let txn = Txn::new()
                .when([
                    alive_guard,
                    Compare::mod_revision(self.record_key.as_str(), CompareOp::Equal, record_rev),
                ])
                .and_then([
                    TxnOp::put(
                        self.alive_key.as_str(),
                        alive.clone(),
                        Some(PutOptions::new().with_lease(lease)),
                    ),
                    TxnOp::put(self.record_key.as_str(), encode(&record)?, None),
                ])
                .or_else([TxnOp::get(self.alive_key.as_str(), None)]);
            let resp = self.inner.txn(txn).await?;
            if resp.succeeded() {
                return Ok(resp.header().map_or(0, |h| h.revision()));
            }
            let holder = match resp.op_responses().first() {
                Some(TxnOpResponse::Get(get)) => get.kvs().first().cloned(),
                _ => None,
            };
            // Absent: only the record raced (an operator's change); retry.
            let Some(holder) = holder else {
                ours = None;
                continue;
            };
            let value = serde_json::from_slice::<AliveValue>(holder.value()).ok();
            let mine = value.as_ref().is_some_and(|v| v.token == self.token)
                || previous.is_some_and(|p| p == holder.lease());
            if !mine {
                let who = value.map_or_else(
                    || format!("lease {:x}", holder.lease()),
                    |v| format!("pid {} (lease {}, since {})", v.pid, v.lease, v.since),
                );
                return Err(Error::Duplicate {
                    member: format!("{}/{}", self.reg.topic, self.reg.host),
                    holder: format!("{who} holds {}", self.alive_key),
                });
            }
            ours = Some(holder.mod_revision());
        }
        Err(Error::registry_msg(format!(
            "{} kept changing concurrently; registration not applied",
            self.record_key
        )))
    }

    /// Revokes a lease we no longer use, without holding anyone up; if etcd
    /// is unreachable the lease expires by itself.
    fn revoke_later(&self, lease: i64) {
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let _ = inner.revoke(lease).await;
        });
    }

    async fn run(self: Arc<Self>, mut revision: i64, mut stop: watch::Receiver<bool>) {
        let mut backoff = Backoff::new(self.inner.backoff_max);
        loop {
            let lease = self.lease.load(Ordering::SeqCst);
            match self.keep(lease, revision, &mut stop).await {
                Ended::Stopped => return,
                Ended::Lost(e) => self.status.failed(&e),
            }
            loop {
                tokio::select! {
                    () = tokio::time::sleep(backoff.next_delay()) => {}
                    _ = stop.changed() => return,
                }
                match self.register(Some(lease)).await {
                    Ok(rev) => {
                        revision = rev;
                        backoff.reset();
                        self.status.reregistered();
                        // After the new lease holds the key, so that revoking
                        // the old one cannot delete it.
                        self.revoke_later(lease);
                        break;
                    }
                    Err(e) => self.status.failed(&e),
                }
            }
        }
    }

    /// Keeps `lease` alive and watches our liveness key until either fails.
    async fn keep(&self, lease: i64, revision: i64, stop: &mut watch::Receiver<bool>) -> Ended {
        let inner = &self.inner;
        let leases = inner.client.lease_client();
        let keep_alive = inner.call(|| {
            let mut leases = leases.clone();
            async move { leases.keep_alive(lease).await }
        });
        let (mut keeper, mut acks) = match keep_alive.await {
            Ok(pair) => pair,
            Err(e) => return Ended::Lost(e),
        };
        let watches = inner.client.watch_client();
        let from = WatchOptions::new().with_start_revision(revision + 1);
        let watch = inner.call(|| {
            let (mut watches, from) = (watches.clone(), from.clone());
            let key = self.alive_key.clone();
            async move { watches.watch(key, Some(from)).await }
        });
        let mut changes = match watch.await {
            Ok(stream) => stream,
            Err(e) => return Ended::Lost(e),
        };
        self.status.beat();
        let mut ticks = tokio::time::interval(self.reg.report_interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        let mut last_ack = Instant::now();
        let lost = |what: String| Ended::Lost(Error::Unavailable { what, source: None });
        loop {
            tokio::select! {
                _ = stop.changed() => return Ended::Stopped,
                _ = ticks.tick() => {
                    // Past the TTL without an answer, the lease is gone.
                    if last_ack.elapsed() >= self.down_time {
                        return lost(format!("no keep-alive answer for {:?}", last_ack.elapsed()));
                    }
                    if let Err(e) = keeper.keep_alive().await {
                        return lost(format!("keep-alive failed: {e}"));
                    }
                }
                ack = acks.message() => match ack {
                    Ok(Some(ack)) if ack.ttl() > 0 => {
                        last_ack = Instant::now();
                        self.status.beat();
                    }
                    Ok(Some(_)) => return lost(format!("lease {lease:x} expired")),
                    Ok(None) => return lost("keep-alive stream closed".into()),
                    Err(e) => return lost(format!("keep-alive stream failed: {e}")),
                },
                change = changes.message() => match change {
                    Ok(Some(resp)) if resp.canceled() => {
                        return lost(format!("watch on the liveness key canceled: {}", resp.cancel_reason()));
                    }
                    Ok(Some(resp)) => {
                        if resp.events().iter().any(|e| e.event_type() == EventType::Delete) {
                            return lost("liveness key deleted".into());
                        }
                    }
                    Ok(None) => return lost("liveness watch closed".into()),
                    Err(e) => return lost(format!("liveness watch failed: {e}")),
                },
            }
        }
    }
}

/// A node registered on etcd.
pub(super) struct EtcdMembership {
    session: Arc<Session>,
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Membership for EtcdMembership {
    fn status(&self) -> MembershipStatus {
        self.session.status.snapshot()
    }

    fn leave(&self) -> BoxFuture<'_, Result<()>> {
        async move {
            let _ = self.stop.send(true);
            let task = crate::servicegroup::lock(&self.task).take();
            if let Some(task) = task {
                // A registration in flight finishes first, so the lease read
                // below is the one that holds the key.
                let _ = task.await;
            }
            self.session.status.left();
            let s = &self.session;
            let lease = s.lease.load(Ordering::SeqCst);
            // Only our own key: another node may have claimed the identity.
            s.inner
                .txn(
                    Txn::new()
                        .when([Compare::lease(
                            s.alive_key.as_str(),
                            CompareOp::Equal,
                            lease,
                        )])
                        .and_then([TxnOp::delete(s.alive_key.as_str(), None)]),
                )
                .await?;
            match s.inner.revoke(lease).await {
                Ok(_) => Ok(()),
                // Already expired or revoked: nothing left to release.
                Err(e) if etcd_code(&e) == Some(tonic::Code::NotFound) => Ok(()),
                Err(e) => Err(e),
            }
        }
        .boxed()
    }
}

impl Drop for EtcdMembership {
    fn drop(&mut self) {
        // Like a crash: heartbeats stop and the lease expires by its TTL.
        if let Some(task) = crate::servicegroup::lock(&self.task).take() {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::servicegroup::Registration;

    fn registration(report: Duration, down: Duration) -> Registration {
        Registration {
            topic: "t".into(),
            host: "h".into(),
            binary: "b".into(),
            version: "1".into(),
            endpoints: Default::default(),
            services: vec![],
            workers: 1,
            report_interval: report,
            service_down_time: down,
        }
    }

    #[test]
    fn lease_ttl_follows_the_effective_down_time() {
        let ms = Duration::from_millis;
        // nova's defaults: report every 10 s, down after 60 s.
        let defaults = registration(Duration::from_secs(10), Duration::from_secs(60));
        assert_eq!(ttl_secs(defaults.effective_down_time()), 60);
        // Down time below 2 x report interval is raised to it.
        let raised = registration(Duration::from_secs(10), Duration::from_secs(15));
        assert_eq!(ttl_secs(raised.effective_down_time()), 20);
        // Fractions round up, and a lease lives at least one second.
        assert_eq!(
            ttl_secs(registration(ms(200), ms(1500)).effective_down_time()),
            2
        );
        assert_eq!(
            ttl_secs(registration(ms(100), ms(300)).effective_down_time()),
            1
        );
        assert_eq!(ttl_secs(Duration::ZERO), 1);
    }
}
