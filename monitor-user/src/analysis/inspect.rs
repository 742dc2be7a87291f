//! Looks through an exchange for personal data and secrets: URL path and query (decoded),
//! headers, and bodies (JSON by key path, forms, multipart text parts, plain text), after
//! undoing their content encoding. One detection per data type per field.

use std::collections::HashMap;

use serde::Serialize;

use super::{
    body::{self, Kind},
    detect::{DataType, Detector, Hints, keys, scan::Candidate},
    json,
    mask::{self, Hasher},
};
use crate::http::{Head, Message};

/// Which message of the exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Request,
    Response,
}

impl Side {
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Request => "request",
            Self::Response => "response",
        }
    }
}

/// Which part of the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Part {
    Url,
    Query,
    Header,
    Body,
}

/// One data type found in one field, with a masked sample of its first value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Detection {
    pub side: Side,
    pub part: Part,
    /// Query parameter, header name, JSON path (`$.customer.email`), form field, `path`, `text`.
    pub field: String,
    pub data_type: DataType,
    pub sample: String,
    pub value_hash: Option<String>,
    /// Values of this type in this field (array elements count one each).
    pub count: u32,
}

/// Headers whose values are protocol plumbing, not data about anyone.
const PLUMBING_HEADERS: &[&str] = &[
    "accept",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "age",
    "alt-svc",
    "cache-control",
    "connection",
    "content-disposition",
    "content-encoding",
    "content-length",
    "content-range",
    "content-security-policy",
    "content-type",
    "date",
    "dnt",
    "etag",
    "expect",
    "expires",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "keep-alive",
    "last-modified",
    "nel",
    "pragma",
    "priority",
    "range",
    "referrer-policy",
    "report-to",
    "server",
    "strict-transport-security",
    "te",
    "traceparent",
    "tracestate",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "vary",
    "via",
    "x-amzn-trace-id",
    "x-content-type-options",
    "x-correlation-id",
    "x-frame-options",
    "x-powered-by",
    "x-request-id",
    "x-xss-protection",
];

/// Slot of a header name (any case) in [`PLUMBING_TABLE`], from its length and its first,
/// middle and last bytes: hashing every byte cost more than the rest of looking at a header.
const fn name_slot(name: &[u8]) -> usize {
    let n = name.len();
    if n == 0 {
        return 0;
    }
    let key = n as u64
        | (name[0].to_ascii_lowercase() as u64) << 8
        | (name[n / 2].to_ascii_lowercase() as u64) << 16
        | (name[n - 1].to_ascii_lowercase() as u64) << 24;
    (key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - PLUMBING_SLOTS.trailing_zeros())) as usize
}

/// Slots of [`PLUMBING_TABLE`]: a power of two, well above the number of names.
const PLUMBING_SLOTS: usize = 128;

/// [`PLUMBING_HEADERS`] by [`name_slot`] (index + 1, 0 for empty; linear probing), built at
/// compile time: every header of every call is looked up, and a probe or two cost less than
/// lower-casing the name to search a list.
const PLUMBING_TABLE: [u8; PLUMBING_SLOTS] = {
    let mut table = [0u8; PLUMBING_SLOTS];
    let mut n = 0;
    while n < PLUMBING_HEADERS.len() {
        let mut i = name_slot(PLUMBING_HEADERS[n].as_bytes());
        while table[i] != 0 {
            i = (i + 1) & (PLUMBING_SLOTS - 1);
        }
        table[i] = n as u8 + 1;
        n += 1;
    }
    table
};

/// Whether a header (any case) is plumbing (see [`PLUMBING_HEADERS`]).
fn plumbing_header(name: &str) -> bool {
    let mut i = name_slot(name.as_bytes());
    loop {
        match PLUMBING_TABLE[i] {
            0 => break,
            k if PLUMBING_HEADERS[usize::from(k) - 1].eq_ignore_ascii_case(name) => return true,
            _ => i = (i + 1) & (PLUMBING_SLOTS - 1),
        }
    }
    let starts = |prefix: &str| {
        name.as_bytes()
            .get(..prefix.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(prefix.as_bytes()))
    };
    starts("sec-") || starts("access-control-") || starts("x-b3-")
}

/// Where credentials belong: their values are authentication, reported as `auth`, not findings.
/// `lower` is `name` in lower case.
fn credential_header(name: &str, lower: &str) -> bool {
    name.eq_ignore_ascii_case("authorization")
        || name.eq_ignore_ascii_case("proxy-authorization")
        || super::auth::is_key_header_lower(lower)
}

