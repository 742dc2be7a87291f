//! Delivery, on the async runtime: the dispatcher spools each alert for the sinks that take
//! it, and one worker per sink sends its spool in order, rate-limited, retrying failures with
//! exponential backoff and jitter. A delivered alert leaves the spool only after the sink
//! acknowledged it, so delivery is at-least-once; the alert id lets receivers make it
//! exactly-once.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use tokio::{
    sync::{Notify, mpsc, watch},
    task::JoinHandle,
};
use tracing::{debug, error, info, warn};

use super::{Alert, payload, spool::Spool};
use crate::{
    config::alerts::{Secret, SinkConfig, SinkType},
    output::metrics::Metrics,
};

/// Why a delivery did not succeed.
#[derive(Debug)]
pub enum Failure {
    /// Worth retrying (network, timeout, 408, 429, 5xx); `after` from `Retry-After`.
    Retry {
        reason: String,
        after: Option<Duration>,
    },
    /// The sink refused this alert for good (other 4xx).
    Reject { reason: String },
}

/// A configured sink with its secrets resolved and its HTTP client built.
pub struct Sink {
    config: SinkConfig,
    url: Secret,
    key: Option<Secret>,
    client: reqwest::Client,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink")
            .field("name", &self.config.name)
            .field("kind", &self.config.kind)
            .finish_non_exhaustive()
    }
}

/// The error chain of a request failure, without the URL (a Slack URL is a credential).
fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

impl Sink {
    /// Resolves secrets and builds the client.
    ///
    /// # Errors
    /// A secret cannot be read, or the CA file is not PEM.
    pub fn new(config: &SinkConfig) -> Result<Self, String> {
        let url = config
            .url
            .resolve()?
            .ok_or_else(|| "no url configured".to_owned())?;
        let key = config.secret.resolve()?;
        let mut builder = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .user_agent(concat!("apimon/", env!("CARGO_PKG_VERSION")))
            // A redirect would carry the alert (and a signature) somewhere not configured.
            .redirect(reqwest::redirect::Policy::none());
        if let Some(ca) = &config.ca_file {
            let pem = std::fs::read(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| format!("{}: not a PEM certificate: {e}", ca.display()))?;
            builder = builder.add_root_certificate(cert);
        }
        let client = builder.build().map_err(describe)?;
        Ok(Self {
            config: config.clone(),
            url,
            key,
            client,
        })
    }

    /// The sink's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.config.name
    }

    fn endpoint(&self) -> String {
        let url = self.url.expose().trim_end_matches('/');
        match self.config.kind {
            SinkType::Alertmanager if !url.ends_with("/api/v2/alerts") => {
                format!("{url}/api/v2/alerts")
            }
            _ => url.to_owned(),
        }
    }

    /// One delivery attempt.
    ///
    /// # Errors
    /// The sink did not acknowledge the alert.
    pub async fn send(&self, alert: &Alert) -> Result<(), Failure> {
        let body = match self.config.kind {
            SinkType::Slack => payload::slack(alert),
            SinkType::Webhook => payload::webhook(alert),
            SinkType::Alertmanager => payload::alertmanager(alert, self.config.resolve_after),
        };
        let mut request = self
            .client
            .post(self.endpoint())
            .header("content-type", "application/json")
            .header(payload::IDEMPOTENCY_HEADER, &alert.id);
        if let Some(key) = &self.key {
            let ts = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            request = request
                .header(payload::TIMESTAMP_HEADER, ts.to_string())
                .header(
                    payload::SIGNATURE_HEADER,
                    payload::sign(key.expose().as_bytes(), ts, &body),
                );
        }
        let response = request
            .body(body)
            .send()
            .await
            .map_err(|e| Failure::Retry {
                reason: describe(e),
                after: None,
            })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let reason = format!("HTTP {status}");
        if status.is_server_error() || matches!(status.as_u16(), 408 | 425 | 429) {
            Err(Failure::Retry { reason, after })
        } else {
            Err(Failure::Reject { reason })
        }
    }
}

/// Deliveries per minute with bursts: a token bucket.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    burst: f64,
    per_second: f64,
    at: Instant,
}

