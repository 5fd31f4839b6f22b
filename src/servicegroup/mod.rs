//! Membership: who serves which topic, and is it up.
//!
//! nova's servicegroup API rebuilt on leases. A node [`Driver::join`]s once it
//! can answer; the returned [`Membership`] keeps it registered (heartbeats,
//! re-registration after any failure) until [`Membership::leave`]. Anyone can
//! [`Driver::list`] or [`Driver::watch`] the members of a topic, and
//! operators change the admin state of a record.
//!
//! Two kinds of data per member (the etcd layout of docs/membership.md):
//! - the persistent **service record** ([`ServiceRecord`]), which outlives the
//!   node so that a dead node shows as `down` rather than vanishing;
//! - the **liveness** of the node (an etcd key bound to its lease, a
//!   heartbeat file, an in-memory flag). `up` = alive and not `forced_down`.
//!
//! Drivers: `etcd://` ([`etcd`]), `file://` ([`file`](mod@file)), `memory://`
//! ([`memory`]), chosen by [`connect`] from a registry URL. Each also elects
//! leaders ([`Driver::campaign`]) for the periodic tasks that run on one node
//! of a topic.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

use crate::error::Result;

pub mod etcd;
pub mod file;
pub mod memory;

mod backoff;
pub(crate) mod diff;
mod election;
pub(crate) mod feed;
mod follow;
pub(crate) mod lag;
mod probe;
mod record;
mod registration;
pub(crate) use registration::down_time;
mod status;
mod url;
mod view;

pub use self::backoff::DEFAULT_BACKOFF_MAX;
pub use self::diff::{valid_name, VALID_NAME};
pub use self::election::{Election, Leadership, LocalElections, LocalLeadership};
pub use self::registration::{Advert, Registration};
pub use self::url::{RegistryOptions, RegistryUrl, DEFAULT_REGISTRY_TIMEOUT};
pub use self::view::{format_age, EventView, MemberView};

/// The persistent record of one (topic, host): nova's `services` row. Its
/// identity and endpoints are the node's [`Advert`] (flattened in the
/// JSON); the rest is the launcher's and the operator's.
///
/// Stored as JSON; field names are part of the operator contract (docs/membership.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ServiceRecord {
    /// Topic, host, binary, version, endpoints and gRPC services: what the
    /// node advertised.
    #[serde(flatten)]
    pub advert: Advert,
    /// Worker processes serving the node's sockets.
    pub workers: u32,
    /// RFC 3339 time the record was first created.
    pub created_at: String,
    /// RFC 3339 time the node last (re-)registered or an operator changed it.
    pub updated_at: String,
    /// Admin state: disabled nodes stay up but get no new client calls.
    pub disabled: bool,
    /// Why an operator disabled the node, shown in `members list`.
    pub disabled_reason: Option<String>,
    /// Marks the node down whatever its heartbeats say (nova's forced_down).
    pub forced_down: bool,
}

/// The URLs a node serves on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Endpoints {
    /// gRPC endpoint, e.g. `http://10.0.0.5:7000`.
    pub grpc: Option<String>,
    /// HTTP API endpoint, if the node has one.
    pub http: Option<String>,
}

impl Endpoints {
    /// A node's gRPC and HTTP URLs.
    ///
    /// ```
    /// let endpoints = svckit::servicegroup::Endpoints::new(Some("http://10.0.0.5:7000".into()), None);
    /// assert!(endpoints.http.is_none());
    /// ```
    pub fn new(grpc: Option<String>, http: Option<String>) -> Self {
        Endpoints { grpc, http }
    }
}

/// A service record together with its liveness.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Member {
    /// The persistent record (flattened into the member's JSON), shared
    /// by every copy of the member: a client watching a 10,000-node topic
    /// holds each record once, whatever the layers that track it.
    #[serde(flatten)]
    pub record: Arc<ServiceRecord>,
    /// `true` = the liveness key is present and the record is not forced down.
    pub up: bool,
}

impl Member {
    /// `up` and not disabled: may receive new client calls.
    pub fn is_routable(&self) -> bool {
        self.up && !self.record.disabled
    }

    /// `"up"` or `"down"`, as the CLI prints it.
    pub fn state(&self) -> &'static str {
        if self.up {
            "up"
        } else {
            "down"
        }
    }
}

/// A membership change seen by a watcher.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", content = "member", rename_all = "lowercase")]
#[non_exhaustive]
pub enum Event {
    /// A member became up (or was first seen up).
    Join(Member),
    /// A member went down; its record stays.
    Leave(Member),
    /// Something else changed: admin state, endpoints, a down record appeared.
    Update(Member),
    /// The record is gone (`svckit service delete`): forget the member. The
    /// member is its last known state, marked down.
    Delete(Member),
}

impl Event {
    /// The member the event is about.
    pub fn member(&self) -> &Member {
        match self {
            Event::Join(m) | Event::Leave(m) | Event::Update(m) | Event::Delete(m) => m,
        }
    }

