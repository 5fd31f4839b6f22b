//! Real etcd processes for tests: one per test, on free loopback ports, with
//! a data directory in a tempdir, killed and removed on drop (also when the
//! test panics).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use svckit::servicegroup::RegistryUrl;

use super::ports::free_port;

const STARTUP: Duration = Duration::from_secs(20);

/// A first start is tried this many times, on fresh ports each time, when
/// etcd exits at once (another process took one of its ports).
const START_ATTEMPTS: u32 = 5;

/// One etcd member process (alone, or part of a [`Cluster`]).
pub struct Etcd {
    name: String,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    /// `--initial-cluster` value; `None` for a single-member cluster.
    cluster: Option<String>,
    child: Option<Child>,
    /// Bumped by [`Etcd::wipe`] so each life gets an empty data dir.
    generation: u32,
    /// Serve clients over TLS with these files.
    tls: Option<EtcdTls>,
    /// Plain-HTTP `/health` beside a TLS client port.
    metrics_port: u16,
    /// `--heartbeat-interval` and `--election-timeout`, in ms.
    timing: (u32, u32),
}

/// The tests' raft timing: a killed leader is replaced within a second.
const TEST_TIMING: (u32, u32) = (50, 500);

/// An etcd serving clients over TLS.
#[derive(Clone)]
pub struct EtcdTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// `--trusted-ca-file` with `--client-cert-auth`: clients need a
    /// certificate this CA signed.
    pub client_ca_file: Option<PathBuf>,
}

/// The root user [`Etcd::enable_auth`] creates.
pub const ROOT_PASSWORD: &str = "root-pw-for-tests";

fn etcd_binary() -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("etcd"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "the etcd tests need an `etcd` binary on PATH: install it with \
             `apt-get install etcd-server` (Debian/Ubuntu), or run `scripts/test`, \
             which installs it"
        )
    })
}

impl Etcd {
    /// Starts a single-member etcd and waits until it answers.
    pub fn start() -> Etcd {
        Etcd::start_solo(None)
    }

    /// Starts a single-member etcd that serves clients over TLS only.
    pub fn start_tls(tls: EtcdTls) -> Etcd {
        Etcd::start_solo(Some(tls))
    }

    fn start_solo(tls: Option<EtcdTls>) -> Etcd {
        let mut etcd = Etcd::new("solo".into(), None, free_port(), free_port());
        etcd.tls = tls;
        for _ in 1..START_ATTEMPTS {
            etcd.spawn();
            match etcd.await_ready() {
                Ok(()) => return etcd,
                Err(Start::Exited(_)) => etcd.move_ports(free_port(), free_port()),
                Err(Start::Slow(why)) => etcd.start_failed(&why),
            }
        }
        etcd.spawn();
        etcd.wait_ready();
        etcd
    }

    /// A client of this etcd, as root once auth is on.
    async fn admin(
        &self,
        user: Option<(&str, &str)>,
        tls: Option<etcd_client::TlsOptions>,
    ) -> etcd_client::Client {
        let mut options = etcd_client::ConnectOptions::new();
        if let Some((user, password)) = user {
            options = options.with_user(user, password);
        }
        if let Some(tls) = tls {
            options = options.with_tls(tls);
        }
        etcd_client::Client::connect([self.endpoint()], Some(options))
            .await
            .expect("admin client of etcd")
    }

    /// Turns etcd's authentication on with a root user and `user`, who may
    /// read and write every key under `/`. `tls`: the client TLS a TLS etcd
    /// needs.
    pub async fn enable_auth(
        &self,
        user: &str,
        password: &str,
        tls: Option<etcd_client::TlsOptions>,
    ) {
        let mut client = self.admin(None, tls).await;
        client.user_add("root", ROOT_PASSWORD, None).await.unwrap();
        client.user_grant_role("root", "root").await.unwrap();
        client.user_add(user, password, None).await.unwrap();
        client.role_add("svckit").await.unwrap();
        let all = etcd_client::Permission::read_write("/").with_prefix();
        client.role_grant_permission("svckit", all).await.unwrap();
        client.user_grant_role(user, "svckit").await.unwrap();
        client.auth_enable().await.unwrap();
    }

