//! How a topic's calls are spread over its nodes, as each topic's Cluster
//! and route tell a gRPC client (`balance` in a policies file):
//!
//! - `round_robin`, the default;
//! - `ring_hash` (gRFC A42), keyed by the value of a request header
//!   (`hash_header`): calls with the same key go to the same node, and when
//!   a node leaves only its keys move;
//! - `weighted_round_robin` (gRFC A58): each node weighted by the calls it
//!   answers per CPU second, from the ORCA load reports every node sends
//!   out of band (`OpenRcaService`), or with `load_reports = "per_call"`
//!   from the trailer on each answer of nodes that set
//!   `rpc_load_report_trailer`. It is sent
//!   as a list with round robin after it (gRFC A52): a client without WRR
//!   takes round robin instead of rejecting the cluster.

use envoy_types::pb::envoy::config::cluster::v3::cluster::ring_hash_lb_config::HashFunction;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{LbConfig, LbPolicy, RingHashLbConfig};
use envoy_types::pb::envoy::config::cluster::v3::load_balancing_policy::Policy;
use envoy_types::pb::envoy::config::cluster::v3::{Cluster, LoadBalancingPolicy};
use envoy_types::pb::envoy::config::core::v3::TypedExtensionConfig;
use envoy_types::pb::envoy::config::route::v3::route_action::hash_policy::{
    Header, PolicySpecifier,
};
use envoy_types::pb::envoy::config::route::v3::route_action::HashPolicy;
use envoy_types::pb::envoy::extensions::load_balancing_policies::client_side_weighted_round_robin::v3::ClientSideWeightedRoundRobin;
use envoy_types::pb::envoy::extensions::load_balancing_policies::round_robin::v3::RoundRobin;
use envoy_types::pb::google::protobuf::{BoolValue, Duration as PbDuration, UInt64Value};
use prost::{Message, Name};

/// How a topic's calls are spread over its nodes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum Balance {
    /// Each node in turn.
    #[default]
    RoundRobin,
    /// By a hash of the value of this request header (lower case).
    RingHash { header: String },
    /// By the nodes' ORCA reports of utilization and calls per second:
    /// out of band (a stream per connection), or `per_call`, from the
    /// trailer each answer carries (nodes with `rpc_load_report_trailer`).
    WeightedRoundRobin { per_call: bool },
}

/// Entries on the ring of a node of the topic's lowest weight: about 9%
/// spread between nodes' shares of the keys.
const ENTRIES_PER_NODE: u64 = 128;
/// gRPC clients cap a ring at 4,096 entries (grpcio and grpc-js alike).
const RING_CAP: u64 = 4096;
/// How often a node's ORCA stream reports when WRR asks out of band.
const OOB_PERIOD_SECS: i64 = 1;
/// How long a node's weight is ignored after its first report (gRPC's
/// default is 10 s): a node's report covers all its clients' calls, so it
/// is as good from the first one.
const BLACKOUT_SECS: i64 = 2;

impl Balance {
    /// From a policies file's `balance` and `hash_header`; the error names
    /// the option.
    pub(crate) fn parse(balance: Option<&str>, header: Option<&str>) -> Result<Self, String> {
        let balance = match (balance.unwrap_or("round_robin"), header) {
            ("round_robin", None) => Balance::RoundRobin,
            ("weighted_round_robin", None) => Balance::WeightedRoundRobin { per_call: false },
            ("ring_hash", Some(header)) => Balance::RingHash {
                header: hash_header(header)?,
            },
            ("ring_hash", None) => {
                return Err(
                    "balance: ring_hash needs hash_header, the request header hashed".into(),
                )
            }
            ("round_robin" | "weighted_round_robin", Some(_)) => {
                return Err("hash_header: only balance = \"ring_hash\" hashes a header".into())
            }
            (other, _) => {
                return Err(format!(
                    "balance: {other:?} is not one of round_robin, ring_hash, weighted_round_robin"
                ))
            }
        };
        Ok(balance)
    }

