//! The control thread: owns the loaded programs and the maps userspace writes. It decides which
//! processes get TLS probes and attaches them, finds connections open before start, finds
//! where connections go when the kernel could not say, mutes connections the pipeline gave up
//! on, and exports the kernel's drop counters.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc::{Receiver, RecvTimeoutError, Sender},
    },
    time::{Duration, Instant},
};

use aya::maps::{MapData, PerCpuArray};
use common::{ConnState, FdKey, counter, proto};
use tracing::{debug, info, warn};

use super::{
    backfill,
    hold::{HeldOpen, OpenHold},
    peer::{self, Peer},
    records::Opened,
    tls::TlsAttacher,
};
use crate::output::metrics::{Metrics, ShedStage};

/// Work for the control thread.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// A process executed a program (`exec`) or mapped an executable file: look for OpenSSL.
    Scan { pid: u32, exec: bool },
    /// A process opened a connection to a third party (`third_party`), or to an internal
    /// peer or from a client of its own. Sent once per process and kind.
    Peer { pid: u32, third_party: bool },
    /// Find out where an unverified connection goes, or that it is not TCP.
    Resolve { pid: u32, fd: u32, conn_id: u64 },
    /// Stop forwarding a connection's bytes.
    Mute { pid: u32, fd: u32, conn_id: u64 },
    /// A process exited: drop what the kernel still holds for these fds, and its probes.
    Forget { pid: u32, fds: Vec<u32> },
    /// A process is opening a file carrying OpenSSL and waits for our answer.
    Hold(HeldOpen),
}

/// What the control thread tells the pipeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// A connection found open at start.
    Opened(Opened),
    /// Where a connection the kernel could not place goes, as far as userspace can tell.
    Resolved { conn_id: u64, peer: Peer },
    /// Start-up work is done: TLS libraries inspected, processes probed where due, open
    /// connections found.
    Ready,
}

/// Names of the kernel drop counters in `apimon_events_lost_total{reason}`.
const LOST_REASONS: [(u32, &str); 6] = [
    (counter::RINGBUF_FULL_DATA, "ringbuf_full"),
    (counter::RINGBUF_FULL_CONTROL, "ringbuf_full_control"),
    (counter::TLS_NO_SOCKET, "tls_no_socket"),
    (counter::ARGS_MAP_FULL, "args_map_full"),
    (counter::FDS_MAP_FULL, "fds_map_full"),
    (counter::READ_FAILED, "read_failed"),
];

/// Which processes get TLS probes (see `config::TlsProbe`).
#[derive(Clone, Debug, Default)]
pub struct TlsPolicy {
    /// Every process using OpenSSL, not only those that talk to third parties.
    pub all: bool,
    /// Processes always probed, by `comm` or executable path.
    pub processes: Vec<String>,
    /// Extra files to inspect for OpenSSL at start.
    pub paths: Vec<std::path::PathBuf>,
    /// Opens of files carrying OpenSSL wait for the opener's probes (see `hold`).
    pub hold: Option<Arc<OpenHold>>,
}

/// What the control thread knows of a process, for TLS probing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Interest {
    /// A new program, probed until its first connection says otherwise: a short-lived client
    /// is covered from its first call, before the probes could follow its connect.
    Provisional,
    /// Talks to a third party, or is configured: probed until it exits.
    Wanted,
    /// Its first peer was internal, or it served a client: not probed.
    Quiet,
}

/// The control thread's state.
pub struct Control {
    pub ebpf: aya::Ebpf,
    pub fds: aya::maps::HashMap<MapData, FdKey, ConnState>,
    pub counters: PerCpuArray<MapData, u64>,
    /// `tgid -> 1` for probed processes (the kernel skips TLS bookkeeping for the others).
    pub probed: aya::maps::HashMap<MapData, u32, u8>,
    pub tls: Option<TlsAttacher>,
    pub policy: TlsPolicy,
    pub metrics: Arc<Metrics>,
    interest: HashMap<u32, Interest>,
    /// Counter sums already exported, to turn them into increments.
    exported: [u64; counter::COUNT as usize],
    /// Pending scans: when, how many follow-up scans after that, and whether this one reads
    /// files never seen (follow-ups do).
    scans: HashMap<u32, (Instant, u8, bool)>,
    next_id: u64,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("scans", &self.scans.len())
            .finish_non_exhaustive()
    }
}

