//! The common flags every kit binary takes (flatten them into your own clap
//! parser with `#[command(flatten)]`).

use std::path::PathBuf;

use clap::Args;

/// Flags shared by every svckit binary. Each is also read from
/// `SVCKIT_<NAME>` (see [`Config::load`](super::Config::load)); flags win.
///
/// Values are kept as text here and parsed by the config layer, so a bad
/// value gets the same message and exit code from a flag, a variable or the
/// file: a negative number after a flag is such a value (`--service-down-time
/// -5` is refused with exit 78, naming the option), not a flag of its own.
#[derive(Debug, Clone, Default, Args)]
#[non_exhaustive]
pub struct CommonArgs {
    /// TOML config file [env: SVCKIT_CONFIG]
    #[arg(long, allow_negative_numbers = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Host name this node registers as [env: SVCKIT_HOST]
    #[arg(long, allow_negative_numbers = true)]
    pub host: Option<String>,
    /// Topic this node serves [env: SVCKIT_TOPIC]
    #[arg(long, allow_negative_numbers = true)]
    pub topic: Option<String>,
    /// Registry URL: etcd://h:2379,h2:2379?prefix=/p, file:///dir or memory:// [env: SVCKIT_REGISTRY]
    #[arg(long, allow_negative_numbers = true, value_name = "URL")]
    pub registry: Option<String>,
    /// gRPC listen address (port 0: ephemeral) [env: SVCKIT_RPC_LISTEN]
    #[arg(long, allow_negative_numbers = true, value_name = "ADDR")]
    pub rpc_listen: Option<String>,
    /// HTTP listen address (port 0: ephemeral) [env: SVCKIT_HTTP_LISTEN]
    #[arg(long, allow_negative_numbers = true, value_name = "ADDR")]
    pub http_listen: Option<String>,
    /// Worker processes [env: SVCKIT_WORKERS]
    #[arg(long, allow_negative_numbers = true, value_name = "N")]
    pub workers: Option<String>,
    /// Heartbeat interval, seconds or 500ms [env: SVCKIT_REPORT_INTERVAL]
    #[arg(long, allow_negative_numbers = true, value_name = "DURATION")]
    pub report_interval: Option<String>,
    /// Time without heartbeat before a node is down [env: SVCKIT_SERVICE_DOWN_TIME]
    #[arg(long, allow_negative_numbers = true, value_name = "DURATION")]
    pub service_down_time: Option<String>,
    /// Bound on a graceful stop; 0 waits forever [env: SVCKIT_GRACEFUL_SHUTDOWN_TIMEOUT]
    #[arg(long, allow_negative_numbers = true, value_name = "DURATION")]
    pub graceful_shutdown_timeout: Option<String>,
    /// Log filter, e.g. info or svckit=debug [env: SVCKIT_LOG_LEVEL]
    #[arg(long, allow_negative_numbers = true, value_name = "FILTER")]
    pub log_level: Option<String>,
    /// PEM certificate chain; serve gRPC and HTTP over TLS only [env: SVCKIT_TLS_CERT_FILE]
    #[arg(long, allow_negative_numbers = true, value_name = "FILE")]
    pub tls_cert_file: Option<String>,
    /// PEM private key of --tls-cert-file [env: SVCKIT_TLS_KEY_FILE]
    #[arg(long, allow_negative_numbers = true, value_name = "FILE")]
    pub tls_key_file: Option<String>,
    /// PEM CA; require client certificates it signed [env: SVCKIT_TLS_CLIENT_CA_FILE]
    #[arg(long, allow_negative_numbers = true, value_name = "FILE")]
    pub tls_client_ca_file: Option<String>,
    /// PEM CA that RPC clients verify https:// nodes against [env: SVCKIT_TLS_CA_FILE]
    #[arg(long, allow_negative_numbers = true, value_name = "FILE")]
    pub tls_ca_file: Option<String>,
    /// PEM certificate RPC clients show to nodes [env: SVCKIT_TLS_CLIENT_CERT_FILE]
    #[arg(long, allow_negative_numbers = true, value_name = "FILE")]
    pub tls_client_cert_file: Option<String>,
    /// PEM private key of --tls-client-cert-file [env: SVCKIT_TLS_CLIENT_KEY_FILE]
    #[arg(long, allow_negative_numbers = true, value_name = "FILE")]
    pub tls_client_key_file: Option<String>,
    /// PEM CA for TLS to etcd [env: SVCKIT_REGISTRY_CA_FILE]
    #[arg(long, allow_negative_numbers = true, value_name = "FILE")]
    pub registry_ca_file: Option<String>,
    /// PEM client certificate for TLS to etcd [env: SVCKIT_REGISTRY_CERT_FILE]
    #[arg(long, allow_negative_numbers = true, value_name = "FILE")]
    pub registry_cert_file: Option<String>,
    /// PEM client key for TLS to etcd [env: SVCKIT_REGISTRY_KEY_FILE]
    #[arg(long, allow_negative_numbers = true, value_name = "FILE")]
    pub registry_key_file: Option<String>,
    /// etcd user name [env: SVCKIT_REGISTRY_USER]
    #[arg(long, allow_negative_numbers = true, value_name = "USER")]
    pub registry_user: Option<String>,
    /// File holding the etcd password [env: SVCKIT_REGISTRY_PASSWORD_FILE]
    #[arg(long, allow_negative_numbers = true, value_name = "FILE")]
    pub registry_password_file: Option<String>,
}

