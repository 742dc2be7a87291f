//! `[alerts]` and `[anomaly]`: what becomes an alert, where alerts go, and how volumes are
//! judged.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use serde::Deserialize;

use super::duration;
use crate::alert::{AlertKind, Severity};

/// A value that must not appear in logs, debug output or metrics: webhook URLs, HMAC keys.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    #[must_use]
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself: only for building a request.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Where a secret comes from: inline in the file, a file of its own, or the environment.
/// Never the command line, where `ps` shows it to every user.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SecretSource {
    pub inline: Option<Secret>,
    pub file: Option<PathBuf>,
    pub env: Option<String>,
}

impl SecretSource {
    /// Whether any source is configured.
    #[must_use]
    pub const fn is_set(&self) -> bool {
        self.inline.is_some() || self.file.is_some() || self.env.is_some()
    }

    /// Reads the secret; the error names the source, never the value.
    pub fn resolve(&self) -> Result<Option<Secret>, String> {
        let sources = [
            self.inline.is_some(),
            self.file.is_some(),
            self.env.is_some(),
        ];
        if sources.iter().filter(|s| **s).count() > 1 {
            return Err("give only one of the inline value, `_file` and `_env`".into());
        }
        if let Some(s) = &self.inline {
            return Ok(Some(s.clone()));
        }
        if let Some(path) = &self.file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let value = text.lines().next().unwrap_or("").trim();
            if value.is_empty() {
                return Err(format!("{} is empty", path.display()));
            }
            return Ok(Some(Secret::new(value)));
        }
        if let Some(var) = &self.env {
            return match std::env::var(var) {
                Ok(v) if !v.trim().is_empty() => Ok(Some(Secret::new(v.trim()))),
                _ => Err(format!("environment variable {var} is not set")),
            };
        }
        Ok(None)
    }
}

/// The services alerts are delivered to.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SinkType {
    /// A Slack incoming webhook (Block Kit message).
    Slack,
    /// Any HTTPS endpoint: the documented JSON schema, HMAC-signed.
    Webhook,
    /// Prometheus Alertmanager's `/api/v2/alerts`.
    Alertmanager,
}

impl SinkType {
    /// Name used in logs.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Slack => "slack",
            Self::Webhook => "webhook",
            Self::Alertmanager => "alertmanager",
        }
    }
}

/// One `[[alerts.sinks]]` entry as written.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct RawSink {
    name: String,
    #[serde(rename = "type")]
    kind: SinkType,
    url: Option<Secret>,
    url_file: Option<PathBuf>,
    url_env: Option<String>,
    secret: Option<Secret>,
    secret_file: Option<PathBuf>,
    secret_env: Option<String>,
    #[serde(default = "default_timeout", deserialize_with = "duration")]
    timeout: Duration,
    #[serde(default = "default_rate")]
    rate_per_minute: u32,
    #[serde(default = "default_burst")]
    burst: u32,
    #[serde(default = "default_max_backoff", deserialize_with = "duration")]
    max_backoff: Duration,
    #[serde(default)]
    min_severity: Severity,
    ca_file: Option<PathBuf>,
    #[serde(default = "default_resolve_after", deserialize_with = "duration")]
    resolve_after: Duration,
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
const fn default_rate() -> u32 {
    30
}
const fn default_burst() -> u32 {
    10
}
fn default_max_backoff() -> Duration {
    Duration::from_secs(300)
}
fn default_resolve_after() -> Duration {
    Duration::from_secs(3600)
}

/// One alert destination.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(from = "RawSink")]
pub struct SinkConfig {
    /// Names the sink in metrics, logs and the spool directory.
    pub name: String,
    pub kind: SinkType,
    /// The endpoint (a Slack webhook URL is itself a credential).
    pub url: SecretSource,
    /// HMAC-SHA256 key for `webhook` sinks.
    pub secret: SecretSource,
    /// Per attempt, connection included.
    pub timeout: Duration,
    /// Sustained deliveries per minute; alerts beyond wait in the spool.
    pub rate_per_minute: u32,
    pub burst: u32,
    /// Longest wait between retries.
    pub max_backoff: Duration,
    /// Alerts below this severity skip the sink.
    pub min_severity: Severity,
    /// Extra CA certificate (PEM) to trust, for endpoints behind a private CA.
    pub ca_file: Option<PathBuf>,
    /// Alertmanager: how long an alert stays firing (`endsAt`).
    pub resolve_after: Duration,
}

impl From<RawSink> for SinkConfig {
    fn from(r: RawSink) -> Self {
        Self {
            name: r.name,
            kind: r.kind,
            url: SecretSource {
                inline: r.url,
                file: r.url_file,
                env: r.url_env,
            },
            secret: SecretSource {
                inline: r.secret,
                file: r.secret_file,
                env: r.secret_env,
            },
            timeout: r.timeout,
            rate_per_minute: r.rate_per_minute,
            burst: r.burst,
            max_backoff: r.max_backoff,
            min_severity: r.min_severity,
            ca_file: r.ca_file,
            resolve_after: r.resolve_after,
        }
    }
}

/// A per-kind threshold: the lowest severity that alerts, or `off`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Threshold {
    Off,
    Low,
    Medium,
    High,
    Critical,
}

