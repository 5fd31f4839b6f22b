//! Parsing one option value from text, whatever layer it came from.
//!
//! Every layer (TOML file, `SVCKIT_*` environment, flags) hands values over as
//! text, so one parser per type gives one behaviour and one error message.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::servicegroup::RegistryUrl;

/// A type an option can have.
pub trait OptionValue: Sized {
    /// Parses the text form; the error says what was expected.
    fn parse_value(s: &str) -> Result<Self, String>;
    /// The text form, for reports and the config reference.
    fn show(&self) -> String;
}

impl OptionValue for String {
    fn parse_value(s: &str) -> Result<Self, String> {
        if s.trim().is_empty() {
            Err("expected a non-empty string".into())
        } else {
            Ok(s.to_string())
        }
    }
    fn show(&self) -> String {
        self.clone()
    }
}

impl OptionValue for bool {
    fn parse_value(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" => Ok(false),
            _ => Err(format!("expected true or false, got {s:?}")),
        }
    }
    fn show(&self) -> String {
        self.to_string()
    }
}

macro_rules! whole_number_option {
    ($($ty:ty),*) => {$(
        impl OptionValue for $ty {
            fn parse_value(s: &str) -> Result<Self, String> {
                s.trim()
                    .parse()
                    .map_err(|_| format!("expected a whole number, got {s:?}"))
            }
            fn show(&self) -> String {
                self.to_string()
            }
        }
    )*};
}

whole_number_option!(u32, usize);

/// Durations are seconds (`1.5`) or a unit form (`500ms`, `2m`).
impl OptionValue for Duration {
    fn parse_value(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Ok(secs) = s.parse::<f64>() {
            return Duration::try_from_secs_f64(secs)
                .map_err(|_| format!("expected a duration of zero or more seconds, got {s:?}"));
        }
        humantime::parse_duration(s)
            .map_err(|_| format!("expected seconds (1.5) or a duration (500ms, 2m), got {s:?}"))
    }
    fn show(&self) -> String {
        humantime::format_duration(*self).to_string()
    }
}

impl OptionValue for SocketAddr {
    fn parse_value(s: &str) -> Result<Self, String> {
        s.trim()
            .parse()
            .map_err(|_| format!("expected an address like 127.0.0.1:7000, got {s:?}"))
    }
    fn show(&self) -> String {
        self.to_string()
    }
}

/// Where the debug console listens (`backdoor_port`): a port, on
/// loopback, or an address that names its interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsoleAddr(pub SocketAddr);

impl ConsoleAddr {
    /// The address of a process: the port itself for a single process or
    /// a supervisor, the port + 1 + N for its worker N.
    pub fn for_slot(self, slot: Option<u32>) -> SocketAddr {
        let mut addr = self.0;
        let offset = slot.map_or(0, |n| {
            u16::try_from(n).unwrap_or(u16::MAX).saturating_add(1)
        });
        addr.set_port(addr.port().saturating_add(offset));
        addr
    }
}

impl OptionValue for ConsoleAddr {
    fn parse_value(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Ok(port) = s.parse::<u16>() {
            return Ok(ConsoleAddr(SocketAddr::from(([127, 0, 0, 1], port))));
        }
        s.parse().map(ConsoleAddr).map_err(|_| {
            format!("expected a port (on loopback) or an address like 0.0.0.0:6669, got {s:?}")
        })
    }
    fn show(&self) -> String {
        self.0.to_string()
    }
}

impl OptionValue for RegistryUrl {
    fn parse_value(s: &str) -> Result<Self, String> {
        RegistryUrl::parse(s.trim()).map_err(|e| e.to_string())
    }
    fn show(&self) -> String {
        self.to_string()
    }
}

impl OptionValue for PathBuf {
    fn parse_value(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            Err("expected a path".into())
        } else {
            Ok(PathBuf::from(s))
        }
    }
    fn show(&self) -> String {
        self.display().to_string()
    }
}

/// An empty value unsets an optional option.
impl<T: OptionValue> OptionValue for Option<T> {
    fn parse_value(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            Ok(None)
        } else {
            T::parse_value(s).map(Some)
        }
    }
    fn show(&self) -> String {
        self.as_ref().map(T::show).unwrap_or_default()
    }
}

/// A worker count: a whole number, or `auto` for one per CPU (oslo's
/// `get_worker_count()`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Workers(pub u32);

impl OptionValue for Workers {
    fn parse_value(s: &str) -> Result<Self, String> {
        if s.trim() == "auto" {
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            return Ok(Workers(u32::try_from(cpus).unwrap_or(u32::MAX)));
        }
        u32::parse_value(s)
            .map(Workers)
            .map_err(|_| format!("expected a whole number or auto, got {s:?}"))
    }
    fn show(&self) -> String {
        self.0.to_string()
    }
}

/// What SIGHUP does to a node with worker processes (oslo.service's
/// `restart_method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartMethod {
    /// Re-read the config and replace the workers one at a time, each new
    /// one serving before an old one stops.
    Reload,
    /// Re-read the config and apply the mutable options in place, in the
    /// supervisor and in every worker.
    Mutate,
}

impl OptionValue for RestartMethod {
    fn parse_value(s: &str) -> Result<Self, String> {
        match s.trim() {
            "reload" => Ok(Self::Reload),
            "mutate" => Ok(Self::Mutate),
            other => Err(format!("expected reload or mutate, got {other:?}")),
        }
    }
    fn show(&self) -> String {
        match self {
            Self::Reload => "reload".into(),
            Self::Mutate => "mutate".into(),
        }
    }
}

