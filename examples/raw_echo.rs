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

#[path = "common/spin.rs"]
mod spin;

#[path = "common/overload.rs"]
mod overload;

use echo::pb::echo_server::{Echo, EchoServer};
use echo::pb::work_server::{Work, WorkServer};
use echo::pb::{
    CollectResponse, EchoRequest, EchoResponse, EchoStreamRequest, RelayRequest, RelayResponse,
    SleepRequest, SleepResponse, SpinRequest, SpinResponse,
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
    /// Call Work.Spin on URL over one connection (see common/overload.rs):
    /// a closed loop with --concurrency, or an open loop with --rate.
    Overload {
        url: String,
        /// CPU time each call asks for.
        #[arg(long, default_value_t = 1000)]
        micros: u64,
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
        /// Closed loop of this many callers: measure capacity.
        #[arg(long, conflicts_with = "rate")]
        concurrency: Option<usize>,
        /// Open loop at this many calls/s.
        #[arg(long)]
        rate: Option<f64>,
        /// Each call's deadline, in milliseconds.
        #[arg(long, default_value_t = 1000)]
        deadline_ms: u64,
        /// Open loop: every Nth call `critical`, the others `sheddable`
        /// (0: no criticality header).
        #[arg(long, default_value_t = 0)]
        critical_every: usize,
    },
}

/// Echoes; the other methods are not part of the benchmark.
struct Thin;

/// Spins, with no limit on the calls at once (bench-overload's baseline).
#[tonic::async_trait]
impl Work for Thin {
    async fn spin(&self, request: Request<SpinRequest>) -> Result<Response<SpinResponse>, Status> {
        let work = std::time::Duration::from_micros(request.into_inner().micros);
        spin::spin(work.min(spin::MAX_SPIN)).await;
        Ok(Response::new(SpinResponse::default()))
    }

    async fn relay(&self, _: Request<RelayRequest>) -> Result<Response<RelayResponse>, Status> {
        Err(Status::unimplemented("spin only"))
    }
}

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
                .add_service(WorkServer::new(Thin))
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
        Command::Overload {
            url,
            micros,
            secs,
            concurrency,
            rate,
            deadline_ms,
            critical_every,
        } => {
            let channel = Endpoint::from_shared(url)?
                .tcp_nodelay(true)
                .connect()
                .await?;
            let deadline = std::time::Duration::from_millis(deadline_ms);
            let line = match (concurrency, rate) {
                (_, Some(rate)) => {
                    overload::open(channel, micros, rate, secs, deadline, critical_every).await
                }
                (concurrency, None) => {
                    let concurrency = concurrency.unwrap_or(4);
                    overload::capacity(channel, micros, concurrency, secs, deadline).await
                }
            };
            println!("{line}");
        }
    }
    Ok(())
}
