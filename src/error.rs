//! The kit's one public error type, and its mapping to process exit codes.
//!
//! An [`Error`] is a kind, which decides the exit code and what a caller
//! may do about it; words saying what was being done; and the error
//! underneath, when there is one ([`std::error::Error::source`]), as
//! tonic's transport error is built.

use std::borrow::Cow;
use std::fmt;
use std::io;
use std::time::Duration;

/// The result type used throughout svckit.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A boxed error returned by user code (manager hooks).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in svckit: its [`ErrorKind`], what was
/// being done, and the error underneath.
pub struct Error {
    kind: ErrorKind,
    /// What was being done, or what is wrong, in words.
    context: Cow<'static, str>,
    source: Option<BoxError>,
}

/// What kind of failure an [`Error`] is; each has its exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A configuration value is unreadable or invalid (exit code 78).
    Config,
    /// A command-line usage error: an unknown flag, `--workers 0`, a bad
    /// registry URL (exit code 64).
    Usage,
    /// The registry could not be reached, or did not answer in time (exit
    /// code 69); the source is the transport, I/O or timeout error.
    Unavailable,
    /// The registry refused the credentials given (exit code 78). The
    /// message names the user, never the password.
    Credentials,
    /// Another live node already claims this (topic, host) (exit code 78:
    /// two nodes with one identity is a configuration mistake).
    Duplicate,
    /// A listener could not be bound (exit code 71).
    Bind,
    /// A manager hook failed; the start (or stop) was aborted (exit code
    /// 70). The source is the hook's error.
    Hook,
    /// The registry answered, but with an error or with data it cannot use
    /// (exit code 70). The source is the registry's own error (for etcd an
    /// [`etcd_client::Error`]), or a JSON error for a value written by hand.
    Registry,
    /// A member's record that was asked for does not exist (exit code 1).
    NotFound,
    /// An operator asked to delete the record of a member that is up (exit
    /// code 1).
    MemberUp,
    /// The graceful shutdown did not finish within its deadline (exit code
    /// 1).
    ShutdownTimeout,
    /// A gRPC transport failure (exit code 70).
    Transport,
    /// An I/O failure (exit code 70).
    Io,
    /// An RPC failed with a gRPC status ([`Error::status`]): exit code 69
    /// for UNAVAILABLE, else 1.
    Status,
}

impl Error {
    fn new(kind: ErrorKind, context: impl Into<Cow<'static, str>>) -> Self {
        Error {
            kind,
            context: context.into(),
            source: None,
        }
    }

