//! The pipeline thread: ring buffer records in, calls out (events and metrics). Data flows one
//! way: records -> connection table -> HTTP sessions -> analysis -> outputs.

use std::{
    collections::HashMap,
    os::fd::AsRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc::{Receiver, Sender},
    },
    time::{Duration, Instant, SystemTime},
};

use aya::maps::{MapData, RingBuf};
use tracing::{debug, info, warn};

use crate::{
    alert::{Alert, alerter::Alerter},
    analysis::{Analysis, Analyzer, CallContext, CallDirection, Destinations, datamap::DataMap},
    capture::{
        control::{Notice, Request},
        records::{self, Opened, Record, Role},
        ring_fill::RingFill,
    },
    config::Config,
    conn::{ConnEvent, ConnTable},
    http::Exchange,
    output::{
        events::EventWriter,
        metrics::{EventKind, Metrics, ShedStage, StateKind},
    },
    shed::{ShedConfig, Shedder},
    timestamp::MillisText,
};

/// Logs a record's identity and first bytes (escaped): what the kernel saw, for debugging.
fn trace_record(record: &Record<'_>) {
    match record {
        Record::Data(d) => {
            let head: String = d
                .payload
                .iter()
                .take(48)
                .flat_map(|b| std::ascii::escape_default(*b))
                .map(char::from)
                .collect();
            tracing::trace!(
                conn = d.conn_id,
                pid = d.pid,
                fd = d.fd,
                seq = d.seq,
                len = d.payload.len(),
                op_end = d.op_end,
                read = d.read,
                tls = d.tls,
                last = d.last,
                "data {head}"
            );
        }
        other => tracing::trace!("{other:?}"),
    }
}

/// Converts the kernel's clock (CLOCK_MONOTONIC, as `bpf_ktime_get_ns`) to wall time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    mono_at_start: u64,
    wall_at_start: SystemTime,
}

impl Clock {
    #[must_use]
    pub fn new() -> Self {
        Self {
            mono_at_start: Self::monotonic_ns(),
            wall_at_start: SystemTime::now(),
        }
    }

    /// CLOCK_MONOTONIC now, in ns.
    #[must_use]
    pub fn monotonic_ns() -> u64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: valid pointer to a timespec; CLOCK_MONOTONIC always exists.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
        u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000
            + u64::try_from(ts.tv_nsec).unwrap_or(0)
    }

    /// Wall-clock time of a kernel timestamp.
    #[must_use]
    pub fn wall(&self, mono_ns: u64) -> SystemTime {
        if mono_ns >= self.mono_at_start {
            self.wall_at_start + Duration::from_nanos(mono_ns - self.mono_at_start)
        } else {
            self.wall_at_start - Duration::from_nanos(self.mono_at_start - mono_ns)
        }
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// Where results go: events, and the data map (kept here, written periodically).
pub struct Outputs {
    pub events: Option<EventWriter>,
    pub data_map: DataMap,
    pub data_map_path: Option<std::path::PathBuf>,
    pub report_path: Option<std::path::PathBuf>,
    pub data_map_interval: Duration,
}

impl Outputs {
    /// Events and the data map for one analysed call; counts findings and data flows.
    pub fn record(&mut self, a: &Analysis, metrics: &Metrics) {
        metrics.record_call(&a.call);
        for f in &a.findings {
            metrics.record_finding(f);
        }
        if a.call.third_party {
            metrics.record_flow(&a.call, &a.data_types);
        }
        self.data_map.record(a);
        if let Some(events) = self.events.as_mut()
            && let Err(e) = events.write_analysis(a)
        {
            warn!("writing events failed: {e}");
            metrics.lost.with_label_values(&["output_error"]).inc();
        }
    }

    /// Alerts raised, as `{"kind":"alert","alert":{...}}` events.
    pub fn alerts(&mut self, alerts: &[Alert], metrics: &Metrics) {
        #[derive(serde::Serialize)]
        struct AlertEvent<'a> {
            kind: &'static str,
            alert: &'a Alert,
        }
        let Some(events) = self.events.as_mut() else {
            return;
        };
        for alert in alerts {
            if let Err(e) = events.write(&AlertEvent {
                kind: "alert",
                alert,
            }) {
                warn!("writing events failed: {e}");
                metrics.lost.with_label_values(&["output_error"]).inc();
            }
        }
    }

    /// Flushes events and rewrites the data map files.
    pub fn flush(&mut self, write_map: bool) {
        if let Some(events) = self.events.as_mut()
            && let Err(e) = events.flush()
        {
            warn!("writing events failed: {e}");
        }
        if !write_map {
            return;
        }
        if let Some(p) = &self.data_map_path
            && let Err(e) = self.data_map.write_json(p)
        {
            warn!("writing the data map to {} failed: {e}", p.display());
        }
        if let Some(p) = &self.report_path
            && let Err(e) = self.data_map.write_markdown(p)
        {
            warn!("writing the data map report to {} failed: {e}", p.display());
        }
    }
}