    /// The same balance with its load reports read as `load_reports` says
    /// (`out_of_band`, the default, or `per_call`); the error names the
    /// option.
    pub(crate) fn with_load_reports(self, load_reports: Option<&str>) -> Result<Self, String> {
        match (self, load_reports) {
            (balance, None) => Ok(balance),
            (Balance::WeightedRoundRobin { .. }, Some(how @ ("out_of_band" | "per_call"))) => {
                Ok(Balance::WeightedRoundRobin {
                    per_call: how == "per_call",
                })
            }
            (Balance::WeightedRoundRobin { .. }, Some(other)) => Err(format!(
                "load_reports: {other:?} is not one of out_of_band, per_call"
            )),
            (_, Some(_)) => Err(
                "load_reports: only balance = \"weighted_round_robin\" reads load reports".into(),
            ),
        }
    }

    /// Sets `cluster`'s policy, for endpoints of `weights`.
    pub(crate) fn apply(&self, cluster: &mut Cluster, weights: &[u32]) {
        match self {
            Balance::RoundRobin => cluster.lb_policy = LbPolicy::RoundRobin as i32,
            // The enum rather than A52's list: grpc-js knows ring hash only so.
            Balance::RingHash { .. } => {
                cluster.lb_policy = LbPolicy::RingHash as i32;
                cluster.lb_config = Some(LbConfig::RingHashLbConfig(RingHashLbConfig {
                    minimum_ring_size: Some(UInt64Value {
                        value: ring_size(weights),
                    }),
                    hash_function: HashFunction::XxHash as i32,
                    maximum_ring_size: Some(UInt64Value { value: RING_CAP }),
                }));
            }
            Balance::WeightedRoundRobin { per_call } => {
                let wrr = ClientSideWeightedRoundRobin {
                    enable_oob_load_report: Some(BoolValue { value: !per_call }),
                    oob_reporting_period: (!per_call).then_some(PbDuration {
                        seconds: OOB_PERIOD_SECS,
                        nanos: 0,
                    }),
                    blackout_period: Some(PbDuration {
                        seconds: BLACKOUT_SECS,
                        nanos: 0,
                    }),
                    ..Default::default()
                };
                cluster.lb_policy = LbPolicy::RoundRobin as i32;
                cluster.load_balancing_policy = Some(LoadBalancingPolicy {
                    policies: vec![
                        policy(
                            "envoy.load_balancing_policies.client_side_weighted_round_robin",
                            &wrr,
                        ),
                        policy(
                            "envoy.load_balancing_policies.round_robin",
                            &RoundRobin::default(),
                        ),
                    ],
                });
            }
        }
    }

    /// The route's hash policy: the header of a ring hash.
    pub(crate) fn hash_policy(&self) -> Vec<HashPolicy> {
        match self {
            Balance::RingHash { header } => vec![HashPolicy {
                policy_specifier: Some(PolicySpecifier::Header(Header {
                    header_name: header.clone(),
                    regex_rewrite: None,
                })),
                terminal: false,
            }],
            _ => Vec::new(),
        }
    }
}

/// The ring size that gives each node the same entries whatever the
/// number of its peers: a gRPC client gives a node of the lowest weight
/// ⌈ring × its share⌉ entries, so a ring of a fixed size would give every
/// node more entries when one leaves, and move keys between the nodes that
/// stay. Past [`RING_CAP`] (32 nodes of one weight) the ring is capped,
/// and a change moves some keys of other nodes too.
fn ring_size(weights: &[u32]) -> u64 {
    let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
    let lowest = weights.iter().copied().min().unwrap_or(1).max(1);
    (ENTRIES_PER_NODE * total)
        .div_ceil(u64::from(lowest))
        .clamp(1, RING_CAP)
}

fn policy<M: Message + Name>(name: &str, config: &M) -> Policy {
    Policy {
        typed_extension_config: Some(TypedExtensionConfig {
            name: name.to_string(),
            typed_config: Some(envoy_types::pb::google::protobuf::Any {
                type_url: M::type_url(),
                value: config.encode_to_vec(),
            }),
        }),
    }
}

