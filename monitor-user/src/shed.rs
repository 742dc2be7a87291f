//! Load shedding in the pipeline. When the pipeline falls behind the kernel, it does less per
//! call instead of falling further behind and leaving the ring buffer to drop records at
//! random. Two signals say it is behind: the *lag* (a record's age when it is handled), and
//! the ring buffer above its high-water mark (where the kernel starts cutting bodies short;
//! a small ring fills long before the lag grows). In order:
//!
//! 1. heads only: bodies are neither kept nor inspected (sizes still count in full);
//! 2. sampling: of each process's new connections, one in N is analysed, N doubling with
//!    the lag (2, 4, ... [`MAX_SAMPLE`]). The calls on the others are still parsed, so each
//!    is counted, but not analysed or reported (the connection table applies both).
//!
//! Either signal must last `max_lag` before it raises the level, so that a hiccup (the host
//! pausing the agent, one slow write) sheds nothing. Then the lag sets the level (one more
//! per doubling), and a full ring raises it one level per `max_lag` it stays full. Pressure
//! goes away one level per `recover` without either, so that a burst does not make the
//! agent flap between levels. Pure: the caller passes the clock and the signals.

use std::time::Duration;

/// Most new connections of a process that one analysed connection stands for.
pub const MAX_SAMPLE: u32 = 64;
/// Highest level: heads only, then one level per doubling of N up to [`MAX_SAMPLE`].
const MAX_LEVEL: u8 = 1 + MAX_SAMPLE.trailing_zeros() as u8;

/// When to shed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShedConfig {
    /// Lag at which bodies are shed; each doubling beyond it adds a sampling level.
    pub max_lag: Duration,
    /// How long the lag must stay below a level's threshold before that level is left.
    pub recover: Duration,
}

impl ShedConfig {
    /// What `[capture]` describes (`shed_lag`); levels are given back one per second.
    #[must_use]
    pub fn from_config(c: &crate::config::CaptureConfig) -> Self {
        Self {
            max_lag: c.shed_lag,
            recover: Duration::from_secs(1),
        }
    }
}

impl Default for ShedConfig {
    fn default() -> Self {
        Self::from_config(&crate::config::CaptureConfig::default())
    }
}

/// The pipeline's shedding state.
#[derive(Debug)]
pub struct Shedder {
    max_lag_ns: u64,
    recover_ns: u64,
    /// 0: everything; 1: heads only; `k >= 2`: heads only, one in `2^(k-1)` connections.
    level: u8,
    /// Since when (ns) the signals have asked for less than `level`, if they have.
    calm_since: Option<u64>,
    /// When (ns) the level last went up.
    raised_at: Option<u64>,
    /// Since when (ns) either signal has said the pipeline is behind, without a break as
    /// long as `max_lag` (the signals flicker while the pipeline drains the ring).
    pressed_since: Option<u64>,
    /// When (ns) either signal last said so.
    pressed_at: u64,
    /// The last lag observed (ns).
    lag_ns: u64,
}

