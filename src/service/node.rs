//! [`Node`]: the server side of svckit, one running instance of a binary
//! serving a manager's API on a topic (nova's `Service`), with the start and
//! stop order of the README. The client side is [`crate::rpc`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::future::BoxFuture;
use tonic::server::NamedService;
use tonic::service::Routes;

use super::base::BaseApi;
use super::grpc::{self, GrpcServer};
use super::info::{NodeInfo, NodeState};
use super::{Advertised, Service, StartContext};
use crate::config::Config;
use crate::dashboard::{Dashboard, DashboardOptions, NODE_PATH as DASHBOARD_PATH};
use crate::error::{BoxError, Error, Result};
use crate::http::{self, HttpOptions, HttpServer};
use crate::manager::{Manager, Services};
use crate::pb::base::v1::base_server::BaseServer;
use crate::periodic::{self, Job, Scope};
use crate::servicegroup::{Advert, Endpoints, RegistryHandle};
use crate::telemetry::metrics::Metrics;
use crate::tls::ServerTls;

/// Builds a [`Node`]; the defaults are nova's (`binary` from `argv[0]`,
/// `topic` from the binary).
#[must_use]
pub struct NodeBuilder<M> {
    manager: M,
    binary: Option<String>,
    topic: Option<String>,
    version: String,
}

impl<M: Manager> NodeBuilder<M> {
    /// The binary name recorded in the service group.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # struct Conductor;
    /// # impl svckit::Manager for Conductor { fn services(self: &Arc<Self>, _: &mut svckit::manager::Services) {} }
    /// # let config = svckit::Config::default();
    /// let node = svckit::Node::builder(Conductor).binary("conductor").build(&config);
    /// assert_eq!(node.info().binary, "conductor");
    /// ```
    pub fn binary(mut self, binary: impl Into<String>) -> Self {
        self.binary = Some(binary.into());
        self
    }

    /// The topic served when the config sets none.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # struct Echo;
    /// # impl svckit::Manager for Echo { fn services(self: &Arc<Self>, _: &mut svckit::manager::Services) {} }
    /// # let config = svckit::Config::default();
    /// let node = svckit::Node::builder(Echo).topic("echo").build(&config);
    /// assert_eq!(node.info().topic, "echo");
    /// ```
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.topic = Some(topic.into());
        self
    }

    /// The software version recorded in the service group.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # struct Echo;
    /// # impl svckit::Manager for Echo { fn services(self: &Arc<Self>, _: &mut svckit::manager::Services) {} }
    /// # let config = svckit::Config::default();
    /// let node = svckit::Node::builder(Echo).version("1.2.0").build(&config);
    /// assert_eq!(node.info().version, "1.2.0");
    /// ```
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = version.into();
        self
    }

    /// The service, for `config`'s host, registry and listeners. The topic is
    /// the config's `topic`, else the builder's, else the binary name
    /// without a `svckit-` prefix.
    pub fn build(self, config: &Config) -> Node<M> {
        let binary = self.binary.unwrap_or_else(crate::config::program_name);
        let topic = config.topic.clone().or(self.topic).unwrap_or_else(|| {
            binary
                .strip_prefix("svckit-")
                .unwrap_or(&binary)
                .to_string()
        });
        Node {
            node: Arc::new(NodeInfo::new(
                config.host.clone(),
                topic,
                binary,
                self.version,
                config.clone(),
            )),
            manager: Arc::new(self.manager),
            server: Mutex::new(None),
            http: Mutex::new(None),
            dashboard: Mutex::new(None),
            drain_delay: Mutex::new(Duration::ZERO),
            initialised: AtomicBool::new(false),
        }
    }
}

/// A node: the manager's gRPC services plus `Base`, health and reflection,
/// on one listener, registered in the service group while it serves.
pub struct Node<M> {
    node: Arc<NodeInfo>,
    manager: Arc<M>,
    server: Mutex<Option<Arc<GrpcServer>>>,
    http: Mutex<Option<Arc<HttpServer>>>,
    /// The read-only dashboard at `/debug/members` (`http_dashboard`),
    /// whose event streams are closed before the HTTP drain: they never end
    /// by themselves.
    dashboard: Mutex<Option<Dashboard>>,
    /// The wait between NOT_SERVING and closing the listeners, from the
    /// launcher's start context.
    drain_delay: Mutex<Duration>,
    /// `init_host` succeeded, so `cleanup_host` has something to release.
    initialised: AtomicBool,
}

impl<M: Manager> Node<M> {
    /// A builder with nova's defaults.
    pub fn builder(manager: M) -> NodeBuilder<M> {
        NodeBuilder {
            manager,
            binary: None,
            topic: None,
            version: String::from("0.0.0"),
        }
    }

    /// The node's identity and state.
    pub fn info(&self) -> &Arc<NodeInfo> {
        &self.node
    }