    /// `"join"`, `"leave"`, `"update"` or `"delete"`, as `svckit members
    /// watch` prints it.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Join(_) => "join",
            Event::Leave(_) => "leave",
            Event::Update(_) => "update",
            Event::Delete(_) => "delete",
        }
    }

    /// The event between two states of one (topic, host), or `None` when
    /// nothing a watcher cares about changed. `None` states mean "no record".
    pub fn between(old: Option<&Member>, new: Option<&Member>) -> Option<Event> {
        match (old, new) {
            (None, None) => None,
            (None, Some(n)) if n.up => Some(Event::Join(n.clone())),
            (None, Some(n)) => Some(Event::Update(n.clone())),
            (Some(o), None) => {
                let mut gone = o.clone();
                gone.up = false;
                Some(Event::Delete(gone))
            }
            (Some(o), Some(n)) if !o.up && n.up => Some(Event::Join(n.clone())),
            (Some(o), Some(n)) if o.up && !n.up => Some(Event::Leave(n.clone())),
            (Some(o), Some(n)) if o != n => Some(Event::Update(n.clone())),
            _ => None,
        }
    }
}

/// An operator's change to a record's admin state.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AdminChange {
    /// Stop routing new calls to the node; it stays up.
    Disable {
        /// Why, shown in `members list`.
        reason: Option<String>,
    },
    /// Route calls to the node again.
    Enable,
    /// Mark the node down whatever its heartbeats say (`true`), or clear that.
    ForceDown(bool),
}

impl AdminChange {
    /// Applies the change to a record.
    pub fn apply(&self, record: &mut ServiceRecord, now: SystemTime) {
        match self {
            AdminChange::Disable { reason } => {
                record.disabled = true;
                record.disabled_reason = reason.clone();
            }
            AdminChange::Enable => {
                record.disabled = false;
                record.disabled_reason = None;
            }
            AdminChange::ForceDown(on) => record.forced_down = *on,
        }
        record.updated_at = rfc3339(now);
    }
}

/// Where a membership stands, for reports and metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RegistrationState {
    /// Heartbeats succeed.
    Registered,
    /// The registry is unreachable or the lease was lost; retrying.
    Retrying,
    /// Left the group on purpose.
    Left,
}

/// A snapshot of a membership's health.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct MembershipStatus {
    /// Registered, retrying, or left.
    pub state: RegistrationState,
    /// RFC 3339 time of the last successful heartbeat, if any.
    pub last_heartbeat: Option<String>,
    /// Times the node had to register again (lease lost, key deleted, …).
    pub reregistrations: u64,
    /// Heartbeat or registration attempts that failed.
    pub failures: u64,
    /// Round trip of the last successful heartbeat (etcd: keep-alive sent
    /// to its answer; file: the write), if one was timed.
    pub heartbeat_latency: Option<Duration>,
}

/// A stream of membership events, oldest first.
pub type EventStream = BoxStream<'static, Result<Event>>;

/// The handle of a joined node. The driver keeps the node registered in the
/// background until [`Membership::leave`] (or drop, which leaves without
/// waiting).
pub trait Membership: Send + Sync {
    /// The current health of the registration.
    fn status(&self) -> MembershipStatus;
    /// Leaves the group: the node shows as down at once (liveness removed,
    /// lease revoked), its record stays. Bounded by [`LEAVE_TIMEOUT`]: when
    /// the registry does not answer in time, it fails with
    /// [`ErrorKind::Unavailable`](crate::ErrorKind::Unavailable), heartbeats have
    /// stopped all the same, and the node turns down by expiry.
    fn leave(&self) -> BoxFuture<'_, Result<()>>;
    /// Changes the record's `workers` (a supervisor that added or lost a
    /// worker), keeping the operator's admin state; re-registrations after
    /// it write the new count too.
    fn set_workers(&self, workers: u32) -> BoxFuture<'_, Result<()>>;

    /// A token of the session this membership holds, which a later join
    /// of the same node carries on ([`Registration::resume`]) without a
    /// leave; `None` where the driver has none (the next join starts
    /// afresh).
    fn session(&self) -> Option<String> {
        None
    }
}

/// A membership backend. Every driver passes the same behavioural tests.
pub trait Driver: Send + Sync {
    /// Registers a node and keeps it registered. Fails with
    /// [`ErrorKind::Duplicate`](crate::ErrorKind::Duplicate) when another live node
    /// holds the same (topic, host), and with
    /// [`ErrorKind::Unavailable`](crate::ErrorKind::Unavailable) when the registry
    /// cannot be reached.
    fn join(&self, registration: Registration) -> BoxFuture<'_, Result<Box<dyn Membership>>>;

