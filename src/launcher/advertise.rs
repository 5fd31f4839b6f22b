//! [`Advertiser`]: the one owner of a node's place in the service group
//! while it serves, for both launchers.
//!
//! It joins (at once in a single process, where a failure fails the start;
//! with a retry every second in a supervisor, which must keep serving),
//! keeps the record's `workers` equal to the workers that serve, writes the
//! ready file once the node is advertised, and leaves within the service
//! group's one bound ([`LEAVE_TIMEOUT`]) at stop. In a worker it hands the
//! advert to the supervisor instead, which advertises the node once for all
//! its workers.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::process::worker::Ready;
use crate::config::Config;
use crate::error::{Error, ErrorKind, Result};
use crate::service::Advertised;
use crate::servicegroup::{Advert, Endpoints, Membership, MembershipStatus, RegistryHandle};

#[cfg(doc)]
use crate::servicegroup::LEAVE_TIMEOUT;

/// Pause before a supervisor tries to register again after a failure.
const REJOIN_PAUSE: Duration = Duration::from_secs(1);

/// Where adverts go.
enum Channel {
    /// To the service group, by this process.
    Registry,
    /// To the supervisor of this worker, once every service started.
    Supervisor {
        ready: Option<Ready>,
        advert: Option<Box<Advert>>,
    },
}

/// A node registered by this process.
struct Joined {
    advert: Advert,
    /// The count the record holds.
    workers: u32,
    membership: Arc<dyn Membership>,
}

/// Advertises the services of one process (see the module docs).
pub(crate) struct Advertiser {
    registry: RegistryHandle,
    report_interval: Duration,
    service_down_time: Duration,
    ready_file: Option<PathBuf>,
    channel: Channel,
    joined: Vec<Joined>,
    /// When a supervisor tries again after a failed join or update.
    retry_at: Option<Instant>,
    /// The session the next join carries on.
    resume: Option<String>,
}

impl Advertiser {
    /// Advertises in the service group of `config`, through `registry`.
    pub(crate) fn new(registry: RegistryHandle, config: &Config) -> Self {
        Advertiser {
            registry,
            report_interval: config.report_interval,
            service_down_time: config.service_down_time,
            ready_file: config.ready_file.clone(),
            channel: Channel::Registry,
            joined: Vec::new(),
            retry_at: None,
            resume: None,
        }
    }

    /// Hands the advert to a supervisor through `ready` instead.
    pub(crate) fn for_supervisor(registry: RegistryHandle, config: &Config, ready: Ready) -> Self {
        Advertiser {
            channel: Channel::Supervisor {
                ready: Some(ready),
                advert: None,
            },
            ..Advertiser::new(registry, config)
        }
    }

    /// Advertises one started service at once: a single process joins
    /// (failing the start if it cannot), a worker keeps the advert for its
    /// supervisor.
    pub(crate) async fn advertise(&mut self, advert: Option<Advert>) -> Result<Advertised> {
        let Some(advert) = advert else {
            return Ok(Advertised::default());
        };
        match &mut self.channel {
            Channel::Supervisor { advert: kept, .. } => {
                kept.get_or_insert(Box::new(advert));
                Ok(Advertised::by_supervisor())
            }
            Channel::Registry => {
                let membership = self.join(&advert, 1).await?;
                Ok(Advertised::member(membership))
            }
        }
    }

    /// Every service started: a worker tells its supervisor now.
    pub(crate) fn all_started(&mut self) {
        if let Channel::Supervisor { ready, advert } = &mut self.channel {
            if let Some(ready) = ready.take() {
                ready.send(advert.as_deref());
            }
        }
    }

