//! The pipeline thread's side of alerting: turns each analysed call into offers (findings,
//! denied destinations, novelties), feeds the volume baselines, closes anomaly windows, and
//! hands grouped alerts to the delivery side over a bounded queue.

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use tokio::sync::mpsc::{Sender, error::TrySendError};
use tracing::warn;

use super::{
    Alert, AlertKind, Severity,
    novelty::{Novel, Novelty},
    router::{Offered, Router},
    rules::{Rules, Subject, Suppressed},
    volume::{Anomaly, Sample, Scores, Signal, VolumeDetector},
};
use crate::{
    analysis::{Analysis, CallDirection, detect::DataType, finding::FindingKind, inspect::Side},
    config::Config,
    output::metrics::{Metrics, StateKind},
};

/// Something new is saved within this long, so that a crash does not announce it again.
const SAVE_EVERY: Duration = Duration::from_secs(1);

/// Alerting state owned by the pipeline thread.
#[derive(Debug)]
pub struct Alerter {
    router: Router,
    volume: VolumeDetector,
    novelty: Novelty,
    window_started: Instant,
    scores: Scores,
    evicted_reported: u64,
    queue: Sender<Alert>,
    metrics: Arc<Metrics>,
    last_save: Instant,
    /// Writes known destinations off this thread; `None` if it could not start.
    writer: Option<crate::durable::Background>,
    /// Its failed writes already made up for.
    writer_failures: u64,
    /// The data types a call sends, kept between calls for its allocation.
    sent: Vec<DataType>,
}

/// Something new is `high` when it carries sensitive data (cards, SSNs, IBANs...).
const fn novelty_severity(sensitive: bool) -> Severity {
    if sensitive {
        Severity::High
    } else {
        Severity::Medium
    }
}

const fn alert_kind(k: FindingKind) -> AlertKind {
    match k {
        FindingKind::Pii => AlertKind::Pii,
        FindingKind::Secret => AlertKind::Secret,
        FindingKind::UnauthenticatedCall => AlertKind::UnauthenticatedCall,
        FindingKind::PlaintextCredential => AlertKind::PlaintextCredential,
    }
}

