//! HTTP on a node (nova's `WSGIService` on eventlet.wsgi): the manager's
//! axum [`Router`] and the admin endpoints, on one listener,
//! behind the limits nova's WSGI server has.
//!
//! The stack, outermost first: access log (in a span with the request's
//! `traceparent`) → trace context for onward RPC calls → request line and
//! header line limits (414, 431) → pool of `http_pool_size` slots (wait,
//! then 503) → body limit (413) → request timeout (503) → metrics per route
//! → the manager's routes. The admin routes skip the pool and the timeout.
//! Per connection: `http_max_connections` open at once (a new one past it
//! takes the slot of the oldest that has sent nothing yet), the first byte and
//! then the headers within `header_read_timeout` (a slow or silent client
//! cannot hold a connection), nothing read or written for
//! `client_socket_timeout` closes it, keep-alive as `http_keep_alive` says,
//! SO_KEEPALIVE with `tcp_keepidle`; on a node with a certificate, the TLS
//! handshake within [`HANDSHAKE_TIMEOUT`](crate::tls::HANDSHAKE_TIMEOUT).
//!
//! A node adds its operations endpoints to this stack: `/healthz` (the process answers),
//! `/readyz` (serving and registered; 503 while starting or draining),
//! `/metrics` (Prometheus text), `/debug/report` (the node's report, JSON).

mod drain;
mod idle;
mod limits;

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;

use axum::response::IntoResponse;
use axum::Router;
use http::StatusCode;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::{DefaultOnResponse, TraceLayer};

use crate::admission::{pause_after_accept_error, Admission, Limiter};
use crate::config::{AdmissionMode, Config};
use crate::error::{BoxError, Result};
use crate::telemetry::metrics::Metrics;
use crate::telemetry::trace::NodeScope;
use crate::telemetry::trace::{self, TraceContextLayer};
use crate::tls::{self, MaybeTls};

use self::drain::{CloseWhenDraining, Drain};
use self::idle::IdleTimeout;
use self::limits::{HttpPoolLayer, LineLimitLayer};

/// The HTTP server settings, from the config.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HttpOptions {
    /// Requests in their handlers at once (`http_pool_size`).
    pub pool_size: usize,
    /// How long a request waits for a slot before a 503 (`http_pool_wait`).
    pub pool_wait: Duration,
    /// Whether the adaptive limit applies under the pool (`rpc_admission`).
    pub admission: AdmissionMode,
    /// Bound on one request (`http_request_timeout`).
    pub request_timeout: Duration,
    /// Connections open at once (`http_max_connections`).
    pub max_connections: usize,
    /// Longest request target (`max_url_len`).
    pub max_url_len: usize,
    /// Longest header line (`max_header_line`).
    pub max_header_line: usize,
    /// Largest request body (`max_request_body`).
    pub max_request_body: usize,
    /// Time to send a request's headers (`header_read_timeout`).
    pub header_read_timeout: Duration,
    /// Idle connection bound; zero for none (`client_socket_timeout`).
    pub client_socket_timeout: Duration,
    /// HTTP/1.1 keep-alive (`http_keep_alive`).
    pub keep_alive: bool,
    /// TCP keep-alive idle time (`tcp_keepidle`).
    pub tcp_keepidle: Duration,
}

impl HttpOptions {
    /// The HTTP options of `config`.
    pub fn from_config(config: &Config) -> Self {
        HttpOptions {
            pool_size: config.http_pool_size,
            pool_wait: config.http_pool_wait,
            admission: config.rpc_admission,
            request_timeout: config.http_request_timeout,
            max_connections: config.http_max_connections,
            max_url_len: config.max_url_len,
            max_header_line: config.max_header_line,
            max_request_body: config.max_request_body,
            header_read_timeout: config.header_read_timeout,
            client_socket_timeout: config.client_socket_timeout,
            keep_alive: config.http_keep_alive,
            tcp_keepidle: config.tcp_keepidle,
        }
    }
}

