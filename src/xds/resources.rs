//! The xDS resources of one topic, built from its members: what a gRPC
//! client's `xds:///TOPIC` channel asks for.
//!
//! - Listener `TOPIC`: an API listener whose HttpConnectionManager holds
//!   the router filter and an inline route of every path to cluster `TOPIC`;
//! - RouteConfiguration `TOPIC`: the same route, for a client that asks for
//!   it over RDS; with the topic's retry policy and timeout, if it has
//!   them ([`super::policy`]);
//! - Cluster `TOPIC`: EDS over the same ADS stream, round robin unless the
//!   topic's policy balances otherwise ([`super::balance`]), load reports
//!   to this control plane ([`super::lrs`]);
//! - ClusterLoadAssignment `TOPIC`: the gRPC endpoints of the topic's
//!   routable members (up, not disabled, not forced down), weighted by
//!   their `workers`.

use std::net::IpAddr;
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, EdsClusterConfig,
};
use envoy_types::pb::envoy::config::cluster::v3::{Cluster, OutlierDetection};
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::socket_address::{PortSpecifier, Protocol};
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiVersion, ConfigSource, HealthStatus, Locality,
    SelfConfigSource, SocketAddress,
};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::listener::v3::{ApiListener, Listener};
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter,
};
use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration, UInt32Value};
use prost::{Message, Name};

use super::balance::Balance;
use super::clients::Agent;
use super::policy::RoutePolicy;
use super::tls::UpstreamTls;

/// The resource types served, one per xDS type URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Kind {
    Listener,
    Route,
    Cluster,
    Endpoints,
}

impl Kind {
    pub(crate) const ALL: [Kind; 4] = [Kind::Listener, Kind::Route, Kind::Cluster, Kind::Endpoints];

    /// The kind a request's `type_url` names; `None` for types not served.
    pub(crate) fn from_type_url(url: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.type_url() == url)
    }

    pub(crate) fn type_url(self) -> &'static str {
        match self {
            Kind::Listener => "type.googleapis.com/envoy.config.listener.v3.Listener",
            Kind::Route => "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
            Kind::Cluster => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            Kind::Endpoints => "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
        }
    }

    /// Listener and Cluster responses carry the whole subscribed set (a
    /// resource left out does not exist); the others only what they carry.
    /// The type's short name, as in its URL.
    pub(crate) fn name(self) -> &'static str {
        let url = self.type_url();
        url.rsplit('.').next().unwrap_or(url)
    }

    pub(crate) fn state_of_the_world(self) -> bool {
        matches!(self, Kind::Listener | Kind::Cluster)
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// One routable member's gRPC endpoint, resolved to an address.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Backend {
    pub(crate) host: String,
    pub(crate) ip: IpAddr,
    pub(crate) port: u16,
    pub(crate) weight: u32,
    /// The node serves TLS (an `https://` endpoint).
    pub(crate) tls: bool,
}

/// A topic's four resources, encoded once and shared by every stream.
#[derive(Debug, Clone)]
pub(crate) struct TopicResources {
    pub(crate) by_kind: [Arc<Any>; 4],
    /// The Cluster with round robin, for a client that cannot take the
    /// topic's policy ([`super::clients`]); none when that is round robin.
    plain_cluster: Option<Arc<Any>>,
    balance: Balance,
}

impl TopicResources {
    /// The listener, route and cluster of `topic`, and its endpoints.
    pub(crate) fn build(
        topic: &str,
        backends: &[Backend],
        policy: &RoutePolicy,
        tls: &UpstreamTls,
    ) -> TopicResources {
        TopicResources {
            by_kind: [
                Arc::new(pack(&listener(topic, policy))),
                Arc::new(pack(&route_configuration(topic, policy))),
                Arc::new(pack(&cluster(topic, backends, policy.balance(), tls))),
                Arc::new(pack(&load_assignment(topic, backends))),
            ],
            plain_cluster: plain_cluster(topic, backends, policy, tls).map(Arc::new),
            balance: policy.balance().clone(),
        }
    }

    /// The same resources with the endpoints changed; the others are kept
    /// (the same `Arc`s: a stream sees they did not change), but for a
    /// Cluster that follows the endpoints: a ring hash's size, TLS.
    pub(crate) fn with_backends(
        &self,
        topic: &str,
        backends: &[Backend],
        policy: &RoutePolicy,
        tls: &UpstreamTls,
    ) -> TopicResources {
        let mut next = self.clone();
        next.by_kind[Kind::Endpoints.index()] = Arc::new(pack(&load_assignment(topic, backends)));
        let cluster = pack(&cluster(topic, backends, policy.balance(), tls));
        if cluster != *self.get(Kind::Cluster).as_ref() {
            next.by_kind[Kind::Cluster.index()] = Arc::new(cluster);
        }
        let plain = plain_cluster(topic, backends, policy, tls);
        if plain.as_ref() != self.plain_cluster.as_deref() {
            next.plain_cluster = plain.map(Arc::new);
        }
        next
    }

    pub(crate) fn get(&self, kind: Kind) -> &Arc<Any> {
        &self.by_kind[kind.index()]
    }

