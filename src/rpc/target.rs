//! [`Target`]: what a call is addressed to (oslo.messaging's `Target`).

use std::fmt;

/// A topic, optionally one server of it, and optionally a gRPC service the
/// chosen nodes must advertise. Calling every node of a topic is
/// [`Rpc::fanout`](super::Rpc::fanout), not a kind of target.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// The topic whose nodes may answer.
    pub topic: String,
    /// Only this host.
    pub server: Option<String>,
    /// With `server`: reach that node even when an operator disabled it
    /// (operators debug disabled nodes). Balancing by topic never picks a
    /// disabled node, so without `server` this has no effect.
    pub include_disabled: bool,
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
            include_disabled: false,
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

    /// Reaches the [`server`](Self::server) even if it is disabled (it
    /// must still be up).
    ///
    /// ```
    /// let t = svckit::rpc::Target::topic("compute").server("cmp-7").include_disabled();
    /// assert!(t.include_disabled);
    /// ```
    #[must_use]
    pub fn include_disabled(mut self) -> Self {
        self.include_disabled = true;
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
        if self.include_disabled && self.server.is_some() {
            write!(f, " (disabled too)")?;
        }
        if let Some(service) = &self.service {
            write!(f, " serving {service}")?;
        }
        Ok(())
    }
}
