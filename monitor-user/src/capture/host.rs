//! What the host must offer the agent, checked in plain words, and the file systems the agent
//! mounts itself when they are missing.

use std::{ffi::CString, fs, path::Path};

/// How a check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// Works, with a limitation worth knowing.
    Warn,
    /// The agent cannot run until this is fixed.
    Fail,
}

/// One line of the preflight report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    /// What was found and, when not Ok, what to do.
    pub detail: String,
}

/// Where tracefs is mounted by default.
pub const TRACEFS: &str = "/sys/kernel/tracing";
/// Where bpffs is mounted by default.
pub const BPFFS: &str = "/sys/fs/bpf";

/// (major, minor) of the running kernel.
#[must_use]
pub fn kernel_version() -> Option<(u32, u32, String)> {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let release = release.trim().to_owned();
    let mut parts = release.split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor, release))
}

/// Effective capabilities of this process (bit n = capability n).
#[must_use]
pub fn effective_caps() -> u64 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

const CAP_DAC_READ_SEARCH: u32 = 2;
const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

fn has(caps: u64, cap: u32) -> bool {
    caps & (1 << cap) != 0
}

fn is_mounted(path: &str, fstype: &str) -> bool {
    fs::read_to_string("/proc/self/mounts").is_ok_and(|m| {
        m.lines().any(|l| {
            let mut f = l.split_whitespace();
            let _dev = f.next();
            f.next() == Some(path) && f.next() == Some(fstype)
        })
    })
}

