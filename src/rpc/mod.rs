//! RPC by topic, by server and by fanout (oslo.messaging's `RPCClient` on
//! gRPC): channels that the generated tonic clients accept, over the nodes
//! the service group says are up and enabled, balanced by load.
//!
//! ```no_run
//! # async fn demo(registry: svckit::servicegroup::Registry) -> svckit::Result<()> {
//! use svckit::rpc::{Rpc, Target};
//! use svckit::pb::base::v1::{base_client::BaseClient, PingRequest};
//!
//! let rpc = Rpc::new(registry).await?;
//! // Any node of topic "echo", picked by load:
//! let mut base = BaseClient::new(rpc.channel(Target::topic("echo")));
//! let reply = base.ping(PingRequest { arg: "hi".into() }).await?;
//! // Every node of the topic:
//! let replies = rpc
//!     .fanout(&Target::topic("echo"), |ch| async move {
//!         BaseClient::new(ch).ping(PingRequest { arg: "all".into() }).await.map(|r| r.into_inner())
//!     })
//!     .await?;
//! # Ok(()) }
//! ```

mod channel;
pub(crate) mod discovery;
mod target;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use tonic::Status;

pub use self::channel::{Criticality, HedgeDelay, RpcChannel, RpcStats};
pub use self::target::Target;

use self::channel::{SentSignal, Settings, Shared};
use self::discovery::{ConnectOptions, Discovery, Subsetting};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::servicegroup::{self, Registry};
use crate::telemetry::otel::{self, Exporter};
use crate::tls::ClientTls;

/// Client settings.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RpcOptions {
    /// Default deadline of a call (oslo's `rpc_response_timeout`, 60 s).
    pub response_timeout: Duration,
    /// Bound on opening a connection to a node.
    pub connect_timeout: Duration,
    /// Hedging delay of idempotent channels (`rpc_hedge_delay`); `None`
    /// hedges nothing unless a channel asks ([`RpcChannel::hedge`]).
    pub hedge_delay: Option<HedgeDelay>,
    /// Casts in flight (sent, not yet answered) beyond which
    /// [`Rpc::cast`] returns `ResourceExhausted`.
    pub max_casts_in_flight: usize,
    /// TLS to nodes that advertise `https://` endpoints (`tls_ca_file`);
    /// without it such nodes are skipped, with a warning.
    pub tls: Option<ClientTls>,
    /// A topic with more routable nodes than this is balanced over this
    /// many of them, the client's subset (`rpc_subset_size`); 0 uses all.
    pub subset_size: usize,
    /// What ranks the nodes for this client's subset: random by default,
    /// so that clients spread over the fleet.
    pub client_id: u64,
    /// A connection to a node that no call used for this long is closed,
    /// and the next call opens another (`rpc_idle_timeout`, 5 min); `None`
    /// keeps connections open.
    pub idle_timeout: Option<Duration>,
    /// A node failing well above its peers is left out of picks for this
    /// long × the times it was ejected (`rpc_ejection_time`, 30 s, as
    /// Envoy); zero never ejects.
    pub ejection_time: Duration,
    /// HTTP/2 connections to one node at most (`rpc_connections_per_node`):
    /// past the first, one more per 16 calls in flight on the node.
    pub connections_per_node: usize,
    /// The span export of calls made outside a served request
    /// (`otlp_endpoint`, set by [`Rpc::from_config`]).
    pub(crate) exporter: Option<Exporter>,
}

impl Default for RpcOptions {
    /// The option table's defaults (`Config::default()`), stated there once.
    fn default() -> Self {
        RpcOptions::from_table(&Config::default())
    }
}

