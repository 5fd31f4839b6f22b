//! Real node processes for integration tests: spawned from the built
//! examples, their stderr collected, killed on drop.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Path of a built example (cargo test builds the examples beside the tests).
pub fn example_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let path = dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} is not built: run the tests with `cargo test` (which builds the examples)",
        path.display()
    );
    path
}

/// echo_node flags for a node registered at `registry` with short
/// heartbeats (200 ms, down after 1 s) so that tests stay quick.
pub fn quick_node_args<'a>(registry: &'a str, host: &'a str) -> Vec<&'a str> {
    vec![
        "--registry",
        registry,
        "--host",
        host,
        "--rpc-listen",
        "127.0.0.1:0",
        "--report-interval",
        "0.2",
        "--service-down-time",
        "1",
    ]
}

/// A running (or exited) kit process.
pub struct Proc {
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    /// The threads reading stdout and stderr: done once the pipes close.
    readers: Vec<std::thread::JoinHandle<()>>,
    /// Holds the node's `ready_file`, where it writes its bound endpoint.
    ready_dir: tempfile::TempDir,
}

/// Collects a pipe's lines into a shared string, on a thread.
fn collect(
    pipe: impl std::io::Read + Send + 'static,
) -> (Arc<Mutex<String>>, std::thread::JoinHandle<()>) {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = text.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            let mut s = sink.lock().unwrap();
            s.push_str(&line);
            s.push('\n');
        }
    });
    (text, reader)
}

impl Proc {
    /// Spawns `program args…` with extra environment, stderr collected.
    pub fn spawn(program: PathBuf, args: &[&str], env: &[(&str, &str)]) -> Proc {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let ready_dir = tempfile::tempdir().expect("temp dir for the ready file");
        cmd.env("SVCKIT_READY_FILE", ready_dir.path().join("ready.json"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn node process");
        let (stdout, out_reader) = collect(child.stdout.take().expect("stdout pipe"));
        let (stderr, err_reader) = collect(child.stderr.take().expect("stderr pipe"));
        Proc {
            child,
            stdout,
            stderr,
            readers: vec![out_reader, err_reader],
            ready_dir,
        }
    }

    /// Starts an example and waits until it serves; returns it and its
    /// bound gRPC address.
    pub fn start_example(name: &str, args: &[&str], env: &[(&str, &str)]) -> (Proc, SocketAddr) {
        let mut proc = Proc::spawn(example_bin(name), args, env);
        let addr = proc.wait_for_endpoint(Duration::from_secs(30));
        (proc, addr)
    }

    /// The node's ready file, parsed (it must exist: see `wait_for_endpoint`).
    pub fn ready(&self) -> serde_json::Value {
        let path = self.ready_dir.path().join("ready.json");
        let text = std::fs::read_to_string(&path).expect("the ready file exists");
        serde_json::from_str(&text).expect("ready file is JSON")
    }

    /// Waits for the node's ready file (written once it serves and is
    /// registered) and returns the gRPC address in it.
    pub fn wait_for_endpoint(&mut self, timeout: Duration) -> SocketAddr {
        let path = self.ready_dir.path().join("ready.json");
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(text) = std::fs::read_to_string(&path) {
                let ready: serde_json::Value =
                    serde_json::from_str(&text).expect("ready file is JSON");
                let url = ready["grpc"].as_str().expect("grpc endpoint in ready file");
                return url
                    .trim_start_matches("http://")
                    .trim_start_matches("https://")
                    .parse()
                    .expect("endpoint is host:port");
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "node exited with {status} before serving:\n{}",
                    self.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "node did not start in time:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The `svckit` CLI binary.
    pub fn cli(args: &[&str]) -> Proc {
        Proc::spawn(PathBuf::from(env!("CARGO_BIN_EXE_svckit")), args, &[])
    }

    /// Runs the `svckit` CLI to completion: (exit code, stdout, stderr).
    pub fn run_cli(args: &[&str]) -> (Option<i32>, String, String) {
        let mut proc = Proc::cli(args);
        let status = proc
            .wait_exit(Duration::from_secs(30))
            .expect("svckit exits");
        (status.code(), proc.stdout(), proc.stderr())
    }

    /// Everything the process wrote to stdout so far.
    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until stderr contains `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.stderr().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The worker pids a supervisor's log names as serving (or adopted
    /// serving), less those it names as stopped or exited.
    pub fn serving_workers(&self) -> std::collections::BTreeSet<u32> {
        let log = self.stderr();
        let mut pids = std::collections::BTreeSet::new();
        for line in log.lines().filter(|l| l.contains("pool: worker serving")) {
            if let Some(pid) = log_field(line, "pid") {
                pids.insert(pid);
            }
        }
        for line in log
            .lines()
            .filter(|l| l.contains("pool: worker stopped") || l.contains("pool: worker exited"))
        {
            if let Some(pid) = log_field(line, "pid") {
                pids.remove(&pid);
            }
        }
        pids
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).expect("send signal");
    }

    /// Waits for the process to exit; `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // Everything the process wrote is read once its pipes close
                // (a child of its own may keep them open: bounded).
                let drained = Instant::now() + Duration::from_secs(5);
                while self.readers.iter().any(|r| !r.is_finished()) && Instant::now() < drained {
                    std::thread::sleep(Duration::from_millis(5));
                }
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A numeric `name=value` field of a log line.
pub fn log_field(line: &str, name: &str) -> Option<u32> {
    let rest = line.split(&format!(" {name}=")).nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}
