//! The registry over TLS (etcd with `--client-cert-auth`) and with
//! user/password authentication.

use std::time::Duration;

use etcd_client::{Certificate, Identity, TlsOptions};

use crate::support::certs::Ca;
use crate::support::etcd::{Etcd, EtcdTls};
use crate::support::node::{quick_node_args, Proc};
use crate::{path, pki};
use svckit::servicegroup::{self, RegistryOptions};

/// etcd with TLS and client certificates required; the admin client's TLS.
fn tls_etcd(dir: &std::path::Path) -> (Etcd, Ca, crate::support::certs::Leaf, TlsOptions) {
    let ca = Ca::new(dir, "etcd-ca");
    let server = ca.issue("etcd", &["127.0.0.1", "localhost"]);
    let client = ca.issue("etcd-client", &["etcd-client.test"]);
    let etcd = Etcd::start_tls(EtcdTls {
        cert_file: server.cert_file.clone(),
        key_file: server.key_file.clone(),
        client_ca_file: Some(ca.cert_file.clone()),
    });
    let read = |p: &std::path::Path| std::fs::read(p).unwrap();
    let admin = TlsOptions::new()
        .ca_certificate(Certificate::from_pem(read(&ca.cert_file)))
        .identity(Identity::from_pem(
            read(&client.cert_file),
            read(&client.key_file),
        ));
    (etcd, ca, client, admin)
}

#[tokio::test]
async fn a_node_and_the_cli_use_etcd_over_tls_with_client_certificates() {
    let pki = pki();
    let (etcd, ca, client, _) = tls_etcd(pki.dir.path());
    let url = etcd.url().to_string();
    assert!(url.starts_with("https://"), "{url}");
    let tls_env = [
        ("SVCKIT_REGISTRY_CA_FILE", path(&ca.cert_file)),
        ("SVCKIT_REGISTRY_CERT_FILE", path(&client.cert_file)),
        ("SVCKIT_REGISTRY_KEY_FILE", path(&client.key_file)),
    ];
    let (_node, _) =
        Proc::start_example("echo_node", &quick_node_args(&url, "etcd-tls-a"), &tls_env);

    let mut list = Proc::spawn(
        std::path::PathBuf::from(env!("CARGO_BIN_EXE_svckit")),
        &["members", "list", "--registry", &url, "--json"],
        &tls_env,
    );
    let status = list.wait_exit(Duration::from_secs(30)).expect("exits");
    assert!(status.success(), "{}", list.stderr());
    assert!(list.stdout().contains("etcd-tls-a"), "{}", list.stdout());

    // Without a client certificate etcd refuses the connection.
    let (code, _, stderr) = Proc::run_cli(&["members", "list", "--registry", &url]);
    assert_ne!(code, Some(0), "{stderr}");
    let mut no_cert = Proc::spawn(
        std::path::PathBuf::from(env!("CARGO_BIN_EXE_svckit")),
        &["members", "list", "--registry", &url],
        &tls_env[..1],
    );
    let status = no_cert.wait_exit(Duration::from_secs(30)).expect("exits");
    assert_eq!(status.code(), Some(69), "{}", no_cert.stderr());
}

#[tokio::test]
async fn etcd_auth_takes_the_right_password_and_refuses_a_wrong_one_without_showing_it() {
    let etcd = Etcd::start();
    let pki = pki();
    let right = "right-pw-4c1d";
    let wrong = "wrong-pw-9f2e";
    etcd.enable_auth("svc", right, None).await;
    let url = etcd.url().to_string();
    let right_file = pki.dir.path().join("right");
    let wrong_file = pki.dir.path().join("wrong");
    std::fs::write(&right_file, format!("{right}\n")).unwrap();
    std::fs::write(&wrong_file, wrong).unwrap();

    let mut args = quick_node_args(&url, "auth-a");
    args.extend(["--registry-user", "svc", "--http-listen", "127.0.0.1:0"]);
    let mut right_args = args.clone();
    right_args.extend(["--registry-password-file", path(&right_file)]);
    let (node, _) = Proc::start_example("echo_node", &right_args, &[]);
    let http = node.ready()["http"].as_str().unwrap().to_string();
    let report = http_get(http.trim_start_matches("http://"), "/debug/report").await;
    assert!(report.contains("auth-a"), "{report}");
    assert!(!report.contains(right), "the report shows the password");
    assert!(!node.stderr().contains(right), "the log shows the password");

    let env = [
        ("SVCKIT_REGISTRY_USER", "svc"),
        ("SVCKIT_REGISTRY_PASSWORD_FILE", path(&right_file)),
    ];
    let mut list = Proc::spawn(
        std::path::PathBuf::from(env!("CARGO_BIN_EXE_svckit")),
        &["members", "list", "--registry", &url],
        &env,
    );
    assert!(
        list.wait_exit(Duration::from_secs(30)).unwrap().success(),
        "{}",
        list.stderr()
    );
    assert!(list.stdout().contains("auth-a"), "{}", list.stdout());

    let mut wrong_args = args.clone();
    wrong_args[3] = "auth-b";
    wrong_args.extend(["--registry-password-file", path(&wrong_file)]);
    let mut refused = Proc::spawn(
        crate::support::node::example_bin("echo_node"),
        &wrong_args,
        &[],
    );
    let status = refused.wait_exit(Duration::from_secs(30)).expect("exits");
    let stderr = refused.stderr();
    assert_eq!(status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("refused user \"svc\""), "{stderr}");
    assert!(stderr.contains("registry_password_file"), "{stderr}");
    assert!(
        !stderr.contains(wrong),
        "stderr shows the password: {stderr}"
    );
    // One error line (warnings about the machine may come before it).
    let errors = stderr.lines().filter(|l| !l.contains(" WARN ")).count();
    assert_eq!(errors, 1, "{stderr}");
}

#[tokio::test]
async fn a_rotated_password_file_is_read_when_etcd_refuses_the_login() {
    let pki = pki();
    let (etcd, ca, client, admin) = tls_etcd(pki.dir.path());
    etcd.enable_auth("svc", "first-pw", Some(admin.clone()))
        .await;
    let file = pki.dir.path().join("password");
    std::fs::write(&file, "first-pw\n").unwrap();
    let options = {
        let mut options = RegistryOptions::default();
        options.ca_file = Some(ca.cert_file.clone());
        options.cert_file = Some(client.cert_file.clone());
        options.key_file = Some(client.key_file.clone());
        options.user = Some("svc".into());
        options.password_file = Some(file.clone());
        options
    };
    let registry = servicegroup::connect(&etcd.url(), &options).await.unwrap();
    registry.list(None).await.unwrap();

    // etcd drops the user's tokens when the password changes: the next
    // request has to log in again, with the file's new content.
    etcd.change_password("svc", "second-pw", Some(admin)).await;
    std::fs::write(&file, "second-pw\n").unwrap();
    registry
        .list(None)
        .await
        .unwrap_or_else(|e| panic!("after the rotation: {e}\n{}", etcd.log()));
}

async fn http_get(addr: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tcp.read_to_end(&mut response).await.unwrap();
    String::from_utf8_lossy(&response).into_owned()
}
