//! [`Pool`]: the supervisor's worker processes: starting them, watching
//! them, restarting those that die, replacing them one at a time.

use std::collections::{BTreeMap, VecDeque};
use std::ffi::OsString;
use std::io::Write;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::sync::mpsc;

mod handover;
mod rolling;

pub(super) use handover::listeners;
use rolling::Rolling;

use super::spawn::spawn;
pub(super) use super::watch::Event;
use super::worker::{RESTARTS, STOP, TIMEOUTS};
use crate::servicegroup::Advert;

/// The first restart delay of a crash loop, and its cap.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Starting,
    Ready,
    /// Asked to stop: its exit is not restarted.
    Retiring,
}

struct Worker {
    slot: u32,
    pid: i32,
    started: Instant,
    state: State,
    /// Killed for missing its beats.
    hung: bool,
    /// Where stop requests are written (see [`super::worker`]).
    requests: std::os::unix::net::UnixStream,
    /// Its calls in flight, as it counts them; `None` for a worker adopted
    /// from the supervisor this one replaced in place.
    calls: Option<super::calls::CallCount>,
}

impl Worker {
    /// Asks the worker to stop gracefully. A worker that cannot be told
    /// (its socket is gone) gets SIGTERM.
    fn stop(&mut self) {
        self.state = State::Retiring;
        if (&self.requests).write_all(&[STOP]).is_err() {
            signal_pid(self.pid, Signal::SIGTERM);
        }
    }

    /// Tells the worker how many workers were restarted so far; one that
    /// cannot be told is on its way out anyway.
    fn tell_restarts(&self, restarts: u64, timeouts: u64) {
        let mut message = [RESTARTS; 18];
        message[1..9].copy_from_slice(&restarts.to_be_bytes());
        message[9] = TIMEOUTS;
        message[10..].copy_from_slice(&timeouts.to_be_bytes());
        let _ = (&self.requests).write_all(&message);
    }
}

/// The program a worker runs.
#[derive(Debug, Clone)]
pub(super) struct Program {
    pub(super) path: PathBuf,
    /// Its arguments, `argv[0]` first.
    pub(super) args: Vec<OsString>,
}

