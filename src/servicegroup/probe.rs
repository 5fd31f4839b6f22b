//! Is the node holding an identity alive? Asked when a node joins and finds
//! its (topic, host) held: the live instance wins, a dead one is replaced at
//! once instead of after its lease or heartbeat runs out.

use std::time::Duration;

use tonic::transport::Endpoint;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// How long a holder has to answer its health check. A live node answers
/// in a round trip; a crashed one refuses the connection or (its host gone)
/// never answers, and a restart should not wait long for that.
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// What the holder of an identity said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Holder {
    /// Answered SERVING: a real duplicate.
    Serving,
    /// Did not answer SERVING within [`PROBE_TIMEOUT`]: crashed, stopping,
    /// or not there at all.
    Dead,
    /// Advertises no gRPC endpoint to ask.
    Unknown,
}

/// Asks the gRPC health service (overall status) at `holder_url`.
///
/// `own_url` is the joining node's endpoint: when the holder advertises the
/// very address this process serves on, whatever answers there is this
/// process, so the holder cannot be listening any more and counts as dead.
pub(crate) async fn probe(holder_url: Option<&str>, own_url: Option<&str>) -> Holder {
    let Some(url) = holder_url else {
        return Holder::Unknown;
    };
    if own_url == Some(url) {
        return Holder::Dead;
    }
    if let Some(addr) = url.strip_prefix("https://") {
        // The registry has no TLS client settings to check a TLS holder's
        // health with; a listener that accepts stands for a live holder,
        // so a live node is never taken over.
        let connect = tokio::net::TcpStream::connect(addr.trim_end_matches('/'));
        return match tokio::time::timeout(PROBE_TIMEOUT, connect).await {
            Ok(Ok(_)) => Holder::Serving,
            _ => Holder::Dead,
        };
    }
    let Ok(endpoint) = Endpoint::from_shared(url.to_string()) else {
        return Holder::Dead;
    };
    let endpoint = endpoint
        .connect_timeout(PROBE_TIMEOUT)
        .timeout(PROBE_TIMEOUT);
    let check = async {
        let channel = endpoint.connect().await.ok()?;
        let request = HealthCheckRequest {
            service: String::new(),
        };
        let response = HealthClient::new(channel).check(request).await.ok()?;
        Some(response.into_inner().status() == ServingStatus::Serving)
    };
    match tokio::time::timeout(PROBE_TIMEOUT, check).await {
        Ok(Some(true)) => Holder::Serving,
        _ => Holder::Dead,
    }
}
