//! Shared by the integration tests: real dependencies ([`etcd`], kit
//! processes in [`node`]) and bounded
//! waits on observed state, so that a test fails instead of hanging or
//! passing by luck.

// Each test binary uses its own part of this module.
#![allow(dead_code)]

pub mod certs;
pub mod dashboard;
pub mod etcd;
pub mod js;
pub mod node;
pub mod ports;
pub mod python;
pub mod xds;

use std::future::Future;
use std::time::{Duration, Instant};

use futures::StreamExt;
use svckit::servicegroup::{Advert, Endpoints, Event, EventStream, Registration, RegistryOptions};

/// Short heartbeats keep the tests quick: 200 ms heartbeat, down after 1 s.
pub const REPORT_INTERVAL: Duration = Duration::from_millis(200);
pub const DOWN_TIME: Duration = Duration::from_secs(1);

pub fn registration(topic: &str, host: &str) -> Registration {
    let endpoints = Endpoints::new(Some(format!("http://{host}:7000")), None);
    let services = vec!["svckit.test.v1.Test".into()];
    Advert::new(topic, host, "test_node", "1.0.0", endpoints, services).registration(
        1,
        REPORT_INTERVAL,
        DOWN_TIME,
    )
}

pub fn options() -> RegistryOptions {
    let mut options = RegistryOptions::default();
    options.timeout = Duration::from_secs(1);
    options
}

/// Polls `check` until it returns `Some`, or panics after `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads events until one matches, or panics after `within`; returns it and
/// how long it took.
pub async fn expect_event(
    stream: &mut EventStream,
    within: Duration,
    what: &str,
    matches: impl Fn(&Event) -> bool,
) -> (Event, Duration) {
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(event))) if matches(&event) => return (event, start.elapsed()),
            Ok(Some(Ok(event))) => seen.push(event),
            Ok(Some(Err(e))) => panic!("watch failed while waiting for {what}: {e}"),
            Ok(None) => panic!("watch ended while waiting for {what}"),
            Err(_) => panic!("no {what} within {within:?}; saw {seen:#?}"),
        }
    }
}

/// Asserts that no event arrives for `quiet`.
pub async fn expect_quiet(stream: &mut EventStream, quiet: Duration) {
    if let Ok(Some(event)) = tokio::time::timeout(quiet, stream.next()).await {
        panic!("unexpected event {event:?}");
    }
}

/// Asserts that no event `matches` for `quiet` (others are let through).
pub async fn expect_none(
    stream: &mut EventStream,
    quiet: Duration,
    what: &str,
    matches: impl Fn(&Event) -> bool,
) {
    let deadline = tokio::time::Instant::now() + quiet;
    while let Ok(next) = tokio::time::timeout_at(deadline, stream.next()).await {
        match next {
            Some(Ok(event)) if matches(&event) => panic!("{what}: {event:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("watch failed while checking that {what} does not happen: {e}"),
            None => panic!("watch ended while checking that {what} does not happen"),
        }
    }
}

/// Polls `check` from a thread that may block until it holds, or panics
/// after `within` (for checks on files and logs written by other
/// processes, which give no event to wait for).
pub fn poll_until(within: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn is_join(host: &str) -> impl Fn(&Event) -> bool + '_ {
    move |e| matches!(e, Event::Join(m) if m.record.advert.host == host)
}

pub fn is_leave(host: &str) -> impl Fn(&Event) -> bool + '_ {
    move |e| matches!(e, Event::Leave(m) if m.record.advert.host == host)
}

pub fn is_update(host: &str) -> impl Fn(&Event) -> bool + '_ {
    move |e| matches!(e, Event::Update(m) if m.record.advert.host == host)
}

pub fn is_delete(host: &str) -> impl Fn(&Event) -> bool + '_ {
    move |e| matches!(e, Event::Delete(m) if m.record.advert.host == host)
}

/// A gRPC health service answering SERVING on a loopback port: the endpoint
/// of a live node, for joins that ask whether a holder is alive. Stops
/// serving when dropped.
pub struct LiveEndpoint {
    pub url: String,
    _stop: tokio::sync::oneshot::Sender<()>,
}

pub async fn live_endpoint() -> LiveEndpoint {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (_reporter, health) = tonic_health::server::health_reporter();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async {
                    let _ = stopped.await;
                },
            ),
    );
    LiveEndpoint { url, _stop: stop }
}

/// A loopback endpoint nobody listens on: a crashed node's.
pub fn dead_endpoint() -> String {
    format!("http://127.0.0.1:{}", ports::free_port())
}

/// `registration(topic, host)` advertising `grpc` as its endpoint.
pub fn registration_at(topic: &str, host: &str, grpc: &str) -> Registration {
    let mut reg = registration(topic, host);
    reg.advert.endpoints.grpc = Some(grpc.to_string());
    reg
}

/// Logs from the kit, shown for failing tests (`RUST_LOG=svckit=debug`).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "svckit=info".into()),
        )
        .try_init();
}