impl Shedder {
    /// A shedder that sheds nothing until the lag reaches `config.max_lag`.
    #[must_use]
    pub fn new(config: ShedConfig) -> Self {
        let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1);
        Self {
            max_lag_ns: ns(config.max_lag),
            recover_ns: ns(config.recover),
            level: 0,
            calm_since: None,
            raised_at: None,
            pressed_since: None,
            pressed_at: 0,
            lag_ns: 0,
        }
    }

    /// The level a lag calls for: 0 below `max_lag`, then 1 + log2(lag / max_lag).
    fn level_for(&self, lag_ns: u64) -> u8 {
        let ratio = lag_ns / self.max_lag_ns;
        if ratio == 0 {
            return 0;
        }
        let doublings = u8::try_from(ratio.ilog2()).unwrap_or(u8::MAX);
        doublings.saturating_add(1).min(MAX_LEVEL)
    }

    /// Takes in the lag of a record handled at `now_ns` (the same clock as the record's
    /// timestamp; 0 when the ring buffer was found empty), and whether the ring buffer is
    /// above its high-water mark. Returns whether the level changed.
    pub fn observe(&mut self, lag_ns: u64, ring_full: bool, now_ns: u64) -> bool {
        self.lag_ns = lag_ns;
        let mut wanted = self.level_for(lag_ns);
        let pressed = wanted > 0 || ring_full;
        if pressed {
            let gap = now_ns.saturating_sub(self.pressed_at);
            if self.pressed_since.is_none() || gap > self.max_lag_ns {
                self.pressed_since = Some(now_ns);
            }
            self.pressed_at = now_ns;
        }
        let sustained = pressed
            && self
                .pressed_since
                .is_some_and(|t| now_ns.saturating_sub(t) >= self.max_lag_ns);
        if ring_full {
            // Beyond capacity whatever the lag says: hold the level, and raise it once per
            // `max_lag` that the ring stays full.
            let due = self
                .raised_at
                .is_none_or(|t| now_ns.saturating_sub(t) >= self.max_lag_ns);
            let floor = if due {
                self.level.saturating_add(1).min(MAX_LEVEL)
            } else {
                self.level
            };
            wanted = wanted.max(floor);
        }
        if !sustained {
            // Not for long enough to raise the level; long enough to hold it.
            wanted = wanted.min(self.level);
        }
        let before = self.level;
        if wanted > self.level {
            self.level = wanted;
            self.raised_at = Some(now_ns);
            self.calm_since = None;
        } else if wanted == self.level {
            self.calm_since = None;
        } else {
            let since = *self.calm_since.get_or_insert(now_ns);
            if now_ns.saturating_sub(since) >= self.recover_ns {
                self.level -= 1;
                // The next level down needs a calm period of its own.
                self.calm_since = (wanted < self.level).then_some(now_ns);
            }
        }
        self.level != before
    }

    /// The current level (0: no shedding).
    #[must_use]
    pub const fn level(&self) -> u8 {
        self.level
    }

    /// The last lag observed, in ns.
    #[must_use]
    pub const fn lag_ns(&self) -> u64 {
        self.lag_ns
    }

    /// Whether bodies are kept and inspected.
    #[must_use]
    pub const fn keep_bodies(&self) -> bool {
        self.level == 0
    }

    /// One in how many new connections of a process is analysed.
    #[must_use]
    pub const fn sample_every(&self) -> u32 {
        if self.level < 2 {
            1
        } else {
            1 << (self.level - 1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn shedder() -> Shedder {
        Shedder::new(ShedConfig {
            max_lag: Duration::from_millis(100),
            recover: Duration::from_secs(1),
        })
    }

    #[test]
    fn levels_follow_doublings_of_the_lag() {
        let s = shedder();
        let levels: Vec<u8> = [
            0,
            99,
            100,
            199,
            200,
            399,
            400,
            800,
            1600,
            3200,
            6400,
            1 << 20,
        ]
        .iter()
        .map(|ms| s.level_for(ms * MS))
        .collect();
        assert_eq!(levels, [0, 0, 1, 1, 2, 2, 3, 4, 5, 6, 7, 7]);
    }

    /// A shedder already at `level`: the lag that calls for it, lasting `max_lag`.
    fn at(level_lag_ms: u64) -> Shedder {
        let mut s = shedder();
        s.observe(level_lag_ms * MS, false, 0);
        s.observe(level_lag_ms * MS, false, 100 * MS);
        s
    }

    #[test]
    fn bodies_go_first_then_connections_are_sampled() {
        let mut s = shedder();
        assert!(s.keep_bodies());
        assert!(!s.observe(50 * MS, false, 0));
        assert_eq!((s.level(), s.sample_every()), (0, 1));
        // Behind, but not yet for `max_lag`.
        assert!(!s.observe(150 * MS, false, MS));
        assert!(s.keep_bodies());
        assert!(s.observe(150 * MS, false, 101 * MS));
        assert!(!s.keep_bodies());
        assert_eq!(s.sample_every(), 1);
        // Still behind, more and more: the level follows the lag at once.
        assert!(s.observe(450 * MS, false, 102 * MS));
        assert_eq!((s.level(), s.sample_every()), (3, 4));
        assert!(s.observe(u64::MAX, false, 103 * MS));
        assert_eq!(s.sample_every(), MAX_SAMPLE);
    }

    #[test]
    fn a_hiccup_sheds_nothing() {
        let mut s = shedder();
        // Records that waited through a pause of the agent, then caught up with.
        s.observe(900 * MS, false, 0);
        s.observe(500 * MS, false, 50 * MS);
        s.observe(MS, false, 60 * MS);
        // Another pause, after a calm as long as max_lag.
        s.observe(300 * MS, false, 160 * MS);
        s.observe(0, false, 170 * MS);
        // A full ring for a moment, twice.
        s.observe(0, true, 300 * MS);
        s.observe(0, false, 350 * MS);
        s.observe(0, true, 500 * MS);
        assert_eq!(s.level(), 0);
        assert!(s.keep_bodies());
    }

    #[test]
    fn pressure_that_flickers_but_lasts_raises_the_level() {
        let mut s = shedder();
        // The ring hovers about its mark while the pipeline drains it.
        for i in 0..12 {
            s.observe(MS, i % 2 == 0, i * 10 * MS);
        }
        assert_eq!(s.level(), 1);
        assert!(!s.keep_bodies());
    }

    #[test]
    fn pressure_goes_away_one_level_per_calm_period() {
        let mut s = at(450);
        assert_eq!(s.level(), 3);
        // Low lag, but not for long enough.
        s.observe(0, false, 110 * MS);
        s.observe(0, false, 1000 * MS);
        assert_eq!(s.level(), 3);
        s.observe(0, false, 1110 * MS);
        assert_eq!(s.level(), 2);
        s.observe(0, false, 1600 * MS);
        assert_eq!(s.level(), 2);
        s.observe(0, false, 2110 * MS);
        assert_eq!(s.level(), 1);
        s.observe(0, false, 3110 * MS);
        assert_eq!(s.level(), 0);
        assert!(s.keep_bodies());
        assert_eq!(s.sample_every(), 1);
    }

    #[test]
    fn lag_at_the_current_level_holds_it() {
        let mut s = at(450);
        s.observe(0, false, 110 * MS);
        // Back at level 3's lag, however briefly: the calm period starts over.
        s.observe(500 * MS, false, 600 * MS);
        s.observe(0, false, 1300 * MS);
        assert_eq!(s.level(), 3);
        s.observe(0, false, 2300 * MS);
        assert_eq!(s.level(), 2);
    }

    #[test]
    fn a_full_ring_raises_one_level_per_max_lag_and_holds_it() {
        let mut s = shedder();
        // Low lag, but the ring is above its mark: bodies go once it lasts `max_lag`.
        assert!(!s.observe(MS, true, 0));
        assert!(s.observe(MS, true, 100 * MS));
        assert_eq!(s.level(), 1);
        // Still full within max_lag: held, not raised.
        assert!(!s.observe(MS, true, 150 * MS));
        assert_eq!(s.level(), 1);
        s.observe(MS, true, 200 * MS);
        assert_eq!((s.level(), s.sample_every()), (2, 2));
        s.observe(MS, true, 300 * MS);
        assert_eq!(s.sample_every(), 4);
        // Full for long: no further than the highest level.
        for i in 3..100 {
            s.observe(MS, true, i * 100 * MS);
        }
        assert_eq!(s.sample_every(), MAX_SAMPLE);
        // A full ring keeps the level up however long it lasts.
        s.observe(MS, true, 20_000 * MS);
        s.observe(MS, true, 30_000 * MS);
        assert_eq!(s.level(), MAX_LEVEL);
        // Drained: down one level per calm second.
        s.observe(0, false, 30_500 * MS);
        s.observe(0, false, 31_500 * MS);
        assert_eq!(s.level(), MAX_LEVEL - 1);
    }

    #[test]
    fn zero_durations_do_not_divide_by_zero() {
        let mut s = Shedder::new(ShedConfig {
            max_lag: Duration::ZERO,
            recover: Duration::ZERO,
        });
        s.observe(5, false, 0);
        s.observe(5, false, 1);
        assert_eq!(s.level(), 3);
        s.observe(0, false, 1);
        s.observe(0, false, 2);
        assert_eq!(s.level(), 2);
    }
}
