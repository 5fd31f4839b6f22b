//! [`RpcChannel`]: a tower service the generated tonic clients accept, that
//! picks a node per call by power of two choices on calls in flight, streams
//! request bodies through, retries calls that never reached a node on
//! another one, and hedges idempotent calls.

mod body;
mod hedge;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use rand::Rng;
use tokio::sync::{watch, Semaphore};
use tonic::body::Body;
use tonic::Status;

pub(super) use self::body::SentSignal;
use self::body::{Guarded, NotifySent, Payload, PendingGuard};
pub use self::hedge::HedgeDelay;
use self::hedge::{HedgeBudget, Latency};
use super::discovery::{Node, Snapshot};
use super::Target;
use crate::error::BoxError;
use crate::service::pool::REFUSED;

const GRPC_TIMEOUT: &str = "grpc-timeout";
const GRPC_STATUS: &str = "grpc-status";
/// `grpc-status` of a cancelled call.
static CANCELLED: http::HeaderValue = http::HeaderValue::from_static("1");
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

/// What the channels of one [`Rpc`](super::Rpc) share: counters, the hedge
/// budget, latency histograms and the bound on casts.
pub(super) struct Shared {
    calls: AtomicU64,
    retries: AtomicU64,
    hedges: AtomicU64,
    budget: HedgeBudget,
    /// Per target, for `HedgeDelay::Auto`; looked up when a channel is
    /// made hedged, never per call.
    latencies: Mutex<HashMap<Target, Arc<Latency>>>,
    /// Casts in flight, bounded.
    pub(super) casts: Arc<Semaphore>,
}

impl Shared {
    pub(super) fn new(max_casts: usize) -> Self {
        Shared {
            calls: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            hedges: AtomicU64::new(0),
            budget: HedgeBudget::default(),
            latencies: Mutex::new(HashMap::new()),
            casts: Arc::new(Semaphore::new(max_casts)),
        }
    }

    pub(super) fn stats(&self) -> RpcStats {
        RpcStats {
            calls: self.calls.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            hedges: self.hedges.load(Ordering::Relaxed),
        }
    }

    fn latency(&self, target: &Target) -> Arc<Latency> {
        let mut map = match self.latencies.lock() {
            Ok(map) => map,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.entry(target.clone()).or_default().clone()
    }
}

/// Counters of a client ([`Rpc::stats`](super::Rpc::stats)), since it
/// started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RpcStats {
    /// Calls made through the client's channels.
    pub calls: u64,
    /// Extra attempts after a failed one (on another node).
    pub retries: u64,
    /// Extra copies sent by hedging.
    pub hedges: u64,
}

/// A load-balanced channel to the nodes of a [`Target`]; cheap to clone.
///
/// Every gRPC call shape goes through it: a unary request is kept whole (a
/// cheap `Bytes` handle), so that a call that never reached a node is sent
/// to another; a streaming request is passed through as the caller
/// produces it, and is not retried once handed to a node. A call counts as
/// load on its node until its response ends.
///
/// ```no_run
/// # async fn demo(rpc: svckit::rpc::Rpc) -> Result<(), tonic::Status> {
/// use svckit::pb::base::v1::{base_client::BaseClient, PingRequest};
/// use svckit::rpc::Target;
///
/// let mut base = BaseClient::new(rpc.channel(Target::topic("echo")));
/// base.ping(PingRequest { arg: "hi".into() }).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RpcChannel {
    pub(super) settings: Arc<Settings>,
    pub(super) snapshot: watch::Receiver<Arc<Snapshot>>,
}

/// A channel's settings, shared by its clones (one reference count per
/// call, whatever the number of settings).
#[derive(Clone)]
pub(super) struct Settings {
    pub(super) target: Target,
    pub(super) timeout: Duration,
    /// `timeout` as a `grpc-timeout` value, made once per channel.
    pub(super) timeout_header: http::HeaderValue,
    pub(super) idempotent: bool,
    /// Applies to idempotent channels only.
    pub(super) hedge: Option<HedgeDelay>,
    /// The target's histogram when hedging `auto`.
    latency: Option<Arc<Latency>>,
    pub(super) shared: Arc<Shared>,
    /// Set on a cast's channel: told once the request is written.
    pub(super) sent: Option<Arc<SentSignal>>,
}

