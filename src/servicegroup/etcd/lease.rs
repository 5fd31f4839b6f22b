//! One lease per process: every registration and election made through one
//! driver shares a lease of its TTL, kept alive by one stream. A node that
//! serves three topics and leads two periodic tasks costs etcd one
//! keep-alive per interval, not five; and a crash takes all of its keys
//! with it at the same moment.
//!
//! The keeper grants the lease when first used and renews it. After a
//! lost stream it opens another on the same lease (which outlives a leader
//! change and an etcd restart); the first answer says whether the lease
//! still lives, and only a lease etcd no longer knows is replaced. Users
//! follow its [`LeaseState`]: a new lease id means their keys went with
//! the old one and must be claimed again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::Inner;
use crate::error::{Error, Result};
use keeper::Keeper;

mod keeper;

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
    /// A lease of this TTL (seconds) held by the process this one replaced
    /// in place: the first lease of that TTL carries it on.
    inherited: Mutex<Option<(i64, i64)>>,
}

impl Leases {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Weak<SharedLease>>> {
        crate::sync::lock(&self.by_ttl)
    }

    /// Carries on `lease`, of `ttl` seconds, from the process this one
    /// replaced in place.
    pub(super) fn inherit(&self, ttl: i64, lease: i64) {
        *crate::sync::lock(&self.inherited) = Some((ttl, lease));
    }

    fn take_inherited(&self, ttl: i64) -> Option<i64> {
        let mut inherited = crate::sync::lock(&self.inherited);
        match *inherited {
            Some((t, lease)) if t == ttl => {
                *inherited = None;
                Some(lease)
            }
            _ => None,
        }
    }
}

/// The handover of a lease to a process that replaces this one in place.
pub(super) fn handover(ttl: i64, lease: i64) -> String {
    format!("etcd-lease:{ttl}:{lease:x}")
}

/// The (TTL, lease) of a [`handover`].
pub(super) fn parse_handover(handover: &str) -> Option<(i64, i64)> {
    let (ttl, lease) = handover.strip_prefix("etcd-lease:")?.split_once(':')?;
    Some((ttl.parse().ok()?, i64::from_str_radix(lease, 16).ok()?))
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
    /// Keep-alive streams lost so far (see [`SharedLease::last_error`]).
    pub(super) failures: u64,
}

/// A user's reading of a change of the lease's state: the state, or why
/// the user lost its lease (the keeper stopped, or the lease it holds
/// keys on was replaced).
pub(super) fn changed_state(
    changed: std::result::Result<(), watch::error::RecvError>,
    state: &mut watch::Receiver<LeaseState>,
    lease: i64,
) -> std::result::Result<LeaseState, String> {
    if changed.is_err() {
        return Err("the lease keeper stopped".into());
    }
    let now = *state.borrow_and_update();
    if now.id != lease {
        return Err(format!("lease {lease:x} expired or was revoked"));
    }
    Ok(now)
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
    /// The lease it started from, carried on from the process this one
    /// replaced in place.
    inherited: Option<i64>,
    /// Why the last keep-alive stream was lost.
    last_error: Arc<Mutex<String>>,
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
        let inherited = inner.leases.take_inherited(ttl);
        let (state, _) = watch::channel(LeaseState {
            id: inherited.unwrap_or(0),
            proven_at: Instant::now(),
            acks: 0,
            rtt: None,
            failures: 0,
        });
        let state = Arc::new(state);
        let last_error = Arc::new(Mutex::new(String::new()));
        let gone = Arc::new(watch::channel(0).0);
        let interval_ms = Arc::new(AtomicU64::new(interval_ms));
        let keeper = Keeper {
            inner: inner.clone(),
            ttl,
            state: state.clone(),
            gone: gone.subscribe(),
            interval_ms: interval_ms.clone(),
            start: inherited.unwrap_or(0),
            last_error: last_error.clone(),
        };
        let shared = Arc::new(SharedLease {
            inner: inner.clone(),
            ttl,
            users: AtomicUsize::new(1),
            state,
            gone,
            interval_ms,
            inherited,
            last_error,
            task: tokio::spawn(keeper.supervise()),
        });
        map.insert(ttl, Arc::downgrade(&shared));
        LeaseUse {
            shared,
            released: AtomicBool::new(false),
        }
    }

    /// The lease carried on from the process this one replaced in place,
    /// if it started from one: keys bound to it are ours.
    pub(super) fn inherited(&self) -> Option<i64> {
        self.inherited
    }

    /// Why the last keep-alive stream was lost.
    pub(super) fn last_error(&self) -> String {
        crate::sync::lock(&self.last_error).clone()
    }

    /// Its TTL in seconds.
    pub(super) fn ttl(&self) -> i64 {
        self.ttl
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