    /// Changes `user`'s password, as root.
    pub async fn change_password(
        &self,
        user: &str,
        password: &str,
        tls: Option<etcd_client::TlsOptions>,
    ) {
        let mut client = self.admin(Some(("root", ROOT_PASSWORD)), tls).await;
        client.user_change_password(user, password).await.unwrap();
    }

    fn new(name: String, cluster: Option<String>, client_port: u16, peer_port: u16) -> Etcd {
        Etcd {
            name,
            dir: tempfile::tempdir().expect("tempdir"),
            client_port,
            peer_port,
            cluster,
            child: None,
            generation: 0,
            tls: None,
            metrics_port: free_port(),
            timing: TEST_TIMING,
        }
    }

    /// `127.0.0.1:port`, as a registry URL endpoint.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// `etcd://127.0.0.1:port?prefix=/test` (`https://…` over TLS).
    pub fn url(&self) -> RegistryUrl {
        let scheme = if self.tls.is_some() { "https" } else { "etcd" };
        RegistryUrl::parse(&format!("{scheme}://{}?prefix=/test", self.endpoint())).unwrap()
    }

    /// etcd's own log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "etcd {} already running", self.name);
        let data = self.dir.path().join(format!("data-{}", self.generation));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .expect("etcd log file");
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let client_url = format!("{scheme}://127.0.0.1:{}", self.client_port);
        let mut cmd = Command::new(etcd_binary());
        cmd.arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(&data)
            .arg("--listen-client-urls")
            .arg(&client_url)
            .arg("--advertise-client-urls")
            .arg(&client_url)
            .arg("--listen-peer-urls")
            .arg(self.peer_url())
            .arg("--initial-advertise-peer-urls")
            .arg(self.peer_url())
            .arg("--heartbeat-interval")
            .arg(self.timing.0.to_string())
            .arg("--election-timeout")
            .arg(self.timing.1.to_string())
            .args(["--log-outputs", "stderr", "--logger", "zap"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log);
        if let Some(tls) = &self.tls {
            cmd.arg("--cert-file")
                .arg(&tls.cert_file)
                .arg("--key-file")
                .arg(&tls.key_file)
                .arg("--listen-metrics-urls")
                .arg(format!("http://127.0.0.1:{}", self.metrics_port));
            if let Some(ca) = &tls.client_ca_file {
                cmd.arg("--trusted-ca-file")
                    .arg(ca)
                    .arg("--client-cert-auth");
            }
        }
        if let Some(cluster) = &self.cluster {
            cmd.arg("--initial-cluster")
                .arg(cluster)
                .args(["--initial-cluster-token", "svckit-test"]);
        } else {
            cmd.arg("--initial-cluster")
                .arg(format!("{}={}", self.name, self.peer_url()));
        }
        if cfg!(not(any(target_arch = "x86_64", target_arch = "aarch64"))) {
            cmd.env("ETCD_UNSUPPORTED_ARCH", std::env::consts::ARCH);
        }
        // SAFETY: prctl is async-signal-safe; it only makes the kernel kill
        // etcd if the test process dies without running destructors.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)
            });
        }
        self.child = Some(cmd.spawn().expect("cannot start etcd"));
    }

    /// Forgets a start that failed to bind, to try again on other ports.
    fn move_ports(&mut self, client_port: u16, peer_port: u16) {
        self.stop();
        self.client_port = client_port;
        self.peer_port = peer_port;
        self.metrics_port = free_port();
        self.generation += 1;
        let _ = std::fs::remove_file(self.dir.path().join("etcd.log"));
    }

    /// Waits until `/health` reports a healthy member with a leader.
    pub fn wait_ready(&mut self) {
        match self.await_ready() {
            Ok(()) => {}
            Err(Start::Exited(why) | Start::Slow(why)) => self.start_failed(&why),
        }
    }

    fn start_failed(&self, why: &str) -> ! {
        panic!("etcd {} {why}; log:\n{}", self.name, self.log());
    }

    /// Waits for `/health` to report a healthy member with a leader, or for
    /// the process to exit.
    fn await_ready(&mut self) -> Result<(), Start> {
        let deadline = Instant::now() + STARTUP;
        while Instant::now() < deadline {
            if self.healthy() {
                return Ok(());
            }
            let exited = match self.child.as_mut().map(Child::try_wait) {
                Some(Ok(Some(status))) => Some(status),
                _ => None,
            };
            if let Some(status) = exited {
                self.child = None;
                return Err(Start::Exited(format!("exited at start ({status})")));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(Start::Slow(format!(
            "did not become healthy within {STARTUP:?}"
        )))
    }

    fn healthy(&self) -> bool {
        // A TLS etcd answers /health in plain HTTP on its metrics port.
        let port = if self.tls.is_some() {
            self.metrics_port
        } else {
            self.client_port
        };
        let Ok(mut conn) = TcpStream::connect(("127.0.0.1", port)) else {
            return false;
        };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
        let request = format!("GET /health HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n");
        let mut body = String::new();
        conn.write_all(request.as_bytes()).is_ok()
            && conn.read_to_string(&mut body).is_ok()
            && body.contains("\"health\":\"true\"")
    }

    /// Kills the process (like a crash); the data dir stays.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the process (SIGSTOP): connections stay open and nothing
    /// answers, as behind a network black hole.
    pub fn pause(&self) {
        self.signal(nix::sys::signal::Signal::SIGSTOP);
    }

    /// Lets a paused process run again (SIGCONT).
    pub fn resume(&self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        let child = self.child.as_ref().expect("etcd is running");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, signal).expect("signal etcd");
    }

    /// The process's id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts again on the same ports with the same data, and waits for it.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
        self.wait_ready();
    }

    /// Starts again on the same ports with an empty data dir (a new cluster).
    pub fn wipe(&mut self) {
        self.stop();
        self.generation += 1;
        self.spawn();
        self.wait_ready();
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Why an etcd did not come up.
enum Start {
    /// It exited: most often because another process bound one of its
    /// ports between their choice and its start, so a first start is
    /// tried again on other ports (the log says why when all tries fail).
    Exited(String),
    /// It runs but did not become healthy in time.
    Slow(String),
}

/// A three-member cluster on loopback.
pub struct Cluster {
    pub members: Vec<Etcd>,
}

impl Cluster {
    pub fn start() -> Cluster {
        Cluster::start_timed(TEST_TIMING)
    }

    /// A cluster with this `--heartbeat-interval` and `--election-timeout`
    /// (ms); etcd's own defaults are (100, 1000).
    pub fn start_timed(timing: (u32, u32)) -> Cluster {
        let mut members = Vec::new();
        for attempt in 1..=START_ATTEMPTS {
            let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
            let initial = ports
                .iter()
                .enumerate()
                .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
                .collect::<Vec<_>>()
                .join(",");
            members = ports
                .iter()
                .enumerate()
                .map(|(i, (client, peer))| {
                    let mut member =
                        Etcd::new(format!("m{i}"), Some(initial.clone()), *client, *peer);
                    member.timing = timing;
                    member
                })
                .collect();
            // All at once: each member waits for the others to form a quorum.
            for m in &mut members {
                m.spawn();
            }
            let mut taken = false;
            for m in &mut members {
                match m.await_ready() {
                    Ok(()) => {}
                    Err(Start::Exited(_)) if attempt < START_ATTEMPTS => taken = true,
                    Err(Start::Exited(why) | Start::Slow(why)) => m.start_failed(&why),
                }
                if taken {
                    break;
                }
            }
            if !taken {
                break;
            }
        }
        Cluster { members }
    }

    /// Stops every member, then starts them all again on their data: a
    /// full restart of the cluster.
    pub fn restart_all(&mut self) {
        for m in &mut self.members {
            m.stop();
        }
        for m in &mut self.members {
            m.spawn();
        }
        for m in &mut self.members {
            m.wait_ready();
        }
    }

    /// `etcd://m0,m1,m2?prefix=/test`.
    pub fn url(&self) -> RegistryUrl {
        let endpoints: Vec<String> = self.members.iter().map(Etcd::endpoint).collect();
        RegistryUrl::parse(&format!("etcd://{}?prefix=/test", endpoints.join(","))).unwrap()
    }
}

/// A TCP proxy in front of one etcd that can cut every connection through
/// it, and refuse new ones, while etcd keeps running: a partition between one
/// client and the cluster.
pub struct Proxy {
    port: u16,
    state: Arc<Mutex<ProxyState>>,
    /// Bytes etcd sent to the clients behind the proxy.
    received: Arc<AtomicU64>,
}

#[derive(Default)]
struct ProxyState {
    cut: bool,
    /// Both ends of every proxied connection, to shut them down on a cut.
    sockets: Vec<TcpStream>,
}

impl Proxy {
    pub fn start(etcd: &Etcd) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy port");
        let port = listener.local_addr().unwrap().port();
        let upstream = etcd.client_port;
        let state = Arc::new(Mutex::new(ProxyState::default()));
        let shared = state.clone();
        let received = Arc::new(AtomicU64::new(0));
        let counted = received.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let mut state = shared.lock().unwrap();
                if state.cut {
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                for socket in [&client, &server] {
                    state.sockets.push(socket.try_clone().unwrap());
                }
                pipe(
                    client.try_clone().unwrap(),
                    server.try_clone().unwrap(),
                    None,
                );
                pipe(server, client, Some(counted.clone()));
            }
        });
        Proxy {
            port,
            state,
            received,
        }
    }

    /// Bytes etcd has sent through the proxy so far.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// `etcd://127.0.0.1:proxy-port?prefix=/test`.
    pub fn url(&self) -> RegistryUrl {
        RegistryUrl::parse(&format!("etcd://127.0.0.1:{}?prefix=/test", self.port)).unwrap()
    }

    /// Breaks every connection through the proxy and refuses new ones.
    pub fn cut(&self) {
        let mut state = self.state.lock().unwrap();
        state.cut = true;
        for socket in state.sockets.drain(..) {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.state.lock().unwrap().cut = false;
    }
}

