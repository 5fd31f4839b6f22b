//! One service-group watch per topic, shared by every xDS stream that
//! subscribes to one of the topic's resources: started by the first such
//! stream, stopped when the last one lets go.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use tokio::sync::watch;

use super::resources::{Backend, TopicResources};
use crate::error::Result;
use crate::servicegroup::backoff::Backoff;
use crate::servicegroup::follow::restarted;
use crate::servicegroup::{Event, EventStream, Member, Registry};

/// How long a host name lookup may take before the member is left out.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

/// What the control plane knows of one topic.
#[derive(Debug, Clone, Default)]
pub(crate) struct TopicState {
    /// The first listing is in: `resources` is the truth, not a guess.
    pub(crate) ready: bool,
    /// `None`: the topic has no service record; its resources do not exist.
    pub(crate) resources: Option<TopicResources>,
}

/// A topic's live state, for as long as a stream holds it.
pub(crate) struct Feed {
    pub(crate) state: watch::Receiver<Arc<TopicState>>,
    task: tokio::task::AbortHandle,
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Every topic's feed, and the one signal that wakes streams when any
/// topic changed.
pub(crate) struct Feeds {
    registry: Registry,
    topics: Mutex<HashMap<String, Weak<Feed>>>,
    changed: watch::Sender<u64>,
}

impl Feeds {
    pub(crate) fn new(registry: Registry) -> Self {
        Feeds {
            registry,
            topics: Mutex::new(HashMap::new()),
            changed: watch::channel(0).0,
        }
    }

    /// The feed of `topic`, its watch started if none runs.
    pub(crate) fn topic(&self, topic: &str) -> Arc<Feed> {
        let mut topics = crate::servicegroup::lock(&self.topics);
        if let Some(feed) = topics.get(topic).and_then(Weak::upgrade) {
            return feed;
        }
        topics.retain(|_, feed| feed.strong_count() > 0);
        let (tx, rx) = watch::channel(Arc::new(TopicState::default()));
        let task = tokio::spawn(follow(
            self.registry.clone(),
            topic.to_string(),
            tx,
            self.changed.clone(),
        ));
        let feed = Arc::new(Feed {
            state: rx,
            task: task.abort_handle(),
        });
        topics.insert(topic.to_string(), Arc::downgrade(&feed));
        feed
    }

    /// Bumped after every change of any topic.
    pub(crate) fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Topics watched now.
    pub(crate) fn watched(&self) -> usize {
        crate::servicegroup::lock(&self.topics)
            .values()
            .filter(|f| f.strong_count() > 0)
            .count()
    }
}

/// Lists the topic, then follows its watch, publishing every change; a
/// watch that fails or ends is started again with backoff. Aborted when
/// the last stream drops the feed.
async fn follow(
    registry: Registry,
    topic: String,
    tx: watch::Sender<Arc<TopicState>>,
    changed: watch::Sender<u64>,
) {
    let mut topic_state = Topic {
        name: topic,
        members: BTreeMap::new(),
        resolved: HashMap::new(),
        warned: HashMap::new(),
        tx,
        changed,
    };
    let mut backoff = Backoff::new(registry.backoff_max());
    loop {
        match start(&registry, &topic_state.name).await {
            Ok((events, members)) => {
                backoff.reset();
                topic_state.members = members
                    .into_iter()
                    .map(|m| (m.record.host.clone(), m))
                    .collect();
                topic_state.publish().await;
                topic_state.follow(events).await;
                restarted("xds", &"membership watch ended");
            }
            Err(e) => {
                tracing::warn!(topic = %topic_state.name, error = %e, "xds: membership watch cannot start yet");
            }
        }
        backoff.wait().await;
    }
}

/// Opens the watch first, then lists: a change between the two arrives on
/// the watch, and applying it again is harmless.
async fn start(registry: &Registry, topic: &str) -> Result<(EventStream, Vec<Member>)> {
    let events = registry.watch(Some(topic)).await?;
    let members = registry.list(Some(topic)).await?;
    Ok((events, members))
}

struct Topic {
    name: String,
    members: BTreeMap<String, Member>,
    /// Host names of endpoints and what they resolved to.
    resolved: HashMap<String, Option<IpAddr>>,
    /// Members already warned about (an `https://` endpoint, a name that
    /// does not resolve), so that the warning is said once.
    warned: HashMap<String, String>,
    tx: watch::Sender<Arc<TopicState>>,
    changed: watch::Sender<u64>,
}

impl Topic {
    async fn follow(&mut self, mut events: EventStream) {
        while let Some(first) = events.next().await {
            // A burst of events costs one push.
            let mut next = Some(first);
            while let Some(event) = next {
                match event {
                    Ok(event) => self.apply(event),
                    Err(e) => {
                        tracing::warn!(topic = %self.name, error = %e, "xds: membership watch error")
                    }
                }
                next = events.next().now_or_never().flatten();
            }
            self.publish().await;
        }
    }

