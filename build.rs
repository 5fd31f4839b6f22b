// Stubs for the kit's own base API and for the examples' echo manager. The
// examples show the same helper a user's crate calls from its own build.rs.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    svckit_build::compile_protos(
        &["proto/svckit/base/v1/base.proto"],
        &["proto"],
        "svckit_base",
    )?;
    svckit_build::compile_protos(
        &["proto/examples/echo/v1/echo.proto"],
        &["proto"],
        "svckit_examples_echo",
    )?;
    Ok(())
}
