//! What each sink receives: a Slack Block Kit message, the documented webhook JSON with its
//! HMAC-SHA256 signature, or an Alertmanager alert list. Pure functions of an alert.

use std::time::{Duration, SystemTime};

use hmac::{Hmac, Mac as _};
use serde_json::{Value, json};
use sha2::Sha256;

use super::{Alert, AlertKind, Severity, signal_words};

/// Header carrying the webhook signature: `v1=<hex HMAC-SHA256(key, "<timestamp>.<body>")>`.
pub const SIGNATURE_HEADER: &str = "x-apimon-signature";
/// Header carrying the Unix time the signature covers.
pub const TIMESTAMP_HEADER: &str = "x-apimon-timestamp";
/// Header carrying the alert id; receivers drop repeats of an id they already have.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";

/// The signature of `body` sent at `timestamp` (Unix seconds).
#[must_use]
pub fn sign(key: &[u8], timestamp: u64, body: &[u8]) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return String::new();
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// The webhook body: the alert itself (schema `apimon.alert/v1`).
#[must_use]
pub fn webhook(alert: &Alert) -> Vec<u8> {
    serde_json::to_vec(alert).unwrap_or_default()
}

const fn emoji(s: Severity) -> &'static str {
    match s {
        Severity::Critical => ":rotating_light:",
        Severity::High => ":warning:",
        Severity::Medium => ":large_orange_diamond:",
        Severity::Low => ":information_source:",
    }
}

/// Slack escapes: `&`, `<` and `>` are control characters in mrkdwn.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// What happened, in a sentence, with the numbers.
#[must_use]
pub fn description(a: &Alert) -> String {
    let times = if a.count == 1 {
        "once".to_owned()
    } else {
        format!("{} times", a.count)
    };
    let mut text = match a.kind {
        AlertKind::VolumeSpike | AlertKind::ErrorStorm => {
            let m = a.measurement.clone().unwrap_or_default();
            format!(
                "{} from {} to {} (route {}) reached {} in {} s against a usual {} (score {}).",
                signal_words(a.signal.as_deref().unwrap_or("")),
                a.process,
                a.host,
                a.route,
                m.value,
                m.window_seconds,
                m.baseline,
                m.score
            )
        }
        AlertKind::NewDestination => {
            let mut t = format!("{} called {} for the first time", a.process, a.host);
            if !a.data_types.is_empty() {
                t.push_str(&format!(", sending {}", a.data_types.join(", ")));
            }
            t.push('.');
            t
        }
        _ => {
            let mut t = format!(
                "{} {} {}{}",
                a.process,
                if a.method.is_empty() {
                    "called"
                } else {
                    &a.method
                },
                a.host,
                a.route
            );
            if let Some(f) = &a.field {
                t.push_str(&format!(", in {f}"));
            }
            match a.tls {
                Some(false) => t.push_str(", over plaintext HTTP"),
                Some(true) => t.push_str(", over TLS"),
                None => {}
            }
            t.push_str(&format!("; seen {times}."));
            t
        }
    };
    if a.repeat {
        text.push_str(" It went on after the first alert.");
    }
    text
}

