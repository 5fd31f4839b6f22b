//! Bad input on the RPC port and in the registry: oversized, invalid and
//! truncated messages, unknown methods, malformed frames and HTTP/2 garbage
//! over a raw socket ([`frames`]), floods of connections that never speak
//! ([`flood`]), and service records written by hand as invalid JSON
//! ([`records`]). Each gets a clear answer, and the node keeps serving.

#[path = "../support/mod.rs"]
mod support;

mod flood;
mod frames;
mod records;

use std::net::SocketAddr;
use std::time::Duration;

use support::node::{quick_node_args, Proc};
use tonic::Code;
use tonic_prost::ProstCodec;

#[allow(dead_code)]
#[path = "../../examples/common/echo.rs"]
mod echo;

use echo::pb::echo_client::EchoClient;
use echo::pb::{EchoRequest, EchoResponse};

const WAIT: Duration = Duration::from_secs(20);

fn node(env: &[(&str, &str)]) -> (Proc, SocketAddr, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    let (proc, addr) = Proc::start_example("echo_node", &quick_node_args(&url, "b1"), env);
    (proc, addr, dir)
}

async fn channel(addr: SocketAddr) -> tonic::transport::Channel {
    channel_to(addr).await.expect("connect")
}

async fn channel_to(
    addr: SocketAddr,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
}

/// A plain Echo call: the node still serves.
async fn still_serves(addr: SocketAddr) {
    let call = async {
        EchoClient::new(channel(addr).await)
            .echo(EchoRequest {
                payload: b"ok".to_vec(),
            })
            .await
    };
    let reply = tokio::time::timeout(WAIT, call)
        .await
        .expect("an answer in time")
        .expect("the node still serves");
    assert_eq!(reply.into_inner().payload, b"ok");
}

#[tokio::test]
async fn a_message_over_the_limit_is_resource_exhausted() {
    let (_node, addr, _dir) = node(&[("SVCKIT_MAX_MESSAGE_SIZE", "4096")]);
    let err = EchoClient::new(channel(addr).await)
        .echo(EchoRequest {
            payload: vec![1; 10_000],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    // Within the limit, the same call passes.
    let reply = EchoClient::new(channel(addr).await)
        .echo(EchoRequest {
            payload: vec![1; 1000],
        })
        .await
        .expect("a message within the limit");
    assert_eq!(reply.into_inner().payload.len(), 1000);
}

/// A message whose field 1 is a number where Echo expects bytes.
#[derive(Clone, PartialEq, prost::Message)]
struct WrongWireType {
    #[prost(uint64, tag = "1")]
    payload: u64,
}

async fn call<Req, Resp>(addr: SocketAddr, path: &'static str, request: Req) -> tonic::Status
where
    Req: prost::Message + Send + Sync + 'static,
    Resp: prost::Message + Default + Send + Sync + 'static,
{
    let mut grpc = tonic::client::Grpc::new(channel(addr).await);
    grpc.ready().await.expect("ready");
    let result: Result<tonic::Response<Resp>, _> = grpc
        .unary(
            tonic::Request::new(request),
            http::uri::PathAndQuery::from_static(path),
            ProstCodec::default(),
        )
        .await;
    result.err().expect("the call fails")
}

#[tokio::test]
async fn unknown_methods_and_invalid_protobuf_get_clear_codes() {
    let (_node, addr, _dir) = node(&[]);
    let status = call::<EchoRequest, EchoResponse>(
        addr,
        "/svckit.examples.echo.v1.Echo/NoSuchMethod",
        EchoRequest::default(),
    )
    .await;
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    let status =
        call::<EchoRequest, EchoResponse>(addr, "/no.such.Service/Echo", EchoRequest::default())
            .await;
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    let status = call::<WrongWireType, EchoResponse>(
        addr,
        "/svckit.examples.echo.v1.Echo/Echo",
        WrongWireType { payload: 7 },
    )
    .await;
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    still_serves(addr).await;
}
