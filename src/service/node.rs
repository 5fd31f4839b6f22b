//! [`Node`]: the server side of svckit, one running instance of a binary
//! serving a manager's API on a topic (nova's `Service`), with the start and
//! stop order of docs/lifecycle.md. The client side is [`crate::rpc`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tonic::server::NamedService;
use tonic::service::Routes;

use super::base::BaseApi;
use super::builder::NodeBuilder;
use super::grpc::{self, GrpcServer};
use super::info::{NodeInfo, NodeState};
use super::orca::OrcaApi;
use super::{Advertised, Service, StartContext};
use crate::config::{AdmissionMode, Config};
use crate::dashboard::{Dashboard, DashboardOptions, NODE_PATH as DASHBOARD_PATH};
use crate::error::{BoxError, Error, Result};
use crate::http::{self, HttpOptions, HttpServer};
use crate::manager::{GrpcServices, Manager};
use crate::pb::base::v1::base_server::BaseServer;
use crate::pb::xds::service::orca::v3::open_rca_service_server::OpenRcaServiceServer;
use crate::periodic::{self, Job, Scope};
use crate::servicegroup::{Advert, Endpoints, RegistryHandle};
use crate::telemetry::metrics::Metrics;
use crate::telemetry::trace;

/// How long a stopping node waits for its last spans to leave.
const SPAN_FLUSH: Duration = Duration::from_secs(2);
use crate::tls::ServerTls;

/// A node: the manager's gRPC services plus `Base`, health and reflection,
/// on one listener, registered in the service group while it serves.
pub struct Node<M> {
    node: Arc<NodeInfo>,
    manager: Arc<M>,
    /// What the node runs, set once when it serves.
    running: Mutex<Option<Running>>,
    /// `init_host` succeeded, so `cleanup_host` has something to release.
    initialised: AtomicBool,
}

/// The servers of a node that serves, and how to drain them.
#[derive(Clone)]
struct Running {
    grpc: Arc<GrpcServer>,
    http: Option<Arc<HttpServer>>,
    /// The read-only dashboard at `/debug/members` (`http_dashboard`),
    /// whose event streams are closed before the HTTP drain: they never end
    /// by themselves.
    dashboard: Option<Dashboard>,
    /// The wait between NOT_SERVING and closing the listeners, from the
    /// launcher's start context.
    drain_delay: Duration,
}

/// The listeners of a node, bound or inherited, and the URLs they are
/// reached at.
struct Bound {
    grpc: std::net::TcpListener,
    http: Option<std::net::TcpListener>,
    endpoints: Endpoints,
}

impl<M: Manager> Node<M> {
    pub(super) fn new(node: Arc<NodeInfo>, manager: M) -> Self {
        Node {
            node,
            manager: Arc::new(manager),
            running: Mutex::new(None),
            initialised: AtomicBool::new(false),
        }
    }

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

    fn running(&self) -> Option<Running> {
        crate::sync::lock(&self.running).clone()
    }