/// Everything the pipeline thread owns.
pub struct Pipeline {
    pub table: ConnTable,
    pub analyzer: Analyzer,
    pub outputs: Outputs,
    pub metrics: Arc<Metrics>,
    pub control: Sender<Request>,
    /// Findings and anomalies to alerts; `None` when alerting is off.
    pub alerter: Option<Alerter>,
    pub clock: Clock,
    /// Sheds work when the pipeline falls behind the kernel (see [`crate::shed`]).
    pub shedder: Shedder,
    /// Bytes waiting in the ring buffer above which the kernel cuts bodies short (its
    /// `SHED_BYTES`, see `capture::loader::RingMarks`): the pipeline is beyond capacity too.
    pub high_water: u64,
    /// What each process's peers were reported as (true: a third party).
    peers: HashMap<u32, bool>,
    out: Vec<ConnEvent>,
    /// The timestamp of the call being analysed (see [`CallContext::ts`]).
    ts: MillisText,
    last_map_write: Instant,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("connections", &self.table.len())
            .finish_non_exhaustive()
    }
}

/// How often timeouts are checked and outputs flushed.
const TICK: Duration = Duration::from_millis(250);
/// How long to wait for the ring buffer before looking at other work.
const POLL_MS: i32 = 20;
/// Processes whose peers are remembered (see [`Pipeline::peer`]).
const MAX_PEERS: usize = 65_536;
/// Records handled per pass before notices and the tick get their turn: a ring that never
/// empties (the agent beyond capacity) must not hold off timeouts and the memory budget.
const MAX_BATCH: usize = 4096;

impl Pipeline {
    #[must_use]
    pub fn new(
        table: ConnTable,
        analyzer: Analyzer,
        outputs: Outputs,
        metrics: Arc<Metrics>,
        control: Sender<Request>,
    ) -> Self {
        Self {
            table,
            analyzer,
            outputs,
            metrics,
            control,
            alerter: None,
            clock: Clock::new(),
            shedder: Shedder::new(ShedConfig::default()),
            high_water: u64::MAX,
            peers: HashMap::new(),
            out: Vec::new(),
            ts: MillisText::default(),
            last_map_write: Instant::now(),
        }
    }

    /// Applies a reloaded configuration: destinations, alert rules, anomaly sensitivity.
    /// Connections, baselines and open alert groups are kept.
    pub fn reload(&mut self, config: &Config) {
        self.analyzer
            .set_destinations(Destinations::from_config(&config.destinations));
        if let Some(a) = self.alerter.as_mut() {
            a.reload(config);
        }
    }

