//! Logging setup: `tracing` to stderr, never blocking the threads that log
//! ([`sink`]), with a filter SIGHUP can change; and the Prometheus metrics
//! of a node, served at `/metrics`.

pub(crate) mod metrics;
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
        let (layer, handle) = reload::Layer::new(filter_for(config));
        let installed = tracing_subscriber::registry()
            .with(layer)
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(sink::stderr())
                    .with_ansi(std::io::stderr().is_terminal()),
            )
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