/// A Slack incoming-webhook message.
#[must_use]
pub fn slack(a: &Alert) -> Vec<u8> {
    let mut fields = vec![
        format!("*Severity*\n{}", a.severity.as_str()),
        format!("*Kind*\n{}", a.kind.as_str()),
        format!("*Process*\n{}", esc(&a.process)),
        format!("*Destination*\n{}", esc(&a.host)),
    ];
    if !a.route.is_empty() {
        fields.push(format!("*Route*\n{} {}", esc(&a.method), esc(&a.route)));
    }
    if let Some(t) = a.data_type.as_deref().or(a.signal.as_deref()) {
        fields.push(format!("*Data*\n{}", esc(t)));
    }
    fields.push(format!("*Count*\n{}", a.count));
    if let Some(tls) = a.tls {
        fields.push(format!(
            "*Transport*\n{}",
            if tls { "TLS" } else { "plaintext HTTP" }
        ));
    }
    let mut blocks = vec![
        json!({"type": "header", "text": {"type": "plain_text", "text": truncate(&format!("{} {}", emoji_plain(a.severity), a.title), 150)}}),
        json!({"type": "section", "text": {"type": "mrkdwn", "text": esc(&description(a))}}),
        json!({"type": "section", "fields": fields.iter().take(10).map(|f| json!({"type": "mrkdwn", "text": f})).collect::<Vec<_>>()}),
    ];
    if let Some(sample) = &a.sample {
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": format!("*Masked sample*: `{}`{}", esc(sample), a.field.as_deref().map(|f| format!(" in `{}`", esc(f))).unwrap_or_default())}}));
    }
    blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text": format!("{} · {} to {} · alert {}", esc(&a.agent), a.first_seen, a.last_seen, a.id)}]}));
    if let Some(url) = &a.dashboard_url {
        blocks.push(json!({"type": "actions", "elements": [{"type": "button", "text": {"type": "plain_text", "text": "Open dashboard"}, "url": url}]}));
    }
    let body = json!({
        "text": format!("{} {}", emoji(a.severity), a.title),
        "blocks": blocks,
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

/// Header text cannot carry Slack emoji codes; plain markers instead.
const fn emoji_plain(s: Severity) -> &'static str {
    match s {
        Severity::Critical => "[CRITICAL]",
        Severity::High => "[HIGH]",
        Severity::Medium => "[MEDIUM]",
        Severity::Low => "[LOW]",
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut t: String = s.chars().take(max - 1).collect();
    t.push('…');
    t
}

/// CamelCase alert name for Alertmanager (`ApimonPii`).
fn alertname(kind: AlertKind) -> String {
    let mut name = String::from("Apimon");
    for part in kind.as_str().split('_') {
        let mut c = part.chars();
        if let Some(first) = c.next() {
            name.extend(first.to_uppercase());
            name.push_str(c.as_str());
        }
    }
    name
}

/// An Alertmanager `POST /api/v2/alerts` body. Labels are few and bounded (they are what
/// Alertmanager groups and deduplicates on); the rest goes into annotations.
#[must_use]
pub fn alertmanager(a: &Alert, resolve_after: Duration) -> Vec<u8> {
    let starts = humantime::parse_rfc3339_weak(&a.first_seen).unwrap_or_else(|_| SystemTime::now());
    let ends = SystemTime::now().max(starts) + resolve_after;
    let mut labels = serde_json::Map::new();
    let mut label = |k: &str, v: &str| {
        if !v.is_empty() {
            labels.insert(k.to_owned(), Value::String(v.to_owned()));
        }
    };
    label("alertname", &alertname(a.kind));
    label("severity", a.severity.as_str());
    label("kind", a.kind.as_str());
    label("instance", &a.agent);
    label("process", &a.process);
    label("destination", &a.host);
    label("route", &a.route);
    label("data_type", a.data_type.as_deref().unwrap_or(""));
    label("signal", a.signal.as_deref().unwrap_or(""));
    label("source", "apimon");
    let mut annotations = json!({
        "summary": a.title,
        "description": description(a),
        "count": a.count.to_string(),
        "idempotency_key": a.id,
    });
    if let Some(s) = &a.sample {
        annotations["sample"] = Value::String(s.clone());
    }
    if let Some(f) = &a.field {
        annotations["field"] = Value::String(f.clone());
    }
    let mut alert = json!({
        "labels": labels,
        "annotations": annotations,
        "startsAt": humantime::format_rfc3339_millis(starts).to_string(),
        "endsAt": humantime::format_rfc3339_millis(ends).to_string(),
    });
    if let Some(url) = &a.dashboard_url {
        alert["generatorURL"] = Value::String(url.clone());
    }
    serde_json::to_vec(&json!([alert])).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert() -> Alert {
        let mut a = Alert::new(
            AlertKind::Pii,
            Severity::Critical,
            "curl",
            "api.partner.test",
            "2026-11-23T10:00:00Z",
        );
        a.id = "0123456789abcdef0123456789abcdef".into();
        a.data_type = Some("email".into());
        a.sample = Some("j***@example.com".into());
        a.field = Some("$.customer.email".into());
        a.tls = Some(false);
        a.route = "/v1/customers".into();
        a.method = "POST".into();
        a.count = 3;
        a.dashboard_url = Some("https://grafana.example/d/apimon".into());
        a.title = a.make_title();
        a
    }

    #[test]
    fn signature_is_hmac_sha256_of_timestamp_dot_body() {
        // Reference value from Python's hmac.new(b"k", b"1700000000.{}", sha256).
        assert_eq!(
            sign(b"k", 1_700_000_000, b"{}"),
            "v1=c6ef4734033cee2367414a0939385eca0397754aa7a59716da7463a9298b5146"
        );
        assert_ne!(sign(b"k", 1, b"{}"), sign(b"k", 2, b"{}"));
        assert_ne!(sign(b"k", 1, b"{}"), sign(b"j", 1, b"{}"));
    }

    #[test]
    fn payloads_are_valid_json_with_what_where_who() {
        let a = alert();
        assert_eq!(
            a.title,
            "Personal data (email) sent in plaintext to api.partner.test by curl"
        );
        let s: Value = serde_json::from_slice(&slack(&a)).expect("slack json");
        let text = s.to_string();
        for want in [
            "curl",
            "api.partner.test",
            "j***@example.com",
            "Open dashboard",
            "/v1/customers",
        ] {
            assert!(text.contains(want), "{want} missing from {text}");
        }
        let w: Alert = serde_json::from_slice(&webhook(&a)).expect("webhook json");
        assert_eq!(w, a);
        let am: Value =
            serde_json::from_slice(&alertmanager(&a, Duration::from_secs(3600))).expect("am json");
        assert_eq!(am[0]["labels"]["alertname"], "ApimonPii");
        assert_eq!(am[0]["labels"]["severity"], "critical");
        assert_eq!(am[0]["annotations"]["idempotency_key"], a.id);
        assert!(am[0]["endsAt"].as_str().is_some_and(|e| e > "2026-11-23"));
    }
}
