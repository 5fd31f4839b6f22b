//! Client-side adaptive throttling (Google SRE book, "Handling Overload"):
//! when a topic's nodes refuse most calls, the client fails calls locally
//! with probability max(0, (requests − 10 − K·accepts) / (requests + 1)),
//! K = 2,
//! so a refusing fleet is not hammered by calls it will refuse anyway.
//!
//! Requests count every call once it ended (those failed locally
//! included), so that calls still in flight, as at a busy start, never
//! look refused; accepts, the calls a node took (any answer but a
//! refusal; a call its deadline ended was taken). Both are halved every
//! [`WINDOW`], so the client follows the fleet's recovery: as soon as
//! calls get through again, accepts catch up and the probability falls to
//! zero.

use crate::clock::now_ms;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::Rng;

/// How many requests per accept a topic may see before throttling starts.
const K: f64 = 2.0;
/// Refused requests that never throttle: a few failures of a quiet client
/// say little (go-zero's breaker keeps 5).
const PROTECTION: f64 = 10.0;
/// Counts older than this weigh half.
const WINDOW: Duration = Duration::from_secs(10);

/// One topic's requests and accepts, shared by a client's channels to it.
#[derive(Default)]
pub(crate) struct Throttle {
    requests: AtomicU64,
    accepts: AtomicU64,
    window_start_ms: AtomicU64,
    /// Calls failed locally.
    throttled: AtomicU64,
}

impl Throttle {
    fn decay(&self, now: u64) {
        let start = self.window_start_ms.load(Ordering::Relaxed);
        let window = u64::try_from(WINDOW.as_millis()).unwrap_or(u64::MAX);
        if now.saturating_sub(start) >= window
            && self
                .window_start_ms
                .compare_exchange(start, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let half = |n: u64| Some(n / 2);
            let _ = self
                .requests
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, half);
            let _ = self
                .accepts
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, half);
        }
    }

    /// Whether a call may be sent; `false` (counted as a request) when it
    /// is to fail locally.
    pub(crate) fn admit(&self) -> bool {
        self.admit_at(now_ms())
    }

    fn admit_at(&self, now: u64) -> bool {
        self.decay(now);
        let requests = self.requests.load(Ordering::Relaxed) as f64;
        let accepts = self.accepts.load(Ordering::Relaxed) as f64;
        let reject = (requests - PROTECTION - K * accepts) / (requests + 1.0);
        if reject <= 0.0 || rand::rng().random::<f64>() >= reject {
            return true;
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.throttled.fetch_add(1, Ordering::Relaxed);
        false
    }

    /// A call sent ended: a node took it, or none did.
    pub(crate) fn ended(&self, accepted: bool) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if accepted {
            self.accepts.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Calls failed locally so far.
    pub(crate) fn throttled(&self) -> u64 {
        self.throttled.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusing_topic_is_throttled_and_an_answering_one_never() {
        // A busy start: 64 calls in flight before any answer.
        let answering = Throttle::default();
        for _ in 0..64 {
            assert!(answering.admit());
        }
        for _ in 0..1000 {
            answering.ended(true);
            assert!(answering.admit());
        }
        // Every call refused: after the first few, most fail locally.
        let refusing = Throttle::default();
        let admitted = (0..1000)
            .filter(|_| {
                let sent = refusing.admit_at(0);
                if sent {
                    refusing.ended(false);
                }
                sent
            })
            .count();
        assert!(
            admitted < 100,
            "{admitted} of 1000 sent to a refusing topic"
        );
        assert_eq!(refusing.throttled(), 1000 - admitted as u64);
        // The nodes take calls again, 100 a second: as the refusals age
        // out, accepts catch up and throttling stops within a few minutes.
        let mut now = 0;
        for _ in 0..300 {
            now += 1000;
            for _ in 0..100 {
                if refusing.admit_at(now) {
                    refusing.ended(true);
                }
            }
        }
        let late = (0..100).filter(|_| refusing.admit_at(now)).count();
        assert!(late >= 95, "{late} of 100 sent once the topic answers");
    }
}