    fn server(&self) -> Option<Arc<GrpcServer>> {
        self.server
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    async fn start_inner(&self, context: StartContext) -> Result<Advert> {
        let config = self.node.config();
        self.node.set_worker(context.worker);
        *self
            .drain_delay
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = context.drain_delay;
        // Unusable certificate files refuse the start before anything else.
        let tls = ServerTls::from_config(&config)?;
        let registry = context.registry;
        self.node.set_registry(registry.clone());
        let listener = match context.listener {
            Some(inherited) => inherited,
            None => grpc::bind(config.rpc_listen)?,
        };
        let addr = listener.local_addr()?;
        let http_listener = match (context.http_listener, config.http_listen) {
            (Some(inherited), _) => Some(inherited),
            (None, Some(http)) => Some(grpc::bind(http)?),
            (None, None) => None,
        };
        let grpc_url = advertised_url(addr, &self.node.host, tls.is_some());
        let http_url = match &http_listener {
            Some(l) => Some(advertised_url(
                l.local_addr()?,
                &self.node.host,
                tls.is_some(),
            )),
            None if config.http_shared_port => Some(grpc_url.clone()),
            None => None,
        };
        self.node.set_endpoints(Endpoints {
            grpc: Some(grpc_url),
            http: http_url,
        });

        self.manager.init_host().await.map_err(hook("init_host"))?;
        self.initialised.store(true, Ordering::SeqCst);
        if let Err(e) = self.manager.pre_start_hook().await {
            self.cleanup_after_failed_start().await;
            return Err(hook("pre_start_hook")(e));
        }

        let (routes, advertised, health) = match self.routes(&config) {
            Ok(built) => built,
            Err(e) => {
                self.cleanup_after_failed_start().await;
                return Err(e);
            }
        };
        let mut health_names = advertised.clone();
        health_names.push(String::new());
        let metrics = self.node.metrics().clone();
        let limits = grpc::Limits {
            max_message_size: config.max_message_size,
            pool_size: config.rpc_pool_size,
            pool_wait: config.rpc_pool_wait,
        };
        let server = if config.http_shared_port {
            let http = grpc::SharedHttp {
                router: self.http_router(&registry, &config, &metrics).await?,
                options: HttpOptions::from_config(&config),
                tls: tls.as_ref().map(ServerTls::http_acceptor),
            };
            GrpcServer::start_shared(
                listener,
                routes,
                health,
                health_names,
                &metrics,
                limits,
                http,
            )
            .await?
        } else {
            let accept = grpc::Accept {
                connections: self.node.connections.clone(),
                tls: tls.as_ref().map(ServerTls::grpc_acceptor),
            };
            GrpcServer::start(
                listener,
                routes,
                health,
                health_names,
                &metrics,
                accept,
                limits,
            )
            .await?
        };
        let server = Arc::new(server);
        *self.server.lock().unwrap_or_else(PoisonError::into_inner) = Some(server.clone());
        if let Some(http_listener) = http_listener {
            let router = self.http_router(&registry, &config, &metrics).await?;
            let options = HttpOptions::from_config(&config);
            let tls = tls.as_ref().map(ServerTls::http_acceptor);
            let http = HttpServer::start(http_listener, router, &options, tls, None)?;
            *self.http.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(http));
        }
        if let Err(e) = self.manager.post_start_hook().await {
            server.abort();
            self.cleanup_after_failed_start().await;
            return Err(hook("post_start_hook")(e));
        }
        server.set_serving(true).await;
        tracing::info!(topic = %self.node.topic, host = %self.node.host, endpoint = %addr, "node serving");
        Ok(Advert::new(
            self.node.topic.clone(),
            self.node.host.clone(),
            self.node.binary.clone(),
            self.node.version.clone(),
            self.node.endpoints(),
            advertised,
        ))
    }

    /// The HTTP stack: the manager's routes, the admin endpoints, and the
    /// dashboard when `http_dashboard` is on.
    async fn http_router(
        &self,
        registry: &RegistryHandle,
        config: &Config,
        metrics: &Metrics,
    ) -> Result<axum::Router> {
        let mut admin = super::ops::routes(self.node.clone());
        if config.http_dashboard {
            let dashboard = self.dashboard(registry).await?;
            admin = admin.merge(dashboard.routes(DASHBOARD_PATH));
            *self
                .dashboard
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(dashboard);
        }
        let api = self.manager.http_routes().unwrap_or_default();
        Ok(http::stack(
            api,
            admin,
            &HttpOptions::from_config(config),
            metrics,
        ))
    }

    /// The dashboard of `http_dashboard`, a read-only watch on the
    /// process's registry.
    async fn dashboard(&self, registry: &RegistryHandle) -> Result<Dashboard> {
        Ok(Dashboard::start(
            registry.get().await?,
            DashboardOptions::default(),
        ))
    }

    fn jobs(&self) -> Vec<Job> {
        self.manager
            .periodic_tasks()
            .into_iter()
            .map(|task| task.bind(self.manager.clone()))
            .collect()
    }

