//! The adaptive limit on requests in their handlers (`rpc_admission =
//! adaptive`): refuse a call only when admitting it would make it, or the
//! calls behind it, wait longer than is of use to anyone.
//!
//! The signal is queueing delay, the time a call waits before its handler
//! runs, as the node's [`Load`] measures it (CoDel's sojourn time; Envoy's
//! adaptive concurrency and Netflix's limiters also read latency, not CPU),
//! and while the runtime's workers are never idle, the time calls spend in
//! the node (handlers sharing the CPUs queue for them inside). Handlers
//! that wait on I/O leave the workers idle: however long they take and
//! however many run, that is no queue.
//! A queue is an overload when it *stands and grows*: through a whole
//! interval no call waited less than [`TARGET_US`], the calls in flight
//! grew over the last three intervals (a closed loop's callers may take a
//! couple of intervals to connect), and to more than twice the most there
//! were just before it grew (callers that move over from a worker that
//! stopped bring no more than they had). A closed loop of callers, however many,
//! never grows its queue (each caller waits for its answer), so it is never
//! refused: refusing it would only send its callers straight back. An open
//! loop past capacity grows it, and is cut back to two calls per CPU plus
//! the calls the node finishes in the time a call takes unqueued and the
//! target (Little's law: answers per second × (that time + target); the
//! time is what calls took while the workers were mostly idle, so handlers
//! that also wait on I/O keep their throughput), until the queue is gone
//! and an interval passed in which nothing was refused: while callers are
//! still refused, the load still exceeds what the node answers, and
//! admitting all again would let a fresh wave in (each costing the latency
//! the shedding was for).
//!
//! Per call, at arrival, before anything of it runs:
//! - a call whose deadline is shorter than the current queueing delay is
//!   refused at once: it would be answered too late;
//! - while the node sheds, a call is refused when the calls in flight reach
//!   its criticality's share of the bound: `sheddable` at half of it,
//!   `default` at it, `critical` at twice it; so sheddable calls absorb the
//!   refusals and critical ones are refused last.
//!
//! A refusal is an UNAVAILABLE (or a 503) answered from the connection's
//! task with no handler, no body and no pool slot: it costs a small fraction
//! of a served call, so a storm of callers retrying at once does not eat the
//! capacity it is refused for.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

pub(crate) use super::criticality::Ask;
pub use super::criticality::Criticality;
use super::load::{Interval, Load, Observer, INTERVAL};
#[cfg(test)]
use crate::wire::{CRITICALITY, GRPC_TIMEOUT};

/// The queueing delay, in µs, above which a standing, growing queue is an
/// overload; also the delay the bound on calls in flight aims at.
pub(crate) const TARGET_US: u64 = 2_000;
/// How busy the runtime's workers must be (thousandths of their time) for
/// the time calls spend in the node to count as a queue for the CPUs.
const BUSY_PERMILLE: u64 = 900;
/// How idle the workers must be (busy under this many thousandths of
/// their time) for the time calls spend in the node to be their own, with
/// no queue in it.
const LIGHT_PERMILLE: u64 = 500;
/// Intervals in a row the calls in flight must grow before the node sheds.
const GROWING_INTERVALS: u32 = 3;

/// What `/metrics` and the report show of one stack's admission.
#[derive(Debug, Clone, Default)]
pub struct AdmissionStats {
    /// Requests past admission whose handler has not answered yet.
    pub in_flight: Gauge,
    /// The current limit: the pool size, or while the node sheds, the calls
    /// in flight it admits (of `default` criticality).
    pub limit: Gauge,
    /// Requests refused by the adaptive limit.
    pub refused_limit: Counter,
    /// Requests refused because their deadline was shorter than the queue.
    pub refused_deadline: Counter,
    /// Requests refused after waiting for a pool slot.
    pub refused_pool: Counter,
    /// The queueing delay last measured, in µs.
    pub queue_delay_us: Gauge,
}

