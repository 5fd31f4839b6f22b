//! Membership under partitions, proven by a checked history.
//!
//! A three-member etcd cluster runs in three network namespaces of our own
//! (a bridge, veth pairs, 10.232.N.0/24), so that a member can be cut from
//! the others. Every client of etcd (three echo nodes, two watchers of the
//! kit, the call loop's client) reaches it through a link of its own: a
//! proxy on loopback that can hold its traffic both ways (a cut), one way
//! (an asymmetric partition), or delay it (100 ms ± 50 ms, and one chunk in
//! five held 200 to 400 ms more, as a retransmission after a lost segment
//! would). The kernel here has no `netem`, so the link does in user space
//! what `tc netem` would do.
//!
//! A raw etcd watch of the liveness keys records the truth, with
//! revisions; the kit's watchers record what they show; the call loop runs
//! throughout. Six faults run one after the other, and after all of them
//! the history is checked:
//!
//! 1. no live node is ever shown down: every leave a watcher shows follows
//!    the deletion of the node's liveness key in etcd;
//! 2. a dead node leaves every view within `service_down_time` + etcd's
//!    election timeout + 1 s of its death;
//! 3. the truth's revisions only go up (the kit's events carry none: its
//!    watcher resumes each range from the last revision it delivered, which
//!    `servicegroup_etcd` tests);
//! 4. a node that comes back is seen again within 2 s;
//! 5. once a fault heals, every watcher agrees with etcd and with the
//!    others.
//!
//! The report prints each invariant per fault: held, or the counterexample.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{ConnectOptions, EventType, WatchOptions};
use futures::StreamExt;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use svckit::rpc::{Rpc, RpcOptions, Target};
use svckit::servicegroup::{self, Event, RegistryOptions, RegistryUrl};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

use crate::harness::{blocking, ip, serial, CallLoop, WAIT};
use crate::support::node::{example_bin, Proc};

/// The nodes' heartbeat and down time: down after 2 s without one.
const REPORT_INTERVAL: &str = "0.4";
const DOWN_TIME: Duration = Duration::from_secs(2);
/// etcd's election timeout (heartbeat 50 ms).
const ELECTION: Duration = Duration::from_millis(500);
/// Invariant 2's bound.
const DEAD_BOUND: Duration = Duration::from_millis(DOWN_TIME.as_millis() as u64 + 500 + 1000);
/// Invariant 4's bound.
const BACK_BOUND: Duration = Duration::from_secs(2);
/// Slack between the truth's clock and a watcher's: both read events from
/// etcd, each on its own connection.
const SLACK: Duration = Duration::from_secs(1);
const WATCHERS: [&str; 2] = ["watcher-a", "watcher-b"];

/// A bridge and one namespace per etcd member, removed on drop.
struct Net {
    bridge: String,
    net: String,
    namespaces: Vec<String>,
    links: Vec<String>,
}

impl Net {
    fn create(members: usize) -> Result<Net, String> {
        let pid = std::process::id();
        let mut net = Net {
            bridge: format!("svb{pid}"),
            net: format!("10.232.{}", pid % 250),
            namespaces: (1..=members).map(|i| format!("svh{pid}e{i}")).collect(),
            links: (1..=members).map(|i| format!("svv{pid}{i}")).collect(),
        };
        net.remove();
        ip(&["link", "add", &net.bridge, "type", "bridge"])?;
        ip(&[
            "addr",
            "add",
            &format!("{}.1/24", net.net),
            "dev",
            &net.bridge,
        ])?;
        ip(&["link", "set", &net.bridge, "up"])?;
        for i in 0..members {
            let (ns, host) = (net.namespaces[i].clone(), net.links[i].clone());
            let peer = format!("svw{pid}{}", i + 1);
            let addr = format!("{}/24", net.member_ip(i));
            ip(&["netns", "add", &ns])?;
            for step in [
                vec!["link", "add", &host, "type", "veth", "peer", "name", &peer],
                vec!["link", "set", &peer, "netns", &ns],
                vec!["link", "set", &host, "master", &net.bridge],
                vec!["link", "set", &host, "up"],
                vec!["-n", &ns, "addr", "add", &addr, "dev", &peer],
                vec!["-n", &ns, "link", "set", &peer, "up"],
                vec!["-n", &ns, "link", "set", "lo", "up"],
            ] {
                ip(&step)?;
            }
        }
        net.links.push(net.bridge.clone());
        Ok(net)
    }

