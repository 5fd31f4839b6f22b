//! Retry delays for every background loop of the service group (sessions,
//! watchers, discovery): exponential, with full jitter, capped.

use std::time::Duration;

/// The default cap, `registry_backoff_max`.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Exponential backoff with full jitter: each delay is drawn uniformly from
/// `[0, min(cap, 100 ms × 2^attempt)]`. Full jitter (rather than ±20 %)
/// spreads a fleet that lost etcd at one instant over the whole window, so
/// that fifty nodes and ten clients do not come back in lock-step.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    attempt: u32,
    cap: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);

    /// A backoff whose delays never exceed `cap`.
    pub(crate) fn new(cap: Duration) -> Self {
        Self { attempt: 0, cap }
    }

    /// Back to the shortest delay, after a success.
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The next delay to wait.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let ceiling = Self::FIRST
            .saturating_mul(1 << self.attempt.min(20))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        ceiling.mul_f64(rand::random_range(0.0..=1.0))
    }

    /// Waits the next delay.
    pub(crate) async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }

    /// The next delay after a loss that may be the whole fleet's at once
    /// (an etcd election or restart): at least a random point of `window`,
    /// so that the fleet's retries spread over it.
    pub(crate) fn next_delay_spread(&mut self, window: Duration) -> Duration {
        self.next_delay().max(spread(window))
    }
}

/// A random point of `window`: where one node of a fleet that lost etcd at
/// one instant comes back.
pub(crate) fn spread(window: Duration) -> Duration {
    window.mul_f64(rand::random_range(0.0..=1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_and_are_spread_below_it() {
        let cap = Duration::from_millis(700);
        let mut b = Backoff::new(cap);
        let delays: Vec<_> = (0..200).map(|_| b.next_delay()).collect();
        assert!(delays[0] <= Backoff::FIRST);
        assert!(delays.iter().all(|d| *d <= cap));
        // Full jitter: late delays use the whole [0, cap] window.
        let late = &delays[10..];
        assert!(late.iter().any(|d| *d < cap / 4), "{late:?}");
        assert!(late.iter().any(|d| *d > cap * 3 / 4), "{late:?}");
        b.reset();
        assert!(b.next_delay() <= Backoff::FIRST);
    }
}
