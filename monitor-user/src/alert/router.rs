//! Groups alerts: the first occurrence of a key opens a group that collects duplicates for
//! `group_wait`, then goes out as one alert with a count. For `dedup_window` after that,
//! duplicates are only counted; if any came, one follow-up carries their count.

use std::{
    collections::HashMap,
    hash::{DefaultHasher, Hash as _, Hasher as _},
    time::{Duration, Instant, SystemTime},
};

use sha2::{Digest as _, Sha256};

use super::{
    Alert,
    rules::{Rules, Subject, Suppressed},
};

/// What happened to an offered occurrence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offered {
    /// It opened a new group.
    New,
    /// It was counted into an existing group.
    Deduplicated,
}

#[derive(Debug)]
struct Group {
    alert: Alert,
    opened: Instant,
    sent_at: Option<Instant>,
    /// Occurrences not yet reported.
    pending: u64,
}

/// Rules plus grouping; lives on the pipeline thread.
#[derive(Debug)]
pub struct Router {
    rules: Rules,
    groups: HashMap<u64, Group>,
    ready: Vec<Alert>,
    agent: String,
    id_seed: String,
    seq: u64,
    max_groups: usize,
    /// A sweep for room found none; set until the next flush. Between flushes no group can
    /// become removable, so sweeping again would only cost a pass per new key.
    full: bool,
    /// Sweeps run, so tests can count them.
    #[cfg(test)]
    sweeps: usize,
}

/// The grouping key of a subject: same kind, type or signal, process, host and route.
#[must_use]
pub fn key_of(s: &Subject<'_>, signal: Option<&str>) -> u64 {
    let mut h = DefaultHasher::new();
    (s.kind, s.data_type, signal, s.process, s.host, s.route).hash(&mut h);
    h.finish()
}

impl Router {
    /// A router applying `rules`; alerts carry `agent` as their origin.
    #[must_use]
    pub fn new(rules: Rules, agent: String, max_groups: usize) -> Self {
        let started = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        Self {
            rules,
            groups: HashMap::new(),
            ready: Vec::new(),
            id_seed: format!("{agent}/{}/{started}", std::process::id()),
            agent,
            seq: 0,
            max_groups,
            full: false,
            #[cfg(test)]
            sweeps: 0,
        }
    }

    /// The rules in force.
    #[must_use]
    pub const fn rules(&self) -> &Rules {
        &self.rules
    }

    /// Replaces the rules (configuration reload); open groups are kept.
    pub fn set_rules(&mut self, rules: Rules) {
        self.rules = rules;
    }

    /// Offers one occurrence. `build` makes the alert only when a new group opens, so
    /// duplicates cost a hash and a lookup.
    pub fn offer(
        &mut self,
        subject: &Subject<'_>,
        signal: Option<&str>,
        ts: &str,
        now: Instant,
        build: impl FnOnce() -> Alert,
    ) -> Result<Offered, Suppressed> {
        self.rules.decide(subject, SystemTime::now())?;
        let key = key_of(subject, signal);
        if let Some(g) = self.groups.get_mut(&key) {
            if g.pending == 0 {
                ts.clone_into(&mut g.alert.first_seen);
            }
            g.pending += 1;
            ts.clone_into(&mut g.alert.last_seen);
            return Ok(Offered::Deduplicated);
        }
        let alert = build();
        if self.groups.len() >= self.max_groups && !self.full {
            self.groups
                .retain(|_, g| g.sent_at.is_none() || g.pending > 0);
            self.full = self.groups.len() >= self.max_groups;
            #[cfg(test)]
            {
                self.sweeps += 1;
            }
        }
        if self.groups.len() >= self.max_groups {
            // Too many distinct keys at once: send without grouping rather than drop.
            self.emit(alert, 1, false);
            return Ok(Offered::New);
        }
        self.groups.insert(
            key,
            Group {
                alert,
                opened: now,
                sent_at: None,
                pending: 1,
            },
        );
        Ok(Offered::New)
    }

    fn emit(&mut self, mut alert: Alert, count: u64, repeat: bool) {
        self.seq += 1;
        let digest = Sha256::digest(format!("{}/{}", self.id_seed, self.seq));
        alert.id = hex::encode(&digest[..16]);
        alert.count = count;
        alert.repeat = repeat;
        alert.agent.clone_from(&self.agent);
        alert
            .dashboard_url
            .clone_from(&self.rules.config().dashboard_url);
        alert.title = alert.make_title();
        self.ready.push(alert);
    }

    /// Sends groups whose wait is over and follow-ups whose window ended; returns them.
    pub fn tick(&mut self, now: Instant) -> Vec<Alert> {
        let wait = self.rules.config().group_wait;
        let window = self.rules.config().dedup_window;
        self.flush(now, wait, window);
        std::mem::take(&mut self.ready)
    }

    /// Sends everything still collecting (the agent is stopping).
    pub fn drain(&mut self, now: Instant) -> Vec<Alert> {
        self.flush(now, Duration::ZERO, Duration::ZERO);
        std::mem::take(&mut self.ready)
    }

