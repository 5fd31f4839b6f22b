//! The node set every channel of one [`Rpc`](super::Rpc) picks from: one
//! service-group watch per registry, turned into snapshots of routable
//! nodes, each with its (reused) HTTP/2 connection and load counter.

use std::collections::{BTreeMap, HashMap};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};

use crate::error::Result;
use crate::servicegroup::backoff::Backoff;
use crate::servicegroup::follow::restarted;
use crate::servicegroup::{Event, EventStream, Member, Registry};
use crate::tls::ClientTls;

use super::Target;

/// One node as channels see it.
pub(crate) struct Node {
    pub(crate) member: Member,
    pub(crate) channel: Channel,
    /// Calls sent to this node and not yet answered: the p2c load measure.
    pub(crate) pending: Arc<AtomicUsize>,
    /// Hedged calls given up on this node since it last answered: a
    /// stalled node keeps looking loaded after its calls were cancelled.
    pub(crate) abandoned: Arc<AtomicUsize>,
}

impl Node {
    pub(crate) fn host(&self) -> &str {
        &self.member.record.host
    }

    pub(crate) fn load(&self) -> usize {
        self.pending.load(Ordering::Relaxed) + self.abandoned.load(Ordering::Relaxed)
    }

    fn matches(&self, target: &Target) -> bool {
        let r = &self.member.record;
        r.topic == target.topic
            && target.server.as_ref().is_none_or(|s| *s == r.host)
            && target
                .service
                .as_ref()
                .is_none_or(|s| r.services.contains(s))
    }
}

/// Routable nodes (up, enabled, with a gRPC endpoint), by topic.
#[derive(Default)]
pub(crate) struct Snapshot {
    by_topic: HashMap<String, Arc<[Arc<Node>]>>,
    /// Up but disabled nodes, by topic: reachable only by a server target
    /// that asks for them.
    disabled: HashMap<String, Vec<Arc<Node>>>,
}

impl Snapshot {
    /// The nodes a target may use. A plain topic target shares the
    /// snapshot's slice: no allocation on the call path.
    pub(crate) fn nodes(&self, target: &Target) -> Arc<[Arc<Node>]> {
        if target.include_disabled && target.server.is_some() {
            let disabled = self.disabled.get(&target.topic).into_iter().flatten();
            let enabled = self
                .by_topic
                .get(&target.topic)
                .into_iter()
                .flat_map(|n| n.iter());
            return enabled
                .chain(disabled)
                .filter(|n| n.matches(target))
                .cloned()
                .collect();
        }
        match self.by_topic.get(&target.topic) {
            None => Arc::new([]),
            Some(nodes) if target.server.is_none() && target.service.is_none() => nodes.clone(),
            Some(nodes) => nodes
                .iter()
                .filter(|n| n.matches(target))
                .cloned()
                .collect(),
        }
    }
}

/// Connection settings for nodes.
#[derive(Debug, Clone)]
pub(crate) struct ConnectOptions {
    pub(crate) connect_timeout: Duration,
    /// For `https://` endpoints.
    pub(crate) tls: Option<ClientTls>,
}

/// Keeps the members and their connections current from the watch.
struct Tracker {
    members: BTreeMap<(String, String), Member>,
    /// Connections by endpoint URL, reused across snapshots (and so across
    /// admin changes) while the member stays routable.
    nodes: HashMap<(String, String), Arc<Node>>,
    options: ConnectOptions,
}

impl Tracker {
    fn apply(&mut self, event: &Event) {
        let m = event.member();
        let key = (m.record.topic.clone(), m.record.host.clone());
        match event {
            // A deleted record is forgotten, so the map never outgrows the
            // registry.
            Event::Delete(_) => self.members.remove(&key),
            _ => self.members.insert(key, m.clone()),
        };
    }

