//! A coarse clock for per-node and per-topic counters: milliseconds since
//! the process first asked, so that times fit in atomics.

use std::sync::LazyLock;
use std::time::Instant;

/// Milliseconds since the process's first call.
pub(crate) fn now_ms() -> u64 {
    static START: LazyLock<Instant> = LazyLock::new(Instant::now);
    u64::try_from(START.elapsed().as_millis()).unwrap_or(u64::MAX)
}
