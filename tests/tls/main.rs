//! TLS against real processes: echo_node with certificates made at test
//! time, clients through the RpcChannel and raw rustls, and etcd started
//! with TLS, `--client-cert-auth` and authentication.

#[path = "../support/mod.rs"]
mod support;

mod etcd;
mod node;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use support::certs::{Ca, Leaf};
use support::node::{quick_node_args, Proc};
use svckit::rpc::{Rpc, RpcOptions, Target};
use svckit::servicegroup::{self, RegistryOptions, RegistryUrl};
use svckit::tls::ClientTls;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[allow(dead_code)]
#[path = "../../examples/common/echo.rs"]
mod echo;

use echo::pb::echo_client::EchoClient;
use echo::pb::EchoRequest;

/// The CAs and certificates of one test, in a temp dir.
pub struct Pki {
    pub dir: tempfile::TempDir,
    /// Signs the nodes' certificates; clients trust it.
    pub ca: Ca,
    /// The node's certificate, for 127.0.0.1 and localhost.
    pub node: Leaf,
    /// Signs client certificates; nodes with `tls_client_ca_file` trust it.
    pub clients_ca: Ca,
    pub client: Leaf,
}

pub fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "nodes-ca");
    let node = ca.issue("node", &["127.0.0.1", "localhost"]);
    let clients_ca = Ca::new(dir.path(), "clients-ca");
    let client = clients_ca.issue("client", &["client.test"]);
    Pki {
        dir,
        ca,
        node,
        clients_ca,
        client,
    }
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// echo_node on `registry` with the node certificate `cert` (and HTTP).
pub fn start_tls_node(registry: &str, host: &str, cert: &Leaf, extra: &[&str]) -> Proc {
    let mut args = quick_node_args(registry, host);
    args.extend([
        "--http-listen",
        "127.0.0.1:0",
        "--tls-cert-file",
        path(&cert.cert_file),
        "--tls-key-file",
        path(&cert.key_file),
    ]);
    args.extend(extra);
    let (proc, _) = Proc::start_example("echo_node", &args, &[("SVCKIT_DRAIN_DELAY", "0")]);
    proc
}

/// The node's advertised endpoint of `kind` ("grpc", "http"), as an address.
pub fn addr(proc: &Proc, kind: &str) -> SocketAddr {
    let url = proc.ready()[kind].as_str().unwrap().to_string();
    url.trim_start_matches("https://").parse().unwrap()
}

/// An RPC client of `registry` with `tls`.
pub async fn rpc(registry: &RegistryUrl, tls: Option<ClientTls>) -> Rpc {
    let registry = servicegroup::connect(registry, &RegistryOptions::default())
        .await
        .unwrap();
    let options = {
        let mut options = RpcOptions::default();
        options.response_timeout = Duration::from_secs(5);
        options.tls = tls;
        options
    };
    Rpc::with_options(registry, options).await.unwrap()
}

/// One Echo call by topic.
pub async fn echo(rpc: &Rpc) -> Result<String, tonic::Status> {
    EchoClient::new(rpc.channel(Target::topic("echo")))
        .echo(EchoRequest {
            payload: b"over tls".to_vec(),
        })
        .await
        .map(|r| r.into_inner().host)
}

/// A raw rustls client config trusting `ca`, with ALPN `alpn`.
pub fn raw_client(ca: &Path, alpn: &[u8]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca).unwrap();
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(config)
}

/// A TLS handshake to `addr`: the certificate the server showed.
pub async fn handshake(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::from(addr.ip());
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

/// `GET path` over HTTPS/1.1; the whole response.
pub async fn https_get(addr: SocketAddr, ca: &Path, path: &str) -> String {
    let mut tls = handshake(addr, raw_client(ca, b"http/1.1")).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let _ = tls.read_to_end(&mut response).await;
    String::from_utf8_lossy(&response).into_owned()
}
