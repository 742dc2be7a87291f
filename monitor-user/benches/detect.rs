//! Detector throughput on API-like JSON bodies (every secret rule on), beside plain JSON
//! parsing of the same bytes; and whole-HAR analysis. Run: `cargo xtask bench`.

use std::{hint::black_box, io::Write as _};

use apimon::{
    analysis::{detect::Detector, inspect::Inspector, mask::Hasher},
    http::{Body, Head, Header, Message, StartLine},
};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn hex(&mut self, n: usize) -> String {
        (0..n)
            .map(|_| char::from(b"0123456789abcdef"[self.below(16) as usize]))
            .collect()
    }
}

const WORDS: &[&str] = &[
    "alpha",
    "delivery",
    "invoice",
    "widget",
    "pending",
    "approved",
    "warehouse",
    "priority",
    "standard",
    "express",
];
const PII: &[(&str, &str)] = &[
    ("email", "lucy.smith@example.com"),
    ("phone", "(415) 555-2671"),
    ("card_number", "4111 1111 1111 1111"),
    ("iban", "DE89 3704 0044 0532 0130 00"),
    ("ssn", "536-22-5041"),
    ("first_name", "Lucy"),
    ("date_of_birth", "1980-03-05"),
    ("address", "742 Evergreen Terrace"),
];

/// One API-like JSON body (about 1.5 KiB): ids, timestamps, amounts, nested items, traces;
/// `pii_percent` of its string fields replaced by personal data.
fn body(rng: &mut Rng, pii_percent: u64) -> Vec<u8> {
    let mut fields = Vec::new();
    let mut field = |rng: &mut Rng, key: String, value: String| {
        if rng.below(100) < pii_percent {
            let (k, v) = PII[rng.below(PII.len() as u64) as usize];
            fields.push(format!("\"{k}\":\"{v}\""));
        } else {
            fields.push(format!("\"{key}\":{value}"));
        }
    };
    let uuid = |rng: &mut Rng| {
        format!(
            "\"{}-{}-{}-{}-{}\"",
            rng.hex(8),
            rng.hex(4),
            rng.hex(4),
            rng.hex(4),
            rng.hex(12)
        )
    };
    for i in 0..24 {
        let v = match i % 8 {
            0 => uuid(rng),
            1 => format!(
                "\"2024-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z\"",
                1 + rng.below(12),
                1 + rng.below(28),
                rng.below(24),
                rng.below(60),
                rng.below(60),
                rng.below(1_000_000)
            ),
            2 => format!("{}.{:02}", rng.below(100_000), rng.below(100)),
            3 => format!(
                "\"{} {} {}\"",
                WORDS[rng.below(10) as usize],
                WORDS[rng.below(10) as usize],
                WORDS[rng.below(10) as usize]
            ),
            4 => format!("{}", 1_600_000_000_000 + rng.below(200_000_000_000)),
            5 => format!("\"SKU-{:06}\"", rng.below(1_000_000)),
            6 => format!("\"{}\"", rng.hex(40)),
            _ => format!(
                "{{\"version\":\"{}.{}.{}\",\"count\":{}}}",
                rng.below(9),
                rng.below(20),
                rng.below(99),
                rng.below(1000)
            ),
        };
        field(rng, format!("field_{i}"), v);
    }
    format!(
        "{{\"object\":\"order\",\"data\":{{{}}},\"items\":[{{\"qty\":{},\"price\":\"{}.99\"}}]}}",
        fields.join(","),
        rng.below(9),
        rng.below(500)
    )
    .into_bytes()
}

const SENTENCE: &[&str] = &[
    "the",
    "widget",
    "fails",
    "to",
    "render",
    "when",
    "the",
    "cache",
    "is",
    "cold",
    "and",
    "a",
    "retry",
    "is",
    "scheduled",
    "after",
    "deploy",
    "we",
    "see",
    "timeouts",
    "from",
    "upstream",
    "please",
    "check",
    "logs",
];

