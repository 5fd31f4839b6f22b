//! `svckit members …` and `svckit service …`: rendering and admin changes.

use std::io::Write;

use std::time::SystemTime;

use futures::StreamExt;

use svckit::servicegroup::{
    self, format_age, AdminChange, EventView, Member, MemberView, Registry,
};
use svckit::{Error, Result};

/// Every column of the record (`--wide`): the contract's fields.
const WIDE: [&str; 12] = [
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

fn wide_row(m: &Member) -> Vec<String> {
    let r = &m.record;
    vec![
        r.advert.topic.clone(),
        r.advert.host.clone(),
        r.advert.binary.clone(),
        r.advert
            .endpoints
            .grpc
            .clone()
            .unwrap_or_else(|| "-".into()),
        m.state().into(),
        r.disabled.to_string(),
        r.disabled_reason.clone().unwrap_or_else(|| "-".into()),
        r.forced_down.to_string(),
        r.advert.version.clone(),
        r.workers.to_string(),
        if r.advert.services.is_empty() {
            "-".into()
        } else {
            r.advert.services.join(",")
        },
        r.updated_at.clone(),
    ]
}

/// The default columns: what an operator scans for, in 100 columns.
const NARROW: [&str; 6] = ["HOST", "TOPIC", "STATE", "SINCE", "VERSION", "ENDPOINT"];

/// The width the default table fits in.
const NARROW_WIDTH: usize = 100;

fn narrow_row(m: &Member, now: SystemTime) -> Vec<String> {
    let r = &m.record;
    // The admin marks ride on the state, so a disabled or forced-down node
    // is visible without `--wide`.
    let mut state = m.state().to_string();
    if r.disabled {
        state.push_str(",disabled");
    }
    if r.forced_down {
        state.push_str(",forced");
    }
    vec![
        r.advert.host.clone(),
        r.advert.topic.clone(),
        state,
        format_age(&r.updated_at, now),
        r.advert.version.clone(),
        r.advert
            .endpoints
            .grpc
            .clone()
            .unwrap_or_else(|| "-".into()),
    ]
}

/// Renders rows as an aligned table with a header row. With `fit`, the
/// widest columns are cut (ending in `~`) until a line fits in it.
fn table(header: &[&str], rows: &[Vec<String>], fit: Option<usize>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    if let Some(fit) = fit {
        let gaps = 2 * widths.len().saturating_sub(1);
        while widths.iter().sum::<usize>() + gaps > fit {
            let Some((i, w)) = widths.iter().copied().enumerate().max_by_key(|&(_, w)| w) else {
                break;
            };
            // Never below the header: past that, cutting cannot help.
            if w <= header[i].len() {
                break;
            }
            widths[i] = w - 1;
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for r in std::iter::once(&header).chain(rows) {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, &w)| format!("{:<w$}", cut(cell, w)))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// `cell` in at most `width` characters.
fn cut(cell: &str, width: usize) -> String {
    if cell.chars().count() <= width {
        return cell.to_string();
    }
    let mut s: String = cell.chars().take(width.saturating_sub(1)).collect();
    s.push('~');
    s
}

/// The table of `members list` (`wide`: every column, as wide as needed).
fn members_table(members: &[Member], wide: bool) -> String {
    if wide {
        let rows: Vec<_> = members.iter().map(wide_row).collect();
        table(&WIDE, &rows, None)
    } else {
        let now = SystemTime::now();
        let rows: Vec<_> = members.iter().map(|m| narrow_row(m, now)).collect();
        table(&NARROW, &rows, Some(NARROW_WIDTH))
    }
}

pub(super) async fn list(
    registry: &Registry,
    topic: Option<&str>,
    json: bool,
    wide: bool,
) -> Result<()> {
    let members = registry.list(topic).await?;
    let text = if json {
        let views: Vec<MemberView<'_>> = members.iter().map(MemberView::from).collect();
        serde_json::to_string_pretty(&views).map_err(|e| Error::from(std::io::Error::from(e)))?
            + "\n"
    } else {
        members_table(&members, wide)
    };
    write_stdout(text.as_bytes())
}

pub(super) async fn watch(registry: &Registry, topic: Option<&str>) -> Result<()> {
    let mut events = registry.watch(topic).await?;
    while let Some(event) = events.next().await {
        let event = event?;
        let mut text = serde_json::to_string(&EventView::from(&event))
            .map_err(|e| Error::from(std::io::Error::from(e)))?;
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
            write_stdout(members_table(std::slice::from_ref(&member), true).as_bytes())
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
                None => Err(Error::not_found(topic, host)),
            }
        }
    }
}

/// Writes and flushes, so `members watch` lines reach a pipe as they happen.
pub(super) fn write_stdout(bytes: &[u8]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)?;
    out.flush()?;
    Ok(())
}