impl Control {
    /// `policy`: which processes get TLS probes, or `None` to capture no TLS plaintext.
    #[must_use]
    pub fn new(
        kernel: super::loader::Kernel,
        policy: Option<TlsPolicy>,
        metrics: Arc<Metrics>,
    ) -> (Self, aya::maps::RingBuf<MapData>) {
        let control = Self {
            ebpf: kernel.ebpf,
            fds: kernel.fds,
            counters: kernel.counters,
            probed: kernel.probed,
            tls: policy.is_some().then(TlsAttacher::new),
            policy: policy.unwrap_or_default(),
            metrics,
            interest: HashMap::new(),
            exported: [0; counter::COUNT as usize],
            scans: HashMap::new(),
            next_id: 0,
        };
        (control, kernel.ring)
    }

    /// Runs until `stop`; dropping `self` at the end detaches every program.
    pub fn run(
        mut self,
        requests: &Receiver<Request>,
        notices: &Sender<Notice>,
        stop: &AtomicBool,
    ) {
        self.start(notices);
        let mut last_export = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let wait = self
                .next_scan_in()
                .unwrap_or(Duration::from_millis(200))
                .min(Duration::from_millis(200));
            match requests.recv_timeout(wait) {
                Ok(r) => self.handle(r, notices),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            while let Ok(r) = requests.try_recv() {
                self.handle(r, notices);
            }
            self.run_due_scans();
            self.hold_found();
            if last_export.elapsed() >= Duration::from_secs(1) {
                self.export_counters();
                last_export = Instant::now();
            }
        }
        self.export_counters();
        info!("detaching every program");
    }

    /// Start-up: inspect TLS libraries, probe configured processes, then find connections
    /// already open (the processes of those to remote peers are probed provisionally; the
    /// pipeline's verdict on each peer follows).
    fn start(&mut self, notices: &Sender<Notice>) {
        self.start_tls();
        let found = backfill::scan(std::process::id(), &mut self.next_id);
        let mut conns = 0;
        let mut clients = Vec::new();
        for f in found {
            // NOEXIST: a connection the kernel saw open meanwhile is already more precise.
            if self.fds.insert(f.key, f.state, BPF_NOEXIST).is_err() {
                continue;
            }
            if let Some(opened) = f.opened {
                conns += 1;
                if opened.role != super::records::Role::Server
                    && opened.remote.is_some_and(|r| !r.ip().is_loopback())
                {
                    clients.push(opened.pid);
                }
                let _ = notices.send(Notice::Opened(opened));
            }
        }
        // Processes already talking to a remote peer are probed before `ready`, so that their
        // next call is seen; the pipeline's verdict on the peer follows and may unprobe them.
        if self.tls.is_some() && !self.policy.all {
            clients.sort_unstable();
            clients.dedup();
            for pid in clients {
                self.interest.entry(pid).or_insert(Interest::Provisional);
                self.probe(pid, true);
            }
            self.publish_tls();
        }
        info!("found {conns} TCP connections open before start");
        // Opens are held only from here on, where this thread answers them at once: marked
        // before the scan above (hundreds of milliseconds on a busy host), an open would wait
        // out its whole hold and go on unprobed all the same. The files were opened when
        // found, so a process that exited meanwhile takes no path with it.
        self.hold_found();
        let _ = notices.send(Notice::Ready);
    }

