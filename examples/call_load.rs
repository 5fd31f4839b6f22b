//! A steady load of `Echo` calls from a client that never sends a call
//! twice, run until it is told to stop: the other side of every lifecycle
//! check (`scripts/bench-lifecycle`, `tests/zero_loss.rs`). A reload, a
//! recycle or a scale-down must fail none of its calls.
//!
//! - `tonic URL[,URL…]`: tonic's own `Channel` (one endpoint, or
//!   `balance_list` over several), nothing of the kit's.
//! - `kit --registry URL`: a plain kit channel by topic, not idempotent.
//!
//! It prints `ready` once its first calls were answered, stops at SIGTERM
//! or SIGINT, and prints the last line
//! `client=… calls=… failed=… codes=CODE:N,…` (codes of the failed calls).
//!
//! ```text
//! call_load tonic http://127.0.0.1:7001 --concurrency 16
//! call_load kit --registry etcd://127.0.0.1:2379 --concurrency 64
//! ```

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use svckit::config::{CommonArgs, Config};
use svckit::rpc::{Rpc, Target};
use tonic::client::GrpcService;
use tonic::transport::{Channel, Endpoint};

#[allow(dead_code)]
#[path = "common/echo.rs"]
mod echo;

use echo::pb::echo_client::EchoClient;
use echo::pb::EchoRequest;

/// Call Echo until stopped, from a client that does not retry.
#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    client: Client,
    /// Callers at once, each sending its next call when the last one ended.
    #[arg(long, global = true, default_value_t = 16)]
    concurrency: usize,
    /// Stop after this many seconds, if not stopped before.
    #[arg(long, global = true, default_value_t = 600)]
    secs: u64,
}

#[derive(Subcommand)]
enum Client {
    /// tonic's own channel on these comma-separated URLs.
    Tonic { urls: String },
    /// A plain kit channel on a topic.
    Kit {
        /// Registry URL [env: SVCKIT_REGISTRY]
        #[arg(long)]
        registry: Option<String>,
        #[arg(long, default_value = "echo")]
        topic: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let stop = Arc::new(AtomicBool::new(false));
    let (name, counts) = match &args.client {
        Client::Tonic { urls } => {
            let endpoints = urls
                .split(',')
                .map(|u| Endpoint::from_shared(u.to_string()).map(|e| e.tcp_nodelay(true)))
                .collect::<Result<Vec<_>, _>>()?;
            let channel = match <[Endpoint; 1]>::try_from(endpoints) {
                Ok([one]) => one.connect().await?,
                Err(many) => Channel::balance_list(many.into_iter()),
            };
            ("tonic", run(channel, &args, &stop).await)
        }
        Client::Kit { registry, topic } => {
            let config = Config::load(&{
                let mut options = CommonArgs::default();
                options.registry = registry.clone();
                options
            })?;
            let rpc = Rpc::from_config(&config).await?;
            let target = Target::topic(topic);
            rpc.wait_for_nodes(&target, 1, Duration::from_secs(30))
                .await?;
            ("kit", run(rpc.channel(target), &args, &stop).await)
        }
    };
    let failed: u64 = counts.codes.values().sum();
    let codes: Vec<String> = counts
        .codes
        .iter()
        .map(|(code, n)| format!("{code}:{n}"))
        .collect();
    println!(
        "client={name} calls={} failed={failed} codes={}",
        counts.calls,
        codes.join(",")
    );
    Ok(())
}

#[derive(Default)]
struct Counts {
    calls: u64,
    /// Failed calls by status code.
    codes: BTreeMap<String, u64>,
}

/// Runs the callers until a stop, then adds up what they saw.
async fn run<T>(channel: T, args: &Args, stop: &Arc<AtomicBool>) -> Counts
where
    T: GrpcService<tonic::body::Body> + Clone + Send + 'static,
    T::Future: Send,
    T::ResponseBody: tonic::codegen::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
    T::Error: Into<tonic::codegen::StdError>,
{
    let (first_tx, first_rx) = tokio::sync::watch::channel(false);
    let callers: Vec<_> = (0..args.concurrency.max(1))
        .map(|_| {
            let mut client = EchoClient::new(channel.clone());
            let (stop, first_tx) = (stop.clone(), first_tx.clone());
            tokio::spawn(async move {
                let mut counts = Counts::default();
                while !stop.load(Ordering::Relaxed) {
                    counts.calls += 1;
                    let call = client.echo(EchoRequest {
                        payload: vec![0x5a; 64],
                    });
                    match call.await {
                        Ok(_) => {
                            first_tx.send_replace(true);
                        }
                        Err(status) => {
                            *counts
                                .codes
                                .entry(format!("{:?}", status.code()))
                                .or_default() += 1;
                            eprintln!("call_load: failed: {status:?}");
                        }
                    }
                }
                counts
            })
        })
        .collect();
    drop(first_tx);
    let mut first = first_rx;
    if first.wait_for(|answered| *answered).await.is_ok() {
        println!("ready");
    }
    stopped(Duration::from_secs(args.secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = Counts::default();
    for caller in callers {
        if let Ok(counts) = caller.await {
            total.calls += counts.calls;
            for (code, n) in counts.codes {
                *total.codes.entry(code).or_default() += n;
            }
        }
    }
    total
}

/// Resolves at SIGTERM, SIGINT or `limit`.
async fn stopped(limit: Duration) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tokio::time::sleep(limit).await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        () = tokio::time::sleep(limit) => {}
    }
}
