//! An independent gRPC implementation (Python grpcio) talks to echo_node:
//! health, reflection, Echo and Base/Ping, discovered through reflection.

mod support;

use std::process::Command;

use support::node::Proc;

#[test]
fn python_grpcio_client_checks_health_reflection_echo_and_ping() {
    let probe = Command::new("python3")
        .args(["-c", "import grpc, grpc_health, grpc_reflection"])
        .output()
        .expect("python3 is needed for the cross-client test");
    assert!(
        probe.status.success(),
        "Python gRPC packages are missing: pip install -r tests/py/requirements.txt \
         (scripts/test installs them)\n{}",
        String::from_utf8_lossy(&probe.stderr)
    );

    let (_node, addr) = Proc::start_example(
        "echo_node",
        &[
            "--rpc-listen",
            "127.0.0.1:0",
            "--registry",
            "memory://",
            "--host",
            "py-host",
        ],
        &[],
    );
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/cross_client.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(addr.to_string())
        .output()
        .expect("run python client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python client failed:\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_str(stdout.trim()).expect("json line");
    assert_eq!(seen["overall"], "SERVING");
    assert_eq!(seen["echo_host"], "py-host");
    assert_eq!(seen["ping"]["host"], "py-host");
    assert_eq!(seen["ping"]["service"], "echo_node");
    let services = seen["services"].as_array().unwrap();
    for name in [
        "svckit.examples.echo.v1.Echo",
        "svckit.base.v1.Base",
        "grpc.health.v1.Health",
        // The client asks through v1alpha; each reflection version lists itself.
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(
            services.iter().any(|s| s == name),
            "{name} not listed: {services:?}"
        );
    }
}
