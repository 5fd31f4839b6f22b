//! An xDS control plane fed by the service group: any gRPC client with a
//! built-in xDS resolver (C++, Python, Go, Java, Ruby, PHP, Node) calls a
//! topic's nodes as `xds:///TOPIC`, with nothing of svckit on its side.
//!
//! It serves the Aggregated Discovery Service
//! (`envoy.service.discovery.v3.AggregatedDiscoveryService`, state of the
//! world, v3 resources). For each topic `T` a client names: a Listener
//! `T` (an API listener routing every call to cluster `T`), a
//! RouteConfiguration `T`, a Cluster `T` (EDS over ADS, round robin) and a
//! ClusterLoadAssignment `T` holding the gRPC endpoints of `T`'s members
//! that are up and enabled, weighted by their `workers`. A topic with no
//! service record does not exist.
//!
//! Every stream subscribing to a topic shares one service-group watch of
//! that topic, started by the first and stopped with the last; a change is
//! pushed at once to the streams that subscribed to what changed.
//!
//! Each topic's Cluster names the control plane as its load reporting
//! server too: clients report their calls per topic
//! ([`ControlPlane::load_reporting_service`], shown on `/metrics`).
//!
//! `svckit xds` serves it on its own listener; a process embeds it with
//! [`ControlPlane::service`] and [`ControlPlane::load_reporting_service`]:
//!
//! ```no_run
//! # async fn run() -> svckit::Result<()> {
//! use svckit::servicegroup::{self, RegistryUrl};
//! use svckit::xds::ControlPlane;
//!
//! let url = RegistryUrl::parse("etcd://127.0.0.1:2379")?;
//! let registry = servicegroup::connect(&url, &Default::default()).await?;
//! let plane = ControlPlane::new(registry);
//! tonic::transport::Server::builder()
//!     .add_service(plane.service())
//!     .add_service(plane.load_reporting_service())
//!     .serve("127.0.0.1:18000".parse().unwrap())
//!     .await
//!     .map_err(svckit::Error::from)?;
//! # Ok(())
//! # }
//! ```

mod balance;
mod clients;
mod dump;
mod feed;
mod lrs;
mod policy;
mod resources;
mod stream;
mod tls;

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use futures::Stream;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::servicegroup::Registry;

pub(crate) use self::lrs::ClientLoad;
#[cfg(test)]
pub(crate) use self::lrs::Load as ReportedLoad;
pub use self::lrs::DEFAULT_INTERVAL as DEFAULT_LOAD_REPORT_INTERVAL;
pub use self::policy::Policies;
pub use self::tls::{UpstreamTls, DEFAULT_PROVIDER as DEFAULT_TLS_PROVIDER};

use self::feed::Feeds;
use self::stream::AdsStream;

/// Responses queued per stream before the stream waits for its client.
const STREAM_BUFFER: usize = 16;

/// A running control plane. Cheap to clone; its watches stop with the last
/// stream that uses them.
#[derive(Clone)]
pub struct ControlPlane {
    shared: Arc<Shared>,
}

struct Shared {
    feeds: Feeds,
    stats: Counters,
    dumps: dump::Dumps,
    loads: lrs::Loads,
    /// How often clients send load reports.
    load_interval: std::time::Duration,
    closing: watch::Sender<bool>,
}

#[derive(Default)]
struct Counters {
    streams: AtomicU64,
    streams_total: AtomicU64,
    pushes: AtomicU64,
    acks: AtomicU64,
    nacks: AtomicU64,
}

impl Counters {
    fn push(&self) {
        self.pushes.fetch_add(1, Ordering::Relaxed);
    }
    fn ack(&self) {
        self.acks.fetch_add(1, Ordering::Relaxed);
    }
    fn nack(&self) {
        self.nacks.fetch_add(1, Ordering::Relaxed);
    }
}

/// How a control plane describes its topics to clients.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct XdsOptions {
    /// Per-topic routes and balancing ([`Policies::from_file`]).
    pub policies: Policies,
    /// How often clients send their load reports.
    pub load_report_interval: std::time::Duration,
    /// How clients reach nodes that serve TLS.
    pub tls: UpstreamTls,
}

impl Default for XdsOptions {
    fn default() -> Self {
        XdsOptions {
            policies: Policies::default(),
            load_report_interval: DEFAULT_LOAD_REPORT_INTERVAL,
            tls: UpstreamTls::default(),
        }
    }
}

