//! What a failed attempt says: whether the request may have reached the
//! node, and whether the deadline ended it.

use tonic::Status;

use crate::rpc::Target;

/// Whether a failed call may have reached the node.
pub(super) enum Sent<E> {
    No(E),
    Maybe(E),
}

/// `true` when the error shows the request never reached a handler: the
/// connection was refused or could not be made, or a draining server
/// turned the stream away ([`drained`]).
pub(super) fn never_sent(error: &(dyn std::error::Error + 'static)) -> bool {
    not_connected(error) || drained(error)
}

/// `true` when the error, or one it wraps, is a connection that could not
/// be made.
fn not_connected(error: &(dyn std::error::Error + 'static)) -> bool {
    if let Some(io) = error.downcast_ref::<std::io::Error>() {
        use std::io::ErrorKind::*;
        if matches!(
            io.kind(),
            ConnectionRefused | AddrNotAvailable | NotConnected | TimedOut
        ) {
            return true;
        }
        // An io::Error's `source()` skips the error it wraps: look inside.
        if io.get_ref().is_some_and(|inner| not_connected(inner)) {
            return true;
        }
    }
    error.is::<tonic::ConnectError>() || error.source().is_some_and(not_connected)
}

/// `true` when a draining server turned the call away before processing
/// it: its stream was above a GOAWAY's last stream id, refused
/// (REFUSED_STREAM), or never written because the connection was closing
/// (hyper's `Canceled`). The node is still there: the next attempt goes
/// out on another connection, as gRPC's transparent retry does.
pub(super) fn drained(error: &(dyn std::error::Error + 'static)) -> bool {
    if let Some(h2) = error.downcast_ref::<h2::Error>() {
        if h2.reason() == Some(h2::Reason::REFUSED_STREAM) || h2.is_go_away() && h2.is_remote() {
            return true;
        }
    }
    if error
        .downcast_ref::<hyper::Error>()
        .is_some_and(hyper::Error::is_canceled)
    {
        return true;
    }
    if let Some(io) = error.downcast_ref::<std::io::Error>() {
        if io.get_ref().is_some_and(|inner| drained(inner)) {
            return true;
        }
    }
    error.source().is_some_and(drained)
}

/// `true` when the node's channel gave up at the `grpc-timeout` deadline.
pub(super) fn timed_out(error: &(dyn std::error::Error + 'static)) -> bool {
    error.is::<tonic::TimeoutExpired>() || error.source().is_some_and(timed_out)
}

pub(super) fn unavailable(target: &Target) -> Status {
    Status::unavailable(format!("no node available for {target}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::body::Body;

    #[test]
    fn only_undelivered_failures_count_as_never_sent() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(never_sent(&refused));
        let wrapped = std::io::Error::other(refused);
        assert!(never_sent(&wrapped), "found through the source chain");
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(
            !never_sent(&reset),
            "a reset may come after the server got the call"
        );
        let refused_stream = h2::Error::from(h2::Reason::REFUSED_STREAM);
        assert!(never_sent(&refused_stream));
        assert!(drained(&refused_stream));
        assert!(!drained(&wrapped), "a refused connection is no drain");
        assert!(!drained(&reset));
    }

    #[tokio::test]
    async fn a_refused_connection_from_tonic_counts_as_never_sent() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        let mut channel = tonic::transport::Endpoint::from_shared(url)
            .unwrap()
            .connect_lazy();
        let request = http::Request::builder()
            .uri("/svckit.base.v1.Base/Ping")
            .body(Body::empty())
            .unwrap();
        let ready = tower::ServiceExt::ready(&mut channel).await.unwrap();
        let error = tower::Service::call(ready, request).await.unwrap_err();
        assert!(never_sent(&error), "{error:?}");
        assert!(!timed_out(&error));
    }
}
