//! Prometheus metrics, names prefixed `apimon_`. Label values are bounded: the first
//! `max_hosts` hosts get their own label, later ones share `other`.

use std::{
    collections::{HashMap, HashSet},
    sync::{Mutex, OnceLock},
};

use prometheus::{
    Encoder as _, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder, core::Collector,
};

use super::alert_metrics::AlertMetrics;
use crate::analysis::Call;

/// Caps the distinct values of a label.
#[derive(Debug)]
pub struct LabelLimiter {
    seen: HashSet<String>,
    max: usize,
}

impl LabelLimiter {
    #[must_use]
    pub fn new(max: usize) -> Self {
        Self {
            seen: HashSet::new(),
            max,
        }
    }

    /// `value` if it has a label already or there is room, else `other`.
    pub fn label<'a>(&mut self, value: &'a str) -> &'a str {
        if self.seen.contains(value) {
            return value;
        }
        if self.seen.len() < self.max {
            self.seen.insert(value.to_owned());
            return value;
        }
        "other"
    }
}

/// Standard methods keep their name; anything else is `OTHER`.
#[must_use]
pub fn method_label(method: &str) -> &'static str {
    match method {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        "CONNECT" => "CONNECT",
        "TRACE" => "TRACE",
        _ => "OTHER",
    }
}

/// The call series of one host label, direction, TLS and third-party flag, looked up once:
/// `with_label_values` hashes every label and takes a lock, too much to do per call.
#[derive(Debug)]
struct CallSeries {
    /// Created on the first call with a response, as `with_label_values` would.
    duration: Option<Histogram>,
    request_bytes: IntCounter,
    response_bytes: IntCounter,
    /// `apimon_http_requests_total` by method and status class (a handful per host).
    requests: Vec<(&'static str, &'static str, IntCounter)>,
}

/// Host labels and the call series resolved for each. Keyed by label (a host or `other`),
/// so bounded like the label.
#[derive(Debug)]
struct HostLabels {
    limiter: LabelLimiter,
    /// Indexed by [`series_index`].
    calls: HashMap<String, [Option<Box<CallSeries>>; 8]>,
}

const fn bool_label(b: bool) -> &'static str {
    if b { "true" } else { "false" }
}

/// Slot of a (direction, tls, third party) combination.
fn series_index(call: &Call) -> usize {
    usize::from(call.direction == crate::analysis::CallDirection::Ingress)
        | usize::from(call.tls) << 1
        | usize::from(call.third_party) << 2
}

/// Kinds of ring buffer records, the `kind` of `apimon_events_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Data,
    ConnOpen,
    ConnClose,
    Exec,
    Exit,
    ExecMapped,
}

impl EventKind {
    /// Every kind, in declaration order (`kind as usize` indexes it).
    pub const ALL: [Self; 6] = [
        Self::Data,
        Self::ConnOpen,
        Self::ConnClose,
        Self::Exec,
        Self::Exit,
        Self::ExecMapped,
    ];

    /// Its label.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Data => "data",
            Self::ConnOpen => "conn_open",
            Self::ConnClose => "conn_close",
            Self::Exec => "exec",
            Self::Exit => "exit",
            Self::ExecMapped => "exec_mmap",
        }
    }
}

// `kind as usize` indexes arrays of `ALL.len()`: the last variant must be the last index.
const _: () = assert!(EventKind::ExecMapped as usize + 1 == EventKind::ALL.len());

/// Work not done under load, the `stage` of `apimon_shed_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShedStage {
    /// Reads and writes whose records after the first the kernel did not copy, because the
    /// ring buffer was more than half full (their bytes count in
    /// `apimon_bytes_not_copied_total`).
    KernelBody,
    /// Calls analysed without (some of) their bodies: heads only.
    Body,
    /// Calls parsed and counted but not analysed or reported, on connections left out by
    /// per-process sampling.
    SampledOut,
}

impl ShedStage {
    /// Every stage, in declaration order (`stage as usize` indexes it).
    pub const ALL: [Self; 3] = [Self::KernelBody, Self::Body, Self::SampledOut];

    /// Its label.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::KernelBody => "kernel_body",
            Self::Body => "body",
            Self::SampledOut => "sampled_out",
        }
    }
}

