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
    "host",
    "user-agent",
    "content-length",
    "content-type",
    "content-encoding",
    "transfer-encoding",
    "accept",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "connection",
    "keep-alive",
    "date",
    "expires",
    "last-modified",
    "etag",
    "if-none-match",
    "if-modified-since",
    "if-match",
    "cache-control",
    "pragma",
    "vary",
    "server",
    "via",
    "age",
    "upgrade",
    "te",
    "trailer",
    "traceparent",
    "tracestate",
    "content-security-policy",
    "strict-transport-security",
    "x-frame-options",
    "x-content-type-options",
    "x-xss-protection",
    "referrer-policy",
    "alt-svc",
    "nel",
    "report-to",
    "expect",
    "range",
    "content-range",
    "content-disposition",
    "x-powered-by",
    "x-amzn-trace-id",
    "x-request-id",
    "x-correlation-id",
    "priority",
    "dnt",
];

/// Where credentials belong: their values are authentication, reported as `auth`, not findings.
fn credential_header(name: &str) -> bool {
    name == "authorization" || name == "proxy-authorization" || super::auth::is_key_header(name)
}

/// Inspects exchanges. Built once; cheap to share.
#[derive(Debug)]
pub struct Inspector {
    detector: Detector,
    hasher: Hasher,
    hint_cache: std::cell::RefCell<keys::HintCache>,
    max_decoded: usize,
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
        for h in &head.headers {
            let name = h.name.to_ascii_lowercase();
            if PLUMBING_HEADERS.contains(&name.as_str())
                || name.starts_with("sec-")
                || name.starts_with("access-control-")
                || name.starts_with("x-b3-")
            {
                continue;
            }
            if credential_header(&name) {
                continue;
            }
            match name.as_str() {
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
                        &name,
                        decoded.as_bytes(),
                        &Hints::default(),
                        false,
                        c,
                    );
                }
                _ => self.value(
                    side,
                    Part::Header,
                    &name,
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
            let field = format!("{prefix}{k}");
            personal |= keys::is_personal_key(k.as_bytes());
            if keys::is_plain_name(k.as_bytes()) {
                names.push((field.clone(), v.clone().into_owned()));
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
        let mut candidates: Vec<Candidate> = Vec::new();
        self.detector.candidates(doc, &mut candidates);
        // Every scalar's key is looked at (one cached lookup each): a document-wide keyword
        // search to skip the walk costs more than the walk.
        let mut next = 0;
        let mut cache = self.hint_cache.borrow_mut();
        // Plain `name` values, decided once their object's other keys are known.
        let mut personal_objects = std::collections::HashSet::new();
        let mut plain_names: Vec<(usize, String, json::Scalar)> = Vec::new();
        json::walk(doc, |path, scalar| {
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
