//! One ADS stream, state of the world: what the client subscribed to per
//! resource type, what was sent, and what it acknowledged.
//!
//! The rules followed (xDS protocol, "ACK/NACK and resource type instance
//! version" and "Knowing when a requested resource does not exist"):
//!
//! - every response carries a fresh nonce and a version of its type;
//! - a request whose `response_nonce` is not the last one sent for its
//!   type is stale and ignored;
//! - a request with `error_detail` NACKs the version: it is logged and
//!   counted, and nothing is sent again until the resources change; the
//!   client keeps the version it accepted last;
//! - a response holds only subscribed resources. Listener and Cluster
//!   responses hold every subscribed one that exists: one left out does
//!   not exist (a topic without any service record). A wildcard
//!   subscription (no names) is answered with nothing, with a warning;
//! - nothing is sent for a type until every topic it names has been
//!   listed, so that a topic is never said not to exist while its first
//!   listing is on the way.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::protobuf::Any;
use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tonic::{Status, Streaming};

use super::clients::Agent;
use super::feed::TopicState;
use super::resources::Kind;
use super::Shared;

/// What one resource type's subscription stands at.
#[derive(Default)]
struct Subscription {
    /// Names subscribed; the subscription exists once a request came.
    names: BTreeSet<String>,
    requested: bool,
    /// The version and nonce of the last response sent.
    version: u64,
    nonce: String,
    /// What that response held, by name (the same `Arc`s as the feeds').
    sent: BTreeMap<String, Arc<Any>>,
    /// A request waits for an answer, even if nothing changed.
    answer: bool,
}

pub(super) struct AdsStream {
    shared: Arc<Shared>,
    out: mpsc::Sender<Result<DiscoveryResponse, Status>>,
    subscriptions: [Subscription; 4],
    feeds: HashMap<String, watch::Receiver<Arc<TopicState>>>,
    nonces: u64,
    node: String,
    /// The client's library, which decides the policies it is sent.
    agent: Agent,
    /// The topics whose Cluster it was last sent with round robin instead
    /// of their policy.
    held_back: BTreeSet<String>,
    warned_wildcard: bool,
    /// This stream's entry in the config dump.
    id: u64,
}

impl AdsStream {
    pub(super) fn new(
        shared: Arc<Shared>,
        out: mpsc::Sender<Result<DiscoveryResponse, Status>>,
        id: u64,
    ) -> Self {
        AdsStream {
            shared,
            out,
            subscriptions: Default::default(),
            feeds: HashMap::new(),
            nonces: 0,
            node: String::new(),
            agent: Agent::default(),
            held_back: BTreeSet::new(),
            warned_wildcard: false,
            id,
        }
    }

    /// Serves the stream until the client goes, the response side is
    /// dropped, or the control plane closes.
    pub(super) async fn run(
        mut self,
        mut requests: Streaming<DiscoveryRequest>,
        mut closing: watch::Receiver<bool>,
    ) {
        let mut changes = self.shared.feeds.changes();
        loop {
            tokio::select! {
                request = requests.next() => match request {
                    Some(Ok(request)) => self.on_request(request),
                    Some(Err(status)) => {
                        tracing::debug!(node = %self.node, %status, "xds: stream ended by the client");
                        return;
                    }
                    None => return,
                },
                changed = changes.changed() => if changed.is_err() {
                    return;
                },
                _ = closing.wait_for(|closed| *closed) => return,
            }
            if self.flush().await.is_err() {
                return;
            }
        }
    }

