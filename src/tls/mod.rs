//! TLS on rustls, for a node's listeners and for RPC clients.
//!
//! Server side ([`ServerTls`]): `tls_cert_file` and `tls_key_file` turn TLS
//! on for the gRPC listener (ALPN `h2`) and the HTTP listener (`h2`,
//! `http/1.1`) alike; plaintext is then refused. `tls_client_ca_file` makes
//! client certificates signed by that CA required. The node advertises
//! `https://` endpoints.
//!
//! Client side ([`ClientTls`]): channels to `https://` nodes verify them
//! against `tls_ca_file`, and present `tls_client_cert_file` /
//! `tls_client_key_file` when set (for nodes that require client
//! certificates).
//!
//! Every file is read again when it changes (checked at each handshake), so
//! certificates rotate by replacing the files; a new version that does not
//! parse keeps the previous one in use.

mod accept;
mod connect;
mod files;
mod verify;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

pub(crate) use self::accept::{handshake, incoming, MaybeTls};
pub(crate) use self::connect::Connector;
use self::files::Reloading;
use self::verify::{ClientCa, Identity, ServerCa};
use crate::config::Config;
use crate::error::{Error, Result};

/// Bound on a TLS handshake on a node's listeners: a client that has not
/// finished it by then is cut off, so stalled handshakes cannot pile up.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_error(what: &str) -> impl Fn(rustls::Error) -> Error + '_ {
    move |e| Error::config(format!("{what}: {e}"))
}

/// A certificate and key pair that is read again when its files change.
fn identity(
    cert_option: &'static str,
    cert: &Path,
    key_option: &'static str,
    key: &Path,
) -> Result<Identity> {
    let (cert, key) = (cert.to_path_buf(), key.to_path_buf());
    let paths = vec![cert.clone(), key.clone()];
    let provider = provider();
    Reloading::new(cert_option, paths, move || {
        let chain = files::certificates(cert_option, &cert)?;
        let private = files::private_key(key_option, &key)?;
        CertifiedKey::from_der(chain, private, &provider).map_err(|e| {
            Error::config(format!(
                "{cert_option} {} and {key_option} {} do not make a pair: {e}",
                cert.display(),
                key.display()
            ))
        })
    })
    .map(Identity)
}

/// Both files or neither.
fn pair<'a>(
    (a, a_name): (Option<&'a PathBuf>, &str),
    (b, b_name): (Option<&'a PathBuf>, &str),
) -> Result<Option<(&'a PathBuf, &'a PathBuf)>> {
    match (a, b) {
        (Some(a), Some(b)) => Ok(Some((a, b))),
        (None, None) => Ok(None),
        _ => Err(Error::config(format!(
            "{a_name} and {b_name} must be set together"
        ))),
    }
}

/// Server-side TLS of a node: one certificate source and client policy
/// for both listeners. Cheap to clone.
#[derive(Clone)]
pub struct ServerTls {
    grpc: Arc<ServerConfig>,
    http: Arc<ServerConfig>,
}

impl ServerTls {
    /// The node's TLS from `tls_cert_file`, `tls_key_file` and
    /// `tls_client_ca_file`; `None` when no certificate is set. Missing,
    /// unreadable or unusable files are [`ErrorKind::Config`](crate::ErrorKind::Config) (exit 78).
    pub fn from_config(config: &Config) -> Result<Option<Self>> {
        let Some((cert, key)) = pair(
            (config.tls_cert_file.as_ref(), "tls_cert_file"),
            (config.tls_key_file.as_ref(), "tls_key_file"),
        )?
        else {
            return Ok(None);
        };
        Self::load(cert, key, config.tls_client_ca_file.as_deref()).map(Some)
    }

    /// TLS with the certificate chain `cert` and its `key` (PEM files),
    /// requiring client certificates signed by `client_ca` when given.
    ///
    /// ```no_run
    /// # use std::path::Path;
    /// let tls = svckit::tls::ServerTls::load(
    ///     Path::new("node.pem"),
    ///     Path::new("node.key"),
    ///     Some(Path::new("clients-ca.pem")),
    /// )?;
    /// # Ok::<(), svckit::Error>(())
    /// ```
    pub fn load(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<Self> {
        let provider = provider();
        let resolver = Arc::new(identity("tls_cert_file", cert, "tls_key_file", key)?);
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(tls_error("TLS set-up"))?;
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let path = ca.to_path_buf();
                let verifier =
                    Reloading::new("tls_client_ca_file", vec![path.clone()], move || {
                        let roots = files::roots("tls_client_ca_file", &path)?;
                        WebPkiClientVerifier::builder_with_provider(
                            Arc::new(roots),
                            provider.clone(),
                        )
                        .build()
                        .map_err(|e| {
                            Error::config(format!("tls_client_ca_file {}: {e}", path.display()))
                        })
                    })?;
                builder.with_client_cert_verifier(Arc::new(ClientCa(verifier)))
            }
        };
        let mut grpc = builder.with_cert_resolver(resolver);
        let mut http = grpc.clone();
        grpc.alpn_protocols = vec![b"h2".to_vec()];
        http.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            grpc: Arc::new(grpc),
            http: Arc::new(http),
        })
    }

    pub(crate) fn grpc_acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.grpc.clone())
    }

    pub(crate) fn http_acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.http.clone())
    }
}