    fn apply(&mut self, event: Event) {
        match event {
            Event::Delete(m) => {
                self.members.remove(&m.record.host);
            }
            Event::Join(m) | Event::Leave(m) | Event::Update(m) => {
                self.members.insert(m.record.host.clone(), m);
            }
        }
    }

    async fn publish(&mut self) {
        let backends = self.backends().await;
        let previous = self.tx.borrow().clone();
        let resources = if self.members.is_empty() {
            None
        } else {
            Some(match &previous.resources {
                Some(r) => r.with_backends(&self.name, &backends),
                None => TopicResources::build(&self.name, &backends),
            })
        };
        tracing::debug!(topic = %self.name, records = self.members.len(), endpoints = backends.len(), "xds: topic changed");
        self.tx.send_replace(Arc::new(TopicState {
            ready: true,
            resources,
        }));
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The routable members' gRPC endpoints. Left out, with one warning
    /// each while the reason stays: a member without a gRPC endpoint, an
    /// `https://` one (the cluster has no transport socket yet), a host
    /// name that does not resolve.
    async fn backends(&mut self) -> Vec<Backend> {
        let known = std::mem::take(&mut self.resolved);
        let mut resolved = HashMap::new();
        let mut warned = HashMap::new();
        let mut backends = Vec::new();
        for member in self.members.values().filter(|m| m.is_routable()) {
            match backend(member, &known, &mut resolved).await {
                Ok(backend) => backends.push(backend),
                Err(why) => {
                    let host = &member.record.host;
                    if self.warned.get(host) != Some(&why) {
                        tracing::warn!(topic = %self.name, %host, "xds: endpoint left out: {why}");
                    }
                    warned.insert(host.clone(), why);
                }
            }
        }
        // Names and warnings of members gone or mended are forgotten.
        self.resolved = resolved;
        self.warned = warned;
        backends
    }
}

/// One member's endpoint; host names are looked up in `known` (the last
/// publish's), else resolved, and kept in `resolved`.
async fn backend(
    member: &Member,
    known: &HashMap<String, Option<IpAddr>>,
    resolved: &mut HashMap<String, Option<IpAddr>>,
) -> std::result::Result<Backend, String> {
    let url = member
        .record
        .endpoints
        .grpc
        .as_deref()
        .ok_or_else(|| "no gRPC endpoint".to_string())?;
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("gRPC endpoint {url:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(format!(
                "{url} serves TLS, and the xDS cluster carries no TLS settings yet"
            ))
        }
        _ => return Err(format!("gRPC endpoint {url:?} is not http://")),
    }
    let host = uri.host().unwrap_or_default();
    let port = uri.port_u16().unwrap_or(80);
    let ip = match host.trim_start_matches('[').trim_end_matches(']').parse() {
        Ok(ip) => Some(ip),
        Err(_) => {
            let found = match known.get(host) {
                Some(found) => *found,
                None => resolve(host, port).await,
            };
            resolved.insert(host.to_string(), found);
            found
        }
    };
    let ip = ip.ok_or_else(|| format!("host name {host} does not resolve"))?;
    Ok(Backend {
        host: member.record.host.clone(),
        ip,
        port,
        weight: member.record.workers,
    })
}

/// gRPC clients take endpoints as addresses: a member that advertises a
/// host name is resolved here, once while it is present.
async fn resolve(name: &str, port: u16) -> Option<IpAddr> {
    tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((name, port)))
        .await
        .ok()
        .and_then(|r| r.ok())
        .and_then(|mut addrs| addrs.next())
        .map(|a| a.ip())
}