    fn on_request(&mut self, request: DiscoveryRequest) {
        if self.node.is_empty() {
            if let Some(node) = &request.node {
                self.node = node.id.clone();
                self.agent = Agent::from_node(node);
                let agent = self.agent.label();
                self.shared.dumps.node(self.id, &self.node, agent);
                tracing::debug!(node = %self.node, %agent, "xds: stream opened");
            }
        }
        let Some(kind) = Kind::from_type_url(&request.type_url) else {
            tracing::debug!(node = %self.node, type_url = %request.type_url, "xds: resource type not served");
            return;
        };
        let sub = &mut self.subscriptions[kind.index()];
        if !request.response_nonce.is_empty() && request.response_nonce != sub.nonce {
            tracing::debug!(node = %self.node, type_url = %request.type_url, "xds: stale nonce, request ignored");
            return;
        }
        if let Some(error) = &request.error_detail {
            self.shared.stats.nack();
            let (id, node) = (self.id, &self.node);
            let kept = &request.version_info;
            self.shared
                .dumps
                .nacked(id, node, kind, kept, &error.message);
            tracing::warn!(
                node = %self.node,
                type_url = %request.type_url,
                version = %sub.version,
                accepted = %request.version_info,
                error = %error.message,
                "xds: the client rejected a response (NACK); it keeps the version it accepted"
            );
        } else if !request.response_nonce.is_empty() {
            self.shared.stats.ack();
            self.shared
                .dumps
                .acked(self.id, kind, &request.version_info);
        }
        let names: BTreeSet<String> = request.resource_names.into_iter().collect();
        let first = !sub.requested;
        if first || names != sub.names {
            sub.requested = true;
            sub.answer =
                first || kind.state_of_the_world() || names.iter().any(|n| !sub.names.contains(n));
            sub.names = names;
            if sub.names.is_empty() && first && kind.state_of_the_world() && !self.warned_wildcard {
                self.warned_wildcard = true;
                tracing::warn!(node = %self.node, type_url = %request.type_url, "xds: wildcard subscriptions are not served; name the topics (xds:///TOPIC)");
            }
            self.hold_feeds();
        }
    }

    /// Holds the feed of every topic some subscription names, and lets go
    /// of the others.
    fn hold_feeds(&mut self) {
        let wanted: BTreeSet<&String> = self.subscriptions.iter().flat_map(|s| &s.names).collect();
        self.feeds.retain(|topic, _| wanted.contains(topic));
        for topic in wanted {
            if !self.feeds.contains_key(topic) {
                let feed = self.shared.feeds.subscribe(Some(topic));
                self.feeds.insert(topic.clone(), feed);
            }
        }
    }

    /// Sends a response for each type whose subscribed resources changed
    /// since the last one, or whose request waits for an answer.
    async fn flush(&mut self) -> Result<(), ()> {
        for kind in Kind::ALL {
            let Some(response) = self.response(kind) else {
                continue;
            };
            self.shared.stats.push();
            self.out.send(Ok(response)).await.map_err(|_| ())?;
        }
        Ok(())
    }

    fn response(&mut self, kind: Kind) -> Option<DiscoveryResponse> {
        let sub = &self.subscriptions[kind.index()];
        if !sub.requested {
            return None;
        }
        let mut now = BTreeMap::new();
        let mut held_back = BTreeSet::new();
        for name in &sub.names {
            let feed = self.feeds.get(name)?;
            let state = feed.borrow().clone();
            if !state.ready {
                return None;
            }
            match (&state.resources, &state.absent) {
                (Some(resources), _) => {
                    let (resource, held) = resources.for_agent(kind, &self.agent);
                    now.insert(name.clone(), resource.clone());
                    if held {
                        held_back.insert(name.clone());
                    }
                }
                (None, Some(absent)) if kind == Kind::Listener => {
                    now.insert(name.clone(), absent.clone());
                }
                _ => {}
            }
        }
        let sub = &mut self.subscriptions[kind.index()];
        let same = if kind.state_of_the_world() {
            now.len() == sub.sent.len()
                && now
                    .iter()
                    .zip(&sub.sent)
                    .all(|((a, x), (b, y))| a == b && Arc::ptr_eq(x, y))
        } else {
            // Unsubscribed names need no response, and one that stopped
            // existing cannot be said to: only what is there counts.
            sub.sent.retain(|name, _| sub.names.contains(name));
            now.iter()
                .all(|(name, x)| sub.sent.get(name).is_some_and(|y| Arc::ptr_eq(x, y)))
        };
        if same && !sub.answer {
            return None;
        }
        self.nonces += 1;
        sub.version += 1;
        sub.nonce = self.nonces.to_string();
        sub.answer = false;
        let resources = now.values().map(|any| (**any).clone()).collect();
        let names = sub.names.iter().cloned().collect();
        let version = sub.version.to_string();
        self.shared
            .dumps
            .sent(self.id, kind, names, &version, &sub.nonce);
        if kind == Kind::Cluster && held_back != self.held_back {
            if !held_back.is_empty() {
                tracing::info!(node = %self.node, agent = %self.agent.label(), topics = ?held_back, "xds: round robin sent instead of policies the client's version cannot take");
            }
            self.shared.dumps.held_back(self.id, held_back.clone());
            self.held_back = held_back;
        }
        sub.sent = now;
        Some(DiscoveryResponse {
            version_info: sub.version.to_string(),
            resources,
            type_url: kind.type_url().to_string(),
            nonce: sub.nonce.clone(),
            ..Default::default()
        })
    }
}
