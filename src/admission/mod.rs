//! The bound on connections open at once that both listeners (gRPC and
//! HTTP) put on what they accept, and the pool of requests served at once
//! that both stacks share ([`Slots`]).
//!
//! A connection holds a [`Ticket`] from its accept until it closes. It is
//! *silent* until its protocol says the client has spoken (the HTTP/2
//! preface and first frame, the first bytes of an HTTP request). When every
//! slot is taken, a new connection takes the slot of the oldest silent one,
//! which is told to close ([`Ticket::evicted`]); when no connection is
//! silent, the new one is closed at once. So a flood of connections that
//! never speak churns through its own slots, while clients that speak keep
//! theirs and a new client still gets in; each silent connection is also
//! bounded in time by its listener (`rpc_handshake_timeout`,
//! `header_read_timeout`).
//!
//! Requests then pass the adaptive limit ([`Limiter`], see [`adaptive`]),
//! which reads the node's one measure of load ([`Load`]), and the pool's
//! slots.

use std::collections::BTreeMap;
use std::future::poll_fn;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::task::AtomicWaker;

pub(crate) mod adaptive;
mod criticality;
pub(crate) mod load;

pub use self::adaptive::{AdmissionStats, Criticality};
pub(crate) use self::adaptive::{Limiter, Refusal};
pub(crate) use self::load::Load;

/// How long a listener waits after an accept failed for want of
/// resources, before it accepts again.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// After a failed accept on `listener`: a failure of the listener itself
/// (out of file descriptors, out of memory) would repeat at once and spin
/// the accept loop, so it waits [`ACCEPT_PAUSE`] first; a connection reset
/// before its accept is no reason to wait.
pub(crate) async fn pause_after_accept_error(listener: &str, error: &io::Error) {
    use io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        error.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused
    ) {
        return;
    }
    tracing::warn!(%error, listener, "accepting a connection failed; pausing accepts");
    tokio::time::sleep(ACCEPT_PAUSE).await;
}

/// The slots of one listener.
#[derive(Debug)]
pub(crate) struct Admission {
    limit: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Tickets alive, evicted ones included until their connection closes.
    open: usize,
    /// Evicted tickets whose connection has not closed yet: their slot
    /// already belongs to the connection that evicted them.
    evicting: usize,
    /// Silent connections by admission order, oldest first.
    silent: BTreeMap<u64, Arc<Flag>>,
    next_id: u64,
}

/// Set once a connection is evicted; wakes the task serving it.
#[derive(Debug, Default)]
struct Flag {
    evicted: AtomicBool,
    waker: AtomicWaker,
}

impl Admission {
    /// At most `limit` connections that are not being evicted.
    pub(crate) fn new(limit: usize) -> Arc<Self> {
        Arc::new(Admission {
            limit,
            state: Mutex::default(),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        crate::sync::lock(&self.state)
    }

    /// A slot for a connection just accepted, evicting the oldest silent
    /// connection if none is free; `None` when every slot is held by a
    /// connection that spoke: the caller closes the new one.
    pub(crate) fn admit(self: &Arc<Self>) -> Option<Ticket> {
        let mut state = self.state();
        if state.open - state.evicting >= self.limit {
            let (_, oldest) = state.silent.pop_first()?;
            oldest.evicted.store(true, Ordering::Release);
            oldest.waker.wake();
            state.evicting += 1;
        }
        state.open += 1;
        let id = state.next_id;
        state.next_id += 1;
        let flag = Arc::new(Flag::default());
        state.silent.insert(id, flag.clone());
        Some(Ticket {
            admission: self.clone(),
            id,
            flag,
        })
    }

    /// Connections holding a slot now, evicted ones not counted.
    #[cfg(test)]
    fn held(&self) -> usize {
        let state = self.state();
        state.open - state.evicting
    }
}

/// One connection's slot, released on drop.
#[derive(Debug)]
pub(crate) struct Ticket {
    admission: Arc<Admission>,
    id: u64,
    flag: Arc<Flag>,
}

impl Ticket {
    /// The client has spoken: its connection can no longer be evicted.
    pub(crate) fn spoke(&self) {
        self.admission.state().silent.remove(&self.id);
    }

    /// Ready once a newer connection took this one's slot: the connection
    /// is to be closed. Registers `cx` to be woken then.
    pub(crate) fn poll_evicted(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.flag.evicted.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        self.flag.waker.register(cx.waker());
        if self.flag.evicted.load(Ordering::Acquire) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Resolves when a newer connection took this one's slot.
    pub(crate) async fn evicted(&self) {
        poll_fn(|cx| self.poll_evicted(cx)).await;
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut state = self.admission.state();
        state.open -= 1;
        if self.flag.evicted.load(Ordering::Acquire) {
            state.evicting -= 1;
        } else {
            state.silent.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::task::noop_waker_ref;

    fn evicted(ticket: &Ticket) -> bool {
        ticket
            .poll_evicted(&mut Context::from_waker(noop_waker_ref()))
            .is_ready()
    }

    #[test]
    fn a_new_connection_takes_the_slot_of_the_oldest_silent_one() {
        let admission = Admission::new(2);
        let first = admission.admit().unwrap();
        let second = admission.admit().unwrap();
        let third = admission.admit().expect("the oldest silent one makes room");
        assert!(evicted(&first));
        assert!(!evicted(&second) && !evicted(&third));
        assert_eq!(admission.held(), 2);
        drop(first);
        assert_eq!(admission.held(), 2);
        assert_eq!(admission.state().open, 2);
    }

    #[test]
    fn connections_that_spoke_keep_their_slots_and_a_newcomer_is_refused() {
        let admission = Admission::new(2);
        let a = admission.admit().unwrap();
        let b = admission.admit().unwrap();
        a.spoke();
        b.spoke();
        assert!(admission.admit().is_none());
        assert!(!evicted(&a) && !evicted(&b));
        drop(a);
        let c = admission.admit().expect("a slot was freed");
        // `c` is silent, `b` spoke: the next newcomer evicts `c`.
        let d = admission.admit().unwrap();
        assert!(evicted(&c) && !evicted(&b) && !evicted(&d));
    }

    #[test]
    fn eviction_wakes_the_waiting_task() {
        let admission = Admission::new(1);
        let silent = admission.admit().unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            let waiting = async { silent.evicted().await };
            let newcomer = async {
                tokio::task::yield_now().await;
                admission.admit().unwrap()
            };
            let ((), _newcomer) = tokio::join!(waiting, newcomer);
        });
    }
}

/// Requests in their handlers at once (`http_pool_size`, `rpc_pool_size`):
/// a request waits up to `wait` for a slot, then is turned away, so that an
/// overload sheds instead of queueing forever.
#[derive(Debug, Clone)]
pub(crate) struct Slots {
    slots: Arc<tokio::sync::Semaphore>,
    wait: Duration,
}

impl Slots {
    pub(crate) fn new(size: usize, wait: Duration) -> Self {
        Slots {
            slots: Arc::new(tokio::sync::Semaphore::new(size)),
            wait,
        }
    }

    /// A slot, held until the permit drops; `None` once `wait` passed.
    pub(crate) async fn take(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        // A free slot needs no timer; only a full pool waits.
        match self.slots.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => tokio::time::timeout(self.wait, self.slots.clone().acquire_owned())
                .await
                .ok()?
                .ok(),
        }
    }
}
