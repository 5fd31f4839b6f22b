//! `svckit`, the operator CLI: membership listing and admin state (nova's
//! `service-list` and `compute service set`), calls to a topic's base API,
//! a node's state report, the live membership dashboard, and an xDS
//! control plane. A thin binary
//! over the library: parse, connect, print, and map the error to its exit
//! code.

mod call;
mod dashboard;
mod members;
mod report;
mod xds;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use svckit::config::{CommonArgs, Config};
use svckit::rpc::{Rpc, RpcOptions, Target};
use svckit::servicegroup::{self, AdminChange, Registry};
use svckit::tls::ClientTls;
use svckit::Result;

/// Operate a svckit fleet: list and watch members, change their admin state.
#[derive(Debug, Parser)]
#[command(name = "svckit", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Service records and their liveness.
    #[command(subcommand)]
    Members(MembersCommand),
    /// Change a service record's admin state, or delete it.
    #[command(subcommand)]
    Service(ServiceCommand),
    /// Call the base API of the nodes of a topic.
    Call {
        #[command(flatten)]
        registry: RegistryArgs,
        /// Topic to call.
        #[arg(long)]
        topic: String,
        /// Only this host.
        #[arg(long, conflicts_with = "fanout")]
        server: Option<String>,
        /// Every up node of the topic.
        #[arg(long)]
        fanout: bool,
        #[command(subcommand)]
        method: CallMethod,
    },
    /// One node's state report (Base/Report), as JSON.
    Report {
        #[command(flatten)]
        target: TargetArgs,
    },
    /// A live web page of the service group, with JSON beside it
    /// (`/api/members`, `/api/events`).
    Dashboard {
        #[command(flatten)]
        registry: RegistryArgs,
        /// Address to serve on; port 0 picks a free one.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Allow admin actions from the page (disable, enable, force-down,
        /// delete a down record) to holders of a token of --admin-token-file.
        #[arg(long, requires = "admin_token_file")]
        admin: bool,
        /// File of admin tokens: one per line, or `name:token` to name its
        /// holder in the log. Sent by the page as `Authorization: Bearer`.
        #[arg(long, value_name = "FILE", requires = "admin")]
        admin_token_file: Option<PathBuf>,
    },
    /// An xDS control plane (ADS, state of the world) for gRPC clients in
    /// any language: `xds:///TOPIC` reaches the topic's up, enabled nodes.
    Xds {
        #[command(flatten)]
        registry: RegistryArgs,
        /// Address to serve on; port 0 picks a free one.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:18000")]
        listen: std::net::SocketAddr,
        /// TOML file of the topics' retry policies and timeouts (see
        /// docs/xds.md); without it routes carry neither.
        #[arg(long, value_name = "FILE")]
        policies: Option<PathBuf>,
        /// How often clients send their load reports (LRS), shown per topic
        /// and client on /metrics.
        #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_interval)]
        load_report_interval: Duration,
        /// The certificate provider instance of the clients' bootstraps that
        /// holds the CA of nodes serving TLS (docs/xds.md).
        #[arg(long, value_name = "NAME", default_value = svckit::xds::DEFAULT_TLS_PROVIDER)]
        tls_provider: String,
        /// Clients show their certificate, from the same instance, to nodes
        /// serving TLS (for nodes that require one).
        #[arg(long)]
        tls_client_identity: bool,
    },
}

/// A load report interval: a duration (`10s`, `500ms`) of at least 1 s,
/// gRPC clients' shortest.
fn parse_interval(text: &str) -> std::result::Result<Duration, String> {
    use svckit::config::OptionValue;
    let interval = Duration::parse_value(text)?;
    if interval < Duration::from_secs(1) {
        return Err(format!("{interval:?} is less than 1s"));
    }
    Ok(interval)
}

#[derive(Debug, Subcommand)]
enum CallMethod {
    /// Base/Ping: the node's identity, `arg` echoed back.
    Ping {
        /// Text echoed back.
        #[arg(long, default_value = "")]
        arg: String,
    },
}