/// What a control plane has done so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct XdsStats {
    /// ADS streams open now.
    pub streams: u64,
    /// ADS streams opened since the start.
    pub streams_total: u64,
    /// Topics watched now (one service-group watch each).
    pub topics: u64,
    /// Responses sent.
    pub pushes: u64,
    /// Responses the clients accepted.
    pub acks: u64,
    /// Responses the clients rejected.
    pub nacks: u64,
}

impl ControlPlane {
    /// A control plane over `registry`. Needs a Tokio runtime once streams
    /// arrive.
    pub fn new(registry: Registry) -> Self {
        ControlPlane::with_options(registry, XdsOptions::default())
    }

    /// A control plane whose topics' routes carry `policies` (retries and
    /// timeouts, see [`Policies::from_file`]).
    pub fn with_policies(registry: Registry, policies: Policies) -> Self {
        ControlPlane::with_options(
            registry,
            XdsOptions {
                policies,
                ..XdsOptions::default()
            },
        )
    }

    /// A control plane with `options`.
    pub fn with_options(registry: Registry, options: XdsOptions) -> Self {
        let XdsOptions {
            policies,
            load_report_interval,
            tls,
        } = options;
        ControlPlane {
            shared: Arc::new(Shared {
                feeds: feed::feeds(registry, Arc::new(policies), Arc::new(tls)),
                stats: Counters::default(),
                dumps: dump::Dumps::default(),
                loads: lrs::Loads::default(),
                load_interval: load_report_interval,
                closing: watch::channel(false).0,
            }),
        }
    }

    /// The gRPC service, to add to a tonic server or a node's
    /// [`Manager`](crate::Manager).
    pub fn service(&self) -> AggregatedDiscoveryServiceServer<ControlPlane> {
        AggregatedDiscoveryServiceServer::new(self.clone())
    }

    /// Ends every stream (and those opened later), so that the server
    /// serving them can drain; clients reconnect to another control plane.
    pub fn close(&self) {
        self.shared.closing.send_replace(true);
    }

    /// Counters of streams and responses.
    pub fn stats(&self) -> XdsStats {
        let c = &self.shared.stats;
        XdsStats {
            streams: c.streams.load(Ordering::Relaxed),
            streams_total: c.streams_total.load(Ordering::Relaxed),
            topics: self.shared.feeds.watched().len() as u64,
            pushes: c.pushes.load(Ordering::Relaxed),
            acks: c.acks.load(Ordering::Relaxed),
            nacks: c.nacks.load(Ordering::Relaxed),
        }
    }
}

impl ControlPlane {
    /// What every open stream was last sent and what its client answered
    /// (`GET /config_dump` of `svckit xds`): per stream, the client's node
    /// id and, per resource type, the names, version and nonce sent, the
    /// version last accepted and the last rejection.
    pub fn config_dump(&self) -> serde_json::Value {
        self.shared.dumps.json()
    }

    /// The control plane's figures in Prometheus' text format (`GET
    /// /metrics` of `svckit xds`), NACKs per client and resource type
    /// and the clients' load reports per topic among them.
    pub fn metrics(&self) -> String {
        self.shared.dumps.metrics(&self.stats(), |registry| {
            self.shared.loads.register(registry)
        })
    }
}

impl ControlPlane {
    /// A new stream (ADS or load reports) is refused once the control
    /// plane is closing: the client reconnects to another.
    fn refuse_if_closing(&self) -> Result<(), Status> {
        if *self.shared.closing.borrow() {
            return Err(Status::unavailable("the control plane is stopping"));
        }
        Ok(())
    }
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("stats", &self.stats())
            .finish()
    }
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Counts a stream open while it lives, and keeps its exchange in the
/// config dump.
struct Open(Arc<Shared>, u64);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.stats.streams.fetch_sub(1, Ordering::Relaxed);
        self.0.dumps.close(self.1);
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for ControlPlane {
    type StreamAggregatedResourcesStream = ResponseStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = ResponseStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        self.refuse_if_closing()?;
        let requests = request.into_inner();
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let shared = self.shared.clone();
        shared.stats.streams.fetch_add(1, Ordering::Relaxed);
        shared.stats.streams_total.fetch_add(1, Ordering::Relaxed);
        let id = shared.dumps.open();
        let open = Open(shared.clone(), id);
        let closing = shared.closing.subscribe();
        tokio::spawn(async move {
            AdsStream::new(shared, tx, id).run(requests, closing).await;
            drop(open);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn delta_aggregated_resources(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented(
            "incremental xDS is not served: use the state-of-the-world variant",
        ))
    }
}
