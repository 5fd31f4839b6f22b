//! Which balancing policies a client can take, from the user agent its
//! xDS library puts in the bootstrap's `node`, so that a topic's policy is
//! never sent to a client that would reject (NACK) its Cluster: such a
//! client gets the topic's Cluster with round robin instead.
//!
//! A client too old for ring hash (gRFC A42) rejects a `RING_HASH`
//! Cluster. Weighted round robin (A58) is sent as a list ending in round
//! robin (A52), which a client without it skips; it is held back all the
//! same from a client known to lack it, so that the dump says what the
//! client balances by.
//!
//! The versions below are those in which each library took the policy
//! from xDS with no environment variable to set. A user agent not listed
//! (Envoy, a library not known here) or a version not parsed gets every
//! policy: it asked for xDS, and the control plane cannot know better.

use envoy_types::pb::envoy::config::core::v3::node::UserAgentVersionType;
use envoy_types::pb::envoy::config::core::v3::Node;

use super::balance::Balance;

/// A client's library and release, read once from its node.
#[derive(Debug, Clone, Default)]
pub(crate) struct Agent {
    /// `user_agent_name user_agent_version`, for logs and the config dump.
    label: String,
    /// A library of [`LIBRARIES`] and its (major, minor); `None` for any
    /// other, or a release not read, which gets every policy.
    release: Option<(&'static Library, (u32, u32))>,
}

/// A library, told by the start of its user agent's name, and the first
/// version (major, minor) that takes ring hash and weighted round robin.
#[derive(Debug)]
struct Library {
    name: &'static str,
    ring_hash: (u32, u32),
    weighted_round_robin: (u32, u32),
}

/// What each gRPC library reads from xDS, by its release notes and the
/// gRFCs' "implemented in".
const LIBRARIES: &[Library] = &[
    // grpc-js-xds: A42 in 1.10 (grpc-node#2568), A58's xDS registration in
    // 1.14 (grpc-node#3001, behind GRPC_EXPERIMENTAL_XDS_WRR_LB).
    Library {
        name: "gRPC Node Pure JS",
        ring_hash: (1, 10),
        weighted_round_robin: (1, 14),
    },
    // C-core, and the languages wrapping it (Python, Ruby, PHP, C++).
    Library {
        name: "gRPC C-core",
        ring_hash: (1, 40),
        weighted_round_robin: (1, 58),
    },
    Library {
        name: "gRPC Java",
        ring_hash: (1, 40),
        weighted_round_robin: (1, 58),
    },
    Library {
        name: "gRPC Go",
        ring_hash: (1, 41),
        weighted_round_robin: (1, 58),
    },
];

impl Agent {
    /// From the node of a stream's first request.
    pub(crate) fn from_node(node: &Node) -> Agent {
        let version = match &node.user_agent_version_type {
            Some(UserAgentVersionType::UserAgentVersion(v)) => v.as_str(),
            _ => "",
        };
        Agent::new(&node.user_agent_name, version)
    }

    /// From a user agent's name and version.
    fn new(name: &str, version: &str) -> Agent {
        let label = match (name.is_empty(), version.is_empty()) {
            (true, _) => "(no user agent)".to_string(),
            (false, true) => name.to_string(),
            (false, false) => format!("{name} {version}"),
        };
        let library = LIBRARIES.iter().find(|l| name.starts_with(l.name));
        Agent {
            label,
            release: library.zip(release_of(version)),
        }
    }

    /// The client can take `balance` from a Cluster.
    pub(crate) fn takes(&self, balance: &Balance) -> bool {
        let Some((library, release)) = self.release else {
            return true;
        };
        match balance {
            Balance::RoundRobin => true,
            Balance::RingHash { .. } => release >= library.ring_hash,
            Balance::WeightedRoundRobin { .. } => release >= library.weighted_round_robin,
        }
    }

    /// `name version`, for logs and the config dump.
    pub(crate) fn label(&self) -> &str {
        &self.label
    }
}

/// A library's (major, minor) from its user agent's version: the last
/// `N.N…` in it, the wrapping language's release where C-core names its
/// own version first (grpcio's `C-core 58.0.0 Python 1.85.3` reads 1.85).
fn release_of(version: &str) -> Option<(u32, u32)> {
    version
        .split(|c: char| c.is_whitespace() || c == '/')
        .filter_map(|word| {
            let mut parts = word.trim_start_matches('v').split('.');
            let major = parts.next()?.parse().ok()?;
            let minor = parts.next()?.parse().ok()?;
            Some((major, minor))
        })
        .next_back()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(name: &str, version: &str) -> Agent {
        Agent::new(name, version)
    }

    const WRR: Balance = Balance::WeightedRoundRobin { per_call: false };

    fn ring() -> Balance {
        Balance::RingHash {
            header: "x-key".into(),
        }
    }

    #[test]
    fn a_library_gets_a_policy_from_the_version_that_takes_it() {
        let old = agent("gRPC Node Pure JS", "1.9.2");
        let mid = agent("gRPC Node Pure JS", "1.10.1");
        let new = agent("gRPC Node Pure JS", "1.14.1");
        assert!(!old.takes(&ring()));
        assert!(mid.takes(&ring()));
        assert!(!mid.takes(&WRR));
        assert!(new.takes(&WRR));
        for a in [&old, &mid, &new] {
            assert!(a.takes(&Balance::RoundRobin));
        }
    }

    #[test]
    fn a_wrapped_c_core_is_judged_by_its_language_release() {
        let python = agent("gRPC C-core linux Python", "C-core 58.0.0 Python 1.85.3");
        assert_eq!(release_of("C-core 58.0.0 Python 1.85.3"), Some((1, 85)));
        assert!(python.takes(&WRR));
        let old = agent("gRPC C-core linux Python", "C-core 17.0.0 Python 1.39.0");
        assert!(!old.takes(&ring()));
    }

    #[test]
    fn an_unknown_or_unparsed_agent_gets_every_policy() {
        for a in [
            agent("envoy", "1.30.0"),
            agent("", ""),
            agent("gRPC Go", "dev"),
        ] {
            assert!(a.takes(&ring()), "{a:?}");
            assert!(a.takes(&WRR), "{a:?}");
        }
    }
}
