//! Holds a process's open of a file carrying OpenSSL until its TLS probes are in.
//!
//! Installing a process's first uprobe waits for an RCU grace period (30-40 ms here), longer
//! than curl takes from exec to its first request. A fanotify permission mark on each file
//! carrying OpenSSL makes the kernel wait for our answer when a process opens one (ld.so loading
//! libssl, a `dlopen`, an `exec` of a program with OpenSSL built in): the control thread probes
//! the process, then allows the open. We never deny, and every hold has a deadline: a process is
//! delayed, never stopped. If the agent dies, the kernel allows whatever was pending.

use std::{
    collections::HashMap,
    fs::File,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc::Sender,
    },
    time::{Duration, Instant},
};

use prometheus::IntCounter;
use tracing::{debug, warn};

use super::{control::Request, tls::FileId};

/// Longest a process waits for its probes; past it, the open is allowed unprobed (the scan
/// after its `exec` or `mmap` probes it a little later). Enforced here, not by the control
/// thread, so that a busy control thread (start-up, a burst of attaches) never stalls a process
/// longer than this.
pub const HOLD_LIMIT: Duration = Duration::from_millis(250);

/// How often expired holds are looked for: the worst wait is `HOLD_LIMIT` plus this.
const EXPIRY_TICK: Duration = Duration::from_millis(20);

/// A fanotify group with permission marks on files carrying OpenSSL, and the opens it holds.
#[derive(Debug)]
pub struct OpenHold {
    group: OwnedFd,
    /// Held opens by sequence number: whoever removes one (the control thread when done, the
    /// reader thread at its deadline) answers it, exactly once.
    pending: Mutex<HashMap<u64, Pending>>,
    next: AtomicU64,
}

#[derive(Debug)]
struct Pending {
    /// The event's descriptor of the file: the answer names it.
    fd: File,
    deadline: Instant,
}

/// An open the kernel is holding until we answer it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeldOpen {
    /// The process opening the file.
    pub pid: u32,
    /// The file being opened.
    pub file: FileId,
    seq: u64,
}