    async fn start_inner(&self, context: StartContext) -> Result<Advert> {
        let config = self.node.config();
        self.node.set_worker(context.worker);
        if let Some(figures) = &context.figures {
            self.node.metrics().worker_figures(figures.clone());
        }
        if let Some(slot) = context.in_flight {
            self.node.metrics().share_in_flight(slot);
        }
        // Unusable certificate files refuse the start before anything else.
        let tls = ServerTls::from_config(&config)?;
        self.node.set_registry(context.registry.clone());
        let drain_delay = context.drain_delay;
        let bound = self.bind(context, &config, tls.is_some())?;
        let addr = bound.grpc.local_addr()?;
        self.node.set_endpoints(bound.endpoints.clone());

        // The hooks run as the node's own work: an RPC client made there
        // shows on its metrics, its calls go with its spans.
        let scope = || self.node.metrics().node_scope();
        trace::within(scope(), self.manager.init_host())
            .await
            .map_err(hook("init_host"))?;
        self.initialised.store(true, Ordering::SeqCst);
        let served = async {
            trace::within(scope(), self.manager.pre_start_hook())
                .await
                .map_err(hook("pre_start_hook"))?;
            self.serve(bound, &config, tls.as_ref(), drain_delay).await
        };
        let (advertised, running) = match served.await {
            Ok(served) => served,
            Err(e) => {
                self.cleanup_after_failed_start().await;
                return Err(e);
            }
        };
        let server = running.grpc.clone();
        *crate::sync::lock(&self.running) = Some(running);
        if let Err(e) = trace::within(scope(), self.manager.post_start_hook()).await {
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

    /// The listeners handed down, or bound here, and their URLs.
    fn bind(&self, context: StartContext, config: &Config, tls: bool) -> Result<Bound> {
        let grpc = match context.listener {
            Some(inherited) => inherited,
            None => grpc::bind(config.rpc_listen)?,
        };
        let http = match (context.http_listener, config.http_listen) {
            (Some(inherited), _) => Some(inherited),
            (None, Some(addr)) => Some(grpc::bind(addr)?),
            (None, None) => None,
        };
        let grpc_url = advertised_url(grpc.local_addr()?, &self.node.host, tls);
        let http_url = match &http {
            Some(l) => Some(advertised_url(l.local_addr()?, &self.node.host, tls)),
            None if config.http_shared_port => Some(grpc_url.clone()),
            None => None,
        };
        Ok(Bound {
            grpc,
            http,
            endpoints: Endpoints {
                grpc: Some(grpc_url),
                http: http_url,
            },
        })
    }

    /// Starts the gRPC server (health NOT_SERVING) and the HTTP one on the
    /// bound listeners; returns the gRPC names advertised and the servers.
    async fn serve(
        &self,
        bound: Bound,
        config: &Config,
        tls: Option<&ServerTls>,
        drain_delay: Duration,
    ) -> Result<(Vec<String>, Running)> {
        let (routes, advertised, health) = self.routes(config)?;
        let mut health_names = advertised.clone();
        health_names.push(String::new());
        let metrics = self.node.metrics().clone();
        let limits = grpc::Limits {
            max_message_size: config.max_message_size,
            pool_size: config.rpc_pool_size,
            pool_wait: config.rpc_pool_wait,
            adaptive: config.rpc_admission == AdmissionMode::Adaptive,
            load_report_trailer: config.rpc_load_report_trailer,
        };
        let registry = self.node.registry_handle();
        let mut dashboard = None;
        let grpc = if config.http_shared_port {
            let (router, board) = self
                .http_router(registry.as_ref(), config, &metrics)
                .await?;
            dashboard = board;
            let http = grpc::SharedHttp {
                router,
                options: HttpOptions::from_config(config),
                tls: tls.map(ServerTls::http_acceptor),
            };
            let names = health_names;
            GrpcServer::start_shared(bound.grpc, routes, health, names, &metrics, limits, http)
                .await?
        } else {
            let accept = grpc::Accept {
                connections: self.node.connections.clone(),
                tls: tls.map(ServerTls::grpc_acceptor),
            };
            let names = health_names;
            GrpcServer::start(bound.grpc, routes, health, names, &metrics, accept, limits).await?
        };
        let grpc = Arc::new(grpc);
        let mut http = None;
        if let Some(listener) = bound.http {
            let started = async {
                let (router, board) = self
                    .http_router(registry.as_ref(), config, &metrics)
                    .await?;
                let options = HttpOptions::from_config(config);
                let tls = tls.map(ServerTls::http_acceptor);
                let node = metrics.node_scope();
                let server = HttpServer::start(listener, router, &options, tls, None, node)?;
                Ok::<_, Error>((server, board))
            };
            match started.await {
                Ok((server, board)) => {
                    http = Some(Arc::new(server));
                    dashboard = board;
                }
                Err(e) => {
                    grpc.abort();
                    return Err(e);
                }
            }
        }
        let running = Running {
            grpc,
            http,
            dashboard,
            drain_delay,
        };
        Ok((advertised, running))
    }

    /// The HTTP stack: the manager's routes, the admin endpoints, and the
    /// dashboard when `http_dashboard` is on.
    async fn http_router(
        &self,
        registry: Option<&RegistryHandle>,
        config: &Config,
        metrics: &Metrics,
    ) -> Result<(axum::Router, Option<Dashboard>)> {
        let mut ops = super::ops::routes(self.node.clone());
        let mut dashboard = None;
        if let (true, Some(registry)) = (config.http_dashboard, registry) {
            // A read-only watch on the process's registry.
            let board = Dashboard::start(registry.get().await?, DashboardOptions::default());
            ops = ops.merge(board.routes(DASHBOARD_PATH));
            dashboard = Some(board);
        }
        let api = self.manager.http_routes().unwrap_or_default();
        let options = HttpOptions::from_config(config);
        Ok((http::stack(api, ops, &options, metrics), dashboard))
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
        let mut services = GrpcServices::new(config.max_message_size);
        self.manager.grpc_services(&mut services);
        let (routes, user_names, descriptor_sets) = services.into_parts();
        let (health, health_service) = tonic_health::server::health_reporter();
        let reflection = || {
            descriptor_sets.iter().fold(
                tonic_reflection::server::Builder::configure()
                    .register_encoded_file_descriptor_set(crate::pb::base::FILE_DESCRIPTOR_SET)
                    .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                    .register_encoded_file_descriptor_set(crate::pb::xds::FILE_DESCRIPTOR_SET),
                |builder, set| builder.register_encoded_file_descriptor_set(set),
            )
        };
        let reflection_err = |e: tonic_reflection::server::Error| {
            Error::config(format!("invalid file descriptor set for reflection: {e}"))
        };
        let base = BaseServer::new(BaseApi {
            node: self.node.clone(),
        })
        .max_decoding_message_size(config.max_message_size)
        .max_encoding_message_size(config.max_message_size);
        let routes = routes
            .add_service(base)
            .add_service(health_service)
            .add_service(OpenRcaServiceServer::new(OrcaApi {
                node: self.node.clone(),
            }))
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
        if let Some(running) = self.running() {
            // 2. Health checkers stop routing here too.
            running.grpc.set_serving(false).await;
            // 3. Give clients the time to act on the leave before listeners
            //    close (none for a worker: its supervisor left and waited).
            tokio::time::sleep(running.drain_delay).await;
            // 4. Stop accepting; in-flight calls finish (bounded by the launcher).
            if let Some(dashboard) = &running.dashboard {
                dashboard.close();
            }
            let http_drained = async {
                if let Some(http) = &running.http {
                    http.drain().await;
                }
            };
            let (grpc_drained, ()) = tokio::join!(running.grpc.drain(), http_drained);
            grpc_drained?;
            // Closed connections wait for their clients to close theirs: an
            // exit now would reset those whose last requests crossed the
            // GOAWAY, and lose it with them.
            self.node.connections.lingered().await;
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
        // 7. The spans still queued go to the collector, within a bound.
        if let Some(exporter) = self.node.metrics().exporter().cloned() {
            let flushed = tokio::task::spawn_blocking(move || exporter.flush());
            let _ = tokio::time::timeout(SPAN_FLUSH, flushed).await;
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
            match self.running() {
                Some(running) => running.grpc.wait().await,
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

    /// The calls and requests of its API answered (`Base/Stats`' `calls`).
    fn served(&self) -> u64 {
        self.node.metrics().totals().calls
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
    move |source| Error::hook(name, source)
}
