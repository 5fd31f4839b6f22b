//! [`RpcChannel`]: a tower service the generated tonic clients accept, that
//! picks a node per call by power of two choices on calls in flight, streams
//! request bodies through, retries calls that never reached a node on
//! another one, and hedges idempotent calls.

mod body;
mod budget;
mod classify;
mod hedge;
mod pick;
mod replay;
mod send;
mod shared;
mod throttle;
mod traced;

use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tokio::sync::watch;
use tonic::body::Body;

pub(super) use self::body::SentSignal;
pub use self::hedge::HedgeDelay;
use self::hedge::Latency;
#[cfg(test)]
pub(crate) use self::pick::pick as pick_for_test;
pub use self::shared::RpcStats;
pub(super) use self::shared::Shared;
use self::throttle::Throttle;
use super::discovery::Snapshot;
use super::Target;
pub use crate::admission::Criticality;
use crate::error::BoxError;
use crate::wire::{grpc_timeout_header, parse_grpc_timeout, CRITICALITY, GRPC_TIMEOUT};

/// What a call made while serving a request leaves of that request's
/// deadline for the answers to travel back: a tenth of it, at most this.
const DEADLINE_MARGIN: Duration = Duration::from_millis(5);

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
    pub(super) latency: Option<Arc<Latency>>,
    pub(super) shared: Arc<Shared>,
    /// The target topic's requests and accepts, shared by the client's
    /// channels to it.
    pub(super) throttle: Arc<Throttle>,
    /// Set on a cast's channel: told once the request is written.
    pub(super) sent: Option<Arc<SentSignal>>,
    /// The headers of this channel's first unary call. A later call with
    /// the same headers (the usual case: tonic's, and this channel's
    /// `grpc-timeout`) hands its own to its first attempt and needs no
    /// copy for a retry; a call with others keeps a copy.
    pub(super) usual_headers: Arc<OnceLock<http::HeaderMap>>,
    /// Sent as `svckit-criticality` when set; otherwise a call made while
    /// serving a request carries that request's.
    pub(super) criticality: Option<Criticality>,
}

impl Settings {
    pub(super) fn new(
        target: Target,
        timeout: Duration,
        hedge: Option<HedgeDelay>,
        shared: Arc<Shared>,
    ) -> Self {
        Settings {
            throttle: shared.throttle(&target.topic),
            target,
            timeout,
            timeout_header: grpc_timeout_header(timeout),
            idempotent: false,
            hedge,
            latency: None,
            shared,
            sent: None,
            usual_headers: Arc::default(),
            criticality: None,
        }
    }
}

impl RpcChannel {
    fn settings_mut(&mut self) -> &mut Settings {
        let settings = Arc::make_mut(&mut self.settings);
        // Another timeout makes other headers.
        settings.usual_headers = Arc::default();
        settings
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
    /// client's retry budget, shared with retries (10% of calls plus ten a
    /// second, after a first burst of ten).
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

    /// How much the calls of this channel matter to a node that must
    /// refuse some (`svckit-criticality`): `sheddable` calls are refused
    /// first, `critical` ones last. Without it, a call made while serving a
    /// request carries that request's criticality, as it carries its
    /// deadline.
    ///
    /// ```no_run
    /// # fn demo(rpc: svckit::rpc::Rpc) {
    /// use svckit::rpc::{Criticality, Target};
    /// let prefetch = rpc.channel(Target::topic("echo")).criticality(Criticality::Sheddable);
    /// # }
    /// ```
    #[must_use]
    pub fn criticality(mut self, criticality: Criticality) -> Self {
        self.settings_mut().criticality = Some(criticality);
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

    /// This channel once its topic's members are known (the first
    /// channel to a topic starts its watch), or after `within`.
    pub(super) async fn loaded(self, within: Duration) -> Self {
        let mut snapshot = self.snapshot.clone();
        let _ = tokio::time::timeout(within, snapshot.wait_for(|s| s.loaded)).await;
        self
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
        // A call made while serving a request has at most what is left of
        // that request's deadline, less a margin for the answer's way back;
        // with nothing left it is not sent.
        let mut timeout = timeout;
        if let Some(deadline) = crate::telemetry::trace::deadline() {
            let left = deadline.saturating_duration_since(Instant::now());
            let left = left.saturating_sub((left / 10).min(DEADLINE_MARGIN));
            if left.is_zero() {
                return Box::pin(std::future::ready(Err(self.expired())));
            }
            if left < timeout {
                timeout = left;
                request
                    .headers_mut()
                    .insert(GRPC_TIMEOUT, grpc_timeout_header(left));
            }
        }
        // How much the call matters: the channel's word, else the served
        // request's, else none (a node reads `default`).
        if !request.headers().contains_key(CRITICALITY) {
            let value = match self.settings.criticality {
                Some(c) => Some(http::HeaderValue::from_static(c.as_str())),
                None => crate::telemetry::trace::criticality(),
            };
            if let Some(value) = value {
                request.headers_mut().insert(CRITICALITY, value);
            }
        }
        // A call made while serving a traced request carries its context;
        // with export on, its own span's, under it.
        let parent = crate::telemetry::trace::current();
        let exporter =
            crate::telemetry::trace::exporter().or_else(|| self.settings.shared.exporter.clone());
        let span = exporter.as_ref().map(|exporter| {
            traced::ClientSpan::start(
                &mut request,
                &self.settings.target,
                parent.clone(),
                exporter,
            )
        });
        if let (None, Some(parent)) = (&span, parent) {
            request
                .headers_mut()
                .entry(crate::telemetry::trace::TRACEPARENT)
                .or_insert(parent);
        }
        // The deadline is enforced by each node's tonic channel from the
        // header: no second timer per call here.
        Box::pin(async move {
            let result = this.send(request, Instant::now() + timeout).await;
            match span {
                Some(span) => span.finish(result),
                None => result,
            }
        })
    }
}
