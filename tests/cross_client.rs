//! An independent gRPC implementation (Python grpcio) talks to echo_node:
//! health, reflection, Echo and Base/Ping, discovered through reflection.

mod support;

use support::node::Proc;

#[test]
fn python_grpcio_client_checks_health_reflection_echo_and_ping() {
    support::python::require("grpc, grpc_health, grpc_reflection");

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
    let out = support::python::script("cross_client.py")
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
