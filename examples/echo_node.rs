//! A node serving the echo manager on topic `echo`.
//!
//! ```text
//! cargo run --example echo_node -- --rpc-listen 127.0.0.1:0
//! ```
//!
//! With `ECHO_TICK_FILE=/tmp/ticks` it also runs a periodic task, `tick`,
//! that appends `host pid start_ms end_ms` lines to that file (see
//! `common/echo.rs` for its other variables). With `ECHO_FAIL_EVERY=2`
//! every second `Echo` fails with INTERNAL (UNAVAILABLE with
//! `ECHO_FAIL_CODE=unavailable`): a sick node. With
//! `ECHO_DELAY_US=2000` every `Echo` waits 2 ms first: a slow node; with
//! `ECHO_SPIN_US=300` every `Echo` uses 300 µs of CPU first: a costly one.

use std::sync::Arc;

use clap::Parser;
use svckit::config::CommonArgs;
use svckit::Node;

#[path = "common/echo.rs"]
mod echo;

/// Serve the echo API on topic `echo` and register in the service group.
#[derive(Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> std::process::ExitCode {
    svckit::launcher::run(
        svckit::config::parse_args::<Args>().common,
        |config| async move {
            let manager = echo::EchoManager::new(config.host().clone())
                .with_tick(echo::Tick::from_env())
                .with_rpc(config.clone());
            let node = Node::builder(manager)
                .binary("echo_node")
                .topic("echo")
                .version(env!("CARGO_PKG_VERSION"))
                .build(&config);
            Ok(vec![Arc::new(node) as Arc<dyn svckit::Service>])
        },
    )
}
