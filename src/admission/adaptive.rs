//! The adaptive limit on requests in their handlers (`rpc_admission =
//! adaptive`), BBR-style as in kratos: when the CPUs are busy, a node
//! admits no more calls at once than it has shown it can finish, that is
//! its best throughput times its lowest latency (Little's law), both
//! measured over the last five seconds in 100 ms buckets.
//!
//! Why this one: it needs no latency target to be set per service, and
//! gated on CPU it never refuses a node that waits on something else (a
//! database, another node), where queueing is bounded by the pool ceiling
//! and by deadlines instead. Gradient and Vegas limits shrink on any rise
//! in latency, which a node waiting on a slow dependency shows without
//! being overloaded. Its weakness: the lowest latency is that of the
//! fastest method, so on busy CPUs a manager that mixes 1 ms and 1 s
//! methods may see its slow calls refused when many are in flight; such a
//! manager is better served by `static`.
//!
//! - A call is refused when the CPUs are at least 90% busy and more than
//!   the limit are in flight. The limit is never below the CPUs the process
//!   may run on, so a handler that only computes always has a call ready
//!   on each. Refusing goes on for 1 s after the last refusal with busy
//!   CPUs, even when they cool down, so that shedding does not flap
//!   (kratos' cool-off).
//! - A call is in flight from its admission, when its task first runs,
//!   until its handler answers, so a long stream holds a pool slot until it
//!   ends but not a place under this limit. Throughput counts the answered
//!   calls; latency runs from the start of the handler (after any wait for
//!   a pool slot) to its answer.
//! - Handlers that compute yield now and then (or compute in
//!   `spawn_blocking`): one that computes for long without an `.await`
//!   holds its thread, and the calls behind it wait in the runtime's queue,
//!   before admission, where no limit in the process sees them.
//! - The lowest latency must be seen with a short queue. A node flooded
//!   from its start, with handlers that take turns on the CPU, never sees
//!   one: every call waits for all the others, the latency it measures is
//!   the queue's, and the limit it computes is the load it has, whether it
//!   refuses the rest or not. So, as TCP BBR probes its round-trip time, a
//!   node whose CPUs are busy with more calls in flight than the floor
//!   holds its limit to the floor, 1 s after they turned busy and then
//!   every 5 s, until the calls in flight drain and fresh ones measure the
//!   handler alone (twice the lowest latency measured, 200 ms to 1 s),
//!   then goes on with what it measured. A node whose limit was right
//!   refuses a few more calls for 200 ms every 5 s; one that queued sheds
//!   its queue.
//! - The window rolls on the calls themselves, and the CPU is read as it
//!   rolls: nothing runs while no call comes.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use super::cpu::{CpuGauge, Reading};

/// One bucket of the window.
const BUCKET_MS: u64 = 100;
/// Buckets in the window: five seconds, as go-zero's shedder.
const BUCKETS: usize = 50;
/// CPU busy share, in thousandths, from which the limit applies
/// (go-zero's; kratos uses 80%).
const BUSY_PERMILLE: u64 = 900;
/// How long refusing goes on after the last refusal, whatever the CPU.
const COOL_OFF_MS: u64 = 1000;
/// How long after the CPUs turned busy the limit first probes for the
/// latency of a short queue, and how often it probes again while they
/// stay busy (the window's length: what a probe measured lasts as long).
const PROBE_FIRST_MS: u64 = 1000;
const PROBE_EVERY_MS: u64 = BUCKETS as u64 * BUCKET_MS;
/// The shortest and longest probe.
const PROBE_MIN_MS: u64 = 200;
const PROBE_MAX_MS: u64 = 1000;

/// What `/metrics` and the report show of one stack's admission.
#[derive(Debug, Clone, Default)]
pub struct AdmissionStats {
    /// Requests past admission whose handler has not answered yet.
    pub in_flight: Gauge,
    /// The current limit (the pool size when static, or while the CPUs
    /// are not busy enough for the limit to apply).
    pub limit: Gauge,
    /// Requests refused by the adaptive limit.
    pub refused_limit: Counter,
    /// Requests refused after waiting for a pool slot.
    pub refused_pool: Counter,
    /// The CPU busy share as last read, in thousandths.
    pub cpu_permille: Gauge,
}

