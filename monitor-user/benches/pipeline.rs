//! The userspace hot path, one HTTP call at a time: ring buffer records laid out as the kernel
//! writes them, through a real `Pipeline` (decode, connection table, HTTP parsing, analysis,
//! metrics, JSON events, alerting), beside `httparse` parsing the same request and response
//! heads. Keep-alive connections carry small REST calls as `wrk` or an API client makes them:
//! a GET with a bearer token answered by ~300 bytes of JSON, a POST of a small JSON body.
//!
//! Run: `cargo bench -p monitor-user --bench pipeline`. With `APIMON_PROFILE_CALLS=N` set it
//! runs N steady-state calls once, then the baseline on as many, without criterion, for
//! callgrind: `valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*steady_state*'
//! --toggle-collect='*httparse_baseline*' BENCH` (`APIMON_PROFILE_VARIANT=plain|tls` for one).

use std::{
    alloc::{GlobalAlloc, Layout, System},
    hint::black_box,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
};

use apimon::{
    alert::{Alert, alerter::Alerter, novelty::Novelty},
    analysis::datamap::DataMap,
    capture::{control::Request, records},
    config::Config,
    conn::{ConnTable, TableConfig},
    output::{events::EventWriter, metrics::Metrics},
    pipeline::{Clock, Outputs, Pipeline},
};
use common::{ConnOpen, DataHeader, RecordHeader, data_flags, kind, role, tls_lib};
use criterion::{Criterion, Throughput};

/// Counts heap allocations, to report allocations per call.
struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static ALLOC_BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        ALLOC_BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        ALLOC_BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Keep-alive connections the calls are spread over.
const CONNS: usize = 64;
/// Distinct calls (ids, bodies) cycled through.
const TEMPLATES: usize = 32;
/// Calls fed before measuring: every connection and route seen, buffers grown.
const WARMUP: usize = 4096;

/// What the traffic is: who talks to whom, and whether the records are TLS plaintext.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    /// `wrk` against nginx on an internal address, socket bytes: half the connections seen
    /// from the client (egress), half from the server (ingress).
    Plain,
    /// An application calling a third-party API over TLS (OpenSSL plaintext records).
    Tls,
}

impl Variant {
    const fn name(self) -> &'static str {
        match self {
            Self::Plain => "plain",
            Self::Tls => "tls",
        }
    }
}

/// Payload size classes of the kernel's data records (see monitor-ebpf `emit_chunk`).
fn reserved(n: usize) -> usize {
    [256, 1024, 4096, common::CHUNK_MAX]
        .into_iter()
        .find(|&c| n <= c)
        .unwrap_or(common::CHUNK_MAX)
}

fn bytes_of<T: Copy>(v: &T) -> &[u8] {
    // SAFETY: T is a plain repr(C) integer struct from `common`, with explicit padding.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }
}

/// A data record as the kernel reserves it: header, payload, padding to its size class.
fn data_record(payload: &[u8]) -> Vec<u8> {
    let mut r = vec![0u8; size_of::<DataHeader>() + reserved(payload.len())];
    r[size_of::<DataHeader>()..][..payload.len()].copy_from_slice(payload);
    r
}

/// One request and its response, as bytes on the wire.
struct Call {
    request: Vec<u8>,
    response: Vec<u8>,
}

const TOKEN: &str = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJzdmMtb3JkZXJzIiwiYXVkIjoiYXBpLnBhcnRuZXIudGVzdCIsImV4cCI6MTc5MzE0ODgwMH0.c2lnbmF0dXJlLW9mLXRoZS10b2tlbi1ub3QtYS1zZWNyZXQ";

