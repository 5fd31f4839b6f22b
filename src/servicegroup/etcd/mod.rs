//! The `etcd://` driver: membership on etcd leases.
//!
//! A node's record is a plain key; its liveness is a key bound to a lease
//! with TTL = service_down_time, one lease per process shared by all its
//! registrations and elections (the `lease` module), kept alive every
//! report_interval or 0.4 × TTL. The `session` module repairs keys changed
//! by hand and takes over from a dead holder. Watchers follow both prefixes, resume a broken
//! stream from the last revision seen and reload after a compaction (the
//! `watcher` module). etcd-client leaves keep-alive, watch resumption and
//! failover to its caller, so this module owns all three: every request is
//! bounded by [`RegistryOptions::timeout`], and background loops retry with
//! capped backoff forever.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, GetResponse, Identity,
    KvClient, TlsOptions, Txn, TxnOp, TxnOpResponse, TxnResponse,
};
use futures::future::BoxFuture;
use futures::FutureExt;

use self::credentials::{is_refused_login, Credentials};
use self::keys::{Kind, Layout, Snapshot};
use super::diff::check_identity;
use super::{
    AdminChange, Driver, Election, EventStream, Leadership, Member, Membership, Registration,
    RegistryOptions, RegistryUrl,
};
use crate::error::{Error, Result};

mod channel;
mod credentials;
mod election;
mod keys;
mod lease;
mod listing;
mod session;
mod watcher;

/// Responses as large as listing ~100k members; tonic's 4 MiB default is
/// about 10k records.
const MAX_RESPONSE: usize = 256 << 20;

/// Pause before trying a request again on another cluster member.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// With several members, one try of a request gets this share of the
/// timeout: a write proposed while the cluster elects a new leader can be
/// dropped by raft without an answer, and etcd itself answers only after
/// its own request timeout (about 6 s). Sent again, it goes through the new
/// leader; waited for, it outlives the lease it was meant to keep.
const ATTEMPTS_PER_TIMEOUT: u32 = 4;

/// The shortest try, so that a slow but healthy answer is not cut off.
const MIN_ATTEMPT: Duration = Duration::from_millis(250);

/// Read-modify-write attempts before a conflicting writer wins.
const CAS_ATTEMPTS: usize = 16;

/// A service group on an etcd cluster.
#[derive(Clone)]
pub struct EtcdDriver {
    inner: Arc<Inner>,
}

/// What sessions and watchers share with the driver.
struct Inner {
    client: Client,
    kv: KvClient,
    layout: Layout,
    timeout: Duration,
    endpoints: String,
    /// Whether another member may answer a request one member refused.
    several: bool,
    /// The cap on retry delays of sessions and watchers.
    backoff_max: Duration,
    /// To log in again with a rotated password.
    credentials: Option<Credentials>,
    /// The one lease per TTL that this process's keys share.
    leases: lease::Leases,
    /// How stale the watches are.
    figures: super::lag::MembershipFigures,
}

