//! [`RpcService`]: a node serving a manager's API on a topic (nova's
//! `Service`), with the start and stop order of the README.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use futures::future::BoxFuture;
use tonic::server::NamedService;

use super::base::BaseApi;
use super::grpc::{self, GrpcServer};
use super::Service;
use crate::config::Config;
use crate::error::{BoxError, Error, Result};
use crate::manager::{Manager, Services};
use crate::pb::base::v1::base_server::BaseServer;
use crate::servicegroup::{self, Endpoints, Membership, Registration};

/// What a node is and where it stands; shared by the service, the `Base`
/// API and reports.
pub struct NodeInfo {
    pub host: String,
    pub topic: String,
    pub binary: String,
    pub version: String,
    pub started_at: SystemTime,
    config: RwLock<Config>,
    endpoints: RwLock<Endpoints>,
    services: RwLock<Vec<String>>,
    membership: RwLock<Option<Arc<dyn Membership>>>,
}

impl NodeInfo {
    /// The config in force (after any SIGHUP).
    pub fn config(&self) -> Config {
        self.config.read().map(|c| c.clone()).unwrap_or_default()
    }

    /// The advertised endpoints (known once the listeners are bound).
    pub fn endpoints(&self) -> Endpoints {
        self.endpoints.read().map(|e| e.clone()).unwrap_or_default()
    }

    fn membership(&self) -> Option<Arc<dyn Membership>> {
        self.membership.read().ok().and_then(|m| m.clone())
    }

    /// The node's state report: identity, process, registration, config
    /// (secrets as `***`).
    pub fn report(&self) -> serde_json::Value {
        let config = self.config();
        let options: serde_json::Map<_, _> = config
            .entries()
            .into_iter()
            .map(|(name, value, source)| {
                (
                    name.to_string(),
                    serde_json::json!({ "value": value, "source": source.to_string() }),
                )
            })
            .collect();
        let uptime = SystemTime::now()
            .duration_since(self.started_at)
            .unwrap_or_default();
        serde_json::json!({
            "package": { "name": env!("CARGO_PKG_NAME"), "version": env!("CARGO_PKG_VERSION") },
            "node": {
                "host": self.host,
                "topic": self.topic,
                "binary": self.binary,
                "version": self.version,
                "endpoints": self.endpoints(),
                "services": self.services.read().map(|s| s.clone()).unwrap_or_default(),
            },
            "process": {
                "pid": std::process::id(),
                "ppid": nix::unistd::getppid().as_raw(),
                "cmdline": std::env::args().collect::<Vec<_>>(),
                "started_at": servicegroup::rfc3339(self.started_at),
                "uptime_secs": uptime.as_secs_f64(),
            },
            "membership": self.membership().map(|m| m.status()),
            "config": options,
        })
    }
}

/// Builds an [`RpcService`]; the defaults are nova's (`binary` from argv[0],
/// `topic` from the binary).
#[must_use]
pub struct RpcServiceBuilder<M> {
    manager: M,
    binary: Option<String>,
    topic: Option<String>,
    version: String,
}

impl<M: Manager> RpcServiceBuilder<M> {
    /// The binary name recorded in the service group.
    ///
    /// ```ignore
    /// RpcService::builder(manager).binary("conductor").build(&config)
    /// ```
    pub fn binary(mut self, binary: impl Into<String>) -> Self {
        self.binary = Some(binary.into());
        self
    }