/// Inspects exchanges. Built once; cheap to share.
#[derive(Debug)]
pub struct Inspector {
    detector: Detector,
    hasher: Hasher,
    hint_cache: std::cell::RefCell<keys::HintCache>,
    max_decoded: usize,
    /// Buffers of the last JSON walk and candidate scan, taken while in use: every call has a
    /// body or two to look through.
    json_scratch: std::cell::RefCell<(json::Scratch, Vec<Candidate>)>,
}

#[derive(Default)]
struct Collector {
    items: Vec<Detection>,
    index: HashMap<(Side, Part, String, DataType), usize>,
}

impl Collector {
    fn add(
        &mut self,
        side: Side,
        part: Part,
        field: &str,
        t: DataType,
        value: &str,
        hasher: &Hasher,
    ) {
        let key = (side, part, field.to_owned(), t);
        if let Some(&i) = self.index.get(&key) {
            self.items[i].count += 1;
            return;
        }
        self.index.insert(key, self.items.len());
        self.items.push(Detection {
            side,
            part,
            field: field.to_owned(),
            data_type: t,
            sample: mask::mask(t, value),
            value_hash: hasher.hash(t, value),
            count: 1,
        });
    }
}

impl Inspector {
    /// `max_decoded`: most bytes a body may decode to (bounds decompression bombs).
    #[must_use]
    pub fn new(detector: Detector, hasher: Hasher, max_decoded: usize) -> Self {
        let hint_cache = std::cell::RefCell::new(keys::HintCache::default());
        Self {
            detector,
            hasher,
            hint_cache,
            max_decoded,
            json_scratch: std::cell::RefCell::default(),
        }
    }

    /// Every detection in a request and its response.
    #[must_use]
    pub fn exchange(
        &self,
        request: &Message,
        target: &str,
        response: Option<&Message>,
    ) -> Vec<Detection> {
        let mut c = Collector::default();
        self.url(target, &mut c);
        self.message(Side::Request, request, &mut c);
        if let Some(r) = response {
            self.message(Side::Response, r, &mut c);
        }
        c.items
    }

    fn url(&self, target: &str, c: &mut Collector) {
        let path = super::route::path_of(target);
        let decoded = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
        self.value(
            Side::Request,
            Part::Url,
            "path",
            decoded.as_bytes(),
            &Hints::default(),
            false,
            c,
        );
        if let Some(q) = super::route::query_of(target) {
            self.pairs(Side::Request, Part::Query, "", q.as_bytes(), c);
        }
    }

    fn message(&self, side: Side, m: &Message, c: &mut Collector) {
        self.headers(side, &m.head, c);
        if m.body.data.is_empty() {
            return;
        }
        let decoded = body::decode(
            &m.body.data,
            m.head.header("content-encoding"),
            self.max_decoded,
        );
        let kind = body::kind(m.head.header("content-type"), &decoded);
        self.body(side, &kind, &decoded, "", c);
    }

    fn headers(&self, side: Side, head: &Head, c: &mut Collector) {
        let mut buf = [0u8; 64];
        for h in &head.headers {
            // Most headers are plumbing: only the others are lower-cased.
            if plumbing_header(&h.name) {
                continue;
            }
            let name = super::ascii_lowercase(&h.name, &mut buf);
            let name: &str = &name;
            if credential_header(&h.name, name) {
                continue;
            }
            match name {
                // Session cookies are credentials; other cookie values may carry personal data.
                "cookie" | "set-cookie" => {
                    let attrs = [
                        "path",
                        "domain",
                        "expires",
                        "max-age",
                        "samesite",
                        "secure",
                        "httponly",
                        "priority",
                        "partitioned",
                    ];
                    for pair in h.value.split(';') {
                        let Some((k, v)) = pair.split_once('=') else {
                            continue;
                        };
                        let k = k.trim();
                        if attrs.contains(&k.to_ascii_lowercase().as_str()) {
                            continue;
                        }
                        let field = format!("{name}:{k}");
                        let v = percent_encoding::percent_decode_str(v.trim()).decode_utf8_lossy();
                        self.value(
                            side,
                            Part::Header,
                            &field,
                            v.as_bytes(),
                            &self.hints(k.as_bytes()),
                            true,
                            c,
                        );
                    }
                }
                "referer" | "location" | "content-location" | "origin" => {
                    if let Some(q) = super::route::query_of(&h.value) {
                        self.pairs(side, Part::Header, &format!("{name}?"), q.as_bytes(), c);
                    }
                    let path = super::route::path_of(&h.value);
                    let decoded = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
                    self.value(
                        side,
                        Part::Header,
                        name,
                        decoded.as_bytes(),
                        &Hints::default(),
                        false,
                        c,
                    );
                }
                _ => self.value(
                    side,
                    Part::Header,
                    name,
                    h.value.as_bytes(),
                    &self.hints(name.as_bytes()),
                    false,
                    c,
                ),
            }
        }
    }