/// Bounded state that drops entries to stay within its bound, the `state` of
/// `apimon_state_evicted_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateKind {
    /// Path segments templated as `{id}` although they looked like names, because the route
    /// table was at its node cap; counted per call that had one.
    RouteSegments,
    /// Calls whose (process, host, route) flow the data map could not keep (full).
    DataMapFlows,
    /// Least recently used (process, destination) pairs the alerter forgot.
    KnownDestinations,
}

impl StateKind {
    /// Every kind, in declaration order (`kind as usize` indexes it).
    pub const ALL: [Self; 3] = [
        Self::RouteSegments,
        Self::DataMapFlows,
        Self::KnownDestinations,
    ];

    /// Its label.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::RouteSegments => "route_segments",
            Self::DataMapFlows => "data_map_flows",
            Self::KnownDestinations => "known_destinations",
        }
    }
}

/// `2xx`..`5xx`, or `none` when no response came.
#[must_use]
pub fn status_class(status: Option<u16>) -> &'static str {
    match status {
        Some(100..=199) => "1xx",
        Some(200..=299) => "2xx",
        Some(300..=399) => "3xx",
        Some(400..=499) => "4xx",
        Some(500..=599) => "5xx",
        Some(_) => "other",
        None => "none",
    }
}

/// Every metric the agent exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    request_bytes: IntCounterVec,
    response_bytes: IntCounterVec,
    /// `apimon_findings_total{kind,data_type,host}`.
    pub findings: IntCounterVec,
    /// `apimon_events_total{kind}`: ring buffer records received.
    pub events: IntCounterVec,
    /// `apimon_events_lost_total{reason}`: everything dropped, in the kernel or here.
    pub lost: IntCounterVec,
    /// `apimon_bytes_not_copied_total`: bytes of calls not copied whole, too long or shed
    /// under load (sizes stay right).
    pub bytes_not_copied: IntCounter,
    /// `apimon_shed_level`: 0 none, 1 heads only, `k >= 2` also one in `2^(k-1)` new
    /// connections per process analysed.
    pub shed_level: IntGauge,
    /// `apimon_pipeline_lag_seconds`: age of the oldest record of the last pass over the ring.
    pub lag: Gauge,
    /// `apimon_shed_total{stage}`, per [`ShedStage`].
    shed: [IntCounter; ShedStage::ALL.len()],
    /// `apimon_state_evicted_total{state}`, per [`StateKind`].
    state_evicted: [IntCounter; StateKind::ALL.len()],
    /// `apimon_kernel_records_skipped_total`: records the kernel did not forward (not HTTP).
    pub skipped_not_http: IntCounter,
    /// `apimon_ready`: 1 once start-up (TLS probes, open connections) is done.
    pub ready: IntGauge,
    /// `apimon_parse_errors_total{reason}`.
    pub parse_errors: IntCounterVec,
    /// `apimon_unmatched_responses_total`.
    pub unmatched_responses: IntCounter,
    /// `apimon_connections_tracked`.
    pub connections: IntGauge,
    /// `apimon_connections_evicted_total`.
    pub evicted: IntCounter,
    /// `apimon_tls_probed_files`: files carrying OpenSSL with probes attached.
    pub tls_files: IntGauge,
    /// Processes with TLS probes attached.
    pub tls_processes: IntGauge,
    /// Processes probed only once a third-party connection was already open.
    pub tls_late: IntCounter,
    /// `apimon_tls_attach_failures_total`.
    pub tls_failures: IntCounter,
    /// `apimon_tls_held_opens_total{outcome}`: opens of OpenSSL held until probes were in.
    pub tls_holds: HoldOutcomes,
    /// `apimon_reassembly_buffered_bytes`: memory held by connection state.
    pub buffered: IntGauge,
    /// `apimon_data_flow_calls_total{process,host,data_type,side}`: calls to third parties
    /// carrying each kind of data.
    pub data_flows: IntCounterVec,
    /// Alerts, anomalies, configuration reloads.
    pub alerting: AlertMetrics,
    hosts: Mutex<HostLabels>,
    /// `events` per [`EventKind`], resolved on first use (every record counts).
    event_counters: [OnceLock<IntCounter>; EventKind::ALL.len()],
    processes: Mutex<LabelLimiter>,
}

