//! What a node tells the service group: the [`Advert`] a serving node
//! hands its launcher, and the [`Registration`] the launcher joins with.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::{rfc3339, Endpoints, ServiceRecord};

/// Who a node is and where it is reached: what a serving node asks its
/// launcher to advertise. The [`Registration`] the launcher joins with adds
/// the worker count and the heartbeat options; the [`ServiceRecord`] the
/// group keeps adds the admin state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Advert {
    /// The topic served; with `host`, the member's identity.
    pub topic: String,
    /// The node's host name (not necessarily a DNS name: an identity).
    pub host: String,
    /// The binary the node runs (nova's `binary`, e.g. `echo_node`).
    pub binary: String,
    /// The node's software version.
    pub version: String,
    /// Where clients reach the node (the bound addresses); also where a node
    /// restarting with this identity asks whether this one is alive.
    pub endpoints: Endpoints,
    /// Fully qualified gRPC service names served
    /// (`svckit.examples.echo.v1.Echo`); clients filter on them.
    pub services: Vec<String>,
}

impl Advert {
    /// An advert of `topic`/`host` at `endpoints`, serving `services`.
    pub fn new(
        topic: impl Into<String>,
        host: impl Into<String>,
        binary: impl Into<String>,
        version: impl Into<String>,
        endpoints: Endpoints,
        services: Vec<String>,
    ) -> Self {
        Advert {
            topic: topic.into(),
            host: host.into(),
            binary: binary.into(),
            version: version.into(),
            endpoints,
            services,
        }
    }

    /// The registration of this advert behind `workers` processes, with
    /// the heartbeat interval and down time given.
    pub fn registration(
        &self,
        workers: u32,
        report_interval: Duration,
        service_down_time: Duration,
    ) -> Registration {
        Registration {
            advert: self.clone(),
            workers,
            report_interval,
            service_down_time,
            resume: None,
        }
    }
}

/// What a node tells the service group when it joins.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Registration {
    /// Who the node is and where it is reached.
    pub advert: Advert,
    /// Worker processes behind the endpoints.
    pub workers: u32,
    /// How often the node proves it is alive.
    pub report_interval: Duration,
    /// How long after the last heartbeat the node counts as down (the lease
    /// TTL on etcd). Raised to `2 × report_interval` when smaller.
    pub service_down_time: Duration,
    /// A session to carry on instead of starting one
    /// ([`Membership::session`](super::Membership::session) of a
    /// membership of the same node): on etcd its lease, so that the
    /// node's keys stay and watchers see no leave. A token the driver does
    /// not recognise, or a session gone, starts a new one.
    pub resume: Option<String>,
}

/// `service_down_time`, raised to twice the heartbeat interval when it is
/// smaller: one lost heartbeat must never make a live holder (a node, a
/// leader) look gone.
pub(crate) fn down_time(service_down_time: Duration, report_interval: Duration) -> Duration {
    service_down_time.max(report_interval * 2)
}

impl Registration {
    /// `service_down_time`, raised to twice the heartbeat interval when it is
    /// smaller (a warning is logged): one lost heartbeat must never make a
    /// live node look dead.
    pub fn effective_down_time(&self) -> Duration {
        let down_time = down_time(self.service_down_time, self.report_interval);
        if down_time != self.service_down_time {
            tracing::warn!(
                service_down_time = ?self.service_down_time,
                report_interval = ?self.report_interval,
                raised_to = ?down_time,
                "service_down_time is less than 2 x report_interval; raising it"
            );
        }
        down_time
    }

    /// A fresh record for this registration (admin state cleared).
    pub fn to_record(&self, now: SystemTime) -> ServiceRecord {
        let now = rfc3339(now);
        ServiceRecord {
            advert: self.advert.clone(),
            workers: self.workers,
            created_at: now.clone(),
            updated_at: now,
            disabled: false,
            disabled_reason: None,
            forced_down: false,
        }
    }

    /// Updates `record` for a re-registration: new endpoints and services,
    /// but the operator's admin state and `created_at` are kept.
    pub fn refresh_record(&self, record: &mut ServiceRecord, now: SystemTime) {
        record.advert.clone_from(&self.advert);
        record.workers = self.workers;
        record.updated_at = rfc3339(now);
    }
}
