//! [`ProcessLauncher`]: the supervisor's loop over its workers.

use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use super::notify::notify;
use super::spawn::spawn;
use super::worker::{RESTARTS, STOP};
use crate::config::{CommonArgs, Config, RestartMethod};
use crate::error::{exit, Error, Result};
use crate::service;
use crate::servicegroup::{self, Membership, Registration, Registry};
use crate::telemetry::Telemetry;

/// The first restart delay of a crash loop, and its cap.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// Bound on leaving the group at stop (as a single node).
const LEAVE_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause before trying to register again after a failure.
const REJOIN_PAUSE: Duration = Duration::from_secs(1);

/// What a worker's watcher task reports.
enum Event {
    Ready(u64),
    Exited(u64, std::process::ExitStatus),
}

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
    /// Where stop requests are written (see [`super::worker`]).
    requests: std::os::unix::net::UnixStream,
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
    fn tell_restarts(&self, restarts: u64) {
        let mut message = [RESTARTS; 9];
        message[1..].copy_from_slice(&restarts.to_be_bytes());
        let _ = (&self.requests).write_all(&message);
    }
}

/// A rolling replacement of workers (SIGHUP with `restart_method = reload`).
struct Rolling {
    /// Workers still to replace, oldest first.
    old: VecDeque<u64>,
    /// The replacement started for the head of `old`, not serving yet.
    waiting_for: Option<u64>,
}