impl RpcOptions {
    /// The options the config's `rpc_*` settings give, without TLS.
    fn from_table(config: &Config) -> Self {
        RpcOptions {
            response_timeout: config.rpc_response_timeout,
            connect_timeout: Duration::from_secs(1),
            hedge_delay: config.rpc_hedge_delay,
            max_casts_in_flight: 1024,
            tls: None,
            subset_size: config.rpc_subset_size,
            client_id: rand::random(),
            idle_timeout: Some(config.rpc_idle_timeout).filter(|t| !t.is_zero()),
            ejection_time: config.rpc_ejection_time,
            connections_per_node: config.rpc_connections_per_node,
            exporter: None,
        }
    }
}

/// The client side of a registry: channels to any target, over one
/// membership watch per topic called. Cheap to clone.
#[derive(Clone)]
pub struct Rpc {
    discovery: Discovery,
    options: RpcOptions,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Rpc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rpc").field("stats", &self.stats()).finish()
    }
}

/// One node's answer to a fanout call.
#[derive(Debug)]
#[non_exhaustive]
pub struct FanoutReply<T> {
    /// The node called.
    pub host: String,
    /// Its answer.
    pub result: Result<T, Status>,
}

impl Rpc {
    /// Follows `registry` with default options.
    pub async fn new(registry: Registry) -> Result<Self> {
        Self::with_options(registry, RpcOptions::default()).await
    }

    /// A client of `registry`. Nothing is listed or watched yet: a topic's
    /// members are, from the first channel to it on.
    pub async fn with_options(registry: Registry, options: RpcOptions) -> Result<Self> {
        // Made within a node (a request it serves, its manager's hooks):
        // the client's figures show on the node's metrics.
        let figures = crate::telemetry::trace::client_figures().unwrap_or_default();
        let discovery = Discovery::new(
            registry,
            ConnectOptions {
                connect_timeout: options.connect_timeout,
                subsetting: Subsetting {
                    client: options.client_id,
                    size: options.subset_size,
                },
                tls: options.tls.clone(),
                idle_timeout: options.idle_timeout,
                connections_per_node: options.connections_per_node,
                figures: figures.clone(),
            },
        );
        let shared = Arc::new(Shared::new(
            options.max_casts_in_flight,
            options.ejection_time,
            options.exporter.clone(),
            figures,
        ));
        Ok(Rpc {
            discovery,
            options,
            shared,
        })
    }

    /// Connects to the config's registry, with its `rpc_response_timeout`,
    /// `rpc_hedge_delay`, client TLS (`tls_ca_file`, …) and span export
    /// (`otlp_endpoint`: its calls made outside a node's served requests
    /// are exported there; those made while serving one go with the
    /// node's spans).
    pub async fn from_config(config: &Config) -> Result<Self> {
        let mut registry_options = config.registry_options();
        // Made within a node: its watches' staleness shows on the node.
        registry_options.figures = crate::telemetry::trace::membership_figures();
        let registry = servicegroup::connect(&config.registry, &registry_options).await?;
        let identity = otel::Identity {
            service: crate::config::program_name(),
            host: config.host.clone(),
            topic: config.topic.clone(),
        };
        let options = RpcOptions {
            tls: ClientTls::from_config(config)?,
            exporter: otel::Exporter::from_config(config, identity),
            ..RpcOptions::from_table(config)
        };
        Self::with_options(registry, options).await
    }

    /// A channel for `target`, to hand to a generated client
    /// (`EchoClient::new(rpc.channel(target))`).
    pub fn channel(&self, target: Target) -> RpcChannel {
        let target_topic = target.topic.clone();
        RpcChannel {
            settings: Arc::new(Settings::new(
                target,
                self.options.response_timeout,
                self.options.hedge_delay,
                self.shared.clone(),
            )),
            snapshot: self.discovery.topic(&target_topic),
        }
    }

    /// Calls, retries and hedges of this client's channels so far.
    pub fn stats(&self) -> RpcStats {
        let mut stats = self.shared.stats();
        self.discovery.add_stats(&mut stats);
        stats
    }

    /// The hosts `target` may be routed to now.
    pub fn hosts(&self, target: &Target) -> Vec<String> {
        self.channel(target.clone()).hosts()
    }

