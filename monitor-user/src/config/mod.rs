//! The agent's configuration: one TOML file, every key optional (the agent runs with none).

pub mod alerts;
pub mod locate;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use ipnet::IpNet;
use serde::{Deserialize, Deserializer};

use self::alerts::{AlertsConfig, AnomalyConfig};
use crate::analysis::detect::DataType;

/// Why a configuration was rejected. The message names the file, line and key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}{}: {key}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    Invalid {
        path: PathBuf,
        /// Where the key is, when the text is at hand.
        line: Option<usize>,
        key: String,
        message: String,
    },
}

/// Everything configurable.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub capture: CaptureConfig,
    pub output: OutputConfig,
    pub destinations: DestinationsConfig,
    pub metrics: MetricsConfig,
    pub privacy: PrivacyConfig,
    pub analysis: AnalysisConfig,
    pub alerts: AlertsConfig,
    pub anomaly: AnomalyConfig,
    /// The file this came from, for error messages.
    #[serde(skip)]
    pub source: PathBuf,
}

/// How findings protect the values they are about.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PrivacyConfig {
    /// Key for `value_hash` (HMAC-SHA256), inline. Prefer `hash_key_file` or `hash_key_env`.
    pub hash_key: Option<String>,
    /// File holding the hash key (its first line).
    pub hash_key_file: Option<PathBuf>,
    /// Environment variable holding the hash key.
    pub hash_key_env: Option<String>,
    /// Regions (ISO 3166 codes) phone numbers without `+` are read in, in order.
    pub phone_regions: Vec<String>,
}

/// Limits of the analysis.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AnalysisConfig {
    /// Most bytes a compressed body is decoded to.
    pub max_decoded_bytes: usize,
    /// Distinct literal path segments per position before it becomes `{id}`.
    pub route_segment_cardinality: usize,
    /// Flows (process, host, route) the data map keeps.
    pub max_flows: usize,
}

impl Default for AnalysisConfig {
    fn default() -> Self {
        Self {
            max_decoded_bytes: 1024 * 1024,
            route_segment_cardinality: 50,
            max_flows: 10_000,
        }
    }
}

impl PrivacyConfig {
    /// The hash key from wherever it is configured (`None`: no hashing).
    pub fn hash_key(&self, path: &Path) -> Result<Option<Vec<u8>>, ConfigError> {
        if let Some(k) = &self.hash_key {
            return Ok(Some(k.as_bytes().to_vec()));
        }
        if let Some(file) = &self.hash_key_file {
            let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
                path: file.clone(),
                source,
            })?;
            return Ok(text
                .lines()
                .next()
                .map(|l| l.trim().as_bytes().to_vec())
                .filter(|k| !k.is_empty()));
        }
        if let Some(var) = &self.hash_key_env {
            return match std::env::var(var) {
                Ok(v) if !v.is_empty() => Ok(Some(v.into_bytes())),
                _ => Err(ConfigError::Invalid {
                    path: path.to_owned(),
                    line: None,
                    key: "privacy.hash_key_env".into(),
                    message: format!("environment variable {var} is not set"),
                }),
            };
        }
        Ok(None)
    }

    /// Phone regions, parsed; `US` when none are configured.
    pub fn regions(&self, path: &Path) -> Result<Vec<phonenumber::country::Id>, ConfigError> {
        if self.phone_regions.is_empty() {
            return Ok(vec![phonenumber::country::Id::US]);
        }
        self.phone_regions
            .iter()
            .map(|r| {
                r.to_ascii_uppercase()
                    .parse()
                    .map_err(|_unknown| ConfigError::Invalid {
                        path: path.to_owned(),
                        line: None,
                        key: "privacy.phone_regions".into(),
                        message: format!("{r} is not an ISO 3166 region code"),
                    })
            })
            .collect()
    }
}

