//! One lease per process: every registration and election made through one
//! driver shares a lease of its TTL, kept alive by one stream. A node that
//! serves three topics and leads two periodic tasks costs etcd one
//! keep-alive per interval, not five; and a crash takes all of its keys
//! with it at the same moment.
//!
//! The keeper grants the lease when first used, renews it, and after a
//! lost stream first asks etcd whether the lease still lives (it outlives
//! a leader change and an etcd restart) before granting a new one. Users
//! follow its [`LeaseState`]: a new lease id means their keys went with
//! the old one and must be claimed again.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::Inner;
use crate::error::{Error, Result};
use crate::servicegroup::backoff::Backoff;
use crate::servicegroup::follow::restarted;

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

/// The shared leases of one driver, by TTL in seconds.
#[derive(Default)]
pub(super) struct Leases {
    by_ttl: Mutex<HashMap<i64, Weak<SharedLease>>>,
}

impl Leases {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Weak<SharedLease>>> {
        self.by_ttl.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What users of a lease see of it.
#[derive(Debug, Clone, Copy)]
pub(super) struct LeaseState {
    /// The lease now held; 0 while none is granted.
    pub(super) id: i64,
    /// When the last answered keep-alive (or the grant) was sent: the
    /// lease lives at least until then + its TTL.
    pub(super) proven_at: Instant,
    /// Keep-alives answered on this lease so far.
    pub(super) acks: u64,
    /// The round trip of the last answered keep-alive.
    pub(super) rtt: Option<Duration>,
}

/// A lease shared by the registrations and elections of one process.
pub(super) struct SharedLease {
    inner: Arc<Inner>,
    ttl: i64,
    /// Its [`LeaseUse`]s not yet released; changed under the map's lock.
    users: AtomicUsize,
    state: Arc<watch::Sender<LeaseState>>,
    /// A lease a user found gone (a write refused for it): replaced at once.
    gone: Arc<watch::Sender<i64>>,
    /// The shortest keep-alive interval any user asked for, in ms.
    interval_ms: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl SharedLease {
    /// A use of the driver's lease of `ttl` seconds, started on first
    /// use; renewed at least every `interval`.
    pub(super) fn acquire(inner: &Arc<Inner>, ttl: i64, interval: Duration) -> LeaseUse {
        let interval_ms = u64::try_from(interval.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let mut map = inner.leases.map();
        if let Some(shared) = map.get(&ttl).and_then(Weak::upgrade) {
            shared.interval_ms.fetch_min(interval_ms, Ordering::SeqCst);
            shared.users.fetch_add(1, Ordering::SeqCst);
            return LeaseUse {
                shared,
                released: AtomicBool::new(false),
            };
        }
        let (state, _) = watch::channel(LeaseState {
            id: 0,
            proven_at: Instant::now(),
            acks: 0,
            rtt: None,
        });
        let state = Arc::new(state);
        let gone = Arc::new(watch::channel(0).0);
        let interval_ms = Arc::new(AtomicU64::new(interval_ms));
        let keeper = Keeper {
            inner: inner.clone(),
            ttl,
            state: state.clone(),
            gone: gone.subscribe(),
            interval_ms: interval_ms.clone(),
        };
        let shared = Arc::new(SharedLease {
            inner: inner.clone(),
            ttl,
            users: AtomicUsize::new(1),
            state,
            gone,
            interval_ms,
            task: tokio::spawn(keeper.supervise()),
        });
        map.insert(ttl, Arc::downgrade(&shared));
        LeaseUse {
            shared,
            released: AtomicBool::new(false),
        }
    }

    /// Uses not yet released.
    pub(super) fn users(&self) -> usize {
        self.users.load(Ordering::SeqCst)
    }

    /// Ends one use; true for the last, which also forgets the lease so
    /// that the next user starts another.
    fn end_use(&self) -> bool {
        let mut map = self.inner.leases.map();
        let last = self.users.fetch_sub(1, Ordering::SeqCst) == 1;
        if last {
            map.remove(&self.ttl);
        }
        last
    }

    /// Follows the lease's state.
    pub(super) fn subscribe(&self) -> watch::Receiver<LeaseState> {
        self.state.subscribe()
    }

    /// The lease now held, waiting for a grant within the request timeout.
    pub(super) async fn current(&self) -> Result<i64> {
        self.granted(0).await
    }

    /// The lease that replaced `old`, once granted (within the request
    /// timeout).
    pub(super) async fn replaced(&self, old: i64) -> Result<i64> {
        self.granted(old).await
    }

    /// The first lease held other than `old` (0: any).
    async fn granted(&self, old: i64) -> Result<i64> {
        let mut state = self.subscribe();
        let granted = async {
            state
                .wait_for(|s| s.id != 0 && s.id != old)
                .await
                .map(|s| s.id)
        };
        match tokio::time::timeout(self.inner.timeout, granted).await {
            Ok(Ok(id)) => Ok(id),
            Ok(Err(_)) => Err(Error::registry_msg("the lease keeper stopped")),
            Err(elapsed) => Err(Error::unavailable(
                format!(
                    "no lease granted by etcd at {} within {:?}",
                    self.inner.endpoints, self.inner.timeout
                ),
                elapsed,
            )),
        }
    }

    /// Tells the keeper that etcd refused a write for `lease`, as a lease
    /// it does not know: a new one is granted without waiting for the
    /// next keep-alive to find out.
    pub(super) fn gone(&self, lease: i64) {
        self.gone.send_replace(lease);
    }
}

impl Drop for SharedLease {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One registration's or election's use of the process's lease.
pub(super) struct LeaseUse {
    shared: Arc<SharedLease>,
    released: AtomicBool,
}

impl std::ops::Deref for LeaseUse {
    type Target = SharedLease;

    fn deref(&self) -> &SharedLease {
        &self.shared
    }
}

impl LeaseUse {
    /// Gives up this use of the lease. The last user revokes it, so that
    /// every key still bound to it goes at once; the others leave it be.
    pub(super) async fn release(&self) -> Result<()> {
        if self.released.swap(true, Ordering::SeqCst) || !self.shared.end_use() {
            return Ok(());
        }
        self.shared.task.abort();
        let lease = self.shared.state.borrow().id;
        if lease == 0 {
            return Ok(());
        }
        match self.shared.inner.revoke(lease).await {
            // Already expired or revoked: nothing left to release.
            Err(e) if super::etcd_code(&e) == Some(tonic::Code::NotFound) => Ok(()),
            other => other,
        }
    }
}

impl Drop for LeaseUse {
    fn drop(&mut self) {
        // The last use dropped unreleased is a crash: renewals stop and the
        // lease expires by its TTL.
        if !self.released.swap(true, Ordering::SeqCst) && self.shared.end_use() {
            self.shared.task.abort();
        }
    }
}

/// The task that grants and renews one shared lease.
struct Keeper {
    inner: Arc<Inner>,
    ttl: i64,
    state: Arc<watch::Sender<LeaseState>>,
    gone: watch::Receiver<i64>,
    interval_ms: Arc<AtomicU64>,
}

/// Why renewing stopped.
enum Stopped {
    /// etcd says the lease is gone: grant another.
    Expired(String),
    /// The stream broke: the lease may well live on.
    Broken(Error),
}

impl Keeper {
    fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms.load(Ordering::SeqCst))
    }

    fn ttl(&self) -> Duration {
        Duration::from_secs(u64::try_from(self.ttl).unwrap_or(1))
    }

    /// Keeps a lease forever; a panic is logged, counted, and followed by a
    /// new lease (its users claim their keys again), never by users left
    /// waiting on a keeper that is gone.
    async fn supervise(mut self) {
        loop {
            if AssertUnwindSafe(self.run()).catch_unwind().await.is_ok() {
                return;
            }
            restarted("lease keeper", &"the lease keeper panicked");
            self.state.send_modify(|s| s.id = 0);
        }
    }

    async fn run(&mut self) {
        let mut backoff = Backoff::new(self.inner.backoff_max);
        let mut lease = 0;
        loop {
            if lease == 0 {
                match self.grant().await {
                    Ok(id) => {
                        lease = id;
                        backoff.reset();
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot get a lease from etcd; trying again");
                        backoff.wait().await;
                        continue;
                    }
                }
            }
            match self.renew(lease).await {
                Stopped::Expired(why) => {
                    tracing::warn!(lease = %format!("{lease:x}"), "{why}; granting a new lease");
                    self.state.send_modify(|s| s.id = 0);
                    lease = 0;
                }
                Stopped::Broken(e) => {
                    tracing::info!(lease = %format!("{lease:x}"), error = %e, "lease keep-alive interrupted");
                    // A lost stream may be every node's at once (an etcd
                    // restart or leader loss): spread the fleet's return
                    // over an interval, which the lease outlasts.
                    let jitter = self.interval().mul_f64(rand::random::<f64>());
                    tokio::time::sleep(jitter).await;
                    match self.time_to_live(lease).await {
                        Ok(Some(proven_at)) => {
                            backoff.reset();
                            self.state.send_modify(|s| s.proven_at = proven_at);
                        }
                        Ok(None) => {
                            tracing::warn!(lease = %format!("{lease:x}"), "the lease expired; granting a new lease");
                            self.state.send_modify(|s| s.id = 0);
                            lease = 0;
                        }
                        Err(_) => backoff.wait().await,
                    }
                }
            }
        }
    }

    async fn grant(&self) -> Result<i64> {
        let leases = self.inner.client.lease_client();
        let ttl = self.ttl;
        let sent = Instant::now();
        let id = self
            .inner
            .call(|| {
                let mut leases = leases.clone();
                async move { leases.grant(ttl, None).await }
            })
            .await?
            .id();
        self.state.send_modify(|s| {
            *s = LeaseState {
                id,
                proven_at: sent,
                acks: s.acks,
                rtt: None,
            }
        });
        Ok(id)
    }

    /// Whether etcd still holds `lease`, and if so, from when it is
    /// proven alive for a whole TTL.
    async fn time_to_live(&self, lease: i64) -> Result<Option<Instant>> {
        let leases = self.inner.client.lease_client();
        let asked = Instant::now();
        let answer = self
            .inner
            .call(|| {
                let mut leases = leases.clone();
                async move { leases.time_to_live(lease, None).await }
            })
            .await?;
        let left = u64::try_from(answer.ttl()).unwrap_or(0);
        Ok((left > 0).then(|| {
            let lost = self.ttl().saturating_sub(Duration::from_secs(left));
            asked.checked_sub(lost).unwrap_or(asked)
        }))
    }

    /// Keeps `lease` alive until it expires or the stream breaks.
    async fn renew(&mut self, lease: i64) -> Stopped {
        let leases = self.inner.client.lease_client();
        // Opening the stream sends a first keep-alive.
        let mut sent = Some(Instant::now());
        let keep_alive = self.inner.call(|| {
            let mut leases = leases.clone();
            async move { leases.keep_alive(lease).await }
        });
        let (mut keeper, mut acks) = match keep_alive.await {
            Ok(pair) => pair,
            Err(e) => return Stopped::Broken(e),
        };
        let broke =
            |what: &str, e: etcd_client::Error| Stopped::Broken(Error::unavailable(what, e));
        // Silence counts from the later of the last proof and this stream's
        // opening: a stream opened after an outage gets a whole TTL for its
        // first answer, which a loaded cluster may be slow to give.
        let opened = Instant::now();
        let mut next = opened + self.interval();
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(next) => {
                    next = Instant::now() + self.interval();
                    let heard = self.state.borrow().proven_at.max(opened);
                    if heard.elapsed() >= self.ttl() {
                        return Stopped::Broken(Error::Unavailable {
                            what: format!("no keep-alive answer for {:?}", heard.elapsed()),
                            source: None,
                        });
                    }
                    if let Err(e) = keeper.keep_alive().await {
                        return broke("keep-alive failed", e);
                    }
                    sent = Some(Instant::now());
                }
                ack = acks.message() => match ack {
                    Ok(Some(ack)) if ack.ttl() > 0 => {
                        if let Some(at) = sent.take() {
                            self.state.send_modify(|s| {
                                s.proven_at = at;
                                s.acks += 1;
                                s.rtt = Some(at.elapsed());
                            });
                        }
                    }
                    Ok(Some(_)) => return Stopped::Expired(format!("lease {lease:x} expired or was revoked")),
                    Ok(None) => return Stopped::Broken(Error::Unavailable { what: "keep-alive stream closed".into(), source: None }),
                    Err(e) => return broke("keep-alive stream failed", e),
                },
                changed = self.gone.changed() => {
                    if changed.is_ok() && *self.gone.borrow_and_update() == lease {
                        return Stopped::Expired(format!("etcd no longer knows lease {lease:x}"));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn lease_ttls_are_whole_seconds_rounded_up() {
        let ms = Duration::from_millis;
        assert_eq!(ttl_secs(Duration::from_secs(60)), 60);
        assert_eq!(ttl_secs(ms(1500)), 2);
        assert_eq!(ttl_secs(ms(300)), 1);
        assert_eq!(ttl_secs(Duration::ZERO), 1);
    }
}