    /// A supervisor's advertising, called on every turn of its loop:
    /// registered while `serving` workers serve `advert`, with that count
    /// in the record, and not registered while none does. Failures are
    /// retried after a pause; only a duplicate identity is an error.
    pub(crate) async fn tend(&mut self, advert: Option<&Advert>, serving: u32) -> Result<()> {
        if self.retry_at.is_some_and(|at| at > Instant::now()) {
            return Ok(());
        }
        self.retry_at = None;
        let advert = advert.filter(|_| serving > 0);
        match (advert, self.joined.first_mut()) {
            (None, Some(_)) => {
                tracing::warn!("no worker serves; the node leaves the group until one does");
                self.leave().await;
            }
            (Some(advert), None) => match self.join(advert, serving).await {
                Ok(_) => tracing::info!(workers = serving, "node registered"),
                Err(e) if e.kind() == ErrorKind::Duplicate => return Err(e),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot register the node; retrying");
                    self.retry_at = Some(Instant::now() + REJOIN_PAUSE);
                }
            },
            (Some(advert), Some(joined)) if joined.advert != *advert => {
                // A reload brought workers of another version or endpoint.
                tracing::info!(version = %advert.version, "the workers advertise anew");
                self.leave().await;
                self.retry_at = None;
                Box::pin(self.tend(Some(advert), serving)).await?;
            }
            (Some(_), Some(joined)) if joined.workers != serving => {
                match joined.membership.set_workers(serving).await {
                    Ok(()) => {
                        tracing::info!(
                            from = joined.workers,
                            to = serving,
                            "record's workers updated"
                        );
                        joined.workers = serving;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot update the record's workers; retrying");
                        self.retry_at = Some(Instant::now() + REJOIN_PAUSE);
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// When a supervisor's loop must call [`tend`](Self::tend) again by
    /// itself.
    pub(crate) fn next_wake(&self) -> Option<Instant> {
        self.retry_at
    }

    /// What an upgraded image of this process needs to carry the
    /// registration on: its session ([`Membership::session`]).
    pub(crate) fn handover(&self) -> Option<String> {
        self.joined.first().and_then(|j| j.membership.session())
    }

    /// The first join carries on `session` (handed down by the image of
    /// this process before an upgrade in place) instead of starting one.
    pub(crate) fn resume(mut self, session: Option<String>) -> Self {
        self.resume = session;
        self
    }

    pub(crate) fn status(&self) -> Option<MembershipStatus> {
        self.joined.first().map(|j| j.membership.status())
    }

    async fn join(&mut self, advert: &Advert, workers: u32) -> Result<Arc<dyn Membership>> {
        let registry = self.registry.get().await?;
        let mut registration =
            advert.registration(workers, self.report_interval, self.service_down_time);
        registration.resume = self.resume.take();
        let membership: Arc<dyn Membership> = registry.join(registration).await?.into();
        self.joined.push(Joined {
            advert: advert.clone(),
            workers,
            membership: membership.clone(),
        });
        if let Some(path) = &self.ready_file {
            write_ready_file(path, &advert.endpoints)?;
        }
        tracing::info!(
            topic = %advert.topic,
            host = %advert.host,
            registry = %self.registry.url(),
            workers,
            "node advertised"
        );
        Ok(membership)
    }

    /// Leaves the service group: the first step of every stop. Each leave
    /// is bounded by the service group's [`LEAVE_TIMEOUT`]; one that fails
    /// is logged, and the node shows down once its lease expires.
    pub(crate) async fn leave(&mut self) {
        let joined = std::mem::take(&mut self.joined);
        if joined.is_empty() {
            return;
        }
        let leaves = joined.iter().map(|j| j.membership.leave());
        for result in futures::future::join_all(leaves).await {
            if let Err(e) = result {
                tracing::warn!(error = %e, "leaving the service group failed; the lease will expire");
            }
        }
        if let Some(path) = &self.ready_file {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Writes the advertised endpoints as JSON, atomically: a reader sees the
/// whole file or none.
fn write_ready_file(path: &std::path::Path, endpoints: &Endpoints) -> Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    let mut file = tempfile::NamedTempFile::new_in(dir.unwrap_or(std::path::Path::new(".")))?;
    let value = serde_json::json!({
        "grpc": endpoints.grpc,
        "http": endpoints.http,
        "pid": std::process::id(),
    });
    serde_json::to_writer(&mut file, &value).map_err(std::io::Error::from)?;
    file.persist(path).map_err(|e| Error::from(e.error))?;
    Ok(())
}
