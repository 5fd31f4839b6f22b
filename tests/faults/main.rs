//! The fault suite: three echo nodes on a real etcd (or a three-member
//! cluster), a steady call loop by topic through the kit's client, and one
//! fault per test. Each test prints one row of the fault table (failed
//! calls, time until a watcher reflected the fault, time until the fleet
//! recovered); `scripts/faults` collects them.

#[path = "../support/mod.rs"]
mod support;

#[allow(dead_code)]
#[path = "../../examples/common/echo.rs"]
mod echo;

mod calls;
mod etcd_faults;
mod harness;
mod history;
mod node_faults;
mod partition;
mod worker_faults;
