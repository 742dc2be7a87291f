//! The control thread: owns the loaded programs and the maps userspace writes. It attaches TLS
//! probes to new files, finds connections open before start, answers lookups in /proc, mutes
//! connections the pipeline gave up on, and exports the kernel's drop counters.

use std::{
    collections::HashMap,
    net::SocketAddr,
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

use super::{backfill, records::Opened, tls::TlsAttacher};
use crate::output::metrics::Metrics;

/// Work for the control thread.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// A process executed a program (`exec`) or mapped an executable file: look for OpenSSL.
    Scan { pid: u32, exec: bool },
    /// Find out where an unverified connection goes, or that it is not TCP.
    Resolve { pid: u32, fd: u32, conn_id: u64 },
    /// Stop forwarding a connection's bytes.
    Mute { pid: u32, fd: u32, conn_id: u64 },
    /// A process exited: drop what the kernel still holds for these fds.
    Forget { pid: u32, fds: Vec<u32> },
}

/// What the control thread tells the pipeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// A connection found open at start.
    Opened(Opened),
    /// Where an unverified connection goes (`None`: not a TCP connection, forget it).
    Resolved {
        conn_id: u64,
        remote: Option<SocketAddr>,
    },
    /// Start-up work is done: TLS libraries probed, open connections found.
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

/// The control thread's state.
pub struct Control {
    pub ebpf: aya::Ebpf,
    pub fds: aya::maps::HashMap<MapData, FdKey, ConnState>,
    pub counters: PerCpuArray<MapData, u64>,
    pub tls: Option<TlsAttacher>,
    pub tls_paths: Vec<std::path::PathBuf>,
    pub metrics: Arc<Metrics>,
    /// Counter sums already exported, to turn them into increments.
    exported: [u64; counter::COUNT as usize],
    /// Pending scans: when, and how many follow-up scans after that.
    scans: HashMap<u32, (Instant, u8)>,
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
    /// `tls_paths`: extra files to probe for OpenSSL, or `None` to capture no TLS plaintext.
    #[must_use]
    pub fn new(
        ebpf: aya::Ebpf,
        fds: aya::maps::HashMap<MapData, FdKey, ConnState>,
        counters: PerCpuArray<MapData, u64>,
        tls_paths: Option<Vec<std::path::PathBuf>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            ebpf,
            fds,
            counters,
            tls: tls_paths.is_some().then(TlsAttacher::new),
            tls_paths: tls_paths.unwrap_or_default(),
            metrics,
            exported: [0; counter::COUNT as usize],
            scans: HashMap::new(),
            next_id: 0,
        }
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
            if last_export.elapsed() >= Duration::from_secs(1) {
                self.export_counters();
                last_export = Instant::now();
            }
        }
        self.export_counters();
        info!("detaching every program");
    }

    /// Start-up: probe TLS libraries, then find connections already open.
    fn start(&mut self, notices: &Sender<Notice>) {
        if let Some(tls) = self.tls.as_mut() {
            let mut paths = super::tls::default_candidates();
            paths.extend(self.tls_paths.iter().cloned());
            for p in paths {
                tls.attach_path(&mut self.ebpf, &p);
            }
            let me = std::process::id();
            for pid in super::procfs::pids() {
                if pid != me {
                    tls.scan_pid(&mut self.ebpf, pid);
                }
            }
            self.publish_tls();
        }
        let found = backfill::scan(std::process::id(), &mut self.next_id);
        let mut conns = 0;
        for f in found {
            // NOEXIST: a connection the kernel saw open meanwhile is already more precise.
            if self.fds.insert(f.key, f.state, BPF_NOEXIST).is_err() {
                continue;
            }
            if let Some(opened) = f.opened {
                conns += 1;
                let _ = notices.send(Notice::Opened(opened));
            }
        }
        info!("found {conns} TCP connections open before start");
        let _ = notices.send(Notice::Ready);
    }

    fn handle(&mut self, request: Request, notices: &Sender<Notice>) {
        match request {
            Request::Scan { pid, exec } => {
                // A library was just mapped: look at once, the process may use it within
                // milliseconds. Right after exec the loader has not mapped the libraries yet:
                // look now and twice more. Files already seen cost a map lookup each.
                let now = Instant::now();
                let entry = self.scans.entry(pid).or_insert((now, 0));
                entry.0 = now;
                if exec {
                    entry.1 = 2;
                }
                self.run_due_scans();
            }
            Request::Resolve { pid, fd, conn_id } => {
                let remote = backfill::resolve(pid, fd);
                if remote.is_none() {
                    self.forget(pid, fd, conn_id);
                }
                let _ = notices.send(Notice::Resolved { conn_id, remote });
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
            Request::Forget { pid, fds } => {
                for fd in fds {
                    let _ = self.fds.remove(&FdKey { tgid: pid, fd });
                }
            }
        }
    }

    fn forget(&mut self, pid: u32, fd: u32, conn_id: u64) {
        let key = FdKey { tgid: pid, fd };
        if self.fds.get(&key, 0).is_ok_and(|st| st.conn_id == conn_id) {
            let _ = self.fds.remove(&key);
        }
    }

    fn next_scan_in(&self) -> Option<Duration> {
        let now = Instant::now();
        self.scans
            .values()
            .map(|(at, _)| at.saturating_duration_since(now))
            .min()
    }

    fn run_due_scans(&mut self) {
        let now = Instant::now();
        let due: Vec<u32> = self
            .scans
            .iter()
            .filter(|(_, (at, _))| *at <= now)
            .map(|(p, _)| *p)
            .collect();
        if due.is_empty() {
            return;
        }
        for pid in due {
            let Some((_, followups)) = self.scans.remove(&pid) else {
                continue;
            };
            if let Some(tls) = self.tls.as_mut() {
                let n = tls.scan_pid(&mut self.ebpf, pid);
                if n > 0 {
                    debug!("pid {pid}: {n} new files carrying OpenSSL");
                }
            }
            if followups > 0 && std::path::Path::new(&format!("/proc/{pid}")).exists() {
                self.scans
                    .insert(pid, (now + Duration::from_millis(150), followups - 1));
            }
        }
        self.publish_tls();
    }

    fn publish_tls(&self) {
        if let Some(tls) = &self.tls {
            let s = tls.stats();
            self.metrics
                .tls_files
                .set(i64::try_from(s.attached_files).unwrap_or(i64::MAX));
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
            }
        }
    }
}

/// Map update flags: create only / update only.
const BPF_NOEXIST: u64 = 1;
const BPF_EXIST: u64 = 2;