    /// The resource of `kind` for a client of `agent`, and whether the
    /// topic's policy was held back from it.
    pub(crate) fn for_agent(&self, kind: Kind, agent: &Agent) -> (&Arc<Any>, bool) {
        match &self.plain_cluster {
            Some(plain) if kind == Kind::Cluster && !agent.takes(&self.balance) => (plain, true),
            _ => (self.get(kind), false),
        }
    }
}

/// The Cluster of `topic` with round robin, unless that is its policy.
fn plain_cluster(
    topic: &str,
    backends: &[Backend],
    policy: &RoutePolicy,
    tls: &UpstreamTls,
) -> Option<Any> {
    let round_robin = Balance::RoundRobin;
    (*policy.balance() != round_robin).then(|| pack(&cluster(topic, backends, &round_robin, tls)))
}

fn pack<M: Message + Name>(message: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: message.encode_to_vec(),
    }
}

/// The listener of a topic no node registered: a route configuration with
/// no route, so that a client fails each call to it at once (UNAVAILABLE,
/// "no matching route") instead of waiting out its 15 s does-not-exist
/// timer; a node that registers the topic replaces it.
pub(crate) fn absent_listener(topic: &str) -> Arc<Any> {
    let policy = RoutePolicy::default();
    let mut listener = listener(topic, &policy);
    let manager = HttpConnectionManager {
        route_specifier: Some(RouteSpecifier::RouteConfig(RouteConfiguration {
            name: topic.to_string(),
            virtual_hosts: vec![VirtualHost {
                name: format!("{topic} (no node registered)"),
                domains: vec!["*".to_string()],
                routes: Vec::new(),
                ..Default::default()
            }],
            ..Default::default()
        })),
        ..manager(topic, &policy)
    };
    listener.api_listener = Some(ApiListener {
        api_listener: Some(pack(&manager)),
    });
    Arc::new(pack(&listener))
}

