//! Finds OpenSSL's I/O functions in an ELF file (a libssl, or an executable that links OpenSSL
//! statically and exports its symbols, like node) and their file offsets for uprobes.

use std::{fs::File, path::Path};

use object::{Object as _, ObjectSection as _, ObjectSymbol as _};

use super::probe_site;

/// File offsets where apimon's OpenSSL programs go, one field per program pair; `None` where
/// nothing needs them (libssl 1.0 has no `_ex` variants; a plain function whose probes
/// moved with its `_ex` twin's to the internal function both call, see [`probe_site`]).
///
/// [`probe_site`]: super::probe_site
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpensslSymbols {
    /// `SSL_write`, for the `ssl_write` programs.
    pub ssl_write: Option<u64>,
    /// `SSL_write_ex`, or the internal function it calls, for the `ssl_write_ex` programs.
    pub ssl_write_ex: Option<u64>,
    /// `SSL_read`, for the `ssl_read` programs.
    pub ssl_read: Option<u64>,
    /// `SSL_read_ex`, or the internal function it calls, for the `ssl_read_ex` programs.
    pub ssl_read_ex: Option<u64>,
    /// Whether the `ssl_read_ex` programs sit on OpenSSL's internal read function.
    pub internal_read: bool,
    /// Whether the `ssl_write_ex` programs sit on OpenSSL's internal write function.
    pub internal_write: bool,
}

impl OpensslSymbols {
    /// Whether there is at least one read and one write function to probe.
    #[must_use]
    pub fn usable(&self) -> bool {
        (self.ssl_write.is_some() || self.ssl_write_ex.is_some())
            && (self.ssl_read.is_some() || self.ssl_read_ex.is_some())
    }
}

/// Why a file could not be inspected.
#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    #[error("cannot open {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not an ELF file this agent can read: {source}")]
    Parse { path: String, source: object::Error },
}

/// The functions looked for, in the order `openssl_file` takes them apart.
const FUNCTIONS: [&[u8]; 4] = [b"SSL_write", b"SSL_write_ex", b"SSL_read", b"SSL_read_ex"];

/// Looks up OpenSSL's functions in the ELF file at `path`. Only defined symbols count: an
/// executable that merely imports `SSL_write` from libssl does not carry it.
pub fn openssl_symbols(path: &Path) -> Result<OpensslSymbols, ElfError> {
    openssl_file(path).map(|(symbols, _)| symbols)
}

/// [`openssl_symbols`], and the file opened to read them: it still reaches the file once
/// `path` no longer does (a path through a process's root goes with the process).
pub fn openssl_file(path: &Path) -> Result<(OpensslSymbols, File), ElfError> {
    let file = open(path)?;
    let map = map(&file, path)?;
    let obj = object::File::parse(&*map).map_err(|source| ElfError::Parse {
        path: path.display().to_string(),
        source,
    })?;
    // Where each of FUNCTIONS is, and the section holding it.
    let mut functions: [Option<(probe_site::Function, object::SectionIndex)>; 4] = [None; 4];
    // Every exported function's file offset, which no internal function may be.
    let mut public = Vec::new();
    // Exported (dynamic) symbols first: stripped binaries keep them.
    let dynamic = obj.dynamic_symbols().map(|s| (s, true));
    for (sym, exported) in dynamic.chain(obj.symbols().map(|s| (s, false))) {
        if sym.is_undefined() || sym.address() == 0 {
            continue;
        }
        let name = sym.name_bytes().unwrap_or_default();
        let slot = FUNCTIONS.iter().position(|f| *f == name);
        // The full symbol table of an unstripped binary is large: only the functions looked
        // for are placed from it.
        if !exported && slot.is_none() {
            continue;
        }
        let Some(index) = sym.section_index() else {
            continue;
        };
        let Some(offset) = file_offset(&obj, index, sym.address()) else {
            continue;
        };
        if exported {
            public.push(offset);
        }
        if let Some(slot) = slot.map(|i| &mut functions[i])
            && slot.is_none()
        {
            let size = sym.size();
            *slot = Some((probe_site::Function { offset, size }, index));
        }
    }
    public.sort_unstable();
    let [write, write_ex, read, read_ex] = functions;
    let offset = |f: Option<(probe_site::Function, _)>| f.map(|(f, _)| f.offset);
    let mut found = OpensslSymbols {
        ssl_write: offset(write),
        ssl_write_ex: offset(write_ex),
        ssl_read: offset(read),
        ssl_read_ex: offset(read_ex),
        internal_read: false,
        internal_write: false,
    };
    if obj.architecture() == object::Architecture::X86_64 {
        let pair = |ex, plain| probe_pair(&obj, ex, plain);
        let (read_site, write_site) =
            probe_site::place(pair(read_ex, read), pair(write_ex, write), &public);
        found.internal_read = move_to(read_site, &mut found.ssl_read_ex, &mut found.ssl_read);
        found.internal_write = move_to(write_site, &mut found.ssl_write_ex, &mut found.ssl_write);
    }
    drop(map);
    Ok((found, file))
}

