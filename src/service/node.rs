//! [`Node`]: the server side of svckit, one running instance of a binary
//! serving a manager's API on a topic (nova's `Service`), with the start and
//! stop order of the README. The client side is [`crate::rpc`].

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::future::BoxFuture;
use tonic::server::NamedService;
use tonic::service::Routes;

use super::base::BaseApi;
use super::grpc::{self, GrpcServer};
use super::info::{NodeInfo, NodeState};
use super::{Service, StartContext};
use crate::config::Config;
use crate::dashboard::{Dashboard, DashboardOptions, NODE_PATH as DASHBOARD_PATH};
use crate::error::{BoxError, Error, Result};
use crate::http::{self, HttpOptions, HttpServer};
use crate::manager::{Manager, Services};
use crate::pb::base::v1::base_server::BaseServer;
use crate::periodic::{self, Job, Scope};
use crate::servicegroup::{self, Endpoints, Membership, Registration, Registry};
use crate::telemetry::metrics::Metrics;
use crate::tls::ServerTls;

/// Bound on leaving the service group at stop: an etcd that does not answer
/// must not delay NOT_SERVING and the drain (the lease expires anyway).
const LEAVE_TIMEOUT: Duration = Duration::from_secs(2);

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
        let binary = self.binary.unwrap_or_else(crate::launcher::program_name);
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

    /// `Node::builder(manager).build(config)`.
    pub fn create(config: &Config, manager: M) -> Self {
        Self::builder(manager).build(config)
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

    async fn start_inner(&self, context: StartContext) -> Result<()> {
        let config = self.node.config();
        self.node.set_worker(context.worker);
        // Unusable certificate files refuse the start before anything else.
        let tls = ServerTls::from_config(&config)?;
        // The registry is reached first: if it is down, the start fails
        // before anything was bound or initialised (exit 69). A supervised
        // worker leaves the registry to its supervisor.
        let registry = if context.worker.is_some() {
            None
        } else {
            Some(servicegroup::connect(&config.registry, &config.registry_options()).await?)
        };
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
                router: self
                    .http_router(registry.clone(), &config, &metrics)
                    .await?,
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
            let router = self
                .http_router(registry.clone(), &config, &metrics)
                .await?;
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

        let Some(registry) = registry else {
            self.node.set_ready(true);
            tracing::info!(topic = %self.node.topic, host = %self.node.host, endpoint = %addr, "worker serving");
            self.start_periodic(None).await;
            return Ok(());
        };
        // Advertised only now: a node is never listed before it can answer.
        let registration =
            self.registration_for(self.node.endpoints(), advertised, config.workers.0);
        let membership = match registry.join(registration).await {
            Ok(m) => Arc::<dyn Membership>::from(m),
            Err(e) => {
                server.set_serving(false).await;
                server.abort();
                self.cleanup_after_failed_start().await;
                return Err(e);
            }
        };
        self.node.set_membership(Some(membership));
        self.node.set_ready(true);
        if let Some(path) = &config.ready_file {
            write_ready_file(path, &self.node.endpoints())?;
        }
        tracing::info!(
            topic = %self.node.topic,
            host = %self.node.host,
            endpoint = %addr,
            registry = %config.registry,
            "node serving and registered"
        );
        self.start_periodic(Some(registry)).await;
        Ok(())
    }

    /// The HTTP stack: the manager's routes, the admin endpoints, and the
    /// dashboard when `http_dashboard` is on.
    async fn http_router(
        &self,
        registry: Option<Registry>,
        config: &Config,
        metrics: &Metrics,
    ) -> Result<axum::Router> {
        let mut admin = http::admin::routes(self.node.clone());
        if config.http_dashboard {
            let dashboard = self.dashboard(registry, config).await?;
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

    /// The dashboard of `http_dashboard`, on the node's registry; a worker,
    /// which has none, opens its own (a read-only watch).
    async fn dashboard(&self, registry: Option<Registry>, config: &Config) -> Result<Dashboard> {
        let registry = match registry {
            Some(registry) => registry,
            None => servicegroup::connect(&config.registry, &config.registry_options()).await?,
        };
        Ok(Dashboard::start(registry, DashboardOptions::default()))
    }

    fn jobs(&self) -> Vec<Job> {
        self.manager
            .periodic_tasks()
            .into_iter()
            .map(|task| task.bind(self.manager.clone()))
            .collect()
    }

    /// Starts the periodic tasks that run in this process, once the node is
    /// serving and registered. A worker campaigns for its topic tasks
    /// itself: its supervisor registers the node but runs no task.
    async fn start_periodic(&self, registry: Option<Registry>) {
        let config = self.node.config();
        let jobs = self.jobs();
        let worker = self.node.worker();
        let campaigns = jobs
            .iter()
            .any(|j| j.spec.scope == Scope::Topic && periodic::runs_here(&j.spec, worker));
        let registry = match registry {
            Some(registry) => Some(registry),
            None if campaigns && config.periodic_enable => {
                match servicegroup::connect(&config.registry, &config.registry_options()).await {
                    Ok(registry) => {
                        self.node.set_registry(Some(registry.clone()));
                        Some(registry)
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot reach the registry to elect topic tasks; periodic tasks do not run");
                        return;
                    }
                }
            }
            None => None,
        };
        match periodic::start(jobs, worker, &config, &self.node.topic, registry.as_ref()).await {
            Ok(timer) => self.node.set_periodic(timer),
            Err(e) => tracing::error!(error = %e, "periodic tasks do not run"),
        }
    }

    fn registration_for(
        &self,
        endpoints: Endpoints,
        services: Vec<String>,
        workers: u32,
    ) -> Registration {
        let config = self.node.config();
        Registration {
            topic: self.node.topic.clone(),
            host: self.node.host.clone(),
            binary: self.node.binary.clone(),
            version: self.node.version.clone(),
            endpoints,
            services,
            workers,
            report_interval: config.report_interval,
            service_down_time: config.service_down_time,
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
        let config = self.node.config();
        // `/readyz` turns 503 first: HTTP load balancers stop sending too.
        self.node.set_ready(false);
        self.node.set_state(NodeState::Stopping);
        // 0. No periodic run starts from here on; one in progress may finish.
        let periodic = self.node.periodic();
        if let Some(timer) = &periodic {
            timer.stop_scheduling();
        }
        // 1. Stop advertising: watchers see the leave at once. Bounded, so
        //    an etcd black hole cannot hold the drain.
        if let Some(membership) = self.node.take_membership() {
            match tokio::time::timeout(LEAVE_TIMEOUT, membership.leave()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "leaving the service group failed; the lease will expire")
                }
                Err(_) => tracing::warn!(
                    timeout = ?LEAVE_TIMEOUT,
                    "leaving the service group timed out; the lease will expire"
                ),
            }
        }
        if let Some(path) = &config.ready_file {
            let _ = std::fs::remove_file(path);
        }
        if let Some(server) = self.server() {
            // 2. Health checkers stop routing here too.
            server.set_serving(false).await;
            // 3. Give clients the time to act on the leave before listeners
            //    close. A worker has not left anything: its supervisor did,
            //    and waited; a worker being replaced stops accepting at once
            //    so that new connections go to the others.
            if self.node.worker().is_none() {
                tokio::time::sleep(config.drain_delay).await;
            }
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

    fn start(&self, context: StartContext) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.node.set_state(NodeState::Starting);
            let started = self.start_inner(context).await;
            self.node.set_state(match started {
                Ok(()) => NodeState::Serving,
                Err(_) => NodeState::Stopped,
            });
            started
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

    fn registration(&self, endpoints: Endpoints, workers: u32) -> Option<Registration> {
        // The names only: the manager's services are listed, not started.
        let mut services = Services::new(self.node.config().max_message_size);
        self.manager.services(&mut services);
        let (_, names, _) = services.into_parts();
        let mut advertised: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        advertised.push(BaseServer::<BaseApi>::NAME.to_string());
        Some(self.registration_for(endpoints, advertised, workers))
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

/// Writes the advertised endpoints as JSON, atomically: a reader sees the
/// whole file or none.
pub(crate) fn write_ready_file(path: &Path, endpoints: &Endpoints) -> Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    let mut file = tempfile::NamedTempFile::new_in(dir.unwrap_or(Path::new(".")))?;
    let value = serde_json::json!({
        "grpc": endpoints.grpc,
        "http": endpoints.http,
        "pid": std::process::id(),
    });
    serde_json::to_writer(&mut file, &value).map_err(std::io::Error::from)?;
    file.persist(path).map_err(|e| Error::Io(e.error))?;
    Ok(())
}
