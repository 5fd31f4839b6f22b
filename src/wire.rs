//! What travels on the wire between svckit's clients and nodes, named once:
//! the gRPC headers the kit reads and writes, and the marker of a call a
//! node refused before its handler ran.

use std::time::Duration;

use http::HeaderValue;

/// The gRPC status code of a response (in its headers or trailers).
pub(crate) const GRPC_STATUS: &str = "grpc-status";
/// The gRPC status message.
pub(crate) const GRPC_MESSAGE: &str = "grpc-message";
/// A call's deadline, as the client sends it. A `HeaderName`, made once:
/// a custom header inserted by a `&str` name copies the name into a new
/// buffer on every call.
pub(crate) const GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");

/// Set on an UNAVAILABLE answer that a node gave before the call's handler
/// ran (its pool was full): nothing ran, so svckit's clients send the call
/// to another node even when it is not idempotent. Its value names what
/// refused.
pub(crate) const REFUSED: &str = "svckit-refused";

/// How much a call matters when a node must refuse some:
/// `svckit-criticality: critical | default | sheddable`, on gRPC calls and
/// HTTP requests alike. svckit's clients set it from the channel and pass
/// it on to the calls made while serving one.
pub(crate) const CRITICALITY: http::HeaderName =
    http::HeaderName::from_static("svckit-criticality");

/// `grpc-status` of a cancelled call.
pub(crate) static CANCELLED: HeaderValue = HeaderValue::from_static("1");
/// `grpc-status` UNAVAILABLE.
pub(crate) static UNAVAILABLE: HeaderValue = HeaderValue::from_static("14");

/// `timeout` as a `grpc-timeout` header value (milliseconds).
pub(crate) fn grpc_timeout_header(timeout: Duration) -> HeaderValue {
    // The header allows at most 8 digits.
    let ms = timeout.as_millis().min(99_999_999);
    HeaderValue::try_from(format!("{ms}m"))
        .unwrap_or_else(|_| HeaderValue::from_static("99999999m"))
}

/// The HTTP/2 settings of every client connection svckit opens, to nodes
/// and to etcd.
///
/// A call given up on (its deadline passed, a hedge's loser, a keep-alive
/// stream abandoned for a new one) is reset, and an answer already on its
/// way may arrive after h2 has forgotten the stream (it remembers 50 for a
/// second). h2 answers each such frame with a reset of its own and counts
/// it against a limit of 1,024 over the connection's whole life; past it,
/// it closes the connection and fails every call on it. That limit guards
/// a server from a client that provokes resets; on a long-lived client
/// connection it turns the thousandth late answer into a lost connection
/// (at 10,000 nodes sharing registry connections, an etcd election made
/// them fall one after another). Late answers cost one small frame each,
/// so the client counts none.
pub(crate) fn client_http2(endpoint: tonic::transport::Endpoint) -> tonic::transport::Endpoint {
    endpoint.http2_max_local_error_reset_streams(None)
}

/// Parses a `grpc-timeout` header value (`100m`, `5S`, …).
pub(crate) fn parse_grpc_timeout(value: &HeaderValue) -> Option<Duration> {
    let s = value.to_str().ok()?;
    let (digits, unit) = s.split_at(s.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_round_trip() {
        let header = grpc_timeout_header(Duration::from_secs(60));
        assert_eq!(header, "60000m");
        assert_eq!(parse_grpc_timeout(&header), Some(Duration::from_secs(60)));
        for (text, want) in [
            ("2S", Duration::from_secs(2)),
            ("1H", Duration::from_secs(3600)),
            ("250u", Duration::from_micros(250)),
        ] {
            assert_eq!(
                parse_grpc_timeout(&HeaderValue::from_static(text)),
                Some(want)
            );
        }
        assert_eq!(parse_grpc_timeout(&HeaderValue::from_static("10x")), None);
        assert_eq!(parse_grpc_timeout(&HeaderValue::from_static("")), None);
    }
}
