//! What the report says about each periodic task.

use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::time::Instant;

use super::task::Scope;

/// One task's figures, for the report.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct TaskStatus {
    /// The task's name.
    pub name: String,
    /// Where it runs.
    pub scope: Scope,
    /// The spacing in force, in seconds.
    pub spacing_secs: f64,
    /// Declared enabled (and `periodic_enable` on).
    pub enabled: bool,
    /// A run is in progress now.
    pub running: bool,
    /// Runs started.
    pub runs: u64,
    /// Runs that returned an error or panicked.
    pub failures: u64,
    /// Runs that took longer than the spacing.
    pub overruns: u64,
    /// RFC 3339 start of the last run.
    pub last_run: Option<String>,
    /// Duration of the last finished run, in seconds.
    pub last_duration_secs: Option<f64>,
    /// The last failure's message.
    pub last_error: Option<String>,
    /// RFC 3339 time the next run is due (none while disabled).
    pub next_due: Option<String>,
    /// For a [`Scope::Topic`] task: whether this node holds its election.
    pub leader: Option<bool>,
}

/// Counters kept by the timer.
#[derive(Debug, Default, Clone)]
pub(super) struct Counters {
    pub(super) runs: u64,
    pub(super) failures: u64,
    pub(super) overruns: u64,
    pub(super) last_started: Option<Instant>,
    pub(super) last_duration: Option<Duration>,
    pub(super) last_error: Option<String>,
}

/// The wall-clock time of a timer instant, for humans.
pub(super) fn wall(at: Instant) -> String {
    let now = Instant::now();
    let wall = if at >= now {
        SystemTime::now() + (at - now)
    } else {
        SystemTime::now()
            .checked_sub(now - at)
            .unwrap_or(SystemTime::UNIX_EPOCH)
    };
    crate::servicegroup::rfc3339(wall)
}
