//! Which findings and anomalies become alerts: per-kind thresholds, per-host overrides, ignored
//! data types, silences. Compiled once per configuration load.

use std::time::SystemTime;

use super::{AlertKind, Severity};
use crate::{
    analysis::destination::suffix_matches,
    config::alerts::{AlertsConfig, Silence},
};

/// Why something did not alert.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Suppressed {
    /// Kind off, below the threshold, or an ignored data type.
    Rule,
    /// A silence matched.
    Silenced,
}

/// What the rules look at.
#[derive(Clone, Copy, Debug)]
pub struct Subject<'a> {
    pub kind: AlertKind,
    pub severity: Severity,
    pub host: &'a str,
    pub process: &'a str,
    pub route: &'a str,
    pub data_type: Option<&'a str>,
}

/// The compiled rules.
#[derive(Clone, Debug)]
pub struct Rules {
    config: AlertsConfig,
    /// Silence end times, parsed (`None`: open-ended).
    silence_ends: Vec<Option<SystemTime>>,
}

impl Rules {
    /// Rules of a validated configuration. Host patterns are lower-cased here, once, so that
    /// matching on every call allocates nothing (hosts are lower-case already).
    #[must_use]
    pub fn new(config: &AlertsConfig) -> Self {
        let mut config = config.clone();
        let lower = |v: &mut Vec<String>| v.iter_mut().for_each(|p| p.make_ascii_lowercase());
        lower(&mut config.allowed_destinations);
        lower(&mut config.denied_destinations);
        config
            .overrides
            .iter_mut()
            .for_each(|o| lower(&mut o.hosts));
        for s in &mut config.silences {
            if let Some(h) = s.host.as_mut() {
                h.make_ascii_lowercase();
            }
        }
        let silence_ends = config
            .silences
            .iter()
            .map(|s| {
                s.until
                    .as_deref()
                    .and_then(|u| humantime::parse_rfc3339_weak(u).ok())
            })
            .collect();
        Self {
            config,
            silence_ends,
        }
    }

    /// Whether `s` alerts at time `now`.
    pub fn decide(&self, s: &Subject<'_>, now: SystemTime) -> Result<(), Suppressed> {
        let c = &self.config;
        let ov = c
            .overrides
            .iter()
            .find(|o| o.hosts.iter().any(|p| suffix_matches(s.host, p)));
        let threshold = ov
            .and_then(|o| o.kinds.get(&s.kind).copied())
            .unwrap_or_else(|| c.threshold(s.kind));
        if !threshold.admits(s.severity) {
            return Err(Suppressed::Rule);
        }
        if let Some(t) = s.data_type {
            let ignored = c.ignore_data_types.iter().any(|i| i == t)
                || ov.is_some_and(|o| o.ignore_data_types.iter().any(|i| i == t));
            if ignored {
                return Err(Suppressed::Rule);
            }
        }
        let silenced = c
            .silences
            .iter()
            .zip(&self.silence_ends)
            .any(|(silence, end)| end.is_none_or(|e| now < e) && silence_matches(silence, s));
        if silenced {
            return Err(Suppressed::Silenced);
        }
        Ok(())
    }

    /// Whether `host` is an approved third party (no `new_destination` alert).
    #[must_use]
    pub fn allowed(&self, host: &str) -> bool {
        self.config
            .allowed_destinations
            .iter()
            .any(|p| suffix_matches(host, p))
    }

    /// Whether calls to `host` are forbidden.
    #[must_use]
    pub fn denied(&self, host: &str) -> bool {
        self.config
            .denied_destinations
            .iter()
            .any(|p| suffix_matches(host, p))
    }

    /// The configuration these rules came from.
    #[must_use]
    pub const fn config(&self) -> &AlertsConfig {
        &self.config
    }
}

fn silence_matches(silence: &Silence, s: &Subject<'_>) -> bool {
    silence.kind.is_none_or(|k| k == s.kind)
        && silence
            .host
            .as_deref()
            .is_none_or(|h| suffix_matches(s.host, h))
        && silence.process.as_deref().is_none_or(|p| p == s.process)
        && silence.route.as_deref().is_none_or(|r| r == s.route)
        && silence
            .data_type
            .as_deref()
            .is_none_or(|t| s.data_type == Some(t))
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, time::Duration};

    use super::*;
    use crate::config::alerts::{Override, Threshold};

    fn subject(kind: AlertKind, severity: Severity, host: &str) -> Subject<'_> {
        Subject {
            kind,
            severity,
            host,
            process: "curl",
            route: "/v1/x",
            data_type: Some("email"),
        }
    }

    #[test]
    fn thresholds_overrides_ignores_and_silences() {
        let mut c = AlertsConfig::default();
        let now = SystemTime::now();
        let rules = Rules::new(&c);
        // Defaults: personal data only when critical (plaintext to a third party).
        assert_eq!(
            rules.decide(&subject(AlertKind::Pii, Severity::Medium, "a.com"), now),
            Err(Suppressed::Rule)
        );
        assert!(
            rules
                .decide(&subject(AlertKind::Pii, Severity::Critical, "a.com"), now)
                .is_ok()
        );

        c.overrides.push(Override {
            hosts: vec!["*.stripe.com".into()],
            kinds: BTreeMap::from([(AlertKind::Pii, Threshold::Off)]),
            ignore_data_types: vec![],
        });
        c.ignore_data_types.push("ip_address".into());
        c.silences.push(Silence {
            kind: Some(AlertKind::UnauthenticatedCall),
            host: Some("partner.test".into()),
            ..Silence::default()
        });
        c.silences.push(Silence {
            process: Some("curl".into()),
            until: Some(
                humantime::format_rfc3339_seconds(now - Duration::from_secs(60)).to_string(),
            ),
            ..Silence::default()
        });
        let rules = Rules::new(&c);
        let crit = |host| subject(AlertKind::Pii, Severity::Critical, host);
        assert_eq!(
            rules.decide(&crit("api.stripe.com"), now),
            Err(Suppressed::Rule)
        );
        assert!(rules.decide(&crit("stripe.com"), now).is_ok());
        let ip = Subject {
            data_type: Some("ip_address"),
            ..crit("a.com")
        };
        assert_eq!(rules.decide(&ip, now), Err(Suppressed::Rule));
        let unauth = subject(
            AlertKind::UnauthenticatedCall,
            Severity::Medium,
            "api.partner.test",
        );
        assert_eq!(rules.decide(&unauth, now), Err(Suppressed::Silenced));
        // The expired silence on curl no longer applies.
        assert!(rules.decide(&crit("b.com"), now).is_ok());
    }
}
