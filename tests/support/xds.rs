//! `svckit xds` and the independent xDS clients that call through it:
//! Python grpcio (tests/py/xds_client.py) and Node's grpc-js with
//! grpc-js-xds (tests/js/xds_client.js), driven line by line with the same
//! commands.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Stdio};
use std::time::Duration;

use super::node::Proc;

const WAIT: Duration = Duration::from_secs(20);

/// Which gRPC library a client is written with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    /// Python grpcio's xds resolver.
    Python,
    /// Node's @grpc/grpc-js with @grpc/grpc-js-xds.
    Node,
    /// The same at an older release (grpc-js-xds 1.10, tests/js/old):
    /// ring hash, but no weighted round robin.
    NodeOld,
}

impl Lang {
    /// The bootstrap's node id for this client.
    pub fn node_id(self) -> &'static str {
        match self {
            Lang::Python => "python-test",
            Lang::Node => "node-test",
            Lang::NodeOld => "node-old-test",
        }
    }
}

/// One independent xDS client process.
pub struct XdsClient {
    lang: Lang,
    child: Child,
    stdin: ChildStdin,
    lines: std::sync::mpsc::Receiver<String>,
}

impl XdsClient {
    /// Starts a client of `lang` on the control plane that `bootstrap`
    /// names (its node id aside, which the client's language sets), once
    /// its channel to `xds:///echo` is ready.
    pub fn start(lang: Lang, bootstrap: &Path) -> XdsClient {
        XdsClient::start_with(lang, bootstrap, &[])
    }

    /// [`XdsClient::start`] with more environment variables.
    pub fn start_with(lang: Lang, bootstrap: &Path, env: &[(&str, &str)]) -> XdsClient {
        let bootstrap = bootstrap_for(lang, bootstrap);
        let proto = concat!(env!("CARGO_MANIFEST_DIR"), "/proto");
        let mut command = match lang {
            Lang::Python => {
                super::python::require("grpc, grpc_tools");
                super::python::script("xds_client.py")
            }
            Lang::Node => {
                super::js::require(super::js::CURRENT);
                super::js::script("xds_client.js")
            }
            Lang::NodeOld => {
                super::js::require(super::js::OLD);
                let mut command = super::js::script("xds_client.js");
                command.env("GRPC_JS_MODULES", super::js::OLD);
                command
            }
        };
        let mut child = command
            .arg(proto)
            .env("GRPC_XDS_BOOTSTRAP", &bootstrap)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start the {lang:?} client: {e}"));
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut client = XdsClient {
            lang,
            child,
            stdin,
            lines,
        };
        let ready = client.read(Duration::from_secs(60), "the client's first call");
        assert_eq!(ready["ready"], true);
        client
    }

    fn read(&mut self, within: Duration, what: &str) -> serde_json::Value {
        let line = tokio::task::block_in_place(|| self.lines.recv_timeout(within))
            .unwrap_or_else(|e| panic!("no answer from the {:?} client ({what}): {e}", self.lang));
        serde_json::from_str(&line).expect("a JSON line")
    }

    pub fn command(&mut self, command: &str) -> serde_json::Value {
        self.command_within(command, WAIT * 3)
    }

    pub fn command_within(&mut self, command: &str, within: Duration) -> serde_json::Value {
        writeln!(self.stdin, "{command}").expect("write to the client");
        self.read(within, command)
    }

    /// `calls N`: the hosts that answered, and the errors.
    pub fn calls(&mut self, n: usize) -> (BTreeMap<String, u64>, Vec<String>) {
        self.calls_within(&format!("calls {n}"), WAIT * 3)
    }

    /// A `calls …` command that may take up to `within`.
    pub fn calls_within(
        &mut self,
        command: &str,
        within: Duration,
    ) -> (BTreeMap<String, u64>, Vec<String>) {
        let seen = self.command_within(command, within);
        let hosts = serde_json::from_value(seen["hosts"].clone()).expect("hosts");
        let errors = serde_json::from_value(seen["errors"].clone()).expect("errors");
        (hosts, errors)
    }
}

impl Drop for XdsClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `bootstrap` with the node id of `lang`'s client, beside it.
fn bootstrap_for(lang: Lang, bootstrap: &Path) -> PathBuf {
    let text = std::fs::read_to_string(bootstrap).expect("the bootstrap");
    let mut json: serde_json::Value = serde_json::from_str(&text).expect("bootstrap JSON");
    json["node"]["id"] = lang.node_id().into();
    let path = bootstrap.with_file_name(format!("bootstrap-{}.json", lang.node_id()));
    std::fs::write(&path, json.to_string()).expect("write the bootstrap");
    path
}

/// `svckit xds` on `registry`, its address, and a gRPC bootstrap file
/// naming it.
pub fn control_plane(registry: &str) -> (Proc, String, PathBuf, tempfile::TempDir) {
    control_plane_with(registry, &[])
}

/// [`control_plane`] with more arguments to `svckit xds`.
pub fn control_plane_with(
    registry: &str,
    more: &[&str],
) -> (Proc, String, PathBuf, tempfile::TempDir) {
    let mut args = vec!["xds", "--registry", registry, "--listen", "127.0.0.1:0"];
    args.extend_from_slice(more);
    let xds = Proc::cli(&args);
    super::poll_until(WAIT, "svckit xds to listen", || {
        xds.stdout().contains("listening on")
    });
    let out = xds.stdout();
    let addr = out
        .lines()
        .find_map(|l| l.strip_prefix("listening on http://"))
        .expect("the bound address")
        .trim()
        .to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let bootstrap = dir.path().join("bootstrap.json");
    std::fs::write(
        &bootstrap,
        serde_json::json!({
            "xds_servers": [{
                "server_uri": addr,
                "channel_creds": [{"type": "insecure"}],
                "server_features": ["xds_v3"],
            }],
            "node": {"id": "test", "locality": {}},
        })
        .to_string(),
    )
    .expect("write the bootstrap");
    (xds, addr, bootstrap, dir)
}
