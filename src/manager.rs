//! The user's side of a node: a [`Manager`] (nova's `Manager`) owns the
//! gRPC services of a topic and the hooks the lifecycle calls around them.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use tonic::body::Body;
use tonic::server::NamedService;
use tonic::service::{Routes, RoutesBuilder};

use crate::error::BoxError;
use crate::periodic::PeriodicTask;

/// A manager: the services a node serves and its lifecycle hooks.
///
/// Hooks run in the order of the node lifecycle: `init_host` and
/// `pre_start_hook` before the gRPC server starts, `post_start_hook` once it
/// serves (health still NOT_SERVING), then the node is marked SERVING and
/// registered. `cleanup_host` runs after in-flight requests drained. A hook
/// that fails aborts the start with its error.
///
/// ```
/// use std::sync::Arc;
/// use svckit::manager::{GrpcServices, Manager};
///
/// struct Conductor;
///
/// impl Manager for Conductor {
///     fn grpc_services(self: &Arc<Self>, _services: &mut GrpcServices) {
///         // services.add(ConductorServer::from_arc(self.clone()));
///     }
///     async fn init_host(&self) -> Result<(), svckit::BoxError> {
///         // open databases, check local state…
///         Ok(())
///     }
/// }
/// ```
pub trait Manager: Send + Sync + 'static {
    /// Registers the manager's tonic services (generated `…Server` types).
    fn grpc_services(self: &Arc<Self>, services: &mut GrpcServices);

    /// The manager's HTTP API (nova-api's WSGI app), served on `http_listen`
    /// beside the admin endpoints, behind the HTTP limits. None by default.
    fn http_routes(self: &Arc<Self>) -> Option<axum::Router> {
        None
    }

    /// Prepares the host before anything is served.
    fn init_host(&self) -> impl Future<Output = Result<(), BoxError>> + Send {
        async { Ok(()) }
    }

    /// Runs after `init_host`, before the gRPC server starts.
    fn pre_start_hook(&self) -> impl Future<Output = Result<(), BoxError>> + Send {
        async { Ok(()) }
    }

    /// Runs once the server accepts calls, before the node is advertised.
    fn post_start_hook(&self) -> impl Future<Output = Result<(), BoxError>> + Send {
        async { Ok(()) }
    }

    /// Drops cached state when the config is reloaded (SIGHUP).
    fn reset(&self) -> impl Future<Output = Result<(), BoxError>> + Send {
        async { Ok(()) }
    }

    /// Releases host resources after the last request finished.
    fn cleanup_host(&self) -> impl Future<Output = Result<(), BoxError>> + Send {
        async { Ok(()) }
    }

    /// The manager's periodic tasks (none by default). Asked once at start,
    /// and again after [`Manager::reset`] on SIGHUP, when the spacing and
    /// enabled flag of each task (by name) are taken over.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use svckit::manager::{GrpcServices, Manager};
    /// use svckit::periodic::{PeriodicTask, Scope};
    ///
    /// struct Conductor;
    ///
    /// impl Manager for Conductor {
    ///     fn grpc_services(self: &Arc<Self>, _services: &mut GrpcServices) {}
    ///
    ///     fn periodic_tasks(self: &Arc<Self>) -> Vec<PeriodicTask<Self>> {
    ///         vec![PeriodicTask::new("reap_orphans", Duration::from_secs(30), |_c: Arc<Self>| async {
    ///             Ok(())
    ///         })
    ///         .scope(Scope::Topic)]
    ///     }
    /// }
    /// ```
    fn periodic_tasks(self: &Arc<Self>) -> Vec<PeriodicTask<Self>>
    where
        Self: Sized,
    {
        Vec::new()
    }
}

/// The services a manager contributes to its node, with the descriptor sets
/// that gRPC reflection serves for them.
pub struct GrpcServices {
    routes: RoutesBuilder,
    names: Vec<&'static str>,
    descriptor_sets: Vec<&'static [u8]>,
    max_message_size: usize,
}

impl GrpcServices {
    pub(crate) fn new(max_message_size: usize) -> Self {
        GrpcServices {
            routes: RoutesBuilder::default(),
            names: Vec::new(),
            descriptor_sets: Vec::new(),
            max_message_size,
        }
    }

    /// Adds a generated tonic server. Its name is advertised in the service
    /// record and gets its own health status.
    pub fn add<S>(&mut self, service: S) -> &mut Self
    where
        S: tower::Service<http::Request<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Response: axum::response::IntoResponse,
        S::Future: Send + 'static,
    {
        self.names.push(S::NAME);
        self.routes.add_service(service);
        self
    }

    /// Adds an encoded `FileDescriptorSet` (written by `svckit-build`) so that
    /// reflection describes the manager's services.
    pub fn file_descriptor_set(&mut self, encoded: &'static [u8]) -> &mut Self {
        self.descriptor_sets.push(encoded);
        self
    }

    /// The configured message size limit; apply it to generated servers with
    /// `max_decoding_message_size` / `max_encoding_message_size`.
    pub fn max_message_size(&self) -> usize {
        self.max_message_size
    }

    pub(crate) fn into_parts(self) -> (Routes, Vec<&'static str>, Vec<&'static [u8]>) {
        (self.routes.routes(), self.names, self.descriptor_sets)
    }
}
