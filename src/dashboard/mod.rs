//! The membership dashboard: the service group as one web page, kept
//! current by the service-group watch (Consul's UI, nova's `service-list`
//! as a page).
//!
//! Served by `svckit dashboard` at `/`, and by a node with the
//! `http_dashboard` option at `/debug/members` (read-only). Routes, under
//! that base:
//!
//! - `GET {base}`: the page, rendered on the server (one section per topic,
//!   one row per service record), with a small script and no external
//!   resource;
//! - `GET {base}/api/members`: the members as JSON, the fields of
//!   `svckit members list --json` (`?topic=` for one topic);
//! - `GET {base}/api/events`: Server-Sent Events: a `snapshot` of every
//!   member (`{"members":[…]}`), then a `member` message per change, shaped
//!   as a line of `svckit members watch`. Each has an `id`; a client that
//!   reconnects with `Last-Event-ID` gets only what it missed;
//! - `GET {base}/api/figures`: how each up node is doing (calls/s,
//!   errors/s, p99 latency, calls in flight, recent calls/s), when the
//!   dashboard asks its nodes for their figures (`figures.rs`);
//! - `GET {base}/api/xds-loads`: the calls each xDS client reported per
//!   topic (LRS), when the dashboard is served by an xDS control plane
//!   (`svckit xds` at `/`): `{"topics": {"echo": [{"client", "issued",
//!   "succeeded", "failed", "dropped", "in_progress"}]}}`;
//! - `POST {base}/api/admin`: disable, enable, force-down, clear-force-down
//!   or delete (a down record), when admin actions are on (`actions.rs`).
//!
//! ```no_run
//! # async fn run() -> svckit::Result<()> {
//! use svckit::dashboard::{Dashboard, DashboardOptions};
//! use svckit::servicegroup::{self, RegistryUrl};
//!
//! let url = RegistryUrl::parse("etcd://127.0.0.1:2379")?;
//! let registry = servicegroup::connect(&url, &Default::default()).await?;
//! let dashboard = Dashboard::start(registry, DashboardOptions::default());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, dashboard.routes("")).await?;
//! # Ok(())
//! # }
//! ```

mod actions;
mod figures;
mod live;
mod page;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt as _;
use serde::Deserialize;

use crate::servicegroup::{MemberView, Registry};

pub use self::actions::AdminTokens;
use self::figures::Figures;
use self::live::Live;

/// Where a node serves its dashboard (`http_dashboard`).
pub const NODE_PATH: &str = "/debug/members";

/// How long a request waits for the first listing of a dashboard that just
/// started, before it answers with what it has.
const FIRST_LISTING: Duration = Duration::from_secs(5);

/// What a dashboard allows.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct DashboardOptions {
    /// `Some`: admin actions are on, for holders of these tokens. `None`
    /// (the default, and always on a node): the page only shows.
    pub admin: Option<AdminTokens>,
    /// `Some`: each row shows how its node is doing (calls/s, errors/s,
    /// p99 latency, calls in flight, a sparkline), asked of the up nodes
    /// through this client (`Base/Stats`). `None` (the default, and always
    /// on a node): membership only.
    pub figures: Option<crate::rpc::Rpc>,
    /// `Some`: each topic shows the calls its xDS clients reported to this
    /// control plane (LRS), per client. `None` (the default): not shown.
    pub xds: Option<crate::xds::ControlPlane>,
}

/// A running dashboard: a watch of the whole registry and the state it
/// feeds. Cheap to clone; the watch stops when the last clone (and every
/// router made from it) is dropped.
#[derive(Clone)]
pub struct Dashboard {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    admin: Option<AdminTokens>,
    live: Arc<Live>,
    figures: Option<Arc<Figures>>,
    xds: Option<crate::xds::ControlPlane>,
}

impl Dashboard {
    /// Starts watching `registry` (every topic). Needs a Tokio runtime.
    pub fn start(registry: Registry, options: DashboardOptions) -> Dashboard {
        let live = Live::start(registry.clone());
        let figures = options.figures.map(|rpc| Figures::start(live.clone(), rpc));
        Dashboard {
            inner: Arc::new(Inner {
                registry,
                admin: options.admin,
                live,
                figures,
                xds: options.xds,
            }),
        }
    }

