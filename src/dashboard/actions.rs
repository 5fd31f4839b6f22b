//! Admin actions from the dashboard: who may act, and the actions, which go
//! through the same service-group calls as `svckit service …`.
//!
//! A token travels in the `Authorization: Bearer` header only: URLs end up
//! in access logs, browser history and `Referer` headers, so a request that
//! carries one in its query string is refused outright. Every action is
//! logged with the token's name, the peer address, what was asked and how
//! it ended; the token itself never is.

use std::net::SocketAddr;
use std::path::Path;

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use crate::error::{Error, ErrorKind, Result};
use crate::servicegroup::{self, AdminChange, MemberView};

use super::Dashboard;

/// The tokens that may act, each with a name for the audit log.
#[derive(Clone)]
pub struct AdminTokens {
    tokens: Vec<(String, String)>,
}

impl std::fmt::Debug for AdminTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.tokens.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("AdminTokens")
            .field("names", &names)
            .finish()
    }
}

impl AdminTokens {
    /// Reads a token file: one token per line, optionally `name:token` to
    /// name who holds it in the log (a bare token is `admin`). Blank lines
    /// and `#` comments are skipped. A file without a token is a config
    /// error: admin actions nobody can use are a mistake.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::config(format!(
                "cannot read admin token file {}: {e}",
                path.display()
            ))
        })?;
        Self::parse(&text).ok_or_else(|| {
            Error::config(format!(
                "admin token file {} holds no token",
                path.display()
            ))
        })
    }

    /// The tokens of a token file's text; `None` when it holds none.
    pub fn parse(text: &str) -> Option<Self> {
        let tokens: Vec<(String, String)> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| match l.split_once(':') {
                Some((name, token)) if !token.trim().is_empty() => {
                    (name.trim().to_string(), token.trim().to_string())
                }
                _ => ("admin".to_string(), l.to_string()),
            })
            .collect();
        (!tokens.is_empty()).then_some(AdminTokens { tokens })
    }

    /// The name of the token `given` is, if any. Every token is compared
    /// in full, without stopping at the first difference or match, so the
    /// time taken says little about how close a guess was.
    fn holder(&self, given: &str) -> Option<&str> {
        let mut found = None;
        for (name, token) in &self.tokens {
            if constant_time_eq(token.as_bytes(), given.as_bytes()) {
                found = Some(name.as_str());
            }
        }
        found
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// One action, as the page posts it.
#[derive(Debug, Deserialize)]
pub(super) struct ActionRequest {
    action: Action,
    topic: String,
    host: String,
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Action {
    Disable,
    Enable,
    ForceDown,
    ClearForceDown,
    Delete,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Disable => "disable",
            Action::Enable => "enable",
            Action::ForceDown => "force-down",
            Action::ClearForceDown => "clear-force-down",
            Action::Delete => "delete",
        }
    }
}

fn refuse(status: StatusCode, message: impl Into<String>) -> Response {
    let body = Json(serde_json::json!({ "error": message.into() }));
    if status == StatusCode::UNAUTHORIZED {
        (status, [(header::WWW_AUTHENTICATE, "Bearer")], body).into_response()
    } else {
        (status, body).into_response()
    }
}

/// The HTTP status of a failed action: decided by the error's kind.
fn status_of(e: &Error) -> StatusCode {
    match e.kind() {
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::MemberUp => StatusCode::CONFLICT,
        ErrorKind::Usage => StatusCode::BAD_REQUEST,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_GATEWAY,
    }
}

/// `POST …/api/admin`.
pub(super) async fn act(
    State(dashboard): State<Dashboard>,
    uri: Uri,
    headers: HeaderMap,
    peer: Option<axum::Extension<ConnectInfo<SocketAddr>>>,
    body: axum::body::Bytes,
) -> Response {
    let peer = peer.map_or_else(|| "-".to_string(), |c| c.0 .0.to_string());
    let in_query = uri.query().is_some_and(|q| {
        q.split('&')
            .any(|kv| matches!(kv.split('=').next(), Some("token" | "access_token")))
    });
    if in_query {
        tracing::warn!(%peer, "dashboard: refused an admin request with a token in its URL");
        return refuse(
            StatusCode::BAD_REQUEST,
            "a token in the URL is refused: send it as `Authorization: Bearer …`",
        );
    }
    let Some(tokens) = dashboard.inner.admin.as_ref() else {
        return refuse(
            StatusCode::FORBIDDEN,
            "admin actions are off: start the dashboard with --admin",
        );
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(given) = given else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "an admin token is required (Authorization: Bearer …)",
        );
    };
    let Some(who) = tokens.holder(given.trim()) else {
        tracing::warn!(%peer, "dashboard: admin action refused: wrong token");
        return refuse(StatusCode::FORBIDDEN, "wrong admin token");
    };
    let request: ActionRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, format!("invalid action: {e}")),
    };
    let outcome = perform(&dashboard, &request).await;
    let (action, topic, host) = (request.action.name(), &request.topic, &request.host);
    let reason = request.reason.as_deref().unwrap_or("");
    match outcome {
        Ok(body) => {
            tracing::info!(who, %peer, action, %topic, %host, reason, "dashboard: admin action done");
            (StatusCode::OK, Json(body)).into_response()
        }
        Err(e) => {
            tracing::warn!(who, %peer, action, %topic, %host, reason, error = %e,
                "dashboard: admin action failed");
            refuse(status_of(&e), e.to_string())
        }
    }
}

async fn perform(dashboard: &Dashboard, request: &ActionRequest) -> Result<serde_json::Value> {
    let registry = &dashboard.inner.registry;
    let (topic, host) = (request.topic.as_str(), request.host.as_str());
    let change = match request.action {
        Action::Disable => AdminChange::Disable {
            reason: request.reason.clone().filter(|r| !r.trim().is_empty()),
        },
        Action::Enable => AdminChange::Enable,
        Action::ForceDown => AdminChange::ForceDown(true),
        Action::ClearForceDown => AdminChange::ForceDown(false),
        // As `svckit service delete` without --force: an up node's record
        // is refused.
        Action::Delete => {
            return match servicegroup::delete_member(registry.as_ref(), topic, host, false).await? {
                Some(_) => Ok(serde_json::json!({ "deleted": { "topic": topic, "host": host } })),
                None => Err(Error::not_found(topic, host)),
            };
        }
    };
    let member = registry.set_admin(topic, host, change).await?;
    Ok(serde_json::json!({ "member": MemberView::from(&member) }))
}

#[cfg(test)]
mod tests {
    use super::AdminTokens;

    #[test]
    fn token_files_name_their_holders() {
        let tokens = AdminTokens::parse("# ops\n\nalice: t0k-a \nbare-token\n").unwrap();
        assert_eq!(tokens.holder("t0k-a"), Some("alice"));
        assert_eq!(tokens.holder("bare-token"), Some("admin"));
        assert_eq!(tokens.holder("t0k-"), None);
        assert_eq!(tokens.holder(""), None);
        assert!(AdminTokens::parse("# nothing\n\n").is_none());
        // The Debug form, which may reach a log, names holders only.
        assert!(!format!("{tokens:?}").contains("t0k-a"));
    }
}