/// One stack's limiter: a static one only counts.
#[derive(Debug)]
pub(crate) struct Limiter {
    adaptive: bool,
    ceiling: usize,
    /// The lowest limit: the CPUs the process may run on.
    floor: usize,
    stats: AdmissionStats,
    /// Passes and summed latency of the bucket being filled, and its number.
    passes: AtomicU64,
    rt_sum_us: AtomicU64,
    bucket: AtomicU64,
    /// The limit computed at the last roll.
    computed: AtomicU64,
    /// The CPU share in thousandths: a rise counts at once (an overload
    /// is refused from its first 100 ms on, not once an average caught
    /// up with it), a fall by halves each bucket.
    cpu: AtomicU64,
    /// When the last call was refused with the CPUs busy, on the coarse
    /// clock; 0 for never.
    last_refusal_ms: AtomicU64,
    rolling: AtomicBool,
    window: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    /// (passes, mean latency in µs) of the finished buckets, newest last.
    buckets: std::collections::VecDeque<(u64, u64)>,
    gauge: CpuGauge,
    last_reading: Option<Reading>,
    probe: Probe,
}

/// When to hold the limit to the floor so that the latency of a short
/// queue is measured again.
#[derive(Debug, Default)]
struct Probe {
    /// Since when the CPUs have been busy.
    busy_since: Option<u64>,
    /// When the last probe ended.
    last: Option<u64>,
    /// Until when the limit is held to the floor; 0 for no probe.
    until: u64,
}

impl Probe {
    /// One roll at `now`: whether the limit is held to the floor. `busy`
    /// tells whether the CPUs are busy, `queued` whether more calls are in
    /// flight than the floor, and `drain_ms` how long the calls in flight
    /// take as measured (the probe lasts until they are done).
    fn step(&mut self, now: u64, busy: bool, queued: bool, drain_ms: u64) -> bool {
        if self.until != 0 {
            if now < self.until {
                return true;
            }
            self.until = 0;
            self.last = Some(now);
        }
        if !busy {
            self.busy_since = None;
            return false;
        }
        let since = *self.busy_since.get_or_insert(now);
        let due = (since + PROBE_FIRST_MS).max(self.last.map_or(0, |l| l + PROBE_EVERY_MS));
        if queued && now >= due {
            self.until = now + (2 * drain_ms + BUCKET_MS).clamp(PROBE_MIN_MS, PROBE_MAX_MS);
            return true;
        }
        false
    }
}

/// A call's place under the limit, given back when it drops.
#[derive(Debug)]
pub(crate) struct Pass {
    limiter: Arc<Limiter>,
    /// When its handler started, once it did.
    started: Option<Instant>,
}

impl Pass {
    /// The call's handler starts: its latency counts from now. The time
    /// before, waiting for the runtime, counts in flight but not as
    /// latency, so that a queue shows as more calls in flight than the
    /// node finishes, and not as a slower node.
    pub(crate) fn begin(&mut self) {
        if self.limiter.adaptive {
            self.started = Some(Instant::now());
        }
    }
}

/// Requests this process answered, gRPC and HTTP, health checks and admin
/// endpoints aside (a worker's `max_requests`).
static SERVED: AtomicU64 = AtomicU64::new(0);

/// How many requests this process answered so far.
pub(crate) fn served() -> u64 {
    SERVED.load(Ordering::Relaxed)
}

impl Drop for Pass {
    fn drop(&mut self) {
        let limiter = &self.limiter;
        limiter.stats.in_flight.dec();
        SERVED.fetch_add(1, Ordering::Relaxed);
        if let Some(started) = self.started {
            let rt = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            limiter.passes.fetch_add(1, Ordering::Relaxed);
            limiter.rt_sum_us.fetch_add(rt, Ordering::Relaxed);
        }
    }
}

impl Limiter {
    /// A limiter under `ceiling` calls at once, counting into `stats`.
    /// `processes` share the CPUs this one may run on (its workers).
    pub(crate) fn new(
        adaptive: bool,
        ceiling: usize,
        processes: usize,
        stats: AdmissionStats,
    ) -> Arc<Self> {
        let ceiling_gauge = i64::try_from(ceiling).unwrap_or(i64::MAX);
        stats.limit.set(ceiling_gauge);
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Arc::new(Limiter {
            adaptive,
            ceiling,
            floor: cpus.min(ceiling),
            stats,
            passes: AtomicU64::new(0),
            rt_sum_us: AtomicU64::new(0),
            bucket: AtomicU64::new(crate::clock::now_ms() / BUCKET_MS),
            computed: AtomicU64::new(ceiling as u64),
            cpu: AtomicU64::new(0),
            last_refusal_ms: AtomicU64::new(0),
            rolling: AtomicBool::new(false),
            window: Mutex::new(Window {
                buckets: std::collections::VecDeque::with_capacity(BUCKETS),
                gauge: CpuGauge::new(processes),
                last_reading: None,
                probe: Probe::default(),
            }),
        })
    }

