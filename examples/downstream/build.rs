fn main() -> Result<(), Box<dyn std::error::Error>> {
    svckit_build::compile_protos(&["proto/tally/v1/tally.proto"], &["proto"], "tally")?;
    Ok(())
}