    /// Starts the periodic tasks that run in this process, once the node is
    /// advertised. Tasks of topic scope campaign on the process's registry.
    async fn start_periodic(&self) {
        let config = self.node.config();
        let jobs = self.jobs();
        let worker = self.node.worker();
        let campaigns = jobs
            .iter()
            .any(|j| j.spec.scope == Scope::Topic && periodic::runs_here(&j.spec, worker));
        let registry = match self.node.registry_handle() {
            Some(handle) if campaigns && config.periodic_enable => match handle.get().await {
                Ok(registry) => Some(registry),
                Err(e) => {
                    tracing::error!(error = %e, "cannot reach the registry to elect topic tasks; periodic tasks do not run");
                    return;
                }
            },
            _ => None,
        };
        match periodic::start(jobs, worker, &config, &self.node.topic, registry.as_ref()).await {
            Ok(timer) => self.node.set_periodic(timer),
            Err(e) => tracing::error!(error = %e, "periodic tasks do not run"),
        }
    }

    /// The manager's services plus `Base`, health and reflection; the names
    /// advertised; the health reporter of them all.
    fn routes(
        &self,
        config: &Config,
    ) -> Result<(Routes, Vec<String>, tonic_health::server::HealthReporter)> {
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
        self.node.set_services(advertised.clone());
        Ok((routes, advertised, health))
    }

    /// After `init_host` succeeded and a later step failed, the host is
    /// released before the error is returned.
    async fn cleanup_after_failed_start(&self) {
        if self.initialised.swap(false, Ordering::SeqCst) {
            if let Err(e) = self.manager.cleanup_host().await {
                tracing::error!(error = %e, "cleanup_host failed after a failed start");
            }
        }
    }

    async fn stop_inner(&self) -> Result<()> {
        // `/readyz` turns 503 first: HTTP load balancers stop sending too.
        self.node.set_ready(false);
        self.node.set_state(NodeState::Stopping);
        // 0. No periodic run starts from here on; one in progress may finish.
        let periodic = self.node.periodic();
        if let Some(timer) = &periodic {
            timer.stop_scheduling();
        }
        // 1. The launcher has left the service group: watchers saw the leave.
        if let Some(server) = self.server() {
            // 2. Health checkers stop routing here too.
            server.set_serving(false).await;
            // 3. Give clients the time to act on the leave before listeners
            //    close (none for a worker: its supervisor left and waited).
            let drain_delay = *self
                .drain_delay
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            tokio::time::sleep(drain_delay).await;
            // 4. Stop accepting; in-flight calls finish (bounded by the launcher).
            let http = self
                .http
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            if let Some(dashboard) = self
                .dashboard
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take()
            {
                dashboard.close();
            }
            let http_drained = async {
                if let Some(http) = http {
                    http.drain().await;
                }
            };
            let (grpc_drained, ()) = tokio::join!(server.drain(), http_drained);
            grpc_drained?;
        }
        // 5. Wait for a periodic run in progress (within the launcher's
        //    deadline); its elections are resigned once it finished.
        if let Some(timer) = periodic {
            timer.stop().await;
        }
        // 6. Release host resources once nothing runs any more.
        if self.initialised.swap(false, Ordering::SeqCst) {
            self.manager
                .cleanup_host()
                .await
                .map_err(hook("cleanup_host"))?;
        }
        self.node.set_state(NodeState::Stopped);
        tracing::info!(topic = %self.node.topic, host = %self.node.host, "node stopped");
        Ok(())
    }
}

impl<M: Manager> Service for Node<M> {
    fn name(&self) -> String {
        format!("{}/{}", self.node.topic, self.node.host)
    }

    fn start(&self, context: StartContext) -> BoxFuture<'_, Result<Option<Advert>>> {
        Box::pin(async move {
            self.node.set_state(NodeState::Starting);
            let started = self.start_inner(context).await;
            self.node.set_state(match started {
                Ok(_) => NodeState::Serving,
                Err(_) => NodeState::Stopped,
            });
            started.map(Some)
        })
    }

    fn advertised(&self, advertised: Advertised) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.node.set_advertised(advertised);
            self.node.set_ready(true);
            self.start_periodic().await;
        })
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
            self.node.set_config(config.clone());
            let reset = self.manager.reset().await.map_err(hook("reset"));
            if let Some(timer) = self.node.periodic() {
                let specs: Vec<_> = self.jobs().into_iter().map(|j| j.spec).collect();
                timer.update(config.periodic_interval_max, &specs);
            }
            reset
        })
    }

    fn report(&self) -> BoxFuture<'_, serde_json::Value> {
        Box::pin(self.node.report())
    }
}

/// The URL clients use: the bound address, with the host name in place of
/// an unspecified IP (a node bound to 0.0.0.0 is reached by its name);
/// `https://` when the listener speaks TLS.
pub fn advertised_url(addr: SocketAddr, host: &str, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    if addr.ip().is_unspecified() {
        format!("{scheme}://{host}:{}", addr.port())
    } else {
        format!("{scheme}://{addr}")
    }
}

fn hook(name: &'static str) -> impl Fn(BoxError) -> Error {
    move |source| Error::Hook { hook: name, source }
}
