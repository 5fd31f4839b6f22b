//! Registry URLs: `etcd://h1:2379,h2:2379?prefix=/svckit` (`https://…` for
//! etcd over TLS), `file:///path`, `memory://[name]`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::error::{Error, Result};

/// The default etcd key prefix.
pub const DEFAULT_PREFIX: &str = "/svckit";

/// A parsed registry URL: which driver, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryUrl {
    /// etcd cluster members (`host:port` each) and the key prefix.
    Etcd {
        /// `host:port` of each cluster member given.
        endpoints: Vec<String>,
        /// Key prefix of this deployment, without a trailing `/`.
        prefix: String,
        /// TLS to etcd: the URL was `https://…`.
        tls: bool,
    },
    /// A directory on this machine.
    File {
        /// The registry directory (absolute).
        path: PathBuf,
    },
    /// One process's memory; `name` lets tests keep registries apart.
    Memory {
        /// Registries of one name in one process are one group.
        name: String,
    },
}

impl RegistryUrl {
    /// Parses a registry URL; a malformed one is a usage error (exit 64).
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |why: &str| {
            Error::usage(format!(
                "invalid registry URL {s:?}: {why} (expected etcd://host:port[,host:port…][?prefix=/p], https://… for etcd over TLS, file:///path or memory://)"
            ))
        };
        let (scheme, rest) = s.split_once("://").ok_or_else(|| bad("no scheme"))?;
        match scheme {
            "etcd" | "https" => {
                let (hosts, query) = match rest.split_once('?') {
                    Some((h, q)) => (h, Some(q)),
                    None => (rest, None),
                };
                let hosts = hosts.trim_end_matches('/');
                if let Some((_, path)) = hosts.split_once('/') {
                    return Err(bad(&format!(
                        "unexpected path {path:?} (the key prefix goes in ?prefix=/p)"
                    )));
                }
                let mut endpoints = Vec::new();
                for h in hosts.split(',') {
                    let (name, port) = h
                        .rsplit_once(':')
                        .ok_or_else(|| bad(&format!("endpoint {h:?} has no port")))?;
                    if name.is_empty() || name.contains('/') {
                        return Err(bad(&format!("endpoint {h:?} has no host")));
                    }
                    port.parse::<u16>()
                        .map_err(|_| bad(&format!("endpoint {h:?} has a bad port")))?;
                    endpoints.push(h.to_string());
                }
                let mut prefix = DEFAULT_PREFIX.to_string();
                for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
                    match pair.split_once('=') {
                        Some(("prefix", p)) if p.starts_with('/') && p.len() > 1 => {
                            prefix = p.trim_end_matches('/').to_string();
                        }
                        Some(("prefix", _)) => return Err(bad("prefix must start with '/'")),
                        _ => return Err(bad(&format!("unknown parameter {pair:?}"))),
                    }
                }
                Ok(RegistryUrl::Etcd {
                    endpoints,
                    prefix,
                    tls: scheme == "https",
                })
            }
            "file" => {
                if !rest.starts_with('/') || rest.len() < 2 {
                    return Err(bad("a file registry needs an absolute path (file:///path)"));
                }
                Ok(RegistryUrl::File {
                    path: PathBuf::from(rest),
                })
            }
            "memory" => Ok(RegistryUrl::Memory {
                name: rest.to_string(),
            }),
            other => Err(bad(&format!("unknown scheme {other:?}"))),
        }
    }
}

impl FromStr for RegistryUrl {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

impl fmt::Display for RegistryUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegistryUrl::Etcd {
                endpoints,
                prefix,
                tls,
            } => {
                let scheme = if *tls { "https" } else { "etcd" };
                write!(f, "{scheme}://{}", endpoints.join(","))?;
                if prefix != DEFAULT_PREFIX {
                    write!(f, "?prefix={prefix}")?;
                }
                Ok(())
            }
            RegistryUrl::File { path } => write!(f, "file://{}", path.display()),
            RegistryUrl::Memory { name } => write!(f, "memory://{name}"),
        }
    }
}

