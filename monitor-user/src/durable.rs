//! Replacing a file so that a crash leaves the old content or the new, never half of it.

use std::{
    collections::HashMap,
    fs,
    io::{self, Write as _},
    path::{Path, PathBuf},
    sync::{Arc, Condvar, Mutex, PoisonError},
    thread::JoinHandle,
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

/// Replaces files on a thread of its own (see [`replace`]), so that the thread handing them
/// over never waits for the disk: a sync on a busy disk can take a second, which the
/// pipeline would spend behind the kernel. Only the newest content of a file matters, so a
/// write not started yet is replaced by a newer one.
#[derive(Debug)]
pub struct Background {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<Pending>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct Pending {
    files: HashMap<PathBuf, Vec<u8>>,
    /// A write is under way (taken from `files`, not done).
    writing: bool,
    stop: bool,
    /// Writes that failed (each logged): their content is lost unless handed over again.
    failures: u64,
}

impl Background {
    /// Starts the writing thread.
    ///
    /// # Errors
    /// The thread could not be started.
    pub fn start() -> io::Result<Self> {
        let shared = Arc::new(Shared::default());
        let worker = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("apimon-state".into())
            .spawn(move || worker.run())?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// Has `path` replaced with `bytes` soon, in place of any content still waiting for it.
    pub fn replace(&self, path: PathBuf, bytes: Vec<u8>) {
        let mut p = self.shared.lock();
        p.files.insert(path, bytes);
        self.shared.changed.notify_all();
    }

    /// Writes that failed since the start: whoever handed their content over should do
    /// so again.
    #[must_use]
    pub fn failures(&self) -> u64 {
        self.shared.lock().failures
    }

    /// Waits until every file handed over so far is written.
    pub fn flush(&self) {
        let mut p = self.shared.lock();
        while !p.files.is_empty() || p.writing {
            p = self
                .shared
                .changed
                .wait(p)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        // A panic while holding it leaves plain data behind: go on with it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn run(&self) {
        let mut p = self.lock();
        loop {
            let next = p.files.keys().next().cloned();
            if let Some(path) = next {
                let bytes = p.files.remove(&path).unwrap_or_default();
                p.writing = true;
                drop(p);
                let failed = replace(&path, &bytes)
                    .inspect_err(|e| tracing::warn!("cannot write {}: {e}", path.display()))
                    .is_err();
                p = self.lock();
                p.writing = false;
                p.failures += u64::from(failed);
                self.changed.notify_all();
                continue;
            }
            if p.stop {
                return;
            }
            p = self.changed.wait(p).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

impl Drop for Background {
    /// Writes what is still waiting, then ends the thread.
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.changed.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
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

    #[test]
    fn background_writes_the_newest_content_and_flushes() {
        let dir = std::env::temp_dir().join(format!("apimon-durable-bg-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("b.json");
        let writer = Background::start().expect("start");
        for i in 0..100 {
            writer.replace(path.clone(), format!("v{i}").into_bytes());
        }
        writer.flush();
        assert_eq!(fs::read(&path).expect("read"), b"v99");
        writer.replace(path.clone(), b"last".to_vec());
        // A folder where the file should be: that write fails, and is counted.
        writer.replace(dir.join("no-such-folder").join("c.json"), b"x".to_vec());
        writer.flush();
        assert_eq!(writer.failures(), 1);
        drop(writer);
        assert_eq!(fs::read(&path).expect("read"), b"last");
        fs::remove_dir_all(&dir).expect("clean up");
    }
}
