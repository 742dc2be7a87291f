//! What a call means: where it goes, whether that is a third party, how it authenticates,
//! which route it belongs to. Live capture and offline HAR input both end here.

pub mod auth;
pub mod body;
pub mod datamap;
pub mod destination;
pub mod detect;
pub mod finding;
pub mod inspect;
pub mod json;
pub mod mask;
pub mod route;

use std::{borrow::Cow, fmt::Write as _, net::SocketAddr};

use serde::Serialize;

use crate::http::Exchange;
pub use destination::Destinations;
use finding::{Finding, FindingKind, Severity};
use inspect::Inspector;

/// `s` in ASCII lower case, in `buf` when it fits (header names and media types nearly always
/// do): these are compared for every header of every call, and allocating each was a large
/// share of the agent's allocations.
pub(crate) fn ascii_lowercase<'b, const N: usize>(s: &str, buf: &'b mut [u8; N]) -> Cow<'b, str> {
    let Some(out) = buf.get_mut(..s.len()) else {
        return Cow::Owned(s.to_ascii_lowercase());
    };
    out.copy_from_slice(s.as_bytes());
    out.make_ascii_lowercase();
    // Lower-casing ASCII bytes keeps UTF-8 valid; the fallback is never taken.
    match std::str::from_utf8(out) {
        Ok(lower) => Cow::Borrowed(lower),
        Err(_) => Cow::Owned(s.to_ascii_lowercase()),
    }
}

/// Whether the process made the call or served it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CallDirection {
    /// The process called out (it is the client).
    Egress,
    /// The process answered (it is the server).
    Ingress,
}

impl CallDirection {
    /// Name used in events and metrics.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Egress => "egress",
            Self::Ingress => "ingress",
        }
    }
}

/// Where an exchange was seen.
#[derive(Clone, Debug)]
pub struct CallContext<'a> {
    pub pid: Option<u32>,
    pub comm: &'a str,
    pub direction: CallDirection,
    /// TLS library whose plaintext carried the call; `None` for plaintext, or unknown
    /// (offline) when `tls` says so.
    pub tls_lib: Option<&'a str>,
    pub tls: bool,
    pub remote: Option<SocketAddr>,
    /// Wall-clock time of the request's first byte (RFC 3339).
    pub ts: &'a str,
    /// Index of the HAR entry (offline analysis).
    pub entry: Option<usize>,
}

/// One `"kind":"call"` event.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Call {
    pub kind: &'static str,
    pub ts: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entry: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    pub comm: String,
    pub direction: CallDirection,
    pub tls: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_library: Option<String>,
    pub remote_addr: Option<String>,
    pub host: String,
    pub method: String,
    /// Path without the query string (queries carry tokens and personal data).
    pub path: String,
    pub route: String,
    /// `null` when no response came (connection closed, timed out).
    pub status: Option<u16>,
    pub duration_ms: Option<f64>,
    /// Body sizes in bytes (de-chunked, as sent), whatever was kept for analysis.
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub third_party: bool,
    pub auth: &'static str,
    /// Why the call is incomplete, if it is: `no_response`, `response_truncated`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'static str>,
}

/// A call and what was found in it.
#[derive(Clone, Debug, PartialEq)]
pub struct Analysis {
    pub call: Call,
    pub findings: Vec<Finding>,
    /// Personal data and secret types in the call, by side (for the data map).
    pub data_types: Vec<(inspect::Side, detect::DataType)>,
}

/// Turns exchanges into calls and findings. The same code serves live capture and HAR files.
#[derive(Debug)]
pub struct Analyzer {
    destinations: Destinations,
    routes: route::Routes,
    inspector: Inspector,
    /// Buffers of the last analysis handed back (see [`Analyzer::recycle`]).
    spare: Spare,
}

/// The buffers of an analysis no longer needed, filled again by the next one: a call is a
/// dozen strings, and the live agent analyses every call it sees.
#[derive(Debug, Default)]
struct Spare {
    ts: String,
    comm: String,
    tls_library: Option<String>,
    remote_addr: Option<String>,
    host: String,
    method: String,
    path: String,
    route: String,
    findings: Vec<Finding>,
    data_types: Vec<(inspect::Side, detect::DataType)>,
}

/// `src` in the buffer of `buf`.
fn refill(mut buf: String, src: &str) -> String {
    buf.clear();
    buf.push_str(src);
    buf
}

/// Writes `addr` as its `Display` does; IPv4 by hand, as the formatter costs more than the
/// rest of building a call.
fn push_socket_addr(out: &mut String, addr: SocketAddr) {
    fn push_decimal(out: &mut String, mut n: u16) {
        let mut digits = [0u8; 5];
        let mut at = digits.len();
        loop {
            at -= 1;
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        out.extend(digits[at..].iter().map(|&d| char::from(d)));
    }
    match addr {
        SocketAddr::V4(a) => {
            for (i, octet) in a.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                push_decimal(out, u16::from(octet));
            }
            out.push(':');
            push_decimal(out, a.port());
        }
        SocketAddr::V6(_) => {
            let _ = write!(out, "{addr}");
        }
    }
}

