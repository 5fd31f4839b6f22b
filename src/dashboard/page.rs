//! The page, rendered on the server: complete without its script (the
//! script only keeps it current and sends admin actions). The markup of a
//! row is shared with the script through a `<template>` rendered here, so
//! the two cannot drift apart.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::SystemTime;

use crate::servicegroup::{format_age, Member};
use crate::xds::ClientLoad;

/// The page's script, served beside it (no inline script, nothing fetched
/// from elsewhere).
pub(super) const SCRIPT: &str = include_str!("page.js");
const STYLE: &str = include_str!("page.css");

/// What one rendering shows.
pub(super) struct PageInput<'a> {
    /// The path the dashboard is served under (`""` or `/debug/members`).
    pub base: &'a str,
    /// Every member, ordered by (topic, host).
    pub members: &'a [Member],
    /// The id of the last change `members` includes: where the script's
    /// event stream resumes.
    pub last_event_id: &'a str,
    /// Admin actions are on: show the token field and the buttons.
    pub admin: bool,
    /// The rows show their node's figures.
    pub figures: bool,
    /// Served by an xDS control plane: each topic's clients' load
    /// reports, by topic.
    pub xds_loads: Option<&'a BTreeMap<String, Vec<ClientLoad>>>,
    /// `false` when the registry had not answered in time.
    pub loaded: bool,
    /// The topic filter to start with.
    pub topic: Option<&'a str>,
}

/// Escapes text for HTML content and quoted attribute values.
pub(super) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const COLUMNS: [&str; 10] = [
    "host",
    "state",
    "disabled",
    "forced down",
    "version",
    "workers",
    "gRPC services",
    "endpoint",
    "updated",
    "",
];

/// The columns of a node's figures, after `state`: (class, header).
const FIGURE_COLUMNS: [(&str, &str); 5] = [
    ("calls", "calls/s"),
    ("errors", "errors/s"),
    ("p99", "p99"),
    ("inflight", "in flight"),
    ("spark", "last 5 min"),
];

