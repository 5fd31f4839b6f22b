//! A fixed amount of CPU work, as a CPU-bound handler does it on an async
//! runtime: in slices, yielding between them, so that the other calls on
//! the same thread move on meanwhile.

use std::time::Duration;

/// The most one call may ask for.
pub const MAX_SPIN: Duration = Duration::from_secs(1);

/// One slice of work between two yields.
const SLICE: Duration = Duration::from_micros(50);

/// Keeps the threads it runs on busy until the call used `work` of CPU
/// time (not of wall time: a thread the kernel set aside does no work
/// meanwhile).
pub async fn spin(work: Duration) {
    let mut done = Duration::ZERO;
    while done < work {
        let start = thread_cpu_time();
        let slice = SLICE.min(work - done);
        while thread_cpu_time().saturating_sub(start) < slice {
            std::hint::spin_loop();
        }
        done += thread_cpu_time().saturating_sub(start);
        tokio::task::yield_now().await;
    }
}

fn thread_cpu_time() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec for the kernel to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    Duration::new(
        u64::try_from(now.tv_sec).unwrap_or(0),
        u32::try_from(now.tv_nsec).unwrap_or(0),
    )
}
