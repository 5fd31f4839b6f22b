//! [`PeriodicTask`]: what a manager declares, and the type-erased [`Job`]
//! the timer runs once the task is bound to its manager.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::Serialize;

use crate::error::BoxError;

/// The spacing of a task declared with a zero spacing (oslo's
/// `periodic_task(spacing=0)` runs every 60 s).
pub const DEFAULT_SPACING: Duration = Duration::from_secs(60);

/// Where a periodic task runs when a node has several workers, or a topic
/// several nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Once per node: in a multi-process node only worker slot 0 runs it.
    #[default]
    Node,
    /// In every worker process of the node.
    Worker,
    /// On exactly one node of the whole topic at a time, elected through the
    /// registry; another node takes over when the leader dies.
    Topic,
}

/// The body of a task bound to its manager.
type Run<M> = Arc<dyn Fn(Arc<M>) -> BoxFuture<'static, Result<(), BoxError>> + Send + Sync>;

/// A periodic task of a manager `M` (oslo's `@periodic_task`).
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use svckit::periodic::{PeriodicTask, Scope};
///
/// struct Compute;
///
/// impl Compute {
///     async fn sync_power_states(&self) -> Result<(), svckit::BoxError> {
///         Ok(())
///     }
/// }
///
/// let task = PeriodicTask::new("sync_power_states", Duration::from_secs(600), |m: Arc<Compute>| async move {
///     m.sync_power_states().await
/// })
/// .run_immediately(true)
/// .scope(Scope::Node);
/// assert_eq!(task.name(), "sync_power_states");
/// ```
#[must_use]
pub struct PeriodicTask<M> {
    name: String,
    spacing: Duration,
    run_immediately: bool,
    enabled: bool,
    scope: Scope,
    run: Run<M>,
}

impl<M: Send + Sync + 'static> PeriodicTask<M> {
    /// A task named `name` that runs `run` every `spacing` (zero means
    /// [`DEFAULT_SPACING`]). Spacing counts from the start of one run to
    /// the start of the next.
    pub fn new<F, Fut>(name: impl Into<String>, spacing: Duration, run: F) -> Self
    where
        F: Fn(Arc<M>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        PeriodicTask {
            name: name.into(),
            spacing,
            run_immediately: false,
            enabled: true,
            scope: Scope::Node,
            run: Arc::new(move |manager| Box::pin(run(manager))),
        }
    }

    /// Runs the first time as soon as the timer starts, without the fuzzy
    /// delay.
    ///
    /// ```
    /// # use std::{sync::Arc, time::Duration};
    /// # use svckit::periodic::PeriodicTask;
    /// let task = PeriodicTask::new("t", Duration::from_secs(5), |_: Arc<()>| async { Ok(()) })
    ///     .run_immediately(true);
    /// ```
    pub fn run_immediately(mut self, yes: bool) -> Self {
        self.run_immediately = yes;
        self
    }

    /// `false` declares the task but never runs it (oslo's negative
    /// spacing).
    ///
    /// ```
    /// # use std::{sync::Arc, time::Duration};
    /// # use svckit::periodic::PeriodicTask;
    /// let task = PeriodicTask::new("t", Duration::from_secs(5), |_: Arc<()>| async { Ok(()) })
    ///     .enabled(false);
    /// ```
    pub fn enabled(mut self, yes: bool) -> Self {
        self.enabled = yes;
        self
    }

    /// Where the task runs ([`Scope::Node`] unless set).
    ///
    /// ```
    /// # use std::{sync::Arc, time::Duration};
    /// # use svckit::periodic::{PeriodicTask, Scope};
    /// let task = PeriodicTask::new("reap", Duration::from_secs(30), |_: Arc<()>| async { Ok(()) })
    ///     .scope(Scope::Topic);
    /// ```
    pub fn scope(mut self, scope: Scope) -> Self {
        self.scope = scope;
        self
    }

    /// The task's name, unique within its manager.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Binds the task to its manager, for the timer.
    pub(crate) fn bind(self, manager: Arc<M>) -> Job {
        let run = self.run;
        Job {
            spec: JobSpec {
                name: self.name,
                spacing: effective_spacing(self.spacing),
                run_immediately: self.run_immediately,
                enabled: self.enabled,
                scope: self.scope,
            },
            run: Arc::new(move || run(manager.clone())),
        }
    }
}

impl<M> fmt::Debug for PeriodicTask<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeriodicTask")
            .field("name", &self.name)
            .field("spacing", &self.spacing)
            .field("run_immediately", &self.run_immediately)
            .field("enabled", &self.enabled)
            .field("scope", &self.scope)
            .finish()
    }
}

fn effective_spacing(spacing: Duration) -> Duration {
    if spacing.is_zero() {
        DEFAULT_SPACING
    } else {
        spacing
    }
}

/// What the timer knows of a task besides its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JobSpec {
    pub(crate) name: String,
    pub(crate) spacing: Duration,
    pub(crate) run_immediately: bool,
    pub(crate) enabled: bool,
    pub(crate) scope: Scope,
}

/// A task bound to its manager: a spec and a body that needs nothing more.
#[derive(Clone)]
pub(crate) struct Job {
    pub(crate) spec: JobSpec,
    pub(crate) run: Arc<dyn Fn() -> BoxFuture<'static, Result<(), BoxError>> + Send + Sync>,
}
