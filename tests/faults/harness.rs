//! One harness for every fault: three nodes of topic `echo` on a real etcd,
//! a steady call loop by topic through the kit's client, a membership watch,
//! and a row of figures per fault.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use svckit::pb::base::v1::base_client::BaseClient;
use svckit::pb::base::v1::ReportRequest;
use svckit::rpc::{Rpc, RpcOptions, Target};
use svckit::servicegroup::{self, Event, EventStream, RegistryOptions, RegistryUrl};
use tokio::sync::MutexGuard;

pub use crate::calls::{assert_no_failed_call, CallLoop, Row};
use crate::support::node::{example_bin, quick_node_args, Proc};

/// Bound on every wait for an event: generous, so that a loaded 2-core
/// machine slows a test down instead of failing it.
pub const WAIT: Duration = Duration::from_secs(30);
/// The deadline of each call of the loop.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// The figures are latencies: one fault at a time keeps two cores from
/// turning another test's load into this one's figures.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub async fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().await
}

/// How to start one node of the fleet.
#[derive(Clone)]
pub struct NodeSpec {
    pub host: String,
    pub example: &'static str,
    /// Flags after the quick heartbeat ones (200 ms, down after 1 s).
    pub extra: Vec<String>,
    pub env: Vec<(String, String)>,
    /// A command the node runs under (`ip netns exec NS`).
    pub wrap: Vec<String>,
    /// The gRPC listen address, when not loopback.
    pub listen: Option<String>,
}

impl NodeSpec {
    pub fn echo(host: &str) -> NodeSpec {
        NodeSpec {
            host: host.into(),
            example: "echo_node",
            extra: Vec::new(),
            env: Vec::new(),
            wrap: Vec::new(),
            listen: None,
        }
    }

    #[must_use]
    pub fn example(mut self, example: &'static str) -> Self {
        self.example = example;
        self
    }

    #[must_use]
    pub fn args(mut self, args: &[&str]) -> Self {
        self.extra.extend(args.iter().map(|a| a.to_string()));
        self
    }

    #[must_use]
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }

    #[must_use]
    pub fn listen(mut self, addr: &str) -> Self {
        self.listen = Some(addr.into());
        self
    }

    #[must_use]
    pub fn wrap(mut self, command: &[&str]) -> Self {
        self.wrap = command.iter().map(|a| a.to_string()).collect();
        self
    }

    fn spawn(&self, registry: &str) -> Proc {
        let mut args: Vec<String> = quick_node_args(registry, &self.host)
            .into_iter()
            .map(String::from)
            .collect();
        if let Some(listen) = &self.listen {
            for arg in args.iter_mut().filter(|a| a.as_str() == "127.0.0.1:0") {
                *arg = listen.clone();
            }
        }
        args.extend(self.extra.iter().cloned());
        // A registry timeout in scale with the 1 s down time: with several
        // etcd members, a registry request is tried again after a quarter
        // of it, well within the lease's life.
        let mut env: Vec<(&str, &str)> = vec![
            ("SVCKIT_DRAIN_DELAY", "0.3"),
            ("SVCKIT_REGISTRY_TIMEOUT", "2s"),
        ];
        env.extend(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let bin = example_bin(self.example);
        if self.wrap.is_empty() {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            Proc::spawn(bin, &args, &env)
        } else {
            let mut all: Vec<&str> = self.wrap[1..].iter().map(String::as_str).collect();
            let bin = bin.to_string_lossy().into_owned();
            all.push(&bin);
            all.extend(args.iter().map(String::as_str));
            Proc::spawn(self.wrap[0].clone().into(), &all, &env)
        }
    }
}

/// Three (or more) nodes, the test's own registry client, watch and RPC
/// client.
pub struct Fleet {
    pub url: String,
    specs: Vec<NodeSpec>,
    nodes: HashMap<String, Proc>,
    pub rpc: Rpc,
    pub events: EventStream,
}

/// Runs blocking test-support code (process waits) off the async workers'
/// backs.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

impl Fleet {
    /// Starts every node, and returns once the watch and the client see
    /// them all up.
    pub async fn start(url: &RegistryUrl, specs: Vec<NodeSpec>) -> Fleet {
        let url_text = url.to_string();
        let mut nodes = HashMap::new();
        for spec in &specs {
            nodes.insert(spec.host.clone(), spec.spawn(&url_text));
        }
        for proc in nodes.values_mut() {
            blocking(|| proc.wait_for_endpoint(WAIT));
        }
        let options = {
            let mut options = RegistryOptions::default();
            options.timeout = Duration::from_secs(2);
            options
        };
        let registry = servicegroup::connect(url, &options)
            .await
            .expect("connect to etcd");
        // Every topic: probes join their own, so that calls by topic `echo`
        // never reach them.
        let events = registry.watch(None).await.expect("watch the service group");
        let rpc = Rpc::with_options(registry.clone(), {
            let mut options = RpcOptions::default();
            options.response_timeout = CALL_TIMEOUT;
            options
        })
        .await
        .expect("rpc client");
        let mut fleet = Fleet {
            url: url_text,
            specs,
            nodes,
            rpc,
            events,
        };
        let mut up: Vec<String> = Vec::new();
        let since = Instant::now();
        while up.len() < fleet.specs.len() {
            let (event, _, _) = fleet
                .event(
                    since,
                    "every node up",
                    |e| matches!(e, Event::Join(m) if !up.contains(&m.record.advert.host)),
                )
                .await;
            up.push(event.member().record.advert.host.clone());
        }
        fleet
            .rpc
            .wait_for_nodes(&Target::topic("echo"), fleet.specs.len(), WAIT)
            .await
            .expect("every node routable");
        fleet
    }

