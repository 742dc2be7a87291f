//! What is new: a process calling a third party for the first time, a kind of personal data
//! going to a destination for the first time. What is known survives restarts (a JSON file in
//! the state directory), so a restart does not re-announce every destination, and a learning
//! period after the very first start keeps the initial inventory quiet.

use std::{
    collections::{BTreeSet, HashMap},
    path::PathBuf,
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};

use crate::{analysis::detect::DataType, durable};

/// Pairs forgotten at once when full: 1/64 of the maximum.
const EVICT_SHARE: usize = 64;

/// Something seen for the first time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Novel {
    /// The process never called this host before; the data types it sent this time.
    Destination { data_types: Vec<String> },
    /// The process never sent this data type to this host before.
    DataType(String),
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Known {
    data_types: BTreeSet<String>,
    first_seen: String,
    #[serde(skip)]
    last_used: u64,
}

#[derive(Serialize, Deserialize)]
struct Entry {
    process: String,
    host: String,
    #[serde(flatten)]
    known: Known,
}

#[derive(Serialize, Deserialize)]
struct Document {
    version: u32,
    /// New things are learned without alerts until then (RFC 3339).
    learning_until: String,
    destinations: Vec<Entry>,
}

/// Known destinations and data types, by host then process.
#[derive(Debug)]
pub struct Novelty {
    known: HashMap<String, HashMap<String, Known>>,
    learning_until: SystemTime,
    max: usize,
    len: usize,
    /// Entries forgotten to stay within `max` since start, or not loaded for it.
    evicted: u64,
    clock: u64,
    dirty: bool,
    path: Option<PathBuf>,
}

impl Novelty {
    /// Loads what is known from `path` (if any); a missing file starts the learning period.
    ///
    /// # Errors
    /// The file exists but cannot be read or parsed (it is not overwritten then).
    pub fn load(path: Option<PathBuf>, learning: Duration, max: usize) -> Result<Self, String> {
        let mut n = Self {
            known: HashMap::new(),
            learning_until: SystemTime::now() + learning,
            max,
            len: 0,
            evicted: 0,
            clock: 0,
            dirty: true,
            path: None,
        };
        if let Some(p) = &path {
            match std::fs::read(p) {
                Ok(bytes) => {
                    let doc: Document = serde_json::from_slice(&bytes).map_err(|e| {
                        format!("{}: {e}; move it away to start afresh", p.display())
                    })?;
                    n.learning_until = humantime::parse_rfc3339_weak(&doc.learning_until)
                        .unwrap_or(n.learning_until);
                    // A smaller maximum than when it was saved: the rest is forgotten.
                    n.evicted = doc.destinations.len().saturating_sub(max) as u64;
                    for e in doc.destinations.into_iter().take(max) {
                        n.known
                            .entry(e.host)
                            .or_default()
                            .insert(e.process, e.known);
                        n.len += 1;
                    }
                    n.dirty = false;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("{}: {e}", p.display())),
            }
        }
        n.path = path;
        Ok(n)
    }

    /// Whether new things are still being learned silently.
    #[must_use]
    pub fn learning(&self, now: SystemTime) -> bool {
        now < self.learning_until
    }

    /// Destinations known.
    #[must_use]
    pub const fn len(&self) -> usize {
        self.len
    }

    /// (Process, destination) pairs forgotten to stay within the maximum since start, or
    /// left out of the saved state because it held more.
    #[must_use]
    pub const fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Whether nothing is known.
    #[must_use]
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Records a call from `process` to `host` sending `types`; returns what was new.
    pub fn observe(
        &mut self,
        process: &str,
        host: &str,
        types: &[DataType],
        ts: &str,
    ) -> Vec<Novel> {
        self.clock += 1;
        let clock = self.clock;
        if let Some(k) = self.known.get_mut(host).and_then(|m| m.get_mut(process)) {
            k.last_used = clock;
            let mut novel = Vec::new();
            for t in types.iter().map(|t| t.name()) {
                if !k.data_types.contains(t) {
                    k.data_types.insert(t.to_owned());
                    novel.push(Novel::DataType(t.to_owned()));
                }
            }
            self.dirty |= !novel.is_empty();
            return novel;
        }
        if self.len >= self.max {
            self.evict();
        }
        let data_types: BTreeSet<String> = types.iter().map(|t| t.name().to_owned()).collect();
        let novel = Novel::Destination {
            data_types: data_types.iter().cloned().collect(),
        };
        self.known.entry(host.to_owned()).or_default().insert(
            process.to_owned(),
            Known {
                data_types,
                first_seen: ts.to_owned(),
                last_used: clock,
            },
        );
        self.len += 1;
        self.dirty = true;
        vec![novel]
    }