impl Bucket {
    fn new(per_minute: u32, burst: u32) -> Self {
        Self {
            tokens: f64::from(burst),
            burst: f64::from(burst),
            per_second: f64::from(per_minute) / 60.0,
            at: Instant::now(),
        }
    }

    /// How long until a token is free (zero: now).
    fn wait(&mut self) -> Duration {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * self.per_second)
            .min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - self.tokens) / self.per_second)
        }
    }

    fn take(&mut self) {
        self.tokens -= 1.0;
    }
}

/// Exponential backoff from 1 s, capped, with jitter in [50%, 100%] so that many agents
/// recovering from one outage do not retry in step.
fn backoff(attempt: u32, max: Duration, seed: &mut u64) -> Duration {
    let base = Duration::from_secs(1).saturating_mul(1 << attempt.min(20).saturating_sub(1));
    let capped = base.min(max);
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    let jitter = 0.5 + 0.5 * ((*seed >> 11) as f64 / (1u64 << 53) as f64);
    capped.mul_f64(jitter)
}

/// Waits `d`, or less if `stop` turns true; returns whether to go on.
async fn pause(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    if d.is_zero() {
        return !*stop.borrow();
    }
    tokio::select! {
        () = tokio::time::sleep(d) => !*stop.borrow(),
        _ = stop.changed() => false,
    }
}

async fn oldest(spool: &Arc<Spool>, sink: &str) -> std::io::Result<Option<(u64, Alert)>> {
    let (spool, sink) = (Arc::clone(spool), sink.to_owned());
    tokio::task::spawn_blocking(move || spool.oldest(&sink))
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
}

/// Sends one sink's spool, oldest first, until `stop`.
async fn worker(
    sink: Sink,
    spool: Arc<Spool>,
    wake: Arc<Notify>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let m = &metrics.alerting;
    let name = sink.name().to_owned();
    let mut bucket = Bucket::new(sink.config.rate_per_minute, sink.config.burst);
    let mut attempt = 0;
    let mut seed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos()
        .into();
    seed |= 1;
    loop {
        let depth = i64::try_from(spool.depth(&name)).unwrap_or(i64::MAX);
        m.queue_depth.with_label_values(&[&name]).set(depth);
        let (seq, alert) = match oldest(&spool, &name).await {
            Ok(Some(next)) => next,
            Ok(None) => {
                tokio::select! {
                    () = wake.notified() => continue,
                    _ = stop.changed() => return,
                }
            }
            Err(e) => {
                error!("sink {name}: a spooled alert is unreadable and was set aside: {e}");
                m.dropped.with_label_values(&["unreadable"]).inc();
                continue;
            }
        };
        if !pause(bucket.wait(), &mut stop).await {
            return;
        }
        let started = Instant::now();
        let sent = sink.send(&alert).await;
        m.delivery_duration
            .with_label_values(&[&name])
            .observe(started.elapsed().as_secs_f64());
        match sent {
            Ok(()) => {
                bucket.take();
                attempt = 0;
                m.deliveries.with_label_values(&[&name, "delivered"]).inc();
                debug!("sink {name}: delivered alert {}", alert.id);
                let (s, n) = (Arc::clone(&spool), name.clone());
                let removed = tokio::task::spawn_blocking(move || s.remove(&n, seq)).await;
                if let Ok(Err(e)) = removed {
                    warn!(
                        "sink {name}: delivered alert {} stays spooled: {e}",
                        alert.id
                    );
                }
            }
            Err(Failure::Retry { reason, after }) => {
                attempt += 1;
                m.deliveries.with_label_values(&[&name, "failed"]).inc();
                let delay = backoff(attempt, sink.config.max_backoff, &mut seed)
                    .max(after.unwrap_or_default().min(sink.config.max_backoff));
                warn!(
                    "sink {name}: delivery failed ({reason}); retry {attempt} in {:.1} s",
                    delay.as_secs_f64()
                );
                if !pause(delay, &mut stop).await {
                    return;
                }
            }
            Err(Failure::Reject { reason }) => {
                attempt = 0;
                m.deliveries.with_label_values(&[&name, "rejected"]).inc();
                error!(
                    "sink {name}: refused alert {} ({reason}); kept in the spool's rejected/ directory",
                    alert.id
                );
                let (s, n) = (Arc::clone(&spool), name.clone());
                let _ = tokio::task::spawn_blocking(move || s.reject(&n, seq)).await;
            }
        }
    }
}