    /// The topic served when the config sets none.
    ///
    /// ```ignore
    /// RpcService::builder(manager).topic("echo").build(&config)
    /// ```
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.topic = Some(topic.into());
        self
    }

    /// The software version recorded in the service group.
    ///
    /// ```ignore
    /// RpcService::builder(manager).version(env!("CARGO_PKG_VERSION")).build(&config)
    /// ```
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = version.into();
        self
    }

    /// The service, for `config`'s host, registry and listeners. The topic is
    /// the config's `topic`, else the builder's, else the binary name
    /// without a `svckit-` prefix.
    pub fn build(self, config: &Config) -> RpcService<M> {
        let binary = self.binary.unwrap_or_else(default_binary);
        let topic = config.topic.clone().or(self.topic).unwrap_or_else(|| {
            binary
                .strip_prefix("svckit-")
                .unwrap_or(&binary)
                .to_string()
        });
        RpcService {
            node: Arc::new(NodeInfo {
                host: config.host.clone(),
                topic,
                binary,
                version: self.version,
                started_at: SystemTime::now(),
                config: RwLock::new(config.clone()),
                endpoints: RwLock::new(Endpoints::default()),
                services: RwLock::new(Vec::new()),
                membership: RwLock::new(None),
            }),
            manager: Arc::new(self.manager),
            server: Mutex::new(None),
        }
    }
}

fn default_binary() -> String {
    std::env::args()
        .next()
        .as_deref()
        .map(std::path::Path::new)
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "svckit".into())
}

/// A node: the manager's gRPC services plus `Base`, health and reflection,
/// on one listener, registered in the service group while it serves.
pub struct RpcService<M> {
    node: Arc<NodeInfo>,
    manager: Arc<M>,
    server: Mutex<Option<Arc<GrpcServer>>>,
}

impl<M: Manager> RpcService<M> {
    /// A builder with nova's defaults.
    pub fn builder(manager: M) -> RpcServiceBuilder<M> {
        RpcServiceBuilder {
            manager,
            binary: None,
            topic: None,
            version: String::from("0.0.0"),
        }
    }

    /// `RpcService::builder(manager).build(config)`.
    pub fn create(config: &Config, manager: M) -> Self {
        Self::builder(manager).build(config)
    }

    /// The node's identity and state.
    pub fn node(&self) -> &Arc<NodeInfo> {
        &self.node
    }

    fn server(&self) -> Option<Arc<GrpcServer>> {
        self.server.lock().ok().and_then(|s| s.clone())
    }

    async fn start_inner(&self) -> Result<()> {
        let config = self.node.config();
        // The registry is reached first: if it is down, the start fails
        // before anything was bound or initialised (exit 69).
        let registry = servicegroup::connect(&config.registry, &config.registry_options()).await?;
        if let Some(http) = config.http_listen {
            tracing::warn!(%http, "http_listen is set, but this node has no HTTP API to serve");
        }
        let listener = grpc::bind(config.rpc_listen)?;
        let addr = listener.local_addr()?;
        set(
            &self.node.endpoints,
            Endpoints {
                grpc: Some(advertised_url(addr, &self.node.host)),
                http: None,
            },
        );

        self.manager.init_host().await.map_err(hook("init_host"))?;
        self.manager
            .pre_start_hook()
            .await
            .map_err(hook("pre_start_hook"))?;

        let mut services = Services::new(config.max_message_size);
        self.manager.services(&mut services);
        let (routes, user_names, descriptor_sets) = services.into_parts();
        let (health, health_service) = tonic_health::server::health_reporter();
        let reflection = || {
            descriptor_sets.iter().fold(
                tonic_reflection::server::Builder::configure()
                    .register_encoded_file_descriptor_set(crate::pb::base::FILE_DESCRIPTOR_SET)
                    .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET),
                |builder, set| builder.register_encoded_file_descriptor_set(set),
            )
        };
        let reflection_err = |e: tonic_reflection::server::Error| {
            Error::Config(format!("invalid file descriptor set for reflection: {e}"))
        };
        let base = BaseServer::new(BaseApi {
            node: self.node.clone(),
        })
        .max_decoding_message_size(config.max_message_size)
        .max_encoding_message_size(config.max_message_size);
        let routes = routes
            .add_service(base)
            .add_service(health_service)
            .add_service(reflection().build_v1().map_err(reflection_err)?)
            .add_service(reflection().build_v1alpha().map_err(reflection_err)?);

