//! The kit's one public error type, and its mapping to process exit codes.

use std::io;

/// The result type used throughout svckit.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A boxed error returned by user code (manager hooks).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in svckit, with enough context to act on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is unreadable or invalid (exit code 78).
    #[error("{0}")]
    Config(String),
    /// A command-line usage error: `--workers 0`, a bad registry URL (exit code 64).
    #[error("{0}")]
    Usage(String),
    /// The registry could not be reached (exit code 69).
    #[error("registry unavailable: {0}")]
    Unavailable(String),
    /// Another live node already claims this (topic, host) (exit code 78:
    /// two nodes with one identity is a configuration mistake).
    #[error("duplicate member: {0}")]
    Duplicate(String),
    /// A listener could not be bound (exit code 71).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: io::Error,
    },
    /// A manager hook failed; the start (or stop) was aborted (exit code 70).
    #[error("{hook} failed: {source}")]
    Hook {
        hook: &'static str,
        #[source]
        source: BoxError,
    },
    /// The registry answered with an error.
    #[error("registry error: {0}")]
    Registry(String),
    /// A member or record that was asked for does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The graceful shutdown did not finish within its deadline (exit code 1).
    #[error("graceful shutdown did not finish within {0:?}")]
    ShutdownTimeout(std::time::Duration),
    /// A gRPC transport failure.
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// An I/O failure.
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// An RPC failed with a gRPC status.
    #[error("rpc: {0}")]
    Status(#[from] tonic::Status),
}

impl Error {
    /// The process exit code for this error (sysexits.h where one fits).
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) => exit::USAGE,
            Error::Config(_) | Error::Duplicate(_) => exit::CONFIG,
            Error::Unavailable(_) => exit::UNAVAILABLE,
            Error::Status(s) if s.code() == tonic::Code::Unavailable => exit::UNAVAILABLE,
            Error::Status(_) => exit::FAILURE,
            Error::Bind { .. } => exit::OSERR,
            Error::Hook { .. } => exit::SOFTWARE,
            Error::ShutdownTimeout(_) | Error::NotFound(_) => exit::FAILURE,
            _ => exit::SOFTWARE,
        }
    }
}

/// Exit codes of every kit binary; the README documents them.
pub mod exit {
    /// Normal exit, including a graceful stop.
    pub const OK: i32 = 0;
    /// The graceful shutdown deadline passed with work still in flight, or
    /// a record an operator named does not exist.
    pub const FAILURE: i32 = 1;
    /// Bad command-line usage: `--workers 0`, a malformed registry URL.
    pub const USAGE: i32 = 64;
    /// The registry was unreachable at start.
    pub const UNAVAILABLE: i32 = 69;
    /// An internal error or a failed manager hook.
    pub const SOFTWARE: i32 = 70;
    /// A listener could not be bound (address in use, permission).
    pub const OSERR: i32 = 71;
    /// Unreadable or invalid configuration, or a duplicate (topic, host).
    pub const CONFIG: i32 = 78;
    /// A second SIGINT/SIGTERM during a graceful stop: 128 + signal number.
    pub const fn signal(signo: i32) -> i32 {
        128 + signo
    }
}
