//! svckit: run fleets of RPC services on gRPC and etcd.

pub mod config;
pub mod error;
pub mod launcher;
pub mod manager;
pub mod pb;
pub mod rpc;
pub mod service;
pub mod servicegroup;
pub mod telemetry;

pub use config::Config;
pub use error::{BoxError, Error, Result};
pub use manager::Manager;
pub use service::{Node, Service};
