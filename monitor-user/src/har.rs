//! HAR 1.2 input (what browsers and proxies export): each entry becomes the same `Exchange`
//! live capture produces, so offline analysis shares everything after `http`.
//!
//! Entries are read one at a time from a memory-mapped file: memory stays bounded by the
//! largest entry, not the file.

use std::{borrow::Cow, fmt, fs::File, net::SocketAddr, path::Path};

use base64::Engine as _;
use serde::{
    Deserialize,
    de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor},
};

use crate::http::{Body, Exchange, Head, Header, Message, StartLine};

/// Why a HAR file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HarError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a valid HAR file: {source}")]
    Json {
        path: String,
        source: serde_json::Error,
    },
    #[error("{path} is not a HAR file: it has no log.entries array")]
    NoEntries { path: String },
    #[error("{path}: entry {entry}: {message}")]
    Entry {
        path: String,
        entry: usize,
        message: String,
    },
}

#[derive(Deserialize)]
struct NameValue<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(borrow, default)]
    value: Cow<'a, str>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Param<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(borrow, default)]
    value: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PostData<'a> {
    #[serde(borrow, default)]
    mime_type: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    params: Option<Vec<Param<'a>>>,
    #[serde(borrow, default)]
    encoding: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Request<'a> {
    #[serde(borrow)]
    method: Cow<'a, str>,
    #[serde(borrow)]
    url: Cow<'a, str>,
    #[serde(borrow, default)]
    http_version: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    headers: Vec<NameValue<'a>>,
    #[serde(borrow, default)]
    post_data: Option<PostData<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Content<'a> {
    #[serde(default)]
    size: Option<i64>,
    #[serde(borrow, default)]
    mime_type: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    encoding: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Response<'a> {
    #[serde(default)]
    status: i64,
    #[serde(borrow, default)]
    status_text: Cow<'a, str>,
    #[serde(borrow, default)]
    http_version: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    headers: Vec<NameValue<'a>>,
    #[serde(borrow, default)]
    content: Option<Content<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Entry<'a> {
    #[serde(borrow, default)]
    started_date_time: Option<Cow<'a, str>>,
    #[serde(default)]
    time: Option<f64>,
    #[serde(borrow)]
    request: Request<'a>,
    #[serde(borrow, default)]
    response: Option<Response<'a>>,
    #[serde(borrow, default, rename = "serverIPAddress")]
    server_ip_address: Option<Cow<'a, str>>,
}

/// One HAR entry, as an exchange plus what HAR knows of its connection.
#[derive(Debug)]
pub struct HarCall {
    pub exchange: Exchange,
    /// `startedDateTime` as written in the file.
    pub started: String,
    pub tls: bool,
    pub remote: Option<SocketAddr>,
}

/// Reads `path` and calls `each(index, entry)` for every entry that is an HTTP(S) call
/// (`data:` URLs and the like are skipped). Returns the number of entries in the file.
pub fn read(path: &Path, mut each: impl FnMut(usize, HarCall)) -> Result<usize, HarError> {
    let shown = path.display().to_string();
    let file = File::open(path).map_err(|source| HarError::Read {
        path: shown.clone(),
        source,
    })?;
    // SAFETY: read-only mapping, dropped before return; a file truncated meanwhile makes the
    // JSON parser fail with an error, not memory unsafety on Linux (SIGBUS aside).
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|source| HarError::Read {
        path: shown.clone(),
        source,
    })?;
    let mut de = serde_json::Deserializer::from_slice(&map);
    let mut state = ReadState {
        each: &mut each,
        entries: 0,
        error: None,
        saw_entries: false,
    };
    let result = TopSeed { state: &mut state }
        .deserialize(&mut de)
        .and_then(|()| de.end());
    if let Some((entry, message)) = state.error.take() {
        return Err(HarError::Entry {
            path: shown,
            entry,
            message,
        });
    }
    result.map_err(|source| HarError::Json {
        path: shown.clone(),
        source,
    })?;
    if !state.saw_entries {
        return Err(HarError::NoEntries { path: shown });
    }
    Ok(state.entries)
}

struct ReadState<'f> {
    each: &'f mut dyn FnMut(usize, HarCall),
    entries: usize,
    error: Option<(usize, String)>,
    saw_entries: bool,
}

struct TopSeed<'s, 'f> {
    state: &'s mut ReadState<'f>,
}