fn calls(host: &str, agent: &str) -> Vec<Call> {
    (0..TEMPLATES)
        .map(|i| {
            let id = 100_000 + i * 7919;
            if i % 2 == 0 {
                let body = format!(
                    "{{\"id\":\"ord_{id}\",\"object\":\"order\",\"status\":\"shipped\",\"created\":{},\"currency\":\"usd\",\"amount\":{},\"items\":[{{\"sku\":\"SKU-{:06}\",\"qty\":2,\"price\":1999}},{{\"sku\":\"SKU-{:06}\",\"qty\":1,\"price\":{}}}],\"shipping\":{{\"carrier\":\"ups\",\"service\":\"ground\"}},\"metadata\":{{\"source\":\"web\",\"campaign\":\"spring\"}},\"livemode\":true}}",
                    1_732_329_829 + i,
                    4999 + i,
                    i * 13,
                    i * 17,
                    999 + i
                );
                Call {
                    request: format!(
                        "GET /v1/orders/{id}?expand=items HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {agent}\r\nAccept: application/json\r\nAuthorization: Bearer {TOKEN}\r\nX-Request-Id: 6f1c2e9a-{i:04x}-4b7d-9c1e-2f3a4b5c6d7e\r\n\r\n"
                    )
                    .into_bytes(),
                    response: format!(
                        "HTTP/1.1 200 OK\r\nServer: nginx/1.24.0\r\nDate: Mon, 23 Nov 2026 02:43:49 GMT\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: keep-alive\r\n\r\n{body}",
                        body.len()
                    )
                    .into_bytes(),
                }
            } else {
                let body = format!(
                    "{{\"sku\":\"SKU-{:06}\",\"qty\":{},\"currency\":\"usd\",\"priority\":\"standard\",\"note\":\"leave at the front desk\"}}",
                    i * 31,
                    1 + i % 5
                );
                let answer = format!(
                    "{{\"id\":\"ord_{id}\",\"object\":\"order\",\"status\":\"created\",\"amount\":{}}}",
                    1999 * (1 + i % 5)
                );
                Call {
                    request: format!(
                        "POST /v1/orders HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {agent}\r\nAccept: application/json\r\nContent-Type: application/json\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    )
                    .into_bytes(),
                    response: format!(
                        "HTTP/1.1 201 Created\r\nServer: nginx/1.24.0\r\nDate: Mon, 23 Nov 2026 02:43:49 GMT\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: keep-alive\r\n\r\n{answer}",
                        answer.len()
                    )
                    .into_bytes(),
                }
            }
        })
        .collect()
}

/// One keep-alive connection: who, and where each of its streams is.
struct Conn {
    conn_id: u64,
    pid: u32,
    fd: u32,
    server: bool,
    /// Next stream position written, read.
    seq: [u64; 2],
}

/// Traffic ready to feed: records are built once and their headers rewritten per call, as
/// cheaply as the kernel fills them.
struct Traffic {
    variant: Variant,
    conns: Vec<Conn>,
    calls: Vec<Call>,
    /// Request and response records per call template (headers rewritten per use).
    records: Vec<(Vec<u8>, Vec<u8>)>,
    opens: Vec<Vec<u8>>,
    next: usize,
    ts: u64,
}

impl Traffic {
    fn new(variant: Variant) -> Self {
        let calls = match variant {
            Variant::Plain => calls("orders.internal", "wrk/4.2.0"),
            Variant::Tls => calls("api.partner.test", "python-requests/2.32.3"),
        };
        let records = calls
            .iter()
            .map(|c| (data_record(&c.request), data_record(&c.response)))
            .collect();
        let ts = Clock::monotonic_ns();
        let mut conns = Vec::new();
        let mut opens = Vec::new();
        for i in 0..CONNS {
            let server = variant == Variant::Plain && i % 2 == 1;
            let (pid, remote, port) = match (variant, server) {
                (Variant::Plain, false) => (4100, [10, 0, 0, 9], 80u16),
                (Variant::Plain, true) => (4200, [10, 0, 0, 8], 40_000 + i as u16),
                (Variant::Tls, _) => (4300, [198, 51, 100, 10], 443),
            };
            let comm = match (variant, server) {
                (Variant::Plain, false) => "wrk",
                (Variant::Plain, true) => "nginx",
                (Variant::Tls, _) => "python3",
            };
            let conn = Conn {
                conn_id: 1000 + i as u64,
                pid,
                fd: 10 + i as u32,
                server,
                seq: [0, 0],
            };
            let mut raddr = [0u8; 16];
            raddr[..4].copy_from_slice(&remote);
            let mut c = [0u8; common::COMM_LEN];
            c[..comm.len()].copy_from_slice(comm.as_bytes());
            let open = ConnOpen {
                header: RecordHeader {
                    kind: kind::CONN_OPEN,
                    tgid: pid,
                    ts_ns: ts,
                },
                conn_id: conn.conn_id,
                fd: conn.fd,
                tid: pid,
                family: 2,
                rport: port.to_be_bytes(),
                role: if server { role::SERVER } else { role::CLIENT },
                flags: 0,
                _pad: [0; 2],
                raddr,
                comm: c,
            };
            opens.push(bytes_of(&open).to_vec());
            conns.push(conn);
        }
        Self {
            variant,
            conns,
            calls,
            records,
            opens,
            next: 0,
            ts,
        }
    }

    /// The next call's two records (request, then response), headers filled in.
    fn next_call(&mut self) -> (&[u8], &[u8]) {
        let n = self.next;
        self.next += 1;
        let conn = &mut self.conns[n % CONNS];
        let t = (n / CONNS + n) % TEMPLATES;
        let call = &self.calls[t];
        let (req, res) = &mut self.records[t];
        let tls = self.variant == Variant::Tls;
        // The request is what the client writes and the server reads.
        let (req_read, res_read) = if conn.server {
            (true, false)
        } else {
            (false, true)
        };
        self.ts += 50_000;
        let req_ts = self.ts;
        self.ts += 1_200_000;
        let res_ts = self.ts;
        let mut header = |rec: &mut Vec<u8>, len: usize, read: bool, ts: u64| {
            let stream = usize::from(read);
            let seq = conn.seq[stream];
            conn.seq[stream] += len as u64;
            let mut flags = data_flags::LAST;
            if read {
                flags |= data_flags::READ;
            }
            if tls {
                flags |= data_flags::TLS;
            }
            let h = DataHeader {
                header: RecordHeader {
                    kind: kind::DATA,
                    tgid: conn.pid,
                    ts_ns: ts,
                },
                conn_id: conn.conn_id,
                seq,
                op_end: seq + len as u64,
                fd: conn.fd,
                tid: conn.pid,
                len: len as u32,
                flags,
                tls_lib: if tls { tls_lib::OPENSSL } else { tls_lib::NONE },
                _pad: 0,
            };
            rec[..size_of::<DataHeader>()].copy_from_slice(bytes_of(&h));
        };
        header(req, call.request.len(), req_read, req_ts);
        header(res, call.response.len(), res_read, res_ts);
        (req.as_slice(), res.as_slice())
    }
}

/// The other ends of the pipeline's channels: they live as long as the pipeline, as the
/// agent's threads do.
type Ends = (mpsc::Receiver<Request>, tokio::sync::mpsc::Receiver<Alert>);

/// A pipeline as `apimon run` builds it (default configuration, events to a sink, alerting
/// on), without the kernel.
fn pipeline() -> (Pipeline, Ends) {
    let config = Config::default();
    let metrics = Arc::new(Metrics::new(config.metrics.max_hosts));
    let table = ConnTable::new(TableConfig::from_config(&config.capture));
    let outputs = Outputs {
        events: Some(EventWriter::new(Box::new(std::io::sink()))),
        data_map: DataMap::new(config.analysis.max_flows),
        data_map_path: None,
        report_path: None,
        data_map_interval: config.output.data_map_interval,
    };
    let (control, requests) = mpsc::channel();
    let analyzer = apimon::run::analyzer(&config).expect("default analyzer");
    let mut p = Pipeline::new(table, analyzer, outputs, Arc::clone(&metrics), control);
    let novelty = Novelty::load(
        None,
        config.anomaly.learning_period,
        config.anomaly.max_destinations,
    )
    .expect("novelty");
    let (alerts, alerts_rx) = tokio::sync::mpsc::channel(1024);
    p.alerter = Some(Alerter::new(&config, novelty, alerts, metrics));
    (p, (requests, alerts_rx))
}

/// A pipeline with every connection open and warmed up.
fn ready(variant: Variant) -> (Pipeline, Traffic, Ends) {
    let (mut p, keep) = pipeline();
    let mut t = Traffic::new(variant);
    for open in &t.opens {
        p.record(open);
    }
    for _ in 0..WARMUP {
        let (req, res) = t.next_call();
        p.record(req);
        p.record(res);
    }
    // Every call made it through, as one event and no findings.
    let written = p.outputs.events.as_ref().map_or(0, EventWriter::written);
    assert_eq!(written, WARMUP as u64, "{variant:?}: events written");
    (p, t, keep)
}

/// The measured loop for callgrind's `--toggle-collect`.
#[inline(never)]
fn steady_state(p: &mut Pipeline, t: &mut Traffic, calls: usize) {
    for _ in 0..calls {
        let (req, res) = t.next_call();
        p.record(req);
        p.record(res);
    }
}

/// The baseline's loop, for callgrind's `--toggle-collect` beside [`steady_state`].
#[inline(never)]
fn httparse_baseline(t: &Traffic, calls: usize) -> usize {
    (0..calls)
        .map(|n| httparse_call(black_box(&t.calls[n % TEMPLATES])))
        .sum()
}

/// Heap allocations and bytes per call in steady state.
fn allocations(variant: Variant, calls: usize) -> (f64, f64) {
    let (mut p, mut t, _keep) = ready(variant);
    let (a0, b0) = (
        ALLOCS.load(Ordering::Relaxed),
        ALLOC_BYTES.load(Ordering::Relaxed),
    );
    steady_state(&mut p, &mut t, calls);
    let (a1, b1) = (
        ALLOCS.load(Ordering::Relaxed),
        ALLOC_BYTES.load(Ordering::Relaxed),
    );
    (
        (a1 - a0) as f64 / calls as f64,
        (b1 - b0) as f64 / calls as f64,
    )
}

/// `httparse` on the same request and response heads: the least any HTTP monitor does.
fn httparse_call(call: &Call) -> usize {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let a = match req.parse(&call.request) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => 0,
    };
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut res = httparse::Response::new(&mut headers);
    let b = match res.parse(&call.response) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => 0,
    };
    a + b
}