/// What is captured and how much is kept.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CaptureConfig {
    /// Size of the kernel ring buffer, bytes (a power of two, at least 64 KiB).
    pub ring_buffer_bytes: u32,
    /// The kernel wakes the agent each time the ring buffer's backlog crosses a multiple of
    /// this many bytes (it also polls); at most a quarter of the ring is used, to wake it
    /// before the kernel sheds.
    pub wakeup_bytes: u64,
    /// Body bytes kept per message for analysis; sizes are always counted in full.
    pub body_limit: usize,
    /// Largest start line plus headers accepted per message.
    pub max_header_bytes: usize,
    /// Connections followed at once; beyond, the least recently active 1/64 are dropped.
    pub max_connections: usize,
    /// Bytes all connections may hold in reassembly buffers together; beyond, the least
    /// recently active connections are dropped.
    pub max_buffered_bytes: usize,
    /// How far behind the kernel the agent may fall, and for how long, before it sheds work:
    /// bodies first, then (at each doubling) analysing fewer new connections per process.
    #[serde(deserialize_with = "duration")]
    pub shed_lag: Duration,
    /// How long a request may wait for its response before it is reported without one.
    #[serde(deserialize_with = "duration")]
    pub response_timeout: Duration,
    /// Capture TLS plaintext through OpenSSL uprobes.
    pub tls: bool,
    /// Extra files carrying OpenSSL to inspect at start (libssl copies, static binaries).
    pub tls_paths: Vec<PathBuf>,
    /// Which processes get TLS probes.
    pub tls_probe: TlsProbe,
    /// Processes probed whatever they talk to, by name (`comm`) or executable path: servers
    /// whose inbound TLS calls matter, clients that reach third parties through a proxy.
    pub tls_processes: Vec<String>,
    /// With `tls_probe = "third_party"`: a process opening a file carrying OpenSSL waits until
    /// its probes are in (one RCU grace period, tens of milliseconds, at most 250 ms), so that
    /// a client's first call is seen. Off: no process is ever delayed, and a client calling
    /// within milliseconds of its start may have its first calls missed.
    pub tls_hold_opens: bool,
}

/// Which processes get TLS probes: each probe costs a trap on every call of the process.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TlsProbe {
    /// Processes that talk to third parties (new programs, and processes opening OpenSSL, are
    /// probed until their first connection shows otherwise), plus `tls_processes`. TLS servers
    /// that only answer inbound or internal traffic pay nothing. See `tls_hold_opens` for how a
    /// new client's first call is caught.
    #[default]
    ThirdParty,
    /// Every process that uses OpenSSL, servers included, from its first instruction: no call
    /// is missed, every OpenSSL call on the host pays a uprobe trap.
    All,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        Self {
            ring_buffer_bytes: common::maps::EVENTS_BYTES,
            wakeup_bytes: 64 * 1024,
            body_limit: 64 * 1024,
            max_header_bytes: 64 * 1024,
            max_connections: 65_536,
            max_buffered_bytes: 256 * 1024 * 1024,
            shed_lag: Duration::from_millis(100),
            response_timeout: Duration::from_secs(120),
            tls: true,
            tls_paths: Vec::new(),
            tls_probe: TlsProbe::ThirdParty,
            tls_processes: Vec::new(),
            tls_hold_opens: true,
        }
    }
}

/// Where results go.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct OutputConfig {
    /// JSON lines file (`-` for stdout); none by default.
    pub events: Option<PathBuf>,
    /// Address of the Prometheus endpoint.
    pub metrics_addr: SocketAddr,
    /// Data map as JSON, rewritten atomically every `data_map_interval` and at exit.
    pub data_map: Option<PathBuf>,
    /// Data map as a Markdown report, written like `data_map`.
    pub report: Option<PathBuf>,
    #[serde(deserialize_with = "duration")]
    pub data_map_interval: Duration,
}

impl Default for OutputConfig {
    fn default() -> Self {
        Self {
            events: None,
            metrics_addr: SocketAddr::from(([127, 0, 0, 1], 9464)),
            data_map: None,
            report: None,
            data_map_interval: Duration::from_secs(30),
        }
    }
}

