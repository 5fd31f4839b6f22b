//! The steady call loop by topic, and the row of figures each fault
//! prints.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use svckit::rpc::RpcChannel;
use tokio::task::JoinHandle;

use crate::echo::pb::echo_client::EchoClient;
use crate::echo::pb::EchoRequest;
use crate::harness::WAIT;

/// Pause between two calls of one caller of the steady loop.
pub const PACE: Duration = Duration::from_millis(10);
/// Callers of the steady loop: enough that one stuck on a frozen node does
/// not stop the loop.
pub const CALLERS: usize = 4;

/// What the steady loop saw.
#[derive(Default)]
struct Tally {
    ok: u64,
    /// Per host: successes and the time of the last one.
    hosts: HashMap<String, (u64, Instant)>,
    failed: Vec<(Instant, tonic::Status)>,
}

/// Callers sending Echo by topic, one call each [`PACE`], until stopped.
pub struct CallLoop {
    tally: Arc<Mutex<Tally>>,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// The loop's totals.
#[derive(Debug)]
pub struct Calls {
    pub ok: u64,
    pub failed: Vec<tonic::Status>,
}

impl Calls {
    /// `failed of total` for the table.
    pub fn figure(&self) -> String {
        format!(
            "{} of {}",
            self.failed.len(),
            self.ok + self.failed.len() as u64
        )
    }
}

impl CallLoop {
    pub fn start(channel: RpcChannel) -> CallLoop {
        let tally = Arc::new(Mutex::new(Tally::default()));
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let tasks = (0..CALLERS)
            .map(|_| {
                let mut client = EchoClient::new(channel.clone());
                let tally = tally.clone();
                let mut stopped = stopped.clone();
                tokio::spawn(async move {
                    while !*stopped.borrow() {
                        let reply = client
                            .echo(EchoRequest {
                                payload: b"steady".to_vec(),
                            })
                            .await;
                        let now = Instant::now();
                        {
                            let mut t = tally.lock().unwrap();
                            match reply {
                                Ok(r) => {
                                    t.ok += 1;
                                    let e = t.hosts.entry(r.into_inner().host).or_insert((0, now));
                                    e.0 += 1;
                                    e.1 = now;
                                }
                                Err(status) => t.failed.push((now, status)),
                            }
                        }
                        // A steady load is paced by the clock: one call per
                        // PACE, whatever happens to the fleet meanwhile.
                        tokio::select! {
                            _ = tokio::time::sleep(PACE) => {}
                            _ = stopped.changed() => {}
                        }
                    }
                })
            })
            .collect();
        CallLoop { tally, stop, tasks }
    }

    pub fn ok(&self) -> u64 {
        self.tally.lock().unwrap().ok
    }

    /// Calls failed so far.
    pub fn failed(&self) -> usize {
        self.tally.lock().unwrap().failed.len()
    }

    /// Waits until `n` more calls succeeded than now.
    pub async fn wait_ok(&self, n: u64, what: &str) {
        let target = self.ok() + n;
        crate::support::eventually(WAIT, what, || {
            let ok = self.ok() >= target;
            async move { ok.then_some(()) }
        })
        .await;
    }

    /// Waits until a call landed on each of `hosts` after `after`; returns
    /// the time from `since`.
    pub async fn wait_hosts_served(
        &self,
        hosts: &[String],
        after: Instant,
        since: Instant,
        what: &str,
    ) -> Duration {
        crate::support::eventually(WAIT, what, || {
            let t = self.tally.lock().unwrap();
            let all = hosts
                .iter()
                .all(|h| t.hosts.get(h).is_some_and(|(_, last)| *last > after));
            async move { all.then_some(()) }
        })
        .await;
        since.elapsed()
    }

    /// Stops the callers, waits for their last calls, and sums up.
    pub async fn stop(self) -> Calls {
        let _ = self.stop.send(true);
        for task in self.tasks {
            task.await.expect("caller task");
        }
        let t = self.tally.lock().unwrap();
        Calls {
            ok: t.ok,
            failed: t.failed.iter().map(|(_, s)| s.clone()).collect(),
        }
    }
}

/// One row of the fault table.
pub struct Row<'a> {
    pub fault: &'a str,
    pub calls: &'a Calls,
    /// Until a library watcher showed the fault; `None`: by design it never
    /// shows (the fleet stays up).
    pub reflected: Option<Duration>,
    /// Until the fleet was whole again.
    pub recovered: Option<Duration>,
    pub note: String,
}

fn secs(d: Option<Duration>) -> String {
    d.map_or_else(|| "—".to_string(), |d| format!("{:.2} s", d.as_secs_f64()))
}

impl Row<'_> {
    /// Prints the row; `scripts/faults` collects the `fault-table:` lines.
    pub fn print(&self) {
        eprintln!(
            "fault-table: | {} | {} | {} | {} | {} |",
            self.fault,
            self.calls.figure(),
            secs(self.reflected),
            secs(self.recovered),
            self.note
        );
    }
}

/// Fails unless every call succeeded, naming the failures.
pub fn assert_no_failed_call(calls: &Calls, fault: &str) {
    assert!(
        calls.failed.is_empty(),
        "{fault}: {} of {} calls failed: {:?}",
        calls.failed.len(),
        calls.ok + calls.failed.len() as u64,
        calls.failed
    );
    assert!(calls.ok > 0, "{fault}: no call succeeded");
}
