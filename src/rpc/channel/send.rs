//! The send paths of a call: a whole request retried on other nodes, a
//! stream sent once, a hedged request raced on two.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use tonic::body::Body;
use tonic::{Code, Status};

use super::body::{self, Payload, PendingGuard, SentWatch};
use super::classify::{never_sent, timed_out, unavailable, Sent};
use super::pick::{pick, Candidates, MAX_ATTEMPTS};
use super::replay::Replay;
use super::traced::ClientSpan;
use super::RpcChannel;
use crate::error::BoxError;
use crate::rpc::discovery::{outlier, Node};
use crate::wire::{grpc_timeout_header, CANCELLED, GRPC_STATUS, GRPC_TIMEOUT, REFUSED};

impl RpcChannel {
    /// One try of a call on one node: counted as pending there from now
    /// until its response ends, and its outcome recorded for outlier
    /// ejection (an answer from the headers; a refusal is load shed, not a
    /// failure).
    async fn attempt(
        &self,
        node: Arc<Node>,
        request: http::Request<Body>,
    ) -> Result<http::Response<Body>, Sent<BoxError>> {
        let guard = PendingGuard::new(&node.pending);
        let Some(mut handle) = node.channel() else {
            return Err(Sent::No(unusable(&node)));
        };
        let started = std::time::Instant::now();
        // The node's channel is a buffer in front of its connection: it must
        // be ready before a call; failing that, nothing was sent.
        let result = match tower::ServiceExt::ready(&mut handle.channel).await {
            Ok(ready) => match tower::Service::call(ready, request).await {
                // Refused before its handler ran: another node may take it,
                // and this one counts as busy for a moment.
                Ok(response) if response.headers().contains_key(REFUSED) => {
                    node.give_back(handle);
                    node.health.refused();
                    return Err(Sent::No(Box::new(
                        Status::from_header_map(response.headers()).unwrap_or_else(|| {
                            Status::unavailable(format!("{} refused the call", node.host()))
                        }),
                    )));
                }
                Ok(response) => {
                    node.give_back(handle);
                    if node.abandoned.load(Ordering::Relaxed) > 0 {
                        node.abandoned.store(0, Ordering::Relaxed);
                    }
                    let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                    node.health.latency.observe(micros);
                    let failed = response
                        .headers()
                        .get(GRPC_STATUS)
                        .is_some_and(|code| outlier::is_failure(Code::from_bytes(code.as_bytes())));
                    self.record(&node, failed);
                    return Ok(response.map(|body| body::guarded(body, guard)));
                }
                Err(e) => Err(Sent::Maybe(e.into())),
            },
            Err(e) => Err(Sent::No(e.into())),
        };
        self.record(&node, true);
        result
    }

    /// [`attempt`](Self::attempt), telling which node it ran on.
    async fn attempt_on(
        &self,
        node: Arc<Node>,
        request: http::Request<Body>,
    ) -> (Arc<Node>, Result<http::Response<Body>, Sent<BoxError>>) {
        let result = self.attempt(node.clone(), request).await;
        (node, result)
    }

    /// A call's outcome on `node`; a failure may eject it among this
    /// client's nodes of the topic.
    fn record(&self, node: &Node, failed: bool) {
        if !failed {
            node.health.succeeded();
            return;
        }
        let shared = &self.settings.shared;
        let peers = self.snapshot.borrow().peers(&self.settings.target.topic);
        if outlier::failed(node, &peers, shared.ejection) {
            shared.ejections.fetch_add(1, Ordering::Relaxed);
            shared.figures.count_ejection(&self.settings.target.topic);
        }
    }

    fn deadline_exceeded(&self) -> BoxError {
        Box::new(Status::deadline_exceeded(format!(
            "no reply from {} within the call's deadline",
            self.settings.target
        )))
    }

    /// A call not sent: the request being served had no time left for it.
    pub(super) fn expired(&self) -> BoxError {
        self.settings.shared.expired.fetch_add(1, Ordering::Relaxed);
        Box::new(Status::deadline_exceeded(format!(
            "{}: not sent: the deadline of the request being served has passed",
            self.settings.target
        )))
    }

