//! Alerts: findings and anomalies pass the rules, are grouped so that a flood becomes one alert
//! with a count, then are spooled to disk and delivered to Slack, webhooks and Alertmanager.
//!
//! ```text
//! findings ─┐
//!           ├─> rules ─> router (group, dedup) ─> spool (fsync) ─> sink workers ─> HTTP
//! anomalies ┘   (pipeline thread)                 (async runtime)
//! ```

pub mod alerter;
pub mod deliver;
pub mod novelty;
pub mod payload;
pub mod router;
pub mod rules;
pub mod spool;
pub mod volume;

use serde::{Deserialize, Serialize};

pub use crate::analysis::finding::Severity;
use crate::config::alerts::Threshold;

/// What an alert is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// Personal data in a call (by default: only in plaintext to a third party).
    Pii,
    /// A credential or key in a call.
    Secret,
    /// Credentials sent to a third party over plaintext HTTP.
    PlaintextCredential,
    /// A third-party API called with no credential.
    UnauthenticatedCall,
    /// A process called a third party for the first time.
    NewDestination,
    /// A kind of personal data went to a destination for the first time.
    NewDataType,
    /// Requests, bytes or personal-data records far above a series' baseline.
    VolumeSpike,
    /// Many 401, 403 or 429 responses from a third party.
    ErrorStorm,
    /// A call to a destination the configuration forbids.
    DeniedDestination,
}

impl AlertKind {
    /// Every kind.
    pub const ALL: [Self; 9] = [
        Self::Pii,
        Self::Secret,
        Self::PlaintextCredential,
        Self::UnauthenticatedCall,
        Self::NewDestination,
        Self::NewDataType,
        Self::VolumeSpike,
        Self::ErrorStorm,
        Self::DeniedDestination,
    ];

    /// Name in alerts, metrics and the configuration.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pii => "pii",
            Self::Secret => "secret",
            Self::PlaintextCredential => "plaintext_credential",
            Self::UnauthenticatedCall => "unauthenticated_call",
            Self::NewDestination => "new_destination",
            Self::NewDataType => "new_data_type",
            Self::VolumeSpike => "volume_spike",
            Self::ErrorStorm => "error_storm",
            Self::DeniedDestination => "denied_destination",
        }
    }

    /// Lowest severity that alerts unless configured: personal data only when it travels in
    /// plaintext (over TLS it is covered by `new_data_type`, once per destination).
    #[must_use]
    pub const fn default_threshold(self) -> Threshold {
        match self {
            Self::Pii | Self::PlaintextCredential => Threshold::Critical,
            Self::Secret => Threshold::High,
            Self::DeniedDestination => Threshold::Low,
            Self::UnauthenticatedCall
            | Self::NewDestination
            | Self::NewDataType
            | Self::VolumeSpike
            | Self::ErrorStorm => Threshold::Medium,
        }
    }

    /// Title stem for messages.
    #[must_use]
    pub const fn title(self) -> &'static str {
        match self {
            Self::Pii => "Personal data sent",
            Self::Secret => "Secret sent",
            Self::PlaintextCredential => "Credential sent in plaintext",
            Self::UnauthenticatedCall => "Unauthenticated call",
            Self::NewDestination => "New third-party destination",
            Self::NewDataType => "New kind of personal data",
            Self::VolumeSpike => "Traffic spike",
            Self::ErrorStorm => "Storm of 401/403/429 responses",
            Self::DeniedDestination => "Call to a denied destination",
        }
    }
}

/// Numbers behind an anomaly.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    /// The window's value.
    pub value: f64,
    /// What the series usually does per window.
    pub baseline: f64,
    /// Distance from the baseline in mean absolute deviations.
    pub score: f64,
    pub window_seconds: u64,
}

