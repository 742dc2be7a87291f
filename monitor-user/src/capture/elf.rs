//! Finds OpenSSL's I/O functions in an ELF file (a libssl, or an executable that links OpenSSL
//! statically and exports its symbols, like node) and their file offsets for uprobes.

use std::{fs::File, path::Path};

use object::{Object as _, ObjectSection as _, ObjectSymbol as _};

/// File offsets of the functions apimon probes; `None` where the symbol is absent (libssl
/// 1.0 has no `_ex` variants).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpensslSymbols {
    pub ssl_write: Option<u64>,
    pub ssl_write_ex: Option<u64>,
    pub ssl_read: Option<u64>,
    pub ssl_read_ex: Option<u64>,
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

/// Looks up OpenSSL's functions in the ELF file at `path`. Only defined symbols count: an
/// executable that merely imports `SSL_write` from libssl does not carry it.
pub fn openssl_symbols(path: &Path) -> Result<OpensslSymbols, ElfError> {
    let file = File::open(path).map_err(|source| ElfError::Open {
        path: path.display().to_string(),
        source,
    })?;
    // SAFETY: the mapping is read-only and dropped before return; a file changed underneath
    // could at worst give wrong offsets, which the kernel then rejects or which miss calls.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|source| ElfError::Open {
        path: path.display().to_string(),
        source,
    })?;
    let obj = object::File::parse(&*map).map_err(|source| ElfError::Parse {
        path: path.display().to_string(),
        source,
    })?;
    let mut found = OpensslSymbols::default();
    // Exported (dynamic) symbols first: stripped binaries keep them.
    for sym in obj.dynamic_symbols().chain(obj.symbols()) {
        if sym.is_undefined() || sym.address() == 0 {
            continue;
        }
        let slot = match sym.name_bytes() {
            Ok(b"SSL_write") => &mut found.ssl_write,
            Ok(b"SSL_write_ex") => &mut found.ssl_write_ex,
            Ok(b"SSL_read") => &mut found.ssl_read,
            Ok(b"SSL_read_ex") => &mut found.ssl_read_ex,
            _ => continue,
        };
        if slot.is_some() {
            continue;
        }
        let Some(index) = sym.section_index() else {
            continue;
        };
        let Ok(section) = obj.section_by_index(index) else {
            continue;
        };
        let Some((file_offset, _)) = section.file_range() else {
            continue;
        };
        *slot = sym
            .address()
            .checked_sub(section.address())
            .and_then(|rel| rel.checked_add(file_offset));
    }
    Ok(found)
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
    }

    #[test]
    fn non_elf_and_missing_files_are_errors_not_panics() {
        assert!(openssl_symbols(Path::new("/nonexistent/lib")).is_err());
        assert!(openssl_symbols(Path::new("/proc/self/status")).is_err());
        let own = openssl_symbols(Path::new("/proc/self/exe")).expect("own binary parses");
        assert!(!own.usable());
    }
}
