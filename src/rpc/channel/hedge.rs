//! Hedged calls: when to send the second copy ([`HedgeDelay`], with the
//! latency histogram behind `auto`); how many extra copies may be sent is
//! the client's retry budget ([`super::budget`]).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

pub use crate::config::HedgeDelay;

const BUCKETS: usize = 128;
/// The percentile is recomputed every this many calls.
const RECOMPUTE_EVERY: u32 = 64;
/// Counts are halved every this many calls, so the percentile follows
/// changes in the target's latency.
const DECAY_EVERY: u32 = 4096;

/// A lock-free latency histogram of one target's answered calls, for
/// `HedgeDelay::Auto`: buckets a quarter of a power of two wide, from 1 µs
/// to about half an hour.
pub(crate) struct Latency {
    buckets: [AtomicU32; BUCKETS],
    seen: AtomicU32,
    p95_us: AtomicU64,
}

impl Default for Latency {
    fn default() -> Self {
        Latency {
            buckets: std::array::from_fn(|_| AtomicU32::new(0)),
            seen: AtomicU32::new(0),
            p95_us: AtomicU64::new(0),
        }
    }
}

fn bucket(us: u64) -> usize {
    if us < 16 {
        return us as usize;
    }
    let log = 63 - us.leading_zeros() as usize;
    let quarter = ((us >> (log - 2)) & 3) as usize;
    (16 + (log - 4) * 4 + quarter).min(BUCKETS - 1)
}

/// The exclusive upper bound of a bucket, in µs.
fn upper_us(bucket: usize) -> u64 {
    if bucket < 16 {
        return bucket as u64 + 1;
    }
    let log = (bucket - 16) / 4 + 4;
    let quarter = ((bucket - 16) % 4) as u64;
    (5 + quarter) << (log - 2)
}

impl Latency {
    /// Records one answered call.
    pub(crate) fn record(&self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.buckets[bucket(us)].fetch_add(1, Ordering::Relaxed);
        let seen = self.seen.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        if seen.is_multiple_of(RECOMPUTE_EVERY) {
            self.recompute();
        }
        if seen.is_multiple_of(DECAY_EVERY) {
            for b in &self.buckets {
                // Racing increments may be lost here: a decay is approximate anyway.
                b.store(b.load(Ordering::Relaxed) / 2, Ordering::Relaxed);
            }
        }
    }

    fn recompute(&self) {
        let count = |b: &AtomicU32| u64::from(b.load(Ordering::Relaxed));
        let total: u64 = self.buckets.iter().map(count).sum();
        let want = (total * 95).div_ceil(100);
        let mut running = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            running += count(b);
            if running >= want && running > 0 {
                self.p95_us.store(upper_us(i), Ordering::Relaxed);
                return;
            }
        }
    }

    /// The 95th percentile, once enough calls were seen.
    pub(crate) fn p95(&self) -> Option<Duration> {
        match self.p95_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_their_values() {
        for us in [0, 1, 15, 16, 19, 20, 31, 32, 100, 999, 12_345, 10_000_000] {
            let b = bucket(us);
            assert!(us < upper_us(b), "{us} in bucket {b} < {}", upper_us(b));
            if b > 0 {
                assert!(us >= upper_us(b - 1), "{us} above bucket {}", b - 1);
            }
        }
    }

    #[test]
    fn p95_follows_the_slow_tail() {
        let latency = Latency::default();
        assert_eq!(latency.p95(), None, "unknown before any call");
        for i in 0..1000 {
            let us = if i % 10 == 0 { 10_000 } else { 100 };
            latency.record(Duration::from_micros(us));
        }
        let p95 = latency.p95().expect("known after 1000 calls");
        assert!(
            p95 >= Duration::from_micros(10_000) && p95 < Duration::from_micros(13_000),
            "{p95:?}"
        );
    }

    #[test]
    fn hedge_delays_parse() {
        assert_eq!("auto".parse(), Ok(HedgeDelay::Auto));
        assert_eq!(
            "10ms".parse(),
            Ok(HedgeDelay::Fixed(Duration::from_millis(10)))
        );
        assert_eq!(
            "0.5".parse(),
            Ok(HedgeDelay::Fixed(Duration::from_millis(500)))
        );
        assert!("soon".parse::<HedgeDelay>().is_err());
    }
}