    fn snapshot(&mut self) -> Snapshot {
        let mut by_topic: HashMap<String, Vec<Arc<Node>>> = HashMap::new();
        let mut disabled: HashMap<String, Vec<Arc<Node>>> = HashMap::new();
        let mut live = HashMap::new();
        for (key, member) in &self.members {
            let Some(url) = member.record.endpoints.grpc.as_deref() else {
                continue;
            };
            if !member.up {
                continue;
            }
            let reuse = self
                .nodes
                .get(key)
                .filter(|n| n.member.record.endpoints.grpc.as_deref() == Some(url));
            let node = match reuse {
                Some(n) if n.member == *member => n.clone(),
                Some(n) => Arc::new(Node {
                    member: member.clone(),
                    channel: n.channel.clone(),
                    pending: n.pending.clone(),
                    abandoned: n.abandoned.clone(),
                }),
                None => match connect(url, &self.options) {
                    Some(channel) => Arc::new(Node {
                        member: member.clone(),
                        channel,
                        pending: Arc::new(AtomicUsize::new(0)),
                        abandoned: Arc::new(AtomicUsize::new(0)),
                    }),
                    None => continue,
                },
            };
            let group = if member.is_routable() {
                &mut by_topic
            } else {
                &mut disabled
            };
            group.entry(key.0.clone()).or_default().push(node.clone());
            live.insert(key.clone(), node);
        }
        // Nodes no longer routable drop out here; calls in flight hold their
        // own channel clone and finish on it.
        self.nodes = live;
        for (topic, _) in self.members.keys() {
            crate::telemetry::metrics::set_client_nodes(
                topic,
                by_topic.get(topic).map_or(0, Vec::len),
            );
        }
        Snapshot {
            by_topic: by_topic.into_iter().map(|(t, n)| (t, n.into())).collect(),
            disabled,
        }
    }
}

fn connect(url: &str, options: &ConnectOptions) -> Option<Channel> {
    // tonic does TLS only with its own fixed configuration; the connector
    // does it instead (files re-read on change), so tonic sees plain http.
    let (url, tls) = match (url.strip_prefix("https://"), &options.tls) {
        (None, _) => (url.to_string(), None),
        (Some(rest), Some(tls)) => (format!("http://{rest}"), Some(tls.connector())),
        (Some(_), None) => {
            tracing::warn!(url, "member serves TLS and no tls_ca_file is set; skipped");
            return None;
        }
    };
    match Endpoint::from_shared(url.clone()) {
        Ok(endpoint) => {
            let endpoint = endpoint
                .connect_timeout(options.connect_timeout)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(30))
                .keep_alive_while_idle(true);
            Some(match tls {
                Some(connector) => endpoint.connect_with_connector_lazy(connector),
                None => endpoint.connect_lazy(),
            })
        }
        Err(e) => {
            tracing::warn!(url, error = %e, "member advertises an invalid endpoint; skipped");
            None
        }
    }
}

/// Lists the members, then follows the registry's watch in a background
/// task; the receiver always holds the latest snapshot. The task ends when
/// every receiver is gone. A watch that ends or a follower that panics is
/// logged, counted and started again (with backoff), so a client never keeps
/// a frozen node set.
pub(crate) async fn start(
    registry: Registry,
    options: ConnectOptions,
) -> Result<watch::Receiver<Arc<Snapshot>>> {
    let mut tracker = Tracker {
        members: BTreeMap::new(),
        nodes: HashMap::new(),
        options,
    };
    for member in registry.list(None).await? {
        tracker.apply(&Event::Update(member));
    }
    let (tx, rx) = watch::channel(Arc::new(tracker.snapshot()));
    let events = registry.watch(None).await?;
    tokio::spawn(async move {
        let mut backoff = Backoff::new(registry.backoff_max());
        let mut events = Some(events);
        loop {
            let stream = match events.take() {
                Some(stream) => stream,
                None => match restart(&registry, &mut tracker).await {
                    Ok(stream) => {
                        let _ = tx.send(Arc::new(tracker.snapshot()));
                        stream
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "membership watch cannot start again yet");
                        tokio::select! {
                            () = tx.closed() => return,
                            () = backoff.wait() => continue,
                        }
                    }
                },
            };
            let followed = AssertUnwindSafe(follow(stream, &mut tracker, &tx))
                .catch_unwind()
                .await;
            match followed {
                Ok(Ended::Closed) => return,
                Ok(Ended::WatchEnded) => restarted("discovery", &"membership watch ended"),
                Err(_) => restarted("discovery", &"discovery loop panicked"),
            }
            tokio::select! {
                () = tx.closed() => return,
                () = backoff.wait() => {}
            }
        }
    });
    Ok(rx)
}

/// Lists the members again (records deleted meanwhile are dropped) and
/// opens a new watch.
async fn restart(registry: &Registry, tracker: &mut Tracker) -> Result<EventStream> {
    let members = registry.list(None).await?;
    let events = registry.watch(None).await?;
    tracker.members = members
        .into_iter()
        .map(|m| ((m.record.topic.clone(), m.record.host.clone()), m))
        .collect();
    Ok(events)
}

/// Why following one watch stopped.
enum Ended {
    /// Every receiver is gone.
    Closed,
    /// The stream ended: watch again.
    WatchEnded,
}