impl CommonArgs {
    /// The options given as flags, as (option name, text value).
    pub fn values(&self) -> Vec<(&'static str, &str)> {
        [
            ("host", &self.host),
            ("topic", &self.topic),
            ("registry", &self.registry),
            ("rpc_listen", &self.rpc_listen),
            ("http_listen", &self.http_listen),
            ("workers", &self.workers),
            ("report_interval", &self.report_interval),
            ("service_down_time", &self.service_down_time),
            ("graceful_shutdown_timeout", &self.graceful_shutdown_timeout),
            ("log_level", &self.log_level),
            ("tls_cert_file", &self.tls_cert_file),
            ("tls_key_file", &self.tls_key_file),
            ("tls_client_ca_file", &self.tls_client_ca_file),
            ("tls_ca_file", &self.tls_ca_file),
            ("tls_client_cert_file", &self.tls_client_cert_file),
            ("tls_client_key_file", &self.tls_client_key_file),
            ("registry_ca_file", &self.registry_ca_file),
            ("registry_cert_file", &self.registry_cert_file),
            ("registry_key_file", &self.registry_key_file),
            ("registry_user", &self.registry_user),
            ("registry_password_file", &self.registry_password_file),
        ]
        .into_iter()
        .filter_map(|(name, value)| value.as_deref().map(|v| (name, v)))
        .collect()
    }
}

/// Parses this process's arguments into `T`, as a kit binary does: `--help`
/// and `--version` print and exit 0; any other argument error prints one
/// line on stderr and exits 64 (EX_USAGE), as every usage error of the kit
/// does.
///
/// ```no_run
/// use clap::Parser;
///
/// #[derive(Parser)]
/// struct Args {
///     #[command(flatten)]
///     common: svckit::config::CommonArgs,
/// }
///
/// let args: Args = svckit::config::parse_args();
/// ```
pub fn parse_args<T: clap::Parser>() -> T {
    match T::try_parse() {
        Ok(args) => args,
        Err(e) => exit_on_usage_error(e),
    }
}

/// Prints a clap error as a kit binary does (see [`parse_args`]) and exits.
pub fn exit_on_usage_error(e: clap::Error) -> ! {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = e.print();
        let code = if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
            crate::error::exit::USAGE
        } else {
            crate::error::exit::OK
        };
        std::process::exit(code);
    }
    // clap's message spans lines (what is missing, indented below it) and
    // ends with the usage: keep the message, on one line.
    let rendered = e.render().to_string();
    let message: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty())
        .collect();
    let message = message.join(" ");
    let message = message.strip_prefix("error: ").unwrap_or(&message);
    eprintln!("{}: error: {message} (see --help)", super::program_name());
    std::process::exit(crate::error::exit::USAGE)
}
