//! TLS to the nodes (gRFC A29): a topic whose nodes advertise `https://`
//! endpoints gets a Cluster with an UpstreamTlsContext. Its certificates
//! are not sent: the Cluster names a certificate provider instance of the
//! client's bootstrap (`certificate_providers`, gRPC's `file_watcher`
//! plugin), which holds the CA the nodes' certificates are checked against
//! and, when nodes require client certificates, the client's own.
//!
//! A client must ask for xDS credentials to use it (grpcio's
//! `xds_channel_credentials`, grpc-js-xds's `XdsChannelCredentials`); one
//! that does not reaches the endpoints with its own credentials.

use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType;
use envoy_types::pb::envoy::config::core::v3::TransportSocket;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateProviderPluginInstance, CertificateValidationContext, CommonTlsContext,
    UpstreamTlsContext,
};
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};

/// The bootstrap's certificate provider instance a Cluster names unless
/// told otherwise.
pub const DEFAULT_PROVIDER: &str = "svckit";

/// How clients reach nodes that serve TLS (`svckit xds --tls-provider`,
/// `--tls-client-identity`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct UpstreamTls {
    /// The certificate provider instance of the clients' bootstraps.
    pub provider: String,
    /// Whether clients show their certificate (from the same instance), for
    /// nodes that require one (`tls_client_ca_file`).
    pub client_identity: bool,
}

impl Default for UpstreamTls {
    fn default() -> Self {
        UpstreamTls {
            provider: DEFAULT_PROVIDER.to_string(),
            client_identity: false,
        }
    }
}

impl UpstreamTls {
    /// The Cluster's transport socket for nodes that serve TLS.
    pub(crate) fn transport_socket(&self) -> TransportSocket {
        let instance = || CertificateProviderPluginInstance {
            instance_name: self.provider.clone(),
            certificate_name: String::new(),
        };
        let context = UpstreamTlsContext {
            common_tls_context: Some(CommonTlsContext {
                tls_certificate_provider_instance: self.client_identity.then(instance),
                validation_context_type: Some(ValidationContextType::ValidationContext(
                    CertificateValidationContext {
                        ca_certificate_provider_instance: Some(instance()),
                        ..Default::default()
                    },
                )),
                ..Default::default()
            }),
            ..Default::default()
        };
        TransportSocket {
            name: "envoy.transport_sockets.tls".to_string(),
            config_type: Some(ConfigType::TypedConfig(Any {
                type_url: UpstreamTlsContext::type_url(),
                value: context.encode_to_vec(),
            })),
        }
    }
}