    /// Waits until `target` has at least `count` routable nodes.
    pub async fn wait_for_nodes(
        &self,
        target: &Target,
        count: usize,
        timeout: Duration,
    ) -> Result<()> {
        let mut rx = self.discovery.topic(&target.topic);
        let reached = matches!(
            tokio::time::timeout(timeout, rx.wait_for(|s| s.nodes(target).len() >= count)).await,
            Ok(Ok(_))
        );
        if reached {
            Ok(())
        } else {
            Err(Error::from(Status::unavailable(format!(
                "fewer than {count} nodes for {target} after {timeout:?}"
            ))))
        }
    }

    /// Calls every routable node of `target` concurrently, each with the
    /// response deadline, and returns one reply per node. No node is an
    /// immediate `Unavailable`.
    pub async fn fanout<F, Fut, T>(&self, target: &Target, call: F) -> Result<Vec<FanoutReply<T>>>
    where
        F: Fn(RpcChannel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        // Every node of the topic, beyond this client's subset.
        let channel = self
            .channel(target.clone())
            .loaded(self.options.response_timeout)
            .await;
        let hosts = channel.snapshot.borrow().all_hosts(target);
        if hosts.is_empty() {
            return Err(Error::from(Status::unavailable(format!(
                "no node available for {target}"
            ))));
        }
        let calls = hosts.into_iter().map(|host| {
            let mut one = target.clone();
            one.server = Some(host.clone());
            let fut = call(self.channel(one));
            async move {
                FanoutReply {
                    host,
                    result: fut.await,
                }
            }
        });
        Ok(join_all(calls).await)
    }

    /// Sends without waiting for the reply: returns once the request was
    /// written to a node's connection. The reply, or the error, is logged
    /// and dropped.
    ///
    /// At most once: a cast is sent again to another node only when it
    /// never reached the first (connection refused, stream refused), never
    /// after it may have been delivered.
    ///
    /// Bounded: while [`RpcOptions::max_casts_in_flight`] casts wait for
    /// their replies, another cast fails at once with `ResourceExhausted`
    /// rather than queueing unseen work. No node for `target` is an
    /// immediate `Unavailable`; a cast that could not be written returns its
    /// error.
    pub async fn cast<F, Fut, T>(&self, target: &Target, call: F) -> Result<()>
    where
        F: FnOnce(RpcChannel) -> Fut,
        Fut: Future<Output = Result<T, Status>> + Send + 'static,
    {
        let Ok(permit) = self.shared.casts.clone().try_acquire_owned() else {
            return Err(Error::from(Status::resource_exhausted(format!(
                "{} casts already in flight",
                self.options.max_casts_in_flight
            ))));
        };
        let mut channel = self.channel(target.clone());
        channel = channel.loaded(self.options.response_timeout).await;
        if channel.hosts().is_empty() {
            return Err(Error::from(Status::unavailable(format!(
                "no node available for {target}"
            ))));
        }
        let (signal, mut written) = SentSignal::new();
        Arc::make_mut(&mut channel.settings).sent = Some(signal);
        let label = target.to_string();
        let fut = call(channel);
        let mut task = tokio::spawn(async move {
            let result = fut.await.map(drop);
            drop(permit);
            if let Err(status) = &result {
                tracing::warn!(target = %label, code = ?status.code(), message = status.message(), "cast failed");
            }
            result
        });
        tokio::select! {
            biased;
            Ok(()) = &mut written => Ok(()),
            finished = &mut task => match finished {
                // Answered before the write was reported: it was written.
                Ok(Ok(())) => Ok(()),
                // Written, then failed: that was the reply, logged above.
                Ok(Err(_)) if written.try_recv().is_ok() => Ok(()),
                Ok(Err(status)) => Err(Error::from(status)),
                Err(join) => Err(Error::from(Status::internal(format!("cast task: {join}")))),
            },
        }
    }
}
