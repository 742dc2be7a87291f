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

use std::net::SocketAddr;

use serde::Serialize;

use crate::http::Exchange;
pub use destination::Destinations;
use finding::{Finding, FindingKind, Severity};
use inspect::Inspector;

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
    pub ts: String,
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
}

/// Static resources: fetched without credentials by design, never API calls.
fn static_asset(path: &str, response: Option<&crate::http::Message>) -> bool {
    let ext = path
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    let static_ext = [
        "js", "mjs", "css", "png", "jpg", "jpeg", "gif", "svg", "ico", "webp", "avif", "woff",
        "woff2", "ttf", "otf", "eot", "map", "mp4", "webm", "mp3", "wasm",
    ];
    let static_type = response
        .and_then(|r| r.head.header("content-type"))
        .map(|t| t.to_ascii_lowercase())
        .is_some_and(|t| {
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
        });
    static_ext.contains(&ext.as_str()) || static_type
}

impl Analyzer {
    #[must_use]
    pub fn new(destinations: Destinations, inspector: Inspector, routes: route::Routes) -> Self {
        Self {
            destinations,
            routes,
            inspector,
        }
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
        let host = destination::host_of(head, ctx.remote);
        // A served call's destination is this host itself.
        let third_party = ctx.direction == CallDirection::Egress
            && self.destinations.is_third_party(&host, ctx.remote);
        let route = self.routes.template(&host, target);
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
        let call = Call {
            kind: "call",
            ts: ctx.ts.clone(),
            entry: ctx.entry,
            pid: ctx.pid,
            comm: ctx.comm.to_owned(),
            direction: ctx.direction,
            tls: ctx.tls,
            tls_library: ctx.tls_lib.map(str::to_owned),
            remote_addr: ctx.remote.map(|r| r.to_string()),
            host,
            method: head.method().unwrap_or_default().to_owned(),
            path: route::path_of(target).to_owned(),
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
        let mut findings: Vec<Finding> = detections
            .iter()
            .map(|d| Finding {
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
            })
            .collect();
        let api_call =
            !call.method.eq_ignore_ascii_case("OPTIONS") && !static_asset(&call.path, response);
        if third_party && auth == auth::Auth::None && api_call {
            findings.push(base(FindingKind::UnauthenticatedCall, Severity::Medium));
        }
        if third_party && !call.tls && auth != auth::Auth::None {
            findings.push(Finding {
                data_type: Some(auth.as_str()),
                ..base(FindingKind::PlaintextCredential, Severity::Critical)
            });
        }
        let data_types = detections.iter().map(|d| (d.side, d.data_type)).collect();
        Analysis {
            call,
            findings,
            data_types,
        }
    }
}
