//! Volume anomalies per (process, third-party host, route): requests, bytes out and in,
//! personal-data records out and auth/rate-limit errors are counted per window and judged
//! against an online baseline (EWMA of the value and of its absolute deviation), with a
//! warm-up, minimum volumes and a minimum ratio so that 2 calls after 1 is not a spike. Spikes
//! are winsorized before they update the baseline, so one burst does not teach it that bursts
//! are normal. Memory is one fixed-size entry per series, and the number of series is capped.

use std::{
    collections::HashMap,
    hash::{DefaultHasher, Hash as _, Hasher as _},
};

use super::{AlertKind, Measurement, Severity};
use crate::config::alerts::AnomalyConfig;

/// What is measured per window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Signal {
    Requests,
    BytesOut,
    BytesIn,
    RecordsOut,
    Errors,
}

impl Signal {
    /// Every signal, in storage order.
    pub const ALL: [Self; 5] = [
        Self::Requests,
        Self::BytesOut,
        Self::BytesIn,
        Self::RecordsOut,
        Self::Errors,
    ];

    /// Name in alerts and metrics.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Requests => "requests",
            Self::BytesOut => "bytes_out",
            Self::BytesIn => "bytes_in",
            Self::RecordsOut => "records_out",
            Self::Errors => "errors",
        }
    }
}

/// One call's contribution.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sample {
    pub bytes_out: u64,
    pub bytes_in: u64,
    /// Personal-data values sent.
    pub records_out: u64,
    /// The response was 401, 403 or 429.
    pub error: bool,
}

/// Online mean and mean absolute deviation.
#[derive(Clone, Copy, Debug, Default)]
struct Baseline {
    mean: f64,
    dev: f64,
}

impl Baseline {
    /// Deviation used for scoring: never below 10% of the mean or 1, so that a perfectly
    /// steady series does not make every wobble infinite.
    fn scale(&self) -> f64 {
        self.dev.max(self.mean * 0.1).max(1.0)
    }

    fn score(&self, x: f64) -> f64 {
        (x - self.mean) / self.scale()
    }

    fn update(&mut self, x: f64, alpha: f64) {
        let d = (x - self.mean).abs();
        self.mean += alpha * (x - self.mean);
        self.dev += alpha * (d - self.dev);
    }
}

#[derive(Clone, Debug)]
struct Series {
    process: String,
    host: String,
    route: String,
    current: [u64; 5],
    baselines: [Baseline; 5],
    /// Windows observed.
    windows: u32,
    /// Window index of the last call.
    last_active: u64,
}

impl Series {
    /// Counts one call in the current window.
    fn add(&mut self, s: Sample, window: u64) {
        self.last_active = window;
        let c = &mut self.current;
        c[0] += 1;
        c[1] += s.bytes_out;
        c[2] += s.bytes_in;
        c[3] += s.records_out;
        c[4] += u64::from(s.error);
    }
}

/// A detected anomaly.
#[derive(Clone, Debug, PartialEq)]
pub struct Anomaly {
    pub kind: AlertKind,
    pub severity: Severity,
    pub signal: Signal,
    pub process: String,
    pub host: String,
    pub route: String,
    pub measurement: Measurement,
}

/// Highest score per host and signal (in [`Signal::ALL`] order) in the last window, for the
/// score gauge.
pub type Scores = HashMap<String, [f64; 5]>;

/// All series and their baselines.
#[derive(Debug)]
pub struct VolumeDetector {
    config: AnomalyConfig,
    alpha: f64,
    series: HashMap<u64, Series>,
    window: u64,
    evicted: u64,
}

fn key(process: &str, host: &str, route: &str) -> u64 {
    let mut h = DefaultHasher::new();
    (process, host, route).hash(&mut h);
    h.finish()
}

impl VolumeDetector {
    /// A detector with no history.
    #[must_use]
    pub fn new(config: &AnomalyConfig) -> Self {
        let mut d = Self {
            config: config.clone(),
            alpha: 0.0,
            series: HashMap::new(),
            window: 0,
            evicted: 0,
        };
        d.set_config(config);
        d
    }

    /// New sensitivity (configuration reload); baselines are kept.
    pub fn set_config(&mut self, config: &AnomalyConfig) {
        self.alpha = 1.0 - 0.5f64.powf(1.0 / config.half_life_windows.max(1.0));
        self.config = config.clone();
    }

    /// Adds one call to the current window of its series.
    pub fn observe(&mut self, process: &str, host: &str, route: &str, s: Sample) {
        let k = key(process, host, route);
        let window = self.window;
        if let Some(series) = self.series.get_mut(&k) {
            series.add(s, window);
            return;
        }
        if self.series.len() >= self.config.max_series {
            self.evict();
        }
        let series = self.series.entry(k).or_insert_with(|| Series {
            process: process.to_owned(),
            host: host.to_owned(),
            route: route.to_owned(),
            current: [0; 5],
            baselines: [Baseline::default(); 5],
            windows: 0,
            last_active: window,
        });
        series.add(s, window);
    }