impl OpenHold {
    /// A fanotify group able to hold opens (needs `CAP_SYS_ADMIN`).
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; the descriptor it returns is owned below.
        let fd = unsafe {
            libc::fanotify_init(
                libc::FAN_CLASS_CONTENT | libc::FAN_CLOEXEC | libc::FAN_NONBLOCK,
                (libc::O_RDONLY | libc::O_LARGEFILE | libc::O_CLOEXEC) as u32,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            // SAFETY: `fd` was just returned by fanotify_init and is owned by nobody else.
            group: unsafe { OwnedFd::from_raw_fd(fd) },
            pending: Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
        })
    }

    /// Holds every later open (and exec) of the file at `path` until answered. Only tests
    /// mark by path: one through a process's root fails once the process is gone.
    #[cfg(test)]
    fn watch(&self, path: &std::path::Path) -> io::Result<()> {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        self.mark(libc::AT_FDCWD, c.as_ptr())
    }

    /// Holds every later open (and exec) of `file` until answered: the file opened while a
    /// path reached it (one through a process's root is gone with the process).
    pub fn watch_file(&self, file: &File) -> io::Result<()> {
        self.mark(file.as_raw_fd(), std::ptr::null())
    }

    /// `fanotify_mark` of the file `path` names from `dirfd` (the file `dirfd` is, if null).
    fn mark(&self, dirfd: libc::c_int, path: *const libc::c_char) -> io::Result<()> {
        // SAFETY: valid descriptors; `path` is null or NUL-terminated and outlives the call.
        let r = unsafe {
            libc::fanotify_mark(
                self.group.as_raw_fd(),
                libc::FAN_MARK_ADD,
                libc::FAN_OPEN_PERM,
                dirfd,
                path,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Whether `held` still waits (it may have expired meanwhile).
    #[must_use]
    pub fn waiting(&self, held: HeldOpen) -> bool {
        self.lock().contains_key(&held.seq)
    }

    /// Lets the held open proceed; `false` if it had expired and was let go already.
    pub fn allow(&self, held: HeldOpen) -> bool {
        let pending = self.lock().remove(&held.seq);
        pending.is_some_and(|p| {
            self.answer(p.fd.as_raw_fd());
            true
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Pending>> {
        // A panic elsewhere while holding it cannot leave the map inconsistent.
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn answer(&self, fd: i32) {
        let response = libc::fanotify_response {
            fd,
            response: libc::FAN_ALLOW,
        };
        // SAFETY: writes one plain struct from the stack to a descriptor we own.
        let n = unsafe {
            libc::write(
                self.group.as_raw_fd(),
                (&raw const response).cast(),
                size_of::<libc::fanotify_response>(),
            )
        };
        if n < 0 {
            // ENOENT: the kernel already gave up on it (the process was killed).
            debug!("answering fanotify: {}", io::Error::last_os_error());
        }
    }

    /// Lets go every hold past its deadline; returns how many.
    fn expire(&self, now: Instant) -> u64 {
        let expired: Vec<Pending> = {
            let mut pending = self.lock();
            let due: Vec<u64> = pending
                .iter()
                .filter(|(_, p)| p.deadline <= now)
                .map(|(seq, _)| *seq)
                .collect();
            due.iter().filter_map(|seq| pending.remove(seq)).collect()
        };
        for p in &expired {
            self.answer(p.fd.as_raw_fd());
        }
        expired.len() as u64
    }

    /// Reads held opens until `stop`: the agent's own are allowed at once (it reads these files
    /// itself, and the control thread must never wait for itself), the others go to the
    /// control thread as `Request::Hold`; those still waiting at their deadline are let go and
    /// counted in `expired`. At the end every hold is answered.
    pub fn forward(&self, requests: &Sender<Request>, expired: &IntCounter, stop: &AtomicBool) {
        // Whatever ends this loop (stop, the control thread gone, an error, a panic), the
        // marks go and every open waiting is let go: nobody answers after this thread.
        let _release = Release(self);
        let me = std::process::id();
        // Room for many events per read: a burst of program starts comes at once.
        let mut buf = vec![0u8; 64 * size_of::<libc::fanotify_event_metadata>()];
        let tick = i32::try_from(EXPIRY_TICK.as_millis()).unwrap_or(20);
        while !stop.load(Ordering::Relaxed) {
            expired.inc_by(self.expire(Instant::now()));
            if !self.wait_readable(tick) {
                continue;
            }
            let n = match self.read(&mut buf) {
                Ok(n) => n,
                Err(e) if transient(&e) => {
                    // The kernel could not give us the file (no fd left, no memory): it has
                    // answered that open itself; keep serving the others.
                    warn!("reading fanotify events: {e}");
                    std::thread::sleep(EXPIRY_TICK);
                    continue;
                }
                Err(e) => {
                    warn!("reading fanotify events: {e}; opens are no longer held");
                    return;
                }
            };
            let mut gone = false;
            for (pid, fd) in events(&buf[..n]) {
                // SAFETY: the kernel opened this descriptor for us with the event.
                let fd = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
                // Pid 0: a kernel thread, or a process outside our pid namespace.
                let file = (pid != me && pid != 0 && !gone)
                    .then(|| fd.metadata().ok())
                    .flatten()
                    .map(|m| FileId::from(&m));
                let Some(file) = file else {
                    self.answer(fd.as_raw_fd());
                    continue;
                };
                let seq = self.next.fetch_add(1, Ordering::Relaxed);
                let deadline = Instant::now() + HOLD_LIMIT;
                self.lock().insert(seq, Pending { fd, deadline });
                if requests
                    .send(Request::Hold(HeldOpen { pid, file, seq }))
                    .is_err()
                {
                    // The control thread is gone: answer this one and the rest of the batch.
                    gone = true;
                    self.expire(Instant::now() + HOLD_LIMIT);
                }
            }
            if gone {
                return;
            }
        }
    }

    fn wait_readable(&self, timeout_ms: i32) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.group.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd on the stack.
        unsafe { libc::poll(&raw mut pfd, 1, timeout_ms) > 0 }
    }

    fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: reads into a buffer we own, within its length.
        let n = unsafe { libc::read(self.group.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        usize::try_from(n).map_err(|_negative| io::Error::last_os_error())
    }

    /// Removes every mark, then lets go of every open still waiting or queued.
    fn release_all(&self) {
        // SAFETY: flushing the group's inode marks takes no path.
        unsafe {
            libc::fanotify_mark(
                self.group.as_raw_fd(),
                libc::FAN_MARK_FLUSH,
                0,
                libc::AT_FDCWD,
                std::ptr::null(),
            );
        }
        let mut buf = vec![0u8; 64 * size_of::<libc::fanotify_event_metadata>()];
        while let Ok(n) = self.read(&mut buf) {
            if n == 0 {
                break;
            }
            for (_, fd) in events(&buf[..n]) {
                // SAFETY: the kernel opened this descriptor for us with the event.
                let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                self.answer(fd.as_raw_fd());
            }
        }
        self.expire(Instant::now() + HOLD_LIMIT);
    }
}

/// Runs `release_all` when the reader ends, panics included.
struct Release<'a>(&'a OpenHold);

impl Drop for Release<'_> {
    fn drop(&mut self) {
        self.0.release_all();
    }
}

/// Read errors after which the reader goes on: the kernel answered the event it could not
/// hand over (it denies that one open; see `raise_fd_limit`).
fn transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::EINTR | libc::EAGAIN)
    )
}

/// Raises the soft limit on open files to the hard one: the kernel refuses an open it holds
/// when it cannot give us a descriptor for it, and each probed process takes a few.
pub fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: get/setrlimit on a struct on the stack.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &raw const lim);
        }
    }
}