/// Moves one direction's `_ex` programs to `site`, and drops its plain function's when the
/// site sees all their calls. Returns whether the programs moved.
fn move_to(site: Option<probe_site::Site>, ex: &mut Option<u64>, plain: &mut Option<u64>) -> bool {
    let Some(site) = site else { return false };
    *ex = Some(site.at);
    if site.plain_covered {
        *plain = None;
    }
    true
}

/// The file offset of virtual address `address` in section `index`.
fn file_offset(obj: &object::File<'_>, index: object::SectionIndex, address: u64) -> Option<u64> {
    let section = obj.section_by_index(index).ok()?;
    let (start, _) = section.file_range()?;
    address.checked_sub(section.address())?.checked_add(start)
}

/// One direction's functions for [`probe_site::place`]: the `_ex` one and the plain one in
/// the same section (a plain one elsewhere keeps the direction on its public functions).
fn probe_pair<'a>(
    obj: &'a object::File<'a>,
    ex: Option<(probe_site::Function, object::SectionIndex)>,
    plain: Option<(probe_site::Function, object::SectionIndex)>,
) -> Option<probe_site::Pair<'a>> {
    let (ex, index) = ex?;
    let plain = match plain {
        Some((f, i)) if i == index => Some(f),
        Some(_) => return None,
        None => None,
    };
    let section = obj.section_by_index(index).ok()?;
    let (offset, _) = section.file_range()?;
    let text = probe_site::Text {
        bytes: section.data().ok()?,
        offset,
    };
    Some(probe_site::Pair { text, ex, plain })
}

/// The libraries an ELF file names as needed (`DT_NEEDED`), by soname. Files without a
/// dynamic section (static executables) need none.
pub fn needed(path: &Path) -> Result<Vec<String>, ElfError> {
    use object::read::elf::{Dyn as _, ElfFile64};
    let map = map(&open(path)?, path)?;
    let parse = |source| ElfError::Parse {
        path: path.display().to_string(),
        source,
    };
    let elf = ElfFile64::<object::Endianness>::parse(&*map).map_err(parse)?;
    let endian = elf.endian();
    let sections = elf.elf_section_table();
    let Some((dyns, link)) = sections.dynamic(endian, &*map).map_err(parse)? else {
        return Ok(Vec::new());
    };
    let strings = sections.strings(endian, &*map, link).map_err(parse)?;
    Ok(dyns
        .iter()
        .filter(|d| d.tag32(endian) == Some(object::elf::DT_NEEDED as i32))
        .filter_map(|d| d.string(endian, strings).ok())
        .map(|name| String::from_utf8_lossy(name).into_owned())
        .collect())
}

/// The file at `path`, opened to be read.
fn open(path: &Path) -> Result<File, ElfError> {
    File::open(path).map_err(|source| open_error(path, source))
}

fn open_error(path: &Path, source: std::io::Error) -> ElfError {
    ElfError::Open {
        path: path.display().to_string(),
        source,
    }
}

/// `file` (opened from `path`), mapped read-only.
fn map(file: &File, path: &Path) -> Result<memmap2::Mmap, ElfError> {
    // SAFETY: the mapping is read-only and dropped by the caller before it returns; a file
    // changed underneath could at worst give wrong offsets, which the kernel then rejects or
    // which miss calls.
    unsafe { memmap2::Mmap::map(file) }.map_err(|source| open_error(path, source))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_libssl_has_the_functions() {
        let candidates = [
            "/usr/lib/x86_64-linux-gnu/libssl.so.3",
            "/lib/x86_64-linux-gnu/libssl.so.3",
        ];
        let Some(path) = candidates.iter().map(Path::new).find(|p| p.exists()) else {
            eprintln!("skipped: no libssl.so.3 on this machine");
            return;
        };
        let s = openssl_symbols(path).expect("libssl parses");
        assert!(s.usable(), "{s:?}");
        assert!(s.ssl_write_ex.is_some() && s.ssl_read_ex.is_some());
        eprintln!("{}: {s:x?}", path.display());
    }

    #[test]
    fn node_carries_openssl() {
        let Some(node) = ["/usr/bin/node", "/usr/local/bin/node"]
            .iter()
            .map(Path::new)
            .find(|p| p.exists())
        else {
            eprintln!("skipped: no node on this machine");
            return;
        };
        let s = openssl_symbols(node).expect("node parses");
        assert!(s.usable(), "{s:?}");
        eprintln!("{}: {s:x?}", node.display());
    }

    #[test]
    fn needed_lists_sonames() {
        let own = needed(Path::new("/proc/self/exe")).expect("own binary parses");
        assert!(own.iter().any(|n| n.starts_with("libc.so")), "{own:?}");
        assert!(needed(Path::new("/proc/self/status")).is_err());
    }

    #[test]
    fn non_elf_and_missing_files_are_errors_not_panics() {
        assert!(openssl_symbols(Path::new("/nonexistent/lib")).is_err());
        assert!(openssl_symbols(Path::new("/proc/self/status")).is_err());
        let own = openssl_symbols(Path::new("/proc/self/exe")).expect("own binary parses");
        assert!(!own.usable());
    }
}