/// Static resources: fetched without credentials by design, never API calls.
fn static_asset(path: &str, response: Option<&crate::http::Message>) -> bool {
    const STATIC_EXT: [&str; 21] = [
        "js", "mjs", "css", "png", "jpg", "jpeg", "gif", "svg", "ico", "webp", "avif", "woff",
        "woff2", "ttf", "otf", "eot", "map", "mp4", "webm", "mp3", "wasm",
    ];
    let ext = path.rsplit_once('.').map_or("", |(_, e)| e);
    if !ext.is_empty() && STATIC_EXT.iter().any(|e| e.eq_ignore_ascii_case(ext)) {
        return true;
    }
    let Some(t) = response.and_then(|r| r.head.header("content-type")) else {
        return false;
    };
    let mut buf = [0u8; 128];
    let t = ascii_lowercase(t, &mut buf);
    [
        "image/",
        "font/",
        "text/css",
        "javascript",
        "video/",
        "audio/",
    ]
    .iter()
    .any(|p| t.contains(p))
}

impl Analyzer {
    #[must_use]
    pub fn new(destinations: Destinations, inspector: Inspector, routes: route::Routes) -> Self {
        Self {
            destinations,
            routes,
            inspector,
            spare: Spare::default(),
        }
    }

    /// Hands back an analysis that is no longer needed: the next call analysed reuses its
    /// buffers instead of allocating.
    pub fn recycle(&mut self, a: Analysis) {
        let Analysis {
            call,
            findings,
            data_types,
        } = a;
        self.spare = Spare {
            ts: call.ts,
            comm: call.comm,
            tls_library: call.tls_library,
            remote_addr: call.remote_addr,
            host: call.host,
            method: call.method,
            path: call.path,
            route: call.route,
            findings,
            data_types,
        };
    }

    /// What counts as internal.
    #[must_use]
    pub fn destinations(&self) -> &Destinations {
        &self.destinations
    }

    /// Path segments the route table had no room to learn, since start (see
    /// [`route::Routes::not_learned`]).
    #[must_use]
    pub const fn routes_not_learned(&self) -> u64 {
        self.routes.not_learned()
    }

    /// Replaces what counts as internal (configuration reload).
    pub fn set_destinations(&mut self, destinations: Destinations) {
        self.destinations = destinations;
    }