    fn body(&self, side: Side, kind: &Kind, data: &[u8], prefix: &str, c: &mut Collector) {
        match kind {
            Kind::Json => self.json(side, data, prefix, c),
            Kind::Form => self.pairs(side, Part::Body, prefix, data, c),
            Kind::Multipart(boundary) => {
                let parts = body::multipart(data, boundary);
                // A plain `name` part is a person's name beside parts about a person.
                let personal = parts
                    .iter()
                    .any(|p| keys::is_personal_key(p.name.as_bytes()));
                for part in parts {
                    if personal
                        && keys::is_plain_name(part.name.as_bytes())
                        && part.filename.is_none()
                    {
                        let v = String::from_utf8_lossy(part.body);
                        if super::detect::validate::person_name(&v) {
                            let field = format!("{prefix}{}", part.name);
                            c.add(
                                side,
                                Part::Body,
                                &field,
                                DataType::PersonName,
                                &v,
                                &self.hasher,
                            );
                        }
                    }
                    let text_part = part.filename.is_none()
                        || part
                            .content_type
                            .as_deref()
                            .is_some_and(|t| t.starts_with("text/") || t.contains("json"));
                    if !text_part || prefix.len() > 256 {
                        continue;
                    }
                    let inner = body::kind(part.content_type.as_deref(), part.body);
                    match inner {
                        Kind::Json | Kind::Multipart(_) => self.body(
                            side,
                            &inner,
                            part.body,
                            &format!("{prefix}{}:", part.name),
                            c,
                        ),
                        Kind::Binary => {}
                        _ => {
                            let field = format!("{prefix}{}", part.name);
                            self.value(
                                side,
                                Part::Body,
                                &field,
                                part.body,
                                &self.hints(part.name.as_bytes()),
                                false,
                                c,
                            );
                        }
                    }
                }
            }
            Kind::Text => self.text(side, data, prefix, c),
            Kind::Binary => {}
        }
    }

