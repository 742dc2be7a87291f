//! Per-process sampling of new connections, for shedding load: of each process's new
//! connections, one in `every` is analysed. Per process, so that a busy process cannot crowd
//! out the calls of a quiet one.

use std::collections::HashMap;

/// Processes whose connections are counted while sampling; beyond, the counts start over
/// (a process's next connection is then analysed: harmless, and memory stays bounded).
const MAX_PROCESSES: usize = 4096;

/// Decides which new connections are analysed.
#[derive(Debug)]
pub(super) struct Sampler {
    /// One in how many new connections of a process is analysed (1: all).
    every: u32,
    /// Per process, new connections seen while sampling.
    seen: HashMap<u32, u32>,
}

impl Sampler {
    /// A sampler that admits every connection.
    #[must_use]
    pub(super) fn new() -> Self {
        Self {
            every: 1,
            seen: HashMap::new(),
        }
    }

    /// Admits one in `every` new connections per process from now on (1, or 0: all).
    pub(super) fn set_every(&mut self, every: u32) {
        self.every = every.max(1);
        if self.every == 1 {
            // Counts only matter while sampling; the memory goes with them.
            self.seen = HashMap::new();
        }
    }

    /// One in how many new connections of a process is analysed.
    pub(super) const fn every(&self) -> u32 {
        self.every
    }

    /// Whether a new connection of process `pid` is analysed: the first of every `every`.
    pub(super) fn admit(&mut self, pid: u32) -> bool {
        if self.every == 1 {
            return true;
        }
        if self.seen.len() >= MAX_PROCESSES && !self.seen.contains_key(&pid) {
            self.seen.clear();
        }
        let n = self.seen.entry(pid).or_insert(0);
        let keep = n.is_multiple_of(self.every);
        *n = n.wrapping_add(1);
        keep
    }

    /// Process `pid` exited: its count goes (pids are reused).
    pub(super) fn forget(&mut self, pid: u32) {
        if !self.seen.is_empty() {
            self.seen.remove(&pid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_in_n_connections_per_process() {
        let mut s = Sampler::new();
        assert!((0..10).all(|_| s.admit(1)));
        s.set_every(4);
        let kept = |s: &mut Sampler, pid| (0..16).filter(|_| s.admit(pid)).count();
        assert_eq!(kept(&mut s, 1), 4);
        // Another process has its own count: its first connection is analysed.
        assert!(s.admit(2));
        assert!(!s.admit(2));
        s.forget(2);
        assert!(s.admit(2));
        s.set_every(1);
        assert!(s.seen.is_empty());
        assert!((0..10).all(|_| s.admit(1)));
    }

    #[test]
    fn process_counts_stay_bounded() {
        let mut s = Sampler::new();
        s.set_every(64);
        for pid in 0..(MAX_PROCESSES as u32 * 3) {
            s.admit(pid);
        }
        assert!(s.seen.len() <= MAX_PROCESSES);
    }
}