    /// Reads the ring buffer until `stop`, then drains it and closes every connection.
    pub fn run(
        mut self,
        mut ring: RingBuf<MapData>,
        notices: &Receiver<Notice>,
        reloads: &Receiver<Arc<Config>>,
        stop: &AtomicBool,
    ) {
        let fd = ring.as_raw_fd();
        let fill = RingFill::new(fd)
            .inspect_err(|e| {
                warn!(
                    "cannot read how full the ring buffer is ({e}); shedding follows the lag alone"
                );
            })
            .ok();
        // Records made before the pipeline ran waited for it to start, not for it to catch
        // up: their age says nothing about load.
        let started = Clock::monotonic_ns();
        let mut last_tick = Instant::now();
        loop {
            let stopping = stop.load(Ordering::Relaxed);
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd; the ring buffer fd lives as long as `ring`.
            unsafe { libc::poll(&raw mut pfd, 1, if stopping { 0 } else { POLL_MS }) };
            let mut handled = 0;
            while handled < MAX_BATCH
                && let Some(item) = ring.next()
            {
                if handled == 0 {
                    // The pass's first record is its oldest: how far behind the pipeline is.
                    // Once per pass, not per record: a clock read, the ring's fill and a
                    // second look at the header, on every record, said nothing more.
                    let ts = records::timestamp(&item).filter(|&ts| ts >= started);
                    self.observe_pressure(ts, fill.as_ref());
                }
                self.record(&item);
                handled += 1;
            }
            if handled == 0 {
                // Caught up: lets the shedder give levels back when traffic stops.
                self.observe_pressure(None, fill.as_ref());
            }
            while let Ok(n) = notices.try_recv() {
                self.notice(n);
            }
            while let Ok(c) = reloads.try_recv() {
                self.reload(&c);
            }
            if stopping {
                break;
            }
            if last_tick.elapsed() >= TICK {
                self.tick();
                last_tick = Instant::now();
            }
        }
        self.finish();
    }

    /// Handles one ring buffer record.
    pub fn record(&mut self, bytes: &[u8]) {
        let record = match records::decode(bytes) {
            Ok(r) => r,
            Err(e) => {
                debug!("undecodable record: {e}");
                self.metrics.lost.with_label_values(&["decode_error"]).inc();
                return;
            }
        };
        let kind = match &record {
            Record::Data(_) => EventKind::Data,
            Record::Opened(_) => EventKind::ConnOpen,
            Record::Closed { .. } => EventKind::ConnClose,
            Record::Exec { .. } => EventKind::Exec,
            Record::Exit { .. } => EventKind::Exit,
            Record::ExecMapped { .. } => EventKind::ExecMapped,
        };
        self.metrics.count_event(kind);
        if tracing::enabled!(tracing::Level::TRACE) {
            trace_record(&record);
        }
        let mut out = std::mem::take(&mut self.out);
        match record {
            Record::Data(d) => self.table.data(&d, &mut out),
            Record::Opened(o) => {
                self.peer(&o);
                self.table.open(o, &mut out);
            }
            Record::Closed { conn_id, seq, .. } => self.table.close(conn_id, Some(seq), &mut out),
            Record::Exec { pid, .. } => {
                // A new program: its first connection decides again whether it is probed.
                self.peers.remove(&pid);
                self.request(Request::Scan { pid, exec: true });
            }
            Record::ExecMapped { pid } => self.request(Request::Scan { pid, exec: false }),
            Record::Exit { pid, .. } => {
                let fds = self.table.fds_of(pid);
                self.table.exit(pid, &mut out);
                self.peers.remove(&pid);
                self.request(Request::Forget { pid, fds });
            }
        }
        self.emit(&mut out);
        self.out = out;
    }

