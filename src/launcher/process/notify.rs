//! systemd's `sd_notify` protocol: one datagram per state change to the
//! socket named by `NOTIFY_SOCKET`, when it is set.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Sends `state` (`READY=1`, `RELOADING=1`, `STOPPING=1`) if this process
/// runs under systemd; failures are logged, never fatal.
pub(super) fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let path = path.to_string_lossy().into_owned();
    let address = match path.strip_prefix('@') {
        // Linux abstract namespace.
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
        None => SocketAddr::from_pathname(&path),
    };
    let sent = address.and_then(|address| {
        let socket = UnixDatagram::unbound()?;
        socket.send_to_addr(state.as_bytes(), &address)
    });
    if let Err(e) = sent {
        tracing::warn!(socket = %path, state, error = %e, "cannot notify systemd");
    }
}

/// Under systemd's watchdog (`WatchdogSec=`, which sets `WATCHDOG_USEC`,
/// and `WATCHDOG_PID` when it is meant for one process), sends
/// `WATCHDOG=1` every half period from a task on this runtime: a runtime
/// that blocks stops sending, and systemd restarts the service. Workers
/// have the supervisor's `worker_timeout` instead.
pub(crate) fn watchdog() {
    let Some(period) = std::env::var("WATCHDOG_USEC")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|&usec| usec > 0)
    else {
        return;
    };
    if std::env::var("WATCHDOG_PID")
        .ok()
        .and_then(|pid| pid.parse::<u32>().ok())
        .is_some_and(|pid| pid != std::process::id())
    {
        return;
    }
    let every = std::time::Duration::from_micros(period / 2);
    tracing::info!(
        every_ms = every.as_millis(),
        "sending systemd watchdog keep-alives"
    );
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        loop {
            ticks.tick().await;
            notify("WATCHDOG=1");
        }
    });
}
