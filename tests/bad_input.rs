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
    assert_one_line_of("echo_node", code, stderr, want, needle);
}

fn assert_one_line_of(program: &str, code: Option<i32>, stderr: &str, want: i32, needle: &str) {
    assert_eq!(code, Some(want), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("RUST_BACKTRACE"), "{stderr}");
    let lines: Vec<_> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line:\n{stderr}");
    assert!(
        lines[0].starts_with(&format!("{program}: error: ")),
        "{stderr}"
    );
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
fn an_unknown_flag_exits_64_with_one_line() {
    let (code, err) = run(&["--bogus"]);
    assert_one_line(code, &err, 64, "--bogus");
    let mut svckit = Proc::spawn(
        std::path::PathBuf::from(env!("CARGO_BIN_EXE_svckit")),
        &["--bogus"],
        &[],
    );
    let status = svckit.wait_exit(Duration::from_secs(20)).expect("exits");
    assert_one_line_of("svckit", status.code(), &svckit.stderr(), 64, "--bogus");
}

#[test]
fn a_flag_without_its_value_exits_64() {
    let (code, err) = run(&["--report-interval"]);
    assert_one_line(code, &err, 64, "--report-interval");
}

#[test]
fn a_negative_duration_is_a_value_refused_with_78_naming_the_option() {
    let (code, err) = run(&["--service-down-time", "-5"]);
    assert_one_line(code, &err, 78, "service_down_time");
    assert!(err.contains("--service-down-time"), "{err}");
}

#[test]
fn port_in_use_exits_71() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, err) = run(&["--rpc-listen", &addr, "--registry", "memory://"]);
    assert_one_line(code, &err, 71, &addr);
}

/// Registry URLs wrong in each way: (URL, exit code, what the line names).
const BAD_REGISTRIES: &[(&str, i32, &str)] = &[
    ("", 64, "no scheme"),
    ("redis://h:6379", 64, "unknown scheme \"redis\""),
    ("etcd://:2379", 64, "has no host"),
    ("etcd://", 64, "has no port"),
    ("etcd://h1", 64, "has no port"),
    ("etcd://h1:99999", 64, "bad port"),
    ("etcd://h1:port", 64, "bad port"),
    ("etcd://h1:2379/svckit", 64, "unexpected path \"svckit\""),
    (
        "etcd://h1:2379?prefix=/p&color=red",
        64,
        "unknown parameter \"color=red\"",
    ),
    ("etcd://h1:2379?prefix=p", 64, "prefix must start with '/'"),
    ("file://relative/dir", 64, "absolute path"),
    // A file registry on a path that cannot be a directory: unavailable.
    ("file:///dev/null/registry", 69, "/dev/null/registry"),
    ("file:///proc/svckit-registry", 69, "/proc/svckit-registry"),
];

#[test]
fn registry_urls_wrong_in_each_way_get_their_exit_code_and_one_line() {
    for &(url, want, needle) in BAD_REGISTRIES {
        let (code, err) = run(&["--registry", url]);
        assert_one_line(code, &err, want, needle);
        if want == 64 {
            assert!(
                err.contains(&format!("{url:?}")),
                "the URL is not named: {err}"
            );
        }
        let (code, _, err) = Proc::run_cli(&["members", "list", "--registry", url]);
        assert_one_line_of("svckit", code, &err, want, needle);
    }
}

#[test]
fn a_file_registry_on_a_regular_file_is_unavailable() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let url = format!("file://{}", file.path().display());
    let (code, err) = run(&["--registry", &url]);
    assert_one_line(code, &err, 69, &file.path().display().to_string());
}

