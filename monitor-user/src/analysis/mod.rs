//! What a call means: where it goes, whether that is a third party, how it authenticates,
//! which route it belongs to. Live capture and offline HAR input both end here.

pub mod auth;
pub mod destination;
pub mod route;

use std::{net::SocketAddr, time::SystemTime};

use serde::Serialize;

use crate::http::Exchange;
pub use destination::Destinations;

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
    /// Wall-clock time of the request's first byte.
    pub started: SystemTime,
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

/// Turns exchanges into calls.
#[derive(Clone, Debug, Default)]
pub struct Analyzer {
    destinations: Destinations,
}

impl Analyzer {
    #[must_use]
    pub fn new(destinations: Destinations) -> Self {
        Self { destinations }
    }

    /// The call event for an exchange.
    #[must_use]
    pub fn call(&self, ctx: &CallContext<'_>, x: &Exchange) -> Call {
        let head = &x.request.head;
        let target = match &head.start {
            crate::http::StartLine::Request { target, .. } => target.as_str(),
            crate::http::StartLine::Response { .. } => "",
        };
        let host = destination::host_of(head, ctx.remote);
        let third_party = self.destinations.is_third_party(&host, ctx.remote);
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
        Call {
            kind: "call",
            ts: humantime::format_rfc3339_millis(ctx.started).to_string(),
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
            route: route::template(target),
            status: response.and_then(|r| r.head.status()),
            duration_ms,
            request_bytes: x.request.body.size,
            response_bytes: response.map_or(0, |r| r.body.size),
            third_party,
            auth: auth::auth_of(head, route::query_of(target)).as_str(),
            error,
        }
    }
}