    fn caused_by(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The gRPC status an RPC failed with ([`ErrorKind::Status`]).
    pub fn status(&self) -> Option<&tonic::Status> {
        self.source.as_deref()?.downcast_ref()
    }

    /// The error underneath, taken out.
    pub(crate) fn into_source(self) -> Option<BoxError> {
        self.source
    }

    /// An invalid configuration; `problem` names the option and where its
    /// value came from.
    pub(crate) fn config(problem: impl Into<Cow<'static, str>>) -> Self {
        Error::new(ErrorKind::Config, problem)
    }

    /// An invalid configuration caused by `source` (a parser's or the file
    /// system's error).
    pub(crate) fn config_from(
        problem: impl Into<Cow<'static, str>>,
        source: impl Into<BoxError>,
    ) -> Self {
        Error::config(problem).caused_by(source)
    }

    /// A command-line usage error.
    pub(crate) fn usage(problem: impl Into<Cow<'static, str>>) -> Self {
        Error::new(ErrorKind::Usage, problem)
    }

    /// No record of `topic`/`host`.
    pub fn not_found(topic: &str, host: &str) -> Self {
        Error::new(
            ErrorKind::NotFound,
            format!("not found: no service record for topic {topic:?} host {host:?}"),
        )
    }

    /// The registry at `what` could not be reached, because of `source`.
    pub(crate) fn unavailable(what: impl fmt::Display, source: impl Into<BoxError>) -> Self {
        Error::unavailable_msg(what).caused_by(source)
    }

    /// The registry could not be reached: `what` says how it showed.
    pub(crate) fn unavailable_msg(what: impl fmt::Display) -> Self {
        Error::new(
            ErrorKind::Unavailable,
            format!("registry unavailable: {what}"),
        )
    }

    /// The registry's error `source` while doing `what`.
    pub(crate) fn registry(what: impl fmt::Display, source: impl Into<BoxError>) -> Self {
        Error::registry_msg(what).caused_by(source)
    }

    /// A registry failure without an underlying error (data that kept
    /// changing, an answer of an unexpected shape).
    pub(crate) fn registry_msg(what: impl fmt::Display) -> Self {
        Error::new(ErrorKind::Registry, format!("registry error: {what}"))
    }

    /// The registry refused the credentials: `what` says who, by whom, and
    /// which options to check.
    pub(crate) fn credentials(what: String, source: impl Into<BoxError>) -> Self {
        Error::new(ErrorKind::Credentials, what).caused_by(source)
    }

    /// `member` (`topic/host`) is held by a live node; `holder` says which,
    /// as far as it is known.
    pub(crate) fn duplicate(member: &str, holder: &str) -> Self {
        Error::new(
            ErrorKind::Duplicate,
            format!("duplicate member: {member} is already registered by a live node ({holder})"),
        )
    }

    /// The member `topic`/`host` is up and may not be deleted.
    pub(crate) fn member_up(topic: &str, host: &str) -> Self {
        Error::new(
            ErrorKind::MemberUp,
            format!(
                "{topic}/{host} is up; stop the node first, or delete with --force \
                 (the live node then writes its record again at once)"
            ),
        )
    }

    /// No listener on `addr`, because of `source`.
    pub fn bind(addr: impl fmt::Display, source: io::Error) -> Self {
        Error::new(ErrorKind::Bind, format!("cannot listen on {addr}")).caused_by(source)
    }

    /// The manager hook `hook` failed with `source`.
    pub(crate) fn hook(hook: &'static str, source: BoxError) -> Self {
        Error::new(ErrorKind::Hook, format!("{hook} failed")).caused_by(source)
    }

    /// The graceful shutdown outlasted `deadline`.
    pub(crate) fn shutdown_timeout(deadline: Duration) -> Self {
        Error::new(
            ErrorKind::ShutdownTimeout,
            format!("graceful shutdown did not finish within {deadline:?}"),
        )
    }

    /// The process exit code for this error (sysexits.h where one fits).
    pub fn exit_code(&self) -> i32 {
        // Every kind named: a new one must choose its code here.
        match self.kind {
            ErrorKind::Usage => exit::USAGE,
            ErrorKind::Config | ErrorKind::Credentials | ErrorKind::Duplicate => exit::CONFIG,
            ErrorKind::Unavailable => exit::UNAVAILABLE,
            ErrorKind::Status => match self.status().map(tonic::Status::code) {
                Some(tonic::Code::Unavailable) => exit::UNAVAILABLE,
                _ => exit::FAILURE,
            },
            ErrorKind::Bind => exit::OSERR,
            ErrorKind::Hook | ErrorKind::Registry | ErrorKind::Transport | ErrorKind::Io => {
                exit::SOFTWARE
            }
            ErrorKind::ShutdownTimeout | ErrorKind::NotFound | ErrorKind::MemberUp => exit::FAILURE,
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("Error");
        debug
            .field("kind", &self.kind)
            .field("context", &self.context);
        if let Some(source) = &self.source {
            debug.field("source", source);
        }
        debug.finish()
    }
}

/// The context, then `": cause"`, so that the one line a binary prints
/// names the cause too.
impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.context)?;
        match &self.source {
            Some(source) => write!(f, ": {source}"),
            None => Ok(()),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::new(ErrorKind::Io, "i/o").caused_by(e)
    }
}

impl From<tonic::transport::Error> for Error {
    fn from(e: tonic::transport::Error) -> Self {
        Error::new(ErrorKind::Transport, "transport").caused_by(e)
    }
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        Error::new(ErrorKind::Status, "rpc").caused_by(status)
    }
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
