//! `svckit members …` and `svckit service …`: rendering and admin changes.

use std::io::Write;

use futures::StreamExt;
use serde::Serialize;

use svckit::servicegroup::{self, AdminChange, Member, Registry};
use svckit::{Error, Result};

/// A member as the CLI shows it; the field names are the JSON contract of
/// `members list --json` and `members watch`.
#[derive(Debug, Serialize)]
pub(crate) struct MemberView<'a> {
    topic: &'a str,
    host: &'a str,
    binary: &'a str,
    endpoint: Option<&'a str>,
    state: &'static str,
    disabled: bool,
    disabled_reason: Option<&'a str>,
    forced_down: bool,
    version: &'a str,
    workers: u32,
    services: &'a [String],
    updated_at: &'a str,
}

impl<'a> From<&'a Member> for MemberView<'a> {
    fn from(m: &'a Member) -> Self {
        let r = &m.record;
        MemberView {
            topic: &r.topic,
            host: &r.host,
            binary: &r.binary,
            endpoint: r.endpoints.grpc.as_deref(),
            state: m.state(),
            disabled: r.disabled,
            disabled_reason: r.disabled_reason.as_deref(),
            forced_down: r.forced_down,
            version: &r.version,
            workers: r.workers,
            services: &r.services,
            updated_at: &r.updated_at,
        }
    }
}

const COLUMNS: [&str; 12] = [
    "TOPIC",
    "HOST",
    "BINARY",
    "ENDPOINT",
    "STATE",
    "DISABLED",
    "DISABLED_REASON",
    "FORCED_DOWN",
    "VERSION",
    "WORKERS",
    "SERVICES",
    "UPDATED_AT",
];

fn row(m: &Member) -> [String; 12] {
    let r = &m.record;
    [
        r.topic.clone(),
        r.host.clone(),
        r.binary.clone(),
        r.endpoints.grpc.clone().unwrap_or_else(|| "-".into()),
        m.state().into(),
        r.disabled.to_string(),
        r.disabled_reason.clone().unwrap_or_else(|| "-".into()),
        r.forced_down.to_string(),
        r.version.clone(),
        r.workers.to_string(),
        if r.services.is_empty() {
            "-".into()
        } else {
            r.services.join(",")
        },
        r.updated_at.clone(),
    ]
}

/// Renders members as an aligned table with a header row.
fn table(members: &[Member]) -> String {
    let rows: Vec<[String; 12]> = members.iter().map(row).collect();
    let mut widths = COLUMNS.map(str::len);
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let header = COLUMNS.map(String::from);
    for r in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = r
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

pub(super) async fn list(registry: &Registry, topic: Option<&str>, json: bool) -> Result<()> {
    let members = registry.list(topic).await?;
    let text = if json {
        let views: Vec<MemberView<'_>> = members.iter().map(MemberView::from).collect();
        serde_json::to_string_pretty(&views).map_err(|e| Error::Io(e.into()))? + "\n"
    } else {
        table(&members)
    };
    write_stdout(text.as_bytes())
}

pub(super) async fn watch(registry: &Registry, topic: Option<&str>) -> Result<()> {
    #[derive(Serialize)]
    struct Line<'a> {
        event: &'static str,
        member: MemberView<'a>,
    }
    let mut events = registry.watch(topic).await?;
    while let Some(event) = events.next().await {
        let event = event?;
        let line = Line {
            event: event.kind(),
            member: MemberView::from(event.member()),
        };
        let mut text = serde_json::to_string(&line).map_err(|e| Error::Io(e.into()))?;
        text.push('\n');
        write_stdout(text.as_bytes())?;
    }
    Ok(())
}

/// What `svckit service` does to a record.
pub(super) enum Action {
    Admin(AdminChange),
    /// `force`: even when the member is up.
    Delete {
        force: bool,
    },
}

pub(super) async fn admin(
    registry: &Registry,
    topic: &str,
    host: &str,
    action: Action,
) -> Result<()> {
    match action {
        Action::Admin(change) => {
            let member = registry.set_admin(topic, host, change).await?;
            write_stdout(table(std::slice::from_ref(&member)).as_bytes())
        }
        Action::Delete { force } => {
            match servicegroup::delete_member(registry.as_ref(), topic, host, force).await? {
                Some(member) if member.up => write_stdout(
                    format!(
                        "deleted {topic}/{host}; the node is up and writes its record again \
                         within about 2 s: stop it to remove it for good\n"
                    )
                    .as_bytes(),
                ),
                Some(_) => write_stdout(format!("deleted {topic}/{host}\n").as_bytes()),
                None => Err(Error::NotFound(format!(
                    "no service record for topic {topic:?} host {host:?}"
                ))),
            }
        }
    }
}

/// Writes and flushes, so `members watch` lines reach a pipe as they happen.
fn write_stdout(bytes: &[u8]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)?;
    out.flush()?;
    Ok(())
}