    /// `a=1&b=2` (query strings, form bodies): each value decoded, under its name.
    fn pairs(&self, side: Side, part: Part, prefix: &str, data: &[u8], c: &mut Collector) {
        // A plain `name` is a person's name when the other fields are about a person.
        let mut personal = false;
        let mut names = Vec::new();
        for (k, v) in form_urlencoded::parse(data) {
            // Query parameters have no prefix: their name is the field, no copy needed.
            let field: std::borrow::Cow<'_, str> = if prefix.is_empty() {
                std::borrow::Cow::Borrowed(&k)
            } else {
                std::borrow::Cow::Owned(format!("{prefix}{k}"))
            };
            personal |= keys::is_personal_key(k.as_bytes());
            if keys::is_plain_name(k.as_bytes()) {
                names.push((field.clone().into_owned(), v.clone().into_owned()));
            }
            self.value(
                side,
                part,
                &field,
                v.as_bytes(),
                &self.hints(k.as_bytes()),
                false,
                c,
            );
        }
        if personal {
            for (field, v) in names {
                if super::detect::validate::person_name(&v) {
                    c.add(side, part, &field, DataType::PersonName, &v, &self.hasher);
                }
            }
        }
    }

    /// What a top-level name (header, form or query field, multipart part) says, cached.
    fn hints(&self, name: &[u8]) -> Hints {
        self.hint_cache.borrow_mut().get(name, None)
    }

    /// One field's whole value: patterns, then what the field's name says.
    #[expect(
        clippy::too_many_arguments,
        reason = "one value's full context; a struct would only rename it"
    )]
    fn value(
        &self,
        side: Side,
        part: Part,
        field: &str,
        value: &[u8],
        hints: &Hints,
        pii_only: bool,
        c: &mut Collector,
    ) {
        let mut hits = Vec::new();
        self.detector.scan_value(value, hints, &mut hits);
        for h in hits {
            if pii_only && h.data_type.is_secret() {
                continue;
            }
            let text = String::from_utf8_lossy(&value[h.start..h.end]);
            c.add(side, part, field, h.data_type, &text, &self.hasher);
        }
        if has_context(hints) {
            let text = String::from_utf8_lossy(value);
            if let Some(t) = self.detector.context_value(&text, hints)
                && !(pii_only && t.is_secret())
            {
                c.add(side, part, field, t, &text, &self.hasher);
            }
        }
    }

    /// A JSON document: one scan of the raw bytes for candidates, then (only if there are
    /// candidates, or keys that may carry context-only types) one walk to learn each value's
    /// path and key.
    fn json(&self, side: Side, doc: &[u8], prefix: &str, c: &mut Collector) {
        let (mut scratch, mut candidates) = self.json_scratch.take();
        candidates.clear();
        self.detector.candidates(doc, &mut candidates);
        // Every scalar's key is looked at (one cached lookup each): a document-wide keyword
        // search to skip the walk costs more than the walk.
        let mut next = 0;
        let mut cache = self.hint_cache.borrow_mut();
        // Plain `name` values, decided once their object's other keys are known.
        let mut personal_objects = std::collections::HashSet::new();
        let mut plain_names: Vec<(usize, String, json::Scalar)> = Vec::new();
        json::walk_with(doc, &mut scratch, |path, scalar| {
            while next < candidates.len() && candidates[next].start < scalar.span.start {
                next += 1;
            }
            let in_value = next < candidates.len() && candidates[next].end <= scalar.span.end;
            let key = path.key().unwrap_or_default();
            let hints = cache.get(key, path.parent_key());
            if hints.personal {
                personal_objects.insert(path.object());
            }
            let plain_name = hints.plain_name && scalar.string && plain_names.len() < 1024;
            if !in_value && !has_context(&hints) && !plain_name {
                return;
            }
            // The field's path is rendered only for what is found.
            let render = || format!("{prefix}{}", path.render());
            let mut field: Option<String> = None;
            while next < candidates.len() && candidates[next].end <= scalar.span.end {
                let cand = candidates[next];
                if let Some(t) = self.detector.classify(&cand, doc, &hints) {
                    let text = String::from_utf8_lossy(&doc[cand.start..cand.end]);
                    let f = field.get_or_insert_with(render);
                    c.add(side, Part::Body, f, t, &text, &self.hasher);
                }
                next += 1;
            }
            if has_context(&hints) {
                let text = json::scalar_text(doc, scalar);
                if let Some(t) = self.detector.context_value(&text, &hints) {
                    let f = field.get_or_insert_with(render);
                    c.add(side, Part::Body, f, t, &text, &self.hasher);
                }
            } else if plain_name {
                let f = field.unwrap_or_else(render);
                plain_names.push((path.object(), f, scalar.clone()));
            }
        });
        self.json_scratch.replace((scratch, candidates));
        for (object, field, scalar) in plain_names {
            if !personal_objects.contains(&object) {
                continue;
            }
            let text = json::scalar_text(doc, &scalar);
            if super::detect::validate::person_name(&text) {
                c.add(
                    side,
                    Part::Body,
                    &field,
                    DataType::PersonName,
                    &text,
                    &self.hasher,
                );
            }
        }
    }

    /// Plain text: patterns anywhere; a date is a birth date when a birth keyword precedes it.
    fn text(&self, side: Side, data: &[u8], prefix: &str, c: &mut Collector) {
        let field = if prefix.is_empty() {
            "text".to_owned()
        } else {
            prefix.trim_end_matches(':').to_owned()
        };
        self.value(side, Part::Body, &field, data, &Hints::default(), false, c);
        let mut candidates = Vec::new();
        self.detector.candidates(data, &mut candidates);
        for cand in candidates {
            if cand.shape != super::detect::scan::Shape::Number {
                continue;
            }
            let text = String::from_utf8_lossy(&data[cand.start..cand.end]);
            if !super::detect::validate::birth_date(&text) {
                continue;
            }
            let before = String::from_utf8_lossy(&data[cand.start.saturating_sub(32)..cand.start])
                .to_lowercase();
            if ["birth", "dob", "born", "bday"]
                .iter()
                .any(|k| before.contains(k))
            {
                c.add(
                    side,
                    Part::Body,
                    &field,
                    DataType::DateOfBirth,
                    &text,
                    &self.hasher,
                );
            }
        }
    }
}

fn has_context(h: &Hints) -> bool {
    h.birth_date || h.person_name || h.street_address || h.password || h.aws_secret
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plumbing_headers_are_found_in_any_case() {
        for name in PLUMBING_HEADERS {
            assert!(plumbing_header(name), "{name}");
            assert!(plumbing_header(&name.to_ascii_uppercase()), "{name}");
        }
        assert!(plumbing_header("X-Request-Id") && plumbing_header("Sec-Fetch-Mode"));
        assert!(plumbing_header("x-b3-traceid") && plumbing_header("Access-Control-Allow-Origin"));
        for other in [
            "x-customer-email",
            "hos",
            "hostx",
            "",
            "authorization",
            "sec",
            "é",
        ] {
            assert!(!plumbing_header(other), "{other}");
        }
    }
}