/// How a node admits gRPC calls and HTTP requests (`rpc_admission`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdmissionMode {
    /// While the CPUs are busy, no more in flight than the node's best
    /// throughput times its lowest latency; under the pools' ceilings.
    Adaptive,
    /// The pools alone (`rpc_pool_size`, `http_pool_size`).
    Static,
}

impl OptionValue for AdmissionMode {
    fn parse_value(s: &str) -> Result<Self, String> {
        match s.trim() {
            "adaptive" => Ok(Self::Adaptive),
            "static" => Ok(Self::Static),
            other => Err(format!("expected adaptive or static, got {other:?}")),
        }
    }
    fn show(&self) -> String {
        match self {
            Self::Adaptive => "adaptive".into(),
            Self::Static => "static".into(),
        }
    }
}

/// A `tracing` filter (`info`, `svckit=debug,warn`), checked when set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFilter(pub String);

impl OptionValue for LogFilter {
    fn parse_value(s: &str) -> Result<Self, String> {
        let s = s.trim();
        tracing_subscriber::EnvFilter::builder()
            .parse(s)
            .map(|_| LogFilter(s.to_string()))
            .map_err(|e| format!("expected a log level or filter (info, svckit=debug): {e}"))
    }
    fn show(&self) -> String {
        self.0.clone()
    }
}

/// When a hedged call sends one more copy to another node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HedgeDelay {
    /// After this long without an answer.
    Fixed(Duration),
    /// After the observed 95th percentile latency of the target's calls, so
    /// that about one call in twenty is hedged (within the budget). Until
    /// the target has answered enough calls to know it, nothing is hedged.
    Auto,
}

impl FromStr for HedgeDelay {
    type Err = String;

    /// `auto`, seconds (`0.01`) or a duration (`10ms`).
    fn from_str(s: &str) -> Result<Self, String> {
        if s.trim().eq_ignore_ascii_case("auto") {
            return Ok(HedgeDelay::Auto);
        }
        Duration::parse_value(s)
            .map(HedgeDelay::Fixed)
            .map_err(|e| format!("{e}, or `auto`"))
    }
}

impl fmt::Display for HedgeDelay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HedgeDelay::Fixed(d) => write!(f, "{}", d.show()),
            HedgeDelay::Auto => write!(f, "auto"),
        }
    }
}

impl OptionValue for HedgeDelay {
    fn parse_value(s: &str) -> Result<Self, String> {
        s.parse()
    }
    fn show(&self) -> String {
        self.to_string()
    }
}

/// Where spans are exported over OTLP/gRPC: an `http://` or `https://`
/// URL with a host and a port (`http://127.0.0.1:4317`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpEndpoint(pub String);

impl OptionValue for OtlpEndpoint {
    fn parse_value(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let expected =
            || format!("expected an OTLP/gRPC URL like http://127.0.0.1:4317, got {s:?}");
        let uri: http::Uri = s.parse().map_err(|_| expected())?;
        let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
        if !scheme_ok || uri.host().is_none_or(str::is_empty) || uri.port_u16().is_none() {
            return Err(expected());
        }
        Ok(OtlpEndpoint(s.to_string()))
    }
    fn show(&self) -> String {
        self.0.clone()
    }
}

/// A share of traces, from 0 (none) to 1 (all).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleRatio(pub f64);

impl OptionValue for SampleRatio {
    fn parse_value(s: &str) -> Result<Self, String> {
        match s.trim().parse::<f64>() {
            Ok(r) if (0.0..=1.0).contains(&r) => Ok(SampleRatio(r)),
            _ => Err(format!("expected a ratio from 0 to 1, got {s:?}")),
        }
    }
    fn show(&self) -> String {
        self.0.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn otlp_endpoints_and_ratios_are_checked() {
        assert!(OtlpEndpoint::parse_value("http://127.0.0.1:4317").is_ok());
        for bad in [
            "127.0.0.1:4317",
            "ftp://h:1",
            "http://collector",
            "http://:4317",
        ] {
            assert!(OtlpEndpoint::parse_value(bad).is_err(), "{bad}");
        }
        assert_eq!(SampleRatio::parse_value("0.25"), Ok(SampleRatio(0.25)));
        for bad in ["-0.1", "1.5", "half", "NaN"] {
            assert!(SampleRatio::parse_value(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_take_seconds_or_units() {
        assert_eq!(
            Duration::parse_value("1.5"),
            Ok(Duration::from_millis(1500))
        );
        assert_eq!(
            Duration::parse_value("250ms"),
            Ok(Duration::from_millis(250))
        );
        assert!(Duration::parse_value("-1").is_err());
        assert!(Duration::parse_value("soon").is_err());
    }

    #[test]
    fn bools_and_filters_are_checked() {
        assert_eq!(bool::parse_value("off"), Ok(false));
        assert!(bool::parse_value("maybe").is_err());
        assert!(LogFilter::parse_value("svckit=debug,info").is_ok());
        assert!(LogFilter::parse_value("svckit=loud").is_err());
    }
}

#[cfg(test)]
mod console_tests {
    use super::*;

    #[test]
    fn a_console_port_is_on_loopback_and_workers_follow_the_supervisor() {
        let port = ConsoleAddr::parse_value("6669").expect("a port");
        assert_eq!(port.for_slot(None), "127.0.0.1:6669".parse().unwrap());
        assert_eq!(port.for_slot(Some(0)), "127.0.0.1:6670".parse().unwrap());
        assert_eq!(port.for_slot(Some(2)), "127.0.0.1:6672".parse().unwrap());
        let any = ConsoleAddr::parse_value("0.0.0.0:7000").expect("an address");
        assert_eq!(any.for_slot(None), "0.0.0.0:7000".parse().unwrap());
        assert!(ConsoleAddr::parse_value("later").is_err());
    }
}
