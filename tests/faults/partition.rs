//! A network partition between one node and etcd: the node runs in a
//! network namespace joined to the host by a veth pair with addresses of
//! our own (10.231.N.0/29), and a blackhole route in the namespace cuts it
//! from etcd while the clients still reach it. Skipped, with a message,
//! where network namespaces are not permitted.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use svckit::servicegroup::RegistryUrl;

use crate::harness::{assert_no_failed_call, blocking, ip, serial, Fleet, NodeSpec, Row, WAIT};
use crate::node_faults::WARM;
use crate::support::{is_join, is_leave};

/// A namespace and its veth pair, removed on drop (also after a panic).
struct Netns {
    name: String,
    host_link: String,
    /// 10.231.N: the test's own /29 — .1 the host side the clients use,
    /// .3 the host side etcd listens on, .2 the node in the namespace.
    net: String,
}

impl Netns {
    /// `Err` when namespaces are not permitted here.
    fn create() -> Result<Netns, String> {
        let pid = std::process::id();
        let ns = Netns {
            name: format!("svkf{pid}"),
            host_link: format!("svkh{pid}"),
            net: format!("10.231.{}", pid % 250),
        };
        // A namespace of a run killed before its clean-up.
        ns.remove();
        ip(&["netns", "add", &ns.name])?;
        let peer = format!("svkn{pid}");
        let (host, etcd, node) = (ns.addr(1), ns.addr(3), ns.addr(2));
        let steps: Vec<Vec<&str>> = vec![
            vec![
                "link",
                "add",
                &ns.host_link,
                "type",
                "veth",
                "peer",
                "name",
                &peer,
            ],
            vec!["link", "set", &peer, "netns", &ns.name],
            vec!["addr", "add", &host, "dev", &ns.host_link],
            vec!["addr", "add", &etcd, "dev", &ns.host_link],
            vec!["link", "set", &ns.host_link, "up"],
            vec!["-n", &ns.name, "addr", "add", &node, "dev", &peer],
            vec!["-n", &ns.name, "link", "set", &peer, "up"],
            vec!["-n", &ns.name, "link", "set", "lo", "up"],
        ];
        for step in steps {
            ip(&step)?;
        }
        Ok(ns)
    }

    fn addr(&self, host: u8) -> String {
        format!("{}.{host}/29", self.net)
    }

    fn ip_of(&self, host: u8) -> String {
        format!("{}.{host}", self.net)
    }

    /// Drops everything the node sends to etcd.
    fn cut(&self) {
        let etcd = format!("{}/32", self.ip_of(3));
        ip(&["-n", &self.name, "route", "add", "blackhole", &etcd]).expect("cut");
    }

    fn heal(&self) {
        let etcd = format!("{}/32", self.ip_of(3));
        ip(&["-n", &self.name, "route", "del", "blackhole", &etcd]).expect("heal");
    }

    fn remove(&self) {
        let _ = ip(&["netns", "del", &self.name]);
        let _ = ip(&["link", "del", &self.host_link]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.remove();
    }
}

/// An etcd listening for clients on one host address.
struct EtcdAt {
    child: Child,
    endpoint: String,
    dir: tempfile::TempDir,
}

impl EtcdAt {
    fn start(addr: &str) -> EtcdAt {
        let free = crate::support::ports::free_port;
        let endpoint = format!("{addr}:{}", free());
        let peer = format!("http://127.0.0.1:{}", free());
        let dir = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(dir.path().join("etcd.log")).unwrap();
        let client = format!("http://{endpoint}");
        let mut cmd = Command::new("etcd");
        // SAFETY: prctl is async-signal-safe; it only makes the kernel kill
        // etcd if the test process dies without running destructors.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)
            });
        }
        let child = cmd
            .args(["--name", "solo", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("solo={peer}")])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start etcd");
        let etcd = EtcdAt {
            child,
            endpoint,
            dir,
        };
        let what = format!(
            "etcd on {} in the namespace (its log: {})",
            etcd.endpoint,
            etcd.dir.path().join("etcd.log").display()
        );
        crate::support::poll_until(WAIT, &what, || etcd.healthy());
        etcd
    }

    fn healthy(&self) -> bool {
        let Ok(mut conn) = TcpStream::connect(&self.endpoint) else {
            return false;
        };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
        let mut body = String::new();
        write!(conn, "GET /health HTTP/1.0\r\n\r\n").is_ok()
            && conn.read_to_string(&mut body).is_ok()
            && body.contains("\"health\":\"true\"")
    }

    fn url(&self) -> RegistryUrl {
        RegistryUrl::parse(&format!("etcd://{}?prefix=/test", self.endpoint)).unwrap()
    }
}

impl Drop for EtcdAt {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_a_node_from_etcd() {
    let _serial = serial().await;
    // Declared first, dropped last: after every process that uses it.
    let ns = match Netns::create() {
        Ok(ns) => ns,
        Err(why) => {
            // Straight to stderr: the test harness captures `eprintln!`,
            // and a skip must show in a plain `cargo test`.
            let _ = writeln!(
                std::io::stderr(),
                "partition_a_node_from_etcd skipped: network namespaces not permitted here \
                 (need CAP_SYS_ADMIN and iproute2): {why}"
            );
            return;
        }
    };
    let etcd = blocking(|| EtcdAt::start(&ns.ip_of(3)));
    let url = etcd.url();
    let inside = NodeSpec::echo("n3")
        .wrap(&["ip", "netns", "exec", &ns.name])
        .listen(&format!("{}:0", ns.ip_of(2)));
    let specs = vec![NodeSpec::echo("n1"), NodeSpec::echo("n2"), inside];
    let mut fleet = Fleet::start(&url, specs).await;
    let calls = fleet.call_loop(true);
    calls.wait_ok(WARM, "calls before the fault").await;
    calls
        .wait_hosts_served(
            &fleet.hosts(),
            Instant::now(),
            Instant::now(),
            "calls on n3",
        )
        .await;

    let fault = Instant::now();
    ns.cut();
    let (_, reflected, _) = fleet.event(fault, "n3's leave", is_leave("n3")).await;
    fleet
        .until_routed(&["n1", "n2"], "n3 out of the client's nodes")
        .await;
    calls
        .wait_ok(WARM, "calls on the other nodes during the partition")
        .await;
    let healed = Instant::now();
    ns.heal();
    fleet.event(healed, "n3's join", is_join("n3")).await;
    let joined = Instant::now();
    let recovered = calls
        .wait_hosts_served(&fleet.hosts(), joined, healed, "calls on every node again")
        .await;

    let calls = calls.stop().await;
    Row {
        fault: "partition a node from etcd (netns, blackhole route)",
        calls: &calls,
        reflected: Some(reflected),
        recovered: Some(recovered),
        note: "recovered: from the heal".into(),
    }
    .print();
    assert_no_failed_call(&calls, "partition");
}
