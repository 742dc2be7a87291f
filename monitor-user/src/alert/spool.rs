//! The on-disk alert queue: one directory per sink, one fsync'd file per alert, deleted once
//! the sink took it. A sink outage or an agent restart (even SIGKILL) loses nothing that was
//! spooled; a full queue drops its oldest alert and says so. Alerts a sink refuses for good
//! move to `rejected/`, kept for an operator to inspect.

use std::{
    collections::{BTreeSet, HashMap},
    fs, io,
    path::{Path, PathBuf},
    sync::Mutex,
};

use super::Alert;
use crate::durable;

/// Rejected alerts kept per sink.
const MAX_REJECTED: usize = 1000;

/// What `put` had to do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Put {
    /// Oldest alerts removed to make room.
    pub dropped: usize,
}

/// Spooled alerts, by sink.
#[derive(Debug)]
pub struct Spool {
    root: PathBuf,
    max: usize,
    /// Sequence numbers waiting, per sink, oldest first.
    index: Mutex<HashMap<String, BTreeSet<u64>>>,
    next: Mutex<u64>,
}

fn file_name(seq: u64) -> String {
    format!("{seq:020}.json")
}

fn seq_of(name: &str) -> Option<u64> {
    name.strip_suffix(".json")?.parse().ok()
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

impl Spool {
    /// Opens (creating) the spool under `root` and indexes what is already there.
    ///
    /// # Errors
    /// The directory cannot be created or read.
    pub fn open(root: &Path, max: usize) -> io::Result<Self> {
        fs::create_dir_all(root)?;
        let mut index: HashMap<String, BTreeSet<u64>> = HashMap::new();
        let mut next = 0;
        for dir in fs::read_dir(root)? {
            let dir = dir?;
            if !dir.file_type()?.is_dir() {
                continue;
            }
            let sink = dir.file_name().to_string_lossy().into_owned();
            let seqs = index.entry(sink).or_default();
            for f in fs::read_dir(dir.path())? {
                let f = f?;
                let name = f.file_name();
                let name = name.to_string_lossy();
                if let Some(seq) = seq_of(&name) {
                    seqs.insert(seq);
                    next = next.max(seq + 1);
                } else if name.ends_with(durable::PARTIAL_SUFFIX) {
                    // A write cut short by a crash: it was never acknowledged as spooled.
                    let _ = fs::remove_file(f.path());
                }
            }
        }
        Ok(Self {
            root: root.to_owned(),
            max,
            index: Mutex::new(index),
            next: Mutex::new(next),
        })
    }

    fn dir(&self, sink: &str) -> PathBuf {
        self.root.join(sink)
    }

    fn index(&self) -> std::sync::MutexGuard<'_, HashMap<String, BTreeSet<u64>>> {
        self.index
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Durably queues `alert` for each of `sinks`.
    ///
    /// # Errors
    /// Writing or syncing failed; the alert is not queued for the sink that failed.
    pub fn put(&self, alert: &Alert, sinks: &[&str]) -> io::Result<Put> {
        let bytes = serde_json::to_vec(alert).map_err(io::Error::other)?;
        let seq = {
            let mut next = self
                .next
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            *next += 1;
            *next - 1
        };
        let mut put = Put::default();
        for sink in sinks {
            let dir = self.dir(sink);
            fs::create_dir_all(&dir)?;
            durable::replace(&dir.join(file_name(seq)), &bytes)?;
            let oldest: Vec<u64> = {
                let mut index = self.index();
                let seqs = index.entry((*sink).to_owned()).or_default();
                seqs.insert(seq);
                let over = seqs.len().saturating_sub(self.max);
                let oldest: Vec<u64> = seqs.iter().take(over).copied().collect();
                for s in &oldest {
                    seqs.remove(s);
                }
                oldest
            };
            for s in oldest {
                let _ = fs::remove_file(dir.join(file_name(s)));
                put.dropped += 1;
            }
        }
        Ok(put)
    }

    /// The oldest alert waiting for `sink`. An unreadable file is moved to `rejected/` and
    /// reported as an error so that it is counted, not retried forever.
    ///
    /// # Errors
    /// The oldest file could not be read or parsed.
    pub fn oldest(&self, sink: &str) -> io::Result<Option<(u64, Alert)>> {
        let Some(seq) = self.index().get(sink).and_then(|s| s.first().copied()) else {
            return Ok(None);
        };
        let path = self.dir(sink).join(file_name(seq));
        let parsed = fs::read(&path)
            .and_then(|b| serde_json::from_slice::<Alert>(&b).map_err(io::Error::other));
        match parsed {
            Ok(alert) => Ok(Some((seq, alert))),
            Err(e) => {
                self.reject(sink, seq);
                Err(e)
            }
        }
    }

    /// Forgets a delivered alert.
    ///
    /// # Errors
    /// The file could not be removed (it will be delivered again after a restart).
    pub fn remove(&self, sink: &str, seq: u64) -> io::Result<()> {
        if let Some(s) = self.index().get_mut(sink) {
            s.remove(&seq);
        }
        let dir = self.dir(sink);
        match fs::remove_file(dir.join(file_name(seq))) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => sync_dir(&dir),
        }
    }

    /// Moves an alert the sink refused for good to `rejected/`, keeping the newest few.
    pub fn reject(&self, sink: &str, seq: u64) {
        if let Some(s) = self.index().get_mut(sink) {
            s.remove(&seq);
        }
        let dir = self.dir(sink);
        let rejected = dir.join("rejected");
        let name = file_name(seq);
        if fs::create_dir_all(&rejected).is_err()
            || fs::rename(dir.join(&name), rejected.join(&name)).is_err()
        {
            let _ = fs::remove_file(dir.join(&name));
            return;
        }
        if let Ok(entries) = fs::read_dir(&rejected) {
            let mut names: Vec<_> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
            if names.len() > MAX_REJECTED {
                names.sort();
                for old in &names[..names.len() - MAX_REJECTED] {
                    let _ = fs::remove_file(old);
                }
            }
        }
    }

    /// Alerts waiting for `sink`.
    #[must_use]
    pub fn depth(&self, sink: &str) -> usize {
        self.index().get(sink).map_or(0, BTreeSet::len)
    }

    /// Sinks with alerts waiting, including ones no longer configured.
    #[must_use]
    pub fn sinks(&self) -> Vec<(String, usize)> {
        self.index()
            .iter()
            .filter(|(_, s)| !s.is_empty())
            .map(|(k, s)| (k.clone(), s.len()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::{AlertKind, Severity};

    fn alert(n: u64) -> Alert {
        let mut a = Alert::new(
            AlertKind::NewDestination,
            Severity::Medium,
            "curl",
            "a",
            "t",
        );
        a.count = n;
        a
    }

    #[test]
    fn survives_reopen_bounded_and_rejects_garbage() {
        let root = std::env::temp_dir().join(format!("apimon-spool-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let spool = Spool::open(&root, 3).expect("open");
        for n in 0..5 {
            let put = spool.put(&alert(n), &["slack", "hook"]).expect("put");
            assert_eq!(put.dropped, if n >= 3 { 2 } else { 0 });
        }
        assert_eq!(spool.depth("slack"), 3);
        let (seq, a) = spool.oldest("slack").expect("read").expect("some");
        assert_eq!(a.count, 2);
        spool.remove("slack", seq).expect("remove");
        drop(spool);

        // A restart finds the rest, in order, and numbers new alerts after them.
        let spool = Spool::open(&root, 3).expect("reopen");
        assert_eq!(spool.depth("slack"), 2);
        assert_eq!(spool.depth("hook"), 3);
        let (_, a) = spool.oldest("slack").expect("read").expect("some");
        assert_eq!(a.count, 3);
        spool.put(&alert(9), &["slack"]).expect("put");
        let (seq, _) = spool.oldest("slack").expect("read").expect("some");
        assert!(seq < 5);

        // A damaged file is set aside (and reported), not retried forever.
        fs::write(root.join("hook").join(file_name(2)), b"garbage").expect("write");
        assert!(spool.oldest("hook").is_err());
        assert!(root.join("hook/rejected").join(file_name(2)).exists());
        let (seq, _) = spool.oldest("hook").expect("read").expect("some");
        assert_eq!(seq, 3);
        let _ = fs::remove_dir_all(&root);
    }
}