#[derive(Debug, Subcommand)]
enum MembersCommand {
    /// One row per service record (a dead node shows as `down`).
    List {
        #[command(flatten)]
        registry: RegistryArgs,
        /// Only this topic.
        #[arg(long)]
        topic: Option<String>,
        /// A JSON array instead of a table.
        #[arg(long, conflicts_with = "wide")]
        json: bool,
        /// Every column, however wide (the default fits 100 columns:
        /// host, topic, state, since, version, endpoint).
        #[arg(long)]
        wide: bool,
    },
    /// JSON lines `{"event":"join"|"leave"|"update","member":{…}}` as they happen.
    Watch {
        #[command(flatten)]
        registry: RegistryArgs,
        /// Only this topic.
        #[arg(long)]
        topic: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum ServiceCommand {
    /// Stop routing new calls to a node; it stays up.
    Disable {
        #[command(flatten)]
        target: TargetArgs,
        /// Why, shown in `members list`.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Route calls to a node again.
    Enable {
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Mark a node down whatever its heartbeats say (`--clear` undoes it).
    ForceDown {
        #[command(flatten)]
        target: TargetArgs,
        /// Clear the forced-down mark.
        #[arg(long)]
        clear: bool,
    },
    /// Delete a service record (a dead node's row disappears from lists).
    /// A node that is up is refused: stop it first.
    Delete {
        #[command(flatten)]
        target: TargetArgs,
        /// Delete even an up node's record; the live node writes it again
        /// within about 2 s, so this is for a node about to stop.
        #[arg(long)]
        force: bool,
    },
}

/// Which registry to talk to.
#[derive(Debug, Args)]
struct RegistryArgs {
    /// Registry URL: etcd://h:2379,h2:2379?prefix=/p, file:///dir or memory:// [env: SVCKIT_REGISTRY]
    #[arg(long, value_name = "URL")]
    registry: Option<String>,
    /// Config file for registry TLS and credentials [env: SVCKIT_CONFIG]
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct TargetArgs {
    #[command(flatten)]
    registry: RegistryArgs,
    #[arg(long)]
    topic: String,
    #[arg(long)]
    host: String,
}

impl RegistryArgs {
    /// Only the registry options are read (flags, `SVCKIT_REGISTRY*`, the
    /// file): an operator's shell set up for a node must not break the CLI.
    async fn connect(&self) -> Result<Registry> {
        let config = self.config()?;
        servicegroup::connect(config.registry(), &config.registry_options()).await
    }

    /// An RPC client on the registry, with the client TLS options
    /// (`tls_ca_file`, …) for nodes that serve TLS.
    async fn rpc(&self) -> Result<Rpc> {
        let config = self.config()?;
        let registry = servicegroup::connect(config.registry(), &config.registry_options()).await?;
        self.rpc_on(registry).await
    }

    /// The same on a registry already connected.
    async fn rpc_on(&self, registry: Registry) -> Result<Rpc> {
        let config = self.config()?;
        let options = {
            let mut options = RpcOptions::default();
            options.tls = ClientTls::from_config(&config)?;
            options
        };
        Rpc::with_options(registry, options).await
    }

    fn config(&self) -> Result<Config> {
        let args = {
            let mut options = CommonArgs::default();
            options.config = self.config.clone();
            options.registry = self.registry.clone();
            options
        };
        Config::load_registry(&args)
    }
}

/// Binds a server's listener and says where on stdout, first:
/// `listening on http://ADDR{path}` (port 0 picks a free one).
async fn bind(listen: std::net::SocketAddr, path: &str) -> Result<tokio::net::TcpListener> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| svckit::Error::bind(listen, source))?;
    let addr = listener.local_addr()?;
    members::write_stdout(format!("listening on http://{addr}{path}\n").as_bytes())?;
    Ok(listener)
}

/// Resolves on the first SIGINT or SIGTERM: a server's stop.
fn stop_signal() -> Result<impl std::future::Future<Output = ()>> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    })
}

fn main() -> ExitCode {
    let cli: Cli = svckit::config::parse_args();
    // Warnings (an invalid record skipped, a watch resyncing) go to stderr;
    // stdout stays the command's output. RUST_LOG changes the level. The
    // dashboard is a server: its start and every admin action are logged.
    let level = if matches!(cli.command, Command::Dashboard { .. } | Command::Xds { .. }) {
        "info"
    } else {
        "warn"
    };
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .try_init();
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(svckit::Error::from)
        .and_then(|rt| rt.block_on(run(cli)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("svckit: error: {e}");
            ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(1))
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Members(MembersCommand::List {
            registry,
            topic,
            json,
            wide,
        }) => members::list(&registry.connect().await?, topic.as_deref(), json, wide).await,
        Command::Members(MembersCommand::Watch { registry, topic }) => {
            members::watch(&registry.connect().await?, topic.as_deref()).await
        }
        Command::Call {
            registry,
            topic,
            server,
            fanout,
            method: CallMethod::Ping { arg },
        } => {
            let mut target = Target::topic(topic);
            target.server = server;
            // Operators call a disabled node by name to debug it.
            target.include_disabled = true;
            call::ping(registry.rpc().await?, target, fanout, arg).await
        }
        Command::Dashboard {
            registry,
            listen,
            admin: _,
            admin_token_file,
        } => {
            let connected = registry.connect().await?;
            let rpc = registry.rpc_on(connected.clone()).await?;
            dashboard::serve(connected, rpc, listen, admin_token_file.as_deref()).await
        }
        Command::Xds {
            registry,
            listen,
            policies,
            load_report_interval,
            tls_provider,
            tls_client_identity,
        } => {
            let mut options = svckit::xds::XdsOptions::default();
            // A mistake in the file is refused before anything connects.
            if let Some(path) = policies {
                options.policies = svckit::xds::Policies::from_file(&path)?;
            }
            options.load_report_interval = load_report_interval;
            options.tls.provider = tls_provider;
            options.tls.client_identity = tls_client_identity;
            xds::serve(registry.connect().await?, listen, options).await
        }
        Command::Report { target } => {
            let rpc = target.registry.rpc().await?;
            report::report(rpc, target.topic, target.host).await
        }
        Command::Service(cmd) => {
            let (target, change) = match cmd {
                ServiceCommand::Disable { target, reason } => (
                    target,
                    members::Action::Admin(AdminChange::Disable { reason }),
                ),
                ServiceCommand::Enable { target } => {
                    (target, members::Action::Admin(AdminChange::Enable))
                }
                ServiceCommand::ForceDown { target, clear } => (
                    target,
                    members::Action::Admin(AdminChange::ForceDown(!clear)),
                ),
                ServiceCommand::Delete { target, force } => {
                    (target, members::Action::Delete { force })
                }
            };
            let registry = target.registry.connect().await?;
            members::admin(&registry, &target.topic, &target.host, change).await
        }
    }
}
