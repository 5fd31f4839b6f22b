//! One node's registration on etcd: the lease, its keep-alive, and the loop
//! that gets the node registered again after anything goes wrong.
//!
//! The loop never gives up (tooz and kratos members silently vanish after a
//! lease loss): a failed keep-alive, an expired or revoked lease, a liveness
//! key deleted or overwritten by hand, a service record deleted by hand, an
//! etcd restart or wipe all lead to the same path — grant a new lease and put
//! both keys again, retrying with capped backoff until etcd answers. A panic
//! in the loop is logged, counted, and followed by that same path.
//!
//! A (topic, host) held by another lease is taken over at once when its
//! holder does not answer SERVING on its advertised endpoint (a crashed node
//! restarted under systemd or Kubernetes); a live holder is a duplicate.

use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{Compare, CompareOp, EventType, Txn, TxnOp, WatchOptions};
use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use std::panic::AssertUnwindSafe;

use super::keys::Kind;
use super::{etcd_code, Inner};
use crate::error::{Error, Result};
use crate::servicegroup::backoff::Backoff;
use crate::servicegroup::follow::restarted;
use crate::servicegroup::status::StatusCell;
use crate::servicegroup::{Membership, MembershipStatus, Registration, LEAVE_TIMEOUT};

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
        workers: AtomicU32::new(reg.workers),
        inner,
        reg,
    });
    let revision = session.register(None).await?;
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(session.clone().supervise(revision, stopped));
    Ok(EtcdMembership {
        session,
        stop,
        task: Mutex::new(Some(task)),
    })
}

/// How often a lease is kept alive: every `report_interval`, but at most
/// 2.5 times per TTL. etcd's own client renews at a third of the TTL; at
/// 0.4 of it one lost keep-alive still leaves a fifth of the TTL for the
/// next one, and crash detection stays the TTL. At the defaults (1 s, 5 s)
/// a fleet of N nodes costs etcd N / 2 keep-alives per second, not N.
pub(super) fn keepalive_interval(report_interval: Duration, down_time: Duration) -> Duration {
    report_interval.max(down_time.mul_f64(0.4))
}

/// The lease TTL for a down time: whole seconds, rounded up, at least 1.
pub(super) fn ttl_secs(down_time: Duration) -> i64 {
    let secs = down_time.as_secs() + u64::from(down_time.subsec_nanos() > 0);
    i64::try_from(secs.max(1)).unwrap_or(i64::MAX)
}

mod claim;

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
    /// The record's `workers`, changed by [`Membership::set_workers`].
    workers: AtomicU32,
}

/// Why keeping a lease alive stopped.
enum Ended {
    Stopped,
    Lost(Error),
}

impl Session {
    /// The registration as it stands now (its worker count may change).
    fn registration(&self) -> Registration {
        let mut reg = self.reg.clone();
        reg.workers = self.workers.load(Ordering::SeqCst);
        reg
    }

    /// Runs the registration loop until told to stop; a panic in it is
    /// logged, counted, and followed by a fresh registration rather than a
    /// node that silently stopped heartbeating.
    async fn supervise(self: Arc<Self>, revision: i64, stop: watch::Receiver<bool>) {
        let mut start = Some(revision);
        loop {
            let run = self.clone().run(start.take(), stop.clone());
            match AssertUnwindSafe(run).catch_unwind().await {
                Ok(()) => return,
                Err(_) => {
                    restarted("registration", &self.status.name());
                    self.status.failed(&"the registration loop panicked");
                }
            }
        }
    }

