//! The task that grants and renews one shared lease (see [`super`]).

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::LeaseGrantOptions;
use futures::FutureExt;
use tokio::sync::watch;
use tokio::time::Instant;

use super::super::Inner;
use super::LeaseState;
use crate::error::{Error, Result};
use crate::servicegroup::backoff::{spread, Backoff};

/// The task that grants and renews one shared lease.
pub(super) struct Keeper {
    pub(super) inner: Arc<Inner>,
    pub(super) ttl: i64,
    pub(super) state: Arc<watch::Sender<LeaseState>>,
    pub(super) gone: watch::Receiver<i64>,
    pub(super) interval_ms: Arc<AtomicU64>,
    /// The lease to renew first (0: grant one).
    pub(super) start: i64,
    pub(super) last_error: Arc<Mutex<String>>,
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
    pub(super) async fn supervise(mut self) {
        loop {
            if AssertUnwindSafe(self.run()).catch_unwind().await.is_ok() {
                return;
            }
            self.inner
                .figures
                .restarted("lease keeper", &"the lease keeper panicked");
            self.state.send_modify(|s| s.id = 0);
        }
    }

    async fn run(&mut self) {
        let mut backoff = Backoff::new(self.inner.backoff_max);
        let mut lease = std::mem::take(&mut self.start);
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
            let acks_before = self.state.borrow().acks;
            match self.renew(lease).await {
                Stopped::Expired(why) => {
                    tracing::warn!(lease = %format!("{lease:x}"), "{why}; granting a new lease");
                    self.state.send_modify(|s| s.id = 0);
                    lease = 0;
                    // The keys went with the lease, and the node shows down
                    // until it registers again. Leases that expired together
                    // (an outage longer than the TTL, a cluster too loaded to
                    // answer, revoked by hand) would otherwise bring the
                    // whole fleet back in one instant: each grant and claim
                    // waits a random point of the interval, as after a lost
                    // stream.
                    tokio::time::sleep(spread(self.interval())).await;
                }
                Stopped::Broken(e) => {
                    tracing::info!(lease = %format!("{lease:x}"), error = %e, "lease keep-alive interrupted");
                    *crate::sync::lock(&self.last_error) = e.to_string();
                    self.state.send_modify(|s| s.failures += 1);
                    // The lease outlives a lost stream, a leader change and
                    // an etcd restart, and the next stream's first answer
                    // says whether it still lives: no other request is
                    // needed. A lost stream may be every node's at once, so
                    // the fleet's return is spread over an interval (which
                    // the lease outlasts); a stream that broke again before
                    // any answer backs off further.
                    let answered = self.state.borrow().acks != acks_before;
                    let pause = if answered {
                        backoff.reset();
                        spread(self.interval())
                    } else {
                        backoff.next_delay_spread(self.interval())
                    };
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }

    /// Grants a lease of an id chosen here, not by etcd. A grant whose
    /// answer was lost (a timeout under load, a leader change) and is sent
    /// again finds the lease it made ("lease already exists") instead of
    /// making one more that no one keeps alive, for etcd to expire and
    /// revoke: at a fleet's cold start, work that an overloaded cluster
    /// can least afford.
    async fn grant(&self) -> Result<i64> {
        let leases = self.inner.client.lease_client();
        let ttl = self.ttl;
        let id = new_lease_id();
        let mut first_try = true;
        let sent = Instant::now();
        let id = self
            .inner
            .call(|| {
                let mut leases = leases.clone();
                let retried = !std::mem::replace(&mut first_try, false);
                async move {
                    let options = LeaseGrantOptions::new().with_id(id);
                    match leases.grant(ttl, Some(options)).await {
                        Ok(granted) => Ok(granted.id()),
                        // On a first try, another process's lease: the
                        // next grant draws another id.
                        Err(e) if retried && lease_exists(&e) => Ok(id),
                        Err(e) => Err(e),
                    }
                }
            })
            .await?;
        self.state.send_modify(|s| {
            *s = LeaseState {
                id,
                proven_at: sent,
                acks: s.acks,
                rtt: None,
                failures: s.failures,
            }
        });
        Ok(id)
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
            // The first answer says the lease is gone (expired, revoked,
            // or etcd wiped).
            Err(e)
                if std::error::Error::source(&e)
                    .and_then(|s| s.downcast_ref::<etcd_client::Error>())
                    .is_some_and(unknown_lease) =>
            {
                return Stopped::Expired(format!("etcd does not know lease {lease:x}"));
            }
            Err(e) => return Stopped::Broken(e),
        };
        // The stream opened on an answered keep-alive.
        if let Some(at) = sent.take() {
            self.state.send_modify(|s| {
                s.proven_at = at;
                s.acks += 1;
                s.rtt = Some(at.elapsed());
            });
        }
        let broke = |what: &str, e: etcd_client::Error| {
            if unknown_lease(&e) {
                Stopped::Expired(format!("etcd does not know lease {lease:x}"))
            } else {
                Stopped::Broken(Error::unavailable(what, e))
            }
        };
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
                        return Stopped::Broken(Error::unavailable_msg(format!("no keep-alive answer for {:?}", heard.elapsed())));
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
                    Ok(None) => return Stopped::Broken(Error::unavailable_msg("keep-alive stream closed")),
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

/// A lease id for a new grant: positive (etcd reads 0 as "choose one")
/// and ordered by time, as etcd's own ids are: the milliseconds since 1970
/// in the high 42 bits, 21 random bits below. etcd keeps leases in a B-tree
/// keyed by id; a fleet's grants with random ids would land all over it,
/// and each commit would write many more of its pages than grants that
/// come in order. Two grants in one millisecond share an id one time in
/// two million; the second is refused and draws another.
fn new_lease_id() -> i64 {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    lease_id(ms, rand::random())
}

/// The id of a grant made at `ms` since 1970, with `random` bits below.
fn lease_id(ms: u64, random: u64) -> i64 {
    const RANDOM_BITS: u32 = 21;
    let high = ms & ((1 << (63 - RANDOM_BITS)) - 1);
    let low = random & ((1 << RANDOM_BITS) - 1);
    // 63 bits at most: always a positive i64, or 0 at the epoch.
    (((high << RANDOM_BITS) | low) as i64).max(1)
}

/// Whether etcd refused a grant because a lease of that id exists.
fn lease_exists(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s)
        if s.code() == tonic::Code::FailedPrecondition && s.message().ends_with("lease already exists"))
}

/// Whether etcd answered that it does not know the lease.
fn unknown_lease(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => s.code() == tonic::Code::NotFound,
        // etcd-client's reading of a first answer with no TTL left.
        etcd_client::Error::LeaseKeepAliveError(m) => m == "lease not found",
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_that_exists_is_told_from_other_refusals() {
        let exists = |code, message: &str| {
            lease_exists(&etcd_client::Error::GRpcStatus(tonic::Status::new(
                code, message,
            )))
        };
        // etcd's own words (rpctypes.ErrGRPCLeaseExist).
        assert!(exists(
            tonic::Code::FailedPrecondition,
            "etcdserver: lease already exists"
        ));
        assert!(!exists(
            tonic::Code::FailedPrecondition,
            "etcdserver: requested lease not found"
        ));
        assert!(!exists(tonic::Code::Unavailable, "lease already exists"));
        for _ in 0..1_000 {
            assert!(new_lease_id() > 0);
        }
        // Ordered by time: a later millisecond gives a larger id, whatever
        // the random bits; and no id is 0, even at the epoch.
        let now = 1_796_000_000_000;
        assert!(lease_id(now + 1, 0) > lease_id(now, u64::MAX));
        assert!(lease_id(now, 1) > lease_id(now, 0));
        assert_eq!(lease_id(0, 0), 1);
        assert!(lease_id(u64::MAX, u64::MAX) > 0);
    }
}
