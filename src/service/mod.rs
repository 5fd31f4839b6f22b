//! The [`Service`] lifecycle (oslo.service's `Service`) and the kit's one
//! implementation of it, [`Node`] (nova's `Service`): the server side, a
//! manager's gRPC API served on a topic and registered in the service group.

mod base;
mod conn;
mod grpc;
mod info;
mod limits;
mod node;
pub(crate) mod pool;

use futures::future::BoxFuture;

pub use self::conn::ConnectionCounts;
pub(crate) use self::grpc::bind;
pub use self::info::{NodeInfo, NodeState};
pub(crate) use self::node::write_ready_file;
pub use self::node::{advertised_url, Node, NodeBuilder};

use crate::config::Config;
use crate::error::Result;
use crate::servicegroup::{Endpoints, Registration};

/// How a launcher starts a service.
#[derive(Debug, Default)]
pub struct StartContext {
    /// A gRPC listening socket handed down by a supervisor (or by systemd
    /// socket activation): the service serves on it instead of binding its
    /// own.
    pub listener: Option<std::net::TcpListener>,
    /// The same for the HTTP listener.
    pub http_listener: Option<std::net::TcpListener>,
    /// `Some(slot)` when the service runs as worker `slot` (0-based) of a
    /// multi-process node: it does not join the service group, because its
    /// supervisor registers the node once for all workers.
    pub worker: Option<u32>,
}

/// Something the launcher runs: started once, stopped once, and waited on.
///
/// The launcher calls `start`, then waits on `wait` (which resolves if the
/// service dies on its own) until a signal asks it to `stop`.
pub trait Service: Send + Sync + 'static {
    /// A short name for logs.
    fn name(&self) -> String;

    /// Starts serving; returns once the service is fully up (for a
    /// [`Node`]: serving and, unless supervised, registered).
    fn start(&self, context: StartContext) -> BoxFuture<'_, Result<()>>;

    /// Stops in the drain order: stop advertising, stop accepting, finish
    /// in-flight work, clean up. The caller bounds it with a deadline.
    fn stop(&self) -> BoxFuture<'_, Result<()>>;

    /// Resolves when the service has ended: after `stop`, or on a failure.
    fn wait(&self) -> BoxFuture<'_, Result<()>>;

    /// Applies a reloaded config in place (SIGHUP with `mutate`) and resets
    /// cached state.
    fn reset(&self, config: &Config) -> BoxFuture<'_, Result<()>>;

    /// A JSON report of the service's state (for SIGUSR2 and `Base/Report`).
    /// It may ask the registry, within a short bound.
    fn report(&self) -> BoxFuture<'_, serde_json::Value>;

    /// What a supervisor registers for this service when its workers serve
    /// on `endpoints`; `None` for a service that does not register.
    fn registration(&self, endpoints: Endpoints, workers: u32) -> Option<Registration> {
        let _ = (endpoints, workers);
        None
    }
}
