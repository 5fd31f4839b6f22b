//! The health a background registration loop reports through
//! [`Membership::status`](super::Membership::status), and its log lines:
//! each transition is logged once, not every failed retry.

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use super::{rfc3339, MembershipStatus, RegistrationState};

#[derive(Debug)]
pub(crate) struct StatusCell {
    /// `topic/host`, for log lines.
    name: String,
    inner: Mutex<MembershipStatus>,
}

impl StatusCell {
    pub(crate) fn registered(name: String) -> Self {
        Self {
            name,
            inner: Mutex::new(MembershipStatus {
                state: RegistrationState::Registered,
                last_heartbeat: Some(rfc3339(SystemTime::now())),
                reregistrations: 0,
                failures: 0,
                heartbeat_latency: None,
            }),
        }
    }

    /// `topic/host`.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    fn with<T>(&self, f: impl FnOnce(&mut MembershipStatus) -> T) -> T {
        f(&mut crate::sync::lock(&self.inner))
    }

    pub(crate) fn snapshot(&self) -> MembershipStatus {
        self.with(|s| s.clone())
    }

    /// A heartbeat went through, in `latency` when it was timed.
    pub(crate) fn beat(&self, latency: Option<Duration>) {
        self.with(|s| {
            if latency.is_some() {
                s.heartbeat_latency = latency;
            }
            if s.state == RegistrationState::Retrying {
                tracing::info!(member = %self.name, "heartbeats succeed again");
            }
            if s.state != RegistrationState::Left {
                s.state = RegistrationState::Registered;
            }
            s.last_heartbeat = Some(rfc3339(SystemTime::now()));
        });
    }

    /// The node registered again after losing its registration.
    pub(crate) fn reregistered(&self) {
        self.with(|s| {
            s.reregistrations += 1;
            if s.state != RegistrationState::Left {
                s.state = RegistrationState::Registered;
            }
            s.last_heartbeat = Some(rfc3339(SystemTime::now()));
            tracing::info!(
                member = %self.name,
                reregistrations = s.reregistrations,
                "registered again"
            );
        });
    }

    /// A heartbeat or registration attempt failed; retrying.
    pub(crate) fn failed(&self, why: &dyn std::fmt::Display) {
        self.with(|s| {
            s.failures += 1;
            if s.state == RegistrationState::Registered {
                tracing::warn!(
                    member = %self.name,
                    error = %why,
                    "registration lost; retrying until the registry answers"
                );
                s.state = RegistrationState::Retrying;
            } else {
                tracing::debug!(member = %self.name, error = %why, "retry failed");
            }
        });
    }

    pub(crate) fn left(&self) {
        self.with(|s| s.state = RegistrationState::Left);
    }
}
