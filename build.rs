// Stubs for the kit's own base API and for the examples' echo manager. The
// examples show the same helper a user's crate calls from its own build.rs.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    svckit_build::compile_protos(
        &["proto/svckit/base/v1/base.proto"],
        &["proto"],
        "svckit_base",
    )?;
    // ORCA load reports (xds.data.orca.v3, xds.service.orca.v3).
    svckit_build::compile_protos(
        &["proto/xds/service/orca/v3/orca.proto"],
        &["proto"],
        "xds_orca",
    )?;
    svckit_build::compile_protos(
        &["proto/examples/echo/v1/echo.proto"],
        &["proto"],
        "svckit_examples_echo",
    )?;
    // What the state report names as the build.
    for (name, var) in [
        ("SVCKIT_BUILD_TARGET", "TARGET"),
        ("SVCKIT_BUILD_PROFILE", "PROFILE"),
    ] {
        println!(
            "cargo:rustc-env={name}={}",
            std::env::var(var).unwrap_or_default()
        );
    }
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = std::process::Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .unwrap_or_default();
    println!("cargo:rustc-env=SVCKIT_BUILD_RUSTC={}", version.trim());
    Ok(())
}
