//! How busy this process keeps the CPUs it may use, for the adaptive
//! limit: the time its threads ran or waited to run (their demand for
//! CPU, from `/proc/self/task/*/schedstat`), over the wall time × its share
//! of CPUs. Its share is what `std::thread::available_parallelism` finds
//! (its affinity mask, or its cgroup quota when lower), divided among the
//! worker processes that share them. Without schedstat, the time it ran
//! (`getrusage`).
//!
//! The process's own demand, not the machine's use: a node on a host its
//! neighbours fill, but which asks for little CPU, refuses nothing, as
//! refusing its calls would free nothing for them; nodes that share a host
//! (workers, tests, small set-ups) would otherwise all refuse at once. A
//! node whose threads queue for a CPU it shares is busy, though: time
//! waiting to run counts. kratos and go-zero read their own cgroup's
//! usage, which in a container or a systemd unit is the service's own too.

use std::time::Instant;

/// One reading of the counters, to be compared with the next.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reading {
    /// Time the process's threads ran or waited to run, in µs.
    used_us: u64,
    at: Instant,
}

/// The process's share of CPUs, found once.
#[derive(Debug)]
pub(crate) struct CpuGauge {
    /// CPUs' worth of time this process may use.
    share: f64,
}

impl CpuGauge {
    /// The gauge of a process among `processes` that share its CPUs.
    pub(crate) fn new(processes: usize) -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        CpuGauge {
            share: cpus as f64 / processes.max(1) as f64,
        }
    }

    /// The counters now; `None` where they cannot be read.
    pub(crate) fn read(&self) -> Option<Reading> {
        let used_us = demand_us().or_else(run_us)?;
        Some(Reading {
            used_us,
            at: Instant::now(),
        })
    }

    /// The busy share, 0 to 1, between two readings.
    pub(crate) fn usage(&self, before: &Reading, after: &Reading) -> f64 {
        let wall_us = after.at.duration_since(before.at).as_micros() as f64;
        if wall_us <= 0.0 {
            return 0.0;
        }
        let used = after.used_us.saturating_sub(before.used_us) as f64;
        (used / (wall_us * self.share)).clamp(0.0, 1.0)
    }
}

/// Time this process's threads ran plus waited on a run queue, in µs,
/// summed over its threads (threads that ended since are not counted,
/// which a runtime's long-lived threads make rare).
fn demand_us() -> Option<u64> {
    let mut total_ns: u64 = 0;
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) else {
            continue;
        };
        let mut fields = stat.split_ascii_whitespace();
        let ran: u64 = fields.next()?.parse().ok()?;
        let waited: u64 = fields.next()?.parse().ok()?;
        total_ns = total_ns.saturating_add(ran).saturating_add(waited);
    }
    Some(total_ns / 1_000)
}

/// Time this process ran, user and system, in µs.
fn run_us() -> Option<u64> {
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF).ok()?;
    let micros = |t: nix::sys::time::TimeVal| {
        u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000 + u64::try_from(t.tv_usec()).unwrap_or(0)
    };
    Some(micros(usage.user_time()) + micros(usage.system_time()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_that_spins_shows_as_busy_and_an_idle_one_does_not() {
        // A share of one CPU, spun on by this thread.
        let gauge = CpuGauge { share: 1.0 };
        let before = gauge.read().expect("getrusage");
        let start = Instant::now();
        while start.elapsed() < std::time::Duration::from_millis(300) {
            std::hint::spin_loop();
        }
        let after = gauge.read().expect("getrusage");
        let usage = gauge.usage(&before, &after);
        assert!(usage > 0.5, "a CPU spun on for 300 ms shows {usage}");

        // Sleeping uses none of a share of many.
        let gauge = CpuGauge { share: 64.0 };
        let before = gauge.read().expect("getrusage");
        std::thread::sleep(std::time::Duration::from_millis(100));
        let after = gauge.read().expect("getrusage");
        assert!(gauge.usage(&before, &after) < 0.2);
    }

    #[test]
    fn threads_waiting_for_a_shared_cpu_count_as_busy() {
        // Two threads spinning on one CPU: each runs half the time and
        // waits the other half. Counted on a share of two CPUs, running
        // alone shows half busy; running and waiting, all of it.
        let cpu = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))
            .ok()
            .and_then(|set| {
                (0..nix::sched::CpuSet::count()).find(|&c| set.is_set(c).unwrap_or(false))
            })
            .expect("a CPU");
        let gauge = CpuGauge { share: 2.0 };
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let spinners: Vec<_> = (0..2)
            .map(|_| {
                let (stop, ready_tx) = (stop.clone(), ready_tx.clone());
                std::thread::spawn(move || {
                    let mut set = nix::sched::CpuSet::new();
                    set.set(cpu).expect("cpu");
                    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
                        .expect("pin");
                    let _ = ready_tx.send(());
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                })
            })
            .collect();
        for _ in 0..2 {
            ready_rx.recv().expect("pinned");
        }
        let before = gauge.read().expect("counters");
        // The window measured.
        std::thread::sleep(std::time::Duration::from_millis(300));
        let after = gauge.read().expect("counters");
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for spinner in spinners {
            spinner.join().expect("spinner");
        }
        let usage = gauge.usage(&before, &after);
        assert!(usage > 0.8, "two threads on one CPU show {usage} of two");
    }

    #[test]
    fn workers_split_the_cpus() {
        let one = CpuGauge::new(1).share;
        let four = CpuGauge::new(4).share;
        assert!((one / 4.0 - four).abs() < 1e-9, "{one} / 4 != {four}");
    }
}
