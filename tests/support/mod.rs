//! Shared test support: real etcd processes and real node processes.
#![allow(dead_code)]

pub mod node;
