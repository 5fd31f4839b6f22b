//! The gRPC side of a node: listener, tower stack, health, reflection.

use std::net::SocketAddr;
use std::time::Duration;

use socket2::{Domain, Socket, Type};
use std::sync::{Arc, Mutex};

use futures::StreamExt;

use hyper::body::Incoming;
use tokio::sync::{oneshot, watch};
use tokio::task::AbortHandle;
use tokio_rustls::TlsAcceptor;
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;
use tower::util::BoxCloneSyncService;
use tower::ServiceBuilder;
use tower_http::trace::TraceLayer;

use super::conn::Connections;
use super::limits::StatusLayer;
use super::orca::CallReports;
use super::pool::RpcPoolLayer;
use crate::admission::Limiter;
use crate::error::{Error, Result};
use crate::http::{HttpOptions, HttpServer};
use crate::telemetry::metrics::Metrics;
use crate::telemetry::trace;
use crate::tls;

/// Binds a listening socket the way servers should: SO_REUSEADDR so a
/// restarted node gets its port back while old connections sit in
/// TIME_WAIT, and a backlog large enough for bursts of reconnects.
pub(crate) fn bind(addr: SocketAddr) -> Result<std::net::TcpListener> {
    let bind_err = |source| Error::bind(addr, source);
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).map_err(bind_err)?;
    socket.set_reuse_address(true).map_err(bind_err)?;
    socket.set_nonblocking(true).map_err(bind_err)?;
    socket.bind(&addr.into()).map_err(bind_err)?;
    socket.listen(1024).map_err(bind_err)?;
    Ok(socket.into())
}

/// How the gRPC listener takes connections.
pub(crate) struct Accept {
    /// Counts them for the report.
    pub(crate) connections: Arc<Connections>,
    /// The TLS handshake each goes through, when the node has a certificate.
    pub(crate) tls: Option<TlsAcceptor>,
}

/// What one call may take.
pub(crate) struct Limits {
    /// Largest message, in bytes.
    pub(crate) max_message_size: usize,
    /// Calls served at once (see [`super::pool`]).
    pub(crate) pool_size: usize,
    /// How long a call waits for a slot before it is refused.
    pub(crate) pool_wait: Duration,
    /// Whether the adaptive limit applies under the pool (`rpc_admission`).
    pub(crate) adaptive: bool,
    /// Whether each answer carries the node's load report
    /// (`rpc_load_report_trailer`).
    pub(crate) load_report_trailer: bool,
}

/// Adds the layers every gRPC call passes, outermost first, to a tonic
/// `Server` builder or a tower `ServiceBuilder` (a port shared with HTTP):
/// its span, the trace context, the metrics, admission and the pool, the
/// message size limit and the per-call load report.
macro_rules! grpc_layers {
    ($builder:expr, $metrics:expr, $limits:expr) => {
        $builder
            .layer(
                TraceLayer::new_for_grpc()
                    .make_span_with(|r: &http::Request<_>| trace::grpc_span(r))
                    .on_failure(trace::grpc_failure),
            )
            .layer($metrics.trace_context())
            .layer($metrics.grpc_layer())
            .layer($limits.pool($metrics))
            .layer(StatusLayer {
                max: $limits.max_message_size,
                reports: $limits
                    .load_report_trailer
                    .then(|| CallReports::new($metrics.load_figures())),
            })
    };
}

impl Limits {
    /// The limit and pool every call passes, counted in `metrics`.
    fn pool(&self, metrics: &Metrics) -> RpcPoolLayer {
        let limiter = Limiter::new(
            self.adaptive,
            self.pool_size,
            metrics.load(),
            metrics.admission("grpc"),
        );
        RpcPoolLayer::new(limiter, self.pool_size, self.pool_wait)
    }
}

/// The HTTP side when it shares the gRPC port (`http_shared_port`).
pub(crate) struct SharedHttp {
    /// The HTTP stack: the manager's routes and the admin endpoints.
    pub(crate) router: axum::Router,
    pub(crate) options: HttpOptions,
    /// The HTTP acceptor (ALPN h2 and http/1.1), when the node has TLS.
    pub(crate) tls: Option<TlsAcceptor>,
}

/// A running gRPC server. Every method takes `&self`, so one task can wait
/// on the server while another drains it.
pub(crate) struct GrpcServer {
    health: HealthReporter,
    /// Every service name with a health status ("" is the whole server).
    names: Vec<String>,
    shutdown: Mutex<Option<oneshot::Sender<()>>>,
    task: AbortHandle,
    /// `Some` once the server task ended: `Ok` after a drain, `Err` on failure.
    /// How the server task ended, once it did.
    done: watch::Receiver<Option<Result<(), Arc<tonic::transport::Error>>>>,
    /// The server of a port shared with HTTP, which serves the gRPC calls.
    shared: Option<Arc<HttpServer>>,
}