/// The supervisor of a multi-process node.
#[must_use]
pub struct ProcessLauncher {
    config: Config,
    /// The sockets every worker accepts on, by role (`grpc`, `http`).
    listeners: Vec<(&'static str, TcpListener)>,
    registry: Registry,
    registration: Option<Registration>,
    target: u32,
    reload_from: Option<CommonArgs>,
    telemetry: Option<Telemetry>,
    workers: BTreeMap<u64, Worker>,
    next_id: u64,
    /// Slots to start again, and when.
    respawns: Vec<(Instant, u32)>,
    /// The delay of the next restart of a worker that died young.
    backoff: Duration,
    restarts: u64,
    membership: Option<Box<dyn Membership>>,
    rejoin_at: Option<Instant>,
    rolling: Option<Rolling>,
    notified_ready: bool,
    started_at: SystemTime,
    events_tx: mpsc::UnboundedSender<Event>,
    events: mpsc::UnboundedReceiver<Event>,
}

impl ProcessLauncher {
    /// A supervisor of `workers` processes serving `listeners`, registering
    /// `registration` (if any) in `registry` while one of them serves.
    pub fn new(
        config: Config,
        listeners: Vec<(&'static str, TcpListener)>,
        registry: Registry,
        registration: Option<Registration>,
        workers: u32,
    ) -> Self {
        let (events_tx, events) = mpsc::unbounded_channel();
        ProcessLauncher {
            config,
            listeners,
            registry,
            registration,
            target: workers.max(1),
            reload_from: None,
            telemetry: None,
            workers: BTreeMap::new(),
            next_id: 0,
            respawns: Vec::new(),
            backoff: BACKOFF_FIRST,
            restarts: 0,
            membership: None,
            rejoin_at: None,
            rolling: None,
            notified_ready: false,
            started_at: SystemTime::now(),
            events_tx,
            events,
        }
    }

    /// Re-reads the config from these sources on SIGHUP.
    pub fn reload_from(mut self, args: CommonArgs) -> Self {
        self.reload_from = Some(args);
        self
    }

    /// Applies a reloaded `log_level` to the supervisor's own logs.
    pub fn telemetry(mut self, telemetry: Telemetry) -> Self {
        self.telemetry = Some(telemetry);
        self
    }

    /// Starts the workers and supervises them until TERM or INT.
    pub async fn run(mut self) -> Result<i32> {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        let mut ttin = signal(SignalKind::from_raw(libc::SIGTTIN))?;
        let mut ttou = signal(SignalKind::from_raw(libc::SIGTTOU))?;
        let mut usr2 = signal(SignalKind::user_defined2())?;
        tracing::info!(
            workers = self.target,
            pid = std::process::id(),
            "supervisor starting workers"
        );
        for slot in 0..self.target {
            self.start_worker(slot);
        }
        let stop_signal = loop {
            let wake = self.next_wake();
            tokio::select! {
                _ = term.recv() => break libc::SIGTERM,
                _ = int.recv() => break libc::SIGINT,
                _ = hup.recv() => self.reload().await,
                _ = ttin.recv() => self.resize(self.target.saturating_add(1)),
                _ = ttou.recv() => self.resize(self.target.saturating_sub(1)),
                _ = usr2.recv() => self.report(),
                Some(event) = self.events.recv() => self.handle(event),
                () = sleep_until(wake) => {}
            }
            self.start_due();
            if let Err(e) = self.advertise().await {
                // Another live node holds this identity: nothing to serve for.
                self.kill_all(Signal::SIGKILL);
                return Err(e);
            }
        };

        // Graceful stop: stop advertising, then stop the workers.
        notify("STOPPING=1");
        let timeout = self.config.graceful_shutdown_timeout;
        tracing::info!(
            signal = stop_signal,
            ?timeout,
            "stopping workers gracefully"
        );
        self.leave().await;
        // Clients act on the leave while the workers still accept.
        tokio::select! {
            () = tokio::time::sleep(self.config.drain_delay) => {}
            _ = term.recv() => return Ok(self.second_signal(libc::SIGTERM)),
            _ = int.recv() => return Ok(self.second_signal(libc::SIGINT)),
        }
        self.respawns.clear();
        self.rolling = None;
        for worker in self.workers.values_mut() {
            worker.stop();
        }
        let deadline = (!timeout.is_zero()).then(|| tokio::time::Instant::now() + timeout);
        let mut timed_out = false;
        while !self.workers.is_empty() {
            tokio::select! {
                _ = term.recv() => return Ok(self.second_signal(libc::SIGTERM)),
                _ = int.recv() => return Ok(self.second_signal(libc::SIGINT)),
                _ = usr2.recv() => self.report(),
                Some(event) = self.events.recv() => self.handle(event),
                () = sleep_until_tokio(deadline), if !timed_out => {
                    tracing::error!(?timeout, remaining = self.workers.len(), "graceful stop timed out; killing the remaining workers");
                    self.kill_all(Signal::SIGKILL);
                    timed_out = true;
                }
            }
        }
        tracing::info!("all workers stopped");
        if let Some(path) = &self.config.ready_file {
            let _ = std::fs::remove_file(path);
        }
        if timed_out {
            return Err(Error::ShutdownTimeout(timeout));
        }
        Ok(exit::OK)
    }

    fn second_signal(&mut self, signo: i32) -> i32 {
        tracing::warn!(signal = signo, "second stop signal; killing the workers");
        self.kill_all(Signal::SIGKILL);
        exit::signal(signo)
    }

    fn start_worker(&mut self, slot: u32) -> Option<u64> {
        let fds: Vec<(&str, std::os::fd::RawFd)> = self
            .listeners
            .iter()
            .map(|(name, l)| (*name, l.as_raw_fd()))
            .collect();
        let spawned = match spawn(slot, &fds) {
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
            requests: spawned.requests,
        };
        if self.restarts > 0 {
            worker.tell_restarts(self.restarts);
        }
        self.workers.insert(id, worker);
        let events = self.events_tx.clone();
        let mut child = spawned.child;
        let mut socket = spawned.socket;
        tokio::spawn(async move {
            let mut byte = [0u8; 1];
            let mut reading = true;
            loop {
                tokio::select! {
                    read = socket.read(&mut byte), if reading => {
                        if matches!(read, Ok(1)) {
                            let _ = events.send(Event::Ready(id));
                        }
                        reading = false;
                    }
                    status = child.wait() => {
                        if let Ok(status) = status {
                            let _ = events.send(Event::Exited(id, status));
                        }
                        // The socket closes here, after the worker is gone.
                        return;
                    }
                }
            }
        });
        Some(id)
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Ready(id) => {
                if let Some(worker) = self.workers.get_mut(&id) {
                    if worker.state == State::Starting {
                        worker.state = State::Ready;
                    }
                    tracing::info!(slot = worker.slot, pid = worker.pid, "worker serving");
                }
                self.roll_on(Some(id));
            }
            Event::Exited(id, status) => {
                let Some(worker) = self.workers.remove(&id) else {
                    return;
                };
                let lived = worker.started.elapsed();
                let reason = describe(status);
                if worker.state == State::Retiring {
                    tracing::info!(slot = worker.slot, pid = worker.pid, %reason, "worker stopped");
                    return;
                }
                let young = lived < self.config.min_worker_lifetime;
                tracing::warn!(slot = worker.slot, pid = worker.pid, %reason, lived = ?lived, "worker exited unasked");
                self.restarts += 1;
                for worker in self.workers.values() {
                    worker.tell_restarts(self.restarts);
                }
                if self
                    .rolling
                    .as_ref()
                    .is_some_and(|r| r.waiting_for == Some(id))
                {
                    tracing::error!("a replacement worker failed to start; the reload stops here");
                    self.rolling = None;
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

    fn start_due(&mut self) {
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

    /// When the loop must wake up by itself: a restart or a rejoin is due.
    fn next_wake(&self) -> Option<Instant> {
        self.respawns
            .iter()
            .map(|(at, _)| *at)
            .chain(self.rejoin_at)
            .min()
    }

    fn serving(&self) -> usize {
        self.workers
            .values()
            .filter(|w| w.state == State::Ready)
            .count()
    }

    /// Joins the group while a worker serves, leaves it while none does.
    /// Only a duplicate identity is an error: anything else is retried.
    async fn advertise(&mut self) -> Result<()> {
        let serving = self.serving() > 0;
        if serving && self.membership.is_none() {
            if self.rejoin_at.is_some_and(|at| at > Instant::now()) {
                return Ok(());
            }
            let Some(registration) = self.registration.clone() else {
                return Ok(());
            };
            match self.registry.join(registration).await {
                Ok(membership) => {
                    tracing::info!(workers = self.target, "node registered");
                    if let (Some(path), Some(registration)) =
                        (&self.config.ready_file, &self.registration)
                    {
                        if let Err(e) = service::write_ready_file(path, &registration.endpoints) {
                            tracing::error!(path = %path.display(), error = %e, "cannot write the ready file");
                        }
                    }
                    self.membership = Some(membership);
                    self.rejoin_at = None;
                    if !self.notified_ready {
                        notify("READY=1");
                        self.notified_ready = true;
                    }
                }
                Err(e @ Error::Duplicate { .. }) => return Err(e),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot register the node; retrying");
                    self.rejoin_at = Some(Instant::now() + REJOIN_PAUSE);
                }
            }
        } else if !serving && self.membership.is_some() {
            tracing::warn!("no worker serves; the node leaves the group until one does");
            self.leave().await;
        }
        Ok(())
    }

    async fn leave(&mut self) {
        if let Some(membership) = self.membership.take() {
            match tokio::time::timeout(LEAVE_TIMEOUT, membership.leave()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "leaving the group failed; the lease will expire")
                }
                Err(_) => tracing::warn!("leaving the group timed out; the lease will expire"),
            }
        }
    }

    /// SIGHUP: re-read the config, then replace or reset the workers.
    async fn reload(&mut self) {
        notify("RELOADING=1");
        if let Some(args) = &self.reload_from {
            match Config::load(args) {
                Ok(new) => match self.config.apply_mutable(&new) {
                    Ok((applied, ignored)) => {
                        if !ignored.is_empty() {
                            tracing::warn!(options = ?ignored, "changed options need a restart of the supervisor; keeping their running values");
                        }
                        tracing::info!(changed = ?applied, "config reloaded");
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "config reload failed; keeping the running config")
                    }
                },
                Err(e) => {
                    tracing::error!(error = %e, "config reload failed; keeping the running config")
                }
            }
        }
        if let Some(telemetry) = &self.telemetry {
            if let Err(e) = telemetry.apply(&self.config) {
                tracing::error!(error = %e, "cannot apply the new log filter");
            }
        }
        match self.config.restart_method {
            RestartMethod::Mutate => {
                for worker in self.workers.values() {
                    signal_pid(worker.pid, Signal::SIGHUP);
                }
            }
            RestartMethod::Reload => {
                let old: VecDeque<u64> = self
                    .workers
                    .iter()
                    .filter(|(_, w)| w.state != State::Retiring)
                    .map(|(id, _)| *id)
                    .collect();
                tracing::info!(workers = old.len(), "replacing workers one at a time");
                self.rolling = Some(Rolling {
                    old,
                    waiting_for: None,
                });
                self.roll_on(None);
            }
        }
        notify("READY=1");
    }

    /// Moves a rolling replacement on: when the awaited replacement serves,
    /// the worker it replaces stops and the next replacement starts.
    fn roll_on(&mut self, ready: Option<u64>) {
        let Some(mut rolling) = self.rolling.take() else {
            return;
        };
        if let Some(waiting) = rolling.waiting_for {
            if ready != Some(waiting) {
                self.rolling = Some(rolling);
                return;
            }
            if let Some(old) = rolling.old.pop_front() {
                self.retire(old);
            }
            rolling.waiting_for = None;
        }
        // Skip workers that went away meanwhile.
        while let Some(&old) = rolling.old.front() {
            match self.workers.get(&old) {
                Some(w) if w.state != State::Retiring => {
                    let slot = w.slot;
                    rolling.waiting_for = self.start_worker(slot);
                    if rolling.waiting_for.is_some() {
                        self.rolling = Some(rolling);
                    }
                    return;
                }
                _ => {
                    rolling.old.pop_front();
                }
            }
        }
        tracing::info!("all workers replaced");
    }

    fn retire(&mut self, id: u64) {
        if let Some(worker) = self.workers.get_mut(&id) {
            worker.stop();
        }
    }

    /// SIGTTIN / SIGTTOU: one worker more or less, never below one.
    fn resize(&mut self, target: u32) {
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

    fn kill_all(&self, signal: Signal) {
        for worker in self.workers.values() {
            signal_pid(worker.pid, signal);
        }
    }

    /// SIGUSR2: the supervisor's report (stderr or `report_dir`); each worker
    /// writes its own.
    fn report(&self) {
        let now = Instant::now();
        let workers: Vec<_> = self
            .workers
            .values()
            .map(|w| {
                serde_json::json!({
                    "slot": w.slot,
                    "pid": w.pid,
                    "uptime_secs": now.duration_since(w.started).as_secs_f64(),
                    "state": format!("{:?}", w.state).to_lowercase(),
                })
            })
            .collect();
        let uptime = SystemTime::now()
            .duration_since(self.started_at)
            .unwrap_or_default();
        let report = serde_json::json!({
            "supervisor": {
                "pid": std::process::id(),
                "started_at": servicegroup::rfc3339(self.started_at),
                "uptime_secs": uptime.as_secs_f64(),
                "workers_wanted": self.target,
                "workers_serving": self.serving(),
                "restarts": self.restarts,
                "registered": self.membership.is_some(),
                "membership": self.membership.as_ref().map(|m| m.status()),
            },
            "workers": workers,
        });
        crate::report::emit(&report, self.config.report_dir.as_deref(), "supervisor");
        self.kill_all(Signal::SIGUSR2);
    }
}

fn signal_pid(pid: i32, signal: Signal) {
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

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_tokio(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Drop for ProcessLauncher {
    fn drop(&mut self) {
        // Workers never outlive their supervisor, whatever path ends it.
        self.kill_all(Signal::SIGKILL);
    }
}
