//! [`NodeBuilder`]: a [`Node`]'s identity, with nova's defaults.

use std::sync::Arc;

use super::info::NodeInfo;
use super::node::Node;
use crate::config::Config;
use crate::manager::Manager;

/// Builds a [`Node`]; the defaults are nova's (`binary` from `argv[0]`,
/// `topic` from the binary).
#[must_use]
pub struct NodeBuilder<M> {
    pub(super) manager: M,
    pub(super) binary: Option<String>,
    pub(super) topic: Option<String>,
    pub(super) version: String,
}

impl<M: Manager> NodeBuilder<M> {
    /// The binary name recorded in the service group.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # struct Conductor;
    /// # impl svckit::Manager for Conductor { fn grpc_services(self: &Arc<Self>, _: &mut svckit::manager::GrpcServices) {} }
    /// # let config = svckit::Config::default();
    /// let node = svckit::Node::builder(Conductor).binary("conductor").build(&config);
    /// assert_eq!(node.info().binary, "conductor");
    /// ```
    pub fn binary(mut self, binary: impl Into<String>) -> Self {
        self.binary = Some(binary.into());
        self
    }

    /// The topic served when the config sets none.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # struct Echo;
    /// # impl svckit::Manager for Echo { fn grpc_services(self: &Arc<Self>, _: &mut svckit::manager::GrpcServices) {} }
    /// # let config = svckit::Config::default();
    /// let node = svckit::Node::builder(Echo).topic("echo").build(&config);
    /// assert_eq!(node.info().topic, "echo");
    /// ```
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.topic = Some(topic.into());
        self
    }

    /// The software version recorded in the service group.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # struct Echo;
    /// # impl svckit::Manager for Echo { fn grpc_services(self: &Arc<Self>, _: &mut svckit::manager::GrpcServices) {} }
    /// # let config = svckit::Config::default();
    /// let node = svckit::Node::builder(Echo).version("1.2.0").build(&config);
    /// assert_eq!(node.info().version, "1.2.0");
    /// ```
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = version.into();
        self
    }

    /// The service, for `config`'s host, registry and listeners. The topic is
    /// the config's `topic`, else the builder's, else the binary name
    /// without a `svckit-` prefix.
    pub fn build(self, config: &Config) -> Node<M> {
        let binary = self.binary.unwrap_or_else(crate::config::program_name);
        let topic = config.topic.clone().or(self.topic).unwrap_or_else(|| {
            binary
                .strip_prefix("svckit-")
                .unwrap_or(&binary)
                .to_string()
        });
        let info = NodeInfo::new(
            config.host.clone(),
            topic,
            binary,
            self.version,
            config.clone(),
        );
        Node::new(Arc::new(info), self.manager)
    }
}