    /// Forgets the least recently used [`EVICT_SHARE`] of the pairs (one at least): finding
    /// them is a pass over all, so freeing one at a time would make a flood quadratic.
    fn evict(&mut self) {
        let n = (self.max / EVICT_SHARE).max(1);
        let by_age = self
            .known
            .iter()
            .flat_map(|(h, m)| m.iter().map(move |(p, k)| (k.last_used, (h, p))))
            .collect();
        let victims: Vec<(String, String)> = crate::evict::least_recent(by_age, n)
            .into_iter()
            .map(|(h, p)| (h.clone(), p.clone()))
            .collect();
        for (h, p) in victims {
            if let Some(m) = self.known.get_mut(&h)
                && m.remove(&p).is_some()
            {
                if m.is_empty() {
                    self.known.remove(&h);
                }
                self.len -= 1;
                self.evicted += 1;
            }
        }
    }

    /// Writes what is known if it changed (atomically: temporary file, fsync, rename).
    ///
    /// # Errors
    /// The state directory is not writable.
    pub fn save(&mut self) -> std::io::Result<()> {
        let Some((path, bytes)) = self.snapshot() else {
            return Ok(());
        };
        durable::replace(&path, &bytes).inspect_err(|_| self.dirty = true)
    }

    /// Has the next [`Self::snapshot`] or [`Self::save`] write everything again (a
    /// snapshot's write failed).
    pub const fn unsaved(&mut self) {
        self.dirty = true;
    }

    /// What [`Self::save`] would write, and where, if it changed since the last snapshot:
    /// for a writer on another thread (`durable::Background`).
    pub fn snapshot(&mut self) -> Option<(PathBuf, Vec<u8>)> {
        let path = self.path.as_ref()?;
        if !self.dirty {
            return None;
        }
        let doc = Document {
            version: 1,
            learning_until: humantime::format_rfc3339_seconds(self.learning_until).to_string(),
            destinations: self
                .known
                .iter()
                .flat_map(|(h, m)| {
                    m.iter().map(|(p, k)| Entry {
                        process: p.clone(),
                        host: h.clone(),
                        known: k.clone(),
                    })
                })
                .collect(),
        };
        self.dirty = false;
        Some((
            path.clone(),
            serde_json::to_vec_pretty(&doc).unwrap_or_default(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_destinations_and_types_survive_a_restart() {
        let dir = std::env::temp_dir().join(format!("apimon-novelty-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("known.json");
        let _ = std::fs::remove_file(&path);
        let mut n = Novelty::load(Some(path.clone()), Duration::ZERO, 100).expect("load");
        assert!(!n.learning(SystemTime::now()));
        assert_eq!(
            n.observe("curl", "a.com", &[DataType::Email], "t"),
            vec![Novel::Destination {
                data_types: vec!["email".into()]
            }]
        );
        assert!(
            n.observe("curl", "a.com", &[DataType::Email], "t")
                .is_empty()
        );
        assert_eq!(
            n.observe("curl", "a.com", &[DataType::Email, DataType::Phone], "t"),
            vec![Novel::DataType("phone".into())]
        );
        n.save().expect("save");
        let mut again =
            Novelty::load(Some(path.clone()), Duration::from_secs(3600), 100).expect("reload");
        // The learning period is the first start's, not extended by the restart.
        assert!(!again.learning(SystemTime::now()));
        assert!(
            again
                .observe("curl", "a.com", &[DataType::Phone], "t")
                .is_empty()
        );
        assert_eq!(again.observe("python3", "a.com", &[], "t").len(), 1);
        std::fs::write(&path, b"{not json").expect("write");
        assert!(Novelty::load(Some(path), Duration::ZERO, 100).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bounded() {
        let mut n = Novelty::load(None, Duration::ZERO, 3).expect("load");
        for i in 0..10 {
            n.observe("p", &format!("h{i}"), &[], "t");
        }
        assert_eq!(n.len(), 3);
        assert_eq!(n.evicted(), 7);
    }

    #[test]
    fn a_flood_forgets_the_least_recently_used_share_at_once() {
        let mut n = Novelty::load(None, Duration::ZERO, 640).expect("load");
        for i in 0..640 {
            n.observe("p", &format!("h{i}"), &[], "t");
        }
        // h0 is used again, so h1..h10 are now the least recently used.
        assert!(n.observe("p", "h0", &[], "t").is_empty());
        assert_eq!(n.observe("p", "new", &[], "t").len(), 1);
        assert_eq!(n.evicted(), 10);
        assert_eq!(n.len(), 631);
        assert!(n.observe("p", "h0", &[], "t").is_empty());
        assert!(n.observe("p", "h11", &[], "t").is_empty());
        // Forgotten, so new again (there is room: no further eviction).
        assert_eq!(n.observe("p", "h1", &[], "t").len(), 1);
        assert_eq!(n.evicted(), 10);
        // Each eviction frees ten places, so the 1000 new pairs below cost 100 passes; every
        // pair forgotten is counted.
        for i in 0..1000 {
            n.observe("q", &format!("h{i}"), &[], "t");
            assert!(n.len() <= 640);
        }
        assert_eq!(n.evicted(), 10 + 1000);
        assert_eq!(n.len(), 632);
        assert_eq!(n.len() as u64 + n.evicted(), 640 + 1 + 1 + 1000);
    }
}