    /// Keeps the node registered; `revision` is that of a registration just
    /// made, `None` to register first.
    async fn run(self: Arc<Self>, revision: Option<i64>, mut stop: watch::Receiver<bool>) {
        let mut backoff = Backoff::new(self.inner.backoff_max);
        let mut revision = revision;
        loop {
            let lease = self.lease.load(Ordering::SeqCst);
            let mut spread = false;
            if let Some(rev) = revision.take() {
                match self.keep(lease, rev, &mut stop).await {
                    Ended::Stopped => return,
                    Ended::Lost(e) => {
                        // A fault on our own keys is one node's: it heals at
                        // once. Anything else (a lost stream, an expired
                        // lease) may hit every node of the fleet at the same
                        // moment, an etcd restart or leader loss: their
                        // re-registrations are spread over a keep-alive
                        // interval, which a lease still alive outlasts.
                        spread = !matches!(e, Error::Registry { .. });
                        self.status.failed(&e);
                    }
                }
            }
            if spread {
                let window = keepalive_interval(self.reg.report_interval, self.down_time);
                let jitter = window.mul_f64(rand::random::<f64>());
                tokio::select! {
                    () = tokio::time::sleep(jitter) => {}
                    _ = stop.changed() => return,
                }
                // The lease outlives a lost stream, an etcd leader change
                // and an etcd restart: while it holds our keys, the node
                // needs new streams, not a new registration (a lease grant
                // and two writes per node, in a storm).
                if let Some(rev) = self.resume(lease).await {
                    revision = Some(rev);
                    self.status.reregistered();
                    continue;
                }
            }
            // Register again, retrying until etcd lets us. The first try
            // follows at once (a hand-made fault, a key deleted or
            // overwritten, heals at once), then retries back off.
            let mut first = true;
            loop {
                if !first {
                    tokio::select! {
                        () = backoff.wait() => {}
                        _ = stop.changed() => return,
                    }
                }
                first = false;
                if *stop.borrow() {
                    return;
                }
                match self.register(Some(lease)).await {
                    Ok(rev) => {
                        revision = Some(rev);
                        backoff.reset();
                        self.status.reregistered();
                        // After the new lease holds the key, so that revoking
                        // the old one cannot delete it.
                        if lease != 0 && lease != self.lease.load(Ordering::SeqCst) {
                            self.revoke_later(lease);
                        }
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
        // The record on the same stream: deleted by hand, it is written again.
        if let Err(e) = changes.watch(self.record_key.as_str(), Some(from)).await {
            return Ended::Lost(Error::unavailable("watching the service record", e));
        }
        self.status.beat(None);
        let mut ticks =
            tokio::time::interval(keepalive_interval(self.reg.report_interval, self.down_time));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        let mut last_ack = Instant::now();
        // When the keep-alive now awaited was sent.
        let mut sent: Option<Instant> = None;
        let lost = |what: String| Ended::Lost(Error::Unavailable { what, source: None });
        let broke = |what: &str, e: etcd_client::Error| Ended::Lost(Error::unavailable(what, e));
        loop {
            tokio::select! {
                _ = stop.changed() => return Ended::Stopped,
                _ = ticks.tick() => {
                    // Past the TTL without an answer, the lease is gone.
                    if last_ack.elapsed() >= self.down_time {
                        return lost(format!("no keep-alive answer for {:?}", last_ack.elapsed()));
                    }
                    if let Err(e) = keeper.keep_alive().await {
                        return broke("keep-alive failed", e);
                    }
                    sent = Some(Instant::now());
                }
                ack = acks.message() => match ack {
                    Ok(Some(ack)) if ack.ttl() > 0 => {
                        last_ack = Instant::now();
                        self.status.beat(sent.take().map(|at| at.elapsed()));
                    }
                    Ok(Some(_)) => return lost(format!("lease {lease:x} expired or was revoked")),
                    Ok(None) => return lost("keep-alive stream closed".into()),
                    Err(e) => return broke("keep-alive stream failed", e),
                },
                change = changes.message() => match change {
                    Ok(Some(resp)) if resp.canceled() => {
                        return lost(format!("watch on our keys canceled: {}", resp.cancel_reason()));
                    }
                    Ok(Some(resp)) => {
                        if let Some(why) = self.foreign_change(&resp, lease) {
                            // A change by hand, not an outage.
                            return Ended::Lost(Error::registry_msg(why));
                        }
                    }
                    Ok(None) => return lost("watch on our keys closed".into()),
                    Err(e) => return broke("watch on our keys failed", e),
                },
            }
        }
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
            let abort = task.as_ref().map(JoinHandle::abort_handle);
            let leaving = async {
                if let Some(task) = task {
                    // A registration in flight finishes first, so the lease
                    // read below is the one that holds the key.
                    let _ = task.await;
                }
                self.session.status.left();
                self.session.release().await
            };
            match tokio::time::timeout(LEAVE_TIMEOUT, leaving).await {
                Ok(result) => result,
                Err(elapsed) => {
                    // Nothing may register again after leave returns.
                    if let Some(abort) = abort {
                        abort.abort();
                    }
                    self.session.status.left();
                    Err(Error::unavailable(
                        format!(
                            "leaving {}: etcd did not answer within {LEAVE_TIMEOUT:?}; \
                             the lease expires by itself",
                            self.session.status.name()
                        ),
                        elapsed,
                    ))
                }
            }
        }
        .boxed()
    }

    fn set_workers(&self, workers: u32) -> BoxFuture<'_, Result<()>> {
        async move {
            self.session.workers.store(workers, Ordering::SeqCst);
            let (topic, host) = (&self.session.reg.topic, &self.session.reg.host);
            self.session
                .inner
                .update_record(topic, host, &|record| record.workers = workers)
                .await
                .map(drop)
        }
        .boxed()
    }
}

impl Session {
    /// Whether the registration on `lease` still stands after a lost
    /// stream: the lease alive, our liveness key bound to it, our record
    /// present. Returns the revision to watch from. Reads only.
    async fn resume(&self, lease: i64) -> Option<i64> {
        if lease == 0 {
            return None;
        }
        let leases = self.inner.client.lease_client();
        let ttl = self
            .inner
            .call(|| {
                let mut leases = leases.clone();
                async move { leases.time_to_live(lease, None).await }
            })
            .await
            .ok()?;
        if ttl.ttl() <= 0 {
            return None;
        }
        let keys = Txn::new().and_then([
            TxnOp::get(self.alive_key.as_str(), None),
            TxnOp::get(self.record_key.as_str(), None),
        ]);
        let resp = self.inner.txn(keys).await.ok()?;
        let ours = match resp.op_responses().as_slice() {
            [etcd_client::TxnOpResponse::Get(alive), etcd_client::TxnOpResponse::Get(record)] => {
                alive.kvs().first().is_some_and(|kv| kv.lease() == lease)
                    && !record.kvs().is_empty()
            }
            _ => false,
        };
        ours.then(|| resp.header().map_or(0, |h| h.revision()))
    }

    /// Deletes our liveness key and revokes our lease.
    async fn release(&self) -> Result<()> {
        let lease = self.lease.load(Ordering::SeqCst);
        // Only our own key: another node may have claimed the identity.
        self.inner
            .txn(
                Txn::new()
                    .when([Compare::lease(
                        self.alive_key.as_str(),
                        CompareOp::Equal,
                        lease,
                    )])
                    .and_then([TxnOp::delete(self.alive_key.as_str(), None)]),
            )
            .await?;
        match self.inner.revoke(lease).await {
            Ok(_) => Ok(()),
            // Already expired or revoked: nothing left to release.
            Err(e) if etcd_code(&e) == Some(tonic::Code::NotFound) => Ok(()),
            Err(e) => Err(e),
        }
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
    fn keep_alives_go_at_most_two_and_a_half_times_per_ttl() {
        let s = Duration::from_secs;
        // The defaults: half a request per node per second.
        assert_eq!(keepalive_interval(s(1), s(5)), s(2));
        // A slower heartbeat asked for is kept.
        assert_eq!(keepalive_interval(s(10), s(60)), s(24));
        assert_eq!(keepalive_interval(s(30), s(60)), s(30));
        // The tests' quick settings.
        let ms = Duration::from_millis;
        assert_eq!(keepalive_interval(ms(200), s(1)), ms(400));
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