impl GrpcServer {
    /// Starts serving `routes` on `listener`, health NOT_SERVING for every
    /// name until [`GrpcServer::set_serving`].
    pub(crate) async fn start(
        listener: std::net::TcpListener,
        routes: Routes,
        health: HealthReporter,
        names: Vec<String>,
        metrics: &Metrics,
        accept: Accept,
        limits: Limits,
    ) -> Result<Self> {
        let Accept { connections, tls } = accept;
        not_serving(&health, &names).await;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let incoming = TcpIncoming::from(listener)
            .with_nodelay(Some(true))
            .with_keepalive(Some(Duration::from_secs(600)))
            .then(|accepted| async move {
                if let Err(e) = &accepted {
                    crate::admission::pause_after_accept_error("grpc", e).await;
                }
                accepted
            })
            // A connection refused by the limit is dropped here, so closed.
            .filter_map(move |accepted| {
                futures::future::ready(match accepted {
                    Ok(stream) => connections.track(stream).map(Ok),
                    Err(e) => Some(Err(e)),
                })
            });
        let incoming = tls::incoming(incoming, tls);
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let (done_tx, done) = watch::channel(None);
        let router = Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)));
        let router = grpc_layers!(router, metrics, limits).add_routes(routes);
        let task = tokio::spawn(async move {
            let result = router
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = shutdown_rx.await;
                })
                .await
                .map_err(Arc::new);
            let _ = done_tx.send(Some(result));
        });
        Ok(GrpcServer {
            health,
            names,
            shutdown: Mutex::new(Some(shutdown_tx)),
            task: task.abort_handle(),
            done,
            shared: None,
        })
    }

    /// [`GrpcServer::start`] on a port shared with HTTP: the HTTP server
    /// takes the connections (its limits and timeouts apply to both) and
    /// hands requests with a gRPC content-type to the same gRPC stack.
    pub(crate) async fn start_shared(
        listener: std::net::TcpListener,
        routes: Routes,
        health: HealthReporter,
        names: Vec<String>,
        metrics: &Metrics,
        limits: Limits,
        http: SharedHttp,
    ) -> Result<Self> {
        not_serving(&health, &names).await;
        let grpc = ServiceBuilder::new()
            .map_request(|r: http::Request<Incoming>| r.map(tonic::body::Body::new))
            .map_response(|r: http::Response<_>| r.map(axum::body::Body::new));
        let grpc = grpc_layers!(grpc, metrics, limits).service(routes.prepare());
        let server = Arc::new(HttpServer::start(
            listener,
            http.router,
            &http.options,
            http.tls,
            Some(BoxCloneSyncService::new(grpc)),
            metrics.node_scope(),
        )?);
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let (done_tx, done) = watch::channel(None);
        let draining = server.clone();
        let task = tokio::spawn(async move {
            let _ = shutdown_rx.await;
            draining.drain().await;
            let _ = done_tx.send(Some(Ok(())));
        });
        Ok(GrpcServer {
            health,
            names,
            shutdown: Mutex::new(Some(shutdown_tx)),
            task: task.abort_handle(),
            done,
            shared: Some(server),
        })
    }

    /// Sets every health status to SERVING (`true`) or NOT_SERVING.
    pub(crate) async fn set_serving(&self, serving: bool) {
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        for name in &self.names {
            self.health.set_service_status(name, status).await;
        }
    }

    /// Stops accepting and lets in-flight calls finish; resolves when the
    /// last connection closed. The caller bounds it.
    pub(crate) async fn drain(&self) -> Result<()> {
        let sender = self.shutdown.lock().ok().and_then(|mut s| s.take());
        if let Some(tx) = sender {
            let _ = tx.send(());
        }
        self.wait().await
    }

    /// Resolves when the server task ended (after a drain, or on failure).
    pub(crate) async fn wait(&self) -> Result<()> {
        let mut done = self.done.clone();
        let ended = done.wait_for(Option::is_some).await.map(|r| r.clone());
        match ended {
            Ok(Some(Err(e))) => Err(Error::from(std::io::Error::other(e))),
            Ok(_) => Ok(()),
            // The task is gone without a word: it was aborted.
            Err(_) => Err(Error::from(std::io::Error::new(
                std::io::ErrorKind::Interrupted,
                "the gRPC server task was aborted",
            ))),
        }
    }

    /// Ends the server at once, cutting off in-flight calls (on a shared
    /// port: stops accepting; the process is about to exit).
    pub(crate) fn abort(&self) {
        self.task.abort();
        if let Some(server) = &self.shared {
            server.stop_accepting();
        }
    }
}

/// Every name NOT_SERVING until the node is ready.
async fn not_serving(health: &HealthReporter, names: &[String]) {
    for name in names {
        health
            .set_service_status(name, ServingStatus::NotServing)
            .await;
    }
}