/// Connection options that do not fit in the URL (secrets, files, timing).
/// Its `Debug` shows the password as `***`.
#[derive(Clone)]
#[non_exhaustive]
pub struct RegistryOptions {
    /// PEM CA certificate to verify etcd servers (enables TLS).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate and key for mutual TLS.
    pub cert_file: Option<PathBuf>,
    /// PEM client key, with `cert_file`.
    pub key_file: Option<PathBuf>,
    /// etcd user/password authentication.
    pub user: Option<String>,
    /// The password of `user`.
    pub password: Option<String>,
    /// A file holding the password of `user`, read at each connection, so
    /// a rotated password needs no restart.
    pub password_file: Option<PathBuf>,
    /// Bound on connecting to the registry and on each request (and on
    /// waiting for the `file` registry's lock).
    pub timeout: Duration,
    /// Cap on the delay between retries of heartbeats, re-registrations,
    /// watch reconnections and reloads (exponential backoff, full jitter).
    pub backoff_max: Duration,
    /// Where the connection's watches show how stale they are (a node's
    /// metrics); `None`: figures of its own, shown nowhere.
    pub(crate) figures: Option<super::lag::MembershipFigures>,
}

impl fmt::Debug for RegistryOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryOptions")
            .field("ca_file", &self.ca_file)
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("password_file", &self.password_file)
            .field("timeout", &self.timeout)
            .field("backoff_max", &self.backoff_max)
            .finish()
    }
}

/// The default bound on connecting to a registry and on each request
/// (`registry_timeout`).
pub const DEFAULT_REGISTRY_TIMEOUT: Duration = Duration::from_secs(5);

impl Default for RegistryOptions {
    fn default() -> Self {
        Self {
            ca_file: None,
            cert_file: None,
            key_file: None,
            user: None,
            password: None,
            password_file: None,
            timeout: DEFAULT_REGISTRY_TIMEOUT,
            backoff_max: super::backoff::DEFAULT_BACKOFF_MAX,
            figures: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_scheme() {
        assert_eq!(
            RegistryUrl::parse("etcd://h1:2379,h2:2380?prefix=/x/").ok(),
            Some(RegistryUrl::Etcd {
                endpoints: vec!["h1:2379".into(), "h2:2380".into()],
                prefix: "/x".into(),
                tls: false,
            })
        );
        assert_eq!(
            RegistryUrl::parse("file:///var/lib/svckit").ok(),
            Some(RegistryUrl::File {
                path: "/var/lib/svckit".into()
            })
        );
        assert_eq!(
            RegistryUrl::parse("memory://").ok(),
            Some(RegistryUrl::Memory {
                name: String::new()
            })
        );
    }

    #[test]
    fn refuses_malformed_urls_as_usage_errors() {
        for bad in [
            "localhost:2379",
            "etcd://h1",
            "etcd://h1:notaport",
            "etcd://:2379",
            "etcd://h1:2379?prefix=x",
            "etcd://h1:2379?color=red",
            "etcd://h1:2379/svckit",
            "etcd://h1:2379/a?prefix=/p",
            "etcd://h1:2379?prefix=/p&x=1",
            "etcd://h1:99999",
            "etcd://",
            "etcd://h1:2379,",
            "",
            "file://relative",
            "redis://h:1",
        ] {
            match RegistryUrl::parse(bad) {
                Err(e) if e.kind() == crate::ErrorKind::Usage => {
                    assert!(e.to_string().contains(bad), "{e}")
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn displays_back_to_the_same_url() {
        for s in [
            "etcd://a:1,b:2",
            "etcd://a:1?prefix=/p",
            "https://a:1,b:2?prefix=/p",
            "file:///tmp/r",
            "memory://t",
        ] {
            assert_eq!(
                RegistryUrl::parse(s).map(|u| u.to_string()).ok().as_deref(),
                Some(s)
            );
        }
    }
}