/// Applies one watch's events to the tracker and publishes snapshots.
async fn follow(
    mut events: EventStream,
    tracker: &mut Tracker,
    tx: &watch::Sender<Arc<Snapshot>>,
) -> Ended {
    loop {
        let first = tokio::select! {
            () = tx.closed() => return Ended::Closed,
            event = events.next() => event,
        };
        // Apply everything already queued before publishing, so a burst of
        // events costs one snapshot.
        let mut next = first;
        loop {
            match next {
                Some(Ok(event)) => tracker.apply(&event),
                Some(Err(e)) => tracing::warn!(error = %e, "membership watch error"),
                None => return Ended::WatchEnded,
            }
            match events.next().now_or_never() {
                Some(more) => next = more,
                None => break,
            }
        }
        let _ = tx.send(Arc::new(tracker.snapshot()));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;
    use std::time::SystemTime;

    use futures::future::BoxFuture;

    use super::*;
    use crate::servicegroup::memory::MemoryDriver;
    use crate::servicegroup::{
        task_restarts, AdminChange, Driver, Endpoints, Membership, Registration,
    };

    fn registration(host: &str) -> Registration {
        Registration {
            topic: "t".into(),
            host: host.into(),
            binary: "b".into(),
            version: "1".into(),
            endpoints: Endpoints {
                grpc: Some("http://127.0.0.1:1".into()),
                http: None,
            },
            services: vec![],
            workers: 1,
            report_interval: Duration::from_secs(1),
            service_down_time: Duration::from_secs(2),
        }
    }

    /// A group whose first watch ends after one event, as a driver's stream
    /// might end for good.
    struct EndsOnce {
        group: MemoryDriver,
        ended: AtomicBool,
    }

    impl Driver for EndsOnce {
        fn join(&self, r: Registration) -> BoxFuture<'_, Result<Box<dyn Membership>>> {
            self.group.join(r)
        }
        fn get<'a>(&'a self, t: &'a str, h: &'a str) -> BoxFuture<'a, Result<Option<Member>>> {
            self.group.get(t, h)
        }
        fn list<'a>(&'a self, t: Option<&'a str>) -> BoxFuture<'a, Result<Vec<Member>>> {
            self.group.list(t)
        }
        fn watch<'a>(&'a self, t: Option<&'a str>) -> BoxFuture<'a, Result<EventStream>> {
            let ends = !self.ended.swap(true, Ordering::SeqCst);
            async move {
                let events = self.group.watch(t).await?;
                Ok(if ends { events.take(1).boxed() } else { events })
            }
            .boxed()
        }
        fn set_admin<'a>(
            &'a self,
            t: &'a str,
            h: &'a str,
            c: AdminChange,
        ) -> BoxFuture<'a, Result<Member>> {
            self.group.set_admin(t, h, c)
        }
        fn delete<'a>(&'a self, t: &'a str, h: &'a str) -> BoxFuture<'a, Result<bool>> {
            self.group.delete(t, h)
        }
    }

    #[tokio::test]
    async fn a_watch_that_ends_is_counted_and_started_again() {
        let registry: Registry = Arc::new(EndsOnce {
            group: MemoryDriver::named("discovery-ends-once"),
            ended: AtomicBool::new(false),
        });
        let before = task_restarts();
        let options = ConnectOptions {
            connect_timeout: Duration::from_secs(1),
            tls: None,
        };
        let mut snapshots = start(registry.clone(), options).await.unwrap();
        let topic = Target::topic("t");
        // The first join is the watch's last event.
        let _a = registry.join(registration("a")).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), async {
            while task_restarts() == before {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the ended watch is counted");
        let _b = registry.join(registration("b")).await.unwrap();
        tokio::time::timeout(
            Duration::from_secs(5),
            snapshots.wait_for(|s| s.nodes(&topic).len() == 2),
        )
        .await
        .expect("changes after the restart reach the client")
        .unwrap();
    }

    #[tokio::test]
    async fn deleted_records_leave_the_member_map() {
        let mut tracker = Tracker {
            members: BTreeMap::new(),
            nodes: HashMap::new(),
            options: ConnectOptions {
                connect_timeout: Duration::from_secs(1),
                tls: None,
            },
        };
        let record = registration("h").to_record(SystemTime::UNIX_EPOCH);
        let up = Member { record, up: true };
        tracker.apply(&Event::Join(up.clone()));
        assert_eq!(tracker.snapshot().nodes(&Target::topic("t")).len(), 1);
        tracker.apply(&Event::Delete(Member { up: false, ..up }));
        assert!(tracker.members.is_empty());
        assert!(tracker.snapshot().nodes(&Target::topic("t")).is_empty());
    }
}
