//! `svckit dashboard`: the membership dashboard on its own listener.

use std::net::SocketAddr;
use std::path::Path;

use svckit::dashboard::{AdminTokens, Dashboard, DashboardOptions};
use svckit::rpc::Rpc;
use svckit::servicegroup::Registry;
use svckit::Result;

/// Serves the dashboard on `listen` until SIGINT or SIGTERM. The first line
/// on stdout is `listening on http://ADDR/`, the bound address (port 0
/// picks a free one).
pub(super) async fn serve(
    registry: Registry,
    rpc: Rpc,
    listen: SocketAddr,
    admin_token_file: Option<&Path>,
) -> Result<()> {
    let admin = admin_token_file.map(AdminTokens::from_file).transpose()?;
    let admin_on = admin.is_some();
    let mut options = DashboardOptions::default();
    options.admin = admin;
    // Each row shows how its node is doing, asked of the nodes here.
    options.figures = Some(rpc);
    let dashboard = Dashboard::start(registry, options);
    let listener = super::bind(listen, "/").await?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, admin = admin_on, "dashboard serving");
    let app = dashboard
        .routes("")
        .into_make_service_with_connect_info::<SocketAddr>();
    let stop = super::stop_signal()?;
    // Event streams never end by themselves: they are closed first, so the
    // graceful stop only waits for requests in flight.
    let closing = dashboard.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            stop.await;
            closing.close();
        })
        .await?;
    Ok(())
}
