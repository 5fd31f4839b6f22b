//! Bad input to a kit binary: one clear line on stderr, the documented exit
//! code, and never a panic.

mod support;

use std::time::Duration;

use support::node::{example_bin, Proc};

/// Runs echo_node to completion; returns (exit code, stderr).
fn run(args: &[&str]) -> (Option<i32>, String) {
    let mut proc = Proc::spawn(example_bin("echo_node"), args, &[]);
    let status = proc.wait_exit(Duration::from_secs(20)).expect("exits");
    (status.code(), proc.stderr())
}

fn assert_one_line(code: Option<i32>, stderr: &str, want: i32, needle: &str) {
    assert_eq!(code, Some(want), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let lines: Vec<_> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line:\n{stderr}");
    assert!(lines[0].starts_with("echo_node: error: "), "{stderr}");
    assert!(lines[0].contains(needle), "{needle:?} not in {stderr}");
}

#[test]
fn unreadable_config_file_exits_78() {
    let (code, err) = run(&["--config", "/nonexistent/echo.toml"]);
    assert_one_line(code, &err, 78, "/nonexistent/echo.toml");
}

#[test]
fn invalid_value_names_option_and_line_and_exits_78() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "host = \"h\"\nreport_interval = \"often\"\n").unwrap();
    let (code, err) = run(&["--config", path.to_str().unwrap()]);
    assert_one_line(code, &err, 78, "`report_interval`");
    assert!(err.contains(&format!("{}:2", path.display())), "{err}");
}

#[test]
fn unknown_key_is_refused_with_78() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("typo.toml");
    std::fs::write(&path, "grace_period = 3\n").unwrap();
    let (code, err) = run(&["--config", path.to_str().unwrap()]);
    assert_one_line(code, &err, 78, "unknown option `grace_period`");
}

#[test]
fn zero_workers_exits_64() {
    let (code, err) = run(&["--workers", "0"]);
    assert_one_line(code, &err, 64, "workers");
}

#[test]
fn bad_registry_url_exits_64() {
    let (code, err) = run(&["--registry", "etcd//nohost"]);
    assert_one_line(code, &err, 64, "invalid registry URL");
}

#[test]
fn bad_flag_value_exits_78() {
    let (code, err) = run(&["--rpc-listen", "localhost"]);
    assert_one_line(code, &err, 78, "--rpc-listen");
}

#[test]
fn port_in_use_exits_71() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, err) = run(&["--rpc-listen", &addr, "--registry", "memory://"]);
    assert_one_line(code, &err, 71, &addr);
}
