//! [`RpcChannel`]: a tower service the generated tonic clients accept, that
//! picks a node per call by power of two choices on pending calls, and
//! retries calls that never reached a node on another one.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::{BodyExt, Full};
use rand::Rng;
use tokio::sync::watch;
use tonic::body::Body;
use tonic::Status;

use super::discovery::{Node, Snapshot};
use super::Target;
use crate::error::BoxError;

const GRPC_TIMEOUT: &str = "grpc-timeout";

/// `timeout` as a `grpc-timeout` header value (milliseconds).
pub(super) fn grpc_timeout_header(timeout: Duration) -> http::HeaderValue {
    // The header allows at most 8 digits.
    let ms = timeout.as_millis().min(99_999_999);
    http::HeaderValue::try_from(format!("{ms}m"))
        .unwrap_or_else(|_| http::HeaderValue::from_static("99999999m"))
}

/// Parses a `grpc-timeout` header value (`100m`, `5S`, …).
fn parse_grpc_timeout(value: &http::HeaderValue) -> Option<Duration> {
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

/// How many nodes a call may try before giving up.
const MAX_ATTEMPTS: usize = 3;

/// A load-balanced channel to the nodes of a [`Target`]; cheap to clone.
///
/// ```ignore
/// let mut echo = EchoClient::new(rpc.channel(Target::topic("echo")));
/// ```
#[derive(Clone)]
pub struct RpcChannel {
    pub(super) target: Arc<Target>,
    pub(super) snapshot: watch::Receiver<Arc<Snapshot>>,
    pub(super) timeout: Duration,
    /// `timeout` as a `grpc-timeout` value, made once per channel.
    pub(super) timeout_header: http::HeaderValue,
    pub(super) idempotent: bool,
}

impl RpcChannel {
    /// Marks the calls of this channel safe to repeat: a call that failed in
    /// transport after it may have reached a node is retried on another.
    #[must_use]
    pub fn idempotent(mut self) -> Self {
        self.idempotent = true;
        self
    }

    /// The deadline of each call (default `rpc_response_timeout`).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self.timeout_header = grpc_timeout_header(timeout);
        self
    }

    /// The target this channel calls.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The nodes this channel would choose from now.
    pub fn hosts(&self) -> Vec<String> {
        self.snapshot
            .borrow()
            .nodes(&self.target)
            .iter()
            .map(|n| n.host().to_string())
            .collect()
    }
}

/// Picks by power of two choices: two distinct random nodes, the one with
/// fewer calls in flight.
fn pick(nodes: &[Arc<Node>], tried: &[String]) -> Option<Arc<Node>> {
    let fresh: Vec<&Arc<Node>> = nodes
        .iter()
        .filter(|n| !tried.iter().any(|t| t == n.host()))
        .collect();
    match fresh.len() {
        0 => None,
        1 => Some(fresh[0].clone()),
        len => {
            let mut rng = rand::rng();
            let a = rng.random_range(0..len);
            let b = (a + rng.random_range(1..len)) % len;
            let (na, nb) = (fresh[a], fresh[b]);
            Some(if nb.load() < na.load() {
                nb.clone()
            } else {
                na.clone()
            })
        }
    }
}

/// Whether a failed call may have reached the node.
enum Sent<E> {
    No(E),
    Maybe(E),
}

