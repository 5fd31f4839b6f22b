//! The Python side of the cross-language tests (tests/py).

use std::process::Command;

/// Fails the test, saying how to install them, unless python3 can import
/// `modules` (`"grpc, grpc_tools"`).
pub fn require(modules: &str) {
    let probe = Command::new("python3")
        .args(["-c", &format!("import {modules}")])
        .output()
        .expect("python3 is needed: apt-get install python3 python3-pip");
    assert!(
        probe.status.success(),
        "Python packages are missing: pip install -r tests/py/requirements.txt \
         (scripts/test installs them)\n{}",
        String::from_utf8_lossy(&probe.stderr)
    );
}

/// `python3 tests/py/SCRIPT args…`, ready to spawn.
pub fn script(name: &str) -> Command {
    let mut command = Command::new("python3");
    command.arg(format!("{}/tests/py/{name}", env!("CARGO_MANIFEST_DIR")));
    command
}
