//! uprobes shared by every probed process: one tracefs uprobe event per probed function,
//! carrying the eBPF program once, and one program-less perf event per process that puts the
//! process in the event's filter.
//!
//! Why not one aya uprobe per process and function: each of those is a uprobe of its own, and
//! removing one (when its process exits) waits for RCU grace periods while holding the lock
//! every uprobe attach needs, most of a second per process on a small VM, during which no
//! new program can be probed. Here a process's perf event only adds it to, or takes it out of,
//! the uprobe's filter: the uprobe itself lives as long as the agent, and closing the event of
//! a process that exited costs next to nothing. A further gain: the kernel adds the process to
//! the filter before it installs breakpoints, and installs them in any file the process maps
//! later, so a process probed right at exec has them from the moment it loads libssl.

use std::{
    fs,
    io::{self, Write as _},
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

use tracing::debug;

use super::host::TRACEFS;

/// `PERF_TYPE_TRACEPOINT`.
const PERF_TYPE_TRACEPOINT: u32 = 2;
/// `PERF_FLAG_FD_CLOEXEC`.
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;
/// `PERF_EVENT_IOC_SET_BPF`: `_IOW('$', 8, __u32)`.
const PERF_EVENT_IOC_SET_BPF: libc::c_ulong = 0x4004_2408;
/// `PERF_ATTR_SIZE_VER0`: the kernel zero-extends the rest.
const ATTR_SIZE: u32 = 64;

/// Event names, unique in this agent's group.
static NEXT: AtomicU32 = AtomicU32::new(0);

/// One function probed (at entry or return) in one file.
#[derive(Debug)]
pub struct ProbeEvent {
    tracefs: PathBuf,
    /// `group/name` in tracefs.
    event: String,
    id: u64,
    /// A perf event on the agent's own process that carries the eBPF program: the program
    /// belongs to the tracefs event, so it runs for every process in the filter.
    anchor: Option<OwnedFd>,
}

impl ProbeEvent {
    /// Creates the uprobe at `offset` in `path` (entry, or return if `ret`) and gives it
    /// `program`. No process is probed yet.
    pub fn create(
        path: &Path,
        offset: u64,
        ret: bool,
        program: BorrowedFd<'_>,
    ) -> io::Result<Self> {
        let tracefs = tracefs();
        let shown = path
            .to_str()
            .filter(|p| !p.contains(char::is_whitespace))
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "path not expressible in uprobe_events",
                )
            })?;
        let event = format!(
            "{}/p{}",
            group(std::process::id()),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let kind = if ret { 'r' } else { 'p' };
        write_events(&tracefs, &format!("{kind}:{event} {shown}:{offset:#x}\n"))?;
        // Owned from here on, unfinished: an error below drops it, which removes the event.
        let mut probe = Self {
            tracefs,
            event,
            id: 0,
            anchor: None,
        };
        let id = fs::read_to_string(probe.tracefs.join("events").join(&probe.event).join("id"))?;
        probe.id = id.trim().parse().map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad event id {id:?}: {e}"),
            )
        })?;
        let anchor = probe.open(std::process::id())?;
        // SAFETY: valid perf event fd and program fd; the ioctl only reads the program fd.
        let rc = unsafe {
            libc::ioctl(
                anchor.as_raw_fd(),
                PERF_EVENT_IOC_SET_BPF as _,
                program.as_raw_fd(),
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        probe.anchor = Some(anchor);
        Ok(probe)
    }

    /// Adds `pid` to the probe's filter until the returned fd is closed.
    pub fn open(&self, pid: u32) -> io::Result<OwnedFd> {
        let mut attr = [0u64; ATTR_SIZE as usize / 8];
        attr[0] = u64::from(PERF_TYPE_TRACEPOINT) | (u64::from(ATTR_SIZE) << 32);
        attr[1] = self.id;
        let pid = libc::pid_t::try_from(pid)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: `attr` is a zero-initialised perf_event_attr of the size it declares.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_perf_event_open,
                attr.as_ptr(),
                pid,
                -1 as libc::c_int,
                -1 as libc::c_int,
                PERF_FLAG_FD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = i32::try_from(fd).map_err(io::Error::other)?;
        // SAFETY: a new fd this process owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

impl Drop for ProbeEvent {
    fn drop(&mut self) {
        drop(self.anchor.take());
        // Fails while some process's fd is still open (the reaper may hold some): the next
        // start of the agent removes what is left.
        if let Err(e) = write_events(&self.tracefs, &format!("-:{}\n", self.event)) {
            debug!("removing uprobe event {}: {e}", self.event);
        }
    }
}

/// Removes the events left by agents that are gone (killed before they could clean up).
pub fn remove_stale() {
    let tracefs = tracefs();
    let Ok(entries) = fs::read_dir(tracefs.join("events")) else {
        return;
    };
    for e in entries.filter_map(Result::ok) {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("apimon_"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() && pid != std::process::id() {
            continue;
        }
        let Ok(events) = fs::read_dir(e.path()) else {
            continue;
        };
        for ev in events.filter_map(Result::ok) {
            if ev.path().is_dir()
                && let Some(ev) = ev.file_name().to_str()
            {
                let _ = write_events(&tracefs, &format!("-:{}/{ev}\n", group(pid)));
            }
        }
    }
}

fn group(pid: u32) -> String {
    format!("apimon_{pid}")
}

fn tracefs() -> PathBuf {
    let main = Path::new(TRACEFS);
    if main.join("uprobe_events").exists() {
        main.to_path_buf()
    } else {
        PathBuf::from("/sys/kernel/debug/tracing")
    }
}

fn write_events(tracefs: &Path, line: &str) -> io::Result<()> {
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(tracefs.join("uprobe_events"))?;
    f.write_all(line.as_bytes())
}
