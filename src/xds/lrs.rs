//! Load reports (LRS, `envoy.service.load_stats.v3.LoadReportingService`):
//! each topic's Cluster names this control plane as its load reporting
//! server, so every gRPC client sends it, per topic, the calls it issued,
//! those that succeeded and failed, those in progress and those it dropped,
//! every reporting interval. They are summed per topic and client (the
//! bootstrap's node id) and shown on `/metrics`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use envoy_types::pb::envoy::service::load_stats::v3::load_reporting_service_server::{
    LoadReportingService, LoadReportingServiceServer,
};
use envoy_types::pb::envoy::service::load_stats::v3::{LoadStatsRequest, LoadStatsResponse};
use envoy_types::pb::google::protobuf::Duration as PbDuration;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{ControlPlane, ResponseStream};
use crate::sync::lock;

/// How often clients report when the control plane is not told otherwise:
/// Envoy's usual 10 s.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

/// One topic's load as one client reported it, summed over its reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Load {
    /// Calls the client sent.
    pub(crate) issued: u64,
    pub(crate) succeeded: u64,
    pub(crate) failed: u64,
    /// Calls it dropped before sending.
    pub(crate) dropped: u64,
    /// Calls in progress at its last report.
    pub(crate) in_progress: u64,
}

/// A client's load on a topic, for the dashboard.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct ClientLoad {
    /// The client's node id.
    pub(crate) client: String,
    #[serde(flatten)]
    pub(crate) load: Load,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Labels {
    topic: String,
    client: String,
}

/// Every client's reports, summed.
#[derive(Debug, Default)]
pub(super) struct Loads {
    by_topic: Mutex<BTreeMap<(String, String), Load>>,
}

impl Loads {
    fn add(&self, client: &str, request: &LoadStatsRequest) {
        let mut loads = lock(&self.by_topic);
        for cluster in &request.cluster_stats {
            let load = loads
                .entry((cluster.cluster_name.clone(), client.to_string()))
                .or_default();
            load.dropped += cluster.total_dropped_requests;
            load.in_progress = 0;
            for locality in &cluster.upstream_locality_stats {
                load.issued += locality.total_issued_requests;
                load.succeeded += locality.total_successful_requests;
                load.failed += locality.total_error_requests;
                load.in_progress += locality.total_requests_in_progress;
            }
        }
    }

    /// Each topic's clients and their load, by topic then client.
    pub(super) fn by_topic(&self) -> BTreeMap<String, Vec<ClientLoad>> {
        let mut topics: BTreeMap<String, Vec<ClientLoad>> = BTreeMap::new();
        for ((topic, client), load) in lock(&self.by_topic).iter() {
            topics.entry(topic.clone()).or_default().push(ClientLoad {
                client: client.clone(),
                load: *load,
            });
        }
        topics
    }

    /// Registers the load figures in `registry`.
    pub(super) fn register(&self, registry: &mut Registry) {
        let families = [
            Family::<Labels, Counter>::default(),
            Family::<Labels, Counter>::default(),
            Family::<Labels, Counter>::default(),
            Family::<Labels, Counter>::default(),
        ];
        let in_progress = Family::<Labels, Gauge>::default();
        for ((topic, client), load) in lock(&self.by_topic).iter() {
            let labels = Labels {
                topic: topic.clone(),
                client: client.clone(),
            };
            let counts = [load.issued, load.succeeded, load.failed, load.dropped];
            for (family, count) in families.iter().zip(counts) {
                family.get_or_create(&labels).inc_by(count);
            }
            in_progress
                .get_or_create(&labels)
                .set(i64::try_from(load.in_progress).unwrap_or(i64::MAX));
        }
        let [issued, succeeded, failed, dropped] = families;
        registry.register(
            "svckit_xds_load_calls_issued",
            "calls the clients sent, from their load reports, per topic and client (node id)",
            issued,
        );
        registry.register(
            "svckit_xds_load_calls_succeeded",
            "calls that ended OK, from the clients' load reports",
            succeeded,
        );
        registry.register(
            "svckit_xds_load_calls_failed",
            "calls that failed, from the clients' load reports",
            failed,
        );
        registry.register(
            "svckit_xds_load_calls_dropped",
            "calls the clients dropped before sending, from their load reports",
            dropped,
        );
        registry.register(
            "svckit_xds_load_calls_in_progress",
            "calls in progress at the clients' last load report",
            in_progress,
        );
    }
}