    /// Start-up of TLS capture: stale uprobes go, every file carrying OpenSSL is inspected
    /// (with `tls_probe = "all"`: probed in every process), configured processes are probed.
    fn start_tls(&mut self) {
        let Some(tls) = self.tls.as_mut() else {
            return;
        };
        super::probe_events::remove_stale();
        let mut paths = super::tls::default_candidates();
        paths.extend(self.policy.paths.iter().cloned());
        for p in paths {
            if self.policy.all {
                tls.probe_path_everywhere(&mut self.ebpf, &p);
            } else {
                tls.inspect_path(&p);
            }
        }
        let me = std::process::id();
        for pid in super::procfs::pids().into_iter().filter(|&pid| pid != me) {
            if self.policy.all {
                self.probe(pid, true);
                continue;
            }
            if let Some(tls) = self.tls.as_mut() {
                tls.inspect_pid(pid);
            }
            if self.configured(pid) {
                self.interest.insert(pid, Interest::Wanted);
                self.probe(pid, true);
            }
        }
        self.publish_tls();
    }

    fn handle(&mut self, request: Request, notices: &Sender<Notice>) {
        match request {
            Request::Scan { pid, exec } => {
                if self.tls.is_none() {
                    return;
                }
                if exec && !self.policy.all {
                    let interest = if self.configured(pid) {
                        Interest::Wanted
                    } else {
                        Interest::Provisional
                    };
                    self.interest.insert(pid, interest);
                    // A program known to use OpenSSL: probe it now, before it maps the files.
                    if self.probe_with(pid, |tls, ebpf| tls.probe_at_exec(ebpf, pid)) > 0 {
                        self.publish_tls();
                    }
                }
                if !self.wants_probes(pid) {
                    return;
                }
                // A library was just mapped: look as soon as the requests waiting now are
                // read (a program start maps dozens of files in a burst: one look serves
                // them all), the process may use it within milliseconds. Right after exec
                // the loader has not mapped the libraries yet: look now and twice more.
                let now = Instant::now();
                let entry = self.scans.entry(pid).or_insert((now, 0, false));
                entry.0 = now;
                // Files never seen are read on the follow-up looks, not now: that takes
                // milliseconds each, and the libssl most processes load is known already.
                entry.1 = entry.1.max(if exec { 2 } else { 1 });
            }
            Request::Resolve { pid, fd, conn_id } => {
                // The fd is looked at now, perhaps long after the kernel saw the connection:
                // closed and reused meanwhile, it is another connection, whose peer would be
                // given to this one's calls. The kernel's table says which connection it is.
                // Checked again once asked: the fd may have been reused while we asked.
                let asked = self
                    .tracks(pid, fd, conn_id)
                    .then(|| peer::resolve(pid, fd));
                let peer = asked
                    .filter(|_| self.tracks(pid, fd, conn_id))
                    .unwrap_or(Peer::Gone);
                if peer == Peer::NotTcp {
                    self.forget(pid, fd, conn_id);
                }
                let _ = notices.send(Notice::Resolved { conn_id, peer });
            }
            Request::Mute { pid, fd, conn_id } => {
                let key = FdKey { tgid: pid, fd };
                if let Ok(mut st) = self.fds.get(&key, 0)
                    && st.conn_id == conn_id
                {
                    st.raw_proto = proto::OTHER;
                    st.tls_proto = proto::OTHER;
                    // BPF_EXIST: never recreate an entry the kernel removed meanwhile.
                    let _ = self.fds.insert(key, st, BPF_EXIST);
                }
            }
            Request::Peer { pid, third_party } => self.peer(pid, third_party),
            Request::Hold(held) => self.hold(held),
            Request::Forget { pid, fds } => {
                for fd in fds {
                    let _ = self.fds.remove(&FdKey { tgid: pid, fd });
                }
                self.interest.remove(&pid);
                self.scans.remove(&pid);
                self.unprobe(pid);
            }
        }
    }