    /// A place for one more call, or `None`: refuse it.
    pub(crate) fn admit(self: &Arc<Self>) -> Option<Pass> {
        if self.adaptive {
            let now = crate::clock::now_ms();
            if now / BUCKET_MS > self.bucket.load(Ordering::Relaxed) {
                self.roll(now);
            }
            if self.over(now) {
                self.stats.refused_limit.inc();
                return None;
            }
        }
        self.stats.in_flight.inc();
        Some(Pass {
            limiter: self.clone(),
            started: None,
        })
    }

    /// Counts a refusal for want of a pool slot.
    pub(crate) fn refused_by_pool(&self) {
        self.stats.refused_pool.inc();
    }

    /// Whether a call arriving now is past the limit.
    fn over(&self, now: u64) -> bool {
        // As kratos: the calls already in flight, so that one more than the
        // limit runs and the CPU has the next call ready when one ends.
        let in_flight = u64::try_from(self.stats.in_flight.get()).unwrap_or(0);
        if in_flight <= self.computed.load(Ordering::Relaxed) {
            return false;
        }
        if self.cpu.load(Ordering::Relaxed) >= BUSY_PERMILLE {
            self.last_refusal_ms.store(now.max(1), Ordering::Relaxed);
            return true;
        }
        // Refusals of the cool-off do not prolong it.
        let last = self.last_refusal_ms.load(Ordering::Relaxed);
        last != 0 && now.saturating_sub(last) <= COOL_OFF_MS
    }

    /// Closes the bucket being filled, reads the CPU and computes the
    /// limit anew; one caller does it, the others go on.
    fn roll(&self, now: u64) {
        if self.rolling.swap(true, Ordering::Acquire) {
            return;
        }
        let mut window = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        let current = now / BUCKET_MS;
        let previous = self.bucket.swap(current, Ordering::Relaxed);
        let passes = self.passes.swap(0, Ordering::Relaxed);
        let rt_sum = self.rt_sum_us.swap(0, Ordering::Relaxed);
        // Buckets skipped without a call count as empty.
        let skipped = current.saturating_sub(previous).saturating_sub(1);
        for _ in 0..skipped.min(BUCKETS as u64) {
            push(&mut window.buckets, (0, 0));
        }
        push(&mut window.buckets, (passes, rt_sum / passes.max(1)));

        if let Some(reading) = window.gauge.read() {
            if let Some(last) = window.last_reading {
                let usage = window.gauge.usage(&last, &reading);
                let now_permille = usage * 1000.0;
                let smoothed = now_permille
                    .max((self.cpu.load(Ordering::Relaxed) as f64 + now_permille) / 2.0);
                self.cpu.store(smoothed as u64, Ordering::Relaxed);
                self.stats.cpu_permille.set(smoothed as i64);
            }
            window.last_reading = Some(reading);
        }

        let busy = self.cpu.load(Ordering::Relaxed) >= BUSY_PERMILLE;
        let in_flight = u64::try_from(self.stats.in_flight.get()).unwrap_or(0);
        let drain_ms = min_rt_us(&window.buckets).unwrap_or(0) / 1000;
        let probing = window
            .probe
            .step(now, busy, in_flight > self.floor as u64, drain_ms);
        let limit = if probing {
            self.floor
        } else {
            limit(&window.buckets, self.ceiling).max(self.floor)
        };
        self.computed.store(limit as u64, Ordering::Relaxed);
        let shown = if busy { limit } else { self.ceiling };
        self.stats
            .limit
            .set(i64::try_from(shown).unwrap_or(i64::MAX));
        drop(window);
        self.rolling.store(false, Ordering::Release);
    }
}

fn push(buckets: &mut std::collections::VecDeque<(u64, u64)>, bucket: (u64, u64)) {
    if buckets.len() == BUCKETS {
        buckets.pop_front();
    }
    buckets.push_back(bucket);
}

/// Best passes per bucket × lowest mean latency, in calls, at least 1 and
/// at most `ceiling`; the ceiling while the window holds no call.
fn limit(buckets: &std::collections::VecDeque<(u64, u64)>, ceiling: usize) -> usize {
    let max_pass = buckets.iter().map(|&(p, _)| p).max().unwrap_or(0);
    let Some(min_rt_us) = min_rt_us(buckets) else {
        return ceiling;
    };
    // passes per bucket × (1 s / bucket) × latency in s, rounded.
    let calls = (max_pass as f64 * min_rt_us as f64 / (BUCKET_MS as f64 * 1000.0) + 0.5) as usize;
    calls.clamp(1, ceiling)
}