impl<'de> DeserializeSeed<'de> for TopSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for TopSeed<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a HAR object with a \"log\" member")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            if key == "log" {
                map.next_value_seed(LogSeed {
                    state: &mut *self.state,
                })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

struct LogSeed<'s, 'f> {
    state: &'s mut ReadState<'f>,
}

impl<'de> DeserializeSeed<'de> for LogSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for LogSeed<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a HAR log object with an \"entries\" array")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            if key == "entries" {
                self.state.saw_entries = true;
                map.next_value_seed(EntriesSeed {
                    state: &mut *self.state,
                })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

struct EntriesSeed<'s, 'f> {
    state: &'s mut ReadState<'f>,
}

impl<'de> DeserializeSeed<'de> for EntriesSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for EntriesSeed<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of HAR entries")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        loop {
            let index = self.state.entries;
            let entry: Option<Entry<'_>> = seq
                .next_element()
                .map_err(|e| de::Error::custom(format!("entry {index}: {e}")))?;
            let Some(entry) = entry else { break };
            self.state.entries += 1;
            match convert(entry) {
                Ok(Some(call)) => (self.state.each)(index, call),
                Ok(None) => {}
                Err(message) => {
                    self.state.error = Some((index, message.clone()));
                    return Err(de::Error::custom(message));
                }
            }
        }
        Ok(())
    }
}

fn decode_text(text: &str, encoding: Option<&str>) -> Result<Vec<u8>, String> {
    if encoding.is_some_and(|e| e.eq_ignore_ascii_case("base64")) {
        let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        return base64::engine::general_purpose::STANDARD
            .decode(compact)
            .map_err(|e| format!("body marked base64 does not decode: {e}"));
    }
    Ok(text.as_bytes().to_vec())
}

/// `https://user@host:8443/p?q#f` -> (https, host:8443, /p?q).
fn split_url(url: &str) -> Option<(&str, &str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = rest[..end].rsplit('@').next().unwrap_or_default();
    let mut target = &rest[end..];
    if let Some(i) = target.find('#') {
        target = &target[..i];
    }
    let target = if target.is_empty() { "/" } else { target };
    Some((scheme, authority, target))
}

fn minor_version(v: Option<&str>) -> u8 {
    u8::from(!v.is_some_and(|v| v.eq_ignore_ascii_case("http/1.0")))
}

fn headers(list: Vec<NameValue<'_>>) -> Vec<Header> {
    list.into_iter()
        // HTTP/2 pseudo-headers carry what the start line already says.
        .filter(|h| !h.name.starts_with(':'))
        .map(|h| Header {
            name: h.name.into_owned(),
            value: h.value.into_owned(),
        })
        .collect()
}

fn body(data: Vec<u8>, size: Option<i64>) -> Body {
    let real = size
        .and_then(|s| u64::try_from(s).ok())
        .filter(|s| *s > 0)
        .unwrap_or(data.len() as u64);
    Body {
        truncated: (data.len() as u64) < real,
        shed: false,
        size: real.max(data.len() as u64),
        data,
    }
}

