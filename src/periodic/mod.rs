//! Periodic tasks (oslo's `periodic_task` and `DynamicLoopingCall`).
//!
//! A manager declares its tasks with [`Manager::periodic_tasks`]; the node
//! starts them once it is registered and stops them first thing when it
//! stops. The timer sleeps until the next task is due, never longer than
//! `periodic_interval_max`; the first runs wait a random delay in
//! `[0, periodic_fuzzy_delay]` (unless a task runs immediately) so a fleet
//! restarting together does not hit its backends together. A task that fails
//! or panics is logged and counted and runs again when due; a task that
//! overruns its spacing is never started twice at once (the overrun is
//! logged and the next run starts as soon as it finishes).
//!
//! [`Scope`] says where a task runs: once per node (worker slot 0 of a
//! multi-process node), in every worker, or on one node of the whole topic,
//! elected through the registry ([`Driver::campaign`]).
//!
//! [`Manager::periodic_tasks`]: crate::Manager::periodic_tasks
//! [`Driver::campaign`]: crate::servicegroup::Driver::campaign

mod status;
mod task;
mod timer;

#[cfg(test)]
mod tests;

use std::sync::Arc;

pub use self::status::TaskStatus;
pub(crate) use self::task::{Job, JobSpec};
pub use self::task::{PeriodicTask, Scope, DEFAULT_SPACING};
pub(crate) use self::timer::{Settings, Timer};

use crate::config::Config;
use crate::error::Result;
use crate::servicegroup::{Election, Leadership, Registry};

/// Whether a job runs in this process: `worker` is `Some(slot)` in a
/// multi-process node.
pub(crate) fn runs_here(spec: &JobSpec, worker: Option<u32>) -> bool {
    match spec.scope {
        Scope::Worker => true,
        Scope::Node | Scope::Topic => worker.is_none_or(|slot| slot == 0),
    }
}

/// The timer's settings from `config`.
pub(crate) fn settings(config: &Config) -> Settings {
    Settings {
        interval_max: config.periodic_interval_max,
        fuzzy_delay: config.periodic_fuzzy_delay,
    }
}

/// Starts the timer over the jobs that run in this process, campaigning for
/// each topic task through `registry`. `None` when nothing runs here.
pub(crate) async fn start(
    jobs: Vec<Job>,
    worker: Option<u32>,
    config: &Config,
    topic: &str,
    registry: Option<&Registry>,
) -> Result<Option<Arc<Timer>>> {
    let jobs: Vec<Job> = jobs
        .into_iter()
        .filter(|j| runs_here(&j.spec, worker))
        .collect();
    if !config.periodic_enable || jobs.is_empty() {
        return Ok(None);
    }
    let mut placed = Vec::with_capacity(jobs.len());
    for job in jobs {
        let election = Election {
            topic: topic.to_string(),
            name: job.spec.name.clone(),
            candidate: config.host.clone(),
            ttl: crate::servicegroup::down_time(config.service_down_time, config.report_interval),
            keepalive: config.report_interval,
        };
        let leadership: Option<Arc<dyn Leadership>> = match (job.spec.scope, registry) {
            (Scope::Topic, Some(registry)) => Some(registry.campaign(election).await?),
            // Without a registry a node knows no other member of its
            // topic: the task runs on it, as a node-scope one does.
            _ => None,
        };
        placed.push((job, leadership));
    }
    Ok(Some(Timer::start(placed, settings(config))))
}
