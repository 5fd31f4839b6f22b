//! Build-time stub generation for svckit services.
//!
//! One call from a `build.rs` compiles `.proto` files with [protox] (a
//! pure-Rust protobuf compiler, so no `protoc` is needed), generates tonic
//! clients and servers with `tonic-prost-build`, and writes the encoded
//! `FileDescriptorSet` beside them so that the node can serve it through
//! gRPC reflection.
//!
//! ```no_run
//! // build.rs
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     svckit_build::compile_protos(&["proto/echo/v1/echo.proto"], &["proto"], "echo")?;
//!     Ok(())
//! }
//! ```
//!
//! and in the crate (text here: the module only exists in a crate whose
//! build script generated it):
//!
//! ```text
//! pub mod pb {
//!     tonic::include_proto!("echo.v1");
//!     pub const FILE_DESCRIPTOR_SET: &[u8] =
//!         include_bytes!(concat!(env!("OUT_DIR"), "/echo_descriptor.bin"));
//! }
//! ```

use std::error::Error;
use std::path::{Path, PathBuf};

use prost::Message;

/// Compiles `protos` (searched for in `includes`), writes the generated Rust
/// modules to `OUT_DIR`, and writes the encoded descriptor set to
/// `OUT_DIR/{set_name}_descriptor.bin`.
///
/// Cargo is told to re-run the build script when any of the files changes.
pub fn compile_protos(
    protos: &[impl AsRef<Path>],
    includes: &[impl AsRef<Path>],
    set_name: &str,
) -> Result<PathBuf, Box<dyn Error>> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptor_path = out_dir.join(format!("{set_name}_descriptor.bin"));

    let file_descriptors = protox::compile(protos, includes)?;
    for file in &file_descriptors.file {
        // Re-run only when one of our own inputs changes, not on every build.
        for include in includes {
            let path = include.as_ref().join(file.name());
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
    std::fs::write(&descriptor_path, file_descriptors.encode_to_vec())?;

    tonic_prost_build::configure()
        .out_dir(&out_dir)
        .compile_fds(file_descriptors)?;
    Ok(descriptor_path)
}