/// `(pid, fd)` of each permission event in a read.
fn events(mut buf: &[u8]) -> Vec<(u32, i32)> {
    let mut out = Vec::new();
    let header = size_of::<libc::fanotify_event_metadata>();
    while buf.len() >= header {
        // SAFETY: at least `header` bytes remain; read_unaligned copes with any alignment.
        let meta: libc::fanotify_event_metadata =
            unsafe { std::ptr::read_unaligned(buf.as_ptr().cast()) };
        let len = meta.event_len as usize;
        if len < header || len > buf.len() || meta.vers != libc::FANOTIFY_METADATA_VERSION {
            break;
        }
        if meta.fd >= 0 {
            out.push((u32::try_from(meta.pid).unwrap_or(0), meta.fd));
        }
        buf = &buf[len..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(pid: i32, fd: i32, len: u32) -> Vec<u8> {
        let meta = libc::fanotify_event_metadata {
            event_len: len,
            vers: libc::FANOTIFY_METADATA_VERSION,
            reserved: 0,
            metadata_len: u16::try_from(size_of::<libc::fanotify_event_metadata>()).unwrap(),
            mask: libc::FAN_OPEN_PERM,
            fd,
            pid,
        };
        let size = size_of::<libc::fanotify_event_metadata>();
        let mut bytes = vec![0u8; size.max(len as usize)];
        // SAFETY: the buffer holds at least one metadata struct.
        unsafe { std::ptr::write_unaligned(bytes.as_mut_ptr().cast(), meta) };
        bytes.truncate(len as usize);
        bytes
    }

    #[test]
    fn reads_every_event_and_skips_overflow_markers() {
        let n = u32::try_from(size_of::<libc::fanotify_event_metadata>()).unwrap();
        let mut buf = event(10, 5, n);
        buf.extend(event(11, libc::FAN_NOFD, n));
        // An event with trailing info records: its length covers them.
        buf.extend(event(12, 7, n + 16));
        assert_eq!(events(&buf), vec![(10, 5), (12, 7)]);
    }

    #[test]
    fn stops_at_a_torn_or_foreign_event() {
        let n = u32::try_from(size_of::<libc::fanotify_event_metadata>()).unwrap();
        let mut buf = event(10, 5, n);
        buf.extend(&event(11, 6, n)[..8]);
        assert_eq!(events(&buf), vec![(10, 5)]);
        let mut bad = event(10, 5, n);
        bad[4] = 99;
        assert!(events(&bad).is_empty());
        assert!(events(&event(10, 5, 3)).is_empty());
    }

    #[test]
    fn a_file_is_marked_through_its_descriptor_once_its_path_is_gone() {
        let Ok(hold) = OpenHold::new() else {
            println!("skipped: fanotify permission events need CAP_SYS_ADMIN");
            return;
        };
        let path = std::env::temp_dir().join(format!("apimon-hold-{}", std::process::id()));
        std::fs::write(&path, b"x").expect("write");
        let file = File::open(&path).expect("open");
        std::fs::remove_file(&path).expect("remove");
        assert!(hold.watch(&path).is_err());
        hold.watch_file(&file)
            .expect("marked through the descriptor");
    }
}