    /// Tells the shedder how far behind a record made at `ts` is (`None`: nothing waits, or
    /// its age does not count), and whether the ring buffer is above its high-water mark.
    fn observe_pressure(&mut self, ts: Option<u64>, fill: Option<&RingFill>) {
        let now = Clock::monotonic_ns();
        let lag = ts.map_or(0, |ts| now.saturating_sub(ts));
        let full = fill.is_some_and(|f| f.bytes() > self.high_water);
        if !self.shedder.observe(lag, full, now) {
            return;
        }
        let level = self.shedder.level();
        let every = self.shedder.sample_every();
        self.table.set_shedding(self.shedder.keep_bodies(), every);
        self.metrics.shed_level.set(i64::from(level));
        let lag_ms = lag / 1_000_000;
        let why = if full {
            ", ring buffer over half full"
        } else {
            ""
        };
        match level {
            0 => info!("caught up ({lag_ms} ms behind): analysing everything again"),
            1 => info!("{lag_ms} ms behind the kernel{why}: analysing heads only, no bodies"),
            _ => info!(
                "{lag_ms} ms behind the kernel{why}: heads only, and one in {every} new connections per process"
            ),
        }
    }

    /// Handles what the control thread found.
    pub fn notice(&mut self, notice: Notice) {
        let mut out = std::mem::take(&mut self.out);
        match notice {
            Notice::Opened(o) => {
                self.peer(&o);
                self.table.open(o, &mut out);
            }
            Notice::Resolved { conn_id, peer } => self.table.resolved(conn_id, peer, &mut out),
            Notice::Ready => {
                self.metrics.ready.set(1);
                tracing::info!("ready");
            }
        }
        self.emit(&mut out);
        self.out = out;
    }

    /// Tells the control thread who a process talks to, once per process and kind of peer:
    /// a third party gets its TLS calls probed, an internal peer or a client of its own (a
    /// server) gets them left alone.
    fn peer(&mut self, o: &Opened) {
        let Some(remote) = o.remote else { return };
        let third_party = o.role != Role::Server
            && self
                .analyzer
                .destinations()
                .is_third_party("", Some(remote));
        if self
            .peers
            .get(&o.pid)
            .is_some_and(|&told| told || !third_party)
        {
            return;
        }
        if self.peers.len() >= MAX_PEERS {
            // Only saves messages: the control thread ignores what it already knows.
            self.peers.clear();
        }
        self.peers.insert(o.pid, third_party);
        self.request(Request::Peer {
            pid: o.pid,
            third_party,
        });
    }

    fn request(&self, request: Request) {
        if self.control.send(request).is_err() {
            debug!("control thread gone; request dropped");
        }
    }

    /// Periodic work: response timeouts, gauges, flushing.
    pub fn tick(&mut self) {
        let mut out = std::mem::take(&mut self.out);
        self.table.tick(Clock::monotonic_ns(), &mut out);
        self.emit(&mut out);
        self.out = out;
        self.metrics
            .connections
            .set(i64::try_from(self.table.len()).unwrap_or(i64::MAX));
        self.metrics
            .buffered
            .set(i64::try_from(self.table.buffered()).unwrap_or(i64::MAX));
        self.metrics.lag.set(self.shedder.lag_ns() as f64 / 1e9);
        self.metrics
            .state_evicted_total(StateKind::RouteSegments, self.analyzer.routes_not_learned());
        self.metrics
            .state_evicted_total(StateKind::DataMapFlows, self.outputs.data_map.dropped());
        if let Some(a) = self.alerter.as_mut() {
            let alerts = a.tick();
            self.outputs.alerts(&alerts, &self.metrics);
        }
        let write_map = self.last_map_write.elapsed() >= self.outputs.data_map_interval;
        if write_map {
            self.last_map_write = Instant::now();
        }
        self.outputs.flush(write_map);
    }

    /// Reports what is still in progress and flushes outputs (the agent is stopping).
    pub fn finish(&mut self) {
        let mut out = std::mem::take(&mut self.out);
        self.table.close_all(&mut out);
        self.emit(&mut out);
        if let Some(a) = self.alerter.as_mut() {
            let alerts = a.finish();
            self.outputs.alerts(&alerts, &self.metrics);
        }
        self.outputs.flush(true);
    }