/// The worker processes of one supervisor.
pub(super) struct Pool {
    program: Program,
    /// The file `program` names, as resolved at start.
    binary: super::binary::Binary,
    /// The sockets every worker accepts on, by role (`grpc`, `http`).
    listeners: Vec<(&'static str, TcpListener)>,
    /// A worker that dies younger than this restarts after a growing delay.
    min_lifetime: Duration,
    /// A serving worker silent for this long is killed; zero for never.
    timeout: Duration,
    /// The number of workers wanted.
    target: u32,
    workers: BTreeMap<u64, Worker>,
    next_id: u64,
    /// Slots to start again, and when.
    respawns: Vec<(Instant, u32)>,
    /// The delay of the next restart of a worker that died young.
    backoff: Duration,
    restarts: u64,
    /// Of those, the workers killed for missing their beats.
    timeouts: u64,
    rolling: Option<Rolling>,
    /// The last rolling replacement stopped at a replacement that failed.
    roll_failed: bool,
    /// What the workers advertise, from the newest that serves.
    advert: Option<Advert>,
    events_tx: mpsc::UnboundedSender<Event>,
}

impl Pool {
    pub(super) fn new(
        program: Program,
        listeners: Vec<(&'static str, TcpListener)>,
        target: u32,
        min_lifetime: Duration,
        timeout: Duration,
    ) -> (Self, mpsc::UnboundedReceiver<Event>) {
        let (events_tx, events) = mpsc::unbounded_channel();
        let pool = Pool {
            binary: super::binary::Binary::resolve(&program.path),
            program,
            listeners,
            min_lifetime,
            timeout,
            target: target.max(1),
            workers: BTreeMap::new(),
            next_id: 0,
            respawns: Vec::new(),
            backoff: BACKOFF_FIRST,
            restarts: 0,
            timeouts: 0,
            rolling: None,
            roll_failed: false,
            advert: None,
            events_tx,
        };
        (pool, events)
    }

    pub(super) fn target(&self) -> u32 {
        self.target
    }

    pub(super) fn restarts(&self) -> u64 {
        self.restarts
    }

    /// Of the restarts, the workers killed for missing their beats.
    pub(super) fn timeouts(&self) -> u64 {
        self.timeouts
    }

    pub(super) fn advert(&self) -> Option<&Advert> {
        self.advert.as_ref()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    pub(super) fn len(&self) -> usize {
        self.workers.len()
    }

    /// Workers that serve and are not being retired, counted up to the
    /// target: what the record's `workers` says. A replacement serving
    /// beside the worker it replaces does not count twice.
    pub(super) fn serving(&self) -> u32 {
        let serving = self
            .workers
            .values()
            .filter(|w| w.state == State::Ready)
            .count();
        u32::try_from(serving).unwrap_or(u32::MAX).min(self.target)
    }

    /// Starts a worker in every slot that has none (all of them, but
    /// after an upgrade, which adopted some).
    pub(super) fn start_all(&mut self) {
        for slot in 0..self.target {
            if !self
                .workers
                .values()
                .any(|w| w.slot == slot && w.state != State::Retiring)
            {
                self.start_worker(slot);
            }
        }
    }

    fn start_worker(&mut self, slot: u32) -> Option<u64> {
        let fds: Vec<(&str, std::os::fd::RawFd)> = self
            .listeners
            .iter()
            .map(|(name, l)| (*name, l.as_raw_fd()))
            .collect();
        let program = Program {
            path: self.binary.for_next_worker(),
            args: self.program.args.clone(),
        };
        let spawned = match spawn(&program, slot, &fds) {
            Ok(spawned) => spawned,
            Err(e) => {
                tracing::error!(slot, error = %e, "cannot start a worker; retrying");
                self.schedule(slot, true);
                return None;
            }
        };
        let id = self.next_id;
        self.next_id += 1;
        let pid = spawned
            .child
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .unwrap_or(0);
        tracing::info!(slot, pid, "worker started");
        let worker = Worker {
            slot,
            pid,
            started: Instant::now(),
            state: State::Starting,
            hung: false,
            requests: spawned.requests,
            calls: Some(spawned.calls),
        };
        if self.restarts > 0 {
            worker.tell_restarts(self.restarts, self.timeouts);
        }
        self.workers.insert(id, worker);
        let mut child = spawned.child;
        let exit = Box::pin(async move { child.wait().await });
        self.watch(id, exit, spawned.socket, false);
        Some(id)
    }

    /// Starts the task that reports what worker `id` says, and its exit.
    fn watch(
        &self,
        id: u64,
        exit: super::watch::Exit,
        socket: tokio::net::UnixStream,
        serving: bool,
    ) {
        let timeout = Some(self.timeout).filter(|t| !t.is_zero());
        let events = self.events_tx.clone();
        tokio::spawn(super::watch::watch(
            id, exit, socket, timeout, serving, events,
        ));
    }

    pub(super) fn handle(&mut self, event: Event) {
        match event {
            Event::Ready(id, advert) => {
                if let Some(worker) = self.workers.get_mut(&id) {
                    if worker.state == State::Starting {
                        worker.state = State::Ready;
                    }
                    tracing::info!(slot = worker.slot, pid = worker.pid, "worker serving");
                }
                if advert.is_some() {
                    self.advert = advert;
                }
                self.roll_on(Some(id));
            }
            Event::Hung(id) => {
                if let Some(worker) = self.workers.get_mut(&id) {
                    let what = if worker.state == State::Starting {
                        "worker did not report serving within worker_timeout; killing it"
                    } else {
                        "worker sent no beat within worker_timeout (its runtime is blocked or it is stopped); killing it"
                    };
                    // Only the calls inside it fail with it: new
                    // connections go to the workers that accept them.
                    let calls_in_flight = worker.calls.as_ref().map(|c| c.get());
                    tracing::error!(
                        slot = worker.slot,
                        pid = worker.pid,
                        timeout_s = self.timeout.as_secs_f64(),
                        calls_in_flight,
                        "{what}"
                    );
                    worker.hung = true;
                    signal_pid(worker.pid, Signal::SIGKILL);
                }
            }
            Event::Recycle(id) => {
                let Some(worker) = self.workers.get(&id).filter(|w| w.state == State::Ready) else {
                    return;
                };
                tracing::info!(
                    slot = worker.slot,
                    pid = worker.pid,
                    "worker served max_requests; replacing it"
                );
                match &mut self.rolling {
                    Some(rolling) if !rolling.old.contains(&id) => rolling.old.push_back(id),
                    Some(_) => {}
                    None => {
                        self.rolling = Some(Rolling {
                            old: VecDeque::from([id]),
                            waiting_for: None,
                        });
                        self.roll_on(None);
                    }
                }
            }
            Event::Exited(id, status) => {
                let Some(worker) = self.workers.remove(&id) else {
                    return;
                };
                let lived = worker.started.elapsed();
                let reason = if worker.hung {
                    "killed after missing its beats".to_string()
                } else {
                    describe(status)
                };
                if worker.state == State::Retiring {
                    tracing::info!(slot = worker.slot, pid = worker.pid, %reason, "worker stopped");
                    return;
                }
                let young = lived < self.min_lifetime;
                tracing::warn!(slot = worker.slot, pid = worker.pid, %reason, lived = ?lived, "worker exited unasked");
                if self
                    .rolling
                    .as_ref()
                    .is_some_and(|r| r.waiting_for == Some(id))
                {
                    // The worker it was to replace still serves its slot:
                    // nothing to restart.
                    tracing::error!(
                        %reason,
                        "a replacement worker failed to start; the reload stops here and the old workers go on serving"
                    );
                    self.rolling = None;
                    self.roll_failed = true;
                    return;
                }
                self.restarts += 1;
                if worker.hung {
                    self.timeouts += 1;
                }
                for worker in self.workers.values() {
                    worker.tell_restarts(self.restarts, self.timeouts);
                }
                if worker.slot < self.target {
                    self.schedule(worker.slot, young);
                }
            }
        }
    }

    /// Queues `slot` to start again: at once after a worker that lived
    /// long, after a growing delay while workers keep dying young.
    fn schedule(&mut self, slot: u32, young: bool) {
        let delay = if young {
            let delay = self.backoff;
            self.backoff = (self.backoff * 2).min(BACKOFF_CAP);
            delay
        } else {
            self.backoff = BACKOFF_FIRST;
            Duration::ZERO
        };
        tracing::info!(slot, delay_ms = delay.as_millis(), "restarting worker");
        self.respawns.push((Instant::now() + delay, slot));
    }

    pub(super) fn start_due(&mut self) {
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) =
            self.respawns.drain(..).partition(|(at, _)| *at <= now);
        self.respawns = later;
        for (_, slot) in due {
            if slot < self.target {
                self.start_worker(slot);
            }
        }
    }

    /// When a restart is due.
    pub(super) fn next_wake(&self) -> Option<Instant> {
        self.respawns.iter().map(|(at, _)| *at).min()
    }

    fn retire(&mut self, id: u64) {
        if let Some(worker) = self.workers.get_mut(&id) {
            worker.stop();
        }
    }

    /// One worker more or less (SIGTTIN / SIGTTOU), never below one.
    pub(super) fn resize(&mut self, target: u32) {
        let target = target.clamp(1, 1024);
        if target == self.target {
            return;
        }
        tracing::info!(from = self.target, to = target, "changing the worker count");
        let old = std::mem::replace(&mut self.target, target);
        if target > old {
            for slot in old..target {
                self.start_worker(slot);
            }
        } else {
            let extra: Vec<u64> = self
                .workers
                .iter()
                .filter(|(_, w)| w.slot >= target && w.state != State::Retiring)
                .map(|(id, _)| *id)
                .collect();
            for id in extra {
                self.retire(id);
            }
            self.respawns.retain(|(_, slot)| *slot < target);
        }
    }

    /// Asks every worker to stop, and starts none any more.
    pub(super) fn stop_all(&mut self) {
        self.respawns.clear();
        self.rolling = None;
        for worker in self.workers.values_mut() {
            worker.stop();
        }
    }

    pub(super) fn signal_all(&self, signal: Signal) {
        for worker in self.workers.values() {
            signal_pid(worker.pid, signal);
        }
    }

    /// The workers, for the report.
    pub(super) fn report(&self) -> Vec<serde_json::Value> {
        let now = Instant::now();
        self.workers
            .values()
            .map(|w| {
                serde_json::json!({
                    "slot": w.slot,
                    "pid": w.pid,
                    "uptime_secs": now.duration_since(w.started).as_secs_f64(),
                    "state": format!("{:?}", w.state).to_lowercase(),
                })
            })
            .collect()
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // Workers never outlive their supervisor, whatever path ends it.
        self.signal_all(Signal::SIGKILL);
    }
}

pub(super) fn signal_pid(pid: i32, signal: Signal) {
    if pid > 0 {
        let _ = kill(Pid::from_raw(pid), signal);
    }
}

/// An exit status as a log reason: `exit code 70`, `killed by SIGKILL`.
fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signo)) => match Signal::try_from(signo) {
            Ok(signal) => format!("killed by {signal}"),
            Err(_) => format!("killed by signal {signo}"),
        },
        _ => "unknown exit".into(),
    }
}
