//! What each topic's route and cluster tell a gRPC client beyond where to
//! send a call: which failures to retry and how (gRFC A44), how long a call
//! may take at most (gRFC A31, `max_stream_duration`), and how calls are
//! spread over the nodes ([`super::balance`]).
//!
//! `svckit xds --policies FILE` reads them from a TOML file; a topic not
//! named there takes `[default]`, and an option a topic leaves out is the
//! default's:
//!
//! ```toml
//! [default]
//! retry_on = ["unavailable"]   # gRPC status codes a call is retried on
//! retries = 2                  # retries after the first attempt, 0 to 4
//! backoff = "25ms"             # first backoff; each doubles, jittered
//! max_backoff = "250ms"        # cap on the backoff (10 × backoff unless set)
//! timeout = "5s"               # a call's longest life, retries included
//! balance = "round_robin"      # or "ring_hash", "weighted_round_robin"
//!
//! [topic.compute]
//! retry_on = ["unavailable", "resource-exhausted"]
//! balance = "weighted_round_robin"
//! load_reports = "per_call"    # or "out_of_band" (the default): the nodes
//!                              # need rpc_load_report_trailer
//!
//! [topic.sessions]
//! balance = "ring_hash"
//! hash_header = "x-session"    # calls with one value go to one node
//! ```
//!
//! With no file, routes carry no retry policy and no timeout: gRPC's own
//! behaviour (transparent retries of calls that never left the client).
//! A retry can run a call twice when a node failed after doing its work,
//! so retry policies are for topics whose calls are idempotent.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use envoy_types::pb::envoy::config::route::v3::retry_policy::RetryBackOff;
use envoy_types::pb::envoy::config::route::v3::route_action::MaxStreamDuration;
use envoy_types::pb::envoy::config::route::v3::RetryPolicy;
use envoy_types::pb::google::protobuf::{Duration as PbDuration, UInt32Value};
use serde::Deserialize;

use super::balance::Balance;
use crate::config::OptionValue;
use crate::error::{Error, Result};

/// The status codes gRPC clients retry on (gRFC A44); any other is
/// refused, as a client would reject the route.
const RETRYABLE: [&str; 5] = [
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];
/// Most retries after the first attempt: gRPC makes at most 5 attempts.
const MAX_RETRIES: u32 = 4;
/// The first backoff when a policy retries and names none (A44's default).
const BACKOFF: Duration = Duration::from_millis(25);
/// The shortest first backoff: grpcio 1.85 holds a retry whose backoff is
/// 1 ms until the call's deadline.
const MIN_BACKOFF: Duration = Duration::from_millis(5);

/// One route's policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutePolicy {
    /// Status codes retried, as the route's `retry_on` spells them.
    retry_on: Vec<String>,
    retries: u32,
    backoff: Duration,
    max_backoff: Duration,
    timeout: Option<Duration>,
    balance: Balance,
}

/// Every topic's route policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policies {
    default: RoutePolicy,
    topics: HashMap<String, RoutePolicy>,
}

/// A policy as written: every option may be left out.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Written {
    retry_on: Option<Vec<String>>,
    retries: Option<u32>,
    backoff: Option<String>,
    max_backoff: Option<String>,
    timeout: Option<String>,
    balance: Option<String>,
    hash_header: Option<String>,
    load_reports: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    default: Written,
    #[serde(default)]
    topic: HashMap<String, Written>,
}

impl Policies {
    /// Reads `path` (see the module docs); any mistake is an error naming
    /// the file, the table and the option.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::config_from(format!("cannot read {}", path.display()), e))?;
        Policies::parse(&text)
            .map_err(|problem| Error::config(format!("{}: {problem}", path.display())))
    }

    /// Parses the text of a policies file.
    fn parse(text: &str) -> std::result::Result<Self, String> {
        let file: File = toml::from_str(text).map_err(|e| e.to_string())?;
        let default = RoutePolicy::from_written(&file.default, &Written::default())
            .map_err(|e| format!("[default]: {e}"))?;
        let mut topics = HashMap::new();
        for (topic, written) in &file.topic {
            let policy = RoutePolicy::from_written(written, &file.default)
                .map_err(|e| format!("[topic.{topic}]: {e}"))?;
            topics.insert(topic.clone(), policy);
        }
        Ok(Policies { default, topics })
    }

    /// The policy of `topic`'s route.
    pub(crate) fn of(&self, topic: &str) -> &RoutePolicy {
        self.topics.get(topic).unwrap_or(&self.default)
    }
}

