//! Logging setup: `tracing` to stderr, never blocking the threads that log
//! ([`sink`]), with a filter SIGHUP can change; and the Prometheus metrics
//! of a node, served at `/metrics`.

pub(crate) mod metrics;
pub(crate) mod otel;
pub mod sink;
pub mod trace;

use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

use crate::config::{Config, Source};
use crate::error::{Error, Result};

/// The handle that changes the log filter of a running process.
#[derive(Clone)]
pub struct Telemetry {
    filter: Option<reload::Handle<EnvFilter, Registry>>,
}

impl Telemetry {
    /// Installs the global subscriber. When `log_level` was not set anywhere
    /// and `RUST_LOG` is, `RUST_LOG` is the filter. Installing twice (tests)
    /// keeps the first subscriber, and the returned handle changes nothing.
    pub fn init(config: &Config) -> Self {
        Self::init_process(config, None)
    }

    /// [`Telemetry::init`] for worker `worker` of a supervisor (`None`
    /// for a process of its own), which places its debug console.
    pub(crate) fn init_process(config: &Config, worker: Option<u32>) -> Self {
        // Spans are each node's (its `Metrics`' exporter), not the
        // process's.
        Self::init_logs(config, worker)
    }

    fn init_logs(config: &Config, worker: Option<u32>) -> Self {
        let (filter, handle) = reload::Layer::new(filter_for(config));
        #[cfg(all(feature = "console", tokio_unstable))]
        if let Some(addr) = config.backdoor_port {
            // The console sees every task, whatever the log filter: the
            // filter applies to the log lines alone.
            use tracing_subscriber::Layer as _;
            let addr = addr.for_slot(worker);
            let console = console_subscriber::ConsoleLayer::builder()
                .server_addr(addr)
                .spawn();
            let installed = tracing_subscriber::registry()
                .with(log_lines().with_filter(filter))
                .with(console)
                .try_init()
                .is_ok();
            tracing::info!(%addr, "debug console: tokio-console http://{addr}");
            return Telemetry {
                filter: installed.then_some(handle),
            };
        }
        let _ = worker;
        let installed = tracing_subscriber::registry()
            .with(filter)
            .with(log_lines())
            .try_init()
            .is_ok();
        Telemetry {
            filter: installed.then_some(handle),
        }
    }

    /// Applies `config`'s log filter in place.
    pub fn apply(&self, config: &Config) -> Result<()> {
        if let Some(handle) = &self.filter {
            handle
                .reload(filter_for(config))
                .map_err(|e| Error::config(format!("cannot change the log filter: {e}")))?;
        }
        Ok(())
    }
}

/// The layer that writes log lines to stderr.
fn log_lines<S>() -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    tracing_subscriber::fmt::layer()
        .with_writer(sink::stderr())
        .with_ansi(std::io::stderr().is_terminal())
}

/// Refuses `backdoor_port` in a build without the console: an option
/// that would do nothing.
pub(crate) fn check_console(config: &Config) -> Result<()> {
    if config.backdoor_port.is_some() && !cfg!(all(feature = "console", tokio_unstable)) {
        return Err(Error::config(
            "backdoor_port needs a build with the console: cargo build --features console, with RUSTFLAGS=\"--cfg tokio_unstable\"",
        ));
    }
    Ok(())
}

fn filter_for(config: &Config) -> EnvFilter {
    let directives = match (config.source("log_level"), std::env::var("RUST_LOG")) {
        (Source::Default, Ok(env)) if !env.is_empty() => env,
        _ => config.log_level.0.clone(),
    };
    // The value was checked when the config was loaded; RUST_LOG was not.
    EnvFilter::builder()
        .parse(&directives)
        .unwrap_or_else(|_| EnvFilter::new("info"))
}
