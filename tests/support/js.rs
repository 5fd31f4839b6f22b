//! The Node.js side of the cross-language tests (tests/js): grpc-js and
//! grpc-js-xds, installed by `scripts/test` (`npm ci` in tests/js).

use std::path::Path;
use std::process::Command;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/js");

/// Fails the test, saying how to install them, unless node runs and the
/// packages of tests/js/package.json are installed.
pub fn require() {
    let probe = Command::new("node")
        .args([
            "-e",
            "require('@grpc/grpc-js-xds'); require('@grpc/proto-loader')",
        ])
        .current_dir(DIR)
        .output()
        .expect("node is needed: apt-get install nodejs npm");
    assert!(
        probe.status.success() && Path::new(DIR).join("node_modules").is_dir(),
        "the Node.js packages are missing: npm ci --prefix tests/js \
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