impl Alerter {
    /// Alerting as `config` describes; `novelty` holds what is already known.
    #[must_use]
    pub fn new(
        config: &Config,
        novelty: Novelty,
        queue: Sender<Alert>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            router: Router::new(Rules::new(&config.alerts), super::hostname(), 10_000),
            volume: VolumeDetector::new(&config.anomaly),
            novelty,
            window_started: Instant::now(),
            scores: Scores::new(),
            evicted_reported: 0,
            queue,
            metrics,
            last_save: Instant::now(),
            writer: crate::durable::Background::start()
                .inspect_err(|e| {
                    warn!(
                        "cannot start the state writer ({e}): known destinations are saved inline"
                    );
                })
                .ok(),
            writer_failures: 0,
            sent: Vec::new(),
        }
    }

    /// New rules and sensitivity; groups, baselines and what is known are kept.
    pub fn reload(&mut self, config: &Config) {
        self.router.set_rules(Rules::new(&config.alerts));
        self.volume.set_config(&config.anomaly);
    }

    /// Offers an occurrence to the router and counts what did not open a new alert.
    fn offer(
        &mut self,
        subject: &Subject<'_>,
        signal: Option<&str>,
        ts: &str,
        now: Instant,
        build: impl FnOnce() -> Alert,
    ) {
        let suppressed = &self.metrics.alerting.suppressed_by;
        match self.router.offer(subject, signal, ts, now, build) {
            Ok(Offered::New) => {}
            Ok(Offered::Deduplicated) => suppressed.deduplicated.inc(),
            Err(Suppressed::Rule) => suppressed.rule.inc(),
            Err(Suppressed::Silenced) => suppressed.silenced.inc(),
        }
    }

    /// Everything one call can raise.
    pub fn call(&mut self, a: &Analysis) {
        let now = Instant::now();
        let c = &a.call;
        let process = c.comm.as_str();
        for f in &a.findings {
            let subject = Subject {
                kind: alert_kind(f.kind),
                severity: f.severity,
                host: &f.host,
                process,
                route: &f.route,
                data_type: f.data_type,
            };
            self.offer(&subject, None, &f.ts, now, || {
                let mut alert = Alert::new(subject.kind, f.severity, process, &f.host, &f.ts);
                alert.pid = f.pid;
                alert.route.clone_from(&f.route);
                alert.method.clone_from(&f.method);
                alert.data_type = f.data_type.map(str::to_owned);
                alert.field.clone_from(&f.field);
                alert.sample.clone_from(&f.sample);
                alert.value_hash.clone_from(&f.value_hash);
                alert.tls = Some(f.tls);
                alert
            });
        }
        if !c.third_party || c.direction != CallDirection::Egress {
            return;
        }
        let call_alert = |kind, severity| {
            let mut alert = Alert::new(kind, severity, process, &c.host, &c.ts);
            alert.pid = c.pid;
            alert.route.clone_from(&c.route);
            alert.method.clone_from(&c.method);
            alert.tls = Some(c.tls);
            alert
        };
        if self.router.rules().denied(&c.host) {
            let subject = Subject {
                kind: AlertKind::DeniedDestination,
                severity: Severity::High,
                host: &c.host,
                process,
                route: &c.route,
                data_type: None,
            };
            self.offer(&subject, None, &c.ts, now, || {
                call_alert(AlertKind::DeniedDestination, Severity::High)
            });
        }
        let mut sent = std::mem::take(&mut self.sent);
        sent.clear();
        sent.extend(
            a.data_types
                .iter()
                .filter(|(side, t)| *side == Side::Request && !t.is_secret())
                .map(|(_, t)| *t),
        );
        let records: u64 = a
            .findings
            .iter()
            .filter(|f| f.kind == FindingKind::Pii && f.side == Some(Side::Request))
            .map(|f| u64::from(f.count.unwrap_or(1)))
            .sum();
        self.volume.observe(
            process,
            &c.host,
            &c.route,
            Sample {
                bytes_out: c.request_bytes,
                bytes_in: c.response_bytes,
                records_out: records,
                error: matches!(c.status, Some(401 | 403 | 429)),
            },
        );
        let novel = self.novelty.observe(process, &c.host, &sent, &c.ts);
        let learning = !novel.is_empty() && self.novelty.learning(SystemTime::now());
        for n in novel {
            let (kind, data_type, severity) = match &n {
                Novel::Destination { .. } => {
                    self.metrics
                        .alerting
                        .anomalies
                        .with_label_values(&["new_destination", "destination"])
                        .inc();
                    if learning || self.router.rules().allowed(&c.host) {
                        continue;
                    }
                    let sensitive = sent.iter().any(|t| t.is_sensitive());
                    (AlertKind::NewDestination, None, novelty_severity(sensitive))
                }
                Novel::DataType(t) => {
                    self.metrics
                        .alerting
                        .anomalies
                        .with_label_values(&["new_data_type", "data_type"])
                        .inc();
                    if learning {
                        continue;
                    }
                    let sensitive = sent.iter().any(|d| d.name() == t && d.is_sensitive());
                    (
                        AlertKind::NewDataType,
                        Some(t.as_str()),
                        novelty_severity(sensitive),
                    )
                }
            };
            let subject = Subject {
                kind,
                severity,
                host: &c.host,
                process,
                route: "",
                data_type,
            };
            self.offer(&subject, None, &c.ts, now, || {
                let mut alert = call_alert(kind, severity);
                alert.data_type = data_type.map(str::to_owned);
                if let Novel::Destination { data_types } = &n {
                    alert.data_types.clone_from(data_types);
                }
                alert
            });
        }
        self.sent = sent;
    }

    fn anomaly(&mut self, a: &Anomaly, now: Instant) {
        let signal = a.signal.as_str();
        self.metrics
            .alerting
            .anomalies
            .with_label_values(&[a.kind.as_str(), signal])
            .inc();
        let ts = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        let subject = Subject {
            kind: a.kind,
            severity: a.severity,
            host: &a.host,
            process: &a.process,
            route: &a.route,
            data_type: None,
        };
        self.offer(&subject, Some(signal), &ts, now, || {
            let mut alert = Alert::new(a.kind, a.severity, &a.process, &a.host, &ts);
            alert.route.clone_from(&a.route);
            alert.signal = Some(signal.to_owned());
            alert.measurement = Some(a.measurement.clone());
            alert
        });
    }

    /// Periodic work: closes anomaly windows, sends grouped alerts, saves what is known.
    /// Returns the alerts raised, for the events output.
    pub fn tick(&mut self) -> Vec<Alert> {
        let now = Instant::now();
        if now.duration_since(self.window_started) >= self.volume.interval() {
            self.window_started = now;
            let anomalies = self.volume.close_window(&mut self.scores);
            for a in &anomalies {
                self.anomaly(a, now);
            }
            self.publish_scores();
        }
        self.metrics
            .state_evicted_total(StateKind::KnownDestinations, self.novelty.evicted());
        if now.duration_since(self.last_save) >= SAVE_EVERY {
            self.last_save = now;
            self.retry_failed_writes();
            match &self.writer {
                Some(writer) => {
                    if let Some((path, bytes)) = self.novelty.snapshot() {
                        writer.replace(path, bytes);
                    }
                }
                None => self.save(),
            }
        }
        let alerts = self.router.tick(now);
        self.send(&alerts);
        alerts
    }

    fn publish_scores(&mut self) {
        let m = &self.metrics.alerting;
        m.score.reset();
        for (host, scores) in &self.scores {
            let host = self.metrics.host_label(host);
            for (signal, score) in Signal::ALL.iter().zip(scores) {
                let g = m.score.with_label_values(&[host, signal.as_str()]);
                g.set(g.get().max(*score));
            }
        }
        m.series
            .set(i64::try_from(self.volume.len()).unwrap_or(i64::MAX));
        let evicted = self.volume.evicted();
        m.series_evicted.inc_by(evicted - self.evicted_reported);
        self.evicted_reported = evicted;
    }

    /// A write the writer failed lost its content: the next one writes everything again.
    fn retry_failed_writes(&mut self) {
        if let Some(writer) = &self.writer {
            let failures = writer.failures();
            if failures > self.writer_failures {
                self.writer_failures = failures;
                self.novelty.unsaved();
            }
        }
    }

    fn save(&mut self) {
        if let Err(e) = self.novelty.save() {
            warn!("cannot save known destinations: {e}");
        }
    }

    /// Counts the alerts raised and queues them for delivery.
    fn send(&self, alerts: &[Alert]) {
        for alert in alerts {
            self.metrics
                .alerting
                .raised
                .with_label_values(&[alert.kind.as_str(), alert.severity.as_str()])
                .inc();
            match self.queue.try_send(alert.clone()) {
                Ok(()) => {}
                Err(TrySendError::Full(_) | TrySendError::Closed(_)) => {
                    self.metrics
                        .alerting
                        .dropped
                        .with_label_values(&["queue_full"])
                        .inc();
                }
            }
        }
    }

    /// Sends every open group now and saves what is known (the agent is stopping).
    pub fn finish(&mut self) -> Vec<Alert> {
        let alerts = self.router.drain(Instant::now());
        self.send(&alerts);
        // The writer's last file first, then what changed since, here.
        if let Some(writer) = &self.writer {
            writer.flush();
        }
        self.retry_failed_writes();
        self.save();
        alerts
    }
}
