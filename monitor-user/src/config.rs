//! The agent's configuration: one TOML file, every key optional (the agent runs with none).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use ipnet::IpNet;
use serde::{Deserialize, Deserializer};

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
    #[error("{path}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
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
}

/// What is captured and how much is kept.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CaptureConfig {
    /// Size of the kernel ring buffer, bytes (a power of two, at least 64 KiB).
    pub ring_buffer_bytes: u32,
    /// Bytes waiting in the ring buffer before the kernel wakes the agent (it also polls).
    pub wakeup_bytes: u64,
    /// Body bytes kept per message for analysis; sizes are always counted in full.
    pub body_limit: usize,
    /// Largest start line plus headers accepted per message.
    pub max_header_bytes: usize,
    /// Connections followed at once; the least recently active is dropped beyond.
    pub max_connections: usize,
    /// How long a request may wait for its response before it is reported without one.
    #[serde(deserialize_with = "duration")]
    pub response_timeout: Duration,
    /// Capture TLS plaintext through OpenSSL uprobes.
    pub tls: bool,
    /// Extra files carrying OpenSSL to probe at start (libssl copies, static binaries).
    pub tls_paths: Vec<PathBuf>,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        Self {
            ring_buffer_bytes: common::maps::EVENTS_BYTES,
            wakeup_bytes: 64 * 1024,
            body_limit: 64 * 1024,
            max_header_bytes: 64 * 1024,
            max_connections: 65_536,
            response_timeout: Duration::from_secs(120),
            tls: true,
            tls_paths: Vec::new(),
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
}

impl Default for OutputConfig {
    fn default() -> Self {
        Self {
            events: None,
            metrics_addr: SocketAddr::from(([127, 0, 0, 1], 9464)),
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

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map_err(serde::de::Error::custom)
}

impl Config {
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
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key, message: &str| ConfigError::Invalid {
            path: path.to_owned(),
            key,
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
        if self.capture.response_timeout.is_zero() {
            return Err(invalid(
                "capture.response_timeout",
                "must be longer than zero",
            ));
        }
        if self.metrics.max_hosts == 0 {
            return Err(invalid("metrics.max_hosts", "must be at least 1"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_all_defaults() {
        assert_eq!(
            Config::parse("", Path::new("x.toml")).expect("valid"),
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
