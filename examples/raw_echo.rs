//! The baseline for `echo_bench`: a plain tonic echo server and client, no
//! kit, no discovery, one connection.
//!
//! ```text
//! raw_echo serve 127.0.0.1:50051
//! raw_echo bench http://127.0.0.1:50051 --calls 20000 --concurrency 64
//! ```

use std::net::SocketAddr;

use clap::{Parser, Subcommand};
use tonic::transport::{Endpoint, Server};

#[allow(dead_code)]
#[path = "common/echo.rs"]
mod echo;

#[path = "common/bench.rs"]
mod bench;

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve Echo on ADDR (prints the bound address).
    Serve { addr: SocketAddr },
    /// Call Echo on URL over one connection.
    Bench {
        url: String,
        #[arg(long, default_value_t = 10_000)]
        calls: usize,
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
        #[arg(long, default_value_t = 64)]
        payload: usize,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Args::parse().command {
        Command::Serve { addr } => {
            let listener = tokio::net::TcpListener::bind(addr).await?;
            println!("listening on {}", listener.local_addr()?);
            let incoming =
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            Server::builder()
                .add_service(echo::pb::echo_server::EchoServer::new(
                    echo::EchoManager::new("raw"),
                ))
                .serve_with_incoming(incoming)
                .await?;
        }
        Command::Bench {
            url,
            calls,
            concurrency,
            payload,
        } => {
            let channel = Endpoint::from_shared(url)?
                .tcp_nodelay(true)
                .connect()
                .await?;
            let stats = bench::run(channel, calls, concurrency, payload).await;
            println!("{}", stats.line());
        }
    }
    Ok(())
}