/// Config files wrong in each way: (name, bytes, what the line names).
fn bad_config_files() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    vec![
        (
            "not-toml",
            b"this is not toml\n".to_vec(),
            "invalid config file",
        ),
        ("array", b"workers = [1, 2]\n".to_vec(), "`workers`"),
        ("table", b"[registry]\nx = 1\n".to_vec(), "`registry`"),
        (
            "duration",
            b"report_interval = true\n".to_vec(),
            "`report_interval`",
        ),
        (
            "bool",
            b"http_keep_alive = 3\n".to_vec(),
            "`http_keep_alive`",
        ),
        (
            "number",
            b"max_message_size = \"big\"\n".to_vec(),
            "`max_message_size`",
        ),
        ("address", b"rpc_listen = 7000\n".to_vec(), "`rpc_listen`"),
        (
            "duplicate",
            b"host = \"a\"\nhost = \"b\"\n".to_vec(),
            "duplicate key",
        ),
        (
            "too-many",
            b"workers = 5000\n".to_vec(),
            "5000 is outside 1 to 1024",
        ),
        (
            "too-small",
            b"max_message_size = 10\n".to_vec(),
            "`max_message_size`",
        ),
        (
            "negative",
            b"report_interval = -1\n".to_vec(),
            "`report_interval`",
        ),
        (
            "too-long",
            b"rpc_handshake_timeout = \"2h\"\n".to_vec(),
            "`rpc_handshake_timeout`",
        ),
        (
            "zero",
            b"rpc_max_connections = 0\n".to_vec(),
            "`rpc_max_connections`",
        ),
        (
            "huge",
            b"http_pool_size = 99999999999999999999999\n".to_vec(),
            "invalid config file",
        ),
        (
            "unknown",
            b"rpc_max_connection = 5\n".to_vec(),
            "unknown option `rpc_max_connection`",
        ),
        ("bad-host", b"host = \"a/b\"\n".to_vec(), "`host`"),
        ("non-utf8", b"host = \"\xff\xfe\"\n".to_vec(), "valid UTF-8"),
        ("nul", b"host = \"a\0b\"\n".to_vec(), "invalid config file"),
    ]
}

#[test]
fn config_files_wrong_in_each_way_exit_78_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes, needle) in bad_config_files() {
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, bytes).unwrap();
        let path = path.to_str().unwrap();
        let (code, err) = run(&["--config", path, "--registry", "memory://"]);
        assert_one_line(code, &err, 78, needle);
        assert!(err.contains(path), "{name}: the file is not named: {err}");
    }
    // A directory where the file should be.
    let path = dir.path().to_str().unwrap();
    let (code, err) = run(&["--config", path]);
    assert_one_line(code, &err, 78, path);
    // The CLI reads the same file for its registry options.
    let (code, _, err) = Proc::run_cli(&["members", "list", "--config", path]);
    assert_one_line_of("svckit", code, &err, 78, path);
}

#[test]
fn an_empty_config_file_means_the_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.toml");
    std::fs::write(&path, b"").unwrap();
    let (mut node, _addr) = Proc::start_example(
        "echo_node",
        &[
            "--config",
            path.to_str().unwrap(),
            "--registry",
            "memory://",
        ],
        &[],
    );
    assert!(
        node.wait_exit(Duration::ZERO).is_none(),
        "{}",
        node.stderr()
    );
}

/// `backdoor_port` in a build without the console would do nothing: it is
/// refused, saying how to build with it; a value that is no port nor
/// address is refused as any bad value is.
#[test]
fn a_backdoor_port_without_the_console_or_with_a_bad_value_exits_78() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("console.toml");
    std::fs::write(&path, "backdoor_port = \"later\"\n").unwrap();
    let (code, err) = run(&["--config", path.to_str().unwrap()]);
    assert_one_line(code, &err, 78, "`backdoor_port`");
    if cfg!(all(feature = "console", tokio_unstable)) {
        return;
    }
    std::fs::write(&path, "backdoor_port = 6669\n").unwrap();
    let (code, err) = run(&["--config", path.to_str().unwrap()]);
    assert_one_line(
        code,
        &err,
        78,
        "backdoor_port needs a build with the console",
    );
}
