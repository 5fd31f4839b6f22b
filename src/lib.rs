//! svckit: run fleets of RPC services on gRPC and etcd.

pub mod config;
pub mod error;
pub mod pb;
pub mod servicegroup;

pub use error::{BoxError, Error, Result};
