//! Attaches the OpenSSL uprobes to every file that carries OpenSSL: system libssl at start,
//! and whatever processes map later (containers' own libssl, node's static OpenSSL). Each file
//! is attached once, by identity (device, inode), whatever path or process it is seen through.

use std::{
    collections::HashMap,
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    programs::{
        UProbe,
        uprobe::{UProbeAttachLocation, UProbeLinkId, UProbeScope},
    },
};
use tracing::{debug, info, warn};

use super::{elf, procfs};

/// A file's identity: the same library seen through two paths or two mount namespaces is
/// one file, and gets one set of probes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileId {
    pub dev: u64,
    pub inode: u64,
}

#[derive(Debug)]
enum FileState {
    Attached {
        path: PathBuf,
        links: Vec<(&'static str, UProbeLinkId)>,
    },
    /// Carries no OpenSSL functions (most files): never looked at again.
    NoOpenssl,
    /// Could not be read or attached; not retried.
    Failed,
}

/// Counts of what the attacher did, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlsStats {
    pub attached_files: usize,
    pub probes: usize,
    pub failures: u64,
}

/// The uprobe programs and which symbol each goes on.
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

/// Every file looked at, and the probes attached to those that carry OpenSSL.
#[derive(Debug, Default)]
pub struct TlsAttacher {
    files: HashMap<FileId, FileState>,
    failures: u64,
}

/// `fd:01` (as /proc/PID/maps prints a device) -> the st_dev encoding.
#[must_use]
pub fn parse_dev(text: &str) -> Option<u64> {
    let (major, minor) = text.split_once(':')?;
    let major = u32::from_str_radix(major, 16).ok()?;
    let minor = u32::from_str_radix(minor, 16).ok()?;
    Some(libc::makedev(major, minor))
}

impl TlsAttacher {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// What has been attached so far.
    #[must_use]
    pub fn stats(&self) -> TlsStats {
        let mut s = TlsStats {
            failures: self.failures,
            ..TlsStats::default()
        };
        for state in self.files.values() {
            if let FileState::Attached { links, .. } = state {
                s.attached_files += 1;
                s.probes += links.len();
            }
        }
        s
    }

    /// Paths of the files attached, for logs and `check`.
    #[must_use]
    pub fn attached_paths(&self) -> Vec<PathBuf> {
        self.files
            .values()
            .filter_map(|s| match s {
                FileState::Attached { path, .. } => Some(path.clone()),
                _ => None,
            })
            .collect()
    }

    /// Looks at every executable file `pid` maps. Returns how many files got probes.
    pub fn scan_pid(&mut self, ebpf: &mut Ebpf, pid: u32) -> usize {
        let mut attached = 0;
        for m in procfs::exec_mappings(pid) {
            let Some(dev) = parse_dev(&m.dev) else {
                continue;
            };
            let id = FileId {
                dev,
                inode: m.inode,
            };
            if self.files.contains_key(&id) {
                continue;
            }
            // Through the process's root, so that a container's own files are reached.
            let path = procfs::in_root(pid, &m.path);
            if self.consider(ebpf, id, &path, &m.path) {
                attached += 1;
            }
        }
        attached
    }

    /// Looks at a file by path (system libraries at start, configured binaries).
    pub fn attach_path(&mut self, ebpf: &mut Ebpf, path: &Path) -> bool {
        let Ok(meta) = fs::metadata(path) else {
            return false;
        };
        let id = FileId {
            dev: meta.dev(),
            inode: meta.ino(),
        };
        if self.files.contains_key(&id) {
            return false;
        }
        let shown = path.display().to_string();
        self.consider(ebpf, id, path, &shown)
    }

    fn consider(&mut self, ebpf: &mut Ebpf, id: FileId, path: &Path, shown: &str) -> bool {
        let symbols = match elf::openssl_symbols(path) {
            Ok(s) if s.usable() => s,
            Ok(_) => {
                self.files.insert(id, FileState::NoOpenssl);
                return false;
            }
            Err(e) => {
                debug!("not probing {shown}: {e}");
                self.files.insert(id, FileState::Failed);
                return false;
            }
        };
        let mut links = Vec::new();
        for (program, symbol) in PROBES {
            let Some(offset) = symbol.offset(&symbols) else {
                continue;
            };
            match attach_one(ebpf, program, offset, path) {
                Ok(link) => links.push((program, link)),
                Err(e) => {
                    warn!("cannot attach {program} to {shown} at {offset:#x}: {e:#}");
                    self.failures += 1;
                    detach_all(ebpf, links);
                    self.files.insert(id, FileState::Failed);
                    return false;
                }
            }
        }
        info!("TLS: probing OpenSSL in {shown} ({} probes)", links.len());
        self.files.insert(
            id,
            FileState::Attached {
                path: PathBuf::from(shown),
                links,
            },
        );
        true
    }
}

fn attach_one(
    ebpf: &mut Ebpf,
    program: &str,
    offset: u64,
    path: &Path,
) -> anyhow::Result<UProbeLinkId> {
    let prog: &mut UProbe = ebpf
        .program_mut(program)
        .ok_or_else(|| anyhow::anyhow!("program {program} missing from the eBPF object"))?
        .try_into()?;
    Ok(prog.attach(
        UProbeAttachLocation::AbsoluteOffset(offset),
        path,
        UProbeScope::AllProcesses,
    )?)
}

fn detach_all(ebpf: &mut Ebpf, links: Vec<(&'static str, UProbeLinkId)>) {
    for (program, link) in links {
        let prog: Option<&mut UProbe> = ebpf.program_mut(program).and_then(|p| p.try_into().ok());
        if let Some(prog) = prog
            && let Err(e) = prog.detach(link)
        {
            warn!("detaching {program}: {e}");
        }
    }
}

/// Files that carry OpenSSL on most hosts, probed at start so that a process started later
/// is covered from its first call: libssl in the system library folders, and runtimes that
/// link OpenSSL statically.
#[must_use]
pub fn default_candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    let lib_dirs = [
        "/lib",
        "/lib64",
        "/usr/lib",
        "/usr/lib64",
        "/usr/local/lib",
        "/usr/local/lib64",
        "/lib/x86_64-linux-gnu",
        "/usr/lib/x86_64-linux-gnu",
        "/lib/aarch64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
    ];
    for dir in lib_dirs {
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