/// Registers a metric just made. A bad or duplicate name panics: a programming error that
/// every test run catches.
pub(crate) fn register<M: Collector + Clone + 'static>(
    registry: &Registry,
    made: prometheus::Result<M>,
) -> M {
    let m = made.unwrap_or_else(|e| panic!("metric: {e}"));
    registry.register(Box::new(m.clone())).unwrap_or_else(|e| {
        let name = m
            .desc()
            .first()
            .map(|d| d.fq_name.clone())
            .unwrap_or_default();
        panic!("metric {name}: {e}")
    });
    m
}

pub(crate) fn counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> IntCounterVec {
    register(registry, IntCounterVec::new(Opts::new(name, help), labels))
}

pub(crate) fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    register(registry, IntCounter::new(name, help))
}

pub(crate) fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    register(registry, IntGauge::new(name, help))
}

/// A counter vector of one `label`, registered, and its series for `values` looked up once
/// (each exported from the start, at 0), in the order of `values`.
pub(crate) fn counter_series<const N: usize>(
    registry: &Registry,
    name: &str,
    help: &str,
    label: &str,
    values: [&str; N],
) -> [IntCounter; N] {
    let vec = counter_vec(registry, name, help, &[label]);
    values.map(|value| vec.with_label_values(&[value]))
}

/// `apimon_tls_held_opens_total` by outcome, resolved once.
#[derive(Clone, Debug)]
pub struct HoldOutcomes {
    /// The process had its probes in that file when its open went on.
    pub probed: IntCounter,
    /// Let go unprobed, as wanted: its first peer was internal (or it serves only).
    pub skipped: IntCounter,
    /// Let go unprobed though wanted: the probes could not be attached (counted in
    /// `apimon_tls_attach_failures_total` too), or the file is not reachable at the path it
    /// was seen at.
    pub failed: IntCounter,
    /// Answered unprobed: it had waited `HOLD_LIMIT` already.
    pub expired: IntCounter,
}

impl HoldOutcomes {
    fn new(registry: &Registry) -> Self {
        let [probed, skipped, failed, expired] = counter_series(
            registry,
            "apimon_tls_held_opens_total",
            "Opens of files carrying OpenSSL held until the opening process was probed, by outcome: probed, skipped (not wanted), failed (wanted, but its probes could not be attached), expired (let go unprobed after the hold limit).",
            "outcome",
            ["probed", "skipped", "failed", "expired"],
        );
        Self {
            probed,
            skipped,
            failed,
            expired,
        }
    }
}

/// Every `reason` of `apimon_events_lost_total`.
pub const LOST_REASONS: &[&str] = &[
    "ringbuf_full",
    "ringbuf_full_control",
    "tls_no_socket",
    "args_map_full",
    "fds_map_full",
    "read_failed",
    "decode_error",
    "output_error",
    "unresolved",
];

const CALL_LABELS: &[&str] = &["direction", "host", "tls", "third_party"];