/// A header a gRPC client can hash: a lower-case token, neither a pseudo
/// header nor a binary one (gRPC ignores `-bin` headers for hashing).
fn hash_header(header: &str) -> Result<String, String> {
    let valid = !header.is_empty()
        && header
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
    if !valid {
        return Err(format!(
            "hash_header: {header:?} is not a lower-case header name (letters, digits, - _ .)"
        ));
    }
    if header.ends_with("-bin") || header.starts_with("grpc-") {
        return Err(format!(
            "hash_header: {header:?} is a binary or gRPC header, which gRPC does not hash"
        ));
    }
    Ok(header.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_balance_sets_the_cluster_and_the_route() {
        let ring = Balance::parse(Some("ring_hash"), Some("x-user")).unwrap();
        let mut cluster = Cluster::default();
        ring.apply(&mut cluster, &[1, 1, 1]);
        assert_eq!(cluster.lb_policy, LbPolicy::RingHash as i32);
        let Some(LbConfig::RingHashLbConfig(config)) = cluster.lb_config else {
            panic!("no ring config");
        };
        assert_eq!(config.minimum_ring_size, Some(UInt64Value { value: 384 }));
        let route = ring.hash_policy();
        assert_eq!(
            route[0].policy_specifier,
            Some(PolicySpecifier::Header(Header {
                header_name: "x-user".into(),
                regex_rewrite: None
            }))
        );

        let wrr = Balance::parse(Some("weighted_round_robin"), None).unwrap();
        let mut cluster = Cluster::default();
        wrr.apply(&mut cluster, &[1]);
        let names: Vec<_> = cluster
            .load_balancing_policy
            .unwrap()
            .policies
            .into_iter()
            .map(|p| {
                p.typed_extension_config
                    .unwrap()
                    .typed_config
                    .unwrap()
                    .type_url
            })
            .collect();
        assert_eq!(
            names,
            [
                ClientSideWeightedRoundRobin::type_url(),
                RoundRobin::type_url()
            ]
        );
        assert!(wrr.hash_policy().is_empty());
        let per_call = wrr.with_load_reports(Some("per_call")).unwrap();
        let mut cluster = Cluster::default();
        per_call.apply(&mut cluster, &[1]);
        let policies = cluster.load_balancing_policy.unwrap().policies;
        let config = policies[0].typed_extension_config.as_ref().unwrap();
        let wrr = ClientSideWeightedRoundRobin::decode(
            config.typed_config.as_ref().unwrap().value.as_slice(),
        )
        .unwrap();
        assert_eq!(wrr.enable_oob_load_report, Some(BoolValue { value: false }));
        assert!(Balance::RoundRobin
            .with_load_reports(Some("per_call"))
            .is_err());
        assert_eq!(Balance::parse(None, None).unwrap(), Balance::RoundRobin);
    }

    #[test]
    fn a_ring_gives_each_node_the_same_entries_whatever_its_peers() {
        assert_eq!(ring_size(&[1, 1, 1]), 3 * ENTRIES_PER_NODE);
        assert_eq!(ring_size(&[1, 1]), 2 * ENTRIES_PER_NODE);
        assert_eq!(ring_size(&[2, 4]), 3 * ENTRIES_PER_NODE);
        assert_eq!(ring_size(&[]), 1);
        assert_eq!(ring_size(&[1; 1000]), RING_CAP);
    }

    #[test]
    fn a_balance_a_client_could_not_use_is_refused() {
        for (balance, header, says) in [
            (Some("ring_hash"), None, "needs hash_header"),
            (Some("ring_hash"), Some("X-User"), "not a lower-case header"),
            (Some("ring_hash"), Some("key-bin"), "binary"),
            (None, Some("x-user"), "only balance = \"ring_hash\""),
            (
                Some("least_request"),
                None,
                "\"least_request\" is not one of",
            ),
        ] {
            let err = Balance::parse(balance, header).unwrap_err();
            assert!(err.contains(says), "{balance:?} {header:?}: {err}");
        }
    }
}