/// Counts a call as pending on its node while it is alive.
struct PendingGuard(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `true` when the error shows the request never left this process: the
/// connection was refused or could not be made, or the server refused the
/// stream before processing it (HTTP/2 REFUSED_STREAM, GOAWAY).
fn never_sent(error: &(dyn std::error::Error + 'static)) -> bool {
    if let Some(io) = error.downcast_ref::<std::io::Error>() {
        use std::io::ErrorKind::*;
        if matches!(
            io.kind(),
            ConnectionRefused | AddrNotAvailable | NotConnected | TimedOut
        ) {
            return true;
        }
        // An io::Error's `source()` skips the error it wraps: look inside.
        if io.get_ref().is_some_and(|inner| never_sent(inner)) {
            return true;
        }
    }
    if let Some(h2) = error.downcast_ref::<h2::Error>() {
        if h2.reason() == Some(h2::Reason::REFUSED_STREAM) || h2.is_go_away() && h2.is_remote() {
            return true;
        }
    }
    if error.is::<tonic::ConnectError>() {
        return true;
    }
    error.source().is_some_and(never_sent)
}

/// `true` when the node's channel gave up at the `grpc-timeout` deadline.
fn timed_out(error: &(dyn std::error::Error + 'static)) -> bool {
    error.is::<tonic::TimeoutExpired>() || error.source().is_some_and(timed_out)
}

fn unavailable(target: &Target) -> Status {
    Status::unavailable(format!("no node available for {target}"))
}

impl tower::Service<http::Request<Body>> for RpcChannel {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Each node's channel buffers; readiness is checked per call.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let this = self.clone();
        // A shorter deadline the caller set on the request (`grpc-timeout`)
        // stays; otherwise the channel's is sent along for the server.
        let mut request = request;
        let timeout = match request
            .headers()
            .get(GRPC_TIMEOUT)
            .and_then(parse_grpc_timeout)
        {
            Some(t) if t <= self.timeout => t,
            _ => {
                request
                    .headers_mut()
                    .insert(GRPC_TIMEOUT, self.timeout_header.clone());
                self.timeout
            }
        };
        // A call made while serving a traced request carries its context.
        if let Some(parent) = crate::telemetry::trace::current() {
            request
                .headers_mut()
                .entry(crate::telemetry::trace::TRACEPARENT)
                .or_insert(parent);
        }
        // The deadline is enforced by each node's tonic channel from the
        // header: no second timer per call here.
        Box::pin(async move { this.send(request, Instant::now() + timeout).await })
    }
}

impl RpcChannel {
    fn deadline_exceeded(&self) -> BoxError {
        Box::new(Status::deadline_exceeded(format!(
            "no reply from {} within the call's deadline",
            self.target
        )))
    }

    async fn send(
        &self,
        request: http::Request<Body>,
        deadline: Instant,
    ) -> Result<http::Response<Body>, BoxError> {
        let nodes = self.snapshot.borrow().nodes(&self.target);
        if nodes.is_empty() {
            return Err(Box::new(unavailable(&self.target)));
        }
        let (parts, body) = request.into_parts();
        // A unary request is one small frame: keep it, so that a call that
        // never reached a node can be sent to another.
        let body: Bytes = body
            .collect()
            .await
            .map_err(|e| -> BoxError { Box::new(Status::internal(format!("request body: {e}"))) })?
            .to_bytes();
        let mut tried = Vec::new();
        let mut last_error = None;
        for _ in 0..MAX_ATTEMPTS {
            // After a failure, look again: the watch may have removed the node.
            let candidates = if tried.is_empty() {
                nodes.clone()
            } else {
                self.snapshot.borrow().nodes(&self.target)
            };
            let Some(node) = pick(&candidates, &tried) else {
                break;
            };
            let mut attempt = http::Request::new(Body::new(Full::new(body.clone())));
            *attempt.method_mut() = parts.method.clone();
            *attempt.uri_mut() = parts.uri.clone();
            *attempt.version_mut() = parts.version;
            *attempt.headers_mut() = parts.headers.clone();
            *attempt.extensions_mut() = parts.extensions.clone();
            if !tried.is_empty() {
                // A retry gets what is left of the call's deadline.
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(self.deadline_exceeded());
                }
                attempt
                    .headers_mut()
                    .insert(GRPC_TIMEOUT, grpc_timeout_header(left));
            }

            node.pending.fetch_add(1, Ordering::Relaxed);
            let guard = PendingGuard(node.pending.clone());
            let mut channel = node.channel.clone();
            // The node's channel is a buffer in front of its connection: it
            // must be ready before a call; failing that, nothing was sent.
            let result = match tower::ServiceExt::ready(&mut channel).await {
                Ok(ready) => tower::Service::call(ready, attempt)
                    .await
                    .map_err(Sent::Maybe),
                Err(e) => Err(Sent::No(e)),
            };
            drop(guard);
            let error = match result {
                Ok(response) => return Ok(response),
                Err(Sent::No(e)) => e,
                Err(Sent::Maybe(e)) if timed_out(&e) => return Err(self.deadline_exceeded()),
                Err(Sent::Maybe(e)) if never_sent(&e) || self.idempotent => e,
                Err(Sent::Maybe(e)) => return Err(Box::new(e)),
            };
            tracing::debug!(host = node.host(), error = %error, "call not delivered; trying another node");
            tried.push(node.host().to_string());
            last_error = Some(error);
        }
        Err(match last_error {
            Some(e) => Box::new(Status::unavailable(format!("{}: {e}", self.target))),
            None => Box::new(unavailable(&self.target)),
        })
    }
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
                parse_grpc_timeout(&http::HeaderValue::from_static(text)),
                Some(want)
            );
        }
        assert_eq!(
            parse_grpc_timeout(&http::HeaderValue::from_static("10x")),
            None
        );
        assert_eq!(
            parse_grpc_timeout(&http::HeaderValue::from_static("")),
            None
        );
    }

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
