//! Typed configuration: defaults < TOML file < `SVCKIT_*` environment < flags.
//!
//! Every option is declared once, in [`Config`]'s table below; that table
//! drives parsing at every layer, the error messages (which name the option
//! and where its value came from, with the file line), the `SVCKIT_<NAME>`
//! environment variables, the option table of docs/config.md, and which options a
//! SIGHUP may change in place (`mutable`).
//!
//! Unknown keys in the config file are refused (exit 78), because a
//! misspelt option silently falling back to its default is worse than a
//! refused start.

mod args;
mod load;
mod value;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use self::args::{exit_on_usage_error, parse_args, CommonArgs};
pub use self::value::{
    AdmissionMode, ConsoleAddr, HedgeDelay, LogFilter, OptionValue, OtlpEndpoint, RestartMethod,
    SampleRatio, Workers,
};

use self::load::check_range;
pub(crate) use self::load::check_workers;
use crate::error::{Error, Result};
use crate::servicegroup::{RegistryOptions, RegistryUrl};

/// Where an option's value came from, for error messages and reports.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Source {
    /// Nobody set it.
    Default,
    /// The config file, at this line when known.
    File {
        /// The file read.
        path: PathBuf,
        /// The 1-based line of the value.
        line: Option<usize>,
    },
    /// An environment variable (its name).
    Env(String),
    /// A command-line flag (as typed: `--report-interval`).
    Flag(String),
    /// The program itself, through [`Config::with`].
    Program,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => write!(f, "the default"),
            Source::File {
                path,
                line: Some(l),
            } => write!(f, "{}:{l}", path.display()),
            Source::File { path, line: None } => write!(f, "{}", path.display()),
            Source::Env(var) => write!(f, "environment variable {var}"),
            Source::Flag(flag) => write!(f, "flag {flag}"),
            Source::Program => write!(f, "the program"),
        }
    }
}

/// One option's description, for the reference and for SIGHUP.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct OptionInfo {
    /// The option's name in files, flags (`-` for `_`) and `SVCKIT_*`.
    pub name: &'static str,
    /// May change on SIGHUP without a restart.
    pub mutable: bool,
    /// Shown as `***` in reports.
    pub secret: bool,
    /// The accepted range, inclusive, in the option's own text form (`1ms`,
    /// `1h`); checked at load, so no arithmetic on an option can overflow.
    pub range: Option<(&'static str, &'static str)>,
    /// One line for the reference.
    pub doc: &'static str,
}

/// `Some((lo, hi))` when an option declares a range.
macro_rules! option_range {
    () => {
        None
    };
    ($lo:literal, $hi:literal) => {
        Some(($lo, $hi))
    };
}