/// The lowest mean latency of a bucket that had calls, in µs.
fn min_rt_us(buckets: &std::collections::VecDeque<(u64, u64)>) -> Option<u64> {
    buckets
        .iter()
        .filter(|&&(p, _)| p > 0)
        .map(|&(_, rt)| rt.max(1))
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_is_best_throughput_times_lowest_latency() {
        let mut buckets = std::collections::VecDeque::new();
        // 100 calls of 2 ms in the best bucket: 1,000 calls/s × 2 ms = 2.
        buckets.push_back((100, 2_000));
        buckets.push_back((50, 3_000));
        assert_eq!(limit(&buckets, 1000), 2);
        // The best throughput and the lowest latency need not be the same
        // bucket's: 2,000 calls/s × 2 ms = 4, under a ceiling of 3.
        buckets.push_back((200, 10_000));
        assert_eq!(limit(&buckets, 1000), 4);
        assert_eq!(limit(&buckets, 3), 3);
        assert_eq!(limit(&std::collections::VecDeque::new(), 1000), 1000);
    }

    #[test]
    fn a_busy_cpu_refuses_past_the_limit_and_a_lone_call_always_passes() {
        let limiter = Limiter::new(true, 1000, 1, AdmissionStats::default());
        limiter.computed.store(2, Ordering::Relaxed);
        limiter.cpu.store(950, Ordering::Relaxed);
        let now = crate::clock::now_ms();
        limiter
            .bucket
            .store(now / BUCKET_MS + 1_000, Ordering::Relaxed);
        let first = limiter.admit().expect("a lone call passes");
        let second = limiter.admit().expect("two are within the limit");
        let third = limiter
            .admit()
            .expect("one more than the limit waits its turn");
        assert!(limiter.admit().is_none(), "a fourth is past it");
        assert_eq!(limiter.stats.refused_limit.get(), 1);
        drop(first);
        assert!(limiter.admit().is_some());
        drop((second, third));

        // Cool CPUs still refuse for a second after the last refusal.
        limiter.cpu.store(100, Ordering::Relaxed);
        let _held: Vec<_> = (0..3).map(|_| limiter.admit().unwrap()).collect();
        assert!(limiter.admit().is_none(), "the cool-off goes on refusing");
        limiter.last_refusal_ms.store(0, Ordering::Relaxed);
        assert!(limiter.admit().is_some(), "past the cool-off all pass");
    }

    #[test]
    fn busy_cpus_probe_for_a_short_queue_now_and_then() {
        let mut probe = Probe::default();
        // Busy and queued from 1,000 ms: the first probe 1 s later.
        assert!(!probe.step(1_000, true, true, 500));
        assert!(!probe.step(1_900, true, true, 500));
        // It lasts twice the measured drain and a bucket, at most 1 s.
        assert!(probe.step(2_000, true, true, 500));
        assert!(probe.step(2_900, true, true, 500));
        assert!(!probe.step(3_000, true, true, 10));
        // Then every 5 s while busy, short now that the queue is gone.
        assert!(!probe.step(7_900, true, true, 10));
        assert!(probe.step(8_000, true, true, 10));
        assert_eq!(probe.until, 8_000 + PROBE_MIN_MS);
        assert!(!probe.step(8_200, true, true, 10));

        // Cool CPUs and a short queue never probe.
        let mut probe = Probe::default();
        for now in (0..20_000).step_by(100) {
            assert!(!probe.step(now, now % 900 != 0, true, 500));
            assert!(!Probe::default().step(now, true, false, 500));
        }
        let mut probe = Probe::default();
        for now in (0..20_000).step_by(100) {
            assert!(!probe.step(now, true, false, 500));
        }
    }

    #[test]
    fn a_static_limiter_only_counts() {
        let limiter = Limiter::new(false, 4, 1, AdmissionStats::default());
        let passes: Vec<_> = (0..10).filter_map(|_| limiter.admit()).collect();
        assert_eq!(passes.len(), 10);
        assert_eq!(limiter.stats.in_flight.get(), 10);
        assert_eq!(limiter.stats.limit.get(), 4);
        drop(passes);
        assert_eq!(limiter.stats.in_flight.get(), 0);
    }
}
