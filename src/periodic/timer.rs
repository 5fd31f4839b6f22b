//! The dynamic timer (oslo's `DynamicLoopingCall` running
//! `run_periodic_tasks`): it sleeps until the next task is due, never longer
//! than `periodic_interval_max`, and runs each due task on its own tokio
//! task so a slow one delays no other.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::FutureExt;
use rand::Rng;
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::status::{wall, Counters, TaskStatus};
use super::task::{Job, JobSpec};
use crate::servicegroup::Leadership;

/// The timer's settings from the config.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    /// Longest sleep between two looks at the schedule.
    pub(crate) interval_max: Duration,
    /// Upper bound of the random delay before the first runs.
    pub(crate) fuzzy_delay: Duration,
}

/// One task in the schedule.
struct Slot {
    job: Job,
    /// `Some` for a topic task: it runs only while this node leads.
    leadership: Option<Arc<dyn Leadership>>,
    next_due: Instant,
    running: bool,
    counters: Counters,
}

struct State {
    interval_max: Duration,
    slots: Vec<Slot>,
}

/// What the timer loop and the runs it started share.
struct Shared {
    state: Mutex<State>,
    /// Woken when a run finishes or the settings change, so the schedule is
    /// looked at again at once.
    wake: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every write leaves a consistent slot, so a poisoned lock is usable.
        crate::sync::lock(&self.state)
    }
}

/// A running timer over a manager's tasks.
pub(crate) struct Timer {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    /// The loop; it ends once stopped and the runs in progress finished.
    handle: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Timer {
    /// Starts the timer over `jobs` (each with its election, for topic
    /// tasks). Tasks that do not run immediately first wait one random delay
    /// in `[0, fuzzy_delay]`.
    pub(crate) fn start(
        jobs: Vec<(Job, Option<Arc<dyn Leadership>>)>,
        settings: Settings,
    ) -> Arc<Timer> {
        let now = Instant::now();
        let fuzz = if settings.fuzzy_delay.is_zero() {
            Duration::ZERO
        } else {
            rand::rng().random_range(Duration::ZERO..=settings.fuzzy_delay)
        };
        let slots = jobs
            .into_iter()
            .map(|(job, leadership)| Slot {
                next_due: if job.spec.run_immediately {
                    now
                } else {
                    now + fuzz
                },
                job,
                leadership,
                running: false,
                counters: Counters::default(),
            })
            .collect();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                interval_max: settings.interval_max,
                slots,
            }),
            wake: Notify::new(),
        });
        let (stop, stopped) = watch::channel(false);
        let handle = tokio::spawn(run(shared.clone(), stopped));
        tracing::debug!(delay = ?fuzz, "periodic tasks scheduled");
        Arc::new(Timer {
            shared,
            stop,
            handle: tokio::sync::Mutex::new(Some(handle)),
        })
    }

    /// Starts no run any more; runs in progress go on.
    pub(crate) fn stop_scheduling(&self) {
        self.stop.send_replace(true);
    }

    /// Stops scheduling and waits for the runs in progress (the caller
    /// bounds the wait), then resigns the elections held.
    pub(crate) async fn stop(&self) {
        self.stop_scheduling();
        if let Some(handle) = self.handle.lock().await.take() {
            if let Err(e) = handle.await {
                tracing::error!(error = %e, "periodic timer ended abnormally");
            }
        }
    }

    /// Applies reloaded settings: the new `interval_max`, and the spacing
    /// and enabled flag of each task by name (the next run is then due one
    /// new spacing after the last one started).
    pub(crate) fn update(&self, interval_max: Duration, specs: &[JobSpec]) {
        let mut state = self.shared.lock();
        state.interval_max = interval_max;
        for slot in &mut state.slots {
            let Some(spec) = specs.iter().find(|s| s.name == slot.job.spec.name) else {
                continue;
            };
            if spec.spacing != slot.job.spec.spacing {
                if let Some(last) = slot.counters.last_started {
                    slot.next_due = last + spec.spacing;
                }
                slot.job.spec.spacing = spec.spacing;
            }
            slot.job.spec.enabled = spec.enabled;
        }
        drop(state);
        self.shared.wake.notify_one();
    }

    /// Each task's figures, in declaration order.
    pub(crate) fn status(&self) -> Vec<TaskStatus> {
        let state = self.shared.lock();
        let stopped = *self.stop.borrow();
        state
            .slots
            .iter()
            .map(|slot| {
                let spec = &slot.job.spec;
                let c = &slot.counters;
                TaskStatus {
                    name: spec.name.clone(),
                    scope: spec.scope,
                    spacing_secs: spec.spacing.as_secs_f64(),
                    enabled: spec.enabled,
                    running: slot.running,
                    runs: c.runs,
                    failures: c.failures,
                    overruns: c.overruns,
                    last_run: c.last_started.map(wall),
                    last_duration_secs: c.last_duration.map(|d| d.as_secs_f64()),
                    last_error: c.last_error.clone(),
                    next_due: (spec.enabled && !stopped).then(|| wall(slot.next_due)),
                    leader: slot.leadership.as_ref().map(|l| l.is_leader()),
                }
            })
            .collect()
    }
}

