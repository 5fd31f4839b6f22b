//! The dashboard in a real browser: headless Chromium (Debian's `chromium`
//! and `chromium-driver`) driven over WebDriver, against a real etcd and
//! real nodes. Every wait polls the page until a condition holds, within a
//! bound that fails the test with what the page showed.

mod support;

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use nix::sys::signal::Signal;
use serde_json::{json, Value};
use support::dashboard;
use support::etcd::Etcd;
use support::node::{quick_node_args, Proc};
use support::ports::free_port;

const WAIT: Duration = Duration::from_secs(15);
const TOKEN: &str = "browser-test-token-0123456789";

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}

/// Chromium and chromedriver, or a failure that says how to get them.
fn browser_binaries() -> (PathBuf, PathBuf) {
    match (on_path("chromium"), on_path("chromedriver")) {
        (Some(chromium), Some(driver)) => (chromium, driver),
        _ => panic!(
            "the dashboard's browser tests need Chromium and its WebDriver: install them with \
             `apt-get install -y chromium chromium-driver` (Debian), or run `scripts/test`, \
             which installs them"
        ),
    }
}

/// chromedriver on a free port, in its own process group so that the
/// browsers it starts go with it, even when the test fails.
struct Driver {
    child: Child,
    port: u16,
    /// The browser's fresh profile.
    _profile: tempfile::TempDir,
    profile_path: PathBuf,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            Signal::SIGKILL,
        );
        let _ = self.child.wait();
    }
}

