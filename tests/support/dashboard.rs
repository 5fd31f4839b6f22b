//! `svckit dashboard` processes and plain HTTP/1.1 requests to them.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::node::Proc;

/// Starts `svckit dashboard --registry URL --listen 127.0.0.1:0 extra…` and
/// waits for the address it prints.
pub fn start(registry: &str, extra: &[&str]) -> (Proc, SocketAddr) {
    start_on(registry, "127.0.0.1:0", extra)
}

/// [`start`] on a given address (to restart one where its page expects it).
pub fn start_on(registry: &str, listen: &str, extra: &[&str]) -> (Proc, SocketAddr) {
    let mut args = vec!["dashboard", "--registry", registry, "--listen", listen];
    args.extend_from_slice(extra);
    let mut proc = Proc::cli(&args);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(addr) = proc
            .stdout()
            .lines()
            .find_map(|l| l.strip_prefix("listening on http://"))
            .map(|a| a.trim_end_matches('/').parse().expect("an address"))
        {
            return (proc, addr);
        }
        if let Some(status) = proc.wait_exit(Duration::ZERO) {
            panic!("the dashboard exited with {status}:\n{}", proc.stderr());
        }
        assert!(
            Instant::now() < deadline,
            "the dashboard did not start:\n{}",
            proc.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A response: status, header block (lower-cased), body.
pub struct Response {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

impl Response {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// One request on a fresh connection (`Connection: close`).
pub fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Response {
    let mut stream = TcpStream::connect(addr).expect("connect to the dashboard");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut req = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    stream.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read the response");
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").expect("a header block");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let headers = head.to_ascii_lowercase();
    let body = if headers.contains("transfer-encoding: chunked") {
        dechunk(body)
    } else {
        body.to_string()
    };
    Response {
        status,
        headers,
        body,
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

pub fn get(addr: SocketAddr, target: &str) -> Response {
    request(addr, "GET", target, &[], "")
}

/// A process's resident set size in kB, from /proc.
pub fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc status")
}
