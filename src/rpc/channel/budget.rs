//! The one budget of extra attempts a client may make, retries and hedges
//! alike, as Finagle's retry budget bounds them: a token bucket that every
//! call fills by a tenth of a token and that time fills by ten tokens a
//! second, holding at most ten; every retry or hedge takes one. Over `n`
//! calls in `s` seconds: at most `10 + n / 10 + 10 s` extra attempts, so
//! a failing topic never meets a retry storm.

use crate::clock::now_ms;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// One token, in thousandths.
const TOKEN: u32 = 1000;
/// What each call earns: a tenth of a token.
const EARNED_PER_CALL: u32 = TOKEN / 10;
/// What each millisecond earns: ten tokens a second.
const EARNED_PER_MS: u32 = 10 * TOKEN / 1000;
/// The bucket holds at most this: a burst of failures may use ten extra
/// attempts at once.
const MAX_TOKENS: u32 = 10 * TOKEN;

pub(crate) struct RetryBudget {
    milli_tokens: AtomicU32,
    /// When time last filled the bucket.
    filled_ms: AtomicU64,
    /// Extra attempts refused because the budget was spent.
    refused: AtomicU64,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            milli_tokens: AtomicU32::new(MAX_TOKENS),
            filled_ms: AtomicU64::new(now_ms()),
            refused: AtomicU64::new(0),
        }
    }
}

impl RetryBudget {
    fn add(&self, milli: u32) {
        let _ = self
            .milli_tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                (t < MAX_TOKENS).then(|| t.saturating_add(milli).min(MAX_TOKENS))
            });
    }

    /// Credits one call.
    pub(crate) fn earn(&self) {
        self.add(EARNED_PER_CALL);
    }

    /// Takes one token for a retry or a hedge; `false` (counted) when the
    /// budget is spent.
    pub(crate) fn try_spend(&self) -> bool {
        self.try_spend_at(now_ms())
    }

    fn try_spend_at(&self, now: u64) -> bool {
        let filled = self.filled_ms.load(Ordering::Relaxed);
        if now > filled
            && self
                .filled_ms
                .compare_exchange(filled, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let ms = u32::try_from(now - filled).unwrap_or(u32::MAX);
            self.add(ms.saturating_mul(EARNED_PER_MS));
        }
        let spent = self
            .milli_tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                t.checked_sub(TOKEN)
            })
            .is_ok();
        if !spent {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        spent
    }

    /// Extra attempts refused so far.
    pub(crate) fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[test]
    fn the_budget_allows_a_tenth_of_calls_after_the_first_burst() {
        let budget = RetryBudget::default();
        let started = Instant::now();
        let mut extra = 0;
        for _ in 0..1000 {
            budget.earn();
            if budget.try_spend() {
                extra += 1;
            }
        }
        let bound = 10.0 + 1000.0 / 10.0 + 10.0 * started.elapsed().as_secs_f64();
        assert!(f64::from(extra) <= bound + 1.0, "{extra} > {bound}");
        assert!(extra >= 100, "{extra}");
        assert!(budget.refused() > 0);
    }

    #[test]
    fn time_refills_the_budget_without_calls() {
        let budget = RetryBudget::default();
        let start = budget.filled_ms.load(Ordering::Relaxed);
        let mut spent = 0;
        while budget.try_spend_at(start) {
            spent += 1;
        }
        assert_eq!(spent, 10, "the first burst");
        // 200 ms later: two tokens, and no third.
        assert!(budget.try_spend_at(start + 200));
        assert!(budget.try_spend_at(start + 200));
        assert!(!budget.try_spend_at(start + 200));
        // A long quiet spell fills the bucket, no more.
        let mut spent = 0;
        while budget.try_spend_at(start + 60_000) {
            spent += 1;
        }
        assert_eq!(spent, 10);
    }
}
