//! The baseline for `scripts/bench-stall`: tonic's own balancing,
//! `Channel::balance_list` over fixed addresses, driven by the same load
//! loop as `echo_bench`. (In tonic 0.14 every endpoint reports load 0, so
//! its power of two choices picks at random.)
//!
//! ```text
//! raw_balance http://127.0.0.1:7001,http://127.0.0.1:7002 --rate 5000 --calls 50000
//! ```

use clap::Parser;
use tonic::transport::{Channel, Endpoint};

/// The echo API's stubs.
mod echo {
    #[allow(dead_code, clippy::all)]
    pub mod pb {
        tonic::include_proto!("svckit.examples.echo.v1");
    }
}

#[path = "common/bench.rs"]
mod bench;

/// Call Echo over tonic's balanced channel and report latency.
#[derive(Parser)]
struct Args {
    /// Comma-separated endpoint URLs.
    urls: String,
    #[arg(long, default_value_t = 10_000)]
    calls: usize,
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Open loop at this many calls/s.
    #[arg(long)]
    rate: Option<f64>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let endpoints = args
        .urls
        .split(',')
        .map(|u| Endpoint::from_shared(u.to_string()).map(|e| e.tcp_nodelay(true)))
        .collect::<Result<Vec<_>, _>>()?;
    let channel = Channel::balance_list(endpoints.into_iter());
    let load = bench::Load {
        calls: args.calls,
        concurrency: args.concurrency,
        payload: args.payload,
        rate: args.rate,
    };
    println!("{}", bench::run(channel, load).await.line());
    Ok(())
}
