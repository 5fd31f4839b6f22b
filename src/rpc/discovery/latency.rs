//! Each node's latency as balancers weigh it: a peak EWMA, as Finagle's
//! and linkerd's balancers keep. A slower answer than the estimate raises
//! it at once; faster ones bring it down with a decay of [`DECAY`], so a
//! node that slows down is avoided from its first slow answer and taken
//! back over a second or two once it is fast again.
//!
//! An estimate with no answer for [`STALE`] is unknown, and power of two
//! choices compares the calls in flight only: a node avoided for its
//! latency gets a call now and then, which tells whether it recovered.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::clock::now_ms;

/// The time constant of the decay, in ms.
const DECAY: f64 = 1_000.0;
/// How long an estimate stays known with no new answer, in ms.
const STALE: u64 = 1_000;

/// One node's estimate, in µs (as f64 bits), and when it was last fed.
#[derive(Debug, Default)]
pub(crate) struct PeakEwma {
    micros: AtomicU64,
    at_ms: AtomicU64,
}

impl PeakEwma {
    /// An answer after `micros`. Racing updates may lose one: the estimate
    /// is a weight, not an account.
    pub(crate) fn observe(&self, micros: u64) {
        self.observe_at(micros, now_ms());
    }

    fn observe_at(&self, micros: u64, now: u64) {
        let now = now.max(1);
        let sample = micros as f64;
        let last = self.at_ms.swap(now, Ordering::Relaxed);
        let estimate = f64::from_bits(self.micros.load(Ordering::Relaxed));
        let next = if last == 0 || sample >= estimate {
            sample
        } else {
            let keep = (-(now.saturating_sub(last) as f64) / DECAY).exp();
            estimate * keep + sample * (1.0 - keep)
        };
        self.micros.store(next.to_bits(), Ordering::Relaxed);
    }

    /// The estimate in µs at `now` (on the coarse clock), if known.
    pub(crate) fn estimate(&self, now: u64) -> Option<f64> {
        let at = self.at_ms.load(Ordering::Relaxed);
        (at != 0 && now.saturating_sub(at) <= STALE)
            .then(|| f64::from_bits(self.micros.load(Ordering::Relaxed)).max(1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peaks_at_once_decays_over_time_and_goes_stale() {
        let ewma = PeakEwma::default();
        assert_eq!(ewma.estimate(10), None, "unknown before any answer");
        ewma.observe_at(100, 10);
        assert_eq!(ewma.estimate(10), Some(100.0));
        ewma.observe_at(5_000, 20);
        assert_eq!(ewma.estimate(20), Some(5_000.0), "a peak counts at once");
        // A fast answer one time constant later keeps e⁻¹ of the peak.
        ewma.observe_at(100, 1_020);
        let decayed = ewma.estimate(1_020).expect("known");
        let keep = (-1.0f64).exp();
        let expected = 5_000.0 * keep + 100.0 * (1.0 - keep);
        assert!((decayed - expected).abs() < 1.0, "{decayed} vs {expected}");
        assert!(ewma.estimate(1_020 + STALE).is_some());
        assert_eq!(ewma.estimate(1_021 + STALE), None, "stale");
    }
}