    fn flush(&mut self, now: Instant, wait: Duration, window: Duration) {
        // Groups sent here become removable, so the next new key may sweep again.
        self.full = false;
        let mut out = Vec::new();
        self.groups.retain(|_, g| match g.sent_at {
            None if now.duration_since(g.opened) >= wait => {
                out.push((g.alert.clone(), g.pending, false));
                g.pending = 0;
                g.sent_at = Some(now);
                true
            }
            None => true,
            Some(sent) if now.duration_since(sent) >= window => {
                if g.pending == 0 {
                    return false;
                }
                out.push((g.alert.clone(), g.pending, true));
                g.pending = 0;
                g.sent_at = Some(now);
                true
            }
            Some(_) => true,
        });
        for (alert, count, repeat) in out {
            self.emit(alert, count, repeat);
        }
    }

    #[cfg(test)]
    fn groups(&self) -> usize {
        self.groups.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        alert::{AlertKind, Severity},
        config::alerts::AlertsConfig,
    };

    fn router(wait: u64, window: u64) -> Router {
        let config = AlertsConfig {
            group_wait: Duration::from_secs(wait),
            dedup_window: Duration::from_secs(window),
            ..AlertsConfig::default()
        };
        Router::new(Rules::new(&config), "host-a".into(), 100)
    }

    fn subject(host: &str) -> Subject<'_> {
        Subject {
            kind: AlertKind::UnauthenticatedCall,
            severity: Severity::Medium,
            host,
            process: "curl",
            route: "/v1",
            data_type: None,
        }
    }

    fn build(host: &str) -> impl FnOnce() -> Alert + '_ {
        move || {
            Alert::new(
                AlertKind::UnauthenticatedCall,
                Severity::Medium,
                "curl",
                host,
                "t0",
            )
        }
    }

    #[test]
    fn a_flood_becomes_one_alert_with_a_count_then_one_follow_up() {
        let mut r = router(10, 60);
        let t0 = Instant::now();
        for i in 0..1000 {
            let offered = r.offer(&subject("a.com"), None, "t", t0, build("a.com"));
            assert_eq!(
                offered,
                Ok(if i == 0 {
                    Offered::New
                } else {
                    Offered::Deduplicated
                })
            );
        }
        assert!(r.tick(t0 + Duration::from_secs(5)).is_empty());
        let sent = r.tick(t0 + Duration::from_secs(10));
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].count, 1000);
        assert!(!sent[0].repeat);
        assert_eq!(sent[0].id.len(), 32);
        // More of the same inside the window are counted, then reported once.
        for _ in 0..5 {
            let _ = r.offer(&subject("a.com"), None, "t2", t0, build("a.com"));
        }
        assert!(r.tick(t0 + Duration::from_secs(30)).is_empty());
        let follow = r.tick(t0 + Duration::from_secs(71));
        assert_eq!(follow.len(), 1);
        assert_eq!(follow[0].count, 5);
        assert!(follow[0].repeat && follow[0].title.ends_with("(continuing)"));
        assert_ne!(follow[0].id, sent[0].id);
        // A quiet window closes the group.
        assert!(r.tick(t0 + Duration::from_secs(200)).is_empty());
        assert_eq!(r.groups(), 0);
    }

    #[test]
    fn different_keys_are_different_alerts_and_drain_sends_all() {
        let mut r = router(10, 60);
        let t0 = Instant::now();
        let _ = r.offer(&subject("a.com"), None, "t", t0, build("a.com"));
        let _ = r.offer(&subject("b.com"), None, "t", t0, build("b.com"));
        let all = r.drain(t0);
        assert_eq!(all.len(), 2);
        assert!(all.iter().all(|a| a.count == 1 && a.agent == "host-a"));
    }

    #[test]
    fn a_full_router_sweeps_once_per_tick_and_sends_the_rest_ungrouped() {
        let mut r = router(10, 60);
        let t0 = Instant::now();
        let hosts: Vec<String> = (0..1100).map(|i| format!("h{i}.com")).collect();
        for h in &hosts[..100] {
            let _ = r.offer(&subject(h), None, "t", t0, build(h));
        }
        assert_eq!(r.groups(), 100);
        // Every group is still collecting: nothing can be freed, and one sweep finds that out.
        for h in &hosts[100..1100] {
            assert_eq!(
                r.offer(&subject(h), None, "t", t0, build(h)),
                Ok(Offered::New)
            );
        }
        assert_eq!(r.sweeps, 1);
        assert_eq!(r.groups(), 100);
        let sent = r.tick(t0);
        assert_eq!(sent.len(), 1000);
        assert!(sent.iter().all(|a| a.count == 1 && !a.repeat));
        // The wait is over: the groups go out with nothing pending, and a new key frees them.
        assert_eq!(r.tick(t0 + Duration::from_secs(10)).len(), 100);
        let t1 = t0 + Duration::from_secs(10);
        let _ = r.offer(&subject("new.com"), None, "t", t1, build("new.com"));
        assert_eq!(r.sweeps, 2);
        assert_eq!(r.groups(), 1);
        assert!(r.tick(t1).is_empty());
    }
}