/// The manager's `routes` behind the request limits, and the `admin`
/// routes beside them, all counted in `metrics`. The server adds what every
/// request gets before routing: the URL and header line limits, the trace
/// context and the access log. The admin endpoints skip
/// the pool and the request timeout: an overloaded node must still answer
/// its health checks and show its metrics.
pub fn stack(routes: Router, admin: Router, options: &HttpOptions, metrics: &Metrics) -> Router {
    // Each `Router::layer` call boxes every route once more, and a request
    // clones and polls through every box: the layers are composed into one
    // stack per group instead, which costs a request about a fifth less CPU.
    // axum refuses a route layer on a router without routes.
    let routes = if !routes.has_routes() {
        routes
    } else {
        routes.route_layer(
            ServiceBuilder::new()
                .layer(HttpPoolLayer::new(
                    Limiter::new(
                        options.admission == AdmissionMode::Adaptive,
                        options.pool_size,
                        metrics.load(),
                        metrics.admission("http"),
                    ),
                    options.pool_size,
                    options.pool_wait,
                ))
                .map_response(IntoResponse::into_response)
                .layer(RequestBodyLimitLayer::new(options.max_request_body))
                .layer(TimeoutLayer::with_status_code(
                    StatusCode::SERVICE_UNAVAILABLE,
                    options.request_timeout,
                ))
                .map_response(IntoResponse::into_response)
                .layer(metrics.http_layer()),
        )
    };
    let admin = admin.route_layer(
        ServiceBuilder::new()
            .layer(RequestBodyLimitLayer::new(options.max_request_body))
            .layer(metrics.http_ops_layer()),
    );
    routes.merge(admin)
}

/// The gRPC side of a port shared with HTTP (`http_shared_port`).
pub(crate) type GrpcService =
    BoxCloneSyncService<http::Request<Incoming>, http::Response<axum::body::Body>, Infallible>;

/// gRPC requests (content-type `application/grpc…`) to `grpc`, the others
/// to `http`: how one port serves both.
#[derive(Clone)]
struct ByContentType<H> {
    grpc: GrpcService,
    http: H,
}

impl<H, B> Service<http::Request<Incoming>> for ByContentType<H>
where
    H: Service<http::Request<Incoming>, Response = http::Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    H::Future: Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = http::Response<axum::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Each request takes a ready clone of its side.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Incoming>) -> Self::Future {
        let grpc = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        if grpc {
            Box::pin(self.grpc.clone().oneshot(request))
        } else {
            let http = self.http.clone();
            Box::pin(async move {
                let response = http.oneshot(request).await?;
                Ok(response.map(axum::body::Body::new))
            })
        }
    }
}

/// A running HTTP server; every method takes `&self`.
pub(crate) struct HttpServer {
    shutdown: watch::Sender<bool>,
    done: watch::Receiver<bool>,
}

