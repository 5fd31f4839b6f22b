//! `svckit`, the operator CLI. All of it lives in [`svckit::cli`].

fn main() -> std::process::ExitCode {
    svckit::cli::main()
}
