//! A topic's xDS resources, made from its members by the service group's
//! shared feed of the topic, for every xDS stream that subscribes to one of
//! them.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::google::protobuf::Any;

use futures::future::BoxFuture;
use futures::FutureExt;

use super::policy::{Policies, RoutePolicy};
use super::resources::{Backend, TopicResources};
use super::tls::UpstreamTls;
use crate::servicegroup::feed::{Members, Project, TopicFeeds};
use crate::servicegroup::{Event, Member, Registry};

/// How long a host name lookup may take before the member is left out.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

/// What the control plane knows of one topic.
#[derive(Debug, Clone, Default)]
pub(crate) struct TopicState {
    /// The first listing is in: `resources` is the truth, not a guess.
    pub(crate) ready: bool,
    /// `None`: the topic has no service record; its resources do not exist.
    pub(crate) resources: Option<TopicResources>,
    /// While `resources` is `None`: the listener that fails calls to the
    /// topic at once.
    pub(crate) absent: Option<Arc<Any>>,
}

/// The service group's feeds of the topics xDS streams subscribe to: a
/// topic's watch starts with the first stream that names it and stops when
/// the last one lets go.
pub(crate) type Feeds = TopicFeeds<Topic>;

pub(crate) fn feeds(registry: Registry, policies: Arc<Policies>, tls: Arc<UpstreamTls>) -> Feeds {
    TopicFeeds::new(registry, Duration::ZERO, move |topic| {
        let name = topic.unwrap_or_default().to_string();
        Topic {
            policy: policies.of(&name).clone(),
            tls: tls.clone(),
            name,
            previous: None,
            absent: None,
            resolved: HashMap::new(),
            warned: HashMap::new(),
        }
    })
}

/// Makes a topic's resources from its members.
pub(crate) struct Topic {
    name: String,
    /// What its route tells clients: retries and timeout.
    policy: RoutePolicy,
    /// How clients reach nodes that serve TLS.
    tls: Arc<UpstreamTls>,
    /// The resources last made, whose unchanged parts the next share.
    previous: Option<TopicResources>,
    /// The listener of the topic while it does not exist, made once.
    absent: Option<Arc<Any>>,
    /// Host names of endpoints and what they resolved to.
    resolved: HashMap<String, Option<IpAddr>>,
    /// Members already warned about (a plaintext node among TLS ones, a
    /// name that does not resolve), so that the warning is said once.
    warned: HashMap<String, String>,
}

impl Project for Topic {
    type View = TopicState;

    fn project<'a>(
        &'a mut self,
        members: &'a Members,
        _changes: Option<&'a [Event]>,
    ) -> BoxFuture<'a, TopicState> {
        async move {
            let backends = self.backends(members).await;
            let resources = if members.is_empty() {
                None
            } else {
                Some(match &self.previous {
                    Some(r) => r.with_backends(&self.name, &backends, &self.policy, &self.tls),
                    None => TopicResources::build(&self.name, &backends, &self.policy, &self.tls),
                })
            };
            tracing::debug!(topic = %self.name, records = members.len(), endpoints = backends.len(), "xds: topic changed");
            self.previous.clone_from(&resources);
            let absent = match resources {
                Some(_) => None,
                None => Some(
                    self.absent
                        .get_or_insert_with(|| super::resources::absent_listener(&self.name))
                        .clone(),
                ),
            };
            TopicState {
                ready: true,
                resources,
                absent,
            }
        }
        .boxed()
    }
}

impl Topic {
    /// The routable members' gRPC endpoints. Left out, with one warning
    /// each while the reason stays: a member without a gRPC endpoint, an
    /// `https://` one (the cluster has no transport socket yet), a host
    /// name that does not resolve.
    async fn backends(&mut self, members: &Members) -> Vec<Backend> {
        let known = std::mem::take(&mut self.resolved);
        let mut resolved = HashMap::new();
        let mut warned = HashMap::new();
        let mut backends = Vec::new();
        let mut left_out = Vec::new();
        for member in members.values().filter(|m| m.is_routable()) {
            match backend(member, &known, &mut resolved).await {
                Ok(backend) => backends.push(backend),
                Err(why) => left_out.push((member.record.advert.host.clone(), why)),
            }
        }
        // One Cluster has one transport socket: in a topic whose nodes mix
        // TLS and plaintext, the TLS ones are served.
        if backends.iter().any(|b| b.tls) {
            backends.retain(|b| {
                if !b.tls {
                    let why = "plaintext, in a topic whose other nodes serve TLS".to_string();
                    left_out.push((b.host.clone(), why));
                }
                b.tls
            });
        }
        for (host, why) in left_out {
            if self.warned.get(&host) != Some(&why) {
                tracing::warn!(topic = %self.name, %host, "xds: endpoint left out: {why}");
            }
            warned.insert(host, why);
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
        .advert
        .endpoints
        .grpc
        .as_deref()
        .ok_or_else(|| "no gRPC endpoint".to_string())?;
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("gRPC endpoint {url:?} is not a URL: {e}"))?;
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => {
            return Err(format!(
                "gRPC endpoint {url:?} is neither http:// nor https://"
            ))
        }
    };
    let host = uri.host().unwrap_or_default();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
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
        host: member.record.advert.host.clone(),
        ip,
        port,
        weight: member.record.workers,
        tls,
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