/// One API response as public REST APIs shape them (a GitHub-like issue: URLs, text, flags,
/// nested user and labels, a few ids and timestamps); `pii_percent` of its objects carry a
/// personal field.
fn api_body(rng: &mut Rng, pii_percent: u64) -> Vec<u8> {
    let words = |rng: &mut Rng, n: u64| {
        (0..n)
            .map(|_| SENTENCE[rng.below(SENTENCE.len() as u64) as usize])
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut items = Vec::new();
    for _ in 0..2 {
        let number = rng.below(5000);
        let login = WORDS[rng.below(10) as usize];
        let mut user = format!(
            "{{\"login\":\"{login}\",\"id\":{},\"node_id\":\"MDQ6VXNlcj{}\",\"avatar_url\":\"https://avatars.example.com/u/{login}?v=4\",\"html_url\":\"https://example.com/{login}\",\"type\":\"User\",\"site_admin\":false",
            rng.below(10_000_000),
            rng.hex(6)
        );
        if rng.below(100) < pii_percent * 4 {
            let (k, v) = PII[rng.below(PII.len() as u64) as usize];
            user.push_str(&format!(",\"{k}\":\"{v}\""));
        }
        user.push('}');
        items.push(format!(
            "{{\"url\":\"https://api.example.com/repos/acme/widget/issues/{number}\",\"html_url\":\"https://example.com/acme/widget/issues/{number}\",\"number\":{number},\"title\":\"{}\",\"user\":{user},\"labels\":[{{\"name\":\"bug\",\"color\":\"d73a4a\",\"default\":true}},{{\"name\":\"needs triage\",\"color\":\"ededed\",\"default\":false}}],\"state\":\"open\",\"locked\":false,\"assignee\":null,\"comments\":{},\"created_at\":\"2026-0{}-1{}T08:{:02}:11Z\",\"author_association\":\"CONTRIBUTOR\",\"body\":\"{}\"}}",
            words(rng, 6),
            rng.below(40),
            1 + rng.below(9),
            rng.below(10),
            rng.below(60),
            words(rng, 40)
        ));
    }
    format!("[{}]", items.join(",")).into_bytes()
}

/// Makes one body with the given percentage of personal data.
type Generator = fn(&mut Rng, u64) -> Vec<u8>;

fn message(body: Vec<u8>) -> Message {
    Message {
        head: Head {
            start: StartLine::Request {
                method: "POST".into(),
                target: "/v1/orders".into(),
            },
            version: 1,
            headers: vec![Header {
                name: "Content-Type".into(),
                value: "application/json".into(),
            }],
        },
        body: Body {
            size: body.len() as u64,
            data: body,
            truncated: false,
            shed: false,
        },
        trailers: Vec::new(),
        head_bytes: 0,
        first_ts: 0,
        last_ts: 0,
        complete: true,
    }
}

fn detect(c: &mut Criterion) {
    let inspector = Inspector::new(Detector::default(), Hasher::new(None), 1 << 20);
    // Two corpora: dense (every field an id, timestamp, amount or hash: the detector's worst
    // case) and typical (API responses, mostly text and URLs).
    let corpora: [(&str, Generator); 2] = [("dense", body), ("api", api_body)];
    for ((corpus, make), pii) in corpora.into_iter().flat_map(|c| [(c, 0u64), (c, 5)]) {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ pii);
        let messages: Vec<Message> = (0..400).map(|_| message(make(&mut rng, pii))).collect();
        let bytes: u64 = messages.iter().map(|m| m.body.data.len() as u64).sum();
        let mut group = c.benchmark_group(format!("json_{corpus}_{pii}pct_pii"));
        group.throughput(Throughput::Bytes(bytes));
        group.bench_function("apimon_inspect", |b| {
            b.iter(|| {
                for m in &messages {
                    black_box(inspector.exchange(m, "/v1/orders", None));
                }
            });
        });
        group.bench_function("serde_json_parse_only", |b| {
            b.iter(|| {
                for m in &messages {
                    black_box(serde_json::from_slice::<serde_json::Value>(&m.body.data).ok());
                }
            });
        });
        let detector = Detector::default();
        group.bench_function("candidates_only", |b| {
            let mut out = Vec::new();
            b.iter(|| {
                for m in &messages {
                    out.clear();
                    detector.candidates(&m.body.data, &mut out);
                    black_box(out.len());
                }
            });
        });
        group.bench_function("json_walk_only", |b| {
            b.iter(|| {
                for m in &messages {
                    let mut n = 0usize;
                    apimon::analysis::json::walk(&m.body.data, |_, s| n += s.span.len());
                    black_box(n);
                }
            });
        });
        group.finish();
    }
}

fn har(c: &mut Criterion) {
    let mut rng = Rng(42);
    let path = std::env::temp_dir().join(format!("apimon-bench-{}.har", std::process::id()));
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).expect("bench HAR"));
        let _ = write!(f, "{{\"log\":{{\"version\":\"1.2\",\"entries\":[");
        for i in 0..2000 {
            let req = String::from_utf8(body(&mut rng, 5)).expect("utf8");
            let res = String::from_utf8(body(&mut rng, 5)).expect("utf8");
            let entry = serde_json::json!({
                "startedDateTime": "2026-01-01T00:00:00Z", "time": 12.5,
                "request": {"method": "POST", "url": format!("https://api.example.com/v1/orders/{i}"), "headers": [{"name": "Content-Type", "value": "application/json"}], "postData": {"mimeType": "application/json", "text": req}},
                "response": {"status": 200, "headers": [], "content": {"size": res.len(), "mimeType": "application/json", "text": res}}
            });
            let _ = write!(f, "{}{}", if i > 0 { "," } else { "" }, entry);
        }
        let _ = write!(f, "]}}}}");
    }
    let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(1);
    let config = apimon::config::Config::default();
    let mut group = c.benchmark_group("har_file");
    group.throughput(Throughput::Bytes(bytes));
    group.sample_size(10);
    group.bench_function("apimon_analyze", |b| {
        b.iter(|| {
            black_box(
                apimon::analyze::analyze(&path, &config, Box::new(std::io::sink()), None, None)
                    .ok(),
            )
        });
    });
    group.bench_function("serde_json_parse_only", |b| {
        b.iter(|| {
            black_box(
                serde_json::from_slice::<serde_json::Value>(
                    &std::fs::read(&path).unwrap_or_default(),
                )
                .ok(),
            )
        });
    });
    group.finish();
    let _ = std::fs::remove_file(&path);
}

criterion_group!(benches, detect, har);
criterion_main!(benches);