/// What counts as internal; everything else is a third party.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DestinationsConfig {
    /// Internal networks besides loopback, private, link-local and CGNAT ranges.
    pub internal_networks: Vec<IpNet>,
    /// Internal domain suffixes besides `.internal`, `.local`, `.svc`, `.cluster.local`.
    pub internal_domains: Vec<String>,
    /// Hosts always treated as third parties (suffix match).
    pub third_party_domains: Vec<String>,
}

/// Label bounds for metrics.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Distinct `host` label values; later hosts are counted as `other`.
    pub max_hosts: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self { max_hosts: 200 }
    }
}

pub(crate) fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map_err(serde::de::Error::custom)
}

/// Command-line settings that win over the file; kept to apply again on reload.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub events: Option<PathBuf>,
    pub metrics_addr: Option<SocketAddr>,
    pub data_map: Option<PathBuf>,
    pub report: Option<PathBuf>,
}

impl Overrides {
    /// Puts the command line's settings into `config`.
    pub fn apply(&self, config: &mut Config) {
        if let Some(e) = &self.events {
            config.output.events = Some(e.clone());
        }
        if let Some(a) = self.metrics_addr {
            config.output.metrics_addr = a;
        }
        if self.data_map.is_some() {
            config.output.data_map.clone_from(&self.data_map);
        }
        if self.report.is_some() {
            config.output.report.clone_from(&self.report);
        }
    }
}