fn convert(e: Entry<'_>) -> Result<Option<HarCall>, String> {
    let Some((scheme, authority, target)) = split_url(&e.request.url) else {
        return Ok(None);
    };
    let tls = match scheme.to_ascii_lowercase().as_str() {
        "https" | "wss" => true,
        "http" | "ws" => false,
        _ => return Ok(None),
    };
    let mut req_headers = headers(e.request.headers);
    if !req_headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("host"))
    {
        req_headers.insert(
            0,
            Header {
                name: "Host".into(),
                value: authority.to_owned(),
            },
        );
    }
    let mut req_body = Vec::new();
    if let Some(post) = e.request.post_data {
        if let Some(text) = post.text.as_deref().filter(|t| !t.is_empty()) {
            req_body = decode_text(text, post.encoding.as_deref())?;
        } else if let Some(params) = &post.params {
            let mut form = form_urlencoded::Serializer::new(String::new());
            for p in params {
                form.append_pair(&p.name, p.value.as_deref().unwrap_or_default());
            }
            req_body = form.finish().into_bytes();
        }
        if let Some(mime) = post.mime_type.filter(|m| !m.is_empty())
            && !req_headers
                .iter()
                .any(|h| h.name.eq_ignore_ascii_case("content-type"))
        {
            req_headers.push(Header {
                name: "Content-Type".into(),
                value: mime.into_owned(),
            });
        }
    }
    let duration_ns = e
        .time
        .filter(|t| t.is_finite() && *t >= 0.0)
        .map_or(0, |t| (t * 1e6) as u64);
    let request = Message {
        head: Head {
            start: StartLine::Request {
                method: e.request.method.into_owned(),
                target: target.to_owned(),
            },
            version: minor_version(e.request.http_version.as_deref()),
            headers: req_headers,
        },
        body: body(req_body, None),
        trailers: Vec::new(),
        head_bytes: 0,
        first_ts: 0,
        last_ts: 0,
        complete: true,
    };
    let response = match e.response {
        Some(r) if r.status > 0 => {
            let mut res_headers = headers(r.headers);
            let (data, size) = match r.content {
                Some(c) => {
                    if let Some(mime) = c.mime_type.filter(|m| !m.is_empty())
                        && !res_headers
                            .iter()
                            .any(|h| h.name.eq_ignore_ascii_case("content-type"))
                    {
                        res_headers.push(Header {
                            name: "Content-Type".into(),
                            value: mime.into_owned(),
                        });
                    }
                    let data = match c.text.as_deref() {
                        Some(t) => decode_text(t, c.encoding.as_deref())?,
                        None => Vec::new(),
                    };
                    (data, c.size)
                }
                None => (Vec::new(), None),
            };
            Some(Message {
                head: Head {
                    start: StartLine::Response {
                        status: u16::try_from(r.status).map_err(|_too_big| {
                            format!("status {} is not an HTTP status", r.status)
                        })?,
                        reason: r.status_text.into_owned(),
                    },
                    version: minor_version(r.http_version.as_deref()),
                    headers: res_headers,
                },
                body: body(data, size),
                trailers: Vec::new(),
                head_bytes: 0,
                first_ts: duration_ns,
                last_ts: duration_ns,
                complete: true,
            })
        }
        _ => None,
    };
    let port = authority
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .unwrap_or(if tls { 443 } else { 80 });
    let remote = e
        .server_ip_address
        .as_deref()
        .map(|ip| ip.trim_start_matches('[').trim_end_matches(']'))
        .and_then(|ip| ip.parse().ok())
        .map(|ip| SocketAddr::new(ip, port));
    Ok(Some(HarCall {
        exchange: Exchange { request, response },
        started: e.started_date_time.map(Cow::into_owned).unwrap_or_default(),
        tls,
        remote,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_str(text: &str) -> Result<Vec<(usize, HarCall)>, HarError> {
        let dir =
            std::env::temp_dir().join(format!("apimon-har-{}-{}", std::process::id(), text.len()));
        std::fs::write(&dir, text).expect("write");
        let mut out = Vec::new();
        let r = read(&dir, |i, c| out.push((i, c)));
        let _ = std::fs::remove_file(&dir);
        r.map(|_| out)
    }

    #[test]
    fn entries_become_exchanges() {
        let har = r#"{"log":{"version":"1.2","creator":{"name":"x"},"entries":[
          {"startedDateTime":"2024-05-01T10:00:00.000Z","time":12.5,"serverIPAddress":"203.0.113.5",
           "request":{"method":"POST","url":"https://api.example.com/v1/users?x=1#frag","httpVersion":"HTTP/2",
             "headers":[{"name":":authority","value":"api.example.com"},{"name":"content-type","value":"application/json"}],
             "postData":{"mimeType":"application/json","text":"{\"email\":\"a@b.co\"}"}},
           "response":{"status":201,"statusText":"Created","headers":[],"content":{"size":2,"mimeType":"application/json","text":"e30=","encoding":"base64"}}},
          {"request":{"method":"GET","url":"data:image/png;base64,AAAA"},"response":{"status":200}},
          {"request":{"method":"GET","url":"http://x.test/form"},"response":{"status":0},
           "startedDateTime":"2024-05-01T10:00:01Z"}
        ]}}"#;
        let calls = read_str(har).expect("valid HAR");
        assert_eq!(calls.len(), 2);
        let (i, c) = &calls[0];
        assert_eq!(*i, 0);
        assert!(c.tls);
        assert_eq!(c.remote, Some("203.0.113.5:443".parse().expect("addr")));
        assert_eq!(
            c.exchange.request.head.header("host"),
            Some("api.example.com")
        );
        assert_eq!(c.exchange.request.body.data, br#"{"email":"a@b.co"}"#);
        let res = c.exchange.response.as_ref().expect("response");
        assert_eq!(res.body.data, b"{}");
        assert_eq!(res.last_ts, 12_500_000);
        assert_eq!(calls[1].0, 2);
        assert!(calls[1].1.exchange.response.is_none());
    }

    #[test]
    fn malformed_files_say_why() {
        let e = read_str("{\"log\": {\"entries\": [ {\"request\": 5} ]}}").expect_err("bad entry");
        assert!(e.to_string().contains("entry 0"), "{e}");
        let e = read_str("{\"log\": {}}").expect_err("no entries");
        assert!(e.to_string().contains("no log.entries"), "{e}");
        let e = read_str("{\"log\": {\"entries\": [").expect_err("truncated");
        assert!(e.to_string().contains("line 1"), "{e}");
        let e = read_str("not json").expect_err("garbage");
        assert!(e.to_string().contains("not a valid HAR"), "{e}");
        let e = read_str(r#"{"log":{"entries":[{"request":{"method":"GET","url":"http://a/"},"response":{"status":200,"content":{"text":"@@","encoding":"base64"}}}]}}"#).expect_err("bad base64");
        assert!(e.to_string().contains("base64"), "{e}");
    }
}
