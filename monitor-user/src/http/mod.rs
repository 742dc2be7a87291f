//! HTTP/1.x reassembly: byte streams in, request/response exchanges out. Pure: no aya, no I/O,
//! so live capture and offline input share it and every case is testable without root.

mod body;
mod parser;
mod session;
mod spare;

pub use parser::{Answering, Direction, Limits, ParseError, StreamParser};
pub use session::{Exchange, Session, SessionEvent};
pub use spare::recycle;

/// One header line, value decoded leniently (invalid UTF-8 becomes U+FFFD).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: String,
}

/// The first line of a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartLine {
    Request { method: String, target: String },
    Response { status: u16, reason: String },
}

/// Start line, version and headers of a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    pub start: StartLine,
    /// Minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    pub headers: Vec<Header>,
}

impl Head {
    /// The first value of header `name` (case-insensitive).
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    }

    /// Request method, if this is a request.
    #[must_use]
    pub fn method(&self) -> Option<&str> {
        match &self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    /// Response status, if this is a response.
    #[must_use]
    pub fn status(&self) -> Option<u16> {
        match &self.start {
            StartLine::Response { status, .. } => Some(*status),
            StartLine::Request { .. } => None,
        }
    }
}

/// A message body: the first bytes (up to a limit) and the real size.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Body {
    /// Kept bytes, after de-chunking, before any content decoding.
    pub data: Vec<u8>,
    /// Real body size in bytes (what the application sent, de-chunked).
    pub size: u64,
    /// Some bytes are missing from `data`: beyond the limit, or never captured.
    pub truncated: bool,
    /// Some bytes were left out of `data` to shed load (see `crate::shed`); also `truncated`.
    pub shed: bool,
}

impl Body {
    pub(crate) fn append(&mut self, bytes: &[u8], limit: usize) {
        self.size += bytes.len() as u64;
        let room = limit.saturating_sub(self.data.len());
        if bytes.len() > room {
            self.truncated = true;
        }
        self.data.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    pub(crate) fn skip(&mut self, n: u64) {
        self.size += n;
        self.truncated = true;
    }
}

/// A whole (or as whole as it got) message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub head: Head,
    pub body: Body,
    pub trailers: Vec<Header>,
    /// Bytes of the start line and headers.
    pub head_bytes: u64,
    /// Timestamps (ns, the capture's clock) of the first and last byte.
    pub first_ts: u64,
    pub last_ts: u64,
    /// False when the message ended early: connection closed, or bytes lost mid-message.
    pub complete: bool,
}

#[cfg(test)]
mod tests;
