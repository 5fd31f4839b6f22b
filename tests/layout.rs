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
/// them opens a watch or keeps a retry loop for one; the feed tells them
/// of its restarts.
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

/// Two nodes in one process share nothing by accident: the only statics
/// that hold state are the log writer's (a process has one stderr) and the
/// `memory://` registry's table of groups, which is the registry itself
/// (every handle of `memory://name` in a process is one group). Figures,
/// exporters, elections and an upgrade's hand-over belong to a node, a
/// registry connection or the launcher that passes them down.
#[test]
fn the_only_process_wide_state_is_the_log_writer_and_the_memory_registry() {
    let allowed = [
        ("telemetry/sink.rs", "GUARD"),
        ("telemetry/sink.rs", "WRITER"),
        ("servicegroup/memory.rs", "GROUPS"),
        // Set once, never changed: the process's monotonic epoch.
        ("clock.rs", "START"),
    ];
    let stateful = ["Mutex", "RwLock", "Atomic", "OnceLock", "LazyLock", "Cell"];
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut found = Vec::new();
    for (path, text) in sources("") {
        let relative = path.strip_prefix(&src).expect("under src");
        let file = relative.to_string_lossy().replace('\\', "/");
        for (n, line) in text.lines().enumerate() {
            let code = line.trim_start();
            let Some(rest) = code
                .strip_prefix("static ")
                .or_else(|| code.strip_prefix("pub static "))
                .or_else(|| code.strip_prefix("pub(crate) static "))
                .or_else(|| code.strip_prefix("pub(super) static "))
            else {
                continue;
            };
            let name: String = rest
                .trim_start_matches("mut ")
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let holds_state = rest.starts_with("mut ") || stateful.iter().any(|s| rest.contains(s));
            if holds_state && !allowed.contains(&(file.as_str(), name.as_str())) {
                found.push(format!("{file}:{}: {}", n + 1, code));
            }
        }
    }
    assert!(
        found.is_empty(),
        "process-wide state two nodes in one process would share:\n{}",
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

/// The crate's modules form layers: no module reaches, through the
/// `crate::…` paths of its code (comments and unit tests aside), back to
/// itself. A cycle is named with the paths that make it.
#[test]
fn the_modules_import_one_another_without_a_cycle() {
    use std::collections::{BTreeMap, BTreeSet};
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    // module -> module it names -> where.
    let mut edges: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for (path, text) in sources("") {
        let relative = path.strip_prefix(&src).expect("under src");
        let module = relative
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .unwrap_or_default()
            .trim_end_matches(".rs")
            .to_string();
        let file = relative.file_name().and_then(|f| f.to_str()).unwrap_or("");
        if module == "lib" || module == "bin" || file.ends_with("tests.rs") {
            continue;
        }
        // A file's unit tests may reach anything.
        let code = text.split("#[cfg(test)]\nmod tests").next().unwrap_or("");
        for (n, line) in code.lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            for (at, _) in line.match_indices("crate::") {
                let named: String = line[at + "crate::".len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                if !named.is_empty() && named != module {
                    edges
                        .entry(module.clone())
                        .or_default()
                        .entry(named)
                        .or_insert_with(|| format!("{}:{}", relative.display(), n + 1));
                }
            }
        }
    }
    // A depth-first walk from every module; a module met again on the
    // current path closes a cycle.
    fn walk(
        module: &str,
        edges: &BTreeMap<String, BTreeMap<String, String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|m| m == module) {
            let mut cycle = path[at..].to_vec();
            cycle.push(module.to_string());
            return Some(cycle);
        }
        if !done.insert(module.to_string()) {
            return None;
        }
        path.push(module.to_string());
        for next in edges.get(module).into_iter().flat_map(|e| e.keys()) {
            if let Some(cycle) = walk(next, edges, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    for module in edges.keys() {
        if let Some(cycle) = walk(module, &edges, &mut Vec::new(), &mut done) {
            let steps: Vec<String> = cycle
                .windows(2)
                .map(|w| format!("{} -> {} ({})", w[0], w[1], edges[&w[0]][&w[1]]))
                .collect();
            panic!("an import cycle:\n{}", steps.join("\n"));
        }
    }
}
