//! The state report of a real echo_node: as text on SIGUSR2 (stderr or
//! `report_dir`), as JSON through `svckit report`; secrets never shown.

mod support;

use std::time::Duration;

use nix::sys::signal::Signal;
use support::node::Proc;

const SECRET: &str = "s3cret-Pa55word";
const WAIT: Duration = Duration::from_secs(10);

/// A config file for host `host` on a file registry in `dir`, with a
/// password the report must hide.
fn config_file(dir: &std::path::Path, host: &str, extra: &str) -> (String, String) {
    let registry = format!("file://{}", dir.join("registry").display());
    let path = dir.join("node.toml");
    std::fs::write(
        &path,
        format!(
            "host = \"{host}\"\nregistry = \"{registry}\"\nregistry_password = \"{SECRET}\"\n\
             report_interval = \"200ms\"\nperiodic_fuzzy_delay = 0\n{extra}"
        ),
    )
    .unwrap();
    (path.to_string_lossy().into_owned(), registry)
}

fn start(config: &str, dir: &std::path::Path) -> Proc {
    let ticks = dir.join("ticks").to_string_lossy().into_owned();
    let env = [
        ("ECHO_TICK_FILE", ticks.as_str()),
        ("ECHO_TICK_SCOPE", "node"),
        ("ECHO_TICK_MILLIS", "1"),
    ];
    Proc::start_example("echo_node", &["--config", config], &env).0
}

/// A whole text report: it ends with its end mark.
fn complete(text: &str) -> bool {
    text.contains(svckit::report::END)
}

/// A report is text another process writes: no event to wait for but the
/// text itself.
fn wait_for(what: &str, mut read: impl FnMut() -> Option<String>) -> String {
    let mut text = None;
    support::poll_until(WAIT, what, || {
        text = read();
        text.is_some()
    });
    text.unwrap_or_default()
}

fn assert_text_report(text: &str, host: &str) {
    for needle in [
        "==== node ====",
        &format!("\n  host: {host}\n"),
        "\n  topic: echo\n",
        "\n  state: serving\n",
        "==== registration ====\n  ",
        "\n  state: registered\n",
        "==== periodic_tasks ====",
        "name: tick",
        "registry_password:",
        "registry_password: ***  (",
        &format!("host: {host}\n"),
    ] {
        assert!(
            text.contains(needle),
            "no {needle:?} in the report:\n{text}"
        );
    }
    assert!(
        !text.contains(SECRET),
        "the report shows the password:\n{text}"
    );
}

#[test]
fn sigusr2_writes_a_text_report_without_secrets_and_svckit_report_returns_it_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let (config, registry) = config_file(dir.path(), "rep1", "");
    let node = start(&config, dir.path());

    node.signal(Signal::SIGUSR2);
    let text = wait_for("the report on stderr", || {
        let err = node.stderr();
        let at = err.find("==== package ====")?;
        complete(&err[at..]).then(|| err[at..].to_string())
    });
    assert_text_report(&text, "rep1");

    let (code, out, err) = Proc::run_cli(&[
        "report",
        "--registry",
        &registry,
        "--topic",
        "echo",
        "--host",
        "rep1",
    ]);
    assert_eq!(code, Some(0), "svckit report failed: {err}");
    assert!(!out.contains(SECRET), "the JSON report shows the password");
    let report: serde_json::Value = serde_json::from_str(&out).expect("JSON report");
    assert_eq!(report["node"]["host"], "rep1");
    assert_eq!(report["node"]["topic"], "echo");
    assert_eq!(report["node"]["state"], "serving");
    assert_eq!(report["registration"]["state"], "registered");
    assert_eq!(report["config"]["registry_password"]["value"], "***");
    assert_eq!(report["members"][0]["host"], "rep1");
    assert_eq!(report["members"][0]["state"], "up");
    assert_eq!(report["periodic_tasks"][0]["name"], "tick");
    assert_eq!(report["process"]["pid"], node.pid());
    // The CLI's own connection is open while the node answers.
    assert!(report["node"]["connections"]["open"].as_u64().unwrap() >= 1);
    assert!(report["node"]["connections"]["accepted"].as_u64().unwrap() >= 1);
    assert!(report["runtime"]["workers"].as_u64().unwrap() >= 1);
    assert_eq!(report["package"]["name"], "svckit");
    node.signal(Signal::SIGTERM);
}

#[test]
fn with_report_dir_sigusr2_writes_a_file_instead() {
    let dir = tempfile::tempdir().unwrap();
    let reports = dir.path().join("reports");
    let extra = format!("report_dir = \"{}\"\n", reports.display());
    let (config, _) = config_file(dir.path(), "rep2", &extra);
    let node = start(&config, dir.path());

    node.signal(Signal::SIGUSR2);
    let text = wait_for("a report file", || {
        let entry = std::fs::read_dir(&reports).ok()?.next()?.ok()?;
        let text = std::fs::read_to_string(entry.path()).ok()?;
        complete(&text).then_some(text)
    });
    assert_text_report(&text, "rep2");
    assert!(
        !node.stderr().contains("==== node ===="),
        "the report went to stderr too"
    );
    node.signal(Signal::SIGTERM);
}
