//! What a request says that admission reads: how much it matters
//! (`svckit-criticality`) and how long its caller still waits.

use std::time::Duration;

use crate::wire::{parse_grpc_timeout, CRITICALITY, GRPC_TIMEOUT};

/// How much a call matters (`svckit-criticality`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Criticality {
    /// Refused first: prefetches, retries of background work.
    Sheddable,
    /// What a call is unless it says otherwise.
    #[default]
    Default,
    /// Refused last: what a user waits on.
    Critical,
}

impl Criticality {
    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Criticality::Sheddable => "sheddable",
            Criticality::Default => "default",
            Criticality::Critical => "critical",
        }
    }

    /// From a header value; unknown values are `default`.
    pub fn parse(value: &[u8]) -> Self {
        match value {
            b"critical" => Criticality::Critical,
            b"sheddable" => Criticality::Sheddable,
            _ => Criticality::Default,
        }
    }

    /// The call's criticality, as its headers say.
    pub(crate) fn of(headers: &http::HeaderMap) -> Self {
        headers
            .get(CRITICALITY)
            .map_or(Criticality::Default, |v| Criticality::parse(v.as_bytes()))
    }

    /// The share of the bound on calls in flight this criticality may fill.
    pub(super) fn bound(self, limit: u64) -> u64 {
        match self {
            Criticality::Sheddable => (limit / 2).max(1),
            Criticality::Default => limit,
            Criticality::Critical => limit.saturating_mul(2),
        }
    }
}

/// What a request says that admission reads: its criticality and deadline.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Ask {
    pub(crate) criticality: Criticality,
    /// The time its caller still waits.
    pub(crate) deadline: Option<Duration>,
}

impl Ask {
    /// Read from a request's headers (`grpc-timeout` for the deadline).
    pub(crate) fn of(headers: &http::HeaderMap) -> Self {
        Ask {
            criticality: Criticality::of(headers),
            deadline: headers.get(GRPC_TIMEOUT).and_then(parse_grpc_timeout),
        }
    }
}