/// Client-side TLS for channels to `https://` nodes. Cheap to clone.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls").finish_non_exhaustive()
    }
}

impl ClientTls {
    /// The client TLS of `tls_ca_file`, with `tls_client_cert_file` and
    /// `tls_client_key_file` when set; `None` without a CA.
    pub fn from_config(config: &Config) -> Result<Option<Self>> {
        let identity = pair(
            (config.tls_client_cert_file.as_ref(), "tls_client_cert_file"),
            (config.tls_client_key_file.as_ref(), "tls_client_key_file"),
        )?;
        let Some(ca) = &config.tls_ca_file else {
            if identity.is_some() {
                return Err(Error::config(
                    "tls_client_cert_file needs tls_ca_file, to verify the nodes it is shown to",
                ));
            }
            return Ok(None);
        };
        let identity = identity.map(|(c, k)| (c.as_path(), k.as_path()));
        Self::load(ca, identity).map(Some)
    }

    /// Verifies nodes against the CA certificates in `ca` (PEM), and shows
    /// `identity` (certificate chain and key, PEM) when given.
    ///
    /// ```no_run
    /// # use std::path::Path;
    /// # async fn demo(registry: svckit::servicegroup::Registry) -> svckit::Result<()> {
    /// use svckit::rpc::{Rpc, RpcOptions};
    /// use svckit::tls::ClientTls;
    ///
    /// let identity = Some((Path::new("client.pem"), Path::new("client.key")));
    /// let mut options = RpcOptions::default();
    /// options.tls = Some(ClientTls::load(Path::new("nodes-ca.pem"), identity)?);
    /// let rpc = Rpc::with_options(registry, options).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn load(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<Self> {
        let provider = provider();
        let path = ca.to_path_buf();
        let verifying = provider.clone();
        let verifier = Reloading::new("tls_ca_file", vec![path.clone()], move || {
            let roots = files::roots("tls_ca_file", &path)?;
            rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                verifying.clone(),
            )
            .build()
            .map(|v| v as Arc<dyn rustls::client::danger::ServerCertVerifier>)
            .map_err(|e| Error::config(format!("tls_ca_file {}: {e}", path.display())))
        })?;
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(tls_error("TLS set-up"))?
            // Not a weaker check: webpki's own verifier, over the CA file
            // as it is now.
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ServerCa(verifier)));
        let mut config = match identity {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                builder.with_client_cert_resolver(Arc::new(identity_of(cert, key)?))
            }
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Self {
            config: Arc::new(config),
        })
    }

    pub(crate) fn connector(&self) -> Connector {
        Connector(TlsConnector::from(self.config.clone()))
    }
}

fn identity_of(cert: &Path, key: &Path) -> Result<Identity> {
    identity("tls_client_cert_file", cert, "tls_client_key_file", key)
}
