//! The baseline for `echo_bench`: the thinnest tonic there is. The server's
//! handler only echoes the payload back (no kit, no manager, no host or
//! pid lookup); the client is one tonic channel to one address, driven by
//! the same load loop as `echo_bench`.
//!
//! ```text
//! raw_echo serve 127.0.0.1:50051
//! raw_echo bench http://127.0.0.1:50051 --calls 20000 --concurrency 64
//! ```

use std::net::SocketAddr;

use clap::{Parser, Subcommand};
use tonic::codegen::BoxStream;
use tonic::transport::{Endpoint, Server};
use tonic::{Request, Response, Status, Streaming};

/// The echo API's stubs, and nothing of the kit's example manager.
mod echo {
    #[allow(dead_code, clippy::all)]
    pub mod pb {
        tonic::include_proto!("svckit.examples.echo.v1");
    }
}

#[path = "common/bench.rs"]
mod bench;

use echo::pb::echo_server::{Echo, EchoServer};
use echo::pb::{
    CollectResponse, EchoRequest, EchoResponse, EchoStreamRequest, SleepRequest, SleepResponse,
};

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
        /// Open loop at this many calls/s.
        #[arg(long)]
        rate: Option<f64>,
    },
}

/// Echoes; the other methods are not part of the benchmark.
struct Thin;

#[tonic::async_trait]
impl Echo for Thin {
    async fn echo(&self, request: Request<EchoRequest>) -> Result<Response<EchoResponse>, Status> {
        Ok(Response::new(EchoResponse {
            payload: request.into_inner().payload,
            ..EchoResponse::default()
        }))
    }

    async fn sleep(&self, _: Request<SleepRequest>) -> Result<Response<SleepResponse>, Status> {
        Err(Status::unimplemented("echo only"))
    }

    type EchoStreamStream = BoxStream<EchoResponse>;

    async fn echo_stream(
        &self,
        _: Request<EchoStreamRequest>,
    ) -> Result<Response<Self::EchoStreamStream>, Status> {
        Err(Status::unimplemented("echo only"))
    }

    type ChatStream = BoxStream<EchoResponse>;

    async fn chat(
        &self,
        _: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<Self::ChatStream>, Status> {
        Err(Status::unimplemented("echo only"))
    }

    async fn collect(
        &self,
        _: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<CollectResponse>, Status> {
        Err(Status::unimplemented("echo only"))
    }
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
                .add_service(EchoServer::new(Thin))
                .serve_with_incoming(incoming)
                .await?;
        }
        Command::Bench {
            url,
            calls,
            concurrency,
            payload,
            rate,
        } => {
            let channel = Endpoint::from_shared(url)?
                .tcp_nodelay(true)
                .connect()
                .await?;
            let load = bench::Load {
                calls,
                concurrency,
                payload,
                rate,
            };
            println!("{}", bench::run(channel, load).await.line());
        }
    }
    Ok(())
}