impl HttpServer {
    /// Serves `router` on `listener` until [`HttpServer::drain`].
    pub(crate) fn start(
        listener: std::net::TcpListener,
        router: Router,
        options: &HttpOptions,
        tls: Option<TlsAcceptor>,
        grpc: Option<GrpcService>,
        node: NodeScope,
    ) -> Result<Self> {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let (shutdown, mut stop) = watch::channel(false);
        let (done_tx, done) = watch::channel(false);
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .keep_alive(options.keep_alive)
            .timer(TokioTimer::new())
            .header_read_timeout(options.header_read_timeout)
            // The whole header block; a block that never ends is cut here.
            .max_buf_size((options.max_url_len + 8 * options.max_header_line).max(8192));
        if grpc.is_some() {
            // What the gRPC server does on its own port: long-lived HTTP/2
            // connections are checked by pings.
            builder
                .http2()
                .timer(TokioTimer::new())
                .keep_alive_interval(Duration::from_secs(30))
                .keep_alive_timeout(Duration::from_secs(10));
        }
        let slots = Admission::new(options.max_connections);
        let context = TraceContextLayer::http(options.request_timeout).with_node(node);
        let lines = LineLimitLayer {
            max_url_len: options.max_url_len,
            max_header_line: options.max_header_line,
        };
        let drain = Arc::new(Drain::default());
        let (idle, keepidle, header_read) = (
            options.client_socket_timeout,
            options.tcp_keepidle,
            options.header_read_timeout,
        );
        tokio::spawn(async move {
            let graceful = GracefulShutdown::new();
            loop {
                let (stream, _peer) = tokio::select! {
                    _ = stop.changed() => break,
                    accepted = listener.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(e) => {
                            pause_after_accept_error("http", &e).await;
                            continue;
                        }
                    },
                };
                let Some(ticket) = slots.admit() else {
                    tracing::debug!("http_max_connections reached; closing a new connection");
                    continue;
                };
                let socket = socket2::SockRef::from(&stream);
                let _ = socket.set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(keepidle));
                let _ = stream.set_nodelay(true);
                let (builder, router, watcher, tls, grpc, context) = (
                    builder.clone(),
                    router.clone(),
                    graceful.watcher(),
                    tls.clone(),
                    grpc.clone(),
                    context.clone(),
                );
                let (open, drain) = (drain.open(), drain.clone());
                tokio::spawn(async move {
                    let _open = open;
                    // A connection that sends nothing gets the header read
                    // timeout too, and gives up its slot to a newer one when
                    // all are taken: an idle flood cannot hold the slots.
                    let mut byte = [0u8; 1];
                    let spoke = tokio::select! {
                        peeked = tokio::time::timeout(header_read, stream.peek(&mut byte)) => {
                            matches!(peeked, Ok(Ok(1..)))
                        }
                        () = ticket.evicted() => false,
                    };
                    if !spoke {
                        return;
                    }
                    ticket.spoke();
                    let io = IdleTimeout::new(stream, idle);
                    let io = match &tls {
                        None => MaybeTls::Plain(io),
                        Some(acceptor) => match tls::handshake(acceptor, io).await {
                            Some(tls) => tls,
                            None => return,
                        },
                    };
                    let http = ServiceBuilder::new()
                        // One access log line per request, in a span with
                        // its traceparent.
                        .layer(
                            TraceLayer::new_for_http()
                                .make_span_with(trace::http_span::<Incoming>)
                                .on_response(DefaultOnResponse::new().level(tracing::Level::INFO)),
                        )
                        .layer(context)
                        .layer(lines)
                        .service(router);
                    let http = CloseWhenDraining { inner: http, drain };
                    let io = TokioIo::new(io);
                    let _ = match grpc {
                        None => {
                            let service = TowerToHyperService::new(http);
                            let connection = builder.serve_connection_with_upgrades(io, service);
                            watcher.watch(connection.into_owned()).await
                        }
                        Some(grpc) => {
                            let service = TowerToHyperService::new(ByContentType { grpc, http });
                            let connection = builder.serve_connection_with_upgrades(io, service);
                            watcher.watch(connection.into_owned()).await
                        }
                    };
                    drop(ticket);
                });
            }
            // Listener closed: no new connections. Each open one answers
            // its next request with `Connection: close`; those left after
            // the grace (idle, or HTTP/2) finish what they have, then close.
            drop(listener);
            drain.start().await;
            graceful.shutdown().await;
            let _ = done_tx.send(true);
        });
        Ok(HttpServer { shutdown, done })
    }

    /// Stops accepting; open connections go on.
    pub(crate) fn stop_accepting(&self) {
        let _ = self.shutdown.send(true);
    }

    /// Stops accepting and lets open requests finish; resolves when the
    /// last connection closed. The caller bounds it.
    pub(crate) async fn drain(&self) {
        let _ = self.shutdown.send(true);
        let mut done = self.done.clone();
        let _ = done.wait_for(|d| *d).await;
    }
}
