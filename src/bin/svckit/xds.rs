//! `svckit xds`: the xDS control plane on its own listener.

use std::net::SocketAddr;
use std::time::Duration;

use svckit::dashboard::{Dashboard, DashboardOptions};
use svckit::servicegroup::Registry;
use svckit::xds::{ControlPlane, XdsOptions};
use svckit::Result;

/// The gRPC service served, as health checks name it.
const ADS: &str = "envoy.service.discovery.v3.AggregatedDiscoveryService";

/// Serves ADS and LRS (and gRPC health, the dashboard at `GET /`, `GET
/// /config_dump` and `GET /metrics`) on `listen` until SIGINT or SIGTERM. The
/// first line on stdout is `listening on http://ADDR`, the bound address
/// (port 0 picks a free one).
pub(super) async fn serve(
    registry: Registry,
    listen: SocketAddr,
    options: XdsOptions,
) -> Result<()> {
    let registry_for_dashboard = registry.clone();
    let plane = ControlPlane::with_options(registry, options);
    let listener = super::bind(listen, "").await?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "xds control plane serving");
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status(ADS, tonic_health::ServingStatus::Serving)
        .await;
    let signal = super::stop_signal()?;
    // At `/`, the membership dashboard with each topic's xDS clients and
    // the calls they reported.
    let mut board = DashboardOptions::default();
    board.xds = Some(plane.clone());
    let dashboard = Dashboard::start(registry_for_dashboard, board);
    let closing = plane.clone();
    let closing_dashboard = dashboard.clone();
    let stop = async move {
        signal.await;
        // Streams never end by themselves: they are ended first, so that
        // the graceful stop only waits for them to close.
        closing.close();
        closing_dashboard.close();
    };
    // Beside ADS, on the same port over HTTP/1 or 2: what each stream was
    // sent and answered, and the figures (NACKs per client and type).
    let (dump, figures) = (plane.clone(), plane.clone());
    let http = dashboard
        .routes("")
        .route(
            "/config_dump",
            axum::routing::get(move || async move { axum::Json(dump.config_dump()) }),
        )
        .route(
            "/metrics",
            axum::routing::get(move || async move { figures.metrics() }),
        );
    let routes = tonic::service::Routes::new(health_service)
        .add_service(plane.service())
        .add_service(plane.load_reporting_service())
        .into_axum_router()
        .merge(http);
    tonic::transport::Server::builder()
        .accept_http1(true)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_routes(routes.into())
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            stop,
        )
        .await?;
    let stats = plane.stats();
    tracing::info!(
        streams = stats.streams_total,
        pushes = stats.pushes,
        nacks = stats.nacks,
        "xds control plane stopped"
    );
    Ok(())
}
