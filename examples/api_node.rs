//! An HTTP API in front of an RPC topic, as nova-api is in front of
//! conductor: `GET /v1/echo?msg=…[&server=HOST]` calls topic `echo` and
//! answers with the serving host; `GET /v1/relay?ms=…[&spin_us=…]` asks a
//! node of `echo` to call `Sleep` on the topic in turn (a nested call, which
//! inherits what is left of this request's `http_request_timeout`);
//! `GET /v1/members` lists the service group.
//!
//! ```text
//! cargo run --example echo_node &
//! cargo run --example api_node -- --http-listen 127.0.0.1:8774
//! curl 'http://127.0.0.1:8774/v1/echo?msg=hi'
//! ```

use std::sync::{Arc, OnceLock};

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use clap::Parser;
use serde::Deserialize;
use svckit::config::{CommonArgs, Config};
use svckit::manager::{GrpcServices, Manager};
use svckit::rpc::{Rpc, Target};
use svckit::servicegroup::{self, Registry};
use svckit::{BoxError, Node, Service};

#[allow(dead_code)]
#[path = "common/echo.rs"]
mod echo;

use echo::pb::echo_client::EchoClient;
use echo::pb::work_client::WorkClient;
use echo::pb::{EchoRequest, RelayRequest};

#[derive(Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

/// What the handlers share, known once `init_host` connected.
struct Backends {
    rpc: Rpc,
    registry: Registry,
}

struct Api {
    config: Config,
    backends: OnceLock<Arc<Backends>>,
}

impl Manager for Api {
    fn grpc_services(self: &Arc<Self>, _services: &mut GrpcServices) {}

    async fn init_host(&self) -> Result<(), BoxError> {
        let registry =
            servicegroup::connect(self.config.registry(), &self.config.registry_options()).await?;
        let rpc = Rpc::from_config(&self.config).await?;
        let _ = self.backends.set(Arc::new(Backends { rpc, registry }));
        Ok(())
    }

    fn http_routes(self: &Arc<Self>) -> Option<Router> {
        let backends = self.backends.get()?.clone();
        Some(
            Router::new()
                .route("/v1/echo", get(echo))
                .route("/v1/relay", get(relay))
                .route("/v1/members", get(members))
                .with_state(backends),
        )
    }
}

#[derive(Deserialize)]
struct EchoQuery {
    msg: String,
    server: Option<String>,
}

async fn echo(State(b): State<Arc<Backends>>, Query(q): Query<EchoQuery>) -> Response {
    let mut target = Target::topic("echo");
    if let Some(server) = q.server {
        target = target.server(server);
    }
    let reply = EchoClient::new(b.rpc.channel(target))
        .echo(EchoRequest {
            payload: q.msg.into_bytes(),
        })
        .await;
    match reply {
        Ok(reply) => {
            let reply = reply.into_inner();
            Json(serde_json::json!({
                "msg": String::from_utf8_lossy(&reply.payload),
                "host": reply.host,
                "pid": reply.pid,
            }))
            .into_response()
        }
        Err(status) => failed(&status),
    }
}

/// A failed call as an HTTP answer.
fn failed(status: &tonic::Status) -> Response {
    let code = match status.code() {
        tonic::Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        tonic::Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
        _ => StatusCode::BAD_GATEWAY,
    };
    let body = serde_json::json!({ "error": { "code": format!("{:?}", status.code()), "message": status.message() } });
    (code, Json(body)).into_response()
}

#[derive(Deserialize)]
struct RelayQuery {
    ms: u64,
    #[serde(default)]
    spin_us: u64,
}

async fn relay(State(b): State<Arc<Backends>>, Query(q): Query<RelayQuery>) -> Response {
    let reply = WorkClient::new(b.rpc.channel(Target::topic("echo")))
        .relay(RelayRequest {
            topic: "echo".into(),
            sleep_millis: q.ms,
            spin_micros: q.spin_us,
        })
        .await;
    match reply {
        Ok(reply) => {
            let reply = reply.into_inner();
            // The nested call ran out of this request's time: so did it.
            let status = if reply.code == tonic::Code::DeadlineExceeded as i32 {
                StatusCode::GATEWAY_TIMEOUT
            } else {
                StatusCode::OK
            };
            let body = Json(serde_json::json!({
                "host": reply.host,
                "nested": { "code": reply.code, "message": reply.message },
                "expired": reply.expired,
            }));
            (status, body).into_response()
        }
        Err(status) => failed(&status),
    }
}

async fn members(State(b): State<Arc<Backends>>) -> Response {
    match b.registry.list(None).await {
        Ok(members) => Json(members).into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "error": e.to_string() })),
        )
            .into_response(),
    }
}

fn main() -> std::process::ExitCode {
    svckit::launcher::run(
        svckit::config::parse_args::<Args>().common,
        |config| async move {
            let api = Api {
                config: config.clone(),
                backends: OnceLock::new(),
            };
            let node = Node::builder(api)
                .binary("api_node")
                .topic("api")
                .version(env!("CARGO_PKG_VERSION"))
                .build(&config);
            Ok(vec![Arc::new(node) as Arc<dyn Service>])
        },
    )
}
