//! [`Target`]: what a call is addressed to (oslo.messaging's `Target`).

use std::fmt;

/// A topic, optionally one server of it, or every server (fanout); and
/// optionally a gRPC service the chosen nodes must advertise.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// The topic called.
    pub topic: String,
    /// Only this host.
    pub server: Option<String>,
    /// Every up node (for [`Rpc::fanout`](super::Rpc::fanout)).
    pub fanout: bool,
    /// Only nodes that advertise this fully qualified gRPC service name
    /// (e.g. `pkg.v2.Echo`): how a rolling upgrade picks compatible servers.
    pub service: Option<String>,
}

impl Target {
    /// Any node of `topic`.
    pub fn topic(topic: impl Into<String>) -> Self {
        Target {
            topic: topic.into(),
            server: None,
            fanout: false,
            service: None,
        }
    }

    /// Only the node of this host.
    ///
    /// ```
    /// let t = svckit::rpc::Target::topic("compute").server("cmp-7");
    /// assert_eq!(t.to_string(), "compute.cmp-7");
    /// ```
    #[must_use]
    pub fn server(mut self, host: impl Into<String>) -> Self {
        self.server = Some(host.into());
        self
    }

    /// Every up node of the topic.
    ///
    /// ```
    /// let t = svckit::rpc::Target::topic("compute").fanout();
    /// assert!(t.fanout);
    /// ```
    #[must_use]
    pub fn fanout(mut self) -> Self {
        self.fanout = true;
        self
    }

    /// Only nodes that serve this gRPC service.
    ///
    /// ```
    /// let t = svckit::rpc::Target::topic("echo").require_service("svckit.examples.echo.v1.Echo");
    /// assert!(t.service.is_some());
    /// ```
    #[must_use]
    pub fn require_service(mut self, service: impl Into<String>) -> Self {
        self.service = Some(service.into());
        self
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.topic)?;
        if let Some(server) = &self.server {
            write!(f, ".{server}")?;
        }
        if self.fanout {
            write!(f, " (fanout)")?;
        }
        if let Some(service) = &self.service {
            write!(f, " serving {service}")?;
        }
        Ok(())
    }
}