impl RoutePolicy {
    /// `written`, each option left out taken from `default`.
    fn from_written(written: &Written, default: &Written) -> std::result::Result<Self, String> {
        let duration = |name: &str, value: &Option<String>, fallback: &Option<String>| {
            value
                .as_ref()
                .or(fallback.as_ref())
                .map(|text| Duration::parse_value(text).map_err(|e| format!("{name}: {e}")))
                .transpose()
        };
        let retry_on = written
            .retry_on
            .clone()
            .or_else(|| default.retry_on.clone())
            .unwrap_or_default();
        for code in &retry_on {
            if !RETRYABLE.contains(&code.as_str()) {
                return Err(format!(
                    "retry_on: {code:?} is not a status code gRPC retries on (one of {})",
                    RETRYABLE.join(", ")
                ));
            }
        }
        let retries = written.retries.or(default.retries).unwrap_or(0);
        if retries > MAX_RETRIES {
            return Err(format!(
                "retries: {retries} is more than gRPC makes ({MAX_RETRIES} after the first attempt)"
            ));
        }
        if retries > 0 && retry_on.is_empty() {
            return Err("retries: set retry_on too, the codes to retry on".into());
        }
        let backoff = duration("backoff", &written.backoff, &default.backoff)?.unwrap_or(BACKOFF);
        if backoff < MIN_BACKOFF {
            return Err(format!(
                "backoff: {backoff:?} is less than {MIN_BACKOFF:?} (grpcio holds a retry with a 1 ms backoff until its deadline)"
            ));
        }
        let max_backoff = duration("max_backoff", &written.max_backoff, &default.max_backoff)?
            .unwrap_or(backoff * 10);
        if max_backoff < backoff {
            return Err(format!(
                "max_backoff: {max_backoff:?} is less than backoff ({backoff:?})"
            ));
        }
        let timeout = duration("timeout", &written.timeout, &default.timeout)?;
        if timeout.is_some_and(|t| t.is_zero()) {
            return Err("timeout: must be more than 0".into());
        }
        let balance = Balance::parse(
            written
                .balance
                .as_ref()
                .or(default.balance.as_ref())
                .map(String::as_str),
            written
                .hash_header
                .as_ref()
                .or(default.hash_header.as_ref())
                .map(String::as_str),
        )?
        .with_load_reports(
            written
                .load_reports
                .as_ref()
                .or(default.load_reports.as_ref())
                .map(String::as_str),
        )?;
        Ok(RoutePolicy {
            retry_on,
            retries,
            backoff,
            max_backoff,
            timeout,
            balance,
        })
    }

    /// The route's retry policy, if it retries at all.
    pub(crate) fn retry_policy(&self) -> Option<RetryPolicy> {
        if self.retries == 0 || self.retry_on.is_empty() {
            return None;
        }
        Some(RetryPolicy {
            retry_on: self.retry_on.join(","),
            num_retries: Some(UInt32Value {
                value: self.retries,
            }),
            retry_back_off: Some(RetryBackOff {
                base_interval: Some(pb_duration(self.backoff)),
                max_interval: Some(pb_duration(self.max_backoff)),
            }),
            ..Default::default()
        })
    }

    /// How the topic's calls are spread over its nodes.
    pub(crate) fn balance(&self) -> &Balance {
        &self.balance
    }

    /// The route's bound on a call's life, if it has one.
    pub(crate) fn max_stream_duration(&self) -> Option<MaxStreamDuration> {
        self.timeout.map(|timeout| MaxStreamDuration {
            max_stream_duration: Some(pb_duration(timeout)),
            ..Default::default()
        })
    }
}

fn pb_duration(d: Duration) -> PbDuration {
    PbDuration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_topic_takes_what_it_leaves_out_from_the_default() {
        let policies = Policies::parse(
            r#"
            [default]
            retry_on = ["unavailable"]
            retries = 2
            timeout = "5s"

            [topic.compute]
            retry_on = ["unavailable", "resource-exhausted"]
            backoff = "10ms"
            "#,
        )
        .unwrap();
        let compute = policies.of("compute").retry_policy().unwrap();
        assert_eq!(compute.retry_on, "unavailable,resource-exhausted");
        assert_eq!(compute.num_retries, Some(UInt32Value { value: 2 }));
        let backoff = compute.retry_back_off.unwrap();
        assert_eq!(
            backoff.base_interval,
            Some(pb_duration(Duration::from_millis(10)))
        );
        assert_eq!(
            backoff.max_interval,
            Some(pb_duration(Duration::from_millis(100)))
        );
        assert_eq!(
            policies
                .of("compute")
                .max_stream_duration()
                .unwrap()
                .max_stream_duration,
            Some(pb_duration(Duration::from_secs(5)))
        );
        let other = policies.of("other").retry_policy().unwrap();
        assert_eq!(other.retry_on, "unavailable");
        assert_eq!(
            other.retry_back_off.unwrap().base_interval,
            Some(pb_duration(BACKOFF))
        );
    }

    #[test]
    fn no_file_means_no_retry_and_no_timeout() {
        let policies = Policies::default();
        assert_eq!(policies.of("echo").retry_policy(), None);
        assert_eq!(policies.of("echo").max_stream_duration(), None);
        let none = Policies::parse("[topic.echo]\nretries = 0\n").unwrap();
        assert_eq!(none.of("echo").retry_policy(), None);
    }

    #[test]
    fn what_a_client_would_reject_is_refused_with_its_place() {
        for (text, says) in [
            (
                "[default]\nretry_on = [\"not-found\"]\nretries = 1\n",
                "[default]: retry_on: \"not-found\"",
            ),
            (
                "[topic.a]\nretry_on = [\"unavailable\"]\nretries = 5\n",
                "[topic.a]: retries: 5",
            ),
            (
                "[topic.a]\nretries = 1\n",
                "[topic.a]: retries: set retry_on",
            ),
            (
                "[default]\nbackoff = \"1ms\"\n",
                "[default]: backoff: 1ms is less than 5ms",
            ),
            (
                "[default]\nbackoff = \"1s\"\nmax_backoff = \"10ms\"\n",
                "max_backoff: 10ms is less",
            ),
            (
                "[default]\ntimeout = \"soon\"\n",
                "[default]: timeout: expected seconds",
            ),
            ("[default]\nretires = 2\n", "unknown field `retires`"),
        ] {
            let err = Policies::parse(text).unwrap_err();
            assert!(err.contains(says), "{text:?}: {err}");
        }
    }
}