/// Why admission refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Past the bound while the node sheds.
    Limit,
    /// Its deadline is shorter than the queue.
    Deadline,
}

/// One stack's limiter: a static one only counts.
#[derive(Debug)]
pub(crate) struct Limiter {
    adaptive: bool,
    ceiling: usize,
    /// The lowest bound: the CPUs the process may run on, so that a handler
    /// that only computes always has a call ready on each.
    floor: u64,
    stats: AdmissionStats,
    load: Arc<Load>,
    /// Calls answered since the last interval.
    completed: AtomicU64,
    /// The time those calls spent in the node, in µs, summed.
    in_node_us: AtomicU64,
    /// Calls refused for the bound since the last interval.
    refused: AtomicU64,
    /// Whether the node sheds now.
    shedding: AtomicBool,
    /// The bound on calls in flight while it sheds (for `default` calls).
    bound: AtomicU64,
    control: Mutex<Control>,
}

/// What the limiter carries from one interval to the next.
#[derive(Debug, Default)]
struct Control {
    /// Intervals in a row in which they grew.
    growing: u32,
    /// Calls answered per interval, smoothed.
    completions: f64,
    /// The calls in flight at the end of each of the last [`SETTLED`]
    /// intervals, newest last (the last one's is what growth compares
    /// with).
    history: std::collections::VecDeque<u64>,
    /// The time a call spends in the node while the workers are mostly
    /// idle (the handlers' own time, I/O waits included, and no queue),
    /// in µs, smoothed: what the bound lets each admitted call take
    /// besides the target.
    natural_us: f64,
}

/// How many intervals of calls in flight are kept (2 s).
const SETTLED: usize = 100;
/// How many intervals just before a growth began say where the calls in
/// flight had settled (200 ms): a load that ended a second earlier is no
/// measure of the one that grows now.
const SETTLED_LOOKBACK: usize = 10;

/// A call's place under the limit, given back when it drops.
#[derive(Debug)]
pub(crate) struct Pass {
    limiter: Arc<Limiter>,
    /// When it was admitted, while the limit is adaptive.
    arrived: Option<Instant>,
}

impl Pass {
    /// Whether the call, about to run, waited so long that it is better
    /// refused now: while the node sheds, a call admitted before the queue
    /// was found growing, and that waited past twice the target, would
    /// answer late and hold the calls behind it (CoDel drops at the head).
    pub(crate) fn stale(&self) -> bool {
        let Some(arrived) = self.arrived else {
            return false;
        };
        if !self.limiter.shedding.load(Ordering::Relaxed)
            || arrived.elapsed() <= Duration::from_micros(2 * TARGET_US)
        {
            return false;
        }
        self.limiter.refused_limit();
        true
    }
}

impl Drop for Pass {
    fn drop(&mut self) {
        self.limiter.stats.in_flight.dec();
        self.limiter.completed.fetch_add(1, Ordering::Relaxed);
        if let Some(arrived) = self.arrived {
            let us = u64::try_from(arrived.elapsed().as_micros()).unwrap_or(u64::MAX);
            self.limiter.in_node_us.fetch_add(us, Ordering::Relaxed);
        }
    }
}