fn route_configuration(topic: &str, policy: &RoutePolicy) -> RouteConfiguration {
    RouteConfiguration {
        name: topic.to_string(),
        virtual_hosts: vec![VirtualHost {
            name: topic.to_string(),
            domains: vec!["*".to_string()],
            routes: vec![Route {
                r#match: Some(RouteMatch {
                    path_specifier: Some(PathSpecifier::Prefix(String::new())),
                    ..Default::default()
                }),
                action: Some(Action::Route(RouteAction {
                    cluster_specifier: Some(ClusterSpecifier::Cluster(topic.to_string())),
                    retry_policy: policy.retry_policy(),
                    max_stream_duration: policy.max_stream_duration(),
                    hash_policy: policy.balance().hash_policy(),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn manager(topic: &str, policy: &RoutePolicy) -> HttpConnectionManager {
    HttpConnectionManager {
        route_specifier: Some(RouteSpecifier::RouteConfig(route_configuration(
            topic, policy,
        ))),
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.router".to_string(),
            config_type: Some(ConfigType::TypedConfig(pack(&Router::default()))),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn listener(topic: &str, policy: &RoutePolicy) -> Listener {
    Listener {
        name: topic.to_string(),
        api_listener: Some(ApiListener {
            api_listener: Some(pack(&manager(topic, policy))),
        }),
        ..Default::default()
    }
}

fn cluster(topic: &str, backends: &[Backend], balance: &Balance, tls: &UpstreamTls) -> Cluster {
    let mut cluster = Cluster {
        name: topic.to_string(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(EdsClusterConfig {
            eds_config: Some(ConfigSource {
                resource_api_version: ApiVersion::V3 as i32,
                config_source_specifier: Some(ConfigSourceSpecifier::Ads(
                    AggregatedConfigSource::default(),
                )),
                ..Default::default()
            }),
            service_name: String::new(),
        }),
        outlier_detection: Some(outlier_detection()),
        // Load reports go to this control plane (see `super::lrs`).
        lrs_server: Some(ConfigSource {
            resource_api_version: ApiVersion::V3 as i32,
            config_source_specifier: Some(
                ConfigSourceSpecifier::Self_(SelfConfigSource::default()),
            ),
            ..Default::default()
        }),
        ..Default::default()
    };
    if backends.iter().any(|b| b.tls) {
        cluster.transport_socket = Some(tls.transport_socket());
    }
    let weights: Vec<u32> = backends.iter().map(|b| b.weight.max(1)).collect();
    balance.apply(&mut cluster, &weights);
    cluster
}

/// The kit client's ejection of sick nodes, for any gRPC client (gRFC
/// A50): a node that failed at least a fifth of at least 20 calls over half
/// a second (a sick node's failures are cut short), or whose success rate is well below its peers', is left out for
/// 30 s × the times it was ejected (at most 300 s), never more than half
/// of the topic. gRPC counts as failures what the kit's client does
/// (UNAVAILABLE, INTERNAL, UNKNOWN, DEADLINE_EXCEEDED, transport errors);
/// consecutive failures are not among A50's rules.
fn outlier_detection() -> OutlierDetection {
    use crate::rpc::discovery::outlier::{MIN_RATIO, MIN_VOLUME};
    let count = |value: u32| Some(UInt32Value { value });
    let seconds = |seconds: i64| Some(PbDuration { seconds, nanos: 0 });
    let base = crate::rpc::RpcOptions::default().ejection_time.as_secs();
    let base = i64::try_from(base).unwrap_or(30);
    OutlierDetection {
        interval: Some(PbDuration {
            seconds: 0,
            nanos: 500_000_000,
        }),
        base_ejection_time: seconds(base),
        max_ejection_time: seconds(base * 10),
        max_ejection_percent: count(50),
        failure_percentage_threshold: count((MIN_RATIO * 100.0) as u32),
        enforcing_failure_percentage: count(100),
        failure_percentage_minimum_hosts: count(2),
        failure_percentage_request_volume: count(MIN_VOLUME),
        enforcing_success_rate: count(100),
        success_rate_minimum_hosts: count(3),
        success_rate_request_volume: count(MIN_VOLUME),
        success_rate_stdev_factor: count(1900),
        ..Default::default()
    }
}

fn load_assignment(topic: &str, backends: &[Backend]) -> ClusterLoadAssignment {
    let lb_endpoints = backends
        .iter()
        .map(|b| LbEndpoint {
            host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                address: Some(Address {
                    address: Some(AddressKind::SocketAddress(SocketAddress {
                        protocol: Protocol::Tcp as i32,
                        address: b.ip.to_string(),
                        port_specifier: Some(PortSpecifier::PortValue(u32::from(b.port))),
                        ..Default::default()
                    })),
                }),
                hostname: b.host.clone(),
                ..Default::default()
            })),
            health_status: HealthStatus::Healthy as i32,
            load_balancing_weight: Some(UInt32Value {
                value: b.weight.max(1),
            }),
            ..Default::default()
        })
        .collect::<Vec<_>>();
    // gRPC clients ignore a locality without a weight: one locality holds
    // every endpoint, weighted 1.
    let endpoints = if lb_endpoints.is_empty() {
        Vec::new()
    } else {
        vec![LocalityLbEndpoints {
            locality: Some(Locality::default()),
            lb_endpoints,
            load_balancing_weight: Some(UInt32Value { value: 1 }),
            ..Default::default()
        }]
    };
    ClusterLoadAssignment {
        cluster_name: topic.to_string(),
        endpoints,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_carry_address_port_and_weight() {
        let backends = [Backend {
            host: "n1".into(),
            ip: "10.0.0.5".parse().unwrap(),
            port: 7000,
            weight: 4,
            tls: false,
        }];
        let any = TopicResources::build(
            "echo",
            &backends,
            &RoutePolicy::default(),
            &UpstreamTls::default(),
        )
        .get(Kind::Endpoints)
        .clone();
        assert_eq!(any.type_url, Kind::Endpoints.type_url());
        let cla = ClusterLoadAssignment::decode(any.value.as_slice()).unwrap();
        assert_eq!(cla.cluster_name, "echo");
        let locality = &cla.endpoints[0];
        assert_eq!(
            locality.load_balancing_weight,
            Some(UInt32Value { value: 1 })
        );
        let lb = &locality.lb_endpoints[0];
        assert_eq!(lb.load_balancing_weight, Some(UInt32Value { value: 4 }));
        let Some(HostIdentifier::Endpoint(endpoint)) = &lb.host_identifier else {
            panic!("no endpoint");
        };
        let Some(AddressKind::SocketAddress(socket)) =
            endpoint.address.as_ref().and_then(|a| a.address.clone())
        else {
            panic!("no socket address");
        };
        assert_eq!(socket.address, "10.0.0.5");
        assert_eq!(socket.port_specifier, Some(PortSpecifier::PortValue(7000)));
    }

    #[test]
    fn listener_routes_everything_to_the_topic_cluster() {
        let any = TopicResources::build(
            "echo",
            &[],
            &RoutePolicy::default(),
            &UpstreamTls::default(),
        )
        .get(Kind::Listener)
        .clone();
        let listener = Listener::decode(any.value.as_slice()).unwrap();
        let api = listener.api_listener.unwrap().api_listener.unwrap();
        assert_eq!(api.type_url, HttpConnectionManager::type_url());
        let manager = HttpConnectionManager::decode(api.value.as_slice()).unwrap();
        let Some(RouteSpecifier::RouteConfig(routes)) = manager.route_specifier else {
            panic!("no inline route");
        };
        let action = routes.virtual_hosts[0].routes[0].action.clone();
        assert_eq!(
            action,
            Some(Action::Route(RouteAction {
                cluster_specifier: Some(ClusterSpecifier::Cluster("echo".into())),
                ..Default::default()
            }))
        );
        assert_eq!(manager.http_filters[0].name, "envoy.filters.http.router");
    }

    #[test]
    fn type_urls_round_trip() {
        for kind in Kind::ALL {
            assert_eq!(Kind::from_type_url(kind.type_url()), Some(kind));
        }
        assert_eq!(Kind::from_type_url("type.googleapis.com/x.Y"), None);
    }
}