        let mut advertised: Vec<String> = user_names.iter().map(|n| n.to_string()).collect();
        advertised.push(BaseServer::<BaseApi>::NAME.to_string());
        set(&self.node.services, advertised.clone());
        let mut health_names = advertised.clone();
        health_names.push(String::new());

        let server = Arc::new(GrpcServer::start(listener, routes, health, health_names).await?);
        if let Ok(mut slot) = self.server.lock() {
            *slot = Some(server.clone());
        }
        if let Err(e) = self.manager.post_start_hook().await {
            server.abort();
            return Err(hook("post_start_hook")(e));
        }
        server.set_serving(true).await;

        // Advertised only now: a node is never listed before it can answer.
        let registration = Registration {
            topic: self.node.topic.clone(),
            host: self.node.host.clone(),
            binary: self.node.binary.clone(),
            version: self.node.version.clone(),
            endpoints: self.node.endpoints(),
            services: advertised,
            workers: config.workers,
            report_interval: config.report_interval,
            service_down_time: config.service_down_time,
        };
        let membership = match registry.join(registration).await {
            Ok(m) => Arc::<dyn Membership>::from(m),
            Err(e) => {
                server.set_serving(false).await;
                server.abort();
                return Err(e);
            }
        };
        set(&self.node.membership, Some(membership));
        tracing::info!(
            topic = %self.node.topic,
            host = %self.node.host,
            endpoint = %addr,
            registry = %config.registry,
            "node serving and registered"
        );
        Ok(())
    }

    async fn stop_inner(&self) -> Result<()> {
        let config = self.node.config();
        // 1. Stop advertising: watchers see the leave at once.
        let membership = self.node.membership.write().ok().and_then(|mut m| m.take());
        if let Some(membership) = membership {
            if let Err(e) = membership.leave().await {
                tracing::warn!(error = %e, "leaving the service group failed; the lease will expire");
            }
        }
        if let Some(server) = self.server() {
            // 2. Health checkers stop routing here too.
            server.set_serving(false).await;
            // 3. Give clients the time to act on the leave before listeners close.
            tokio::time::sleep(config.drain_delay).await;
            // 4. Stop accepting; in-flight calls finish (bounded by the launcher).
            server.drain().await?;
        }
        // 5. Release host resources once nothing runs any more.
        self.manager
            .cleanup_host()
            .await
            .map_err(hook("cleanup_host"))?;
        tracing::info!(topic = %self.node.topic, host = %self.node.host, "node stopped");
        Ok(())
    }
}

impl<M: Manager> Service for RpcService<M> {
    fn name(&self) -> String {
        format!("{}/{}", self.node.topic, self.node.host)
    }

    fn start(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.start_inner())
    }

    fn stop(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.stop_inner())
    }

    fn wait(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            match self.server() {
                Some(server) => server.wait().await,
                None => Ok(()),
            }
        })
    }

    fn reset(&self, config: &Config) -> BoxFuture<'_, Result<()>> {
        let config = config.clone();
        Box::pin(async move {
            set(&self.node.config, config);
            self.manager.reset().await.map_err(hook("reset"))
        })
    }

    fn report(&self) -> serde_json::Value {
        self.node.report()
    }
}

/// The URL clients use: the bound address, with the host name in place of
/// an unspecified IP (a node bound to 0.0.0.0 is reached by its name).
fn advertised_url(addr: SocketAddr, host: &str) -> String {
    if addr.ip().is_unspecified() {
        format!("http://{host}:{}", addr.port())
    } else {
        format!("http://{addr}")
    }
}

fn hook(name: &'static str) -> impl Fn(BoxError) -> Error {
    move |source| Error::Hook { hook: name, source }
}

fn set<T>(slot: &RwLock<T>, value: T) {
    if let Ok(mut guard) = slot.write() {
        *guard = value;
    }
}