impl Threshold {
    /// Whether an alert of `severity` passes.
    #[must_use]
    pub fn admits(self, severity: Severity) -> bool {
        let min = match self {
            Self::Off => return false,
            Self::Low => Severity::Low,
            Self::Medium => Severity::Medium,
            Self::High => Severity::High,
            Self::Critical => Severity::Critical,
        };
        severity >= min
    }
}

/// Per-host changes to the rules, first match wins.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Override {
    /// Host patterns: `example.com` or `.example.com` (the host and its subdomains),
    /// `*.example.com` (subdomains only).
    pub hosts: Vec<String>,
    /// Thresholds replacing the global ones for these kinds.
    pub kinds: BTreeMap<AlertKind, Threshold>,
    /// Data types that never alert for these hosts.
    pub ignore_data_types: Vec<String>,
}

/// Mutes matching alerts (they are still counted). Every field given must match.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Silence {
    pub kind: Option<AlertKind>,
    /// Host pattern, as in overrides.
    pub host: Option<String>,
    /// Process name (`comm`).
    pub process: Option<String>,
    pub data_type: Option<String>,
    /// Route template, exact (`/v1/users/{id}`).
    pub route: Option<String>,
    /// RFC 3339 end; none: until removed.
    pub until: Option<String>,
    /// Why, for whoever reads the file next.
    pub comment: Option<String>,
}

/// `[alerts]`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AlertsConfig {
    /// Lowest severity that alerts, per kind; `off` disables a kind.
    pub kinds: BTreeMap<AlertKind, Threshold>,
    /// Data types that never alert (still counted and in the data map).
    pub ignore_data_types: Vec<String>,
    /// Approved third parties: no `new_destination` alert.
    pub allowed_destinations: Vec<String>,
    /// Forbidden destinations: every call alerts (`denied_destination`).
    pub denied_destinations: Vec<String>,
    pub overrides: Vec<Override>,
    pub silences: Vec<Silence>,
    /// How long an alert collects duplicates before it is sent.
    #[serde(deserialize_with = "duration")]
    pub group_wait: Duration,
    /// After an alert is sent, duplicates are only counted for this long; a follow-up with
    /// the count goes out when it ends.
    #[serde(deserialize_with = "duration")]
    pub dedup_window: Duration,
    /// Link added to every alert (e.g. the Grafana dashboard).
    pub dashboard_url: Option<String>,
    /// Spool and learned baselines live here.
    pub state_dir: PathBuf,
    /// Alerts kept per sink while it cannot take them; the oldest go first beyond.
    pub spool_max_alerts: usize,
    pub sinks: Vec<SinkConfig>,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            kinds: AlertKind::ALL
                .iter()
                .map(|k| (*k, k.default_threshold()))
                .collect(),
            ignore_data_types: Vec::new(),
            allowed_destinations: Vec::new(),
            denied_destinations: Vec::new(),
            overrides: Vec::new(),
            silences: Vec::new(),
            group_wait: Duration::from_secs(10),
            dedup_window: Duration::from_secs(3600),
            dashboard_url: None,
            state_dir: PathBuf::from("/var/lib/apimon"),
            spool_max_alerts: 10_000,
            sinks: Vec::new(),
        }
    }
}

impl AlertsConfig {
    /// The threshold of `kind` (defaults for kinds the file leaves out).
    #[must_use]
    pub fn threshold(&self, kind: AlertKind) -> Threshold {
        self.kinds
            .get(&kind)
            .copied()
            .unwrap_or_else(|| kind.default_threshold())
    }
}

/// `[anomaly]`: how traffic volumes are learned and judged.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AnomalyConfig {
    /// Length of one observation window.
    #[serde(deserialize_with = "duration")]
    pub interval: Duration,
    /// Windows a series is observed before it can spike.
    pub warmup_windows: u32,
    /// Windows after which an old observation weighs half.
    pub half_life_windows: f64,
    /// Robust z-score (distance from the mean in mean absolute deviations) that is a spike.
    pub threshold: f64,
    /// A spike is also at least this many times the mean.
    pub min_ratio: f64,
    /// Smallest window values that can spike, per signal.
    pub min_requests: u64,
    pub min_bytes_out: u64,
    pub min_bytes_in: u64,
    pub min_records_out: u64,
    /// An error storm: at least this many 401/403/429 in a window ...
    pub min_errors: u64,
    /// ... making up at least this share of the window's calls.
    pub min_error_ratio: f64,
    /// New destinations and data types seen this long after the first start are learned
    /// silently.
    #[serde(deserialize_with = "duration")]
    pub learning_period: Duration,
    /// Series (process, host, route) tracked; the least recently active go first.
    pub max_series: usize,
    /// (process, host) pairs remembered as known destinations.
    pub max_destinations: usize,
}

impl Default for AnomalyConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(60),
            warmup_windows: 10,
            half_life_windows: 30.0,
            threshold: 6.0,
            min_ratio: 4.0,
            min_requests: 30,
            min_bytes_out: 1024 * 1024,
            min_bytes_in: 10 * 1024 * 1024,
            min_records_out: 20,
            min_errors: 20,
            min_error_ratio: 0.5,
            learning_period: Duration::from_secs(15 * 60),
            max_series: 10_000,
            max_destinations: 10_000,
        }
    }
}