impl ControlPlane {
    /// What the clients reported per topic, by topic then client (the
    /// dashboard's xDS load tables).
    pub(crate) fn loads(&self) -> BTreeMap<String, Vec<ClientLoad>> {
        self.shared.loads.by_topic()
    }

    /// The load reporting service, to serve beside [`ControlPlane::service`]
    /// on the same server: each topic's Cluster names this server as its
    /// load reporting server.
    pub fn load_reporting_service(&self) -> LoadReportingServiceServer<ControlPlane> {
        LoadReportingServiceServer::new(self.clone())
    }
}

#[tonic::async_trait]
impl LoadReportingService for ControlPlane {
    type StreamLoadStatsStream = ResponseStream<LoadStatsResponse>;

    async fn stream_load_stats(
        &self,
        request: Request<Streaming<LoadStatsRequest>>,
    ) -> Result<Response<Self::StreamLoadStatsStream>, Status> {
        self.refuse_if_closing()?;
        let mut requests = request.into_inner();
        let (tx, rx) = mpsc::channel(1);
        let shared = self.shared.clone();
        let mut closing = shared.closing.subscribe();
        let interval = shared.load_interval;
        tokio::spawn(async move {
            let mut client = None;
            loop {
                let request = tokio::select! {
                    request = requests.message() => request,
                    _ = closing.wait_for(|closing| *closing) => return,
                };
                let request = match request {
                    Ok(Some(request)) => request,
                    Ok(None) => return,
                    Err(status) => {
                        tracing::debug!(%status, "a load report stream ended");
                        return;
                    }
                };
                let client = match &client {
                    Some(client) => client,
                    None => {
                        // The first request names the client; the answer
                        // asks for every cluster, every interval.
                        let node = request.node.as_ref().map(|n| n.id.clone());
                        let answer = LoadStatsResponse {
                            send_all_clusters: true,
                            load_reporting_interval: Some(PbDuration {
                                seconds: i64::try_from(interval.as_secs()).unwrap_or(i64::MAX),
                                nanos: i32::try_from(interval.subsec_nanos()).unwrap_or(0),
                            }),
                            ..Default::default()
                        };
                        if tx.send(Ok(answer)).await.is_err() {
                            return;
                        }
                        client.insert(node.unwrap_or_default())
                    }
                };
                shared.loads.add(client, &request);
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::endpoint::v3::{ClusterStats, UpstreamLocalityStats};

    #[test]
    fn reports_add_up_per_topic_and_client() {
        let loads = Loads::default();
        let report = |issued, ok, failed, in_progress| LoadStatsRequest {
            cluster_stats: vec![ClusterStats {
                cluster_name: "echo".into(),
                total_dropped_requests: 1,
                upstream_locality_stats: vec![UpstreamLocalityStats {
                    total_issued_requests: issued,
                    total_successful_requests: ok,
                    total_error_requests: failed,
                    total_requests_in_progress: in_progress,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        loads.add("py", &report(10, 9, 1, 2));
        loads.add("py", &report(5, 5, 0, 0));
        loads.add("js", &report(3, 3, 0, 1));
        let topics = loads.by_topic();
        let clients: Vec<(&str, u64)> = topics["echo"]
            .iter()
            .map(|c| (c.client.as_str(), c.load.issued))
            .collect();
        assert_eq!(clients, [("js", 3), ("py", 15)]);
        let mut registry = Registry::default();
        loads.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            r#"svckit_xds_load_calls_issued_total{topic="echo",client="py"} 15"#,
            r#"svckit_xds_load_calls_succeeded_total{topic="echo",client="py"} 14"#,
            r#"svckit_xds_load_calls_failed_total{topic="echo",client="py"} 1"#,
            r#"svckit_xds_load_calls_dropped_total{topic="echo",client="py"} 2"#,
            r#"svckit_xds_load_calls_in_progress{topic="echo",client="py"} 0"#,
            r#"svckit_xds_load_calls_issued_total{topic="echo",client="js"} 3"#,
        ] {
            assert!(text.contains(line), "{line} in:\n{text}");
        }
    }
}