struct Running {
    min_severity: super::Severity,
    wake: Arc<Notify>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

fn start(
    sinks: &[SinkConfig],
    spool: &Arc<Spool>,
    metrics: &Arc<Metrics>,
) -> HashMap<String, Running> {
    let mut running = HashMap::new();
    for config in sinks {
        let sink = match Sink::new(config) {
            Ok(s) => s,
            Err(e) => {
                error!("sink {}: cannot start: {e}", config.name);
                continue;
            }
        };
        metrics.alerting.init_sink(&config.name);
        let wake = Arc::new(Notify::new());
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(worker(
            sink,
            Arc::clone(spool),
            Arc::clone(&wake),
            Arc::clone(metrics),
            stopped,
        ));
        info!("sink {} ({}) ready", config.name, config.kind.as_str());
        running.insert(
            config.name.clone(),
            Running {
                min_severity: config.min_severity,
                wake,
                stop,
                task,
            },
        );
    }
    for (name, depth) in spool.sinks() {
        if !running.contains_key(&name) {
            warn!("the spool holds {depth} alerts for sink {name}, which is no longer configured");
        }
    }
    running
}

async fn stop_all(running: HashMap<String, Running>) {
    for r in running.values() {
        let _ = r.stop.send(true);
    }
    for (_, r) in running {
        // An attempt in flight is abandoned; its alert stays spooled and goes out again later,
        // with the same id.
        if tokio::time::timeout(Duration::from_secs(2), r.task)
            .await
            .is_err()
        {
            debug!("a sink worker did not stop in time");
        }
    }
}

fn spool_one(alert: &Alert, running: &HashMap<String, Running>, spool: &Spool, metrics: &Metrics) {
    let m = &metrics.alerting;
    let targets: Vec<&str> = running
        .iter()
        .filter(|(_, r)| alert.severity >= r.min_severity)
        .map(|(name, _)| name.as_str())
        .collect();
    if targets.is_empty() {
        return;
    }
    match spool.put(alert, &targets) {
        Ok(put) => {
            if put.dropped > 0 {
                warn!(
                    "the alert spool is full: {} oldest alerts dropped",
                    put.dropped
                );
                m.dropped
                    .with_label_values(&["spool_full"])
                    .inc_by(put.dropped as u64);
            }
        }
        Err(e) => {
            error!("cannot spool alert {}: {e}", alert.id);
            m.dropped.with_label_values(&["spool_error"]).inc();
        }
    }
    for t in targets {
        if let Some(r) = running.get(t) {
            r.wake.notify_one();
        }
    }
}

/// Spools alerts from the pipeline and runs the sink workers until `stop`; then spools what
/// is still queued and stops the workers.
pub async fn dispatch(
    mut alerts: mpsc::Receiver<Alert>,
    mut sinks: watch::Receiver<Vec<SinkConfig>>,
    spool: Option<Arc<Spool>>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let Some(spool) = spool else {
        // No spool, so no sinks: alerts end here (counted and written to events upstream).
        loop {
            tokio::select! {
                Some(_) = alerts.recv() => {}
                _ = stop.changed() => return,
            }
        }
    };
    let mut running = start(&sinks.borrow_and_update(), &spool, &metrics);
    loop {
        tokio::select! {
            received = alerts.recv() => {
                let Some(alert) = received else { break };
                // fsync takes milliseconds: tell the runtime this thread blocks.
                tokio::task::block_in_place(|| spool_one(&alert, &running, &spool, &metrics));
            }
            changed = sinks.changed() => {
                if changed.is_err() {
                    continue;
                }
                let configs = sinks.borrow_and_update().clone();
                stop_all(std::mem::take(&mut running)).await;
                running = start(&configs, &spool, &metrics);
                info!("alert sinks reloaded: {}", configs.len());
            }
            _ = stop.changed() => break,
        }
    }
    alerts.close();
    while let Ok(alert) = alerts.try_recv() {
        tokio::task::block_in_place(|| spool_one(&alert, &running, &spool, &metrics));
    }
    stop_all(running).await;
}