    fn member_ip(&self, i: usize) -> String {
        format!("{}.{}", self.net, 11 + i)
    }

    /// Cuts member `i` from every other member, both ways.
    fn isolate(&self, i: usize) {
        for j in (0..self.namespaces.len()).filter(|j| *j != i) {
            for (from, to) in [(i, j), (j, i)] {
                let to = format!("{}/32", self.member_ip(to));
                ip(&[
                    "-n",
                    &self.namespaces[from],
                    "route",
                    "add",
                    "blackhole",
                    &to,
                ])
                .expect("isolate a member");
            }
        }
    }

    fn rejoin(&self, i: usize) {
        for j in (0..self.namespaces.len()).filter(|j| *j != i) {
            for (from, to) in [(i, j), (j, i)] {
                let to = format!("{}/32", self.member_ip(to));
                ip(&[
                    "-n",
                    &self.namespaces[from],
                    "route",
                    "del",
                    "blackhole",
                    &to,
                ])
                .expect("rejoin a member");
            }
        }
    }

    fn remove(&self) {
        for ns in &self.namespaces {
            let _ = ip(&["netns", "del", ns]);
        }
        for link in &self.links {
            let _ = ip(&["link", "del", link]);
        }
        let _ = ip(&["link", "del", &self.bridge]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.remove();
    }
}

/// One etcd member in its namespace.
struct EtcdMember {
    child: Child,
    client: String,
    _dir: tempfile::TempDir,
}

impl Drop for EtcdMember {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_cluster(net: &Net) -> Vec<EtcdMember> {
    let n = net.namespaces.len();
    let cluster: Vec<String> = (0..n)
        .map(|i| format!("m{i}=http://{}:2380", net.member_ip(i)))
        .collect();
    let cluster = cluster.join(",");
    let members: Vec<EtcdMember> = (0..n)
        .map(|i| {
            let dir = tempfile::tempdir().expect("a data dir");
            let log = std::fs::File::create(dir.path().join("etcd.log")).expect("a log");
            let (client, peer) = (
                format!("http://{}:2379", net.member_ip(i)),
                format!("http://{}:2380", net.member_ip(i)),
            );
            let mut cmd = Command::new("ip");
            // SAFETY: prctl is async-signal-safe; it only makes the kernel
            // kill etcd (ip execs it) if the test dies without clean-up.
            unsafe {
                cmd.pre_exec(|| {
                    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
                });
            }
            let child = cmd
                .args(["netns", "exec", &net.namespaces[i], "etcd"])
                .args(["--name", &format!("m{i}"), "--data-dir"])
                .arg(dir.path().join("data"))
                .args(["--listen-client-urls", &client])
                .args(["--advertise-client-urls", &client])
                .args(["--listen-peer-urls", &peer])
                .args(["--initial-advertise-peer-urls", &peer])
                .args(["--initial-cluster", &cluster])
                .args(["--initial-cluster-state", "new"])
                .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("a log"))
                .stderr(log)
                .spawn()
                .expect("etcd (apt-get install etcd-server)");
            EtcdMember {
                child,
                client: format!("{}:2379", net.member_ip(i)),
                _dir: dir,
            }
        })
        .collect();
    members
}

/// The member that leads now, by index.
async fn leader(members: &[EtcdMember]) -> usize {
    leader_but(members, None).await
}

/// The member that leads now, other than `not`.
async fn leader_but(members: &[EtcdMember], not: Option<usize>) -> usize {
    crate::support::eventually(WAIT, "an etcd leader", || async {
        for (i, m) in members.iter().enumerate() {
            if Some(i) == not {
                continue;
            }
            let Ok(mut c) = etcd_client::Client::connect([m.client.as_str()], None).await else {
                continue;
            };
            let Ok(status) = c.status().await else {
                continue;
            };
            if status
                .header()
                .is_some_and(|h| h.member_id() == status.leader())
            {
                return Some(i);
            }
        }
        None
    })
    .await
}

/// Waits until each of `watchers` shows `host` down (or gone) after
/// `since`, or for twice the bound: the fault lasts until its effect is
/// seen, and a watcher that never shows it is invariant 2's counterexample.
async fn shown_down(history: &Shared, host: &str, watchers: &[&str], since: Instant) {
    let deadline = since + DEAD_BOUND * 2;
    while Instant::now() < deadline {
        let all = {
            let h = history.lock().unwrap();
            watchers.iter().all(|w| {
                h.shown.get(w).is_some_and(|seen| {
                    seen.iter()
                        .any(|s| s.host == host && s.at >= since && s.up != Some(true))
                })
            })
        };
        if all {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until every member names the same leader in the same term, and
/// the term has not moved for a second: a fault heals only once its
/// elections are over (an isolated member that comes back may call one;
/// each election renews every lease for its TTL), so that the next fault
/// is measured alone.
async fn stable(members: &[EtcdMember]) {
    async fn agreed(members: &[EtcdMember]) -> Option<(u64, u64)> {
        let mut seen = BTreeSet::new();
        for m in members {
            let mut c = etcd_client::Client::connect([m.client.as_str()], None)
                .await
                .ok()?;
            let status = c.status().await.ok()?;
            seen.insert((status.leader(), status.raft_term()));
        }
        (seen.len() == 1).then(|| seen.into_iter().next()).flatten()
    }
    let deadline = Instant::now() + WAIT;
    let (mut last, mut since) = (None, Instant::now());
    loop {
        let now = agreed(members).await;
        if now.is_none() || now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= Duration::from_secs(1) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no stable etcd leader within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What a link does to the traffic through it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Clear,
    /// Held both ways, as a blackhole both ways would.
    Cut,
    /// The client's bytes held, etcd's delivered.
    OneWay,
    /// 100 ms ± 50 ms each way; one chunk in five held 200 to 400 ms more.
    Impaired,
}

/// A client's own way to every etcd member.
struct Link {
    ports: Vec<u16>,
    mode: watch::Sender<Mode>,
}

impl Link {
    async fn start(members: &[EtcdMember]) -> Link {
        let (mode, _) = watch::channel(Mode::Clear);
        let mut ports = Vec::new();
        for member in members {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("a link port");
            ports.push(listener.local_addr().expect("an address").port());
            let upstream: SocketAddr = member.client.parse().expect("a member address");
            let mode = mode.subscribe();
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                        continue;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::spawn(pump(cr, sw, true, mode.clone()));
                    tokio::spawn(pump(sr, cw, false, mode.clone()));
                }
            });
        }
        Link { ports, mode }
    }

    fn url(&self) -> String {
        let endpoints: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("etcd://{}?prefix=/test", endpoints.join(","))
    }

    fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }
}

/// Copies one direction of a connection through a delay line: chunks keep
/// their order, and wait out their delay and any hold.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    outbound: bool,
    mut mode: watch::Receiver<Mode>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let reader_mode = mode.clone();
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        let mut last = tokio::time::Instant::now();
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let now = tokio::time::Instant::now();
            let due = if *reader_mode.borrow() == Mode::Impaired {
                let mut ms = rand::random_range(50..=150u64);
                if rand::random_bool(0.2) {
                    ms += rand::random_range(200..=400u64);
                }
                now + Duration::from_millis(ms)
            } else {
                now
            };
            last = last.max(due);
            if tx.send((last, buf[..n].to_vec())).is_err() {
                break;
            }
        }
    });
    while let Some((due, chunk)) = rx.recv().await {
        tokio::time::sleep_until(due).await;
        loop {
            let held = match *mode.borrow() {
                Mode::Cut => true,
                Mode::OneWay => outbound,
                Mode::Clear | Mode::Impaired => false,
            };
            if !held {
                break;
            }
            if mode.changed().await.is_err() {
                return;
            }
        }
        if to.write_all(&chunk).await.is_err() {
            break;
        }
    }
    reader.abort();
    let _ = to.shutdown().await;
}