impl Driver {
    fn start(driver: &PathBuf) -> Driver {
        let port = free_port();
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start chromedriver");
        let profile = tempfile::tempdir().unwrap();
        let profile_path = profile.path().to_path_buf();
        let driver = Driver {
            child,
            port,
            _profile: profile,
            profile_path,
        };
        // chromedriver says nothing when it listens: try to connect.
        support::poll_until(WAIT, &format!("chromedriver on {port}"), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        driver
    }

    async fn browser(&self, chromium: &PathBuf) -> Client {
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1920,1080",
        ]
        .iter()
        .map(|a| a.to_string())
        .chain([format!("--user-data-dir={}", self.profile_path.display())])
        .collect::<Vec<_>>();
        let caps = json!({
            "goog:chromeOptions": { "binary": chromium, "args": args }
        });
        let Value::Object(caps) = caps else {
            unreachable!()
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("a WebDriver session with headless Chromium")
    }
}

/// Runs `script` (which `return`s a value) until the value is truthy;
/// panics after `within` with the last value and the page's status line.
async fn wait_js(c: &Client, within: Duration, what: &str, script: &str) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let value = c.execute(script, vec![]).await.expect("run a script");
        let truthy = !matches!(&value, Value::Null | Value::Bool(false))
            && value != json!(0)
            && value != json!("");
        if truthy {
            return value;
        }
        if Instant::now() >= deadline {
            let status = c
                .execute(
                    "return document.getElementById('status').textContent",
                    vec![],
                )
                .await
                .unwrap_or_default();
            panic!("no {what} within {within:?}: last {value}, page status {status}");
        }
        // The page tells nothing outside itself: read its DOM again.
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn row_js(host: &str) -> String {
    format!("const tr = document.querySelector('tr.member[data-host=\"{host}\"]');")
}

async fn click_action(c: &Client, host: &str, action: &str) {
    c.find(Locator::Css(&format!(
        "tr.member[data-host=\"{host}\"] button[data-action=\"{action}\"]"
    )))
    .await
    .unwrap_or_else(|e| panic!("no {action} button on {host}'s row: {e}"))
    .click()
    .await
    .unwrap();
}

async fn disable_from_page(c: &Client, host: &str, reason: &str) {
    click_action(c, host, "disable").await;
    let field = c.find(Locator::Id("reason")).await.unwrap();
    field.send_keys(reason).await.unwrap();
    c.find(Locator::Id("reason-ok"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

async fn set_token(c: &Client, token: &str) {
    let field = c.find(Locator::Id("token")).await.unwrap();
    field.clear().await.unwrap();
    field.send_keys(token).await.unwrap();
}

fn members_json(url: &str) -> Vec<Value> {
    let (code, out, err) = Proc::run_cli(&["members", "list", "--registry", url, "--json"]);
    assert_eq!(code, Some(0), "{err}");
    serde_json::from_str(&out).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_follows_the_fleet_and_acts_with_the_token() {
    let (chromium, chromedriver) = browser_binaries();
    let etcd = Etcd::start();
    let url = etcd.url().to_string();
    let mut nodes: Vec<Proc> = ["n1", "n2", "n3"]
        .iter()
        .map(|h| Proc::start_example("echo_node", &quick_node_args(&url, h), &[]).0)
        .collect();
    let dir = tempfile::Builder::new()
        .prefix("svckit-dashboard-test-")
        .tempdir()
        .unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("ops:{TOKEN}\n")).unwrap();
    let tokens = tokens.to_string_lossy().into_owned();
    let admin = ["--admin", "--admin-token-file", tokens.as_str()];
    let (dash, addr) = dashboard::start(&url, &admin);

    let driver = Driver::start(&chromedriver);
    let c = driver.browser(&chromium).await;
    c.goto(&format!("http://{addr}/")).await.unwrap();
    wait_js(
        &c,
        WAIT,
        "3 rows up and a live stream",
        "return document.querySelectorAll('section[data-topic=\"echo\"] tr.member[data-state=\"up\"]').length === 3
            && document.getElementById('status').dataset.state === 'live'",
    )
    .await;
    let header = c
        .find(Locator::Css("section[data-topic=\"echo\"] .count"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(header, "3 of 3 up");
    // Marks this load: a reload would lose it.
    c.execute("window.sameLoad = true; return true", vec![])
        .await
        .unwrap();

    // A node that stops shows down, without a reload, within 2 s.
    nodes[1].signal(Signal::SIGTERM);
    wait_js(
        &c,
        Duration::from_secs(2),
        "n2 down without a reload",
        &format!(
            "{} return tr && tr.dataset.state === 'down'
                && tr.querySelector('.badge').textContent === 'down'
                && window.sameLoad === true",
            row_js("n2")
        ),
    )
    .await;
    wait_js(
        &c,
        WAIT,
        "the header counting 2 of 3",
        "return document.querySelector('section[data-topic=\"echo\"] .count').textContent === '2 of 3 up'",
    )
    .await;

    // The state filter shows the down node alone, and all again.
    let filter = c.find(Locator::Id("f-state")).await.unwrap();
    filter.select_by_value("down").await.unwrap();
    let shown = "return [...document.querySelectorAll('tr.member')]
        .filter((tr) => !tr.hidden).map((tr) => tr.dataset.host).join(' ')";
    wait_js(
        &c,
        WAIT,
        "only n2 under the `down` filter",
        &shown.replace("return ", "return 'n2' === "),
    )
    .await;
    filter.select_by_value("").await.unwrap();
    wait_js(
        &c,
        WAIT,
        "every row without a filter",
        &shown.replace("return ", "return 'n1 n2 n3' === "),
    )
    .await;

    // A wrong token: the page shows the error, nothing changes.
    set_token(&c, "not-the-token").await;
    disable_from_page(&c, "n3", "disk swap").await;
    let error = wait_js(
        &c,
        WAIT,
        "the refusal on the page",
        "const e = document.getElementById('error'); return !e.hidden && e.textContent",
    )
    .await;
    assert!(
        error.as_str().unwrap().contains("403"),
        "{error}: should name the refusal"
    );
    assert!(members_json(&url).iter().all(|m| m["disabled"] == false));

    // The right one: disabled with its reason, on the page and in the CLI.
    set_token(&c, TOKEN).await;
    disable_from_page(&c, "n3", "disk swap").await;
    wait_js(
        &c,
        WAIT,
        "n3 disabled with its reason",
        &format!(
            "{} return tr.dataset.disabled === 'true'
                && tr.querySelector('td.disabled').textContent === 'disabled: disk swap'
                && document.getElementById('error').hidden",
            row_js("n3")
        ),
    )
    .await;
    let n3 = members_json(&url)
        .into_iter()
        .find(|m| m["host"] == "n3")
        .unwrap();
    assert_eq!(
        (n3["disabled"].clone(), n3["state"].clone()),
        (json!(true), json!("up"))
    );
    assert_eq!(n3["disabled_reason"], "disk swap");
    let (_, table, _) = Proc::run_cli(&["members", "list", "--registry", &url]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("n3 ") && l.contains("up,disabled")),
        "{table}"
    );
    dash.wait_for_log("admin action done", WAIT);
    assert!(dash.stderr().contains("ops"), "who acted is logged");

    let screenshot = dir.path().join("dashboard.png");
    std::fs::write(&screenshot, c.screenshot().await.unwrap()).unwrap();

    // Deleting the stopped node's record from the page: its row goes.
    click_action(&c, "n2", "delete").await;
    wait_js(
        &c,
        WAIT,
        "n2's row gone",
        &format!("{} return !tr", row_js("n2")),
    )
    .await;

    // The dashboard restarts: the page says the stream dropped, reconnects
    // by itself and says so, and follows the fleet again.
    drop(dash);
    wait_js(
        &c,
        WAIT,
        "the page saying the stream dropped",
        "return document.getElementById('status').dataset.state === 'reconnecting'",
    )
    .await;
    let (_dash, _) = dashboard::start_on(&url, &addr.to_string(), &admin);
    wait_js(
        &c,
        WAIT,
        "the page saying it reconnected",
        "return document.getElementById('status').dataset.state === 'reconnected'
            && document.getElementById('status').textContent.includes('reconnected')",
    )
    .await;
    nodes.push(Proc::start_example("echo_node", &quick_node_args(&url, "n4"), &[]).0);
    wait_js(
        &c,
        WAIT,
        "a new node's row, up, after the reconnect",
        &format!(
            "{} return tr && tr.dataset.state === 'up' && window.sameLoad === true",
            row_js("n4")
        ),
    )
    .await;
    let kept = dir.keep();
    println!(
        "dashboard screenshot: {}",
        kept.join("dashboard.png").display()
    );
    c.close().await.unwrap();
}

/// 1,000 records (`DASHBOARD_RECORDS`, a multiple of 100, for another
/// count): how long the first render takes, and whether a burst of as many
/// updates freezes the tab (the longest task). Figures are printed
/// (scripts/bench-dashboard and scripts/bench-fleet collect them), not
/// asserted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_records_render_and_update_in_the_browser() {
    let records: usize = std::env::var("DASHBOARD_RECORDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000);
    let batches = records / 100;
    let (chromium, chromedriver) = browser_binaries();
    let etcd = Etcd::start();
    let url = etcd.url().to_string();
    let mut raw = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .unwrap();
    let now = std::time::SystemTime::now();
    let record = |i: usize, disabled: bool| {
        let topic = format!("topic{:03}", i / 100);
        let mut r = support::registration(&topic, &format!("host{i:05}")).to_record(now);
        r.disabled = disabled;
        r.disabled_reason = disabled.then(|| "burst".to_string());
        let key = format!("/test/services/{topic}/{}", r.advert.host);
        etcd_client::TxnOp::put(key, serde_json::to_vec(&r).unwrap(), None)
    };
    for batch in 0..batches {
        let puts: Vec<_> = (0..100).map(|i| record(batch * 100 + i, false)).collect();
        raw.txn(etcd_client::Txn::new().and_then(puts))
            .await
            .unwrap();
    }
    let (dash, addr) = dashboard::start(&url, &[]);
    let driver = Driver::start(&chromedriver);
    let c = driver.browser(&chromium).await;

    c.goto(&format!("http://{addr}/")).await.unwrap();
    let first = wait_js(
        &c,
        WAIT * 6,
        &format!("{records} rows rendered and the stream live"),
        &(format!("const records = {records};")
            + "const n = performance.getEntriesByType('navigation')[0];
         const ready = performance.getEntriesByName('svckit-dashboard-ready')[0];
         const rows = document.querySelectorAll('tr.member').length;
         if (rows !== records || !ready || n.loadEventEnd === 0
             || document.getElementById('status').dataset.state !== 'live') return null;
         const paint = performance.getEntriesByName('first-contentful-paint')[0];
         return { response: n.responseEnd, dom: n.domContentLoadedEventEnd,
                  ready: ready.startTime, load: n.loadEventEnd,
                  paint: paint ? paint.startTime : null };"),
    )
    .await;

    c.execute(
        "window.longTasks = [];
         new PerformanceObserver((l) => { for (const e of l.getEntries()) window.longTasks.push(e.duration); })
             .observe({ type: 'longtask' });
         window.burstStart = performance.now();
         return true;",
        vec![],
    )
    .await
    .unwrap();
    for batch in 0..batches {
        let puts: Vec<_> = (0..100).map(|i| record(batch * 100 + i, true)).collect();
        raw.txn(etcd_client::Txn::new().and_then(puts))
            .await
            .unwrap();
    }
    let burst = wait_js(
        &c,
        Duration::from_secs(60),
        &format!("{records} rows updated to disabled"),
        &(format!("const records = {records};")
            + "if (document.querySelectorAll('tr.member[data-disabled=\"true\"]').length !== records) return null;
         return { took: performance.now() - window.burstStart,
                  longest: Math.max(0, ...window.longTasks), long_tasks: window.longTasks.length };"),
    )
    .await;
    let ms = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    println!(
        "dashboard {records} records: first render {:.0} ms to DOMContentLoaded, first paint {:.0} ms ({:.0} ms response end, script ready at {:.0} ms, load {:.0} ms)",
        ms(&first["dom"]),
        ms(&first["paint"]),
        ms(&first["response"]),
        ms(&first["ready"]),
        ms(&first["load"]),
    );
    println!(
        "dashboard {records} updates: all shown {:.0} ms after the first write; longest task {:.0} ms ({} tasks over 50 ms)",
        ms(&burst["took"]),
        ms(&burst["longest"]),
        burst["long_tasks"],
    );
    println!(
        "dashboard RSS with {records} records: {} kB",
        dashboard::rss_kb(dash.pid())
    );
    c.close().await.unwrap();
}

#[allow(dead_code)]
#[path = "../examples/common/echo.rs"]
mod echo;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_row_shows_how_its_node_is_doing_and_a_silent_node_in_words() {
    let (chromium, chromedriver) = browser_binaries();
    let etcd = Etcd::start();
    let url = etcd.url().to_string();
    let (_n1, _) = Proc::start_example("echo_node", &quick_node_args(&url, "n1"), &[]);
    // n2 stays `up` for a minute without heartbeats: a stopped process
    // whose lease has not expired yet.
    let n2_args = [
        "--registry",
        &url,
        "--host",
        "n2",
        "--rpc-listen",
        "127.0.0.1:0",
        "--service-down-time",
        "60",
    ];
    let (n2, _) = Proc::start_example("echo_node", &n2_args, &[]);
    let (_dash, addr) = dashboard::start(&url, &[]);
    let driver = Driver::start(&chromedriver);
    let c = driver.browser(&chromium).await;
    c.goto(&format!("http://{addr}/")).await.unwrap();
    let cell = |host: &str, class: &str| {
        format!(
            "{} const td = tr && tr.querySelector('td.fig.{class}'); const text = td ? td.textContent : '';",
            row_js(host)
        )
    };
    // Both idle: their figures come in at zero.
    for host in ["n1", "n2"] {
        wait_js(
            &c,
            WAIT * 2,
            &format!("{host}'s first figures"),
            &format!("{} return text === '0.0' && text", cell(host, "calls")),
        )
        .await;
    }

    // Under load, n1's calls per second and its sparkline rise.
    let registry = svckit::servicegroup::connect(&etcd.url(), &support::options())
        .await
        .unwrap();
    let rpc = svckit::rpc::Rpc::new(registry).await.unwrap();
    let mut target = svckit::rpc::Target::topic("echo");
    target.server = Some("n1".into());
    let channel = rpc.channel(target);
    let load = tokio::spawn(async move {
        let mut client = echo::pb::echo_client::EchoClient::new(channel);
        loop {
            let _ = client
                .echo(echo::pb::EchoRequest {
                    payload: b"load".to_vec(),
                })
                .await;
        }
    });
    let busy = wait_js(
        &c,
        WAIT * 2,
        "n1's calls per second under load",
        &format!(
            "{} const p99 = tr.querySelector('td.fig.p99').textContent;
             const spark = tr.querySelector('td.fig.spark').textContent;
             return parseFloat(text) > 10 && p99.endsWith(' ms') && spark.length >= 2
                 && {{ calls: text, p99, spark, inflight: tr.querySelector('td.fig.inflight').textContent }}",
            cell("n1", "calls")
        ),
    )
    .await;
    println!("n1 under load: {busy}");
    load.abort();

    // A node that does not answer says so, in words.
    n2.signal(Signal::SIGSTOP);
    let silent = wait_js(
        &c,
        WAIT * 2,
        "n2 shown not answering",
        &format!(
            "{} return text.startsWith('not answering') && tr.dataset.state === 'up' && text",
            cell("n2", "calls")
        ),
    )
    .await;
    println!("n2 stopped: {silent}");
    n2.signal(Signal::SIGCONT);
}

/// `svckit xds` serves the dashboard at `/` with, under each topic, the
/// calls its xDS clients reported (LRS): a page opened before any call
/// shows the Python grpcio client's calls as its reports come in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_page_shows_its_clients_reported_calls() {
    use support::xds::{control_plane_with, Lang, XdsClient};

    let (chromium, chromedriver) = browser_binaries();
    let etcd = Etcd::start();
    let url = etcd.url().to_string();
    let (_n1, _) = Proc::start_example("echo_node", &quick_node_args(&url, "n1"), &[]);
    let (_xds, addr, bootstrap, _dir) = control_plane_with(&url, &["--load-report-interval", "1s"]);
    let driver = Driver::start(&chromedriver);
    let c = driver.browser(&chromium).await;
    c.goto(&format!("http://{addr}/")).await.unwrap();
    wait_js(
        &c,
        WAIT,
        "the echo topic's empty load table",
        "const t = document.querySelector('section.topic[data-topic=\"echo\"] table.xds-loads');
         return t && t.querySelectorAll('tbody tr').length === 0 && window.svckitDashboard.loads >= 1",
    )
    .await;

    let mut client = XdsClient::start(Lang::Python, &bootstrap);
    let (_, errors) = client.calls(1000);
    assert!(errors.is_empty(), "{errors:?}");
    let shown = wait_js(
        &c,
        WAIT * 2,
        "the client's reported calls",
        "const tr = document.querySelector('section.topic[data-topic=\"echo\"] table.xds-loads tbody tr');
         const cell = (c) => tr.querySelector('td.' + c).textContent;
         return tr && cell('succeeded') === '1001'
             && { client: cell('client'), issued: cell('issued'), failed: cell('failed') }",
    )
    .await;
    assert_eq!(
        shown,
        json!({ "client": Lang::Python.node_id(), "issued": "1001", "failed": "0" })
    );
}
