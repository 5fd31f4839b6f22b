//! The baselines of `scripts/bench-http`, what a user writes without svckit:
//!
//! - `raw_http hello ADDR`: a plain axum server that answers `hello` (the
//!   limit of the HTTP stack on this machine);
//! - `raw_http api ADDR ECHO_URL`: the api_node flow hand-wired, an axum
//!   handler calling one echo_node through a tonic client to a fixed
//!   address, with no discovery, limits or admin endpoints.
//!
//! Each prints `listening on ADDR` once bound.

use std::net::SocketAddr;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use clap::{Parser, Subcommand};
use serde::Deserialize;
use tonic::transport::Channel;

#[allow(dead_code)]
#[path = "common/echo.rs"]
mod echo;

use echo::pb::echo_client::EchoClient;
use echo::pb::EchoRequest;

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// `GET /` answers `hello`.
    Hello { addr: SocketAddr },
    /// `GET /v1/echo?msg=…` calls the echo node at ECHO_URL.
    Api { addr: SocketAddr, echo_url: String },
}

#[derive(Deserialize)]
struct EchoQuery {
    msg: String,
}

async fn echo(State(client): State<EchoClient<Channel>>, Query(q): Query<EchoQuery>) -> Response {
    let mut client = client;
    match client
        .echo(EchoRequest {
            payload: q.msg.into_bytes(),
        })
        .await
    {
        Ok(reply) => {
            let reply = reply.into_inner();
            Json(serde_json::json!({
                "msg": String::from_utf8_lossy(&reply.payload),
                "host": reply.host,
                "pid": reply.pid,
            }))
            .into_response()
        }
        Err(status) => (StatusCode::BAD_GATEWAY, status.message().to_string()).into_response(),
    }
}

async fn serve(addr: SocketAddr, app: Router) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Args::parse().command {
        Command::Hello { addr } => {
            serve(addr, Router::new().route("/", get(|| async { "hello" }))).await
        }
        Command::Api { addr, echo_url } => {
            let client = EchoClient::new(Channel::from_shared(echo_url)?.connect().await?);
            serve(
                addr,
                Router::new()
                    .route("/v1/echo", get(echo))
                    .with_state(client),
            )
            .await
        }
    }
}
