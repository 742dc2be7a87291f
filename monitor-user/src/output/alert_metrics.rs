//! Metrics of the operators' side: alerts raised, suppressed, queued, delivered and dropped;
//! anomalies and their scores; configuration reloads.

use prometheus::{
    GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

use super::metrics::{counter, counter_series, counter_vec, gauge, register};

/// Every `reason` of `apimon_alerts_dropped_total`.
pub const DROP_REASONS: &[&str] = &["queue_full", "spool_full", "spool_error", "unreadable"];
/// Every `outcome` of `apimon_alert_deliveries_total`.
pub const OUTCOMES: &[&str] = &["delivered", "failed", "rejected"];

/// The series of `apimon_alerts_suppressed_total`, one per reason.
#[derive(Debug)]
pub struct Suppressions {
    /// Turned off by a rule: kind off, below threshold, ignored type.
    pub rule: IntCounter,
    /// Matched a silence.
    pub silenced: IntCounter,
    /// Counted into an alert group already open.
    pub deduplicated: IntCounter,
}

/// Alert, anomaly and configuration metrics.
#[derive(Debug)]
pub struct AlertMetrics {
    /// `apimon_alerts_total{kind,severity}`: alerts raised (after rules and grouping).
    pub raised: IntCounterVec,
    /// `apimon_alerts_suppressed_total{reason}`, its series looked up once: suppression
    /// happens on most calls that carry findings.
    pub suppressed_by: Suppressions,
    /// `apimon_alert_queue_depth{sink}`: alerts spooled, not yet delivered.
    pub queue_depth: IntGaugeVec,
    /// `apimon_alert_deliveries_total{sink,outcome}`: delivery attempts.
    pub deliveries: IntCounterVec,
    /// `apimon_alert_delivery_duration_seconds{sink}`.
    pub delivery_duration: HistogramVec,
    /// `apimon_alerts_dropped_total{reason}`.
    pub dropped: IntCounterVec,
    /// `apimon_anomalies_total{kind,signal}`.
    pub anomalies: IntCounterVec,
    /// `apimon_anomaly_score{host,signal}`: highest score in the last window.
    pub score: GaugeVec,
    /// `apimon_anomaly_series_tracked`.
    pub series: IntGauge,
    /// `apimon_anomaly_series_evicted_total`.
    pub series_evicted: IntCounter,
    /// `apimon_config_reloads_total{result}`.
    pub reloads: IntCounterVec,
    /// `apimon_config_last_reload_success`: 0 while the file on disk is not the one in force.
    pub reload_ok: IntGauge,
}

impl AlertMetrics {
    /// Registers them in `registry`.
    ///
    /// # Panics
    /// Only if a name is registered twice, a programming error every test run catches.
    #[must_use]
    pub fn new(registry: &Registry) -> Self {
        let delivery_duration = register(
            registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "apimon_alert_delivery_duration_seconds",
                    "Time one delivery attempt took, per sink.",
                )
                .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
                &["sink"],
            ),
        );
        let score = register(
            registry,
            GaugeVec::new(
                Opts::new(
                    "apimon_anomaly_score",
                    "Highest anomaly score (deviations above baseline) per third-party host and signal in the last window.",
                ),
                &["host", "signal"],
            ),
        );
        let queue_depth = register(
            registry,
            IntGaugeVec::new(
                Opts::new(
                    "apimon_alert_queue_depth",
                    "Alerts in the on-disk spool waiting for a sink.",
                ),
                &["sink"],
            ),
        );
        let [rule, silenced, deduplicated] = counter_series(
            registry,
            "apimon_alerts_suppressed_total",
            "Findings and anomalies that did not become alerts: rule (kind off, below threshold, ignored type), silenced, deduplicated.",
            "reason",
            ["rule", "silenced", "deduplicated"],
        );
        let m = Self {
            raised: counter_vec(
                registry,
                "apimon_alerts_total",
                "Alerts raised after rules, silences and grouping, by kind and severity.",
                &["kind", "severity"],
            ),
            suppressed_by: Suppressions {
                rule,
                silenced,
                deduplicated,
            },
            queue_depth,
            deliveries: counter_vec(
                registry,
                "apimon_alert_deliveries_total",
                "Alert delivery attempts per sink: delivered, failed (retried later), rejected (refused for good).",
                &["sink", "outcome"],
            ),
            delivery_duration,
            dropped: counter_vec(
                registry,
                "apimon_alerts_dropped_total",
                "Alerts lost: queue_full (between threads), spool_full (oldest dropped), spool_error, unreadable.",
                &["reason"],
            ),
            anomalies: counter_vec(
                registry,
                "apimon_anomalies_total",
                "Anomalies detected, by kind and signal, whether or not they alerted.",
                &["kind", "signal"],
            ),
            score,
            series: gauge(
                registry,
                "apimon_anomaly_series_tracked",
                "(process, host, route) series with a learned baseline.",
            ),
            series_evicted: counter(
                registry,
                "apimon_anomaly_series_evicted_total",
                "Series dropped to stay within anomaly.max_series.",
            ),
            reloads: counter_vec(
                registry,
                "apimon_config_reloads_total",
                "Configuration reloads on SIGHUP, by result (ok, error).",
                &["result"],
            ),
            reload_ok: gauge(
                registry,
                "apimon_config_last_reload_success",
                "1 when the last configuration load succeeded, 0 when a bad file was refused.",
            ),
        };
        for r in DROP_REASONS {
            m.dropped.with_label_values(&[r]).inc_by(0);
        }
        for r in ["ok", "error"] {
            m.reloads.with_label_values(&[r]).inc_by(0);
        }
        m.reload_ok.set(1);
        m
    }

    /// Zero series for a sink, so that rate() and alert rules see it from the start.
    pub fn init_sink(&self, sink: &str) {
        for o in OUTCOMES {
            self.deliveries.with_label_values(&[sink, o]).inc_by(0);
        }
        self.queue_depth.with_label_values(&[sink]).set(0);
    }
}
