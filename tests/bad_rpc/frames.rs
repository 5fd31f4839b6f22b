//! Malformed gRPC over a real HTTP/2 connection, and bytes that are not
//! HTTP/2 at all, over a raw socket.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

use crate::{node, still_serves, WAIT};

/// Sends one Echo call whose request body is `body` as it is (length
/// prefixes included), over a fresh HTTP/2 connection; returns the
/// grpc-status and grpc-message of the answer.
async fn raw_call(addr: SocketAddr, body: &[u8]) -> (Option<Code>, String) {
    let mut client = h2_client(addr).await;
    call_on(&mut client, addr, body).await
}

/// A fresh HTTP/2 connection to `addr`.
pub async fn h2_client(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(connection);
    client
}

/// [`raw_call`] on an open connection.
pub async fn call_on(
    client: &mut h2::client::SendRequest<Bytes>,
    addr: SocketAddr,
    body: &[u8],
) -> (Option<Code>, String) {
    try_call_on(client, addr, body)
        .await
        .unwrap_or_else(|e| panic!("no answer: {e}"))
}

/// [`call_on`], with a connection closed under it as an error.
pub async fn try_call_on(
    client: &mut h2::client::SendRequest<Bytes>,
    addr: SocketAddr,
    body: &[u8],
) -> Result<(Option<Code>, String), h2::Error> {
    let request = http::Request::post(format!("http://{addr}/svckit.examples.echo.v1.Echo/Echo"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut stream) = client.send_request(request, false)?;
    stream.send_data(Bytes::copy_from_slice(body), true)?;
    let response = tokio::time::timeout(WAIT, response)
        .await
        .expect("an answer in time")?;
    let headers = response.headers().clone();
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        chunk?;
    }
    let trailers = body.trailers().await?.unwrap_or_default();
    let field = |name: &str| {
        headers
            .get(name)
            .or_else(|| trailers.get(name))
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let status = field("grpc-status")
        .and_then(|v| v.parse::<i32>().ok())
        .map(Code::from_i32);
    Ok((status, field("grpc-message").unwrap_or_default()))
}

#[tokio::test]
async fn a_truncated_message_is_refused_and_the_node_serves_on() {
    let (_node, addr, _dir) = node(&[]);
    // A prefix announcing 100 bytes, then 10, then the end of the stream.
    let mut body = vec![0u8, 0, 0, 0, 100];
    body.extend_from_slice(&[0x0a; 10]);
    let (status, message) = raw_call(addr, &body).await;
    assert!(
        matches!(status, Some(Code::Internal | Code::InvalidArgument)),
        "{status:?} {message}"
    );
    still_serves(addr).await;
}

#[tokio::test]
async fn bad_length_prefixes_get_clear_statuses_and_the_node_serves_on() {
    let (mut node, addr, _dir) = node(&[]);
    // A valid 2-byte message (field 1, empty bytes) behind each prefix.
    let message = [0x0a, 0x00];
    let prefixed = |flag: u8, length: u32| {
        let mut body = vec![flag];
        body.extend_from_slice(&length.to_be_bytes());
        body.extend_from_slice(&message);
        body
    };

    // Compressed, but the call named no grpc-encoding to decompress with.
    let (status, text) = raw_call(addr, &prefixed(1, 2)).await;
    assert_eq!(status, Some(Code::Internal), "{text}");
    assert!(text.contains("compress"), "{text}");

    // A flag byte that is neither 0 nor 1.
    let (status, text) = raw_call(addr, &prefixed(7, 2)).await;
    assert_eq!(status, Some(Code::Internal), "{text}");

    // 4 GiB declared, two bytes sent: over max_message_size, refused on the
    // prefix alone, nothing buffered.
    let (status, text) = raw_call(addr, &prefixed(0, u32::MAX)).await;
    assert_eq!(status, Some(Code::ResourceExhausted), "{text}");

    // Longer than the body that follows, which then ends.
    let (status, text) = raw_call(addr, &prefixed(0, 1000)).await;
    assert!(
        matches!(status, Some(Code::Internal | Code::InvalidArgument)),
        "{status:?} {text}"
    );

    // Half a prefix, then the end of the stream.
    let (status, text) = raw_call(addr, &[0, 0, 0]).await;
    assert!(
        matches!(status, Some(Code::Internal | Code::InvalidArgument)),
        "{status:?} {text}"
    );

    still_serves(addr).await;
    assert!(
        node.wait_exit(Duration::ZERO).is_none(),
        "the node is still up"
    );
}

#[tokio::test]
async fn http2_garbage_closes_that_connection_only() {
    let (mut node, addr, _dir) = node(&[]);
    for garbage in [
        &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\xff\xff\xff\xff\xff\xff\xff\xff\xff"[..],
        &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..],
        &b"GET / HTTP/1.1\r\nhost: x\r\n\r\n"[..],
        // A valid preface and empty SETTINGS, then a DATA frame on stream 0.
        &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0\0\0\x05\0\0\0\0\0\0\0\0\0\0\0"[..],
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