    /// Probes a process opening a file carrying OpenSSL (unless it is known not to need it),
    /// then lets the open go on. A process never seen before is probed provisionally: it is
    /// about to use TLS, and its first connection decides.
    fn hold(&mut self, held: HeldOpen) {
        let Some(hold) = self.policy.hold.clone() else {
            return;
        };
        // Expired meanwhile: the reader thread let it go and counted it.
        if !hold.waiting(held) {
            return;
        }
        let (pid, file) = (held.pid, held.file);
        self.interest.entry(pid).or_insert(Interest::Provisional);
        let wanted = self.wants_probes(pid);
        let probed = wanted
            && self.probe_with(pid, |tls, ebpf| {
                usize::from(tls.probe_file(ebpf, pid, file))
            }) > 0;
        if !hold.allow(held) {
            return;
        }
        let outcomes = &self.metrics.tls_holds;
        if probed {
            outcomes.probed.inc();
            self.publish_tls();
        } else if wanted {
            outcomes.failed.inc();
        } else {
            outcomes.skipped.inc();
        }
    }

    /// Holds the opens of files newly found carrying OpenSSL.
    fn hold_found(&mut self) {
        let Some(tls) = self.tls.as_mut() else {
            return;
        };
        let found = tls.take_found();
        let Some(hold) = &self.policy.hold else {
            return;
        };
        for (path, file) in found {
            // Once per file found: a process that starts using it may miss its first calls.
            if let Err(e) = hold.watch_file(&file) {
                warn!(
                    "cannot hold opens of {} (its first users' first calls may be missed): {e}",
                    path.display()
                );
            }
        }
    }

    /// Whether the configuration names `pid` for probes.
    fn configured(&self, pid: u32) -> bool {
        if self.policy.processes.is_empty() {
            return false;
        }
        let comm = super::procfs::comm(pid);
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
        self.policy.processes.iter().any(|p| {
            comm.as_deref() == Some(p.as_str()) || exe.as_deref() == Some(std::path::Path::new(p))
        })
    }

    fn wants_probes(&self, pid: u32) -> bool {
        self.policy.all
            || matches!(
                self.interest.get(&pid),
                Some(Interest::Provisional | Interest::Wanted)
            )
    }

    /// What a process's connection says about probing it.
    fn peer(&mut self, pid: u32, third_party: bool) {
        if self.tls.is_none() || self.policy.all {
            return;
        }
        let before = self.interest.get(&pid).copied();
        if third_party {
            self.interest.insert(pid, Interest::Wanted);
            if !matches!(before, Some(Interest::Wanted | Interest::Provisional)) {
                // Its TLS calls until the probes are in are not seen: say so.
                if self.probe(pid, true) > 0 {
                    self.metrics.tls_late.inc();
                }
                self.publish_tls();
            }
        } else if matches!(before, None | Some(Interest::Provisional)) {
            self.interest.insert(pid, Interest::Quiet);
            if self.unprobe(pid) {
                debug!("pid {pid}: first peer internal or inbound, TLS probes removed");
                self.publish_tls();
            }
        }
    }

    /// Attaches `pid`'s probes to whatever OpenSSL it maps and it lacks (with `tls_probe =
    /// "all"`: probes those files in every process).
    fn probe(&mut self, pid: u32, inspect: bool) -> usize {
        if self.policy.all {
            return self
                .tls
                .as_mut()
                .map_or(0, |tls| tls.probe_everywhere(&mut self.ebpf, pid));
        }
        self.probe_with(pid, |tls, ebpf| tls.probe(ebpf, pid, inspect))
    }

    /// Runs `attach` for `pid`; the kernel learns the process is probed first, so that no call
    /// of it finds the bookkeeping missing.
    fn probe_with(
        &mut self,
        pid: u32,
        attach: impl FnOnce(&mut TlsAttacher, &mut aya::Ebpf) -> usize,
    ) -> usize {
        let Some(tls) = self.tls.as_mut() else {
            return 0;
        };
        let was = tls.is_probed(pid);
        if !was && let Err(e) = self.probed.insert(pid, 1, 0) {
            warn!("marking pid {pid} probed: {e}");
        }
        let n = attach(tls, &mut self.ebpf);
        if !was && !tls.is_probed(pid) {
            let _ = self.probed.remove(&pid);
        }
        n
    }