/// What one watcher showed, or etcd held.
#[derive(Debug, Clone)]
struct Seen {
    at: Instant,
    host: String,
    /// Shown up (a watcher), or the liveness key present (the truth).
    up: Option<bool>,
}

#[derive(Default)]
struct History {
    /// The truth: liveness keys as etcd changed them, with revisions.
    truth: Vec<(Seen, i64)>,
    /// By watcher.
    shown: BTreeMap<&'static str, Vec<Seen>>,
}

type Shared = Arc<Mutex<History>>;

fn record_watcher(history: &Shared, name: &'static str, event: &Event) {
    let member = event.member();
    let up = match event {
        Event::Delete(_) => None,
        _ => Some(member.up),
    };
    let mut h = history.lock().unwrap();
    h.shown.entry(name).or_default().push(Seen {
        at: Instant::now(),
        host: member.record.advert.host.clone(),
        up,
    });
}

/// Follows the liveness keys of topic `echo` straight from etcd, from the
/// start of history, through every fault (a broken watch resumes after the
/// last revision seen).
async fn record_truth(endpoints: Vec<String>, history: Shared) {
    let mut next = 1;
    loop {
        let options = ConnectOptions::new()
            .with_require_leader(true)
            .with_timeout(Duration::from_secs(2));
        let Ok(client) = etcd_client::Client::connect(&endpoints, Some(options)).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut watches = client.watch_client();
        let watch = watches.watch(
            "/test/alive/echo/",
            Some(WatchOptions::new().with_prefix().with_start_revision(next)),
        );
        let Ok(mut stream) = watch.await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        while let Ok(Some(response)) = stream.message().await {
            if response.canceled() {
                break;
            }
            let mut h = history.lock().unwrap();
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                let host = key.rsplit('/').next().unwrap_or_default().to_string();
                let up = Some(event.event_type() == EventType::Put);
                h.truth.push((
                    Seen {
                        at: Instant::now(),
                        host,
                        up,
                    },
                    kv.mod_revision(),
                ));
                next = kv.mod_revision() + 1;
            }
        }
    }
}

