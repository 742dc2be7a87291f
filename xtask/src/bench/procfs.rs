//! What `/proc` says about one process: CPU time spent and memory held.

use std::{fs, time::Duration};

use anyhow::{Context as _, Result, bail};

/// User plus system CPU time of every thread of `pid` so far.
pub(crate) fn cpu_time(pid: u32) -> Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let stat = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name (field 2) may hold spaces and parentheses: fields count from the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .with_context(|| format!("{path} has no ')'"))?;
    // After ')': field 3 (state) is index 0, so utime (14) and stime (15) are 11 and 12.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .with_context(|| format!("{path} is too short"))?
            .parse::<u64>()
            .with_context(|| format!("{path}: field {} is not a number", i + 3))
    };
    let total = ticks(11)? + ticks(12)?;
    Ok(Duration::from_secs_f64(
        total as f64 / clock_ticks()? as f64,
    ))
}

/// Clock ticks per second, the unit of `utime` and `stime`.
fn clock_ticks() -> Result<u64> {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz <= 0 {
        bail!("sysconf(_SC_CLK_TCK) failed");
    }
    Ok(hz.unsigned_abs() as u64)
}

/// Resident memory of a process, in bytes.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Memory {
    /// `VmRSS`: resident now.
    pub(crate) rss: u64,
    /// `VmHWM`: the most it was ever resident (peak RSS).
    pub(crate) peak: u64,
}

/// `VmRSS` and `VmHWM` of `pid`.
pub(crate) fn memory(pid: u32) -> Result<Memory> {
    let path = format!("/proc/{pid}/status");
    let status = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let field = |name: &str| -> Result<u64> {
        let kib = kib_field(&status, name)
            .with_context(|| format!("{path} has no {name} line with a number of kB"))?;
        Ok(kib * 1024)
    };
    Ok(Memory {
        rss: field("VmRSS:")?,
        peak: field("VmHWM:")?,
    })
}

/// The number of a `Name: N kB` line of `text` (`/proc/meminfo`, `/proc/<pid>/status`);
/// `name` includes the colon.
pub(crate) fn kib_field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Other processes named `apimon` or `bpftrace` (another agent or tracer adds its own probes
/// to every process and so skews every mode).
pub(crate) fn other_tracers(ours: &[u32]) -> Vec<(u32, String)> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found: Vec<(u32, String)> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| !ours.contains(pid))
        .filter_map(|pid| {
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            let comm = comm.trim();
            (comm == "apimon" || comm == "bpftrace").then(|| (pid, comm.to_owned()))
        })
        .collect();
    found.sort_unstable();
    found
}

/// The host's CPU time counters (all CPUs together, in clock ticks) from `/proc/stat`.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct CpuTimes {
    /// Every column: user through steal.
    total: u64,
    /// idle + iowait.
    idle: u64,
    /// Time the hypervisor ran something else while a vCPU wanted to run.
    steal: u64,
}

impl CpuTimes {
    /// The counters now.
    pub(crate) fn now() -> Result<Self> {
        let stat = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        let line = stat
            .lines()
            .find(|l| l.starts_with("cpu "))
            .context("/proc/stat has no cpu line")?;
        // user nice system idle iowait irq softirq steal guest guest_nice; guest time is
        // already inside user and nice.
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .take(8)
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        let at = |i: usize| v.get(i).copied().unwrap_or(0);
        Ok(Self {
            total: v.iter().sum(),
            idle: at(3) + at(4),
            steal: at(7),
        })
    }

    /// Share of all CPU time, from `self` to `later`, that was busy (not idle).
    pub(crate) fn busy_until(self, later: Self) -> f64 {
        let total = later.total.saturating_sub(self.total).max(1) as f64;
        1.0 - later.idle.saturating_sub(self.idle) as f64 / total
    }

    /// Share of all CPU time, from `self` to `later`, stolen by the hypervisor.
    pub(crate) fn steal_until(self, later: Self) -> f64 {
        let total = later.total.saturating_sub(self.total).max(1) as f64;
        later.steal.saturating_sub(self.steal) as f64 / total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_kib_fields() {
        let text = "Name:\tapimon\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\nThreads:\t4\n";
        assert_eq!(kib_field(text, "VmRSS:"), Some(10_240));
        assert_eq!(kib_field(text, "VmHWM:"), Some(20_480));
        assert_eq!(kib_field(text, "Threads:"), Some(4));
        assert_eq!(kib_field(text, "Name:"), None);
        assert_eq!(kib_field(text, "VmSwap:"), None);
        assert_eq!(
            kib_field("MemTotal:        8138612 kB\n", "MemTotal:"),
            Some(8_138_612)
        );
    }
}