impl Settings {
    pub(super) fn new(
        target: Target,
        timeout: Duration,
        hedge: Option<HedgeDelay>,
        shared: Arc<Shared>,
    ) -> Self {
        Settings {
            target,
            timeout,
            timeout_header: grpc_timeout_header(timeout),
            idempotent: false,
            hedge,
            latency: None,
            shared,
            sent: None,
        }
    }
}

impl RpcChannel {
    fn settings_mut(&mut self) -> &mut Settings {
        Arc::make_mut(&mut self.settings)
    }

    /// Marks the calls of this channel safe to repeat: a call that failed in
    /// transport after it may have reached a node is retried on another, and
    /// a hedging delay (`rpc_hedge_delay`, or [`hedge`](Self::hedge))
    /// applies.
    #[must_use]
    pub fn idempotent(mut self) -> Self {
        let settings = self.settings_mut();
        settings.idempotent = true;
        if settings.hedge == Some(HedgeDelay::Auto) && settings.latency.is_none() {
            settings.latency = Some(settings.shared.latency(&settings.target));
        }
        self
    }

    /// Hedges the calls of this channel, and marks it
    /// [`idempotent`](Self::idempotent): when a unary call has no answer
    /// after `delay`, one more copy goes to another node; the first answer
    /// wins and the other copy is cancelled. Extra copies are bounded by the
    /// client's budget (about 10% of calls, after a first burst of ten).
    #[must_use]
    pub fn hedge(mut self, delay: HedgeDelay) -> Self {
        self.settings_mut().hedge = Some(delay);
        self.settings_mut().latency = None;
        self.idempotent()
    }

    /// The deadline of each call (default `rpc_response_timeout`).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        let settings = self.settings_mut();
        settings.timeout = timeout;
        settings.timeout_header = grpc_timeout_header(timeout);
        self
    }

    /// The target this channel calls.
    pub fn target(&self) -> &Target {
        &self.settings.target
    }

    /// The nodes this channel would choose from now.
    pub fn hosts(&self) -> Vec<String> {
        self.snapshot
            .borrow()
            .nodes(&self.settings.target)
            .iter()
            .map(|n| n.host().to_string())
            .collect()
    }

    /// The counters of the client this channel belongs to.
    pub fn stats(&self) -> RpcStats {
        self.settings.shared.stats()
    }

    /// The hedging delay of the next call, if it is hedged.
    fn hedge_delay(&self) -> Option<Duration> {
        let s = &*self.settings;
        if !s.idempotent {
            return None;
        }
        match s.hedge? {
            HedgeDelay::Fixed(delay) => Some(delay),
            HedgeDelay::Auto => s.latency.as_ref()?.p95(),
        }
    }
}

/// Picks by power of two choices: two distinct random nodes not yet tried,
/// the one with fewer calls in flight. No allocation.
fn pick(nodes: &[Arc<Node>], tried: &[Arc<Node>]) -> Option<Arc<Node>> {
    let fresh = |n: &&Arc<Node>| !tried.iter().any(|t| t.host() == n.host());
    let len = if tried.is_empty() {
        nodes.len()
    } else {
        nodes.iter().filter(fresh).count()
    };
    let nth = |i: usize| {
        if tried.is_empty() {
            nodes.get(i)
        } else {
            nodes.iter().filter(fresh).nth(i)
        }
    };
    match len {
        0 => None,
        1 => nth(0).cloned(),
        len => {
            let mut rng = rand::rng();
            let a = rng.random_range(0..len);
            let b = (a + rng.random_range(1..len)) % len;
            let (na, nb) = (nth(a)?, nth(b)?);
            Some(if nb.load() < na.load() {
                nb.clone()
            } else {
                na.clone()
            })
        }
    }
}