impl Config {
    /// What a reload applies: `new`, with the sections a reload cannot change put back to
    /// their running values; and the names of those that differ (they wait for a restart).
    #[must_use]
    pub fn reloaded(&self, new: Self) -> (Self, Vec<&'static str>) {
        let mut applied = new;
        let mut pending = Vec::new();
        macro_rules! keep {
            ($name:literal, $($field:ident).+) => {
                if applied.$($field).+ != self.$($field).+ {
                    pending.push($name);
                    applied.$($field).+ = self.$($field).+.clone();
                }
            };
        }
        keep!("capture", capture);
        keep!("output", output);
        keep!("privacy", privacy);
        keep!("analysis", analysis);
        keep!("metrics", metrics);
        keep!("alerts.state_dir", alerts.state_dir);
        keep!("alerts.spool_max_alerts", alerts.spool_max_alerts);
        keep!("anomaly.max_destinations", anomaly.max_destinations);
        (applied, pending)
    }

    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates configuration text (`path` only names it in errors).
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let mut config = config;
        config.source = path.to_owned();
        config.validate(path).map_err(|e| match e {
            ConfigError::Invalid {
                path, key, message, ..
            } => ConfigError::Invalid {
                line: locate::line_of(text, &key),
                path,
                key,
                message,
            },
            other => other,
        })?;
        Ok(config)
    }

    /// Checks what the types cannot: ranges, names, that secrets resolve.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: &str| ConfigError::Invalid {
            path: path.to_owned(),
            line: None,
            key: key.to_owned(),
            message: message.to_owned(),
        };
        let ring = self.capture.ring_buffer_bytes;
        if !ring.is_power_of_two() || ring < 64 * 1024 {
            return Err(invalid(
                "capture.ring_buffer_bytes",
                "must be a power of two of at least 65536",
            ));
        }
        if self.capture.body_limit > 16 * 1024 * 1024 {
            return Err(invalid("capture.body_limit", "must be at most 16 MiB"));
        }
        if self.capture.max_header_bytes < 1024 || self.capture.max_header_bytes > 1024 * 1024 {
            return Err(invalid(
                "capture.max_header_bytes",
                "must be between 1 KiB and 1 MiB",
            ));
        }
        if self.capture.max_connections == 0 {
            return Err(invalid("capture.max_connections", "must be at least 1"));
        }
        if self.capture.max_buffered_bytes < 1024 * 1024 {
            return Err(invalid(
                "capture.max_buffered_bytes",
                "must be at least 1 MiB",
            ));
        }
        // Records may wait for the next poll of the ring buffer (every 20 ms) before they
        // are read: a shorter lag would shed work on an idle agent.
        if self.capture.shed_lag < Duration::from_millis(50) {
            return Err(invalid("capture.shed_lag", "must be at least 50ms"));
        }
        if self.capture.response_timeout.is_zero() {
            return Err(invalid(
                "capture.response_timeout",
                "must be longer than zero",
            ));
        }
        self.privacy.regions(path)?;
        if self.analysis.max_decoded_bytes < 4096 {
            return Err(invalid(
                "analysis.max_decoded_bytes",
                "must be at least 4096",
            ));
        }
        if self.analysis.route_segment_cardinality == 0 {
            return Err(invalid(
                "analysis.route_segment_cardinality",
                "must be at least 1",
            ));
        }
        if self.metrics.max_hosts == 0 {
            return Err(invalid("metrics.max_hosts", "must be at least 1"));
        }
        self.validate_alerts()
            .map_err(|(key, message)| invalid(&key, &message))?;
        self.validate_anomaly()
            .map_err(|(key, message)| invalid(&key, &message))
    }

    fn validate_alerts(&self) -> Result<(), (String, String)> {
        let a = &self.alerts;
        let known_type = |t: &str| DataType::ALL.iter().any(|d| d.name() == t);
        for (i, t) in a.ignore_data_types.iter().enumerate() {
            if !known_type(t) {
                return Err((
                    format!("alerts.ignore_data_types[{i}]"),
                    format!("{t} is not a data type apimon reports"),
                ));
            }
        }
        for (i, o) in a.overrides.iter().enumerate() {
            if o.hosts.is_empty() {
                return Err((
                    format!("alerts.overrides[{i}]"),
                    "needs `hosts`, the hosts it applies to".into(),
                ));
            }
            if let Some(t) = o.ignore_data_types.iter().find(|t| !known_type(t)) {
                return Err((
                    format!("alerts.overrides[{i}].ignore_data_types"),
                    format!("{t} is not a data type apimon reports"),
                ));
            }
        }
        for (i, s) in a.silences.iter().enumerate() {
            if let Some(until) = &s.until
                && humantime::parse_rfc3339_weak(until).is_err()
            {
                return Err((
                    format!("alerts.silences[{i}].until"),
                    format!("{until} is not an RFC 3339 time (2026-12-31T00:00:00Z)"),
                ));
            }
        }
        if a.group_wait > a.dedup_window {
            return Err((
                "alerts.group_wait".into(),
                "must not be longer than alerts.dedup_window".into(),
            ));
        }
        if a.spool_max_alerts == 0 {
            return Err((
                "alerts.spool_max_alerts".into(),
                "must be at least 1".into(),
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (i, sink) in a.sinks.iter().enumerate() {
            let key = |k: &str| format!("alerts.sinks[{i}]{k}");
            let name_ok = !sink.name.is_empty()
                && sink.name.len() <= 64
                && sink
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !name_ok {
                return Err((
                    key(".name"),
                    "must be 1-64 letters, digits, `-` or `_` (it names a spool directory)".into(),
                ));
            }
            if !names.insert(sink.name.as_str()) {
                return Err((key(".name"), format!("{} is used twice", sink.name)));
            }
            if !sink.url.is_set() {
                return Err((key(""), "needs `url`, `url_file` or `url_env`".into()));
            }
            let url = sink.url.resolve().map_err(|m| (key(".url"), m))?;
            let url = url.map(|u| u.expose().to_owned()).unwrap_or_default();
            match reqwest::Url::parse(&url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
                // The URL may be a credential (Slack): the message must not repeat it.
                _ => return Err((key(".url"), "is not an http:// or https:// URL".into())),
            }
            let secret = sink.secret.resolve().map_err(|m| (key(".secret"), m))?;
            if sink.kind == alerts::SinkType::Webhook && secret.is_none() {
                return Err((
                    key(""),
                    "a webhook sink needs `secret`, `secret_file` or `secret_env`: the HMAC key receivers verify alerts with".into(),
                ));
            }
            if sink.rate_per_minute == 0 || sink.burst == 0 {
                return Err((
                    key(".rate_per_minute"),
                    "rate_per_minute and burst must be at least 1".into(),
                ));
            }
            if sink.timeout.is_zero() {
                return Err((key(".timeout"), "must be longer than zero".into()));
            }
            if let Some(ca) = &sink.ca_file
                && let Err(e) = std::fs::metadata(ca)
            {
                return Err((key(".ca_file"), format!("{}: {e}", ca.display())));
            }
        }
        Ok(())
    }

    fn validate_anomaly(&self) -> Result<(), (String, String)> {
        let a = &self.anomaly;
        let checks: [(&str, bool, &str); 7] = [
            (
                "interval",
                a.interval >= Duration::from_secs(1),
                "must be at least 1s",
            ),
            ("threshold", a.threshold > 0.0, "must be above 0"),
            ("min_ratio", a.min_ratio >= 1.0, "must be at least 1"),
            (
                "half_life_windows",
                a.half_life_windows >= 1.0,
                "must be at least 1",
            ),
            (
                "min_error_ratio",
                a.min_error_ratio > 0.0 && a.min_error_ratio <= 1.0,
                "must be above 0 and at most 1",
            ),
            ("max_series", a.max_series > 0, "must be at least 1"),
            (
                "max_destinations",
                a.max_destinations > 0,
                "must be at least 1",
            ),
        ];
        match checks.iter().find(|(_, ok, _)| !ok) {
            Some((key, _, message)) => Err((format!("anomaly.{key}"), (*message).to_owned())),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_all_defaults() {
        let parsed = Config::parse("", Path::new("x.toml")).expect("valid");
        assert_eq!(
            Config {
                source: PathBuf::new(),
                ..parsed
            },
            Config::default()
        );
    }

    #[test]
    fn reload_keeps_restart_only_sections() {
        let running = Config::default();
        let mut new = Config::default();
        new.capture.body_limit = 1;
        new.alerts.state_dir = PathBuf::from("/elsewhere");
        new.alerts.group_wait = Duration::from_secs(1);
        let (applied, pending) = running.reloaded(new);
        assert_eq!(pending, ["capture", "alerts.state_dir"]);
        assert_eq!(applied.capture, running.capture);
        assert_eq!(applied.alerts.state_dir, running.alerts.state_dir);
        assert_eq!(applied.alerts.group_wait, Duration::from_secs(1));
    }

    /// The shipped, documented file says what the defaults are.
    #[test]
    fn shipped_example_is_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/apimon.toml");
        let parsed = Config::load(&path).expect("deploy/apimon.toml parses");
        assert_eq!(
            Config {
                source: PathBuf::new(),
                ..parsed
            },
            Config::default()
        );
    }

    #[test]
    fn values_and_errors() {
        let c = Config::parse(
            "[capture]\nbody_limit = 1024\nresponse_timeout = \"30s\"\n[destinations]\ninternal_networks = [\"203.0.113.0/24\"]\n",
            Path::new("a.toml"),
        )
        .expect("valid");
        assert_eq!(c.capture.body_limit, 1024);
        assert_eq!(c.capture.response_timeout, Duration::from_secs(30));

        let e = Config::parse("[capture]\nbody_limt = 1\n", Path::new("a.toml")).expect_err("typo");
        let msg = e.to_string();
        assert!(msg.contains("line 2") && msg.contains("body_limt"), "{msg}");

        let e = Config::parse("[capture]\nring_buffer_bytes = 1000\n", Path::new("a.toml"))
            .expect_err("bad");
        assert!(e.to_string().contains("capture.ring_buffer_bytes"));

        let e = Config::parse(
            "[destinations]\ninternal_networks = [\"nope\"]\n",
            Path::new("a.toml"),
        )
        .expect_err("bad net");
        assert!(e.to_string().contains("line 2"), "{e}");
    }
}
