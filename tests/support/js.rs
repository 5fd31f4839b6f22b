//! The Node.js side of the cross-language tests (tests/js): grpc-js and
//! grpc-js-xds, installed by `scripts/test` (`npm ci` in tests/js, and in
//! tests/js/old for an older release).

use std::path::Path;
use std::process::Command;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/js");

/// The packages of tests/js: the current releases.
pub const CURRENT: &str = DIR;
/// The packages of tests/js/old: grpc-js-xds 1.10.
pub const OLD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/js/old");

/// Fails the test, saying how to install them, unless node runs and the
/// packages of `dir`'s package.json are installed.
pub fn require(dir: &str) {
    let probe = Command::new("node")
        .args([
            "-e",
            "require('@grpc/grpc-js-xds'); require('@grpc/proto-loader')",
        ])
        .current_dir(dir)
        .output()
        .expect("node is needed: apt-get install nodejs npm");
    assert!(
        probe.status.success() && Path::new(dir).join("node_modules").is_dir(),
        "the Node.js packages are missing: npm ci --prefix {dir} \
         (scripts/test installs them)\n{}",
        String::from_utf8_lossy(&probe.stderr)
    );
}

/// `node tests/js/SCRIPT args…`, ready to spawn.
pub fn script(name: &str) -> Command {
    let mut command = Command::new("node");
    command.arg(format!("{DIR}/{name}")).current_dir(DIR);
    command
}