    fn emit(&mut self, out: &mut Vec<ConnEvent>) {
        for event in out.drain(..) {
            match event {
                ConnEvent::Exchange(info, mut x) => {
                    if !info.sampled {
                        // Sampled out under load: counted, not analysed.
                        self.metrics.shed(ShedStage::SampledOut).inc();
                        crate::http::recycle(x);
                        continue;
                    }
                    if shed_bodies(&mut x, self.shedder.keep_bodies()) {
                        self.metrics.shed(ShedStage::Body).inc();
                    }
                    let ts = self.ts.format(self.clock.wall(x.request.first_ts));
                    let ctx = CallContext {
                        pid: Some(info.pid),
                        comm: &info.comm,
                        direction: match info.role {
                            Role::Server => CallDirection::Ingress,
                            Role::Client | Role::Unknown => CallDirection::Egress,
                        },
                        tls_lib: info.tls_lib,
                        tls: info.tls_lib.is_some(),
                        remote: info.remote,
                        ts,
                        entry: None,
                    };
                    let analysis = self.analyzer.analyze(&ctx, &x);
                    self.outputs.record(&analysis, &self.metrics);
                    if let Some(a) = self.alerter.as_mut() {
                        a.call(&analysis);
                    }
                    // Nothing refers to them any more: the next call reuses their buffers.
                    self.analyzer.recycle(analysis);
                    crate::http::recycle(x);
                }
                ConnEvent::ParseError(e) => self
                    .metrics
                    .parse_errors
                    .with_label_values(&[e.label()])
                    .inc(),
                ConnEvent::UnmatchedResponse => self.metrics.unmatched_responses.inc(),
                ConnEvent::Mute { pid, fd, conn_id } => {
                    self.request(Request::Mute { pid, fd, conn_id })
                }
                ConnEvent::Resolve { pid, fd, conn_id } => {
                    self.request(Request::Resolve { pid, fd, conn_id })
                }
                ConnEvent::Evicted => self.metrics.evicted.inc(),
                ConnEvent::Dropped { calls } => self
                    .metrics
                    .lost
                    .with_label_values(&["unresolved"])
                    .inc_by(calls as u64),
            }
        }
    }
}

/// Empties the bodies of `x` unless they are kept (`keep`); returns whether it lost body bytes
/// to shedding, now or while it was parsed (see [`crate::http::Body::shed`]).
fn shed_bodies(x: &mut Exchange, keep: bool) -> bool {
    let mut shed = false;
    for body in std::iter::once(&mut x.request.body).chain(x.response.as_mut().map(|r| &mut r.body))
    {
        if !keep && !body.data.is_empty() {
            body.data.clear();
            body.truncated = true;
            body.shed = true;
        }
        shed |= body.shed;
    }
    shed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{Body, Head, Message, StartLine};

    fn message(body: &[u8], shed: bool) -> Message {
        Message {
            head: Head {
                start: StartLine::Request {
                    method: "POST".into(),
                    target: "/".into(),
                },
                version: 1,
                headers: Vec::new(),
            },
            body: Body {
                data: body.to_vec(),
                size: body.len() as u64,
                truncated: shed,
                shed,
            },
            trailers: Vec::new(),
            head_bytes: 0,
            first_ts: 0,
            last_ts: 0,
            complete: true,
        }
    }

    #[test]
    fn a_call_loses_its_bodies_to_shedding_once() {
        let mut x = Exchange {
            request: message(b"{}", false),
            response: Some(message(b"", false)),
        };
        // Kept, nothing shed: analysed whole.
        assert!(!shed_bodies(&mut x, true));
        assert_eq!(x.request.body.data, b"{}");
        // Shedding now: emptied, and said so.
        assert!(shed_bodies(&mut x, false));
        assert!(x.request.body.data.is_empty() && x.request.body.size == 2);
        // No body at all: nothing to shed.
        let mut empty = Exchange {
            request: message(b"", false),
            response: None,
        };
        assert!(!shed_bodies(&mut empty, false));
        // Shed while parsed, kept now: still a call without its body.
        let mut parsed = Exchange {
            request: message(b"", false),
            response: Some(message(b"", true)),
        };
        assert!(shed_bodies(&mut parsed, true));
    }
}
