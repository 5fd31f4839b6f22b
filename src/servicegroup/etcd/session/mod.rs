//! One node's registration on etcd: its two keys on the process's lease,
//! and the loop that gets the node registered again after anything goes
//! wrong.
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
use std::time::Duration;

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use std::panic::AssertUnwindSafe;

use super::keys::Kind;
use super::lease::{keepalive_interval, ttl_secs, LeaseUse, SharedLease};
use super::Inner;
use crate::error::{Error, Result};
use crate::servicegroup::backoff::Backoff;
use crate::servicegroup::status::StatusCell;
use crate::servicegroup::{Membership, MembershipStatus, Registration, LEAVE_TIMEOUT};

/// Registers `reg` and starts keeping it registered.
pub(super) async fn join(inner: Arc<Inner>, reg: Registration) -> Result<EtcdMembership> {
    let down_time = reg.effective_down_time();
    let interval = keepalive_interval(reg.report_interval, down_time);
    let shared = SharedLease::acquire(&inner, ttl_secs(down_time), interval);
    let session = Arc::new(Session {
        record_key: inner
            .layout
            .key(Kind::Record, &reg.advert.topic, &reg.advert.host),
        alive_key: inner
            .layout
            .key(Kind::Alive, &reg.advert.topic, &reg.advert.host),
        interval,
        token: rand::random(),
        status: StatusCell::registered(format!("{}/{}", reg.advert.topic, reg.advert.host)),
        lease: AtomicI64::new(0),
        workers: AtomicU32::new(reg.workers),
        shared,
        inner,
        reg,
    });
    // A lease carried on from the process this one replaced in place
    // holds our keys: they are ours to take back, not a duplicate's.
    let revision = session.register(session.shared.inherited()).await?;
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(session.clone().supervise(revision, stopped));
    Ok(EtcdMembership {
        session,
        stop,
        task: Mutex::new(Some(task)),
    })
}

mod claim;
mod keep;

struct Session {
    inner: Arc<Inner>,
    reg: Registration,
    record_key: String,
    alive_key: String,
    /// The keep-alive interval: the window re-registrations spread over.
    interval: Duration,
    token: u64,
    status: StatusCell,
    /// The process's lease, shared with its other registrations.
    shared: LeaseUse,
    /// The lease holding the liveness key, once claimed.
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
                    self.inner
                        .figures
                        .restarted("registration", &self.status.name());
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
                        spread = e.kind() != crate::ErrorKind::Registry;
                        self.status.failed(&e);
                    }
                }
            }
            if spread {
                let jitter = crate::servicegroup::backoff::spread(self.interval);
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
            // overwritten, heals at once), then retries back off; but a
            // lease the keeper grants meanwhile says etcd answers again (a
            // partition healed), and the next try follows at once: the
            // keeper's grants are spread over the interval already.
            let mut first = true;
            let mut leases = self.shared.subscribe();
            loop {
                if !first {
                    let held = leases.borrow_and_update().id;
                    tokio::select! {
                        () = backoff.wait() => {}
                        _ = leases.wait_for(|s| s.id != 0 && s.id != held) => {}
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
                        break;
                    }
                    Err(e) => self.status.failed(&e),
                }
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
            let task = crate::sync::lock(&self.task).take();
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
            let (topic, host) = (
                &self.session.reg.advert.topic,
                &self.session.reg.advert.host,
            );
            self.session
                .inner
                .update_record(topic, host, &|record| record.workers = workers)
                .await
                .map(drop)
        }
        .boxed()
    }

    fn session(&self) -> Option<String> {
        let lease = self.session.lease.load(Ordering::SeqCst);
        (lease != 0).then(|| super::lease::handover(self.session.shared.ttl(), lease))
    }
}

impl Session {
    /// Whether the registration on `lease` still stands after a lost
    /// stream: the lease alive, our liveness key bound to it, our record
    /// present. Returns the revision to watch from. Reads only.
    async fn resume(&self, lease: i64) -> Option<i64> {
        // The lease keeper finds out whether the lease lives on; while it
        // does, it stays the current one.
        if lease == 0 || self.shared.current().await.ok()? != lease {
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

    /// Deletes our liveness key; the last user of the process's lease
    /// also revokes it.
    async fn release(&self) -> Result<()> {
        self.delete_alive_key().await?;
        self.shared.release().await
    }

    /// Deletes our liveness key, if our lease still holds it: another node
    /// may have claimed the identity.
    async fn delete_alive_key(&self) -> Result<()> {
        let lease = self.lease.load(Ordering::SeqCst);
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
            .await
            .map(drop)
    }
}

impl Drop for EtcdMembership {
    fn drop(&mut self) {
        // Like a crash: heartbeats stop and the lease expires by its TTL.
        // A lease the process still uses for other keys does not expire,
        // so this registration's key is deleted instead.
        if let Some(task) = crate::sync::lock(&self.task).take() {
            task.abort();
            let runtime = tokio::runtime::Handle::try_current();
            if let (true, Ok(runtime)) = (self.session.shared.users() > 1, runtime) {
                let session = self.session.clone();
                runtime.spawn(async move {
                    let _ = session.delete_alive_key().await;
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::servicegroup::Registration;

    fn registration(report: Duration, down: Duration) -> Registration {
        Registration {
            advert: crate::servicegroup::Advert {
                topic: "t".into(),
                host: "h".into(),
                binary: "b".into(),
                version: "1".into(),
                endpoints: Default::default(),
                services: vec![],
            },
            workers: 1,
            report_interval: report,
            service_down_time: down,
            resume: None,
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