impl EtcdDriver {
    /// Connects to the cluster `url` names and checks that it answers, within
    /// `options.timeout`; otherwise [`ErrorKind::Unavailable`](crate::ErrorKind::Unavailable).
    pub async fn connect(url: &RegistryUrl, options: &RegistryOptions) -> Result<Self> {
        let RegistryUrl::Etcd {
            endpoints,
            prefix,
            tls,
        } = url
        else {
            return Err(Error::usage(format!(
                "{url} is not an etcd:// registry URL"
            )));
        };
        let mut connect = ConnectOptions::new()
            .with_connect_timeout(options.timeout)
            // etcd refuses pings more often than every 5 s; these find a dead
            // connection under a stream that would otherwise just go quiet.
            .with_keep_alive(Duration::from_secs(10), options.timeout)
            // `hasleader=true` on every request: a member cut off from its
            // quorum fails requests and ends watch streams at once, instead
            // of serving a stale view or a silent stream.
            .with_require_leader(true);
        match (tls, tls_options(options)?) {
            (true, Some(tls)) => connect = connect.with_tls(tls),
            (false, None) => {}
            (true, None) => {
                return Err(Error::config(format!(
                    "registry {url} is etcd over TLS: set registry_ca_file to the CA that signed etcd's certificate"
                )))
            }
            (false, Some(_)) => {
                return Err(Error::config(format!(
                    "registry_ca_file, registry_cert_file and registry_key_file are for etcd over TLS; write the registry URL as https://{}",
                    endpoints.join(",")
                )))
            }
        }
        let credentials = Credentials::of(options)?;
        if let Some(credentials) = &credentials {
            connect = connect
                .with_user(credentials.user.clone(), credentials.password()?)
                .with_auto_token_refresh(true);
        }
        let names = endpoints.join(",");
        let what = format!("cannot reach etcd at {names} within {:?}", options.timeout);
        let client = tokio::time::timeout(
            options.timeout,
            Client::connect_with_balanced_channel(endpoints, Some(connect), channel::Tuned),
        )
        .await
        .map_err(|elapsed| Error::unavailable(what.clone(), elapsed))?
        .map_err(|e| match &credentials {
            Some(c) if is_refused_login(&e) => c.refused(&names, e),
            _ => Error::unavailable(what.clone(), e),
        })?;
        let inner = Inner {
            kv: client.kv_client().max_decoding_message_size(MAX_RESPONSE),
            client,
            layout: Layout::new(prefix),
            timeout: options.timeout,
            endpoints: names.clone(),
            several: endpoints.len() > 1,
            backoff_max: options.backoff_max,
            credentials,
            leases: lease::Leases::default(),
            figures: options.figures.clone().unwrap_or_default(),
        };
        // The client connects lazily; a first read proves the cluster answers
        // and that our credentials may read the prefix.
        let probe = GetOptions::new().with_prefix().with_count_only();
        inner
            .get(&inner.layout.root(), Some(probe))
            .await
            .map_err(|e| match e.kind() {
                // Named after the cluster, not the request.
                crate::ErrorKind::Unavailable => match e.into_source() {
                    Some(source) => Error::unavailable(what, source),
                    None => Error::unavailable_msg(what),
                },
                _ => e,
            })?;
        Ok(Self {
            inner: Arc::new(inner),
        })
    }
}

impl EtcdDriver {
    /// A driver on this one's connection that holds leases of its own, as
    /// another process would. Within one driver every registration and
    /// election shares a lease; a simulator of many nodes in one process
    /// (`scripts/bench-fleet`) gives each node its own.
    pub fn as_another_process(&self) -> EtcdDriver {
        let inner = &self.inner;
        EtcdDriver {
            inner: Arc::new(Inner {
                client: inner.client.clone(),
                kv: inner.kv.clone(),
                layout: inner.layout.clone(),
                timeout: inner.timeout,
                endpoints: inner.endpoints.clone(),
                several: inner.several,
                backoff_max: inner.backoff_max,
                credentials: inner.credentials.clone(),
                leases: lease::Leases::default(),
                figures: inner.figures.clone(),
            }),
        }
    }
}

fn tls_options(options: &RegistryOptions) -> Result<Option<TlsOptions>> {
    let read = |path: &std::path::Path| {
        std::fs::read(path)
            .map_err(|e| Error::config(format!("cannot read {}: {e}", path.display())))
    };
    let mut tls = None;
    if let Some(ca) = &options.ca_file {
        tls = Some(TlsOptions::new().ca_certificate(Certificate::from_pem(read(ca)?)));
    }
    match (&options.cert_file, &options.key_file) {
        (Some(cert), Some(key)) => {
            let identity = Identity::from_pem(read(cert)?, read(key)?);
            tls = Some(tls.unwrap_or_default().identity(identity));
        }
        (None, None) => {}
        _ => {
            return Err(Error::config(
                "etcd client TLS needs both a certificate and a key file",
            ))
        }
    }
    Ok(tls)
}

/// Whether an etcd failure means "no answer" (retry later, maybe on another
/// member) rather than an answer that refuses.
fn is_unavailable(e: &etcd_client::Error) -> bool {
    use etcd_client::Error as E;
    match e {
        E::TransportError(_) | E::IoError(_) => true,
        // hyper reports a connection closed under a request as Cancelled:
        // a member that went away, or a TLS member that refused this
        // client's certificate after the handshake.
        // ResourceExhausted: etcd's "too many requests", or a connection
        // the HTTP/2 layer closed after too many cancelled requests
        // (ENHANCE_YOUR_CALM) in a storm; both pass.
        E::GRpcStatus(s) => matches!(
            s.code(),
            tonic::Code::Unavailable
                | tonic::Code::DeadlineExceeded
                | tonic::Code::Unknown
                | tonic::Code::Cancelled
                | tonic::Code::ResourceExhausted
        ),
        _ => false,
    }
}

