//! svckit runs fleets of RPC services on gRPC and etcd, the way OpenStack
//! runs nova: many binaries, each started on many hosts, each serving a
//! topic, all of them knowing who is up.
//!
//! A user defines a [`Manager`]'s API in `.proto` files (stubs generated at
//! build time by the `svckit-build` crate), and a [`Node`] serves it on a
//! topic: gRPC health, reflection and the base API beside it, registered in
//! a service group with lease-based heartbeats. Clients address a topic, one
//! host of it, or all of it, through channels that follow the membership
//! and balance by load. The launcher runs nodes with the stop order
//! production needs: leave the group, go NOT_SERVING, drain, clean up.
//!
//! # Layout
//!
//! In the order data flows:
//!
//! - [`config`]: typed options, defaults < TOML file < `SVCKIT_*` < flags,
//!   read through accessors.
//! - [`manager`]: the user's side: services, lifecycle hooks, periodic tasks.
//! - [`periodic`]: the timer of a manager's periodic tasks and where they run.
//! - [`service`]: the [`Service`] trait a launcher runs, and [`Node`], the
//!   server side, with its operations endpoints.
//! - [`servicegroup`]: membership on etcd, files or memory: join, heartbeat,
//!   list, watch, admin state.
//! - [`rpc`]: the client side: targets, load-balanced channels, fanout, cast;
//!   it imports nothing of the server side.
//! - [`http`]: the HTTP stack of a node's API, behind nova's limits.
//! - [`dashboard`]: the service group as a live web page, with JSON beside it.
//! - [`xds`]: an xDS control plane fed by the service group, for gRPC
//!   clients in any language (`xds:///TOPIC`).
//! - [`launcher`]: [`ServiceLauncher`](launcher::ServiceLauncher) (one
//!   process) and [`Supervisor`](launcher::Supervisor) (N workers), driven
//!   by the same controls, and the one component that advertises a node.
//! - [`report`]: the state report of SIGUSR2, `Base/Report` and `/debug/report`.
//! - [`telemetry`]: logging set-up and Prometheus metrics.
//! - [`tls`]: TLS on the listeners and to nodes, certificates re-read when they change.
//! - [`error`]: the one [`Error`] type and its exit codes.
//! - [`pb`]: generated code of the kit's own protos.
//!
//! Private beside them: `admission` (the slots of the request pools) and
//! `wire` (the headers clients and nodes exchange).
//!
//! # Example
//!
//! A node for a manager with no services of its own (it still serves health,
//! reflection and `svckit.base.v1.Base`), run until Ctrl-C:
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use svckit::manager::{GrpcServices, Manager};
//! use svckit::{config::CommonArgs, Node, Service};
//!
//! struct Conductor;
//!
//! impl Manager for Conductor {
//!     fn grpc_services(self: &Arc<Self>, _services: &mut GrpcServices) {
//!         // services.add(ConductorServer::from_arc(self.clone()));
//!     }
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     svckit::launcher::run(CommonArgs::default(), |config| async move {
//!         let node = Node::builder(Conductor).topic("conductor").build(&config);
//!         Ok(vec![Arc::new(node) as Arc<dyn Service>])
//!     })
//! }
//! ```

#![warn(missing_docs)]

mod admission;
mod body;
mod clock;
pub mod config;
pub mod dashboard;
pub mod error;
pub mod http;
pub mod launcher;
pub mod manager;
pub mod pb;
pub mod periodic;
pub mod report;
pub mod rpc;
pub mod service;
pub mod servicegroup;
mod sync;
pub mod telemetry;
pub mod tls;
mod wire;
pub mod xds;

pub use config::Config;
pub use error::{BoxError, Error, ErrorKind, Result};
pub use manager::Manager;
pub use service::{Node, Service};