/// The node of the next attempt: one not tried yet, else a tried one again.
/// A call only comes back for another attempt when it never reached a node
/// (or is idempotent), and then the same node may well take it: a new
/// connection to a node with several workers lands on another worker, and
/// a stream refused by a draining connection goes through on the next.
fn next_node(nodes: &[Arc<Node>], tried: &[Arc<Node>]) -> Option<Arc<Node>> {
    pick(nodes, tried).or_else(|| pick(nodes, &[]))
}

/// Whether a failed call may have reached the node.
enum Sent<E> {
    No(E),
    Maybe(E),
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
    // hyper cancels a request it could not send: its connection closed
    // (a GOAWAY from a draining server) before the request went out.
    if error
        .downcast_ref::<hyper::Error>()
        .is_some_and(hyper::Error::is_canceled)
    {
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
            Some(t) if t <= self.settings.timeout => t,
            _ => {
                request
                    .headers_mut()
                    .insert(GRPC_TIMEOUT, self.settings.timeout_header.clone());
                self.settings.timeout
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

/// One try of a call on one node: counted as pending there from now until
/// its response ends.
async fn attempt(
    node: Arc<Node>,
    request: http::Request<Body>,
) -> Result<http::Response<Body>, Sent<BoxError>> {
    let guard = PendingGuard::new(&node.pending);
    let mut channel = node.channel.clone();
    // The node's channel is a buffer in front of its connection: it must be
    // ready before a call; failing that, nothing was sent.
    match tower::ServiceExt::ready(&mut channel).await {
        Ok(ready) => match tower::Service::call(ready, request).await {
            // Refused before its handler ran: another node may take it.
            Ok(response) if response.headers().contains_key(REFUSED) => Err(Sent::No(Box::new(
                Status::from_header_map(response.headers()).unwrap_or_else(|| {
                    Status::unavailable(format!("{} refused the call", node.host()))
                }),
            ))),
            Ok(response) => {
                if node.abandoned.load(Ordering::Relaxed) > 0 {
                    node.abandoned.store(0, Ordering::Relaxed);
                }
                Ok(response.map(|body| Guarded::wrap(body, guard)))
            }
            Err(e) => Err(Sent::Maybe(e.into())),
        },
        Err(e) => Err(Sent::No(e.into())),
    }
}

/// [`attempt`], telling which node it ran on.
async fn attempt_on(
    node: Arc<Node>,
    request: http::Request<Body>,
) -> (Arc<Node>, Result<http::Response<Body>, Sent<BoxError>>) {
    let result = attempt(node.clone(), request).await;
    (node, result)
}

impl RpcChannel {
    fn deadline_exceeded(&self) -> BoxError {
        Box::new(Status::deadline_exceeded(format!(
            "no reply from {} within the call's deadline",
            self.settings.target
        )))
    }

    fn not_delivered(&self, last_error: Option<BoxError>) -> BoxError {
        match last_error {
            Some(e) => Box::new(Status::unavailable(format!(
                "{}: {e}",
                self.settings.target
            ))),
            None => Box::new(unavailable(&self.settings.target)),
        }
    }

    /// The nodes to pick from after a failure: the watch may have removed
    /// the failed node meanwhile.
    fn current_nodes(&self) -> Arc<[Arc<Node>]> {
        self.snapshot.borrow().nodes(&self.settings.target)
    }

    /// A copy of a whole request, with what is left of the deadline when it
    /// is not the first try.
    fn request(
        &self,
        parts: &http::request::Parts,
        data: &Bytes,
        retry_deadline: Option<Instant>,
    ) -> Result<http::Request<Body>, BoxError> {
        let body = match &self.settings.sent {
            Some(signal) => NotifySent::wrap(data.clone(), signal.clone()),
            None => Body::new(http_body_util::Full::new(data.clone())),
        };
        let mut request = http::Request::new(body);
        *request.method_mut() = parts.method.clone();
        *request.uri_mut() = parts.uri.clone();
        *request.version_mut() = parts.version;
        *request.headers_mut() = parts.headers.clone();
        *request.extensions_mut() = parts.extensions.clone();
        if let Some(deadline) = retry_deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(self.deadline_exceeded());
            }
            request
                .headers_mut()
                .insert(GRPC_TIMEOUT, grpc_timeout_header(left));
        }
        Ok(request)
    }

    async fn send(
        &self,
        request: http::Request<Body>,
        deadline: Instant,
    ) -> Result<http::Response<Body>, BoxError> {
        let shared = &self.settings.shared;
        shared.calls.fetch_add(1, Ordering::Relaxed);
        let nodes = self.snapshot.borrow().nodes(&self.settings.target);
        if nodes.is_empty() {
            return Err(Box::new(unavailable(&self.settings.target)));
        }
        let (parts, body) = request.into_parts();
        let response = match body::peek(body).map_err(|status| -> BoxError { Box::new(status) })? {
            Payload::Whole(data) => match self.hedge_delay() {
                Some(delay) => self.send_hedged(parts, data, nodes, deadline, delay).await,
                None => self.send_whole(parts, data, nodes, deadline).await,
            },
            Payload::Stream(body) => {
                let request = http::Request::from_parts(parts, body);
                self.send_stream(request, nodes).await
            }
        }?;
        // The server ends a call at the same deadline, as `Cancelled`; when
        // its answer comes before this side's timer, it is still this
        // call's deadline that ended it.
        if response.headers().get(GRPC_STATUS) == Some(&CANCELLED) && Instant::now() >= deadline {
            return Err(self.deadline_exceeded());
        }
        Ok(response)
    }

    /// A whole request: tried on up to [`MAX_ATTEMPTS`] nodes while it was
    /// never sent (or, idempotent, whatever the transport failure).
    async fn send_whole(
        &self,
        parts: http::request::Parts,
        data: Bytes,
        nodes: Arc<[Arc<Node>]>,
        deadline: Instant,
    ) -> Result<http::Response<Body>, BoxError> {
        let started = Instant::now();
        let mut tried: Vec<Arc<Node>> = Vec::new();
        let mut last_error = None;
        for _ in 0..MAX_ATTEMPTS {
            let candidates = if tried.is_empty() {
                nodes.clone()
            } else {
                self.settings.shared.retries.fetch_add(1, Ordering::Relaxed);
                self.current_nodes()
            };
            let Some(node) = next_node(&candidates, &tried) else {
                break;
            };
            let retry_deadline = (!tried.is_empty()).then_some(deadline);
            let request = self.request(&parts, &data, retry_deadline)?;
            let error = match attempt(node.clone(), request).await {
                Ok(response) => {
                    // An idempotent channel hedging `auto` learns its target's
                    // latency from the calls it has not hedged yet.
                    if let Some(latency) = &self.settings.latency {
                        latency.record(started.elapsed());
                    }
                    return Ok(response);
                }
                Err(Sent::No(e)) => e,
                Err(Sent::Maybe(e)) if timed_out(&*e) => return Err(self.deadline_exceeded()),
                Err(Sent::Maybe(e)) if never_sent(&*e) || self.settings.idempotent => e,
                Err(Sent::Maybe(e)) => return Err(e),
            };
            tracing::debug!(host = node.host(), error = %error, "call not delivered; trying another node");
            tried.push(node);
            last_error = Some(error);
        }
        Err(self.not_delivered(last_error))
    }

    /// A streaming request: sent once, as the caller produces it. Only a
    /// node whose connection was not ready (nothing taken from the body) is
    /// passed over for another.
    async fn send_stream(
        &self,
        request: http::Request<Body>,
        nodes: Arc<[Arc<Node>]>,
    ) -> Result<http::Response<Body>, BoxError> {
        let mut tried: Vec<Arc<Node>> = Vec::new();
        let mut last_error = None;
        for _ in 0..MAX_ATTEMPTS {
            let candidates = if tried.is_empty() {
                nodes.clone()
            } else {
                self.settings.shared.retries.fetch_add(1, Ordering::Relaxed);
                self.current_nodes()
            };
            let Some(node) = next_node(&candidates, &tried) else {
                break;
            };
            let guard = PendingGuard::new(&node.pending);
            let mut channel = node.channel.clone();
            match tower::ServiceExt::ready(&mut channel).await {
                Ok(ready) => {
                    return match tower::Service::call(ready, request).await {
                        Ok(response) => Ok(response.map(|body| Guarded::wrap(body, guard))),
                        Err(e) if timed_out(&e) => Err(self.deadline_exceeded()),
                        Err(e) => Err(e.into()),
                    };
                }
                Err(e) => {
                    tracing::debug!(host = node.host(), error = %e, "node not ready; trying another");
                    tried.push(node);
                    last_error = Some(e.into());
                }
            }
        }
        Err(self.not_delivered(last_error))
    }

    /// A whole request of an idempotent, hedged channel: after `delay`
    /// without an answer, one more copy goes to another node if the budget
    /// allows; the first answer wins and the other copy is dropped
    /// (cancelled). Failures are retried like [`send_whole`](Self::send_whole).
    async fn send_hedged(
        &self,
        parts: http::request::Parts,
        data: Bytes,
        nodes: Arc<[Arc<Node>]>,
        deadline: Instant,
        delay: Duration,
    ) -> Result<http::Response<Body>, BoxError> {
        let shared = &self.settings.shared;
        shared.budget.earn();
        let started = Instant::now();
        let mut tried: Vec<Arc<Node>> = Vec::with_capacity(2);
        let mut in_flight = FuturesUnordered::new();
        let Some(first) = pick(&nodes, &tried) else {
            return Err(Box::new(unavailable(&self.settings.target)));
        };
        in_flight.push(attempt_on(
            first.clone(),
            self.request(&parts, &data, None)?,
        ));
        tried.push(first);
        // Nodes with a copy of this call still unanswered.
        let mut open: Vec<Arc<Node>> = Vec::with_capacity(2);
        open.push(tried[0].clone());
        let mut launched = 1;
        let hedge_timer = tokio::time::sleep(delay);
        tokio::pin!(hedge_timer);
        let mut hedged = false;
        let mut last_error = None;
        loop {
            tokio::select! {
                Some((node, result)) = in_flight.next() => {
                    open.retain(|n| !Arc::ptr_eq(n, &node));
                    let error = match result {
                        Ok(response) => {
                            // Only the first copy's answer is a latency of the
                            // target: a hedge's win says the first copy took
                            // longer than the delay, not how long, and
                            // recording it would ratchet the delay upwards.
                            if Arc::ptr_eq(&node, &tried[0]) {
                                if let Some(latency) = &self.settings.latency {
                                    latency.record(started.elapsed());
                                }
                            }
                            // The copies still out are cancelled; their nodes
                            // count as loaded until they answer again.
                            for slow in &open {
                                slow.abandoned.fetch_add(1, Ordering::Relaxed);
                            }
                            return Ok(response);
                        }
                        Err(Sent::Maybe(e)) if timed_out(&*e) => return Err(self.deadline_exceeded()),
                        Err(Sent::No(e) | Sent::Maybe(e)) => e,
                    };
                    tracing::debug!(error = %error, "hedged call failed on one node");
                    last_error = Some(error);
                    if !in_flight.is_empty() {
                        continue;
                    }
                    let node = (launched < MAX_ATTEMPTS)
                        .then(|| pick(&self.current_nodes(), &tried))
                        .flatten();
                    let Some(node) = node else {
                        return Err(self.not_delivered(last_error));
                    };
                    shared.retries.fetch_add(1, Ordering::Relaxed);
                    in_flight.push(attempt_on(node.clone(), self.request(&parts, &data, Some(deadline))?));
                    open.push(node.clone());
                    tried.push(node);
                    launched += 1;
                }
                () = &mut hedge_timer, if !hedged => {
                    hedged = true;
                    let Some(node) = pick(&self.current_nodes(), &tried) else {
                        continue;
                    };
                    if !shared.budget.try_spend() {
                        continue;
                    }
                    shared.hedges.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(host = node.host(), ?delay, "no answer yet; hedging");
                    in_flight.push(attempt_on(node.clone(), self.request(&parts, &data, Some(deadline))?));
                    open.push(node.clone());
                    tried.push(node);
                    launched += 1;
                }
                else => return Err(self.not_delivered(last_error)),
            }
        }
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