/// The gRPC status code etcd answered with, if `error` carries one: how
/// callers tell "lease not found" from other refusals without reading text.
pub(super) fn etcd_code(error: &Error) -> Option<tonic::Code> {
    let source = std::error::Error::source(error)?;
    match source.downcast_ref::<etcd_client::Error>()? {
        etcd_client::Error::GRpcStatus(s) => Some(s.code()),
        _ => None,
    }
}

impl Inner {
    /// Runs one request, bounded by the timeout. A cluster member that
    /// cannot be reached fails a request at once while the client keeps it
    /// in rotation, so with several members such failures are retried (on
    /// the next member) until the deadline, and so is a try that got no
    /// answer within its share of the timeout; with one member, they are
    /// final. Every request here is safe to repeat: writes are guarded by
    /// revisions, and a leaked lease expires.
    async fn call<T, F, Fut>(&self, request: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        self.call_with(request, true).await
    }

    /// [`Inner::call`]; `split` false gives each try the whole timeout: a
    /// large read cut short would only start over.
    async fn call_with<T, F, Fut>(&self, mut request: F, split: bool) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut logged_in_again = false;
        loop {
            let attempt = if self.several && split {
                let share = (self.timeout / ATTEMPTS_PER_TIMEOUT).max(MIN_ATTEMPT);
                (tokio::time::Instant::now() + share).min(deadline)
            } else {
                deadline
            };
            let error = match tokio::time::timeout_at(attempt, request()).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(e)) => e,
                // Lost, maybe, in a leader change: again, while time is left.
                Err(_) if attempt < deadline => continue,
                Err(elapsed) => {
                    return Err(Error::unavailable(
                        format!(
                            "etcd at {} did not answer within {:?}",
                            self.endpoints, self.timeout
                        ),
                        elapsed,
                    ))
                }
            };
            let what = format!("etcd at {}", self.endpoints);
            if is_refused_login(&error) && !logged_in_again && self.log_in_again().await {
                logged_in_again = true;
                continue;
            }
            if !is_unavailable(&error) {
                return Err(Error::registry(what, error));
            }
            let retry_at = tokio::time::Instant::now() + RETRY_PAUSE;
            if !(self.several && retry_at < deadline) {
                return Err(Error::unavailable(what, error));
            }
            tokio::time::sleep_until(retry_at).await;
        }
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse> {
        self.call(|| {
            let (mut kv, txn) = (self.kv.clone(), txn.clone());
            async move { kv.txn(txn).await }
        })
        .await
    }

    async fn get(&self, key: &str, options: Option<GetOptions>) -> Result<GetResponse> {
        self.call(|| {
            let (mut kv, options) = (self.kv.clone(), options.clone());
            let key = key.to_string();
            async move { kv.get(key, options).await }
        })
        .await
    }

    async fn revoke(&self, lease: i64) -> Result<()> {
        let leases = self.client.lease_client();
        self.call(|| {
            let mut leases = leases.clone();
            async move { leases.revoke(lease).await }
        })
        .await
        .map(drop)
    }

    /// One member from its two keys, read together.
    async fn member(&self, topic: &str, host: &str) -> Result<Option<Member>> {
        let layout = &self.layout;
        let resp = self
            .txn(Txn::new().and_then([
                TxnOp::get(layout.key(Kind::Record, topic, host), None),
                TxnOp::get(layout.key(Kind::Alive, topic, host), None),
            ]))
            .await?;
        match &resp.op_responses()[..] {
            [TxnOpResponse::Get(records), TxnOpResponse::Get(alive)] => {
                let snapshot = Snapshot::from_ranges(layout, 0, records.kvs(), alive.kvs());
                Ok(snapshot.member(&(topic.to_string(), host.to_string())))
            }
            _ => Err(Error::registry_msg("unexpected etcd transaction response")),
        }
    }

    /// Changes one record with `change`, guarded against concurrent
    /// writers; returns the member as it now is.
    async fn update_record(
        &self,
        topic: &str,
        host: &str,
        change: &(dyn Fn(&mut crate::servicegroup::ServiceRecord) + Sync),
    ) -> Result<Member> {
        let record_key = self.layout.key(Kind::Record, topic, host);
        let alive_key = self.layout.key(Kind::Alive, topic, host);
        for _ in 0..CAS_ATTEMPTS {
            let found = self.get(&record_key, None).await?;
            let Some(current) = found.kvs().first() else {
                return Err(Error::not_found(topic, host));
            };
            let mut record =
                crate::servicegroup::ServiceRecord::decode(current.value(), topic, host)?;
            change(&mut record);
            record.updated_at = crate::servicegroup::rfc3339(SystemTime::now());
            let value = encode(&record)?;
            // Guarded by the revision read above, so a concurrent change (an
            // operator, a re-registering node) is never overwritten.
            let resp = self
                .txn(
                    Txn::new()
                        .when([Compare::mod_revision(
                            record_key.as_str(),
                            CompareOp::Equal,
                            current.mod_revision(),
                        )])
                        .and_then([
                            TxnOp::put(record_key.as_str(), value, None),
                            TxnOp::get(alive_key.as_str(), None),
                        ]),
                )
                .await?;
            if !resp.succeeded() {
                continue;
            }
            let alive = match resp.op_responses().get(1) {
                Some(TxnOpResponse::Get(alive)) => !alive.kvs().is_empty(),
                _ => false,
            };
            let up = alive && !record.forced_down;
            return Ok(Member {
                record: Arc::new(record),
                up,
            });
        }
        Err(Error::registry_msg(format!(
            "{topic}/{host} kept changing concurrently; admin change not applied"
        )))
    }

    async fn delete(&self, topic: &str, host: &str) -> Result<bool> {
        let resp = self
            .txn(Txn::new().and_then([
                TxnOp::delete(self.layout.key(Kind::Record, topic, host), None),
                TxnOp::delete(self.layout.key(Kind::Alive, topic, host), None),
            ]))
            .await?;
        Ok(matches!(resp.op_responses().first(), Some(TxnOpResponse::Delete(d)) if d.deleted() > 0))
    }
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| Error::registry("cannot encode JSON", e))
}

