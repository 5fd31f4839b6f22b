//! How busy the CPUs this process may run on are, for the adaptive limit:
//! the busy share of the CPUs in its affinity mask (`/proc/stat`), or of
//! its cgroup's CPU quota (`cpu.max`) when it has one, whichever is higher.
//! A node squeezed by its neighbours is as overloaded as one that fills
//! the CPUs itself, so this is the machine's view, not the process's.

use std::time::Instant;

/// One reading of the counters, to be compared with the next.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reading {
    /// Busy and total jiffies of the CPUs in the affinity mask.
    busy: u64,
    total: u64,
    /// Microseconds of CPU the cgroup used, and when that was read.
    cgroup_usage_us: Option<u64>,
    at: Instant,
}

/// The CPUs to count and the cgroup quota, found once.
#[derive(Debug)]
pub(crate) struct CpuGauge {
    /// CPU numbers this process may run on; empty for all.
    cpus: Vec<usize>,
    /// The cgroup's `cpu.stat` path and its quota in CPUs, if it has one.
    cgroup: Option<(std::path::PathBuf, f64)>,
}

impl CpuGauge {
    pub(crate) fn new() -> Self {
        CpuGauge {
            cpus: affinity(),
            cgroup: cgroup_quota(),
        }
    }

    /// The counters now; `None` where `/proc` cannot be read.
    pub(crate) fn read(&self) -> Option<Reading> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let (mut busy, mut total) = (0, 0);
        for line in stat.lines() {
            let Some(rest) = line.strip_prefix("cpu") else {
                break;
            };
            let mut fields = rest.split_ascii_whitespace();
            // The first line, "cpu", sums every CPU; "cpuN" is one.
            let Ok(n) = fields.next().unwrap_or_default().parse::<usize>() else {
                continue;
            };
            if !self.cpus.is_empty() && !self.cpus.contains(&n) {
                continue;
            }
            let ticks: Vec<u64> = fields.filter_map(|f| f.parse().ok()).collect();
            // user nice system idle iowait irq softirq steal (guest is in user).
            let all: u64 = ticks.iter().take(8).sum();
            let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
            busy += all.saturating_sub(idle);
            total += all;
        }
        let cgroup_usage_us = self.cgroup.as_ref().and_then(|(path, _)| {
            let stat = std::fs::read_to_string(path).ok()?;
            stat.lines()
                .find_map(|l| l.strip_prefix("usage_usec "))
                .and_then(|v| v.trim().parse().ok())
        });
        Some(Reading {
            busy,
            total,
            cgroup_usage_us,
            at: Instant::now(),
        })
    }

    /// The busy share, 0 to 1, between two readings.
    pub(crate) fn usage(&self, before: &Reading, after: &Reading) -> f64 {
        let total = after.total.saturating_sub(before.total);
        let mut usage = if total == 0 {
            0.0
        } else {
            after.busy.saturating_sub(before.busy) as f64 / total as f64
        };
        if let (Some((_, quota)), Some(b), Some(a)) =
            (&self.cgroup, before.cgroup_usage_us, after.cgroup_usage_us)
        {
            let wall_us = after.at.duration_since(before.at).as_micros() as f64;
            if wall_us > 0.0 {
                usage = usage.max(a.saturating_sub(b) as f64 / (wall_us * quota));
            }
        }
        usage.clamp(0.0, 1.0)
    }
}

/// The CPUs in this process's affinity mask; empty when unknown.
fn affinity() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set, and the kernel
    // writes at most its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect()
    }
}

/// The cgroup v2 `cpu.stat` of this process and its quota in CPUs, when
/// `cpu.max` sets one.
fn cgroup_quota() -> Option<(std::path::PathBuf, f64)> {
    let membership = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = membership.lines().find_map(|l| l.strip_prefix("0::"))?;
    let dir = std::path::Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/'));
    let max = std::fs::read_to_string(dir.join("cpu.max")).ok()?;
    let mut fields = max.split_ascii_whitespace();
    let quota: f64 = fields.next()?.parse().ok()?;
    let period: f64 = fields.next()?.parse().ok()?;
    (period > 0.0 && quota > 0.0).then(|| (dir.join("cpu.stat"), quota / period))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spinning_thread_on_one_cpu_shows_as_busy() {
        let gauge = CpuGauge {
            cpus: affinity().into_iter().take(1).collect(),
            cgroup: None,
        };
        let cpu = gauge.cpus[0];
        // Pin this thread to that CPU and spin there.
        // SAFETY: as in `affinity`.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            assert_eq!(
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
                0
            );
        }
        let before = gauge.read().expect("/proc/stat");
        let start = Instant::now();
        while start.elapsed() < std::time::Duration::from_millis(300) {
            std::hint::spin_loop();
        }
        let after = gauge.read().expect("/proc/stat");
        let usage = gauge.usage(&before, &after);
        assert!(usage > 0.5, "one CPU spun on for 300 ms shows {usage}");
    }
}