impl Metrics {
    /// All metrics, registered; `max_hosts` bounds the `host` label.
    ///
    /// # Panics
    /// Only if two metrics share a name, a programming error caught by every test run.
    #[must_use]
    pub fn new(max_hosts: usize) -> Self {
        let registry = Registry::new();
        let requests = counter_vec(
            &registry,
            "apimon_http_requests_total",
            "HTTP calls seen, by direction, destination host, method, status class, TLS and whether the host is a third party.",
            &[
                "direction",
                "host",
                "method",
                "status_class",
                "tls",
                "third_party",
            ],
        );
        let duration = register(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "apimon_http_request_duration_seconds",
                    "Time from a request's first byte to its response's last byte.",
                )
                .buckets(vec![
                    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                ]),
                CALL_LABELS,
            ),
        );
        let metrics = Self {
            request_bytes: counter_vec(
                &registry,
                "apimon_http_request_bytes_total",
                "Request body bytes.",
                CALL_LABELS,
            ),
            response_bytes: counter_vec(
                &registry,
                "apimon_http_response_bytes_total",
                "Response body bytes.",
                CALL_LABELS,
            ),
            findings: counter_vec(
                &registry,
                "apimon_findings_total",
                "Findings (personal data, secrets, unauthenticated calls) by kind, data type and host.",
                &["kind", "data_type", "host"],
            ),
            events: counter_vec(
                &registry,
                "apimon_events_total",
                "Kernel records received, by kind.",
                &["kind"],
            ),
            lost: counter_vec(
                &registry,
                "apimon_events_lost_total",
                "Records or bytes dropped, by reason (ring buffer full, not copied, ...).",
                &["reason"],
            ),
            parse_errors: counter_vec(
                &registry,
                "apimon_parse_errors_total",
                "HTTP parse errors, by reason.",
                &["reason"],
            ),
            bytes_not_copied: counter(
                &registry,
                "apimon_bytes_not_copied_total",
                "Bytes of reads and writes not copied whole (too long, or shed under load); body sizes still count them.",
            ),
            shed_level: gauge(
                &registry,
                "apimon_shed_level",
                "Load shedding now: 0 none, 1 heads only, k >= 2 heads only and one in 2^(k-1) new connections per process analysed.",
            ),
            lag: register(
                &registry,
                Gauge::new(
                    "apimon_pipeline_lag_seconds",
                    "Age, when it was handled, of the oldest kernel record of the pipeline's last pass over the ring buffer (0: it was empty).",
                ),
            ),
            shed: counter_series(
                &registry,
                "apimon_shed_total",
                "Work not done under load, by stage: kernel_body (reads and writes cut to their first record), body (calls analysed heads only), sampled_out (calls counted, not analysed).",
                "stage",
                ShedStage::ALL.map(ShedStage::as_str),
            ),
            state_evicted: counter_series(
                &registry,
                "apimon_state_evicted_total",
                "Entries dropped or not kept to stay within a memory bound: route_segments, data_map_flows, known_destinations.",
                "state",
                StateKind::ALL.map(StateKind::as_str),
            ),
            skipped_not_http: counter(
                &registry,
                "apimon_kernel_records_skipped_total",
                "Records the kernel did not forward because they did not start an HTTP message.",
            ),
            ready: gauge(
                &registry,
                "apimon_ready",
                "1 once start-up is done: TLS libraries probed, open connections found.",
            ),
            unmatched_responses: counter(
                &registry,
                "apimon_unmatched_responses_total",
                "Responses with no request waiting for them (joined mid-stream, lost bytes).",
            ),
            connections: gauge(
                &registry,
                "apimon_connections_tracked",
                "Connections being followed.",
            ),
            evicted: counter(
                &registry,
                "apimon_connections_evicted_total",
                "Connections dropped to stay within the table size or the reassembly memory budget.",
            ),
            tls_files: gauge(
                &registry,
                "apimon_tls_probed_files",
                "Files carrying OpenSSL probed in at least one process.",
            ),
            tls_processes: gauge(
                &registry,
                "apimon_tls_probed_processes",
                "Processes with TLS probes attached (those that talk to third parties, or configured).",
            ),
            tls_late: counter(
                &registry,
                "apimon_tls_late_probes_total",
                "Processes probed only after a third-party connection opened: TLS calls made before the probes attached are not seen.",
            ),
            tls_failures: counter(
                &registry,
                "apimon_tls_attach_failures_total",
                "Files whose probes could not be attached.",
            ),
            tls_holds: HoldOutcomes::new(&registry),
            buffered: gauge(
                &registry,
                "apimon_reassembly_buffered_bytes",
                "Memory held by connection reassembly state.",
            ),
            data_flows: counter_vec(
                &registry,
                "apimon_data_flow_calls_total",
                "Calls to third parties carrying personal data or secrets, by process, host, data type and side.",
                &["process", "host", "data_type", "side"],
            ),
            alerting: AlertMetrics::new(&registry),
            hosts: Mutex::new(HostLabels {
                limiter: LabelLimiter::new(max_hosts),
                calls: HashMap::new(),
            }),
            event_counters: Default::default(),
            processes: Mutex::new(LabelLimiter::new(100)),
            registry,
            requests,
            duration,
        };
        register(
            &metrics.registry,
            IntGaugeVec::new(
                Opts::new(
                    "apimon_build_info",
                    "Always 1; the agent's version as a label.",
                ),
                &["version"],
            ),
        )
        .with_label_values(&[env!("CARGO_PKG_VERSION")])
        .set(1);
        // Zero series for every loss reason, so that dashboards and alerts see them from the start.
        for reason in LOST_REASONS {
            metrics.lost.with_label_values(&[reason]).inc_by(0);
        }
        for e in crate::http::ParseError::ALL {
            metrics
                .parse_errors
                .with_label_values(&[e.label()])
                .inc_by(0);
        }
        #[cfg(target_os = "linux")]
        {
            let pc = prometheus::process_collector::ProcessCollector::new(
                std::process::id() as i32,
                "apimon",
            );
            let _ = metrics.registry.register(Box::new(pc));
        }
        metrics
    }

    /// `apimon_shed_total{stage}` of `stage`, resolved once.
    #[must_use]
    pub fn shed(&self, stage: ShedStage) -> &IntCounter {
        &self.shed[stage as usize]
    }

    /// Raises `apimon_state_evicted_total{state}` of `kind` to `total`, the owner's count
    /// since start (only that owner adds to the series, so its value is what was exported).
    pub fn state_evicted_total(&self, kind: StateKind, total: u64) {
        let counter = &self.state_evicted[kind as usize];
        counter.inc_by(total.saturating_sub(counter.get()));
    }

    /// Counts one ring buffer record of `kind` in `apimon_events_total`.
    pub fn count_event(&self, kind: EventKind) {
        self.event_counters[kind as usize]
            .get_or_init(|| self.events.with_label_values(&[kind.as_str()]))
            .inc();
    }

    /// Counts a call.
    pub fn record_call(&self, call: &Call) {
        let mut hosts = self
            .hosts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let HostLabels { limiter, calls } = &mut *hosts;
        // A host with series already has its own label: the limiter need not be asked.
        let (host, slots) = match calls.get_mut(call.host.as_str()) {
            Some(slots) => (call.host.as_str(), slots),
            None => {
                let label = limiter.label(&call.host);
                // Hosts past the limit all share `other`: found without allocating its key.
                let slots = match calls.get_mut(label) {
                    Some(slots) => slots,
                    None => calls.entry(label.to_owned()).or_default(),
                };
                (label, slots)
            }
        };
        let direction = call.direction.as_str();
        let tls = bool_label(call.tls);
        let third = bool_label(call.third_party);
        let labels = [direction, host, tls, third];
        let series = &mut slots[series_index(call)];
        let series = match series {
            Some(s) => s,
            None => series.insert(Box::new(CallSeries {
                duration: None,
                request_bytes: self.request_bytes.with_label_values(&labels),
                response_bytes: self.response_bytes.with_label_values(&labels),
                requests: Vec::new(),
            })),
        };
        let method = method_label(&call.method);
        let class = status_class(call.status);
        match series
            .requests
            .iter()
            .find(|(m, c, _)| *m == method && *c == class)
        {
            Some((_, _, counter)) => counter.inc(),
            None => {
                let counter = self
                    .requests
                    .with_label_values(&[direction, host, method, class, tls, third]);
                counter.inc();
                series.requests.push((method, class, counter));
            }
        }
        if let Some(ms) = call.duration_ms {
            series
                .duration
                .get_or_insert_with(|| self.duration.with_label_values(&labels))
                .observe(ms / 1000.0);
        }
        series.request_bytes.inc_by(call.request_bytes);
        series.response_bytes.inc_by(call.response_bytes);
    }

    /// Counts a finding.
    pub fn record_finding(&self, f: &crate::analysis::finding::Finding) {
        let host = self.host_label(&f.host);
        self.findings
            .with_label_values(&[f.kind.as_str(), f.data_type.unwrap_or(""), host])
            .inc();
    }

    /// Counts the data types a third-party call carried.
    pub fn record_flow(
        &self,
        call: &Call,
        types: &[(
            crate::analysis::inspect::Side,
            crate::analysis::detect::DataType,
        )],
    ) {
        if types.is_empty() {
            return;
        }
        let host = self.host_label(&call.host);
        let process = self
            .processes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .label(&call.comm);
        // A call carries a few types: a scan of those before dedups without a set.
        for (i, (side, t)) in types.iter().enumerate() {
            if !types[..i].contains(&types[i]) {
                self.data_flows
                    .with_label_values(&[process, host, t.name(), side.as_str()])
                    .inc();
            }
        }
    }

    /// The host label a host gets (bounded): `host` itself, or `other`.
    pub fn host_label<'a>(&self, host: &'a str) -> &'a str {
        self.hosts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .limiter
            .label(host)
    }

    /// The Prometheus text exposition of every metric.
    #[must_use]
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_labels_are_bounded() {
        let mut l = LabelLimiter::new(2);
        assert_eq!(l.label("a"), "a");
        assert_eq!(l.label("b"), "b");
        assert_eq!(l.label("c"), "other");
        assert_eq!(l.label("a"), "a");
        assert_eq!(method_label("PROPFIND"), "OTHER");
        assert_eq!(status_class(None), "none");
        assert_eq!(status_class(Some(404)), "4xx");
    }

    /// `record_call` as it was before its series were cached: the reference.
    fn record_call_uncached(m: &Metrics, call: &Call) {
        let host = m.host_label(&call.host);
        let direction = call.direction.as_str();
        let tls = bool_label(call.tls);
        let third = bool_label(call.third_party);
        m.requests
            .with_label_values(&[
                direction,
                host,
                method_label(&call.method),
                status_class(call.status),
                tls,
                third,
            ])
            .inc();
        let labels = [direction, host, tls, third];
        if let Some(ms) = call.duration_ms {
            m.duration.with_label_values(&labels).observe(ms / 1000.0);
        }
        m.request_bytes
            .with_label_values(&labels)
            .inc_by(call.request_bytes);
        m.response_bytes
            .with_label_values(&labels)
            .inc_by(call.response_bytes);
    }

    /// The exposition without the process collector's lines, which change by themselves.
    fn series(m: &Metrics) -> String {
        m.render()
            .lines()
            .filter(|l| !l.contains("process_"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn cached_call_series_count_as_label_lookups_did() {
        let (cached, reference) = (Metrics::new(3), Metrics::new(3));
        let mut n = 0u64;
        for host in [
            "a.test", "b.test", "c.test", "d.test", "e.test", "a.test", "other",
        ] {
            for method in ["GET", "POST", "PROPFIND", "get"] {
                for status in [Some(200), Some(404), None] {
                    n += 1;
                    let call = Call {
                        kind: "call",
                        ts: String::new(),
                        entry: None,
                        pid: None,
                        comm: "curl".into(),
                        direction: if n.is_multiple_of(3) {
                            crate::analysis::CallDirection::Ingress
                        } else {
                            crate::analysis::CallDirection::Egress
                        },
                        tls: n.is_multiple_of(2),
                        tls_library: None,
                        remote_addr: None,
                        host: host.into(),
                        method: method.into(),
                        path: "/".into(),
                        route: "/".into(),
                        status,
                        duration_ms: status.map(|_| n as f64),
                        request_bytes: n,
                        response_bytes: n * 10,
                        third_party: !n.is_multiple_of(5),
                        auth: "none",
                        error: None,
                    };
                    cached.record_call(&call);
                    record_call_uncached(&reference, &call);
                }
            }
        }
        assert_eq!(series(&cached), series(&reference));
        assert!(series(&cached).contains("host=\"other\""));
    }

    #[test]
    fn cached_event_counters_count_as_label_lookups_did() {
        let (cached, reference) = (Metrics::new(3), Metrics::new(3));
        for kind in [
            EventKind::Data,
            EventKind::Data,
            EventKind::ConnOpen,
            EventKind::Exit,
            EventKind::ExecMapped,
        ] {
            cached.count_event(kind);
            reference.events.with_label_values(&[kind.as_str()]).inc();
        }
        assert_eq!(series(&cached), series(&reference));
    }

    #[test]
    fn state_evictions_follow_their_owners_totals() {
        let m = Metrics::new(10);
        m.state_evicted_total(StateKind::DataMapFlows, 3);
        m.state_evicted_total(StateKind::DataMapFlows, 3);
        m.state_evicted_total(StateKind::DataMapFlows, 5);
        assert!(
            m.render()
                .contains("apimon_state_evicted_total{state=\"data_map_flows\"} 5")
        );
    }

    #[test]
    fn renders_contract_names() {
        let m = Metrics::new(10);
        m.events.with_label_values(&["data"]).inc();
        m.lost.with_label_values(&["ringbuf_full"]).inc_by(0);
        let text = m.render();
        for name in [
            "apimon_events_total",
            "apimon_events_lost_total",
            "apimon_connections_tracked",
            "apimon_events_lost_total{reason=\"unresolved\"} 0",
            "apimon_shed_total{stage=\"kernel_body\"} 0",
            "apimon_shed_total{stage=\"body\"} 0",
            "apimon_shed_total{stage=\"sampled_out\"} 0",
            "apimon_state_evicted_total{state=\"route_segments\"} 0",
            "apimon_state_evicted_total{state=\"data_map_flows\"} 0",
            "apimon_state_evicted_total{state=\"known_destinations\"} 0",
            "apimon_shed_level 0",
            "apimon_pipeline_lag_seconds 0",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
    }
}