impl Observer for Limiter {
    fn interval(&self, interval: Interval) {
        let mut control = crate::sync::lock(&self.control);
        let in_flight = u64::try_from(self.stats.in_flight.get()).unwrap_or(0);
        let completed = self.completed.swap(0, Ordering::Relaxed);
        let in_node_us = self.in_node_us.swap(0, Ordering::Relaxed);
        let refused = self.refused.swap(0, Ordering::Relaxed);
        let was = self.shedding.load(Ordering::Relaxed);
        let observed = Observed {
            in_flight,
            completed,
            in_node_us,
            refused,
        };
        let decision = control.step(interval, observed, self.floor, was);
        drop(control);
        self.shedding.store(decision.shedding, Ordering::Relaxed);
        if was != decision.shedding {
            tracing::info!(
                shedding = decision.shedding,
                bound = decision.bound,
                queue_wait_us = interval.min_wait_us,
                in_flight,
                "admission: a standing queue {}",
                if decision.shedding {
                    "grows; shedding"
                } else {
                    "is gone; admitting all"
                }
            );
        }
        self.bound.store(decision.bound, Ordering::Relaxed);
        let shown = if decision.shedding {
            decision.bound
        } else {
            self.ceiling as u64
        };
        self.stats
            .limit
            .set(i64::try_from(shown).unwrap_or(i64::MAX));
        self.stats
            .queue_delay_us
            .set(i64::try_from(self.load.wait_us()).unwrap_or(i64::MAX));
    }
}

/// What the limiter counted through one interval.
#[derive(Debug, Clone, Copy, Default)]
struct Observed {
    /// Calls in flight at its end.
    in_flight: u64,
    /// Calls answered in it.
    completed: u64,
    /// The time they spent in the node, in µs, summed.
    in_node_us: u64,
    /// Calls refused for the bound in it.
    refused: u64,
}

/// One interval's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Decision {
    shedding: bool,
    bound: u64,
}

impl Control {
    /// How long a call arriving behind `in_flight` calls may expect to
    /// take, in µs (0 before anything was answered).
    fn expected_us(&self, in_flight: u64) -> u64 {
        if self.completions < 1.0 {
            return 0;
        }
        (in_flight as f64 * INTERVAL.as_micros() as f64 / self.completions) as u64
    }

    /// Reads one interval; `shedding`, whether the node shed through it.
    fn step(
        &mut self,
        interval: Interval,
        observed: Observed,
        floor: u64,
        shedding: bool,
    ) -> Decision {
        let Observed {
            in_flight,
            completed,
            in_node_us,
            refused,
        } = observed;
        self.completions = if self.completions == 0.0 {
            completed as f64
        } else {
            0.75 * self.completions + 0.25 * completed as f64
        };
        // Growth beyond noise: more than the CPUs' worth and than a tenth of
        // what the node answers in an interval.
        let noise = floor.max(completed / 10);
        let last = self.history.back().copied().unwrap_or(0);
        if in_flight > last.saturating_add(noise) {
            self.growing += 1;
        } else {
            self.growing = 0;
        }
        // The most calls in flight before the growth began: a closed loop
        // whose callers move over from a worker that stopped grows for a
        // while, but to no more than it had, spread over fewer workers; an
        // overload grows past any of it.
        let before = self.history.len().saturating_sub(self.growing as usize);
        let settled = self
            .history
            .iter()
            .take(before)
            .rev()
            .take(SETTLED_LOOKBACK)
            .max()
            .copied()
            .unwrap_or(0);
        if self.history.len() == SETTLED {
            self.history.pop_front();
        }
        self.history.push_back(in_flight);
        let per_us = self.completions / INTERVAL.as_micros() as f64;
        // The queue a call meets: the time it waits to run, or while the
        // workers are never idle, the calls it shares them with (Little's
        // law: the time a call spends in the node). With idle workers the
        // time in the node is the handlers' own (waiting on I/O, on
        // another node), which no refusal would shorten.
        let sharing = interval.busy_permille >= BUSY_PERMILLE;
        let standing = interval.min_wait_us.max(if sharing {
            self.expected_us(in_flight)
        } else {
            0
        });
        if interval.busy_permille < LIGHT_PERMILLE && completed > 0 {
            // The calls answered while the workers were mostly idle took
            // their own time, with no queue in it.
            let mean = in_node_us as f64 / completed as f64;
            self.natural_us = if self.natural_us == 0.0 {
                mean
            } else {
                0.9 * self.natural_us + 0.1 * mean
            };
        }
        // Two calls per CPU, one running and one ready to (a CPU left idle
        // between an answer and the next arrival is capacity lost), and
        // the calls the node answers in the time each takes unqueued plus
        // the target (Little's law): handlers that also wait on I/O keep
        // their throughput under the bound.
        let allowed_us = self.natural_us + TARGET_US as f64;
        let bound = 2 * floor + (per_us * allowed_us).ceil() as u64;
        let shedding = if shedding {
            // Until the overload is over: nothing was refused through a
            // whole interval, the calls in flight fell well under the
            // bound, and some call waited less than half the target.
            refused > 0 || in_flight > bound / 2 || standing >= TARGET_US / 2
        } else {
            // A node that just started has no settled level yet: the
            // callers of a worker it replaces move in over its first
            // intervals.
            self.history.len() > GROWING_INTERVALS as usize + SETTLED_LOOKBACK
                && self.growing >= GROWING_INTERVALS
                && standing > TARGET_US
                && in_flight > 2 * settled.max(floor)
        };
        Decision { shedding, bound }
    }
}

