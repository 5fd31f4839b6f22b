//! Load generator for topic `echo` through discovery and load-aware
//! channels. The last line is `calls=… conc=… secs=… calls_per_s=… p50_us=…
//! p99_us=… p999_us=… max_us=… errors=…`.
//!
//! ```text
//! cargo run --release --example echo_bench -- --registry etcd://127.0.0.1:2379 --calls 20000 --concurrency 64
//! cargo run --release --example echo_bench -- --registry etcd://127.0.0.1:2379 --rate 5000 --hedge auto
//! ```

use std::time::Duration;

use clap::Parser;
use svckit::config::{CommonArgs, Config};
use svckit::rpc::{HedgeDelay, Rpc, Target};

#[allow(dead_code)]
#[path = "common/echo.rs"]
mod echo;

#[path = "common/bench.rs"]
mod bench;

/// Call Echo on a topic and report throughput and latency.
#[derive(Parser)]
struct Args {
    /// Registry URL [env: SVCKIT_REGISTRY]
    #[arg(long)]
    registry: Option<String>,
    /// Topic to call.
    #[arg(long, default_value = "echo")]
    topic: String,
    /// Only this host.
    #[arg(long)]
    server: Option<String>,
    /// Number of calls.
    #[arg(long, default_value_t = 10_000)]
    calls: usize,
    /// Callers at once.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Payload bytes per call.
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Open loop: this many calls/s, latency counted from when each call
    /// was due.
    #[arg(long)]
    rate: Option<f64>,
    /// Hedge the calls (marks the channel idempotent): a delay (`5ms`) or
    /// `auto` (the target's p95).
    #[arg(long)]
    hedge: Option<HedgeDelay>,
    /// Wait up to this many seconds for a node of the topic.
    #[arg(long, default_value_t = 10)]
    wait: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = svckit::config::parse_args::<Args>();
    let config = Config::load(&{
        let mut options = CommonArgs::default();
        options.registry = args.registry.clone();
        options
    })?;
    let rpc = Rpc::from_config(&config).await?;
    let mut target = Target::topic(&args.topic);
    target.server = args.server.clone();
    rpc.wait_for_nodes(&target, 1, Duration::from_secs(args.wait))
        .await?;
    let mut channel = rpc.channel(target);
    if let Some(delay) = args.hedge {
        channel = channel.hedge(delay);
    }
    let hedged = args.hedge.is_some();
    let load = bench::Load {
        calls: args.calls,
        concurrency: args.concurrency,
        payload: args.payload,
        rate: args.rate,
    };
    let stats = bench::run(channel, load).await;
    if hedged {
        eprintln!("{:?}", rpc.stats());
    }
    println!("{}", stats.line());
    Ok(())
}
