//! The operations endpoints every node with an HTTP listener serves.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};

use super::NodeInfo;

/// `/healthz`, `/readyz`, `/metrics` and `/debug/report` for `node`.
pub(super) fn routes(node: Arc<NodeInfo>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/debug/report", get(report))
        .with_state(node)
}

/// 200 while the node serves and is registered; 503 while it starts or
/// drains, so that load balancers stop sending before the listener closes.
async fn readyz(State(node): State<Arc<NodeInfo>>) -> impl IntoResponse {
    if node.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn metrics(State(node): State<Arc<NodeInfo>>) -> impl IntoResponse {
    let text = node.metrics().render(node.membership_status().as_ref());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
}

async fn report(State(node): State<Arc<NodeInfo>>) -> impl IntoResponse {
    Json(node.report().await)
}
