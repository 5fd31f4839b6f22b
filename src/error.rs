//! The kit's one public error type, and its mapping to process exit codes.

use std::io;

/// The result type used throughout svckit.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A boxed error returned by user code (manager hooks).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in svckit, with enough context to act on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is unreadable or invalid (exit code 78).
    #[error("{problem}{}", caused_by(.source.as_deref()))]
    Config {
        /// What is wrong, naming the option and where its value came from.
        problem: String,
        /// The parser's or the file system's error, when there is one.
        #[source]
        source: Option<BoxError>,
    },
    /// A command-line usage error: an unknown flag, `--workers 0`, a bad
    /// registry URL (exit code 64).
    #[error("{problem}")]
    Usage {
        /// What is wrong with the command line.
        problem: String,
    },
    /// The registry could not be reached, or did not answer in time
    /// (exit code 69). `source` is the transport, I/O or timeout error
    /// underneath, when there is one.
    #[error("registry unavailable: {what}{}", caused_by(.source.as_deref()))]
    Unavailable {
        /// What was being reached, e.g. `etcd at 10.0.0.1:2379`.
        what: String,
        /// Why it could not be: a transport, I/O or timeout error.
        #[source]
        source: Option<BoxError>,
    },
    /// The registry refused the credentials given (exit code 78: the
    /// configuration holds a wrong user or password). The message names
    /// the user, never the password.
    #[error("{what}{}", caused_by(Some(.source.as_ref())))]
    Credentials {
        /// Who was refused, by whom, and which options to check.
        what: String,
        /// The registry's answer.
        #[source]
        source: BoxError,
    },
    /// Another live node already claims this (topic, host) (exit code 78:
    /// two nodes with one identity is a configuration mistake).
    #[error("duplicate member: {member} is already registered by a live node ({holder})")]
    Duplicate {
        /// `topic/host`.
        member: String,
        /// The other node, as far as it is known: its gRPC endpoint, pid.
        holder: String,
    },
    /// A listener could not be bound (exit code 71).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: String,
        /// Why the bind failed (in use, permission).
        #[source]
        source: io::Error,
    },
    /// A manager hook failed; the start (or stop) was aborted (exit code 70).
    #[error("{hook} failed: {source}")]
    Hook {
        /// Which hook: `init_host`, `pre_start_hook`, …
        hook: &'static str,
        /// The error the manager returned.
        #[source]
        source: BoxError,
    },
    /// The registry answered, but with an error or with data it cannot
    /// use (exit code 70). `source` is the registry's own error (for etcd an
    /// [`etcd_client::Error`], whose gRPC status code callers may inspect),
    /// or a JSON error for a value written by hand.
    #[error("registry error: {what}{}", caused_by(.source.as_deref()))]
    Registry {
        /// What was being done, e.g. the key or file concerned.
        what: String,
        /// The registry's answer, or the decoding error.
        #[source]
        source: Option<BoxError>,
    },
    /// A member's record that was asked for does not exist (exit code 1).
    #[error("not found: no service record for topic {topic:?} host {host:?}")]
    NotFound {
        /// The topic asked for.
        topic: String,
        /// The host asked for.
        host: String,
    },
    /// An operator asked to delete the record of a member that is up
    /// (exit code 1). Deleting it anyway (`--force`) is short-lived: the live
    /// node writes its record again.
    #[error(
        "{topic}/{host} is up; stop the node first, or delete with --force \
         (the live node then writes its record again at once)"
    )]
    MemberUp {
        /// The member's topic.
        topic: String,
        /// The member's host.
        host: String,
    },
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
    /// [`Error::Config`] without an underlying error.
    pub(crate) fn config(problem: impl Into<String>) -> Self {
        Error::Config {
            problem: problem.into(),
            source: None,
        }
    }

    /// [`Error::Config`] caused by `source`.
    pub(crate) fn config_from(problem: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Error::Config {
            problem: problem.into(),
            source: Some(source.into()),
        }
    }

    /// [`Error::Usage`].
    pub(crate) fn usage(problem: impl Into<String>) -> Self {
        Error::Usage {
            problem: problem.into(),
        }
    }

    /// [`Error::NotFound`] for `topic`/`host`.
    pub(crate) fn not_found(topic: impl Into<String>, host: impl Into<String>) -> Self {
        Error::NotFound {
            topic: topic.into(),
            host: host.into(),
        }
    }

    /// [`Error::Unavailable`] with what was being reached and why not.
    pub(crate) fn unavailable(what: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Error::Unavailable {
            what: what.into(),
            source: Some(source.into()),
        }
    }

    /// [`Error::Registry`] with what was being done and the cause.
    pub(crate) fn registry(what: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Error::Registry {
            what: what.into(),
            source: Some(source.into()),
        }
    }

    /// [`Error::Registry`] for a failure without an underlying error (data
    /// that kept changing, an answer of an unexpected shape).
    pub(crate) fn registry_msg(what: impl Into<String>) -> Self {
        Error::Registry {
            what: what.into(),
            source: None,
        }
    }

    /// The process exit code for this error (sysexits.h where one fits).
    pub fn exit_code(&self) -> i32 {
        // Every variant named: a new one must choose its code here.
        match self {
            Error::Usage { .. } => exit::USAGE,
            Error::Config { .. } | Error::Credentials { .. } | Error::Duplicate { .. } => {
                exit::CONFIG
            }
            Error::Unavailable { .. } => exit::UNAVAILABLE,
            Error::Status(s) if s.code() == tonic::Code::Unavailable => exit::UNAVAILABLE,
            Error::Status(_) => exit::FAILURE,
            Error::Bind { .. } => exit::OSERR,
            Error::Hook { .. } | Error::Registry { .. } | Error::Transport(_) | Error::Io(_) => {
                exit::SOFTWARE
            }
            Error::ShutdownTimeout(_) | Error::NotFound { .. } | Error::MemberUp { .. } => {
                exit::FAILURE
            }
        }
    }
}

/// `": cause"`, so that the one line a binary prints names the cause too.
fn caused_by(source: Option<&(dyn std::error::Error + Send + Sync + 'static)>) -> String {
    source.map(|s| format!(": {s}")).unwrap_or_default()
}

/// Exit codes of every kit binary; docs/exit-codes.md documents them.
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
