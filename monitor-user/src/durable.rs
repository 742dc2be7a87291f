//! Replacing a file so that a crash leaves the old content or the new, never half of it.

use std::{
    fs,
    io::{self, Write as _},
    path::Path,
};

/// Suffix of a file being written; a leftover one was never made durable and can be removed.
pub const PARTIAL_SUFFIX: &str = ".tmp";

/// Replaces `path` with `bytes`: written and synced under a temporary name in the same
/// directory, renamed over `path`, and the directory synced so that the rename survives.
///
/// # Errors
/// Any step failed, the directory sync included.
pub fn replace(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}{PARTIAL_SUFFIX}", std::process::id()));
    let mut f = fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_and_leaves_no_partial_file() {
        let dir = std::env::temp_dir().join(format!("apimon-durable-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("a.json");
        replace(&path, b"old").expect("first write");
        replace(&path, b"new").expect("second write");
        assert_eq!(fs::read(&path).expect("read"), b"new");
        let names: Vec<_> = fs::read_dir(&dir)
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["a.json"]);
        fs::remove_dir_all(&dir).expect("clean up");
    }
}
