//! Attaches the OpenSSL uprobes to the processes worth probing, one process at a time.
//!
//! A uprobe costs a trap on every call wherever it is installed, so probes are attached per
//! process (the kernel then installs the breakpoint in that process's memory only), not to
//! every process mapping a library (only `tls_probe = "all"` does that): a TLS server nobody
//! asked about pays nothing. Which processes are probed is the control thread's decision; this
//! module finds the OpenSSL functions in the files a process maps (each file inspected once,
//! by identity) and keeps every process's probes until it is unprobed or exits.

use std::{
    collections::{HashMap, HashSet},
    fs,
    num::NonZeroU32,
    os::fd::{AsFd as _, OwnedFd},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    programs::{
        UProbe,
        uprobe::{UProbeAttachLocation, UProbeLink, UProbeScope},
    },
};
use tracing::{debug, info, warn};

use super::{elf, probe_events::ProbeEvent, procfs, reaper::Reaper};

/// A file's identity: the same library seen through two paths or two mount namespaces is
/// one file, inspected once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileId {
    pub dev: u64,
    pub inode: u64,
}

impl From<&fs::Metadata> for FileId {
    fn from(m: &fs::Metadata) -> Self {
        Self {
            dev: m.dev(),
            inode: m.ino(),
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum FileState {
    Openssl(elf::OpensslSymbols),
    /// Carries no OpenSSL functions (most files): never looked at again.
    NoOpenssl,
    /// Could not be read; not retried.
    Failed,
}

/// The probes of one process.
#[derive(Debug, Default)]
struct Probed {
    /// One perf event per probed function: each puts the process in that uprobe's filter.
    links: Vec<OwnedFd>,
    files: HashSet<FileId>,
}

/// Counts of what the attacher did, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlsStats {
    /// Processes with probes attached.
    pub processes: usize,
    /// Distinct files carrying OpenSSL probed in at least one process.
    pub files: usize,
    pub failures: u64,
}

/// The uprobe programs and which symbol each goes on. Writes keep their return probe: some
/// runtimes (node) call SSL_write before the handshake is done and repeat it, which only the
/// return tells.
const PROBES: [(&str, Symbol); 8] = [
    ("ssl_write", Symbol::Write),
    ("ssl_write_ex", Symbol::WriteEx),
    ("ssl_write_ret", Symbol::Write),
    ("ssl_write_ret", Symbol::WriteEx),
    ("ssl_read", Symbol::Read),
    ("ssl_read_ex", Symbol::ReadEx),
    ("ssl_read_ret", Symbol::Read),
    ("ssl_read_ret", Symbol::ReadEx),
];

#[derive(Clone, Copy, Debug)]
enum Symbol {
    Write,
    WriteEx,
    Read,
    ReadEx,
}

impl Symbol {
    fn offset(self, s: &elf::OpensslSymbols) -> Option<u64> {
        match self {
            Self::Write => s.ssl_write,
            Self::WriteEx => s.ssl_write_ex,
            Self::Read => s.ssl_read,
            Self::ReadEx => s.ssl_read_ex,
        }
    }
}

/// Owned links (detached when dropped, see [`Reaper`]).
type Links = Vec<UProbeLink>;

/// Most libraries followed when looking for a program's libssl.
const MAX_NEEDED: usize = 256;

/// Where ld.so finds libraries by default on the common distributions.
const LIB_DIRS: [&str; 8] = [
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib/aarch64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
];

/// Most programs remembered as OpenSSL users (see [`TlsAttacher::probe_at_exec`]).
const MAX_PROGRAMS: usize = 4096;

/// Every file looked at, and the probes of every probed process.
#[derive(Debug)]
pub struct TlsAttacher {
    files: HashMap<FileId, FileState>,
    /// Where each file carrying OpenSSL was seen, to probe it before a new process maps it.
    shown: HashMap<FileId, String>,
    procs: HashMap<u32, Probed>,
    /// In how many processes each file is probed: the stats in one look, not a pass over
    /// every probed process's files on each probe change.
    probed_in: HashMap<FileId, usize>,
    /// Files probed in every process (`tls_probe = "all"`).
    everywhere: HashMap<FileId, Links>,
    /// The uprobes of each file probed per process, shared by those processes.
    shared: HashMap<FileId, Vec<ProbeEvent>>,
    /// Programs (by executable) seen using OpenSSL, and the files they mapped: a new run of
    /// one is probed at exec, before it maps them, because installing a process's first
    /// uprobe waits for an RCU grace period (tens of milliseconds), time in which a client
    /// like curl has already sent its request.
    programs: HashMap<FileId, Vec<FileId>>,
    /// Files found carrying OpenSSL, not yet taken by `take_found`.
    found: Vec<(PathBuf, fs::File)>,
    failures: u64,
    reaper: Reaper,
}

/// `fd:01` (as /proc/PID/maps prints a device) -> the st_dev encoding.
#[must_use]
pub fn parse_dev(text: &str) -> Option<u64> {
    let (major, minor) = text.split_once(':')?;
    let major = u32::from_str_radix(major, 16).ok()?;
    let minor = u32::from_str_radix(minor, 16).ok()?;
    Some(libc::makedev(major, minor))
}

impl Default for TlsAttacher {
    fn default() -> Self {
        Self {
            files: HashMap::new(),
            shown: HashMap::new(),
            procs: HashMap::new(),
            probed_in: HashMap::new(),
            everywhere: HashMap::new(),
            shared: HashMap::new(),
            programs: HashMap::new(),
            found: Vec::new(),
            failures: 0,
            reaper: Reaper::start(),
        }
    }
}

impl TlsAttacher {
    /// Starts with nothing known; detaching happens on a thread of its own.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// What is attached now.
    #[must_use]
    pub fn stats(&self) -> TlsStats {
        // Files probed everywhere are a handful.
        let only_everywhere = self
            .everywhere
            .keys()
            .filter(|id| !self.probed_in.contains_key(id))
            .count();
        TlsStats {
            processes: self.procs.len(),
            files: self.probed_in.len() + only_everywhere,
            failures: self.failures,
        }
    }

    /// Whether `pid` has probes attached.
    #[must_use]
    pub fn is_probed(&self, pid: u32) -> bool {
        self.procs.contains_key(&pid)
    }

    /// Probes every file carrying OpenSSL that `pid` maps and is not probed in it yet (call
    /// again after the process maps more). `inspect`: also read the symbols of files never
    /// seen, which takes milliseconds per file; without it only files already known to carry
    /// OpenSSL are probed, at once. Returns how many files got probes.
    pub fn probe(&mut self, ebpf: &mut Ebpf, pid: u32, inspect: bool) -> usize {
        let Some(target) = NonZeroU32::new(pid) else {
            return 0;
        };
        let probed = self.procs.get(&pid).map(|p| &p.files);
        let mut todo: Vec<_> = mapped(pid)
            .filter(|(id, _)| !probed.is_some_and(|files| files.contains(id)))
            .filter(|(id, _)| inspect || self.files.contains_key(id))
            .collect();
        // Files already known to carry OpenSSL first: the process may be about to call it,
        // and reading the symbols of the others takes milliseconds.
        todo.sort_by_key(|(id, _)| !matches!(self.files.get(id), Some(FileState::Openssl(_))));
        let mut attached = Vec::new();
        for (id, shown) in todo {
            // Through the process's root, so that a container's own files are reached.
            let path = procfs::in_root(pid, &shown);
            let Some(symbols) = self.inspect(id, &path, &shown) else {
                continue;
            };
            if self.attach(ebpf, target, id, &symbols, &path, &shown) {
                attached.push(shown);
            }
        }
        if !attached.is_empty() {
            info!("TLS: probing pid {pid} in {}", attached.join(", "));
            if let Some(p) = self.procs.get(&pid) {
                let files: Vec<FileId> = p.files.iter().copied().collect();
                self.learn(pid, files);
            }
        }
        attached.len()
    }

    /// Probes a process that just executed a program known to use OpenSSL, in the files that
    /// program mapped before (each checked to be that very file in the process's root).
    /// Returns how many files got probes.
    pub fn probe_at_exec(&mut self, ebpf: &mut Ebpf, pid: u32) -> usize {
        let (Some(target), Some(exe)) = (NonZeroU32::new(pid), exe_id(pid)) else {
            return 0;
        };
        let files = match self.programs.get(&exe) {
            Some(files) => files.clone(),
            None => {
                let files = self.openssl_needed(pid);
                self.remember(exe, files.clone());
                files
            }
        };
        let attached = files
            .into_iter()
            .filter(|&id| self.attach_known(ebpf, target, id))
            .count();
        if attached > 0 {
            debug!("TLS: probing pid {pid} at exec ({attached} files carrying OpenSSL)");
        }
        attached
    }

    /// Probes `pid` in one file known to carry OpenSSL, which it is opening. Returns whether
    /// it has probes in that file now (attached earlier or just now).
    pub fn probe_file(&mut self, ebpf: &mut Ebpf, pid: u32, id: FileId) -> bool {
        if let Some(target) = NonZeroU32::new(pid) {
            self.attach_known(ebpf, target, id);
        }
        self.procs.get(&pid).is_some_and(|p| p.files.contains(&id))
    }

    /// Probes `target` in a file already inspected and found carrying OpenSSL, reached through
    /// the process's root. Returns whether probes were attached now.
    fn attach_known(&mut self, ebpf: &mut Ebpf, target: NonZeroU32, id: FileId) -> bool {
        let pid = target.get();
        let (Some(FileState::Openssl(symbols)), Some(shown)) =
            (self.files.get(&id).copied(), self.shown.get(&id).cloned())
        else {
            return false;
        };
        if self.procs.get(&pid).is_some_and(|p| p.files.contains(&id)) {
            return false;
        }
        let path = procfs::in_root(pid, &shown);
        // The offsets belong to that file: a different one at the same path (a container's,
        // an upgraded package) must not get a breakpoint in the middle of an instruction.
        if file_id(&path) != Some(id) {
            return false;
        }
        self.attach(ebpf, target, id, &symbols, &path, &shown)
    }

    /// Files found carrying OpenSSL since the last call: the path they were found at, and
    /// the file opened then, which still reaches it once that path is gone (a process's root,
    /// with the process).
    pub fn take_found(&mut self) -> Vec<(PathBuf, fs::File)> {
        std::mem::take(&mut self.found)
    }

    /// Probes, in every process, each file carrying OpenSSL that `pid` maps and that is not
    /// probed yet (`tls_probe = "all"`). Returns how many files got probes.
    pub fn probe_everywhere(&mut self, ebpf: &mut Ebpf, pid: u32) -> usize {
        let mut attached = 0;
        for (id, shown) in mapped(pid) {
            if !self.everywhere.contains_key(&id) {
                attached += usize::from(self.attach_everywhere(
                    ebpf,
                    id,
                    &procfs::in_root(pid, &shown),
                    &shown,
                ));
            }
        }
        attached
    }

    /// Probes a file named ahead of time (`tls_paths`, the usual libssl) in every process.
    pub fn probe_path_everywhere(&mut self, ebpf: &mut Ebpf, path: &Path) {
        if let Some(id) = file_id(path)
            && !self.everywhere.contains_key(&id)
        {
            self.attach_everywhere(ebpf, id, path, &path.display().to_string());
        }
    }

    fn attach_everywhere(&mut self, ebpf: &mut Ebpf, id: FileId, path: &Path, shown: &str) -> bool {
        let Some(symbols) = self.inspect(id, path, shown) else {
            return false;
        };
        match self.links(ebpf, &symbols, path, shown) {
            Some(links) => {
                info!("TLS: probing OpenSSL in {shown} in every process");
                self.everywhere.insert(id, links);
                true
            }
            None => false,
        }
    }

    /// The files carrying OpenSSL that `pid`'s program needs, directly or through another
    /// library (curl needs libcurl, which needs libssl), found the way ld.so would in the
    /// process's root. Only dynamic sections are read, except for libssl's symbols.
    fn openssl_needed(&mut self, pid: u32) -> Vec<FileId> {
        let mut found = Vec::new();
        let mut seen = HashSet::new();
        let mut queue = vec![PathBuf::from(format!("/proc/{pid}/exe"))];
        while let Some(path) = queue.pop() {
            let Ok(names) = elf::needed(&path) else {
                continue;
            };
            for name in names {
                if seen.len() >= MAX_NEEDED || !seen.insert(name.clone()) {
                    continue;
                }
                let Some((shown, path)) = LIB_DIRS.iter().find_map(|dir| {
                    let shown = format!("{dir}/{name}");
                    let path = procfs::in_root(pid, &shown);
                    path.exists().then_some((shown, path))
                }) else {
                    continue;
                };
                if !name.starts_with("libssl") {
                    queue.push(path);
                    continue;
                }
                if let Some(id) = file_id(&path)
                    && self.inspect(id, &path, &shown).is_some()
                {
                    found.push(id);
                }
            }
        }
        found
    }

    /// Remembers which files carrying OpenSSL `pid`'s program maps.
    fn learn(&mut self, pid: u32, files: Vec<FileId>) {
        if let Some(exe) = exe_id(pid) {
            self.remember(exe, files);
        }
    }

    /// Remembers which files carrying OpenSSL the program `exe` maps (see `programs`).
    fn remember(&mut self, exe: FileId, files: Vec<FileId>) {
        if self.programs.len() < MAX_PROGRAMS || self.programs.contains_key(&exe) {
            self.programs.insert(exe, files);
        }
    }

    /// Reads the symbols of every file `pid` maps, attaching nothing: done for every process at
    /// start so that probing one later costs no ELF parsing.
    pub fn inspect_pid(&mut self, pid: u32) {
        let mut openssl = Vec::new();
        for (id, shown) in mapped(pid) {
            if self
                .inspect(id, &procfs::in_root(pid, &shown), &shown)
                .is_some()
            {
                openssl.push(id);
            }
        }
        if !openssl.is_empty() {
            self.learn(pid, openssl);
        }
    }

    fn attach(
        &mut self,
        ebpf: &mut Ebpf,
        target: NonZeroU32,
        id: FileId,
        symbols: &elf::OpensslSymbols,
        path: &Path,
        shown: &str,
    ) -> bool {
        if !self.shared.contains_key(&id) {
            let Some(events) = self.events(ebpf, symbols, path, shown) else {
                return false;
            };
            self.shared.insert(id, events);
        }
        let pid = target.get();
        let mut fds = Vec::new();
        for event in self.shared.get(&id).into_iter().flatten() {
            match event.open(pid) {
                Ok(fd) => fds.push(fd),
                Err(e) => {
                    // The process may have exited meanwhile: not worth a warning then.
                    if Path::new(&format!("/proc/{pid}")).exists() {
                        warn!("cannot probe {shown} in pid {pid}: {e}");
                        self.failures += 1;
                    }
                    self.reaper.detach(fds);
                    return false;
                }
            }
        }
        debug!("TLS: probing OpenSSL in {shown} for pid {pid}");
        let p = self.procs.entry(pid).or_default();
        p.links.extend(fds);
        if p.files.insert(id) {
            *self.probed_in.entry(id).or_insert(0) += 1;
        }
        true
    }

    /// Creates the uprobes of a file, to be shared by the processes probed in it.
    fn events(
        &mut self,
        ebpf: &Ebpf,
        symbols: &elf::OpensslSymbols,
        path: &Path,
        shown: &str,
    ) -> Option<Vec<ProbeEvent>> {
        let mut events = Vec::new();
        for (program, symbol) in PROBES {
            let Some(offset) = symbol.offset(symbols) else {
                continue;
            };
            match create_one(ebpf, program, offset, path) {
                Ok(e) => events.push(e),
                Err(e) => {
                    warn!("cannot create the uprobe {program} in {shown}: {e:#}");
                    self.failures += 1;
                    return None;
                }
            }
        }
        Some(events)
    }

    /// Attaches the probes a file needs in every process, all or none.
    fn links(
        &mut self,
        ebpf: &mut Ebpf,
        symbols: &elf::OpensslSymbols,
        path: &Path,
        shown: &str,
    ) -> Option<Links> {
        let mut links = Vec::new();
        for (program, symbol) in PROBES {
            let Some(offset) = symbol.offset(symbols) else {
                continue;
            };
            match attach_one(ebpf, program, offset, path) {
                Ok(link) => links.push(link),
                Err(e) => {
                    warn!("cannot attach {program} to {shown}: {e:#}");
                    self.failures += 1;
                    self.reaper.detach(links);
                    return None;
                }
            }
        }
        Some(links)
    }

    /// Detaches every probe of `pid` (it exited, or turned out not to be worth probing).
    pub fn unprobe(&mut self, pid: u32) -> bool {
        match self.procs.remove(&pid) {
            Some(p) => {
                for id in &p.files {
                    if let Some(n) = self.probed_in.get_mut(id) {
                        *n -= 1;
                        if *n == 0 {
                            self.probed_in.remove(id);
                        }
                    }
                }
                self.reaper.detach(p.links);
                true
            }
            None => false,
        }
    }

    /// Inspects a file named in the configuration ahead of time, so that its first process
    /// is probed without parsing it then.
    pub fn inspect_path(&mut self, path: &Path) {
        if let Some(id) = file_id(path) {
            self.inspect(id, path, &path.display().to_string());
        }
    }

    /// The OpenSSL functions of a file, read once per file.
    fn inspect(&mut self, id: FileId, path: &Path, shown: &str) -> Option<elf::OpensslSymbols> {
        let state = match self.files.get(&id) {
            Some(state) => *state,
            None => {
                let state = match elf::openssl_file(path) {
                    Ok((s, file)) if s.usable() => {
                        // Which placement probe_site chose: the cheap one, or the public functions.
                        let read = if s.internal_read {
                            "OpenSSL's internal read function"
                        } else {
                            "SSL_read and SSL_read_ex"
                        };
                        let write = if s.internal_write {
                            "OpenSSL's internal write function"
                        } else {
                            "SSL_write and SSL_write_ex"
                        };
                        info!("{shown} carries OpenSSL: probes on {read} and on {write}");
                        self.found.push((path.to_owned(), file));
                        FileState::Openssl(s)
                    }
                    Ok(_) => FileState::NoOpenssl,
                    Err(e) => {
                        debug!("not probing {shown}: {e}");
                        FileState::Failed
                    }
                };
                self.files.insert(id, state);
                state
            }
        };
        match state {
            FileState::Openssl(s) => {
                self.shown.entry(id).or_insert_with(|| shown.to_owned());
                Some(s)
            }
            FileState::NoOpenssl | FileState::Failed => None,
        }
    }
}

/// The shared uprobe at `offset` in `path`, carrying `program`.
fn create_one(ebpf: &Ebpf, program: &str, offset: u64, path: &Path) -> anyhow::Result<ProbeEvent> {
    let prog: &UProbe = ebpf
        .program(program)
        .ok_or_else(|| anyhow::anyhow!("program {program} missing from the eBPF object"))?
        .try_into()?;
    let ret = matches!(prog.kind(), aya::programs::ProbeKind::Return);
    Ok(ProbeEvent::create(path, offset, ret, prog.fd()?.as_fd())?)
}

fn attach_one(
    ebpf: &mut Ebpf,
    program: &str,
    offset: u64,
    path: &Path,
) -> anyhow::Result<UProbeLink> {
    let prog: &mut UProbe = ebpf
        .program_mut(program)
        .ok_or_else(|| anyhow::anyhow!("program {program} missing from the eBPF object"))?
        .try_into()?;
    let id = prog.attach(
        UProbeAttachLocation::AbsoluteOffset(offset),
        path,
        UProbeScope::AllProcesses,
    )?;
    // Owned, so that it can be detached on the reaper's thread.
    Ok(prog.take_link(id)?)
}

/// A file's identity, following symlinks.
fn file_id(path: &Path) -> Option<FileId> {
    fs::metadata(path).ok().map(|m| FileId::from(&m))
}

/// The identity of the program `pid` runs.
fn exe_id(pid: u32) -> Option<FileId> {
    file_id(Path::new(&format!("/proc/{pid}/exe")))
}

/// The executable files `pid` maps, by identity, with the path its maps show.
fn mapped(pid: u32) -> impl Iterator<Item = (FileId, String)> {
    procfs::exec_mappings(pid).into_iter().filter_map(|m| {
        let dev = parse_dev(&m.dev)?;
        Some((
            FileId {
                dev,
                inode: m.inode,
            },
            m.path,
        ))
    })
}

/// Files that carry OpenSSL on most hosts, inspected at start so that the first process to
/// need probes gets them at once: libssl in the system library folders, and runtimes that
/// link OpenSSL statically.
#[must_use]
pub fn default_candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in LIB_DIRS
        .into_iter()
        .chain(["/usr/local/lib", "/usr/local/lib64"])
    {
        let Ok(entries) = fs::read_dir(dir) else {
            continue;
        };
        for e in entries.filter_map(Result::ok) {
            let name = e.file_name();
            if name.to_str().is_some_and(|n| n.starts_with("libssl.so")) {
                out.push(e.path());
            }
        }
    }
    for dir in ["/usr/bin", "/usr/local/bin", "/bin"] {
        for name in ["node", "nodejs", "bun", "deno"] {
            let p = Path::new(dir).join(name);
            if p.exists() {
                out.push(p);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_like_stat() {
        let meta = fs::metadata("/proc/self/exe").expect("stat");
        let maps = procfs::exec_mappings(std::process::id());
        let exe = fs::read_link("/proc/self/exe").expect("exe");
        let me = maps
            .iter()
            .find(|m| Path::new(&m.path) == exe)
            .expect("own exe is mapped");
        assert_eq!(parse_dev(&me.dev), Some(meta.dev()));
        assert_eq!(me.inode, meta.ino());
        assert_eq!(parse_dev("zz"), None);
    }
}
