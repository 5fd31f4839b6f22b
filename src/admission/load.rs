//! The node's one reading of load, for both stacks: how long a task that
//! became runnable waits before it runs, which is how long a call waits
//! before its handler runs (an HTTP/2 stream's task, or an HTTP/1
//! connection's task woken by a request). CPU demand is no such signal: a
//! closed loop of callers keeps the CPUs busy without anything queueing for
//! long, and a load generator on the same host makes the node's threads
//! wait for a CPU without the node being overloaded.
//!
//! A probe thread of the node's own hands a tiny task to the node's
//! runtime every [`TICK`] and records how long the runtime took to run it:
//! the time it waited behind the tasks already queued. The thread keeps the
//! time, not the runtime, so an overloaded runtime cannot stretch its
//! intervals; a probe still waiting at the next tick counts as waiting that
//! long at least. Every [`INTERVAL`] the samples are summed up as CoDel does
//! for a queue: the *lowest* wait of the interval says whether a queue
//! stood all through it (a burst leaves some sample low).
//!
//! The probe also reads how busy the runtime's workers were through the
//! interval (tokio's busy time per worker). Handlers that share the CPUs,
//! yielding between slices of work, queue for them without the probe
//! seeing it (a task handed in from outside is run between theirs), but
//! they keep every worker busy; handlers that wait on I/O (a call to
//! another node, a database) take as long as they take with the workers
//! idle, and that is no queue.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// How often the probe measures.
pub(crate) const TICK: Duration = Duration::from_millis(5);
/// Probes per interval: short enough that an overload is seen (three
/// intervals of growth) before its queue holds more than a few tens of
/// milliseconds.
const TICKS_PER_INTERVAL: u32 = 4;
/// The interval the limiter decides on.
pub(crate) const INTERVAL: Duration =
    Duration::from_millis(TICK.as_millis() as u64 * TICKS_PER_INTERVAL as u64);

/// One interval's summary, as the probe hands it to the limiters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Interval {
    /// The lowest wait measured in it, in µs.
    pub(crate) min_wait_us: u64,
    /// The share of the runtime's workers' time spent running tasks
    /// through it, in thousandths (1000: no worker was ever idle).
    pub(crate) busy_permille: u64,
}

/// What reads an interval: the limiters of the node's stacks.
pub(crate) trait Observer: Send + Sync {
    fn interval(&self, interval: Interval);
}

/// The node's load reading, shared by its gRPC and HTTP stacks.
#[derive(Default)]
pub(crate) struct Load {
    /// The wait measured last, in µs: the current queueing delay.
    pub(super) wait_us: AtomicU64,
    /// The wait of the last probe that ran, in µs; `u64::MAX` once read.
    last_us: AtomicU64,
    observers: std::sync::Mutex<Vec<Weak<dyn Observer>>>,
    started: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Load {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Load")
            .field("wait_us", &self.wait_us())
            .finish()
    }
}

impl Load {
    /// The queueing delay a call arriving now may expect, in µs.
    pub(crate) fn wait_us(&self) -> u64 {
        self.wait_us.load(Ordering::Relaxed)
    }

    /// Adds an observer and starts the probe on the current runtime, once;
    /// outside a runtime (a unit test) nothing measures.
    pub(crate) fn observe(self: &Arc<Self>, observer: Weak<dyn Observer>) {
        crate::sync::lock(&self.observers).push(observer);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.started.swap(true, Ordering::Relaxed) {
            return;
        }
        let load = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("svckit-load-probe".into())
            .spawn(move || probe(load, runtime));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "no load probe: admission sees no queue");
        }
    }

    fn publish(&self, interval: Interval) -> bool {
        let mut observers = crate::sync::lock(&self.observers);
        observers.retain(|o| o.strong_count() > 0);
        for observer in observers.iter().filter_map(Weak::upgrade) {
            observer.interval(interval);
        }
        !observers.is_empty()
    }
}

/// Measures until the reading and its last observer are gone.
fn probe(load: Weak<Load>, runtime: tokio::runtime::Handle) {
    // When the probe in the runtime's queue was handed over, in µs since
    // `start`; 0 once it ran.
    let start = Instant::now();
    let pending = Arc::new(AtomicU64::new(0));
    let mut current = Interval {
        min_wait_us: u64::MAX,
        busy_permille: 0,
    };
    let mut interval_start = Instant::now();
    let mut busy = Busy::read(&runtime);
    let mut next = Instant::now();
    loop {
        next = (next + TICK).max(Instant::now());
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        let Some(load) = load.upgrade() else {
            return;
        };
        let now_us = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
        let queued = pending.load(Ordering::Acquire);
        let wait = if queued != 0 {
            // The last one has not run yet: it has waited this long so far.
            now_us.saturating_sub(queued)
        } else {
            let done = load.last_us.swap(u64::MAX, Ordering::AcqRel);
            let handed = now_us.max(1);
            pending.store(handed, Ordering::Release);
            let (pending, load_ran) = (pending.clone(), Arc::downgrade(&load));
            drop(runtime.spawn(async move {
                let ran = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
                if let Some(load) = load_ran.upgrade() {
                    load.last_us
                        .store(ran.saturating_sub(handed), Ordering::Release);
                }
                pending.store(0, Ordering::Release);
            }));
            if done == u64::MAX {
                continue;
            }
            done
        };
        load.wait_us.store(wait, Ordering::Relaxed);
        current.min_wait_us = current.min_wait_us.min(wait);
        if interval_start.elapsed() >= INTERVAL {
            interval_start = Instant::now();
            let now = Busy::read(&runtime);
            current.busy_permille = now.permille_since(&busy);
            busy = now;
            if !load.publish(current) {
                return;
            }
            current = Interval {
                min_wait_us: u64::MAX,
                busy_permille: 0,
            };
        }
    }
}

/// The runtime's workers' busy time, summed, at one moment.
struct Busy {
    at: Instant,
    total: Duration,
    workers: u32,
}

impl Busy {
    fn read(runtime: &tokio::runtime::Handle) -> Busy {
        let metrics = runtime.metrics();
        let workers = metrics.num_workers();
        Busy {
            at: Instant::now(),
            total: (0..workers)
                .map(|w| metrics.worker_total_busy_duration(w))
                .sum(),
            workers: u32::try_from(workers).unwrap_or(u32::MAX).max(1),
        }
    }

    /// How busy the workers were from `then` to this reading, in
    /// thousandths. A worker's busy time is brought up to date every few
    /// dozen tasks it runs, so a reading may count a little of the
    /// interval before; it is capped at 1000.
    fn permille_since(&self, then: &Busy) -> u64 {
        let wall = self.at.duration_since(then.at) * self.workers;
        let busy = self.total.saturating_sub(then.total);
        if wall.is_zero() {
            return 0;
        }
        u64::try_from(busy.as_micros() * 1000 / wall.as_micros().max(1))
            .unwrap_or(u64::MAX)
            .min(1000)
    }
}
