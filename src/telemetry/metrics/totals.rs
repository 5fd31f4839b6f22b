//! A node's own figures, summed over its API: calls served, failures,
//! calls in flight and a latency histogram, for the dashboard's per-node
//! columns (`Base/Stats`). The operations endpoints (`/metrics`,
//! `/healthz`, …), the base API, health checks and reflection are left out,
//! so that the dashboard asking for them does not count itself.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::layer::Code;
use crate::admission::AdmissionStats;

/// Upper bounds of the latency buckets, in seconds: 100 µs doubling to
/// about 105 s, as `svckit_*_request_duration_seconds`; one more bucket
/// holds the rest.
pub(crate) fn bounds() -> Vec<f64> {
    (0..BOUNDS).map(|i| 0.0001 * f64::from(1u32 << i)).collect()
}

const BOUNDS: usize = 21;

/// See the module docs.
#[derive(Debug, Default)]
pub(crate) struct Totals {
    calls: AtomicU64,
    errors: AtomicU64,
    in_flight: AtomicI64,
    buckets: [AtomicU64; BOUNDS + 1],
    /// A supervised worker's count of calls in flight, in memory its
    /// supervisor reads (see `launcher::process::calls`): the node counts
    /// its calls there too.
    shared: OnceLock<&'static AtomicI64>,
}

/// A reading of [`Totals`].
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct TotalsSnapshot {
    pub(crate) calls: u64,
    pub(crate) errors: u64,
    pub(crate) in_flight: i64,
    /// Calls per latency bucket (not cumulative), one more than [`bounds`].
    pub(crate) buckets: Vec<u64>,
}

impl Totals {
    /// Counts the calls in flight in `slot` too.
    pub(super) fn share_in_flight(&self, slot: &'static AtomicI64) {
        let _ = self.shared.set(slot);
    }

    pub(super) fn started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        if let Some(slot) = self.shared.get() {
            slot.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(super) fn ended(&self, code: Code, took: Duration) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        if let Some(slot) = self.shared.get() {
            slot.fetch_sub(1, Ordering::Relaxed);
        }
        self.calls.fetch_add(1, Ordering::Relaxed);
        if code.is_failure() {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        // The bucket is the bit length of the latency in units of 100 µs.
        let units = (took.as_micros() / 100) as u64;
        let bucket = (u64::BITS - units.leading_zeros()) as usize;
        self.buckets[bucket.min(BOUNDS)].fetch_add(1, Ordering::Relaxed);
    }

    /// Calls answered and failed, without the histogram.
    pub(super) fn counts(&self) -> (u64, u64) {
        (
            self.calls.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
        )
    }

    pub(crate) fn snapshot(&self) -> TotalsSnapshot {
        TotalsSnapshot {
            calls: self.calls.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed).max(0),
            buckets: self
                .buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
        }
    }
}

/// Whether a gRPC method counts in the totals: not the base API, health
/// checks, reflection or load reports.
pub(super) fn counts_grpc(path: &str) -> bool {
    !(path.starts_with("/svckit.base.v1.Base/")
        || path.starts_with("/grpc.health.")
        || path.starts_with("/grpc.reflection.")
        || path.starts_with("/xds.service.orca."))
}

/// A handle on the figures a load report reads, apart from the node.
#[derive(Clone)]
pub(crate) struct LoadFigures {
    totals: Arc<Totals>,
    admission: AdmissionStats,
}

impl LoadFigures {
    pub(super) fn new(totals: Arc<Totals>, admission: AdmissionStats) -> Self {
        LoadFigures { totals, admission }
    }

    /// The API's calls answered and failed so far.
    pub(crate) fn calls_and_errors(&self) -> (u64, u64) {
        self.totals.counts()
    }

    /// Calls in flight past admission, and the admission limit.
    pub(crate) fn in_flight_and_limit(&self) -> (i64, i64) {
        (self.admission.in_flight.get(), self.admission.limit.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_land_in_the_bucket_of_their_bound() {
        let totals = Totals::default();
        let bounds = bounds();
        for (took, bound) in [
            (50u64, 0.0001),
            (150, 0.0002),
            (1_000, 0.0016),
            (30_000, 0.0512),
        ] {
            totals.started();
            totals.ended(Code::Grpc(0), Duration::from_micros(took));
            let snapshot = totals.snapshot();
            let bucket = bounds.iter().position(|b| *b == bound).unwrap();
            assert!(snapshot.buckets[bucket] >= 1, "{took} µs not under {bound}");
            assert!(took as f64 / 1e6 <= bound);
            if bucket > 0 {
                assert!(took as f64 / 1e6 > bounds[bucket - 1]);
            }
        }
        totals.started();
        totals.ended(Code::Grpc(13), Duration::from_secs(500));
        let snapshot = totals.snapshot();
        assert_eq!(snapshot.buckets[BOUNDS], 1, "past the last bound");
        assert_eq!(
            (snapshot.calls, snapshot.errors, snapshot.in_flight),
            (5, 1, 0)
        );
    }
}