/// One fault as it ran.
struct Phase {
    name: &'static str,
    start: Instant,
    /// When the node that died did, and its host.
    victim: Option<(String, Instant)>,
    healed: Instant,
    /// Watchers cut from etcd meanwhile: they cannot show anything.
    blind: Vec<&'static str>,
    calls_failed: usize,
    agreed: Result<Duration, String>,
}

/// A fault under way: when it began, and the calls failed before it.
struct Running {
    start: Instant,
    failed_before: usize,
}

impl Running {
    fn begin(calls: &CallLoop) -> Running {
        Running {
            start: Instant::now(),
            failed_before: calls.failed(),
        }
    }

    /// The fault healed at `healed`: waits for the watchers to agree with
    /// etcd, then for the cluster to settle before the next fault.
    async fn healed(
        self,
        name: &'static str,
        victim: Option<(String, Instant)>,
        blind: Vec<&'static str>,
        healed: Instant,
        (history, calls, members): (&Shared, &CallLoop, &[EtcdMember]),
    ) -> Phase {
        let agreed = agreement(history, healed).await;
        let phase = Phase {
            name,
            start: self.start,
            victim,
            healed,
            blind,
            calls_failed: calls.failed() - self.failed_before,
            agreed,
        };
        stable(members).await;
        phase
    }
}