    /// The dashboard's routes under `base` (`""` for the root, or a path
    /// such as `/debug/members`, without a trailing slash).
    pub fn routes(&self, base: &str) -> Router {
        let page_path = if base.is_empty() { "/" } else { base };
        let base_owned = base.to_string();
        Router::new()
            .route(
                page_path,
                get(move |state, query| page(state, query, base_owned.clone())),
            )
            .route(&format!("{base}/dashboard.js"), get(script))
            .route(&format!("{base}/api/members"), get(members))
            .route(&format!("{base}/api/events"), get(events))
            .route(&format!("{base}/api/figures"), get(node_figures))
            .route(&format!("{base}/api/xds-loads"), get(xds_loads))
            .route(&format!("{base}/api/admin"), post(actions::act))
            .with_state(self.clone())
    }

    /// Ends every open event stream (and those opened later), so that the
    /// HTTP server serving them can drain. The page's script says the
    /// stream dropped, and reconnects.
    pub fn close(&self) {
        self.inner.live.close();
    }
}

#[derive(Debug, Deserialize)]
struct TopicQuery {
    topic: Option<String>,
}

async fn page(
    State(dashboard): State<Dashboard>,
    Query(query): Query<TopicQuery>,
    base: String,
) -> Response {
    let live = &dashboard.inner.live;
    let loaded = live.wait_ready(FIRST_LISTING).await;
    let (members, id) = live.members();
    let loads = dashboard.inner.xds.as_ref().map(|plane| plane.loads());
    let html = page::render(&page::PageInput {
        base: &base,
        members: &members,
        last_event_id: &id,
        admin: dashboard.inner.admin.is_some(),
        figures: dashboard.inner.figures.is_some(),
        xds_loads: loads.as_ref(),
        loaded,
        topic: query.topic.as_deref(),
    });
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        html,
    )
        .into_response()
}

/// Every node's figures by `topic/host`, and how often they change:
/// `{"interval_s": 5, "nodes": {"echo/n1": {"calls_per_sec": …}}}`; 404
/// when the dashboard shows none.
async fn node_figures(State(dashboard): State<Dashboard>) -> Response {
    match &dashboard.inner.figures {
        Some(figures) => Json(serde_json::json!({
            "interval_s": figures::INTERVAL.as_secs(),
            "nodes": figures.snapshot(),
        }))
        .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({ "error": "this dashboard shows no node figures" })),
        )
            .into_response(),
    }
}

/// The calls each xDS client reported per topic; 404 when the dashboard
/// is not served by a control plane.
async fn xds_loads(State(dashboard): State<Dashboard>) -> Response {
    match &dashboard.inner.xds {
        Some(plane) => Json(serde_json::json!({ "topics": plane.loads() })).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({ "error": "this dashboard is not served by an xDS control plane" })),
        )
            .into_response(),
    }
}

async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        page::SCRIPT,
    )
        .into_response()
}

async fn members(State(dashboard): State<Dashboard>, Query(query): Query<TopicQuery>) -> Response {
    let live = &dashboard.inner.live;
    if !live.wait_ready(FIRST_LISTING).await {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "error": "the registry has not answered yet" })),
        )
            .into_response();
    }
    let (members, _) = live.members();
    let views: Vec<MemberView<'_>> = members
        .iter()
        .filter(|m| {
            query
                .topic
                .as_ref()
                .is_none_or(|t| *t == m.record.advert.topic)
        })
        .map(MemberView::from)
        .collect();
    Json(views).into_response()
}

#[derive(Debug, Deserialize)]
struct EventsQuery {
    /// The id of the last change the page was rendered with.
    after: Option<String>,
}

async fn events(
    State(dashboard): State<Dashboard>,
    Query(query): Query<EventsQuery>,
    headers: HeaderMap,
) -> Response {
    let live = &dashboard.inner.live;
    live.wait_ready(FIRST_LISTING).await;
    // A browser reconnecting sends the id it last saw; it wins over the
    // page's `after`, which is older.
    let after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .or(query.after.as_deref())
        .and_then(live::parse_id);
    let stream = live.stream(after).map(Ok::<_, std::convert::Infallible>);
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-store"),
            // Proxies that buffer responses would hold the events back.
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        axum::body::Body::from_stream(stream),
    )
        .into_response()
}