    fn unprobe(&mut self, pid: u32) -> bool {
        let Some(tls) = self.tls.as_mut() else {
            return false;
        };
        let done = tls.unprobe(pid);
        if done {
            let _ = self.probed.remove(&pid);
        }
        done
    }

    /// Whether the kernel still follows connection `conn_id` on `fd` of `pid`.
    fn tracks(&self, pid: u32, fd: u32, conn_id: u64) -> bool {
        self.fds
            .get(&FdKey { tgid: pid, fd }, 0)
            .is_ok_and(|st| st.conn_id == conn_id)
    }

    fn forget(&mut self, pid: u32, fd: u32, conn_id: u64) {
        if self.tracks(pid, fd, conn_id) {
            let _ = self.fds.remove(&FdKey { tgid: pid, fd });
        }
    }

    fn next_scan_in(&self) -> Option<Duration> {
        let now = Instant::now();
        self.scans
            .values()
            .map(|(at, _, _)| at.saturating_duration_since(now))
            .min()
    }

    fn run_due_scans(&mut self) {
        let now = Instant::now();
        let due: Vec<u32> = self
            .scans
            .iter()
            .filter(|(_, (at, _, _))| *at <= now)
            .map(|(p, _)| *p)
            .collect();
        if due.is_empty() {
            return;
        }
        for pid in due {
            let Some((_, followups, inspect)) = self.scans.remove(&pid) else {
                continue;
            };
            if self.wants_probes(pid) {
                let n = self.probe(pid, inspect);
                if n > 0 {
                    debug!("pid {pid}: {n} new files carrying OpenSSL");
                }
            }
            if followups > 0 && std::path::Path::new(&format!("/proc/{pid}")).exists() {
                self.scans
                    .insert(pid, (now + Duration::from_millis(150), followups - 1, true));
            }
        }
        self.publish_tls();
    }

    fn publish_tls(&self) {
        if let Some(tls) = &self.tls {
            let s = tls.stats();
            self.metrics
                .tls_files
                .set(i64::try_from(s.files).unwrap_or(i64::MAX));
            self.metrics
                .tls_processes
                .set(i64::try_from(s.processes).unwrap_or(i64::MAX));
            let reported = self.metrics.tls_failures.get();
            self.metrics
                .tls_failures
                .inc_by(s.failures.saturating_sub(reported));
        }
    }

    /// Adds what the kernel counted since the last export to the metrics.
    fn export_counters(&mut self) {
        for idx in 0..counter::COUNT {
            let total: u64 = match self.counters.get(&idx, 0) {
                Ok(values) => values.iter().sum(),
                Err(e) => {
                    warn!("reading drop counter {idx}: {e}");
                    continue;
                }
            };
            let slot = &mut self.exported[idx as usize];
            let delta = total.saturating_sub(*slot);
            *slot = total;
            if delta == 0 {
                continue;
            }
            if let Some((_, reason)) = LOST_REASONS.iter().find(|(i, _)| *i == idx) {
                self.metrics.lost.with_label_values(&[reason]).inc_by(delta);
            } else if idx == counter::BYTES_NOT_COPIED {
                self.metrics.bytes_not_copied.inc_by(delta);
            } else if idx == counter::RECORDS_NOT_HTTP {
                self.metrics.skipped_not_http.inc_by(delta);
            } else if idx == counter::SHED_BODY {
                self.metrics.shed(ShedStage::KernelBody).inc_by(delta);
            }
        }
    }
}

/// Map update flags: create only / update only.
const BPF_NOEXIST: u64 = 1;
const BPF_EXIST: u64 = 2;