impl Limiter {
    /// A limiter under `ceiling` calls at once, reading `load` and counting
    /// into `stats`.
    pub(crate) fn new(
        adaptive: bool,
        ceiling: usize,
        load: Arc<Load>,
        stats: AdmissionStats,
    ) -> Arc<Self> {
        stats.limit.set(i64::try_from(ceiling).unwrap_or(i64::MAX));
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let limiter = Arc::new(Limiter {
            adaptive,
            ceiling,
            floor: cpus.min(ceiling).max(1) as u64,
            stats,
            load: load.clone(),
            completed: AtomicU64::new(0),
            in_node_us: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            shedding: AtomicBool::new(false),
            bound: AtomicU64::new(ceiling as u64),
            control: Mutex::default(),
        });
        if adaptive {
            let observer: Arc<dyn Observer> = limiter.clone();
            load.observe(Arc::downgrade(&observer));
        }
        limiter
    }

    /// [`Limiter::admit`] for a request with these headers, read only when
    /// the limit is adaptive (a static one looks at nothing).
    pub(crate) fn admit_request(
        self: &Arc<Self>,
        headers: &http::HeaderMap,
    ) -> Result<Pass, Refusal> {
        let ask = if self.adaptive {
            Ask::of(headers)
        } else {
            Ask::default()
        };
        self.admit(ask)
    }

    /// A place for one more call, or why it is refused.
    pub(crate) fn admit(self: &Arc<Self>, ask: Ask) -> Result<Pass, Refusal> {
        if self.adaptive {
            if let Some(refusal) = self.refusal(ask) {
                match refusal {
                    Refusal::Limit => self.refused_limit(),
                    Refusal::Deadline => {
                        self.stats.refused_deadline.inc();
                    }
                }
                return Err(refusal);
            }
        }
        self.stats.in_flight.inc();
        Ok(Pass {
            limiter: self.clone(),
            arrived: self.adaptive.then(Instant::now),
        })
    }

    fn refusal(&self, ask: Ask) -> Option<Refusal> {
        if let Some(deadline) = ask.deadline {
            // Only the wait before a handler runs: calls that share the
            // CPUs take turns, and a short one is not held by long ones.
            let wait = Duration::from_micros(self.load.wait_us());
            if deadline < wait {
                return Some(Refusal::Deadline);
            }
        }
        if !self.shedding.load(Ordering::Relaxed) {
            return None;
        }
        let in_flight = u64::try_from(self.stats.in_flight.get()).unwrap_or(0);
        let bound = ask.criticality.bound(self.bound.load(Ordering::Relaxed));
        (in_flight >= bound).then_some(Refusal::Limit)
    }

    fn refused_limit(&self) {
        self.stats.refused_limit.inc();
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a refusal for want of a pool slot.
    pub(crate) fn refused_by_pool(&self) {
        self.stats.refused_pool.inc();
    }
}

#[cfg(test)]
#[path = "adaptive_tests.rs"]
mod tests;