macro_rules! options {
    ($(
        $(#[doc = $doc:literal])+
        $name:ident : $ty:ty = $default:expr, mutable = $mutable:literal, secret = $secret:literal
            $(, range = $lo:literal ..= $hi:literal)?;
    )*) => {
        /// The kit's configuration. See the module docs for the layering.
        /// Its `Debug` shows secrets as `***`, as reports do.
        #[derive(Clone)]
        pub struct Config {
            $( $(#[doc = $doc])+ pub(crate) $name: $ty, )*
            sources: BTreeMap<&'static str, Source>,
        }

        /// Each option's value, read-only: every value passed validation.
        /// Change one with [`Config::with`].
        impl Config {
            $(
                $(#[doc = $doc])+
                pub fn $name(&self) -> &$ty {
                    &self.$name
                }
            )*
        }

        impl Default for Config {
            fn default() -> Self {
                Config { $( $name: $default, )* sources: BTreeMap::new() }
            }
        }

        /// Every option, in declaration order.
        pub const OPTIONS: &[OptionInfo] = &[$(
            OptionInfo {
                name: stringify!($name),
                mutable: $mutable,
                secret: $secret,
                range: option_range!($($lo, $hi)?),
                doc: concat!($($doc),+),
            },
        )*];

        impl Config {
            /// Sets one option from its text form; the error names the
            /// option and the source of the bad value.
            pub(crate) fn set(&mut self, name: &str, raw: &str, source: Source) -> Result<()> {
                let (key, parsed) = match name {
                    $( stringify!($name) => (
                        stringify!($name),
                        <$ty as OptionValue>::parse_value(raw).map(|v| self.$name = v),
                    ), )*
                    _ => return Err(Error::config(format!("unknown option `{name}` (from {source})"))),
                };
                match parsed {
                    Ok(()) => {
                        self.sources.insert(key, source);
                        Ok(())
                    }
                    // A malformed registry URL is a usage error, wherever it came from.
                    Err(e) if key == "registry" => Err(Error::usage(format!("{e} (option `registry` from {source})"))),
                    Err(e) => Err(Error::config(format!("invalid value for `{key}` from {source}: {e}"))),
                }
            }

            /// Checks the options `wanted` accepts against their ranges.
            fn check_ranges(&self, wanted: impl Fn(&str) -> bool) -> Result<()> {
                $( $(
                    let name = stringify!($name);
                    if wanted(name) {
                        check_range(name, &self.$name, ($lo, $hi), self.source(name))?;
                    }
                )? )*
                Ok(())
            }

            /// The text form of one option, secrets included.
            fn raw(&self, name: &str) -> Option<String> {
                match name {
                    $( stringify!($name) => Some(OptionValue::show(&self.$name)), )*
                    _ => None,
                }
            }
        }
    };
}

options! {
    /// This node's host name; with `topic` it identifies the node. Default: the machine's hostname.
    host: String = default_host(), mutable = false, secret = false;
    /// The topic this node serves. Default: the service's own topic (e.g. `echo` for `echo_node`).
    topic: Option<String> = None, mutable = false, secret = false;
    /// Registry URL: `etcd://h1:2379,h2:2379?prefix=/svckit`, `file:///path` or `memory://`.
    registry: RegistryUrl = default_registry(), mutable = false, secret = false;
    /// gRPC listen address; port 0 binds an ephemeral port and the bound address is advertised.
    rpc_listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 0)), mutable = false, secret = false;
    /// HTTP listen address (admin endpoints and the manager's HTTP API); unset for none. Port 0 binds an ephemeral port.
    http_listen: Option<SocketAddr> = None, mutable = false, secret = false;
    /// HTTP requests served at once per process; more wait up to http_pool_wait, then get 503.
    http_pool_size: usize = 1000, mutable = false, secret = false, range = "1" ..= "100000";
    /// How long an HTTP request waits for a free slot of http_pool_size before a 503.
    http_pool_wait: Duration = Duration::from_secs(1), mutable = false, secret = false,
        range = "0s" ..= "1h";
    /// Bound on handling one HTTP request; past it the client gets 503.
    http_request_timeout: Duration = Duration::from_secs(60), mutable = false, secret = false,
        range = "1ms" ..= "1day";
    /// HTTP connections open at once per process; a new one past it takes the slot of the oldest that has sent nothing yet, or is closed.
    http_max_connections: usize = 10000, mutable = false, secret = false, range = "1" ..= "1000000";
    /// Longest request target (path and query) in bytes; longer is 414.
    max_url_len: usize = 8192, mutable = false, secret = false, range = "64" ..= "1048576";
    /// Longest request header line in bytes; longer is 431.
    max_header_line: usize = 16384, mutable = false, secret = false, range = "256" ..= "1048576";
    /// Largest HTTP request body in bytes; larger is 413.
    max_request_body: usize = 1048576, mutable = false, secret = false,
        range = "0" ..= "1073741824";
    /// Time a client has to send a request's headers; a slower one is cut off.
    /// On a kept-alive connection the wait for the next request counts too.
    header_read_timeout: Duration = Duration::from_secs(30), mutable = false, secret = false,
        range = "10ms" ..= "1h";
    /// An HTTP connection with nothing read or written for this long is closed
    /// (at the latest a quarter of it later); 0 never.
    client_socket_timeout: Duration = Duration::from_secs(900), mutable = false, secret = false,
        range = "0s" ..= "1day";
    /// Keep HTTP/1.1 connections open between requests.
    http_keep_alive: bool = true, mutable = false, secret = false;
    /// TCP keep-alive idle time of accepted HTTP connections (SO_KEEPALIVE is on).
    tcp_keepidle: Duration = Duration::from_secs(600), mutable = false, secret = false,
        range = "1s" ..= "1day";
    /// Serve the live membership dashboard, read-only, at `/debug/members` on the HTTP listener.
    http_dashboard: bool = false, mutable = false, secret = false;
    /// Serve HTTP (the API and the admin endpoints) on the gRPC port, routed by content-type; http_listen must then be unset.
    http_shared_port: bool = false, mutable = false, secret = false;
    /// Worker processes (`auto`: one per CPU); 1 runs the service in the launcher's own process.
    workers: Workers = Workers(1), mutable = false, secret = false, range = "1" ..= "1024";
    /// What SIGHUP does with worker processes: `reload` replaces them one at a time, `mutate` applies the mutable options in place.
    restart_method: RestartMethod = RestartMethod::Reload, mutable = true, secret = false;
    /// A worker that exits sooner than this after its start is restarted with a growing delay (0.1 s doubling to 30 s).
    min_worker_lifetime: Duration = Duration::from_secs(10), mutable = true, secret = false,
        range = "0s" ..= "1h";
    /// A worker that has not proved it is alive for this long (its runtime blocked, or the process stopped) is killed and replaced; 0 never.
    worker_timeout: Duration = Duration::from_secs(30), mutable = false, secret = false,
        range = "0s" ..= "1h";
    /// A worker that answered this many gRPC calls and HTTP requests (plus a random jitter of up to max_requests_jitter) is replaced gracefully, as in a reload; 0 never.
    max_requests: usize = 0, mutable = false, secret = false, range = "0" ..= "1000000000000";
    /// The most added at random to max_requests per worker, so that workers are not all replaced at once.
    max_requests_jitter: usize = 0, mutable = false, secret = false, range = "0" ..= "1000000000000";
    /// Heartbeat interval (lease keep-alive); on etcd at most 2.5 per service_down_time.
    report_interval: Duration = Duration::from_secs(1), mutable = false, secret = false,
        range = "10ms" ..= "1h";
    /// How long after the last heartbeat a node counts as down (the lease TTL); raised to 2 x report_interval.
    service_down_time: Duration = Duration::from_secs(5), mutable = false, secret = false,
        range = "10ms" ..= "1day";
    /// Bound on a graceful stop (drain, in-flight requests, cleanup); 0 waits forever.
    graceful_shutdown_timeout: Duration = Duration::from_secs(30), mutable = true, secret = false,
        range = "0s" ..= "1day";
    /// Time between leaving the service group and closing listeners, so clients see the leave.
    drain_delay: Duration = Duration::from_secs(1), mutable = true, secret = false,
        range = "0s" ..= "1h";
    /// Default deadline of an RPC call made by clients built from this config.
    rpc_response_timeout: Duration = Duration::from_secs(60), mutable = false, secret = false,
        range = "1ms" ..= "1day";
    /// When set, the node writes its advertised endpoints there as JSON once it serves and is registered, and removes the file when it stops.
    ready_file: Option<PathBuf> = None, mutable = false, secret = false;
    /// A live debug console (tokio-console) on this port, on loopback (or an address naming its interface); a supervisor's worker N uses the port + 1 + N. Needs a build with the `console` feature and `--cfg tokio_unstable`.
    backdoor_port: Option<ConsoleAddr> = None, mutable = false, secret = false;
    /// Hedging of idempotent RPC calls: a delay (`20ms`) or `auto` (the target's p95 latency); empty for none.
    rpc_hedge_delay: Option<HedgeDelay> = None, mutable = false, secret = false;
    /// A client of a topic with more routable nodes balances over this many of them (its subset, by rendezvous hashing); 0 uses all.
    rpc_subset_size: usize = 32, mutable = false, secret = false, range = "0" ..= "100000";
    /// A client's connection to a node that no call used for this long is closed (the next call opens another); 0 keeps connections open.
    rpc_idle_timeout: Duration = Duration::from_secs(300), mutable = false, secret = false,
        range = "0s" ..= "1day";
    /// HTTP/2 connections a client opens to one node at most: past the first, one more per 16 calls in flight on the node.
    rpc_connections_per_node: usize = 1, mutable = false, secret = false,
        range = "1" ..= "64";
    /// A client leaves out a node failing well above its peers for this long times the times it was ejected; 0 never ejects.
    rpc_ejection_time: Duration = Duration::from_secs(30), mutable = false, secret = false,
        range = "0s" ..= "1h";
    /// OTLP/gRPC endpoint spans are exported to (`http://127.0.0.1:4317`): every served gRPC call and HTTP request, and every call made through an Rpc client, is a span; unset exports nothing.
    otlp_endpoint: Option<OtlpEndpoint> = None, mutable = false, secret = false;
    /// Share of the traces this process starts that are exported, from 0 to 1; a call or request with a traceparent follows its parent's sampling decision.
    otlp_sample_ratio: SampleRatio = SampleRatio(1.0), mutable = false, secret = false;
    /// Log filter (`info`, `svckit=debug,warn`); when unset anywhere, RUST_LOG applies.
    log_level: LogFilter = LogFilter("info".into()), mutable = true, secret = false;
    /// How gRPC calls and HTTP requests are admitted: `adaptive` (while the process demands at least 90% of its share of CPUs, no more in flight than its best throughput times its lowest latency over 5 s; past it refused at once) or `static` (rpc_pool_size and http_pool_size alone). Both stay under those pools.
    rpc_admission: AdmissionMode = AdmissionMode::Adaptive, mutable = false, secret = false;
    /// gRPC calls served at once per process (health checks aside); more wait up to rpc_pool_wait, then are refused with UNAVAILABLE before their handler runs.
    rpc_pool_size: usize = 1000, mutable = false, secret = false, range = "1" ..= "100000";
    /// How long a gRPC call waits for a free slot of rpc_pool_size before it is refused (svckit clients then try another node).
    rpc_pool_wait: Duration = Duration::from_millis(100), mutable = false, secret = false,
        range = "0s" ..= "1min";
    /// gRPC connections open at once per process; a new one past it takes the slot of the oldest that has not sent its HTTP/2 opening yet, or is closed.
    rpc_max_connections: usize = 10000, mutable = false, secret = false, range = "1" ..= "1000000";
    /// Time a gRPC client has, from its connect, to send the HTTP/2 preface and its first frame; a silent or stalled one is cut off.
    rpc_handshake_timeout: Duration = Duration::from_secs(10), mutable = false, secret = false,
        range = "10ms" ..= "1h";
    /// Every gRPC answer carries the node's load (an ORCA report: CPU, calls and errors per second) in its endpoint-load-metrics-bin trailer, for clients whose weighted round robin reads reports per call; off, reports go out of band only (OpenRcaService), which costs no call anything.
    rpc_load_report_trailer: bool = false, mutable = false, secret = false;
    /// Largest gRPC message accepted or sent, in bytes.
    max_message_size: usize = 4 * 1024 * 1024, mutable = false, secret = false,
        range = "1024" ..= "1073741824";
    /// Runs the manager's periodic tasks; `false` turns them all off.
    periodic_enable: bool = true, mutable = false, secret = false;
    /// The first run of a periodic task waits a random delay up to this (unless it runs immediately), so a fleet restarting together does not hit its backends together.
    periodic_fuzzy_delay: Duration = Duration::from_secs(60), mutable = false, secret = false,
        range = "0s" ..= "1h";
    /// Longest sleep of the periodic task timer, whatever the spacing of the tasks.
    periodic_interval_max: Duration = Duration::from_secs(60), mutable = true, secret = false,
        range = "10ms" ..= "1day";
    /// When set, SIGUSR2 writes the state report to a new timestamped file in this directory instead of stderr.
    report_dir: Option<PathBuf> = None, mutable = true, secret = false;
    /// PEM certificate chain of this node; with tls_key_file, its gRPC and HTTP listeners speak TLS only and it advertises https:// endpoints. Re-read when the file changes.
    tls_cert_file: Option<PathBuf> = None, mutable = false, secret = false;
    /// PEM private key of tls_cert_file. Re-read when the file changes.
    tls_key_file: Option<PathBuf> = None, mutable = false, secret = false;
    /// PEM CA certificates; when set, clients of this node must show a certificate signed by one of them.
    tls_client_ca_file: Option<PathBuf> = None, mutable = false, secret = false;
    /// PEM CA certificates that RPC clients verify https:// nodes against.
    tls_ca_file: Option<PathBuf> = None, mutable = false, secret = false;
    /// PEM certificate chain RPC clients show to nodes that require one (with tls_client_key_file).
    tls_client_cert_file: Option<PathBuf> = None, mutable = false, secret = false;
    /// PEM private key of tls_client_cert_file.
    tls_client_key_file: Option<PathBuf> = None, mutable = false, secret = false;
    /// PEM CA certificate for TLS to etcd (an https:// registry URL).
    registry_ca_file: Option<PathBuf> = None, mutable = false, secret = false;
    /// PEM client certificate for mutual TLS to etcd (with registry_key_file).
    registry_cert_file: Option<PathBuf> = None, mutable = false, secret = false;
    /// PEM client key for mutual TLS to etcd.
    registry_key_file: Option<PathBuf> = None, mutable = false, secret = false;
    /// etcd user name.
    registry_user: Option<String> = None, mutable = false, secret = false;
    /// etcd password; prefer registry_password_file, which keeps it out of the environment.
    registry_password: Option<String> = None, mutable = false, secret = true;
    /// File holding the etcd password (one line); read again whenever the connection to etcd is made anew.
    registry_password_file: Option<PathBuf> = None, mutable = false, secret = false;
    /// Bound on connecting to the registry and on each registry request.
    registry_timeout: Duration = crate::servicegroup::DEFAULT_REGISTRY_TIMEOUT, mutable = false, secret = false,
        range = "10ms" ..= "1h";
    /// Cap on the delay between registry retries (heartbeats, watch reconnects).
    registry_backoff_max: Duration = crate::servicegroup::DEFAULT_BACKOFF_MAX, mutable = false,
        secret = false, range = "10ms" ..= "1m";
}

/// The options that reach the registry, and those of an RPC client's TLS:
/// all an operator tool reads ([`Config::load_registry`]).
pub const REGISTRY_OPTIONS: &[&str] = &[
    "registry",
    "registry_ca_file",
    "registry_cert_file",
    "registry_key_file",
    "registry_user",
    "registry_password",
    "registry_password_file",
    "registry_timeout",
    "tls_ca_file",
    "tls_client_cert_file",
    "tls_client_key_file",
    "registry_backoff_max",
];

fn default_host() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// The embedded file registry, shared by every node of this machine.
fn default_registry() -> RegistryUrl {
    RegistryUrl::File {
        path: std::env::temp_dir().join("svckit-registry"),
    }
}

impl Config {
    /// This config with one option set from its text form, as a flag
    /// would set it, and validated again as a whole: the only way to
    /// change a loaded config, so that every value in force passed the
    /// same checks.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let config = svckit::Config::default().with("drain_delay", "250ms")?;
    /// assert_eq!(*config.drain_delay(), Duration::from_millis(250));
    /// assert!(svckit::Config::default().with("workers", "0").is_err());
    /// # Ok::<(), svckit::Error>(())
    /// ```
    pub fn with(mut self, name: &str, value: &str) -> Result<Self> {
        self.set(name, value, Source::Program)?;
        self.validate()?;
        Ok(self)
    }

    /// The text form of one option, with secrets shown as `***`.
    pub fn get(&self, name: &str) -> Option<String> {
        let value = self.raw(name)?;
        let secret = OPTIONS.iter().any(|o| o.name == name && o.secret);
        Some(if secret && !value.is_empty() {
            "***".into()
        } else {
            value
        })
    }

    /// Where an option's value came from.
    pub fn source(&self, name: &str) -> Source {
        self.sources.get(name).cloned().unwrap_or(Source::Default)
    }

    /// Every option's name, text value (secrets hidden) and source.
    pub fn entries(&self) -> Vec<(&'static str, String, Source)> {
        OPTIONS
            .iter()
            .map(|o| {
                (
                    o.name,
                    self.get(o.name).unwrap_or_default(),
                    self.source(o.name),
                )
            })
            .collect()
    }

    /// Takes over from `new` the options a SIGHUP may change in place, and
    /// returns the names of those that changed and of those that differ but
    /// need a restart (left at their running values).
    pub fn apply_mutable(
        &mut self,
        new: &Config,
    ) -> Result<(Vec<&'static str>, Vec<&'static str>)> {
        let (mut applied, mut ignored) = (Vec::new(), Vec::new());
        for option in OPTIONS {
            let value = new.raw(option.name).unwrap_or_default();
            if self.raw(option.name).as_deref() == Some(value.as_str()) {
                continue;
            }
            if option.mutable {
                self.set(option.name, &value, new.source(option.name))?;
                applied.push(option.name);
            } else {
                ignored.push(option.name);
            }
        }
        Ok((applied, ignored))
    }

    /// Connection options for the registry driver.
    pub fn registry_options(&self) -> RegistryOptions {
        RegistryOptions {
            ca_file: self.registry_ca_file.clone(),
            cert_file: self.registry_cert_file.clone(),
            key_file: self.registry_key_file.clone(),
            user: self.registry_user.clone(),
            password: self.registry_password.clone(),
            password_file: self.registry_password_file.clone(),
            timeout: self.registry_timeout,
            backoff_max: self.registry_backoff_max,
            ..RegistryOptions::default()
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = f.debug_struct("Config");
        for (name, value, _) in self.entries() {
            out.field(name, &value);
        }
        out.finish()
    }
}

/// `report_interval` → `SVCKIT_REPORT_INTERVAL`.
pub fn env_var_name(option: &str) -> String {
    format!("SVCKIT_{}", option.to_ascii_uppercase())
}

/// This program's file name (argv\[0\] without its directory): the prefix
/// of its error lines, its report file names, and a node's default binary.
pub(crate) fn program_name() -> String {
    std::env::args()
        .next()
        .as_deref()
        .map(std::path::Path::new)
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "svckit".into())
}

#[cfg(test)]
mod tests;
