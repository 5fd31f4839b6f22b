//! The dashboard without a browser: its JSON API, the rules of its admin
//! actions, its event stream (resume, a hundred clients), a node's
//! `/debug/members`, and the CLI's narrow and wide tables.

mod support;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::dashboard::{self, get, request, rss_kb};
use support::etcd::Etcd;
use support::node::{quick_node_args, Proc};
use support::{eventually, options, registration};

const WAIT: Duration = Duration::from_secs(10);
const TOKEN: &str = "s3cret-admin-token-0123456789";

fn members_json(url: &str) -> Vec<serde_json::Value> {
    let (code, out, err) = Proc::run_cli(&["members", "list", "--registry", url, "--json"]);
    assert_eq!(code, Some(0), "{err}");
    serde_json::from_str(&out).unwrap()
}

fn token_file(dir: &tempfile::TempDir) -> String {
    let path = dir.path().join("tokens");
    std::fs::write(&path, format!("# operators\nalice:{TOKEN}\n")).unwrap();
    path.to_string_lossy().into_owned()
}

fn action(action: &str, host: &str) -> String {
    serde_json::json!({"action": action, "topic": "echo", "host": host, "reason": "disk swap"})
        .to_string()
}

#[tokio::test]
async fn the_json_api_matches_the_cli_and_admin_actions_need_the_token_in_a_header() {
    let etcd = Etcd::start();
    let url = etcd.url().to_string();
    let (_a1, _) = Proc::start_example("echo_node", &quick_node_args(&url, "a1"), &[]);
    let (a2, _) = Proc::start_example("echo_node", &quick_node_args(&url, "a2"), &[]);
    let dir = tempfile::tempdir().unwrap();
    let tokens = token_file(&dir);
    let (dash, addr) = dashboard::start(&url, &["--admin", "--admin-token-file", &tokens]);

    // /api/members: the objects of `members list --json`, field for field.
    let api = get(addr, "/api/members");
    assert_eq!(api.status, 200, "{}", api.body);
    assert!(api.headers.contains("application/json"));
    assert_eq!(api.json(), serde_json::Value::Array(members_json(&url)));
    let only = get(addr, "/api/members?topic=none").json();
    assert_eq!(only, serde_json::json!([]));

    // The page is server-rendered: both rows are in the HTML.
    let page = get(addr, "/");
    assert_eq!(page.status, 200);
    assert!(page.body.contains(r#"data-host="a1""#) && page.body.contains(r#"data-host="a2""#));
    assert!(page.body.contains("2 of 2 up"), "{}", page.body);
    // Nothing is fetched from elsewhere.
    assert!(!page.body.contains(r#"src="http"#) && !page.body.contains(r#"href="http"#));

    let post = |target: &str, headers: &[(&str, &str)], body: &str| {
        request(addr, "POST", target, headers, body)
    };
    let bearer = format!("Bearer {TOKEN}");
    let json = ("Content-Type", "application/json");

    // No token: 401. A wrong one: 403. Nothing changed.
    let r = post("/api/admin", &[json], &action("disable", "a1"));
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.headers.contains("www-authenticate: bearer"));
    let r = post(
        "/api/admin",
        &[json, ("Authorization", "Bearer nope")],
        &action("disable", "a1"),
    );
    assert_eq!(r.status, 403, "{}", r.body);
    // A token in the URL is refused, even with the right one in the header.
    let r = post(
        &format!("/api/admin?token={TOKEN}"),
        &[json, ("Authorization", &bearer)],
        &action("disable", "a1"),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.json()["error"]
        .as_str()
        .unwrap()
        .contains("Authorization"));
    let m = members_json(&url);
    assert!(m.iter().all(|m| m["disabled"] == false), "{m:?}");

    // The right token in the header: done, as `svckit service disable`.
    let r = post(
        "/api/admin",
        &[json, ("Authorization", &bearer)],
        &action("disable", "a1"),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["member"]["disabled_reason"], "disk swap");
    let a1 = members_json(&url)
        .into_iter()
        .find(|m| m["host"] == "a1")
        .unwrap();
    assert_eq!(a1["disabled"], true);
    assert_eq!(a1["disabled_reason"], "disk swap");
    // Deleting an up record is refused, as the CLI does without --force.
    let r = post(
        "/api/admin",
        &[json, ("Authorization", &bearer)],
        &action("delete", "a2"),
    );
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(members_json(&url).iter().any(|m| m["host"] == "a2"));
    // A down one goes.
    a2.signal(Signal::SIGKILL);
    eventually(WAIT, "a2 down", || async {
        members_json(&url)
            .iter()
            .any(|m| m["host"] == "a2" && m["state"] == "down")
            .then_some(())
    })
    .await;
    let r = post(
        "/api/admin",
        &[json, ("Authorization", &bearer)],
        &action("delete", "a2"),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(members_json(&url).iter().all(|m| m["host"] != "a2"));
    let r = post(
        "/api/admin",
        &[json, ("Authorization", &bearer)],
        &action("enable", "nope"),
    );
    assert_eq!(r.status, 404, "{}", r.body);

    // Every action is logged with who and what; the token never is.
    dash.wait_for_log("admin action done", WAIT);
    let log = dash.stderr();
    assert!(
        log.lines().any(|l| l.contains("alice")
            && l.contains("disable")
            && l.contains("a1")
            && l.contains("disk swap")),
        "{log}"
    );
    assert!(log.contains("admin action failed"), "{log}");
    assert!(!log.contains(TOKEN), "the token was logged:\n{log}");

    // Without --admin, actions are refused whatever the token.
    let (_ro, ro_addr) = dashboard::start(&url, &[]);
    let r = request(
        ro_addr,
        "POST",
        "/api/admin",
        &[json, ("Authorization", &bearer)],
        &action("enable", "a1"),
    );
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.json()["error"].as_str().unwrap().contains("--admin"));
    let page = get(ro_addr, "/").body;
    assert!(!page.contains(r#"id="token""#) && !page.contains("data-action"));
}

#[test]
fn admin_needs_a_token_file_and_the_file_a_token() {
    let (code, _, err) = Proc::run_cli(&["dashboard", "--registry", "memory://", "--admin"]);
    assert_eq!(code, Some(64), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("--admin-token-file"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "# nobody\n\n").unwrap();
    let (code, _, err) = Proc::run_cli(&[
        "dashboard",
        "--registry",
        "memory://",
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "--admin-token-file",
        empty.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(78), "{err}");
    assert!(err.contains("holds no token"), "{err}");
}

/// An open `GET /api/events` on a raw socket.
struct EventClient {
    stream: std::net::TcpStream,
    seen: String,
}

impl EventClient {
    fn open(addr: std::net::SocketAddr, headers: &str) -> EventClient {
        EventClient::open_at(addr, "/api/events", headers)
    }

    fn open_at(addr: std::net::SocketAddr, path: &str, headers: &str) -> EventClient {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}\r\n"
        )
        .unwrap();
        EventClient {
            stream,
            seen: String::new(),
        }
    }

    /// Reads until `needle` was received, or panics after `within`.
    fn wait_for(&mut self, needle: &str, within: Duration) {
        let deadline = Instant::now() + within;
        let mut buf = [0u8; 16384];
        while !self.seen.contains(needle) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no {needle:?} on the event stream within {within:?}; got:\n{}",
                self.seen
            );
            self.stream.set_read_timeout(Some(left)).unwrap();
            match self.stream.read(&mut buf) {
                Ok(0) => panic!("the event stream closed; got:\n{}", self.seen),
                Ok(n) => self.seen.push_str(&String::from_utf8_lossy(&buf[..n])),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => panic!("reading the event stream: {e}"),
            }
        }
    }

    /// The `id:` of the last frame received.
    fn last_id(&self) -> String {
        self.seen
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("id: "))
            .expect("an id")
            .to_string()
    }
}

#[tokio::test]
async fn the_event_stream_resumes_from_the_last_event_id() {
    let etcd = Etcd::start();
    let url = etcd.url().to_string();
    let registry = svckit::servicegroup::connect(&etcd.url(), &options())
        .await
        .unwrap();
    let _m1 = registry.join(registration("t", "h1")).await.unwrap();
    let (_dash, addr) = dashboard::start(&url, &[]);

    // A new client gets a snapshot first.
    let mut first = EventClient::open(addr, "");
    first.wait_for("event: snapshot", WAIT);
    assert!(first.seen.contains(r#""host":"h1""#), "{}", first.seen);
    let id = first.last_id();
    drop(first);

    // Two changes while it is away...
    let _m2 = registry.join(registration("t", "h2")).await.unwrap();
    registry
        .set_admin(
            "t",
            "h1",
            svckit::servicegroup::AdminChange::ForceDown(true),
        )
        .await
        .unwrap();
    let mut watcher = EventClient::open(addr, "");
    watcher.wait_for(r#""forced_down":true"#, WAIT);

    // ...are all it gets when it comes back with its last id: no snapshot.
    let mut back = EventClient::open(addr, &format!("Last-Event-ID: {id}\r\n"));
    back.wait_for(r#""forced_down":true"#, WAIT);
    assert!(!back.seen.contains("event: snapshot"), "{}", back.seen);
    assert!(back.seen.contains(r#""event":"join""#) && back.seen.contains(r#""host":"h2""#));
    assert!(back.seen.contains(r#""event":"leave""#), "{}", back.seen);

    // An id from another dashboard process means a snapshot.
    let mut foreign = EventClient::open(addr, "Last-Event-ID: 1-1\r\n");
    foreign.wait_for("event: snapshot", WAIT);
}

#[tokio::test]
async fn a_hundred_event_clients_all_get_one_event_and_cost_little_memory() {
    let etcd = Etcd::start();
    let url = etcd.url().to_string();
    let (dash, addr) = dashboard::start(&url, &[]);
    // Warm: the first request has set up what every one shares.
    let mut one = EventClient::open(addr, "");
    one.wait_for("event: snapshot", WAIT);
    drop(one);
    let before = rss_kb(dash.pid());

    let mut clients: Vec<EventClient> = (0..100).map(|_| EventClient::open(addr, "")).collect();
    for c in &mut clients {
        c.wait_for("event: snapshot", WAIT);
    }
    let (_node, _) = Proc::start_example("echo_node", &quick_node_args(&url, "n1"), &[]);
    for c in &mut clients {
        c.wait_for(r#""event":"join""#, WAIT);
        assert!(c.seen.contains(r#""host":"n1""#));
    }
    let after = rss_kb(dash.pid());
    let cost = after.saturating_sub(before);
    println!(
        "dashboard RSS: {before} kB idle, {after} kB with 100 event clients (+{cost} kB, {:.1} kB each)",
        cost as f64 / 100.0
    );
    assert!(
        cost < 50 * 1024,
        "100 event clients cost {cost} kB of RSS (limit 50 MB)"
    );
}

#[tokio::test]
async fn a_node_serves_the_dashboard_at_debug_members_when_asked() {
    let etcd = Etcd::start();
    let url = etcd.url().to_string();
    let mut args = quick_node_args(&url, "w1");
    args.extend(["--http-listen", "127.0.0.1:0"]);
    let (node, _) = Proc::start_example("echo_node", &args, &[("SVCKIT_HTTP_DASHBOARD", "true")]);
    let http: std::net::SocketAddr = node.ready()["http"]
        .as_str()
        .unwrap()
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    // The page shows what the node's watch has seen: its own join may
    // reach the watch a moment after the node says it is ready.
    let page = eventually(WAIT, "the node's own row on its page", || async {
        let page = get(http, "/debug/members");
        assert_eq!(page.status, 200, "{}", page.body);
        page.body.contains(r#"data-host="w1""#).then_some(page)
    })
    .await;
    assert!(page.body.contains(r#"src="/debug/members/dashboard.js""#));
    let api = get(http, "/debug/members/api/members").json();
    assert_eq!(api[0]["host"], "w1");
    // Read-only: no admin actions on a node.
    let r = request(
        http,
        "POST",
        "/debug/members/api/admin",
        &[("Authorization", "Bearer x")],
        "{}",
    );
    assert_eq!(r.status, 403);

    // An open event stream does not hold the node's stop.
    let mut events = EventClient::open_at(http, "/debug/members/api/events", "");
    events.wait_for("event: snapshot", WAIT);
    node.signal(Signal::SIGTERM);
    let mut node = node;
    let status = node.wait_exit(WAIT).expect("the node stops");
    assert_eq!(status.code(), Some(0), "{}", node.stderr());

    // Off by default.
    let (plain, _) = Proc::start_example("echo_node", &args[..], &[]);
    let http: std::net::SocketAddr = plain.ready()["http"]
        .as_str()
        .unwrap()
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    assert_eq!(get(http, "/debug/members").status, 404);
}

#[tokio::test]
async fn members_list_fits_100_columns_and_wide_shows_every_column() {
    let etcd = Etcd::start();
    let url = etcd.url().to_string();
    let registry = svckit::servicegroup::connect(&etcd.url(), &options())
        .await
        .unwrap();
    let long_host = format!("compute-{}", "x".repeat(60));
    let long_topic = format!("conductor-{}", "y".repeat(40));
    let mut reg = registration(&long_topic, &long_host);
    reg.advert.endpoints.grpc = Some(format!("http://{long_host}.example.org:7000"));
    let _m = registry.join(reg).await.unwrap();
    let _short = registry.join(registration("echo", "e1")).await.unwrap();
    registry
        .set_admin(
            "echo",
            "e1",
            svckit::servicegroup::AdminChange::Disable {
                reason: Some("disk swap".into()),
            },
        )
        .await
        .unwrap();

    let (code, table, err) = Proc::run_cli(&["members", "list", "--registry", &url]);
    assert_eq!(code, Some(0), "{err}");
    for line in table.lines() {
        assert!(line.chars().count() <= 100, "{line:?} is wider than 100");
    }
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["HOST", "TOPIC", "STATE", "SINCE", "VERSION", "ENDPOINT"]
    );
    let e1 = table
        .lines()
        .find(|l| l.starts_with("e1 "))
        .expect("e1's row");
    assert!(e1.contains("up,disabled"), "{e1}");
    assert!(table.contains("compute-xxx"), "{table}");

    let (code, wide, _) = Proc::run_cli(&["members", "list", "--registry", &url, "--wide"]);
    assert_eq!(code, Some(0));
    let header: Vec<&str> = wide.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header.len(), 12, "{wide}");
    assert!(
        wide.contains(&long_host) && wide.contains("disk swap"),
        "{wide}"
    );

    // --json is unchanged: every field of the contract.
    let json = members_json(&url);
    let fields: BTreeSet<&str> = json[0]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        fields,
        BTreeSet::from([
            "topic",
            "host",
            "binary",
            "endpoint",
            "state",
            "disabled",
            "disabled_reason",
            "forced_down",
            "version",
            "workers",
            "services",
            "updated_at"
        ])
    );
}
