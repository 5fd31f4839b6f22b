//! The [`Service`] lifecycle (oslo.service's `Service`) and the kit's one
//! implementation of it, [`Node`] (nova's `Service`): the server side, a
//! manager's gRPC API served on a topic and registered in the service group.

mod base;
mod builder;
mod conn;
mod grpc;
mod info;
mod limits;
mod node;
mod ops;
mod orca;
pub(crate) mod pool;

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

pub use self::builder::NodeBuilder;
pub use self::conn::ConnectionCounts;
pub(crate) use self::grpc::bind;
pub use self::info::{NodeInfo, NodeState};
pub use self::node::{advertised_url, Node};

use crate::config::Config;
use crate::error::Result;
use crate::servicegroup::{Advert, Membership, MembershipStatus, RegistryHandle};

/// How a launcher starts a service: what it hands down, and how long the
/// service waits between NOT_SERVING and closing its listeners at stop.
#[derive(Debug)]
#[non_exhaustive]
pub struct StartContext {
    /// A gRPC listening socket handed down by a supervisor (or by systemd
    /// socket activation): the service serves on it instead of binding its
    /// own.
    pub listener: Option<std::net::TcpListener>,
    /// The same for the HTTP listener.
    pub http_listener: Option<std::net::TcpListener>,
    /// `Some(slot)` when the service runs as worker `slot` (0-based) of a
    /// multi-process node; periodic tasks of node scope run in slot 0 only.
    pub worker: Option<u32>,
    /// The process's registry, for what the service reads from it (the
    /// dashboard, elections of periodic tasks, reports). Advertising is
    /// the launcher's.
    pub registry: RegistryHandle,
    /// How long clients get to act on the leave before the listeners close
    /// (`drain_delay`); zero where nobody needs it (a worker being
    /// replaced, whose supervisor stays advertised).
    pub drain_delay: Duration,
    /// What a supervised worker's supervisor tells of the workers it
    /// restarted, for the service's metrics.
    pub(crate) figures: Option<Arc<crate::telemetry::metrics::WorkerFigures>>,
    /// Where a supervised worker counts its calls in flight, in memory its
    /// supervisor reads (a worker kept past its deadline says how many
    /// calls it takes down).
    pub(crate) in_flight: Option<&'static std::sync::atomic::AtomicI64>,
}

impl StartContext {
    /// A context for a service that binds its own listeners, with the
    /// registry and drain delay of `config`.
    pub fn new(config: &Config) -> Self {
        StartContext {
            listener: None,
            http_listener: None,
            worker: None,
            registry: RegistryHandle::new(config.registry.clone(), config.registry_options()),
            drain_delay: config.drain_delay,
            figures: None,
            in_flight: None,
        }
    }
}

/// How a launcher advertised a service, as the service sees it: the state
/// its report and metrics show.
#[derive(Clone, Default)]
pub struct Advertised(Option<Arc<dyn Membership>>, bool);

impl Advertised {
    /// Registered by this process, through `membership`.
    pub(crate) fn member(membership: Arc<dyn Membership>) -> Self {
        Advertised(Some(membership), false)
    }

    /// Registered by the supervisor this process is a worker of.
    pub(crate) fn by_supervisor() -> Self {
        Advertised(None, true)
    }

    /// The registration's health, when this process holds it.
    pub fn status(&self) -> Option<MembershipStatus> {
        self.0.as_ref().map(|m| m.status())
    }

    /// Whether a supervisor holds the registration.
    pub fn is_by_supervisor(&self) -> bool {
        self.1
    }
}

impl std::fmt::Debug for Advertised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Advertised")
            .field("status", &self.status())
            .field("by_supervisor", &self.1)
            .finish()
    }
}

/// Something the launcher runs: started once, stopped once, and waited on.
///
/// The launcher calls `start`, advertises what it returned, tells the
/// service with `advertised`, then waits on `wait` (which resolves if the
/// service dies on its own) until a signal asks it to stop: then it leaves
/// the service group and calls `stop`.
pub trait Service: Send + Sync + 'static {
    /// A short name for logs.
    fn name(&self) -> String;

    /// Starts serving; returns once the service answers calls, with what
    /// the launcher is to advertise for it (`None`: nothing).
    fn start(&self, context: StartContext) -> BoxFuture<'_, Result<Option<Advert>>>;

    /// The launcher advertised the service (or handed the advert to the
    /// supervisor that registers it): work that must wait for it, such as
    /// periodic tasks, starts here.
    fn advertised(&self, advertised: Advertised) -> BoxFuture<'_, ()> {
        let _ = advertised;
        Box::pin(async {})
    }

    /// Stops, the service group already left: NOT_SERVING, the drain
    /// delay, stop accepting, finish in-flight work, clean up. The caller
    /// bounds it with a deadline.
    fn stop(&self) -> BoxFuture<'_, Result<()>>;

    /// Resolves when the service has ended: after `stop`, or on a failure.
    fn wait(&self) -> BoxFuture<'_, Result<()>>;

    /// Applies a reloaded config in place (SIGHUP with `mutate`) and resets
    /// cached state.
    fn reset(&self, config: &Config) -> BoxFuture<'_, Result<()>>;

    /// A JSON report of the service's state (for SIGUSR2 and `Base/Report`).
    /// It may ask the registry, within a short bound.
    fn report(&self) -> BoxFuture<'_, serde_json::Value>;

    /// Requests the service answered so far: a worker with `max_requests`
    /// asks to be replaced once its services answered that many. 0 for a
    /// service that does not count.
    fn served(&self) -> u64 {
        0
    }
}