    /// Drops the least recently active tenth of the series (one at least).
    fn evict(&mut self) {
        // Selected by key rather than cut at an age: a burst of new series shares one window,
        // and a cut would drop all of them with their baselines.
        let by_age = self
            .series
            .iter()
            .map(|(k, s)| (s.last_active, *k))
            .collect();
        let n = (self.series.len() / 10).max(1);
        for k in crate::evict::least_recent(by_age, n) {
            if self.series.remove(&k).is_some() {
                self.evicted += 1;
            }
        }
    }

    /// Length of a window.
    #[must_use]
    pub const fn interval(&self) -> std::time::Duration {
        self.config.interval
    }

    /// Series tracked.
    #[must_use]
    pub fn len(&self) -> usize {
        self.series.len()
    }

    /// Whether no series is tracked.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    /// Series dropped to stay within `max_series`.
    #[must_use]
    pub const fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Ends the window: judges every series, updates baselines, starts the next window.
    pub fn close_window(&mut self, scores: &mut Scores) -> Vec<Anomaly> {
        let cfg = &self.config;
        let window_seconds = cfg.interval.as_secs();
        let mut found = Vec::new();
        scores.clear();
        for s in self.series.values_mut() {
            let warm = s.windows >= cfg.warmup_windows;
            // While warming up the mean is a plain running average, so it starts right.
            let alpha = self.alpha.max(1.0 / f64::from(s.windows + 1));
            // Judged before this window updates the baselines.
            if let Some(storm) = error_storm(cfg, s, warm, window_seconds) {
                found.push(storm);
            }
            let mut best: Option<(Signal, f64, Measurement)> = None;
            let mut series_scores = [0.0; 5];
            for (i, signal) in Signal::ALL.iter().copied().enumerate() {
                let x = s.current[i] as f64;
                let b = s.baselines[i];
                let score = if warm { b.score(x) } else { 0.0 };
                series_scores[i] = score;
                let spiking = warm
                    && signal != Signal::Errors
                    && s.current[i] >= min_of(cfg, signal)
                    && x >= cfg.min_ratio * b.mean
                    && score >= cfg.threshold;
                if spiking && best.as_ref().is_none_or(|(_, sc, _)| score > *sc) {
                    best = Some((
                        signal,
                        score,
                        Measurement {
                            value: x,
                            baseline: round2(b.mean),
                            score: round2(score),
                            window_seconds,
                        },
                    ));
                }
                // Winsorize: a spike moves the baseline only as far as the threshold.
                let clipped = if warm {
                    x.min(b.mean + cfg.threshold * b.scale())
                } else {
                    x
                };
                s.baselines[i].update(clipped, alpha);
            }
            // The host is cloned once per window, not per series and signal.
            match scores.get_mut(&s.host) {
                Some(h) => h
                    .iter_mut()
                    .zip(series_scores)
                    .for_each(|(m, x)| *m = m.max(x)),
                None => {
                    scores.insert(s.host.clone(), series_scores);
                }
            }
            if let Some((signal, _, measurement)) = best {
                let severity = match signal {
                    Signal::BytesOut | Signal::RecordsOut => Severity::High,
                    _ => Severity::Medium,
                };
                found.push(Anomaly {
                    kind: AlertKind::VolumeSpike,
                    severity,
                    signal,
                    process: s.process.clone(),
                    host: s.host.clone(),
                    route: s.route.clone(),
                    measurement,
                });
            }
            s.current = [0; 5];
            s.windows = s.windows.saturating_add(1);
        }
        self.window += 1;
        found
    }
}

fn min_of(cfg: &AnomalyConfig, signal: Signal) -> u64 {
    match signal {
        Signal::Requests => cfg.min_requests,
        Signal::BytesOut => cfg.min_bytes_out,
        Signal::BytesIn => cfg.min_bytes_in,
        Signal::RecordsOut => cfg.min_records_out,
        Signal::Errors => cfg.min_errors,
    }
}

/// Many 401/403/429 making up most of the window's calls; once a series is warm, also far
/// above its usual error count (a partner that always refuses half the calls is not news).
fn error_storm(
    cfg: &AnomalyConfig,
    s: &Series,
    warm: bool,
    window_seconds: u64,
) -> Option<Anomaly> {
    let (requests, errors) = (s.current[0], s.current[4]);
    if errors < cfg.min_errors || (errors as f64) < cfg.min_error_ratio * requests as f64 {
        return None;
    }
    let b = s.baselines[4];
    let x = errors as f64;
    let score = if warm { b.score(x) } else { 0.0 };
    if warm && (score < cfg.threshold || x < cfg.min_ratio * b.mean) {
        return None;
    }
    Some(Anomaly {
        kind: AlertKind::ErrorStorm,
        severity: Severity::Medium,
        signal: Signal::Errors,
        process: s.process.clone(),
        host: s.host.clone(),
        route: s.route.clone(),
        measurement: Measurement {
            value: x,
            baseline: round2(b.mean),
            score: round2(score),
            window_seconds,
        },
    })
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests;