fn mount(fstype: &str, target: &str) -> std::io::Result<()> {
    let c = |s: &str| CString::new(s).map_err(std::io::Error::other);
    let (src, tgt, ty) = (c(fstype)?, c(target)?, c(fstype)?);
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe { libc::mount(src.as_ptr(), tgt.as_ptr(), ty.as_ptr(), 0, std::ptr::null()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Makes sure tracefs is mounted (syscall tracepoints are attached through it). Returns what
/// was done, for the log.
pub fn ensure_tracefs() -> Result<Option<String>, String> {
    if Path::new(TRACEFS).join("events/syscalls").exists() {
        return Ok(None);
    }
    if Path::new("/sys/kernel/debug/tracing/events/syscalls").exists() {
        return Ok(None);
    }
    mount("tracefs", TRACEFS).map_err(|e| {
        format!("tracefs is not mounted and mounting it at {TRACEFS} failed: {e}; run `mount -t tracefs tracefs {TRACEFS}` as root")
    })?;
    if !Path::new(TRACEFS).join("events/syscalls").exists() {
        return Err(format!(
            "tracefs is mounted at {TRACEFS} but has no events/syscalls: the kernel lacks CONFIG_FTRACE_SYSCALLS"
        ));
    }
    Ok(Some(format!("mounted tracefs at {TRACEFS}")))
}

/// Makes sure bpffs is mounted, as eBPF tooling on the host expects. The agent pins nothing:
/// everything it attaches goes away with its process.
pub fn ensure_bpffs() -> Result<Option<String>, String> {
    if is_mounted(BPFFS, "bpf") {
        return Ok(None);
    }
    mount("bpf", BPFFS).map_err(|e| format!("mounting bpffs at {BPFFS} failed: {e}"))?;
    Ok(Some(format!("mounted bpffs at {BPFFS}")))
}

/// Whether this process can create a BPF ring buffer map: privileges, the bpf() syscall and
/// ring buffers (Linux 5.8) in one probe.
fn can_create_ringbuf() -> Result<(), std::io::Error> {
    #[repr(C)]
    struct MapCreate {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
    }
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_TYPE_RINGBUF: u32 = 27;
    let attr = MapCreate {
        map_type: BPF_MAP_TYPE_RINGBUF,
        key_size: 0,
        value_size: 0,
        max_entries: 4096,
        map_flags: 0,
    };
    // SAFETY: a valid bpf_attr prefix of the size passed; the returned fd is closed below.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            &attr as *const MapCreate,
            size_of::<MapCreate>() as u32,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by the kernel and is owned here.
    unsafe { libc::close(fd as libc::c_int) };
    Ok(())
}

/// Every check `apimon check` reports and `apimon run` requires.
#[must_use]
pub fn preflight() -> Vec<Check> {
    let mut checks = Vec::new();
    let mut push = |name, status, detail: String| {
        checks.push(Check {
            name,
            status,
            detail,
        })
    };

    match kernel_version() {
        Some((major, minor, release)) if (major, minor) >= (5, 8) => {
            push("kernel", Status::Ok, format!("Linux {release}"));
        }
        Some((_, _, release)) => push(
            "kernel",
            Status::Fail,
            format!("Linux {release} is too old: apimon needs 5.8 or newer (BPF ring buffer)"),
        ),
        None => push(
            "kernel",
            Status::Fail,
            "cannot read /proc/sys/kernel/osrelease".into(),
        ),
    }

    let caps = effective_caps();
    let can_bpf = has(caps, CAP_SYS_ADMIN) || (has(caps, CAP_BPF) && has(caps, CAP_PERFMON));
    if can_bpf {
        push(
            "privileges",
            Status::Ok,
            "can load eBPF programs (CAP_BPF+CAP_PERFMON or CAP_SYS_ADMIN)".into(),
        );
    } else {
        push(
            "privileges",
            Status::Fail,
            "not allowed to load eBPF programs: run as root, or grant CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH".into(),
        );
    }
    if can_bpf && !(has(caps, CAP_SYS_PTRACE) && has(caps, CAP_DAC_READ_SEARCH)) {
        push(
            "process access",
            Status::Warn,
            "without CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH, other users' processes cannot be inspected: their TLS libraries and existing connections are missed".into(),
        );
    }

    match can_create_ringbuf() {
        Ok(()) => push(
            "bpf",
            Status::Ok,
            "bpf() works and ring buffers are supported".into(),
        ),
        Err(e) => push(
            "bpf",
            Status::Fail,
            format!(
                "creating a BPF ring buffer failed ({e}): check privileges, kernel.unprivileged_bpf_disabled, seccomp or container limits"
            ),
        ),
    }

    if Path::new("/sys/kernel/btf/vmlinux").exists() {
        push("btf", Status::Ok, "/sys/kernel/btf/vmlinux present".into());
    } else {
        push(
            "btf",
            Status::Warn,
            "no /sys/kernel/btf/vmlinux: today's probes do not need it, but kernel-struct features will be unavailable".into(),
        );
    }

    let tracefs = Path::new(TRACEFS).join("events/syscalls").exists()
        || Path::new("/sys/kernel/debug/tracing/events/syscalls").exists();
    if tracefs {
        push(
            "tracefs",
            Status::Ok,
            "syscall tracepoints available".into(),
        );
    } else if can_bpf {
        push(
            "tracefs",
            Status::Ok,
            format!("not mounted; `apimon run` mounts it at {TRACEFS}"),
        );
    } else {
        push(
            "tracefs",
            Status::Fail,
            format!("not mounted, and mounting needs root: mount -t tracefs tracefs {TRACEFS}"),
        );
    }

    if is_mounted(BPFFS, "bpf") {
        push("bpffs", Status::Ok, format!("mounted at {BPFFS}"));
    } else {
        push(
            "bpffs",
            Status::Ok,
            format!("not mounted; `apimon run` mounts it at {BPFFS} (nothing is pinned)"),
        );
    }

    match fs::read_to_string("/sys/kernel/security/lockdown") {
        Ok(l) if l.contains("[confidentiality]") => push(
            "lockdown",
            Status::Fail,
            "kernel lockdown is in confidentiality mode: eBPF cannot read process memory; boot with lockdown=integrity or none".into(),
        ),
        Ok(l) => {
            let mode = l.split_whitespace().find(|w| w.starts_with('[')).unwrap_or("[none]");
            push("lockdown", Status::Ok, format!("lockdown {mode}: reading process memory is allowed"));
        }
        Err(_) => push("lockdown", Status::Ok, "no lockdown information (securityfs not mounted): assuming none".into()),
    }

    let uprobe = Path::new("/sys/bus/event_source/devices/uprobe/type").exists();
    push(
        "uprobes",
        if uprobe { Status::Ok } else { Status::Warn },
        if uprobe {
            "uprobe PMU available: TLS plaintext can be captured".into()
        } else {
            "no uprobe PMU: TLS plaintext capture may be unavailable".into()
        },
    );
    // Left on after profiling, it has the kernel read the clock twice around every eBPF
    // program run: on a VM, a cost on every hooked syscall of every process.
    let stats = fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled");
    match stats.as_deref().map(str::trim) {
        Ok("0") | Err(_) => push(
            "bpf stats",
            Status::Ok,
            "eBPF run-time statistics off".into(),
        ),
        Ok(v) => push(
            "bpf stats",
            Status::Warn,
            format!(
                "kernel.bpf_stats_enabled={v}: the kernel times every eBPF program run, which adds \
                 to every hooked syscall; `sysctl kernel.bpf_stats_enabled=0` unless you are \
                 profiling eBPF"
            ),
        ),
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preflight_names_every_area() {
        let names: Vec<_> = preflight().iter().map(|c| c.name).collect();
        for n in [
            "kernel",
            "privileges",
            "bpf",
            "btf",
            "tracefs",
            "bpffs",
            "lockdown",
            "uprobes",
            "bpf stats",
        ] {
            assert!(names.contains(&n), "{n} missing from {names:?}");
        }
    }
}