impl Driver for EtcdDriver {
    fn campaign(&self, election: Election) -> BoxFuture<'_, Result<Arc<dyn Leadership>>> {
        let inner = self.inner.clone();
        async move { election::campaign(inner, election) }.boxed()
    }

    fn join(&self, registration: Registration) -> BoxFuture<'_, Result<Box<dyn Membership>>> {
        async move {
            check_identity(&registration.advert.topic, &registration.advert.host)?;
            // A resumed session's lease is kept alive again, not replaced:
            // the node's keys stay, and watchers see no leave.
            if let Some(resume) = &registration.resume {
                match lease::parse_handover(resume) {
                    Some((ttl, lease)) => self.inner.leases.inherit(ttl, lease),
                    None => tracing::warn!(resume, "not an etcd lease session; joining afresh"),
                }
            }
            let membership = session::join(self.inner.clone(), registration).await?;
            Ok(Box::new(membership) as Box<dyn Membership>)
        }
        .boxed()
    }

    fn get<'a>(&'a self, topic: &'a str, host: &'a str) -> BoxFuture<'a, Result<Option<Member>>> {
        self.inner.member(topic, host).boxed()
    }

    fn list<'a>(&'a self, topic: Option<&'a str>) -> BoxFuture<'a, Result<Vec<Member>>> {
        async move { Ok(self.inner.snapshot(topic).await?.members()) }.boxed()
    }

    fn watch<'a>(&'a self, topic: Option<&'a str>) -> BoxFuture<'a, Result<EventStream>> {
        watcher::watch(self.inner.clone(), topic.map(str::to_string)).boxed()
    }

    fn set_admin<'a>(
        &'a self,
        topic: &'a str,
        host: &'a str,
        change: AdminChange,
    ) -> BoxFuture<'a, Result<Member>> {
        async move {
            let now = SystemTime::now();
            let apply = |record: &mut crate::servicegroup::ServiceRecord| change.apply(record, now);
            self.inner.update_record(topic, host, &apply).await
        }
        .boxed()
    }

    fn delete<'a>(&'a self, topic: &'a str, host: &'a str) -> BoxFuture<'a, Result<bool>> {
        self.inner.delete(topic, host).boxed()
    }

    fn backoff_max(&self) -> Duration {
        self.inner.backoff_max
    }
}
