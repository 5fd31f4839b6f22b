//! The report as text for humans: one section per top-level field (the
//! Guru Meditation layout), nested fields indented below, and an end mark
//! so a reader of a stream knows the report is whole.

use std::fmt::Write;

use serde_json::{Map, Value};

/// Sections in reading order; others follow in name order.
const ORDER: &[&str] = &[
    "package",
    "build",
    "node",
    "process",
    "supervisor",
    "workers",
    "registration",
    "members",
    "periodic_tasks",
    "runtime",
    "services",
    "config",
];

/// The last line of every text report.
pub const END: &str = "==== end of report ====";

/// Renders a JSON report as sections of `key: value` lines, ending with
/// [`END`]. An option shown as `{"value", "source"}` takes one line.
///
/// ```
/// let report = serde_json::json!({
///     "node": {"host": "compute-1", "topic": "compute"},
///     "config": {"workers": {"value": "2", "source": "the default"}},
/// });
/// let text = svckit::report::to_text(&report);
/// assert!(text.starts_with("==== node ====\n  host: compute-1\n"));
/// assert!(text.contains("  workers: 2  (the default)\n"));
/// assert!(text.ends_with("==== end of report ====\n"));
/// ```
pub fn to_text(report: &Value) -> String {
    let mut out = String::new();
    match report {
        Value::Object(sections) => {
            let mut names: Vec<&String> = sections.keys().collect();
            names.sort_by_key(|n| (ORDER.iter().position(|o| o == n).unwrap_or(ORDER.len()), *n));
            for name in names {
                let _ = writeln!(out, "==== {name} ====");
                body(&mut out, 1, &sections[name]);
            }
        }
        other => body(&mut out, 0, other),
    }
    let _ = writeln!(out, "{END}");
    out
}

/// The fields of `value` at `depth`.
fn body(out: &mut String, depth: usize, value: &Value) {
    let pad = "  ".repeat(depth);
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                field(out, depth, k, v);
            }
        }
        Value::Array(items) if items.is_empty() => {
            let _ = writeln!(out, "{pad}(none)");
        }
        Value::Array(items) => {
            for item in items {
                if item.is_object() {
                    let _ = writeln!(out, "{pad}-");
                    body(out, depth + 1, item);
                } else {
                    let _ = writeln!(out, "{pad}- {}", scalar(item));
                }
            }
        }
        other => {
            let _ = writeln!(out, "{pad}{}", scalar(other));
        }
    }
}

fn field(out: &mut String, depth: usize, key: &str, value: &Value) {
    let pad = "  ".repeat(depth);
    match value {
        Value::Object(map) if is_option(map) => {
            let _ = writeln!(
                out,
                "{pad}{key}: {}  ({})",
                scalar(&map["value"]),
                scalar(&map["source"])
            );
        }
        Value::Object(map) if !map.is_empty() => {
            let _ = writeln!(out, "{pad}{key}:");
            body(out, depth + 1, value);
        }
        Value::Array(items) if items.iter().any(|i| i.is_object() || i.is_array()) => {
            let _ = writeln!(out, "{pad}{key}:");
            body(out, depth + 1, value);
        }
        Value::Array(items) => {
            let list: Vec<String> = items.iter().map(scalar).collect();
            let _ = writeln!(out, "{pad}{key}: {}", list.join(", "));
        }
        other => {
            let _ = writeln!(out, "{pad}{key}: {}", scalar(other));
        }
    }
}

/// A config entry: `{"value": …, "source": …}`.
fn is_option(map: &Map<String, Value>) -> bool {
    map.len() == 2 && map.contains_key("value") && map.contains_key("source")
}

fn scalar(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) if s.is_empty() => "-".into(),
        Value::String(s) => s.clone(),
        Value::Object(m) if m.is_empty() => "{}".into(),
        other => other.to_string(),
    }
}
