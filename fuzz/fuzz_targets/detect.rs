//! Any bytes through the detector and the full inspection of a message: findings or none,
//! never a panic; every candidate lies inside the input.
#![no_main]

use std::sync::LazyLock;

use apimon::{
    analysis::{
        detect::{Detector, Hints},
        inspect::Inspector,
        mask::Hasher,
    },
    http::{Body, Head, Header, Message, StartLine},
};
use libfuzzer_sys::fuzz_target;

static DETECTOR: LazyLock<Detector> = LazyLock::new(Detector::default);
static INSPECTOR: LazyLock<Inspector> =
    LazyLock::new(|| Inspector::new(Detector::default(), Hasher::new(Some(b"fuzz".to_vec())), 1 << 16));

const TYPES: &[&str] = &[
    "application/json",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=XyZ",
    "text/plain",
    "application/octet-stream",
];
const ENCODINGS: &[Option<&str>] = &[None, Some("gzip"), Some("deflate"), Some("br")];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, text)) = data.split_first() else {
        return;
    };
    let mut out = Vec::new();
    DETECTOR.candidates(text, &mut out);
    let hints = Hints {
        phone: selector & 1 != 0,
        ssn: selector & 2 != 0,
        card: selector & 4 != 0,
        birth_date: selector & 8 != 0,
        version: selector & 16 != 0,
        not_personal_number: selector & 32 != 0,
        ..Hints::default()
    };
    for c in &out {
        assert!(c.start <= c.end && c.end <= text.len(), "candidate {c:?} outside the input");
        let _ = DETECTOR.classify(c, text, &Hints::default());
        let _ = DETECTOR.classify(c, text, &hints);
    }
    let mut hits = Vec::new();
    DETECTOR.scan_value(text, &hints, &mut hits);

    let mut headers = vec![Header {
        name: "Content-Type".into(),
        value: TYPES[usize::from(selector) % TYPES.len()].into(),
    }];
    if let Some(enc) = ENCODINGS[usize::from(selector >> 4) % ENCODINGS.len()] {
        headers.push(Header { name: "Content-Encoding".into(), value: enc.into() });
    }
    let target = String::from_utf8_lossy(&text[..text.len().min(64)]).into_owned();
    let message = Message {
        head: Head {
            start: StartLine::Request { method: "POST".into(), target: target.clone() },
            version: 1,
            headers,
        },
        body: Body { size: text.len() as u64, data: text.to_vec(), truncated: selector & 0x80 != 0, shed: false },
        trailers: Vec::new(),
        head_bytes: 0,
        first_ts: 0,
        last_ts: 0,
        complete: true,
    };
    let _ = INSPECTOR.exchange(&message, &target, Some(&message));
});