/// One row; `None` renders the empty template row the script clones.
fn row(out: &mut String, member: Option<&Member>, admin: bool, figures: bool, now: SystemTime) {
    let (topic, host) = member.map_or(("", ""), |m| {
        (&m.record.advert.topic, &m.record.advert.host)
    });
    let up = member.is_some_and(|m| m.up);
    let state = if up { "up" } else { "down" };
    let disabled = member.is_some_and(|m| m.record.disabled);
    let forced = member.is_some_and(|m| m.record.forced_down);
    let _ = write!(
        out,
        r#"<tr class="member" data-topic="{t}" data-host="{h}" data-state="{state}" data-disabled="{disabled}" data-forced="{forced}">"#,
        t = escape(topic),
        h = escape(host),
    );
    let _ = write!(out, r#"<td class="host">{}</td>"#, escape(host));
    let _ = write!(
        out,
        r#"<td class="state"><span class="badge {state}">{}</span></td>"#,
        if member.is_some() { state } else { "" }
    );
    if figures {
        // Filled in by the script from `/api/figures`.
        for (class, _) in FIGURE_COLUMNS {
            let _ = write!(out, r#"<td class="fig {class}"></td>"#);
        }
    }
    let reason = member.and_then(|m| m.record.disabled_reason.as_deref());
    let disabled_text = match (disabled, reason) {
        (true, Some(r)) => format!("disabled: {r}"),
        (true, None) => "disabled".into(),
        (false, _) => String::new(),
    };
    let _ = write!(
        out,
        r#"<td class="disabled">{}</td>"#,
        escape(&disabled_text)
    );
    let _ = write!(
        out,
        r#"<td class="forced">{}</td>"#,
        if forced { "forced down" } else { "" }
    );
    let (version, workers, services, endpoint, updated) = match member {
        Some(m) => (
            m.record.advert.version.as_str(),
            m.record.workers.to_string(),
            m.record.advert.services.join(" "),
            m.record.advert.endpoints.grpc.as_deref().unwrap_or("-"),
            m.record.updated_at.as_str(),
        ),
        None => ("", String::new(), String::new(), "", ""),
    };
    let _ = write!(out, r#"<td class="version">{}</td>"#, escape(version));
    let _ = write!(out, r#"<td class="workers">{workers}</td>"#);
    let _ = write!(out, r#"<td class="services">{}</td>"#, escape(&services));
    let _ = write!(out, r#"<td class="endpoint">{}</td>"#, escape(endpoint));
    let age = if member.is_some() {
        format_age(updated, now)
    } else {
        String::new()
    };
    let _ = write!(
        out,
        r#"<td class="since" data-at="{}" title="{}">{}</td>"#,
        escape(updated),
        escape(updated),
        escape(&age)
    );
    out.push_str(r#"<td class="actions">"#);
    if admin {
        let buttons = [
            ("disable", "disable", disabled),
            ("enable", "enable", !disabled),
            ("force-down", "force down", forced),
            ("clear-force-down", "clear force-down", !forced),
            ("delete", "delete", up),
        ];
        for (action, label, hidden) in buttons {
            let _ = write!(
                out,
                r#"<button type="button" data-action="{action}"{}>{label}</button>"#,
                if hidden { " hidden" } else { "" }
            );
        }
    }
    out.push_str("</td></tr>");
}

/// The columns of a topic's xDS load table, after the client: (class,
/// header), the class naming the field of `/api/xds-loads`.
const LOAD_COLUMNS: [(&str, &str); 5] = [
    ("issued", "calls issued"),
    ("succeeded", "succeeded"),
    ("failed", "failed"),
    ("dropped", "dropped"),
    ("in_progress", "in progress"),
];

/// A topic's xDS clients and the load they reported; the script refills
/// the body from `/api/xds-loads`.
fn load_table(out: &mut String, loads: &[ClientLoad]) {
    out.push_str(r#"<table class="xds-loads"><caption>xDS clients (load reports)</caption><thead><tr><th>client</th>"#);
    for (_, header) in LOAD_COLUMNS {
        let _ = write!(out, "<th>{header}</th>");
    }
    out.push_str("</tr></thead><tbody>");
    for c in loads {
        let l = &c.load;
        let _ = write!(
            out,
            r#"<tr><td class="client">{}</td><td class="issued">{}</td><td class="succeeded">{}</td><td class="failed">{}</td><td class="dropped">{}</td><td class="in_progress">{}</td></tr>"#,
            escape(&c.client),
            l.issued,
            l.succeeded,
            l.failed,
            l.dropped,
            l.in_progress
        );
    }
    out.push_str("</tbody></table>");
}

/// How a section is drawn.
#[derive(Clone, Copy)]
struct Shown<'a> {
    admin: bool,
    figures: bool,
    xds_loads: Option<&'a BTreeMap<String, Vec<ClientLoad>>>,
}

fn section(out: &mut String, topic: &str, members: &[&Member], shown: Shown<'_>, now: SystemTime) {
    let Shown { admin, figures, .. } = shown;
    let up = members.iter().filter(|m| m.up).count();
    let _ = write!(
        out,
        r#"<section class="topic" data-topic="{t}"><h2><span class="name">{t}</span> <span class="count">{up} of {n} up</span></h2><table><thead><tr>"#,
        t = escape(topic),
        n = members.len(),
    );
    for (i, c) in COLUMNS.iter().enumerate() {
        let _ = write!(out, "<th>{c}</th>");
        if i == 1 && figures {
            for (_, header) in FIGURE_COLUMNS {
                let _ = write!(out, "<th>{header}</th>");
            }
        }
    }
    out.push_str("</tr></thead><tbody>");
    for m in members {
        row(out, Some(m), admin, figures, now);
    }
    out.push_str("</tbody></table>");
    if let Some(loads) = shown.xds_loads {
        load_table(out, loads.get(topic).map_or(&[], Vec::as_slice));
    }
    out.push_str("</section>");
}

/// The whole page.
pub(super) fn render(input: &PageInput<'_>) -> String {
    let now = SystemTime::now();
    let mut topics: BTreeMap<&str, Vec<&Member>> = BTreeMap::new();
    for m in input.members {
        topics.entry(&m.record.advert.topic).or_default().push(m);
    }
    let mut out = String::with_capacity(2048 + input.members.len() * 700);
    let _ = write!(
        out,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><title>svckit members</title><style>{STYLE}</style></head><body data-base="{base}" data-after="{after}" data-admin="{admin}" data-figures="{figures}" data-xds="{xds}">"#,
        base = escape(input.base),
        after = escape(input.last_event_id),
        admin = input.admin,
        figures = input.figures,
        xds = input.xds_loads.is_some(),
    );
    let shown = Shown {
        admin: input.admin,
        figures: input.figures,
        xds_loads: input.xds_loads,
    };
    out.push_str(
        r#"<header><h1>svckit members</h1><span id="status" class="status">connecting…</span>"#,
    );
    out.push_str(r#"<label>topic <select id="f-topic"><option value="">all</option>"#);
    for topic in topics.keys() {
        let selected = if input.topic == Some(topic) {
            " selected"
        } else {
            ""
        };
        let _ = write!(
            out,
            r#"<option value="{t}"{selected}>{t}</option>"#,
            t = escape(topic)
        );
    }
    out.push_str("</select></label>");
    out.push_str(r#"<label>state <select id="f-state"><option value="">all</option><option value="up">up</option><option value="down">down</option><option value="disabled">disabled</option><option value="forced">forced down</option></select></label>"#);
    if input.admin {
        out.push_str(r#"<label>admin token <input id="token" type="password" autocomplete="off" size="16"></label>"#);
    }
    out.push_str("</header>");
    out.push_str(r#"<div id="error" class="error" role="alert" hidden><span class="text"></span> <button type="button" id="error-close">dismiss</button></div>"#);
    if !input.loaded {
        out.push_str(r#"<p class="notice">The registry has not answered yet; the page fills in as it does.</p>"#);
    }
    out.push_str(r#"<main id="topics">"#);
    for (topic, members) in &topics {
        section(&mut out, topic, members, shown, now);
    }
    out.push_str("</main>");
    out.push_str(r#"<template id="row-template">"#);
    let mut empty_section = String::new();
    section(&mut empty_section, "", &[], shown, now);
    out.push_str(&empty_section);
    out.push_str("<table><tbody>");
    row(&mut out, None, input.admin, input.figures, now);
    out.push_str("</tbody></table></template>");
    if input.admin {
        out.push_str(r#"<dialog id="reason-dialog"><form method="dialog"><p>Disable <b class="who"></b></p><label>reason <input id="reason" size="40"></label> <button id="reason-ok" value="ok">disable</button> <button value="cancel">cancel</button></form></dialog>"#);
    }
    let _ = write!(
        out,
        r#"<script src="{}/dashboard.js"></script></body></html>"#,
        escape(input.base)
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_from_records_is_escaped() {
        let mut m = crate::servicegroup::diff::test_member("h1", true);
        std::sync::Arc::make_mut(&mut m.record).disabled = true;
        std::sync::Arc::make_mut(&mut m.record).disabled_reason =
            Some("<script>alert(1)</script>".into());
        let html = render(&PageInput {
            base: "",
            members: &[m],
            last_event_id: "1-1",
            admin: true,
            figures: true,
            xds_loads: None,
            loaded: true,
            topic: None,
        });
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(html.contains("disabled: &lt;script&gt;"));
        assert!(html.contains("1 of 1 up"));
        assert!(!html.contains(r#"class="xds-loads""#));
    }

    #[test]
    fn a_topic_shows_its_xds_clients_load() {
        let m = crate::servicegroup::diff::test_member("h1", true);
        let topic = m.record.advert.topic.clone();
        let load = crate::xds::ClientLoad {
            client: "<py>".into(),
            load: crate::xds::ReportedLoad {
                issued: 1001,
                succeeded: 1000,
                failed: 1,
                ..Default::default()
            },
        };
        let loads = BTreeMap::from([(topic, vec![load])]);
        let html = render(&PageInput {
            base: "",
            members: &[m],
            last_event_id: "1-1",
            admin: false,
            figures: false,
            xds_loads: Some(&loads),
            loaded: true,
            topic: None,
        });
        assert!(html.contains(r#"data-xds="true""#), "{html}");
        assert!(
            html.contains(r#"<td class="client">&lt;py&gt;</td><td class="issued">1001</td><td class="succeeded">1000</td><td class="failed">1</td>"#),
            "{html}"
        );
    }
}