fn bench(c: &mut Criterion) {
    for variant in [Variant::Plain, Variant::Tls] {
        let (allocs, bytes) = allocations(variant, 20_000);
        println!(
            "pipeline/{}: {allocs:.1} allocations ({bytes:.0} bytes) per call in steady state",
            variant.name()
        );
        let mut group = c.benchmark_group(format!("pipeline_{}", variant.name()));
        // One iteration is one HTTP call: two records.
        group.throughput(Throughput::Elements(1));
        {
            let (mut p, mut t, _keep) = ready(variant);
            group.bench_function("apimon_pipeline", |b| {
                b.iter(|| {
                    let (req, res) = t.next_call();
                    p.record(black_box(req));
                    p.record(black_box(res));
                });
            });
        }
        {
            let mut t = Traffic::new(variant);
            group.bench_function("decode_records_only", |b| {
                b.iter(|| {
                    let (req, res) = t.next_call();
                    black_box(records::decode(black_box(req)).is_ok());
                    black_box(records::decode(black_box(res)).is_ok());
                });
            });
        }
        {
            let t = Traffic::new(variant);
            let mut n = 0;
            group.bench_function("httparse_heads_only", |b| {
                b.iter(|| {
                    n += 1;
                    black_box(httparse_call(black_box(&t.calls[n % TEMPLATES])))
                });
            });
        }
        group.finish();
    }
}

fn main() {
    if let Some(calls) = std::env::var("APIMON_PROFILE_CALLS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        for variant in [Variant::Plain, Variant::Tls] {
            if std::env::var("APIMON_PROFILE_VARIANT").is_ok_and(|v| v != variant.name()) {
                continue;
            }
            let (mut p, mut t, _keep) = ready(variant);
            let a0 = ALLOCS.load(Ordering::Relaxed);
            steady_state(&mut p, &mut t, calls);
            let a1 = ALLOCS.load(Ordering::Relaxed);
            println!(
                "{}: {calls} calls, {:.1} allocations per call",
                variant.name(),
                (a1 - a0) as f64 / calls as f64
            );
            black_box(httparse_baseline(&t, calls));
        }
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
}
