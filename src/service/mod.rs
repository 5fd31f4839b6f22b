//! The [`Service`] lifecycle (oslo.service's `Service`) and the kit's one
//! implementation of it, [`Node`] (nova's `Service`): the server side, a
//! manager's gRPC API served on a topic and registered in the service group.

mod base;
mod grpc;
mod info;
mod node;

use futures::future::BoxFuture;

pub use self::info::NodeInfo;
pub use self::node::{Node, NodeBuilder};

use crate::config::Config;
use crate::error::Result;

/// Something the launcher runs: started once, stopped once, and waited on.
///
/// The launcher calls `start`, then waits on `wait` (which resolves if the
/// service dies on its own) until a signal asks it to `stop`.
pub trait Service: Send + Sync + 'static {
    /// A short name for logs.
    fn name(&self) -> String;

    /// Starts serving; returns once the service is fully up (for an
    /// [`Node`]: serving and registered).
    fn start(&self) -> BoxFuture<'_, Result<()>>;

    /// Stops in the drain order: stop advertising, stop accepting, finish
    /// in-flight work, clean up. The caller bounds it with a deadline.
    fn stop(&self) -> BoxFuture<'_, Result<()>>;

    /// Resolves when the service has ended: after `stop`, or on a failure.
    fn wait(&self) -> BoxFuture<'_, Result<()>>;

    /// Applies a reloaded config in place (SIGHUP with `mutate`) and resets
    /// cached state.
    fn reset(&self, config: &Config) -> BoxFuture<'_, Result<()>>;

    /// A JSON report of the service's state (for SIGUSR2 and `Base/Report`).
    fn report(&self) -> serde_json::Value;
}