/// A watcher's view of who is up, from its events up to `until`.
fn view_of(seen: &[Seen], until: Instant) -> BTreeMap<String, bool> {
    let mut view = BTreeMap::new();
    for s in seen.iter().filter(|s| s.at <= until) {
        match s.up {
            Some(up) => view.insert(s.host.clone(), up),
            None => view.remove(&s.host),
        };
    }
    view
}

fn truth_up(truth: &[(Seen, i64)]) -> BTreeSet<String> {
    let mut up = BTreeSet::new();
    for (s, _) in truth {
        if s.up == Some(true) {
            up.insert(s.host.clone());
        } else {
            up.remove(&s.host);
        }
    }
    up
}

/// Waits until every watcher shows up exactly the nodes whose liveness
/// keys etcd holds, all three of them; the time it took, or the last
/// disagreement.
async fn agreement(history: &Shared, since: Instant) -> Result<Duration, String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (truth, views) = {
            let h = history.lock().unwrap();
            let now = Instant::now();
            let views: Vec<(&str, BTreeSet<String>)> = WATCHERS
                .iter()
                .map(|w| {
                    let seen = h.shown.get(w).map_or(&[][..], Vec::as_slice);
                    let up = view_of(seen, now)
                        .into_iter()
                        .filter(|(_, up)| *up)
                        .map(|(host, _)| host)
                        .collect();
                    (*w, up)
                })
                .collect();
            (truth_up(&h.truth), views)
        };
        if truth.len() == 3 && views.iter().all(|(_, v)| *v == truth) {
            return Ok(since.elapsed());
        }
        if Instant::now() > deadline {
            return Err(format!("etcd holds {truth:?}; the watchers show {views:?}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The checks of one phase: (invariant, held or the counterexample).
fn check(phase: &Phase, history: &History) -> Vec<(&'static str, Result<String, String>)> {
    let mut out = Vec::new();
    // 1. Every leave follows a deletion of the liveness key.
    let mut false_downs = Vec::new();
    for (watcher, seen) in &history.shown {
        let mut last_up: BTreeMap<&str, Instant> = BTreeMap::new();
        for s in seen {
            match s.up {
                Some(true) => {
                    last_up.insert(&s.host, s.at);
                }
                _ if s.at >= phase.start && s.at <= phase.healed + Duration::from_secs(10) => {
                    let since = last_up.get(s.host.as_str()).copied().unwrap_or(phase.start);
                    let justified = history.truth.iter().any(|(t, _)| {
                        t.host == s.host
                            && t.up == Some(false)
                            && t.at + SLACK >= since
                            && t.at <= s.at + SLACK
                    });
                    if !justified {
                        false_downs.push(format!(
                            "{watcher} showed {} down {:.2} s into the fault while etcd held its liveness key",
                            s.host,
                            s.at.duration_since(phase.start).as_secs_f64()
                        ));
                    }
                }
                _ => {}
            }
        }
    }
    out.push((
        "no live node shown down",
        if false_downs.is_empty() {
            Ok("held".into())
        } else {
            Err(false_downs.join("; "))
        },
    ));
    // 2 and 4: the victim leaves every view in time, and comes back.
    if let Some((victim, died)) = &phase.victim {
        let mut removed = Vec::new();
        let mut blind = Vec::new();
        let mut late = Vec::new();
        let mut back = Vec::new();
        let mut slow = Vec::new();
        for watcher in WATCHERS {
            let seen = history.shown.get(watcher).map_or(&[][..], Vec::as_slice);
            let left = seen
                .iter()
                .find(|s| s.host == *victim && s.at >= *died && s.up != Some(true));
            match left {
                Some(s) => {
                    let took = s.at.duration_since(*died);
                    // A watcher blind until the heal is bound from there.
                    let bound = if phase.blind.contains(&watcher) {
                        let after = s.at.saturating_duration_since(phase.healed);
                        blind.push(format!(
                            "{watcher}, cut off, {:.2} s after the heal",
                            after.as_secs_f64()
                        ));
                        after
                    } else {
                        removed.push(took.as_secs_f64());
                        took
                    };
                    if bound > DEAD_BOUND {
                        late.push(format!("{watcher} after {:.2} s", took.as_secs_f64()));
                    }
                }
                None => late.push(format!("{watcher} never")),
            }
            let rejoined = seen
                .iter()
                .find(|s| s.host == *victim && s.at >= phase.healed && s.up == Some(true));
            match rejoined {
                Some(s) => {
                    let took = s.at.duration_since(phase.healed);
                    back.push(took.as_secs_f64());
                    if took > BACK_BOUND {
                        slow.push(format!("{watcher} after {:.2} s", took.as_secs_f64()));
                    }
                }
                None => slow.push(format!("{watcher} never")),
            }
        }
        let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
        out.push((
            "dead node leaves every view in time",
            if late.is_empty() {
                let blind = if blind.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", blind.join(", "))
                };
                Ok(format!(
                    "held: {victim} removed in {:.2} s{blind}",
                    max(&removed)
                ))
            } else {
                Err(format!(
                    "{victim} removed late (bound {DEAD_BOUND:?}): {}",
                    late.join(", ")
                ))
            },
        ));
        out.push((
            "node back within 2 s",
            if slow.is_empty() {
                Ok(format!("held: {victim} back in {:.2} s", max(&back)))
            } else {
                Err(format!("{victim} seen again late: {}", slow.join(", ")))
            },
        ));
    }
    out.push((
        "watchers agree with etcd after the heal",
        phase
            .agreed
            .as_ref()
            .map(|d| format!("held: within {:.2} s", d.as_secs_f64()))
            .map_err(String::clone),
    ));
    out
}

/// The echo node `host`, talking to etcd through `link`.
fn start_node(host: &str, link: &Link) -> Proc {
    let url = link.url();
    let args = [
        "--registry",
        &url,
        "--host",
        host,
        "--rpc-listen",
        "127.0.0.1:0",
        "--report-interval",
        REPORT_INTERVAL,
        "--service-down-time",
        &DOWN_TIME.as_secs().to_string(),
    ];
    let env = [
        ("SVCKIT_DRAIN_DELAY", "0.3"),
        ("SVCKIT_REGISTRY_TIMEOUT", "2s"),
    ];
    let mut proc = Proc::spawn(example_bin("echo_node"), &args, &env);
    blocking(|| proc.wait_for_endpoint(WAIT));
    proc
}

async fn connect(link: &Link) -> servicegroup::Registry {
    let url = RegistryUrl::parse(&link.url()).expect("a link URL");
    let mut options = RegistryOptions::default();
    options.timeout = Duration::from_secs(2);
    servicegroup::connect(&url, &options)
        .await
        .expect("connect through a link")
}

async fn settle(history: &Shared) -> Result<Duration, String> {
    agreement(history, Instant::now()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_history_under_partitions() {
    let _serial = serial().await;
    let net = match Net::create(3) {
        Ok(net) => net,
        Err(why) => {
            let _ = writeln!(
                std::io::stderr(),
                "membership_history_under_partitions skipped: network namespaces not permitted \
                 here (need CAP_SYS_ADMIN and iproute2): {why}"
            );
            return;
        }
    };
    let members = blocking(|| start_cluster(&net));
    let endpoints: Vec<String> = members.iter().map(|m| m.client.clone()).collect();
    leader(&members).await;
    let history: Shared = Arc::default();
    let truth = tokio::spawn(record_truth(endpoints.clone(), history.clone()));

    let mut node_links = Vec::new();
    let mut nodes = BTreeMap::new();
    for host in ["n1", "n2", "n3"] {
        let link = Link::start(&members).await;
        nodes.insert(host, start_node(host, &link));
        node_links.push(link);
    }
    let mut watcher_links = Vec::new();
    let mut keep = Vec::new();
    for name in WATCHERS {
        let link = Link::start(&members).await;
        let registry = connect(&link).await;
        let mut events = registry.watch(Some("echo")).await.expect("a watch");
        let history = history.clone();
        keep.push(tokio::spawn(async move {
            let _registry = registry;
            while let Some(Ok(event)) = events.next().await {
                record_watcher(&history, name, &event);
            }
        }));
        watcher_links.push(link);
    }
    let client_link = Link::start(&members).await;
    let rpc = Rpc::with_options(connect(&client_link).await, {
        let mut options = RpcOptions::default();
        options.response_timeout = Duration::from_secs(5);
        options
    })
    .await
    .expect("an RPC client");
    rpc.wait_for_nodes(&Target::topic("echo"), 3, WAIT)
        .await
        .expect("every node routable");
    let calls = CallLoop::start(rpc.channel(Target::topic("echo")));
    calls.wait_ok(50, "calls before the faults").await;
    settle(&history)
        .await
        .expect("the watchers agree before any fault");

    let mut phases = Vec::new();
    let lab = (&history, &calls, &members[..]);

    // A node cut from etcd, both ways, but not from its clients.
    let run = Running::begin(&calls);
    let victim = Some(("n3".to_string(), run.start));
    node_links[2].set(Mode::Cut);
    shown_down(&history, "n3", &WATCHERS, run.start).await;
    node_links[2].set(Mode::Clear);
    let healed = Instant::now();
    let name = "a node cut from etcd, not from its clients";
    phases.push(run.healed(name, victim, vec![], healed, lab).await);

    // A client cut from etcd while a node dies.
    let run = Running::begin(&calls);
    watcher_links[0].set(Mode::Cut);
    let victim = Some(("n2".to_string(), Instant::now()));
    if let Some(n2) = nodes.get("n2") {
        n2.signal(Signal::SIGKILL);
    }
    // Until the watcher that still reaches etcd saw it; the cut one shows
    // it only after the heal (invariant 2 bounds it from there).
    shown_down(&history, "n2", &["watcher-b"], run.start).await;
    watcher_links[0].set(Mode::Clear);
    let healed = Instant::now();
    nodes.insert("n2", start_node("n2", &node_links[1]));
    let name = "a client cut from etcd (watcher-a) while n2 is killed and restarted";
    phases.push(
        run.healed(name, victim, vec!["watcher-a"], healed, lab)
            .await,
    );

    // The etcd leader isolated from the majority.
    let run = Running::begin(&calls);
    let lead = leader(&members).await;
    net.isolate(lead);
    // Until the majority elected another leader.
    leader_but(&members, Some(lead)).await;
    net.rejoin(lead);
    let healed = Instant::now();
    let name = "the etcd leader isolated from the majority";
    phases.push(run.healed(name, None, vec![], healed, lab).await);

    // An asymmetric partition: n3's packets to etcd dropped, etcd's to it
    // delivered.
    let run = Running::begin(&calls);
    let victim = Some(("n3".to_string(), run.start));
    node_links[2].set(Mode::OneWay);
    shown_down(&history, "n3", &WATCHERS, run.start).await;
    node_links[2].set(Mode::Clear);
    let healed = Instant::now();
    let name = "an asymmetric partition (n3 to etcd dropped, etcd to n3 delivered)";
    phases.push(run.healed(name, victim, vec![], healed, lab).await);

    // Delay and loss between every node and etcd.
    let run = Running::begin(&calls);
    for link in &node_links {
        link.set(Mode::Impaired);
    }
    tokio::time::sleep(Duration::from_secs(8)).await;
    for link in &node_links {
        link.set(Mode::Clear);
    }
    let healed = Instant::now();
    let name = "100 ms ± 50 ms delay and 20% loss between the nodes and etcd";
    phases.push(run.healed(name, None, vec![], healed, lab).await);

    // A SIGSTOP of the leader for twice the election timeout.
    let run = Running::begin(&calls);
    let lead = leader(&members).await;
    let pid = Pid::from_raw(members[lead].child.id() as i32);
    kill(pid, Signal::SIGSTOP).expect("stop the leader");
    tokio::time::sleep(ELECTION * 2).await;
    kill(pid, Signal::SIGCONT).expect("continue the leader");
    let healed = Instant::now();
    let name = "SIGSTOP of the etcd leader for 2× the election timeout";
    phases.push(run.healed(name, None, vec![], healed, lab).await);

    let calls = calls.stop().await;
    truth.abort();
    if std::env::var_os("HISTORY_LOG").is_some() {
        if let Some(n3) = nodes.get("n3") {
            eprintln!("n3's log:\n{}", n3.stderr());
        }
    }
    let history = history.lock().unwrap();
    // 3. The truth's revisions only go up.
    let revisions: Vec<i64> = history.truth.iter().map(|(_, r)| *r).collect();
    let ordered = revisions.windows(2).all(|w| w[0] < w[1]);
    // What a join costs a watcher: from the truth's put to the watcher's join.
    let mut lags = Vec::new();
    for (watcher, seen) in &history.shown {
        let faults_began = phases.first().map_or(Instant::now(), |p| p.start);
        for s in seen
            .iter()
            .filter(|s| s.up == Some(true) && s.at >= faults_began)
        {
            let put = history
                .truth
                .iter()
                .filter(|(t, _)| t.host == s.host && t.up == Some(true) && t.at <= s.at + SLACK)
                .map(|(t, _)| t.at)
                .next_back();
            if let Some(put) = put {
                lags.push((
                    s.at.saturating_duration_since(put),
                    *watcher,
                    s.host.clone(),
                    s.at,
                ));
            }
        }
    }
    lags.sort();
    if std::env::var_os("HISTORY_LOG").is_some() {
        let begin = history.truth.first().map(|(t, _)| t.at);
        for (lag, watcher, host, at) in &lags {
            let at = begin.map(|b| at.saturating_duration_since(b).as_secs_f64());
            eprintln!("history: join lag {lag:?} {watcher} {host} at {at:?}");
        }
    }
    let p99 = lags
        .get(lags.len().saturating_sub(1) * 99 / 100)
        .map_or(0.0, |(d, ..)| d.as_secs_f64() * 1000.0);

    let mut broken = Vec::new();
    for phase in &phases {
        eprintln!(
            "history: {} (at {:.1} s) — calls failed: {} of {} in all",
            phase.name,
            history.truth.first().map_or(0.0, |(t, _)| phase
                .start
                .saturating_duration_since(t.at)
                .as_secs_f64()),
            phase.calls_failed,
            calls.ok + calls.failed.len() as u64
        );
        for (invariant, verdict) in check(phase, &history) {
            match verdict {
                Ok(held) => eprintln!("history:   {invariant}: {held}"),
                Err(counterexample) => {
                    eprintln!("history:   {invariant}: BROKEN: {counterexample}");
                    broken.push(format!("{}: {invariant}: {counterexample}", phase.name));
                }
            }
        }
    }
    eprintln!(
        "history: revisions of the truth only go up: {}; join lag p99 {p99:.1} ms over {} joins",
        if ordered { "held" } else { "BROKEN" },
        lags.len()
    );
    assert!(ordered, "the truth's revisions went back: {revisions:?}");
    assert!(
        broken.is_empty(),
        "invariants broken:\n{}",
        broken.join("\n")
    );
    drop(keep);
}
