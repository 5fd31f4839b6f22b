//! The shape of the source: rules a change could break without any other
//! test noticing.

use std::path::{Path, PathBuf};

/// Every `.rs` file under `src/{dir}`.
fn sources(dir: &str) -> Vec<(PathBuf, String)> {
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, String)>) {
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("a source file");
                out.push((path, text));
            }
        }
    }
    let mut out = Vec::new();
    walk(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(dir),
        &mut out,
    );
    assert!(!out.is_empty(), "no sources under src/{dir}");
    out
}

/// The RPC client, the xDS control plane and the dashboard follow
/// membership through the service group's shared topic feeds: none of
/// them opens a watch, keeps a retry loop for one, or counts its restarts.
#[test]
fn membership_is_followed_only_through_the_topic_feeds() {
    let forbidden = [
        "registry.watch(",
        ".watch(Some(",
        ".watch(None)",
        "Backoff",
        "restarted(",
    ];
    let mut found = Vec::new();
    for dir in ["rpc", "xds", "dashboard"] {
        for (path, text) in sources(dir) {
            for (n, line) in text.lines().enumerate() {
                for word in forbidden.iter().filter(|w| line.contains(**w)) {
                    found.push(format!("{}:{}: {word}", path.display(), n + 1));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "a follow loop of its own:\n{}",
        found.join("\n")
    );
}

/// Configuration sits below everything that reads it: the option table
/// states each default once, and the client and the server build their
/// options from it, never the other way round.
#[test]
fn config_imports_neither_the_client_nor_the_server_side() {
    let above = [
        "crate::rpc",
        "crate::service",
        "crate::launcher",
        "crate::http",
        "crate::xds",
        "crate::dashboard",
    ];
    // `crate::service` but not `crate::servicegroup`.
    let names = |line: &str, name: &str| {
        line.match_indices(name).any(|(at, _)| {
            let next = line[at + name.len()..].chars().next();
            !next.is_some_and(|c| c.is_alphanumeric() || c == '_')
        })
    };
    let mut found = Vec::new();
    for (path, text) in sources("config") {
        for (n, line) in text.lines().enumerate() {
            for name in above.iter().filter(|a| names(line, a)) {
                found.push(format!("{}:{}: {name}", path.display(), n + 1));
            }
        }
    }
    assert!(
        found.is_empty(),
        "config reaches above itself:\n{}",
        found.join("\n")
    );
}