/// Copies `from` to `to` on a thread until either side closes, adding
/// what it copies to `count`.
fn pipe(mut from: TcpStream, mut to: TcpStream, count: Option<Arc<AtomicU64>>) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
            if let Some(count) = &count {
                count.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
        let _ = to.shutdown(Shutdown::Both);
    });
}

/// etcd's own gRPC proxy (`etcd grpc-proxy start`, the same binary) in
/// front of one etcd: it merges watches and lease keep-alives of the
/// clients behind it. Killed on drop.
pub struct GrpcProxy {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl GrpcProxy {
    pub fn start(etcd: &Etcd) -> GrpcProxy {
        let dir = tempfile::tempdir().expect("proxy dir");
        let port = super::ports::free_port();
        let log = std::fs::File::create(dir.path().join("proxy.log")).expect("proxy log");
        let child = Command::new(etcd_binary())
            .args(["grpc-proxy", "start"])
            .arg(format!("--endpoints=127.0.0.1:{}", etcd.client_port))
            .arg(format!("--listen-addr=127.0.0.1:{port}"))
            .arg(format!("--advertise-client-url=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("proxy log"))
            .stderr(log)
            .spawn()
            .expect("start etcd grpc-proxy");
        let proxy = GrpcProxy {
            port,
            child,
            _dir: dir,
        };
        // The proxy says nothing when it listens: try to connect.
        super::poll_until(Duration::from_secs(20), "etcd grpc-proxy listening", || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        proxy
    }

    /// `etcd://127.0.0.1:proxy-port?prefix=/test`.
    pub fn url(&self) -> RegistryUrl {
        RegistryUrl::parse(&format!("etcd://127.0.0.1:{}?prefix=/test", self.port)).unwrap()
    }
}

impl Drop for GrpcProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