    /// One member, if its record exists.
    fn get<'a>(&'a self, topic: &'a str, host: &'a str) -> BoxFuture<'a, Result<Option<Member>>>;

    /// All members, or those of one topic, ordered by (topic, host).
    fn list<'a>(&'a self, topic: Option<&'a str>) -> BoxFuture<'a, Result<Vec<Member>>>;

    /// The current members as `Join`/`Update` events, then every change as it
    /// happens. The stream never ends by itself: connection losses are
    /// retried and the differences emitted on resync.
    fn watch<'a>(&'a self, topic: Option<&'a str>) -> BoxFuture<'a, Result<EventStream>>;

    /// Changes a record's admin state; returns the updated member.
    fn set_admin<'a>(
        &'a self,
        topic: &'a str,
        host: &'a str,
        change: AdminChange,
    ) -> BoxFuture<'a, Result<Member>>;

    /// Deletes a record (and liveness); `false` when there was none.
    fn delete<'a>(&'a self, topic: &'a str, host: &'a str) -> BoxFuture<'a, Result<bool>>;

    /// The cap on retry delays this registry was opened with
    /// (`registry_backoff_max`), for loops built on it, such as a client's
    /// discovery restarting a watch.
    fn backoff_max(&self) -> std::time::Duration {
        DEFAULT_BACKOFF_MAX
    }

    /// Campaigns in `election` until the returned [`Leadership`] is dropped
    /// or resigns (for periodic tasks of `topic` scope). The default holds
    /// no elections: a registry that spans more than one candidate says
    /// how it elects one ([`LocalElections`] elects within a process).
    fn campaign(&self, election: Election) -> BoxFuture<'_, Result<Arc<dyn Leadership>>> {
        Box::pin(async move {
            Err(crate::Error::registry_msg(format_args!(
                "this registry holds no elections; the task {:?} of topic {:?} needs one",
                election.name, election.topic
            )))
        })
    }
}

/// The bound on [`Membership::leave`]: a node that stops must not wait on
/// an unreachable registry before it turns NOT_SERVING and drains. Past it,
/// the leave fails and the node shows down once its lease expires (or its
/// heartbeat goes stale).
pub const LEAVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// A shared driver.
pub type Registry = Arc<dyn Driver>;

/// The process's one connection to its registry: opened on first use (or
/// at once, where a start must fail early when the registry is down), then
/// shared by everything in the process that needs one: advertising, the
/// dashboard, elections, reports. Cheap to clone.
#[derive(Clone)]
pub struct RegistryHandle {
    url: RegistryUrl,
    options: RegistryOptions,
    registry: Arc<tokio::sync::OnceCell<Registry>>,
}

impl RegistryHandle {
    /// A handle on the registry at `url`, not connected yet.
    pub fn new(url: RegistryUrl, options: RegistryOptions) -> Self {
        RegistryHandle {
            url,
            options,
            registry: Arc::new(tokio::sync::OnceCell::new()),
        }
    }

    /// The registry, connected on the first call; a failed connection is
    /// tried again by the next call.
    pub async fn get(&self) -> Result<Registry> {
        self.registry
            .get_or_try_init(|| connect(&self.url, &self.options))
            .await
            .cloned()
    }

    /// The registry if it is connected already.
    pub fn connected(&self) -> Option<Registry> {
        self.registry.get().cloned()
    }

    /// The registry's URL.
    pub fn url(&self) -> &RegistryUrl {
        &self.url
    }
}

impl fmt::Debug for RegistryHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryHandle")
            .field("url", &self.url.to_string())
            .field("connected", &self.registry.initialized())
            .finish()
    }
}

/// Opens the driver a registry URL names.
pub async fn connect(url: &RegistryUrl, options: &RegistryOptions) -> Result<Registry> {
    Ok(match url {
        RegistryUrl::Etcd { .. } => Arc::new(etcd::EtcdDriver::connect(url, options).await?),
        RegistryUrl::File { path } => Arc::new(file::FileDriver::open(path, options)?),
        RegistryUrl::Memory { name } => {
            Arc::new(memory::MemoryDriver::named(name).with_figures(options.figures.clone()))
        }
    })
}

/// Deletes a member's record and liveness, as `svckit service delete` does,
/// and returns the member as it was (`None`: there was no record).
///
/// A member that is up is refused with [`ErrorKind::MemberUp`] unless `force`:
/// its node would write the record again within about two seconds (it
/// repairs a deleted record), so deleting it only makes sense for a node
/// about to stop, and then `force` says so.
///
/// [`ErrorKind::MemberUp`]: crate::ErrorKind::MemberUp
pub async fn delete_member(
    registry: &dyn Driver,
    topic: &str,
    host: &str,
    force: bool,
) -> Result<Option<Member>> {
    let Some(member) = registry.get(topic, host).await? else {
        return Ok(None);
    };
    if member.up && !force {
        return Err(crate::Error::member_up(topic, host));
    }
    Ok(registry.delete(topic, host).await?.then_some(member))
}

/// Formats a time as RFC 3339 with millisecond precision, UTC.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{} ({})",
            self.record.advert.topic,
            self.record.advert.host,
            self.state()
        )
    }
}
