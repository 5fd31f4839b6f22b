//! A node with TLS: calls through the RpcChannel, client certificates,
//! plaintext refused, HTTPS admin endpoints, expiry, rotation, workers and
//! bad files.

use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::etcd::Etcd;
use crate::support::node::{quick_node_args, Proc};
use crate::{addr, echo, handshake, https_get, path, pki, raw_client, rpc, start_tls_node};
use svckit::rpc::Target;
use svckit::tls::ClientTls;

#[tokio::test]
async fn rpc_by_topic_goes_over_tls() {
    let etcd = Etcd::start();
    let pki = pki();
    let url = etcd.url().to_string();
    let node = start_tls_node(&url, "tls-a", &pki.node, &[]);
    let ready = node.ready();
    assert!(
        ready["grpc"]
            .as_str()
            .unwrap()
            .starts_with("https://127.0.0.1:"),
        "{ready}"
    );
    assert!(
        ready["http"]
            .as_str()
            .unwrap()
            .starts_with("https://127.0.0.1:"),
        "{ready}"
    );

    let tls = ClientTls::load(&pki.ca.cert_file, None).unwrap();
    let client = rpc(&etcd.url(), Some(tls)).await;
    client
        .wait_for_nodes(&Target::topic("echo"), 1, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(echo(&client).await.unwrap(), "tls-a");

    // The CLI takes the same client options.
    let mut call = Proc::spawn(
        std::path::PathBuf::from(env!("CARGO_BIN_EXE_svckit")),
        &["call", "--registry", &url, "--topic", "echo", "ping"],
        &[("SVCKIT_TLS_CA_FILE", path(&pki.ca.cert_file))],
    );
    let status = call.wait_exit(Duration::from_secs(30)).expect("exits");
    assert!(status.success(), "{}", call.stderr());
    assert!(call.stdout().contains("\"ok\""), "{}", call.stdout());

    // A client with no CA does not talk to a TLS node at all.
    let plain = rpc(&etcd.url(), None).await;
    let refused = echo(&plain).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
}

#[tokio::test]
async fn client_certificates_are_required_with_a_client_ca() {
    let etcd = Etcd::start();
    let pki = pki();
    let url = etcd.url().to_string();
    let clients_ca = path(&pki.clients_ca.cert_file).to_string();
    let _node = start_tls_node(
        &url,
        "mtls-a",
        &pki.node,
        &["--tls-client-ca-file", &clients_ca],
    );

    let without = ClientTls::load(&pki.ca.cert_file, None).unwrap();
    let client = rpc(&etcd.url(), Some(without)).await;
    client
        .wait_for_nodes(&Target::topic("echo"), 1, Duration::from_secs(10))
        .await
        .unwrap();
    // The node's alert (certificate required) fails the call; the same
    // client with a certificate gets through below.
    let refused = echo(&client).await.unwrap_err();
    assert!(
        matches!(
            refused.code(),
            tonic::Code::Unknown | tonic::Code::Unavailable
        ),
        "{refused:?}"
    );

    // A certificate from another CA is refused too.
    let stranger = crate::support::certs::Ca::new(pki.dir.path(), "stranger-ca")
        .issue("stranger", &["stranger.test"]);
    let identity = Some((stranger.cert_file.as_path(), stranger.key_file.as_path()));
    let wrong = ClientTls::load(&pki.ca.cert_file, identity).unwrap();
    let client = rpc(&etcd.url(), Some(wrong)).await;
    client
        .wait_for_nodes(&Target::topic("echo"), 1, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(echo(&client).await.is_err());

    let identity = Some((
        pki.client.cert_file.as_path(),
        pki.client.key_file.as_path(),
    ));
    let with = ClientTls::load(&pki.ca.cert_file, identity).unwrap();
    let client = rpc(&etcd.url(), Some(with)).await;
    client
        .wait_for_nodes(&Target::topic("echo"), 1, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(echo(&client).await.unwrap(), "mtls-a");
}

#[tokio::test]
async fn plaintext_to_a_tls_node_is_refused_and_https_is_served() {
    let etcd = Etcd::start();
    let pki = pki();
    let url = etcd.url().to_string();
    let node = start_tls_node(&url, "plain-a", &pki.node, &[]);
    let (grpc, http) = (addr(&node, "grpc"), addr(&node, "http"));

    // Plain gRPC: the health check never gets an answer.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5));
    let checked = async {
        let channel = channel.connect().await?;
        tonic_health::pb::health_client::HealthClient::new(channel)
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .map_err(Into::into)
    };
    let result: Result<_, Box<dyn std::error::Error>> = checked.await;
    assert!(result.is_err(), "plaintext gRPC was answered");

    // Plain HTTP: no HTTP answer, on either listener.
    for addr in [grpc, http] {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(15), tcp.read_to_end(&mut answer)).await;
        assert!(
            !answer.starts_with(b"HTTP/"),
            "plaintext HTTP was answered: {}",
            String::from_utf8_lossy(&answer)
        );
    }

    // HTTPS: the admin endpoints answer.
    let healthz = https_get(http, &pki.ca.cert_file, "/healthz").await;
    assert!(healthz.starts_with("HTTP/1.1 200"), "{healthz}");
    let report = https_get(http, &pki.ca.cert_file, "/debug/report").await;
    assert!(report.starts_with("HTTP/1.1 200"), "{report}");
    assert!(report.contains("\"tls_cert_file\""), "{report}");
}

#[tokio::test]
async fn a_stalled_handshake_is_cut_off_and_holds_up_no_one() {
    let etcd = Etcd::start();
    let pki = pki();
    let url = etcd.url().to_string();
    let node = start_tls_node(&url, "stall-a", &pki.node, &[]);
    let stall = |addr| async move {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        // The first bytes of a TLS record, and then nothing.
        tcp.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
        tcp
    };
    let (mut grpc, mut http) = (
        stall(addr(&node, "grpc")).await,
        stall(addr(&node, "http")).await,
    );

    // Others get through meanwhile.
    let client = raw_client(&pki.ca.cert_file, b"h2");
    handshake(addr(&node, "grpc"), client.clone())
        .await
        .unwrap();
    handshake(addr(&node, "http"), client).await.unwrap();

    let bound = svckit::tls::HANDSHAKE_TIMEOUT * 3;
    for stalled in [&mut grpc, &mut http] {
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(bound, stalled.read(&mut buf))
            .await
            .expect("the node closes a stalled handshake");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
}

#[tokio::test]
async fn a_second_node_with_the_identity_of_a_live_tls_node_is_refused() {
    let etcd = Etcd::start();
    let pki = pki();
    let url = etcd.url().to_string();
    let _live = start_tls_node(&url, "dup-a", &pki.node, &[]);
    let mut args = quick_node_args(&url, "dup-a");
    args.extend([
        "--tls-cert-file",
        path(&pki.node.cert_file),
        "--tls-key-file",
        path(&pki.node.key_file),
    ]);
    let mut second = Proc::spawn(crate::support::node::example_bin("echo_node"), &args, &[]);
    let status = second.wait_exit(Duration::from_secs(30)).expect("exits");
    assert_eq!(status.code(), Some(78), "{}", second.stderr());
}

#[tokio::test]
async fn an_expired_server_certificate_is_refused() {
    let etcd = Etcd::start();
    let pki = pki();
    let url = etcd.url().to_string();
    let expired = pki.ca.issue_expired("expired", &["127.0.0.1"]);
    let node = start_tls_node(&url, "expired-a", &expired, &[]);

    let error = match handshake(addr(&node, "grpc"), raw_client(&pki.ca.cert_file, b"h2")).await {
        Ok(_) => panic!("the handshake with an expired certificate succeeded"),
        Err(e) => e,
    };
    let cause = error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
        .unwrap_or_else(|| panic!("not a TLS error: {error:?}"));
    assert!(
        matches!(
            cause,
            rustls::Error::InvalidCertificate(
                rustls::CertificateError::Expired | rustls::CertificateError::ExpiredContext { .. }
            )
        ),
        "{cause:?}"
    );

    let tls = ClientTls::load(&pki.ca.cert_file, None).unwrap();
    let client = rpc(&etcd.url(), Some(tls)).await;
    client
        .wait_for_nodes(&Target::topic("echo"), 1, Duration::from_secs(10))
        .await
        .unwrap();
    let refused = echo(&client).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
}

fn first_cert(file: &std::path::Path) -> CertificateDer<'static> {
    CertificateDer::pem_file_iter(file)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn a_replaced_certificate_is_served_without_restart() {
    let etcd = Etcd::start();
    let pki = pki();
    let url = etcd.url().to_string();
    // The node reads its own copies, replaced below the way tools do it:
    // a new file renamed over the old.
    let live = crate::support::certs::Leaf {
        cert_file: pki.dir.path().join("live.pem"),
        key_file: pki.dir.path().join("live.key"),
    };
    std::fs::copy(&pki.node.cert_file, &live.cert_file).unwrap();
    std::fs::copy(&pki.node.key_file, &live.key_file).unwrap();
    let node = start_tls_node(&url, "rotate-a", &live, &[]);
    let (grpc, http) = (addr(&node, "grpc"), addr(&node, "http"));
    let client = raw_client(&pki.ca.cert_file, b"h2");
    let shown = |tls: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>| {
        tls.get_ref().1.peer_certificates().unwrap()[0].clone()
    };
    let old = first_cert(&pki.node.cert_file);
    assert_eq!(shown(&handshake(grpc, client.clone()).await.unwrap()), old);

    let new = pki.ca.issue("node-2", &["127.0.0.1"]);
    std::fs::copy(&new.key_file, pki.dir.path().join("next.key")).unwrap();
    std::fs::copy(&new.cert_file, pki.dir.path().join("next.pem")).unwrap();
    std::fs::rename(pki.dir.path().join("next.key"), &live.key_file).unwrap();
    std::fs::rename(pki.dir.path().join("next.pem"), &live.cert_file).unwrap();
    let expected = first_cert(&new.cert_file);
    assert_ne!(expected, old);
    assert_eq!(
        shown(&handshake(grpc, client.clone()).await.unwrap()),
        expected
    );
    assert_eq!(
        shown(&handshake(http, client.clone()).await.unwrap()),
        expected
    );

    // A broken replacement keeps the last good pair in use.
    std::fs::write(&live.cert_file, "not a certificate").unwrap();
    assert_eq!(
        shown(&handshake(grpc, client.clone()).await.unwrap()),
        expected
    );
    node.wait_for_log(
        "cannot be used; keeping the previous version",
        Duration::from_secs(5),
    );
}

#[tokio::test]
async fn workers_serve_tls_on_the_inherited_listener() {
    let etcd = Etcd::start();
    let pki = pki();
    let url = etcd.url().to_string();
    let _node = start_tls_node(&url, "workers-a", &pki.node, &["--workers", "2"]);
    let tls = ClientTls::load(&pki.ca.cert_file, None).unwrap();
    let client = rpc(&etcd.url(), Some(tls)).await;
    client
        .wait_for_nodes(&Target::topic("echo"), 1, Duration::from_secs(10))
        .await
        .unwrap();
    for _ in 0..4 {
        assert_eq!(echo(&client).await.unwrap(), "workers-a");
    }
}

#[test]
fn unusable_tls_files_refuse_the_start() {
    let pki = pki();
    let registry = format!("file://{}", pki.dir.path().join("registry").display());
    let garbage = pki.dir.path().join("garbage.pem");
    std::fs::write(&garbage, "-----BEGIN NOTHING-----\n").unwrap();
    let cert = path(&pki.node.cert_file).to_string();
    let key = path(&pki.node.key_file).to_string();
    let other_key = pki.ca.issue("other", &["127.0.0.1"]).key_file;
    let cases: [(Vec<&str>, &[&str]); 4] = [
        (
            vec!["--tls-cert-file", &cert],
            &["tls_cert_file", "tls_key_file"],
        ),
        (
            vec!["--tls-cert-file", path(&garbage), "--tls-key-file", &key],
            &["tls_cert_file", "garbage.pem"],
        ),
        (
            vec![
                "--tls-cert-file",
                &cert,
                "--tls-key-file",
                "/nonexistent/key.pem",
            ],
            &["tls_key_file", "/nonexistent/key.pem"],
        ),
        (
            vec!["--tls-cert-file", &cert, "--tls-key-file", path(&other_key)],
            &["do not make a pair"],
        ),
    ];
    for (extra, named) in cases {
        let mut args = quick_node_args(&registry, "bad-tls");
        args.extend(extra);
        let mut proc = Proc::spawn(crate::support::node::example_bin("echo_node"), &args, &[]);
        let status = proc.wait_exit(Duration::from_secs(30)).expect("exits");
        let stderr = proc.stderr();
        assert_eq!(status.code(), Some(78), "{args:?}: {stderr}");
        for name in named {
            assert!(stderr.contains(name), "{args:?}: no {name} in {stderr}");
        }
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
