//! Findings: what is worth a privacy or security team's attention, and how much.

use serde::Serialize;

use super::{
    CallDirection,
    detect::DataType,
    inspect::{Detection, Part, Side},
};

/// How bad a finding is.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    #[default]
    Low,
    Medium,
    High,
    /// Credentials or personal data in cleartext on the way to a third party.
    Critical,
}

impl Severity {
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Low => "low",
            Self::Medium => "medium",
            Self::High => "high",
            Self::Critical => "critical",
        }
    }
}

/// Kinds of findings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    Pii,
    Secret,
    /// A call to a third party that carries no credential.
    UnauthenticatedCall,
    /// A credential sent to a third party over plaintext HTTP.
    PlaintextCredential,
}

impl FindingKind {
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pii => "pii",
            Self::Secret => "secret",
            Self::UnauthenticatedCall => "unauthenticated_call",
            Self::PlaintextCredential => "plaintext_credential",
        }
    }
}

/// One finding event. Carries the call's identity; the value itself only masked.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Finding {
    pub kind: FindingKind,
    pub ts: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entry: Option<usize>,
    pub severity: Severity,
    /// For `pii`/`secret`: the data type; for `plaintext_credential`: the auth scheme.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub side: Option<Side>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub part: Option<Part>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_hash: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    pub host: String,
    pub method: String,
    pub path: String,
    pub route: String,
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    pub comm: String,
    pub direction: CallDirection,
    pub third_party: bool,
    pub tls: bool,
}

/// Severity of personal data or a secret found in a call.
#[must_use]
pub fn severity(d: &Detection, third_party: bool, tls: bool, direction: CallDirection) -> Severity {
    let outgoing = match direction {
        CallDirection::Egress => d.side == Side::Request,
        CallDirection::Ingress => d.side == Side::Response,
    };
    if outgoing && third_party && !tls {
        return Severity::Critical;
    }
    if d.data_type.is_secret() {
        return Severity::High;
    }
    match (outgoing && third_party, d.data_type.is_sensitive()) {
        (true, true) => Severity::High,
        (true, false) | (false, true) => Severity::Medium,
        (false, false) => Severity::Low,
    }
}

/// The kind of finding a data type makes.
#[must_use]
pub const fn kind_of(t: DataType) -> FindingKind {
    if t.is_secret() {
        FindingKind::Secret
    } else {
        FindingKind::Pii
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detection(t: DataType, side: Side) -> Detection {
        Detection {
            side,
            part: Part::Body,
            field: "$.x".into(),
            data_type: t,
            sample: String::new(),
            value_hash: None,
            count: 1,
        }
    }

    #[test]
    fn severities() {
        let e = CallDirection::Egress;
        assert_eq!(
            severity(&detection(DataType::Email, Side::Request), true, false, e),
            Severity::Critical
        );
        assert_eq!(
            severity(&detection(DataType::Jwt, Side::Request), true, false, e),
            Severity::Critical
        );
        assert_eq!(
            severity(&detection(DataType::Jwt, Side::Request), true, true, e),
            Severity::High
        );
        assert_eq!(
            severity(
                &detection(DataType::CreditCard, Side::Request),
                true,
                true,
                e
            ),
            Severity::High
        );
        assert_eq!(
            severity(&detection(DataType::Email, Side::Request), true, true, e),
            Severity::Medium
        );
        assert_eq!(
            severity(&detection(DataType::Email, Side::Response), true, true, e),
            Severity::Low
        );
        assert_eq!(
            severity(&detection(DataType::Email, Side::Request), false, false, e),
            Severity::Low
        );
    }
}
