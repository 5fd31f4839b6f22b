//! Bad input on the RPC port and in the registry: oversized, invalid and
//! truncated messages, unknown methods, HTTP/2 garbage, and a service record
//! written by hand as invalid JSON. Each gets a clear answer, and the node
//! keeps serving.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use support::etcd::Etcd;
use support::node::{quick_node_args, Proc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;
use tonic_prost::ProstCodec;

#[allow(dead_code)]
#[path = "../examples/common/echo.rs"]
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
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("connect")
}

/// A plain Echo call: the node still serves.
async fn still_serves(addr: SocketAddr) {
    let reply = EchoClient::new(channel(addr).await)
        .echo(EchoRequest {
            payload: b"ok".to_vec(),
        })
        .await
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

#[tokio::test]
async fn a_truncated_message_is_refused_and_the_node_serves_on() {
    let (_node, addr, _dir) = node(&[]);
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut client, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(connection);
    let request = http::Request::post(format!("http://{addr}/svckit.examples.echo.v1.Echo/Echo"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut stream) = client.send_request(request, false).unwrap();
    // A prefix announcing 100 bytes, then 10, then the end of the stream.
    let mut frame = vec![0u8, 0, 0, 0, 100];
    frame.extend_from_slice(&[0x0a; 10]);
    stream.send_data(Bytes::from(frame), true).unwrap();
    let response = tokio::time::timeout(WAIT, response)
        .await
        .expect("an answer")
        .expect("a response");
    let headers = response.headers().clone();
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        chunk.expect("body");
    }
    let trailers = body.trailers().await.expect("trailers").unwrap_or_default();
    let status = headers
        .get("grpc-status")
        .or_else(|| trailers.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(Code::from_i32);
    assert!(
        matches!(status, Some(Code::Internal | Code::InvalidArgument)),
        "{status:?} {headers:?} {trailers:?}"
    );
    still_serves(addr).await;
}

#[tokio::test]
async fn http2_garbage_closes_that_connection_only() {
    let (mut node, addr, _dir) = node(&[]);
    for garbage in [
        &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\xff\xff\xff\xff\xff\xff\xff\xff\xff"[..],
        &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..],
        &b"GET / HTTP/1.1\r\nhost: x\r\n\r\n"[..],
    ] {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _ = stream.write_all(garbage).await;
        let mut buf = Vec::new();
        let closed = tokio::time::timeout(WAIT, stream.read_to_end(&mut buf)).await;
        assert!(closed.is_ok(), "the connection stays open after garbage");
    }
    still_serves(addr).await;
    assert!(
        node.wait_exit(Duration::ZERO).is_none(),
        "the node is still up"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_record_written_by_hand_is_skipped_with_a_warning() {
    use svckit::rpc::{Rpc, Target};
    let etcd = Etcd::start();
    let url = etcd.url().to_string();
    let (_node, _) = Proc::start_example("echo_node", &quick_node_args(&url, "good"), &[]);
    let mut client = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .unwrap();
    client
        .put("/test/services/echo/broken", "{not json", None)
        .await
        .unwrap();

    let (code, out, err) = Proc::run_cli(&["members", "list", "--registry", &url, "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let members: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let hosts: Vec<&str> = members.iter().filter_map(|m| m["host"].as_str()).collect();
    assert_eq!(hosts, ["good"], "{out}");
    assert!(err.contains("invalid service record"), "{err}");

    // A client built on the same registry still reaches the good node.
    let registry = svckit::servicegroup::connect(&etcd.url(), &support::options())
        .await
        .unwrap();
    let rpc = Rpc::new(registry).await.unwrap();
    rpc.wait_for_nodes(&Target::topic("echo"), 1, WAIT)
        .await
        .unwrap();
    let reply = EchoClient::new(rpc.channel(Target::topic("echo")))
        .echo(EchoRequest {
            payload: b"x".to_vec(),
        })
        .await
        .expect("the good node answers");
    assert_eq!(reply.into_inner().host, "good");
}
