//! Where log lines go: stderr, through a bounded queue written by a thread
//! of its own, so that a stalled sink (a log shipper that stopped reading,
//! a full journald or docker pipe) never blocks a thread that serves.
//! When the queue is full, lines are dropped and counted
//! ([`dropped_lines`]: the report and `/metrics` show it), and once the
//! sink takes lines again, a warning says how many were lost.

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use tracing_appender::non_blocking::{ErrorCounter, NonBlocking, WorkerGuard};

/// Lines held while the sink does not take them: a few MiB at most.
const QUEUE_LINES: usize = 16_384;

/// How often the watcher looks for dropped lines.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// The writer thread's guard: dropping it writes what is queued (within
/// tracing-appender's bound) before the process exits.
static GUARD: Mutex<Option<WorkerGuard>> = Mutex::new(None);

/// The process's one writer, and its count of dropped lines.
static WRITER: OnceLock<(NonBlocking, ErrorCounter)> = OnceLock::new();

/// The writer for the process's log lines, its thread started on first
/// use: every subscriber of the process shares it.
pub(super) fn stderr() -> NonBlocking {
    let (writer, _) = WRITER.get_or_init(|| {
        let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
            .lossy(true)
            .buffered_lines_limit(QUEUE_LINES)
            .thread_name("svckit-log")
            .finish(std::io::stderr());
        *crate::sync::lock(&GUARD) = Some(guard);
        let watching = std::thread::Builder::new()
            .name("svckit-log-watch".into())
            .spawn(watch_drops);
        if let Err(e) = watching {
            eprintln!("svckit: cannot watch for dropped log lines: {e}");
        }
        let dropped = writer.error_counter();
        (writer, dropped)
    });
    writer.clone()
}

/// Log lines dropped because the sink did not take them.
pub fn dropped_lines() -> u64 {
    WRITER
        .get()
        .map_or(0, |(_, dropped)| dropped.dropped_lines() as u64)
}

/// Writes the lines still queued (waiting a bounded time for the sink).
/// Called before the process exits.
pub fn flush() {
    let guard = crate::sync::lock(&GUARD).take();
    drop(guard);
}

/// Once drops stop (the queue had room again for a whole interval), says
/// how many lines were lost. The warning joins the queue behind what the
/// sink is still catching up on.
fn watch_drops() {
    let mut reported = 0;
    let mut last = 0;
    loop {
        std::thread::sleep(WATCH_EVERY);
        let now = dropped_lines();
        if now > reported && now == last {
            tracing::warn!(
                dropped = now - reported,
                total = now,
                "log lines were dropped: the log sink (stderr) did not take them"
            );
            reported = now;
        }
        last = now;
    }
}
