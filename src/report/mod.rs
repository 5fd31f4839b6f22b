//! The state report (oslo.reports' Guru Meditation Report).
//!
//! A node's report ([`NodeInfo::report`](crate::service::NodeInfo::report))
//! says what runs, where, since when and how it is doing: package and build,
//! host and topic, process, the effective config with secrets as `***`, the
//! node's lifecycle state, its registration, the members of its topic as
//! the registry shows them, its periodic tasks and the tokio runtime. It is
//! JSON over `svckit.base.v1.Base/Report`; on SIGUSR2 it is written as text
//! ([`to_text`]) to stderr, or to a timestamped file in `report_dir`
//! ([`emit`]).

mod text;

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde_json::{json, Value};

pub use self::text::{to_text, END};

/// The package and how it was built.
pub fn build() -> Value {
    json!({
        "package": env!("CARGO_PKG_NAME"),
        "version": env!("CARGO_PKG_VERSION"),
        "target": env!("SVCKIT_BUILD_TARGET"),
        "profile": env!("SVCKIT_BUILD_PROFILE"),
        "rustc": env!("SVCKIT_BUILD_RUSTC"),
    })
}

/// The figures of the tokio runtime this runs on that tokio's stable API
/// gives; `null` outside a runtime.
pub fn runtime() -> Value {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return Value::Null;
    };
    let metrics = handle.metrics();
    json!({
        "flavor": format!("{:?}", handle.runtime_flavor()),
        "workers": metrics.num_workers(),
        "alive_tasks": metrics.num_alive_tasks(),
        "global_queue_depth": metrics.global_queue_depth(),
    })
}

/// Writes `report` as text: to a new file `{name}-{pid}-{time}.txt` in
/// `report_dir` when set (its path is logged), else to stderr. A report that
/// cannot be written is logged, never fatal.
pub fn emit(report: &Value, report_dir: Option<&Path>, name: &str) {
    let text = to_text(report);
    let Some(dir) = report_dir else {
        eprintln!("{text}");
        return;
    };
    match write_file(dir, name, &text) {
        Ok(path) => tracing::info!(path = %path.display(), "state report written"),
        Err(e) => {
            tracing::error!(dir = %dir.display(), error = %e, "cannot write the state report; writing it to stderr");
            eprintln!("{text}");
        }
    }
}

fn write_file(dir: &Path, name: &str, text: &str) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let stamp = humantime::format_rfc3339_millis(SystemTime::now())
        .to_string()
        .replace(':', "");
    let path = dir.join(format!("{name}-{}-{stamp}.txt", std::process::id()));
    std::fs::write(&path, text)?;
    Ok(path)
}