/// One alert: what goes into the spool and, rendered per sink, over the wire. Carries masked
/// samples and value hashes only, never a raw value. This is the `webhook` JSON schema
/// (`docs/alerts.md`); fields are only ever added.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// `apimon.alert/v1`.
    pub schema: String,
    /// Idempotency key: the same alert delivered twice carries the same id.
    pub id: String,
    pub kind: AlertKind,
    pub severity: Severity,
    /// One line, for subjects and notifications.
    pub title: String,
    /// The agent's host name.
    pub agent: String,
    /// Process name (`comm`) that made the call.
    pub process: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Destination host.
    pub host: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub route: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub method: String,
    /// `pii`/`secret`/`new_data_type`: the data type; `plaintext_credential`: the scheme.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_type: Option<String>,
    /// Anomalies: which signal (`requests`, `bytes_out`, `bytes_in`, `records_out`, `errors`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// Where in the call (`$.customer.email`, `header:authorization`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Masked sample (`j***@example.com`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample: Option<String>,
    /// Keyed hash of the value, to correlate without revealing it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<bool>,
    /// Data types seen with a new destination.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub data_types: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measurement: Option<Measurement>,
    /// Occurrences this alert stands for.
    pub count: u64,
    /// RFC 3339 times of the first and last occurrence.
    pub first_seen: String,
    pub last_seen: String,
    /// A follow-up: the same thing went on after the first alert.
    #[serde(default)]
    pub repeat: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dashboard_url: Option<String>,
}

/// Schema name of [`Alert`].
pub const SCHEMA: &str = "apimon.alert/v1";

impl Alert {
    /// An alert about one occurrence; the router fills in id and counts.
    #[must_use]
    pub fn new(kind: AlertKind, severity: Severity, process: &str, host: &str, ts: &str) -> Self {
        Self {
            schema: SCHEMA.to_owned(),
            id: String::new(),
            kind,
            severity,
            title: String::new(),
            agent: String::new(),
            process: process.to_owned(),
            pid: None,
            host: host.to_owned(),
            route: String::new(),
            method: String::new(),
            data_type: None,
            signal: None,
            field: None,
            sample: None,
            value_hash: None,
            tls: None,
            data_types: Vec::new(),
            measurement: None,
            count: 1,
            first_seen: ts.to_owned(),
            last_seen: ts.to_owned(),
            repeat: false,
            dashboard_url: None,
        }
    }

    /// The one-line title: what, to where, from which process.
    #[must_use]
    pub fn make_title(&self) -> String {
        let what = match (self.kind, &self.data_type, &self.signal) {
            (AlertKind::Pii, Some(t), _) => {
                let how = if self.tls == Some(false) {
                    " in plaintext"
                } else {
                    ""
                };
                format!("Personal data ({t}) sent{how}")
            }
            (AlertKind::Secret, Some(t), _) => format!("Secret ({t}) sent"),
            (AlertKind::PlaintextCredential, Some(t), _) => {
                format!("Credential ({t}) sent in plaintext")
            }
            (AlertKind::NewDataType, Some(t), _) => format!("New kind of personal data ({t})"),
            (AlertKind::VolumeSpike, _, Some(s)) => format!("Spike in {}", signal_words(s)),
            (kind, _, _) => kind.title().to_owned(),
        };
        let mut title = match self.kind {
            AlertKind::NewDestination => {
                format!("{} called a new third party: {}", self.process, self.host)
            }
            AlertKind::ErrorStorm => format!("{what} from {} to {}", self.host, self.process),
            _ => format!("{what} to {} by {}", self.host, self.process),
        };
        if self.repeat {
            title.push_str(" (continuing)");
        }
        title
    }
}

/// Words for a signal name.
#[must_use]
pub fn signal_words(signal: &str) -> &'static str {
    match signal {
        "requests" => "requests",
        "bytes_out" => "bytes sent",
        "bytes_in" => "bytes received",
        "records_out" => "personal-data records sent",
        "errors" => "401/403/429 responses",
        _ => "traffic",
    }
}

/// The agent's host name, for alerts and Alertmanager's `instance`.
#[must_use]
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}