/// The timer loop: each turn starts what is due, then sleeps until the next
/// due time (capped), a finished run, or the stop.
async fn run(shared: Arc<Shared>, mut stopped: watch::Receiver<bool>) {
    let mut runs = JoinSet::new();
    loop {
        if *stopped.borrow_and_update() {
            break;
        }
        let wake = start_due(&shared, &mut runs);
        while runs.try_join_next().is_some() {}
        tokio::select! {
            changed = stopped.changed() => {
                // The timer handle is gone: nobody can stop it any more.
                if changed.is_err() {
                    break;
                }
            }
            _ = tokio::time::sleep_until(wake) => {}
            _ = shared.wake.notified() => {}
        }
    }
    // A run in progress may finish; the caller's deadline bounds the wait.
    while runs.join_next().await.is_some() {}
    let leaderships: Vec<_> = shared
        .lock()
        .slots
        .iter()
        .filter_map(|s| s.leadership.clone())
        .collect();
    for leadership in leaderships {
        leadership.resign().await;
    }
}

/// Starts every due task and returns when to look again.
fn start_due(shared: &Arc<Shared>, runs: &mut JoinSet<()>) -> Instant {
    let now = Instant::now();
    let mut state = shared.lock();
    let mut wake = now + state.interval_max;
    for (index, slot) in state.slots.iter_mut().enumerate() {
        if !slot.job.spec.enabled || slot.running {
            continue;
        }
        if slot.next_due <= now {
            slot.next_due = now + slot.job.spec.spacing;
            let leads = slot.leadership.as_ref().is_none_or(|l| l.is_leader());
            if leads {
                slot.running = true;
                slot.counters.runs += 1;
                slot.counters.last_started = Some(now);
                runs.spawn(run_once(shared.clone(), index, (slot.job.run)()));
            }
        }
        wake = wake.min(slot.next_due);
    }
    wake
}

/// One run of a task, its outcome recorded whatever it is (a panic too).
async fn run_once(
    shared: Arc<Shared>,
    index: usize,
    run: futures::future::BoxFuture<'static, Result<(), crate::BoxError>>,
) {
    let started = Instant::now();
    let outcome = AssertUnwindSafe(run).catch_unwind().await;
    let took = started.elapsed();
    let mut state = shared.lock();
    let slot = &mut state.slots[index];
    let name = slot.job.spec.name.clone();
    slot.running = false;
    slot.counters.last_duration = Some(took);
    let failure = match outcome {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(panic) => Some(format!("panicked: {}", panic_message(&*panic))),
    };
    if let Some(error) = &failure {
        slot.counters.failures += 1;
        tracing::error!(task = %name, error = %error, "periodic task failed; it runs again when due");
    }
    slot.counters.last_error = failure.or(slot.counters.last_error.take());
    if took > slot.job.spec.spacing {
        slot.counters.overruns += 1;
        tracing::warn!(
            task = %name,
            took = ?took,
            spacing = ?slot.job.spec.spacing,
            "periodic task overran its spacing; its next run starts now"
        );
    }
    drop(state);
    shared.wake.notify_one();
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-text panic".into())
}