    /// The call, and the findings, of an exchange.
    pub fn analyze(&mut self, ctx: &CallContext<'_>, x: &Exchange) -> Analysis {
        let head = &x.request.head;
        let target = match &head.start {
            crate::http::StartLine::Request { target, .. } => target.as_str(),
            crate::http::StartLine::Response { .. } => "",
        };
        let spare = std::mem::take(&mut self.spare);
        let mut host = spare.host;
        destination::host_into(head, ctx.remote, &mut host);
        // A served call's destination is this host itself.
        let third_party = ctx.direction == CallDirection::Egress
            && self.destinations.is_third_party(&host, ctx.remote);
        let mut route = spare.route;
        self.routes.template_into(&host, target, &mut route);
        let response = x.response.as_ref();
        let duration_ms = response.map(|r| {
            let ns = r.last_ts.saturating_sub(x.request.first_ts);
            (ns as f64 / 1e6 * 1000.0).round() / 1000.0
        });
        let error = match response {
            None => Some("no_response"),
            Some(r) if !r.complete => Some("response_truncated"),
            Some(_) => None,
        };
        let mut auth = auth::auth_of(head, route::query_of(target));
        if auth == auth::Auth::None && !x.request.body.data.is_empty() {
            auth = auth::body_auth(head.header("content-type"), &x.request.body.data);
        }
        let mut tls_library = spare.tls_library;
        let mut remote_addr = spare.remote_addr;
        let call = Call {
            kind: "call",
            ts: refill(spare.ts, ctx.ts),
            entry: ctx.entry,
            pid: ctx.pid,
            comm: refill(spare.comm, ctx.comm),
            direction: ctx.direction,
            tls: ctx.tls,
            tls_library: ctx
                .tls_lib
                .map(|l| refill(tls_library.take().unwrap_or_default(), l)),
            remote_addr: ctx.remote.map(|r| {
                let mut s = remote_addr.take().unwrap_or_default();
                s.clear();
                push_socket_addr(&mut s, r);
                s
            }),
            host,
            method: refill(spare.method, head.method().unwrap_or_default()),
            path: refill(spare.path, route::path_of(target)),
            route,
            status: response.and_then(|r| r.head.status()),
            duration_ms,
            request_bytes: x.request.body.size,
            response_bytes: response.map_or(0, |r| r.body.size),
            third_party,
            auth: auth.as_str(),
            error,
        };

        let detections = self.inspector.exchange(&x.request, target, response);
        let base = |kind, severity| Finding {
            kind,
            ts: call.ts.clone(),
            entry: call.entry,
            severity,
            data_type: None,
            side: None,
            part: None,
            field: None,
            sample: None,
            value_hash: None,
            count: None,
            host: call.host.clone(),
            method: call.method.clone(),
            path: call.path.clone(),
            route: call.route.clone(),
            status: call.status,
            pid: call.pid,
            comm: call.comm.clone(),
            direction: call.direction,
            third_party,
            tls: call.tls,
        };
        let mut findings = spare.findings;
        findings.clear();
        findings.extend(detections.iter().map(|d| Finding {
            data_type: Some(d.data_type.name()),
            side: Some(d.side),
            part: Some(d.part),
            field: Some(d.field.clone()),
            sample: Some(d.sample.clone()),
            value_hash: d.value_hash.clone(),
            count: Some(d.count),
            ..base(
                finding::kind_of(d.data_type),
                finding::severity(d, third_party, call.tls, call.direction),
            )
        }));
        let api_call =
            || !call.method.eq_ignore_ascii_case("OPTIONS") && !static_asset(&call.path, response);
        if third_party && auth == auth::Auth::None && api_call() {
            findings.push(base(FindingKind::UnauthenticatedCall, Severity::Medium));
        }
        if third_party && !call.tls && auth != auth::Auth::None {
            findings.push(Finding {
                data_type: Some(auth.as_str()),
                ..base(FindingKind::PlaintextCredential, Severity::Critical)
            });
        }
        let mut data_types = spare.data_types;
        data_types.clear();
        data_types.extend(detections.iter().map(|d| (d.side, d.data_type)));
        Analysis {
            call,
            findings,
            data_types,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_addresses_are_written_as_display_writes_them() {
        for text in [
            "0.0.0.0:0",
            "198.51.100.10:443",
            "255.255.255.255:65535",
            "10.0.0.9:80",
            "1.22.133.4:8080",
            "[::1]:443",
            "[2001:db8::1]:8443",
        ] {
            let addr: SocketAddr = text.parse().expect("address");
            let mut out = String::from("stale");
            out.clear();
            push_socket_addr(&mut out, addr);
            assert_eq!(out, addr.to_string());
        }
    }

    fn exchanges() -> Vec<Exchange> {
        let mut s = crate::http::Session::new(crate::http::Limits::default(), true, true);
        let calls: [(&str, &str); 4] = [
            (
                "GET /v1/users/42?api_key=k1 HTTP/1.1\r\nHost: api.partner.test\r\n\r\n",
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 41\r\n\r\n{\"email\":\"lucy.smith@example.com\",\"n\":1}",
            ),
            (
                "POST /v1/orders HTTP/1.1\r\nHost: orders.internal\r\nAuthorization: Bearer x\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"qty\":2.5}",
                "HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
            ),
            (
                "GET /static/app.js HTTP/1.1\r\n\r\n",
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
            ),
            (
                "DELETE /v1/users/43 HTTP/1.1\r\nHost: API.Partner.test:8443\r\nX-Customer-Phone: (415) 555-2671\r\n\r\n",
                "HTTP/1.1 204 No Content\r\n\r\n",
            ),
        ];
        for (i, (req, res)) in calls.iter().enumerate() {
            s.push(
                crate::http::Direction::Requests,
                req.as_bytes(),
                i as u64 * 10,
            );
            s.push(
                crate::http::Direction::Responses,
                res.as_bytes(),
                i as u64 * 10 + 5,
            );
        }
        s.close();
        s.drain()
            .filter_map(|e| match e {
                crate::http::SessionEvent::Exchange(x) => Some(*x),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn recycled_analyses_equal_fresh_ones() {
        let config = crate::config::Config::default();
        let mut fresh = crate::run::analyzer(&config).expect("analyzer");
        let mut recycling = crate::run::analyzer(&config).expect("analyzer");
        let xs = exchanges();
        assert_eq!(xs.len(), 4);
        let remotes: [Option<SocketAddr>; 3] = [
            Some("198.51.100.10:443".parse().expect("addr")),
            None,
            Some("[2001:db8::1]:80".parse().expect("addr")),
        ];
        let mut findings = 0;
        for round in 0..3 {
            for (i, x) in xs.iter().enumerate() {
                let n = round * xs.len() + i;
                let ctx = CallContext {
                    pid: n.is_multiple_of(2).then_some(n as u32),
                    comm: ["curl", "python3", ""][n % 3],
                    direction: if n % 4 == 3 {
                        CallDirection::Ingress
                    } else {
                        CallDirection::Egress
                    },
                    tls_lib: (n % 3 == 1).then_some("openssl"),
                    tls: !n.is_multiple_of(3),
                    remote: remotes[n % 3],
                    ts: &format!("2026-11-23T02:43:{n:02}.000Z"),
                    entry: n.is_multiple_of(5).then_some(n),
                };
                let want = fresh.analyze(&ctx, x);
                let got = recycling.analyze(&ctx, x);
                assert_eq!(got, want, "call {n}");
                findings += got.findings.len();
                recycling.recycle(got);
            }
        }
        // Findings and data types were reused too.
        assert!(findings > 0);
    }
}