    pub fn hosts(&self) -> Vec<String> {
        self.specs.iter().map(|s| s.host.clone()).collect()
    }

    pub fn node(&self, host: &str) -> &Proc {
        self.nodes.get(host).expect("a node of the fleet")
    }

    pub fn node_mut(&mut self, host: &str) -> &mut Proc {
        self.nodes.get_mut(host).expect("a node of the fleet")
    }

    /// Starts `host` again (a process manager's restart), once its old
    /// process is gone.
    pub fn restart(&mut self, host: &str) {
        let spec = self
            .specs
            .iter()
            .find(|s| s.host == host)
            .expect("a node of the fleet")
            .clone();
        let mut proc = spec.spawn(&self.url);
        blocking(|| proc.wait_for_endpoint(WAIT));
        self.nodes.insert(host.to_string(), proc);
    }

    /// The steady call loop by topic (see [`CallLoop`]).
    pub fn call_loop(&self, idempotent: bool) -> CallLoop {
        let mut channel = self.rpc.channel(Target::topic("echo"));
        if idempotent {
            channel = channel.idempotent();
        }
        CallLoop::start(channel)
    }

    /// Reads the watch until an event matches; returns it and the time
    /// since `since`, with every event read on the way.
    pub async fn event(
        &mut self,
        since: Instant,
        what: &str,
        matches: impl Fn(&Event) -> bool,
    ) -> (Event, Duration, Vec<Event>) {
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.events.next()).await {
                Ok(Some(Ok(event))) if matches(&event) => {
                    return (event, since.elapsed(), seen);
                }
                Ok(Some(Ok(event))) => seen.push(event),
                Ok(Some(Err(e))) => panic!("watch failed while waiting for {what}: {e}"),
                Ok(None) => panic!("watch ended while waiting for {what}"),
                Err(_) => panic!("no {what} within {WAIT:?}; saw {seen:#?}"),
            }
        }
    }

    /// Waits until the client routes to exactly `hosts` (in any order).
    pub async fn until_routed(&self, hosts: &[&str], what: &str) {
        let topic = Target::topic("echo");
        crate::support::eventually(WAIT, what, || {
            let mut now = self.rpc.hosts(&topic);
            now.sort();
            let mut want: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
            want.sort();
            async move { (now == want).then_some(()) }
        })
        .await;
    }

    /// A node's registration as its own report shows it (asked by server
    /// through the client).
    pub async fn registration(&self, host: &str) -> Option<Registration> {
        let channel = self
            .rpc
            .channel(Target::topic("echo").server(host))
            .timeout(Duration::from_secs(2));
        let reply = BaseClient::new(channel)
            .report(ReportRequest {})
            .await
            .ok()?;
        let report: serde_json::Value = serde_json::from_str(&reply.into_inner().json).ok()?;
        let r = &report["registration"];
        Some(Registration {
            state: r["state"].as_str()?.to_string(),
            last_heartbeat: r["last_heartbeat"]
                .as_str()
                .and_then(|t| humantime::parse_rfc3339(t).ok()),
            reregistrations: r["reregistrations"].as_u64().unwrap_or(0),
        })
    }

    /// Waits until every node reports a heartbeat after `after`; returns
    /// their re-registrations.
    pub async fn heartbeats_after(&self, after: SystemTime, what: &str) -> u64 {
        let mut total = 0;
        for host in self.hosts() {
            let r = crate::support::eventually(WAIT, what, || async {
                self.registration(&host).await.filter(|r| {
                    r.state == "registered" && r.last_heartbeat.is_some_and(|t| t > after)
                })
            })
            .await;
            total += r.reregistrations;
        }
        total
    }

    /// Re-registrations of every node so far.
    pub async fn reregistrations(&self) -> u64 {
        let mut total = 0;
        for host in self.hosts() {
            let r = crate::support::eventually(WAIT, "a node's report", || async {
                self.registration(&host).await
            })
            .await;
            total += r.reregistrations;
        }
        total
    }

    /// A member that joins through its own connection and leaves again,
    /// as the test's watch must see: proof that the watch follows changes
    /// made after a fault. Returns the time from `since` to its join.
    pub async fn probe(&mut self, url: &RegistryUrl, name: &str, since: Instant) -> Duration {
        let probe = crate::support::eventually(WAIT, "a registry connection for the probe", || {
            let url = url.clone();
            async move {
                let registry = servicegroup::connect(&url, &crate::support::options())
                    .await
                    .ok()?;
                let reg = crate::support::registration("probe", name);
                let membership = registry.join(reg).await.ok()?;
                Some((registry, membership))
            }
        })
        .await;
        let (_, took, seen) = self
            .event(since, "the probe's join", crate::support::is_join(name))
            .await;
        assert_no_leave(&seen, &self.hosts());
        probe.1.leave().await.expect("probe leaves");
        let (_, _, seen) = self
            .event(since, "the probe's leave", crate::support::is_leave(name))
            .await;
        assert_no_leave(&seen, &self.hosts());
        took
    }
}

/// Fails when a node of the fleet was seen down.
pub fn assert_no_leave(seen: &[Event], hosts: &[String]) {
    for e in seen {
        if let Event::Leave(m) = e {
            assert!(
                !hosts.contains(&m.record.advert.host),
                "{} was seen down: {seen:#?}",
                m.record.advert.host
            );
        }
    }
}

/// A node's registration, from its report.
#[derive(Debug)]
pub struct Registration {
    pub state: String,
    pub last_heartbeat: Option<SystemTime>,
    pub reregistrations: u64,
}

/// Runs `ip args…`; the error output when it fails.
pub fn ip(args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new("ip")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