    pub(super) fn not_delivered(&self, last_error: Option<BoxError>) -> BoxError {
        let peers = self.snapshot.borrow().peers(&self.settings.target.topic);
        let ejected = match outlier::ejected(&peers) {
            0 => String::new(),
            n => format!(" ({n} of {} nodes ejected as outliers)", peers.len()),
        };
        match last_error {
            Some(e) => Box::new(Status::unavailable(format!(
                "{}: {e}{ejected}",
                self.settings.target
            ))),
            None => Box::new(Status::unavailable(format!(
                "{}{ejected}",
                unavailable(&self.settings.target).message()
            ))),
        }
    }

    /// The nodes to pick from after a failure: the watch may have removed
    /// the failed node meanwhile.
    pub(super) fn current_nodes(&self) -> Arc<[Arc<Node>]> {
        self.snapshot.borrow().nodes(&self.settings.target)
    }

    /// A whole request on `headers` (its extensions aside), with what is
    /// left of the deadline when it is not the first try.
    fn request(
        &self,
        parts: &http::request::Parts,
        headers: http::HeaderMap,
        data: &Bytes,
        retry_deadline: Option<Instant>,
    ) -> Result<http::Request<Body>, BoxError> {
        let body = match &self.settings.sent {
            Some(signal) => SentWatch::wrap(data.clone(), signal.clone()),
            None => Body::new(http_body_util::Full::new(data.clone())),
        };
        let mut request = http::Request::new(body);
        *request.method_mut() = parts.method.clone();
        *request.uri_mut() = parts.uri.clone();
        *request.version_mut() = parts.version;
        *request.headers_mut() = headers;
        // Extensions are for the layers above this channel: nothing below
        // it (tonic's transport, hyper) reads them, so none are copied.
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

    pub(super) async fn send(
        &self,
        request: http::Request<Body>,
        deadline: Instant,
    ) -> Result<http::Response<Body>, BoxError> {
        let shared = &self.settings.shared;
        shared.calls.fetch_add(1, Ordering::Relaxed);
        shared.budget.earn();
        if !self.settings.throttle.admit() {
            return Err(Box::new(Status::unavailable(format!(
                "{}: not sent: its nodes took few of the recent calls (throttled by this client)",
                self.settings.target
            ))));
        }
        let mut nodes = self.snapshot.borrow().nodes(&self.settings.target);
        if nodes.is_empty() && !self.snapshot.borrow().loaded {
            // The first call of a topic waits for its members to be listed.
            let mut snapshot = self.snapshot.clone();
            let listed = tokio::time::timeout_at(deadline.into(), snapshot.wait_for(|s| s.loaded));
            if listed.await.is_err() {
                return Err(self.deadline_exceeded());
            }
            nodes = self.current_nodes();
        }
        if nodes.is_empty() {
            return Err(Box::new(unavailable(&self.settings.target)));
        }
        let (mut parts, body) = request.into_parts();
        let sent = match body::peek(body).map_err(|status| -> BoxError { Box::new(status) })? {
            Payload::Whole(data) => {
                let headers = Replay::new(
                    &self.settings.usual_headers,
                    std::mem::take(&mut parts.headers),
                );
                match self.hedge_delay() {
                    Some(delay) => {
                        self.send_hedged(parts, headers, data, nodes, deadline, delay)
                            .await
                    }
                    None => self.send_whole(parts, headers, data, nodes, deadline).await,
                }
            }
            Payload::Stream(body) => {
                let request = http::Request::from_parts(parts, body);
                self.send_stream(request, nodes).await
            }
        };
        // A call its deadline ended was taken by a node, only slowly.
        let taken = match &sent {
            Ok(_) => true,
            Err(e) => e
                .downcast_ref::<Status>()
                .is_some_and(|s| s.code() == Code::DeadlineExceeded),
        };
        self.settings.throttle.ended(taken);
        let response = sent?;
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
        mut headers: Replay<'_>,
        data: Bytes,
        nodes: Arc<[Arc<Node>]>,
        deadline: Instant,
    ) -> Result<http::Response<Body>, BoxError> {
        let started = Instant::now();
        let mut candidates = Candidates::new(self, nodes);
        while let Some(node) = candidates.next() {
            let retry_deadline = (!candidates.is_first()).then_some(deadline);
            let request = self.request(&parts, headers.next(), &data, retry_deadline)?;
            ClientSpan::attempt(&parts.extensions, &node, false);
            let error = match self.attempt(node.clone(), request).await {
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
            candidates.failed(node, error);
        }
        Err(candidates.exhausted())
    }

    /// A streaming request: sent once, as the caller produces it. Only a
    /// node whose connection was not ready (nothing taken from the body) is
    /// passed over for another.
    async fn send_stream(
        &self,
        request: http::Request<Body>,
        nodes: Arc<[Arc<Node>]>,
    ) -> Result<http::Response<Body>, BoxError> {
        let mut candidates = Candidates::new(self, nodes);
        while let Some(node) = candidates.next() {
            ClientSpan::attempt(request.extensions(), &node, false);
            let guard = PendingGuard::new(&node.pending);
            let Some(mut handle) = node.channel() else {
                candidates.failed(node.clone(), unusable(&node));
                continue;
            };
            match tower::ServiceExt::ready(&mut handle.channel).await {
                Ok(ready) => {
                    let result = tower::Service::call(ready, request).await;
                    if result.is_ok() {
                        node.give_back(handle);
                    }
                    let failed = result.as_ref().map_or(true, |response| {
                        response.headers().get(GRPC_STATUS).is_some_and(|code| {
                            outlier::is_failure(Code::from_bytes(code.as_bytes()))
                        })
                    });
                    self.record(&node, failed);
                    return match result {
                        Ok(response) => Ok(response.map(|body| body::guarded(body, guard))),
                        Err(e) if timed_out(&e) => Err(self.deadline_exceeded()),
                        Err(e) => Err(e.into()),
                    };
                }
                Err(e) => candidates.failed(node, e.into()),
            }
        }
        Err(candidates.exhausted())
    }

    /// A whole request of an idempotent, hedged channel: after `delay`
    /// without an answer, one more copy goes to another node if the budget
    /// allows; the first answer wins and the other copy is dropped
    /// (cancelled). Failures are retried like [`send_whole`](Self::send_whole).
    async fn send_hedged(
        &self,
        parts: http::request::Parts,
        mut headers: Replay<'_>,
        data: Bytes,
        nodes: Arc<[Arc<Node>]>,
        deadline: Instant,
        delay: Duration,
    ) -> Result<http::Response<Body>, BoxError> {
        let shared = &self.settings.shared;
        let started = Instant::now();
        let mut tried: Vec<Arc<Node>> = Vec::with_capacity(2);
        let mut in_flight = FuturesUnordered::new();
        let Some(first) = pick(&nodes, &tried) else {
            return Err(Box::new(unavailable(&self.settings.target)));
        };
        ClientSpan::attempt(&parts.extensions, &first, false);
        in_flight.push(self.attempt_on(
            first.clone(),
            self.request(&parts, headers.next(), &data, None)?,
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
                    let node = (launched < MAX_ATTEMPTS && shared.budget.try_spend())
                        .then(|| pick(&self.current_nodes(), &tried))
                        .flatten();
                    let Some(node) = node else {
                        return Err(self.not_delivered(last_error));
                    };
                    shared.retries.fetch_add(1, Ordering::Relaxed);
                    ClientSpan::attempt(&parts.extensions, &node, false);
                    in_flight.push(self.attempt_on(node.clone(), self.request(&parts, headers.next(), &data, Some(deadline))?));
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
                    ClientSpan::attempt(&parts.extensions, &node, true);
                    in_flight.push(self.attempt_on(node.clone(), self.request(&parts, headers.next(), &data, Some(deadline))?));
                    open.push(node.clone());
                    tried.push(node);
                    launched += 1;
                }
                else => return Err(self.not_delivered(last_error)),
            }
        }
    }
}

/// The error of a node whose endpoint cannot be connected to.
fn unusable(node: &Node) -> BoxError {
    Box::new(Status::unavailable(format!(
        "{} advertises an endpoint this client cannot use",
        node.host()
    )))
}
