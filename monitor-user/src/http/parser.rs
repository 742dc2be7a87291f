//! One direction of an HTTP/1.x connection: bytes in, messages out.

use std::mem::MaybeUninit;

use super::{
    Body, Head, Header, Message, StartLine,
    body::{BodyDecoder, Framing},
    spare,
};

/// Bounds that keep memory fixed whatever the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest start line plus headers accepted.
    pub max_head: usize,
    /// Body bytes kept per message (the rest is counted, not kept).
    pub body: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_head: 64 * 1024,
            body: 64 * 1024,
        }
    }
}

/// Why bytes could not be parsed. The parser recovers from all of them by looking for the
/// next message start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("start line and headers exceed the limit")]
    HeadTooLarge,
    #[error("malformed start line or header")]
    BadHead,
    #[error("malformed chunked body")]
    BadChunk,
    #[error("invalid Content-Length or Transfer-Encoding")]
    BadLength,
    #[error("bytes were lost where the message framing was")]
    Gap,
}

impl ParseError {
    /// Every reason, for metrics that start at zero.
    pub const ALL: [Self; 5] = [
        Self::HeadTooLarge,
        Self::BadHead,
        Self::BadChunk,
        Self::BadLength,
        Self::Gap,
    ];

    /// Short label for metrics.
    #[must_use]
    pub const fn label(self) -> &'static str {
        match self {
            Self::HeadTooLarge => "head_too_large",
            Self::BadHead => "bad_head",
            Self::BadChunk => "bad_chunk",
            Self::BadLength => "bad_length",
            Self::Gap => "gap",
        }
    }
}

/// Which kind of messages a stream carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Requests,
    Responses,
}

/// What a response parser must know of the request it answers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Answering {
    /// The request was HEAD: the response has no body whatever its headers say.
    pub head: bool,
    /// The request was CONNECT: a 2xx response turns the connection into a tunnel.
    pub connect: bool,
}

/// Receives what a [`StreamParser`] finds.
pub(crate) trait Sink {
    /// A request's head was parsed (its body may follow).
    fn request_started(&mut self, head: &Head, ts: u64);
    /// What the request that the next response answers was.
    fn answering(&mut self) -> Answering;
    /// A message ended (`complete` false if it was cut short).
    fn message(&mut self, direction: Direction, message: Message);
    /// Bytes were not parseable; the parser looks for the next message start.
    fn error(&mut self, direction: Direction, error: ParseError);
}

#[derive(Debug)]
enum State {
    /// Looking for a message start (after an error, a gap, or when joining mid-stream).
    Resync,
    /// Collecting a start line and headers in `buf`.
    Head,
    /// Inside a body.
    Body(Box<Partial>),
}

/// A message whose body is being read; its box is reused (see [`spare::partial`]).
#[derive(Debug)]
pub(super) struct Partial {
    head: Head,
    head_bytes: u64,
    body: Body,
    trailers: Vec<Header>,
    decoder: BodyDecoder,
    first_ts: u64,
    last_ts: u64,
}

/// Incremental parser for one direction of a connection.
#[derive(Debug)]
pub struct StreamParser {
    direction: Direction,
    limits: Limits,
    /// Bodies are counted, not kept, to shed load: as if `limits.body` were 0.
    shed_bodies: bool,
    state: State,
    /// Bytes not yet parsed: a head being collected, or the tail kept while resyncing.
    buf: Vec<u8>,
    /// Where the unparsed bytes of `buf` start.
    start: usize,
    /// Where the search for the end of the head resumes.
    searched: usize,
    /// Timestamp of the first unparsed byte.
    buf_ts: u64,
    /// Bytes thrown away while resyncing.
    skipped: u64,
    /// While resyncing: whether the first unparsed byte starts a line.
    line_start: bool,
}

const HEADERS_MAX: usize = 256;

impl StreamParser {
    /// A parser for a stream seen from its first byte (`fresh`) or joined mid-stream.
    #[must_use]
    pub fn new(direction: Direction, limits: Limits, fresh: bool) -> Self {
        Self {
            direction,
            limits,
            shed_bodies: false,
            state: if fresh { State::Head } else { State::Resync },
            buf: Vec::new(),
            start: 0,
            searched: 0,
            buf_ts: 0,
            skipped: 0,
            // Joining mid-stream: the kernel forwards a record only if it starts a message.
            line_start: true,
        }
    }

    /// Keeps no body bytes from now on (sizes are still counted), or keeps them again. A body
    /// that loses bytes this way is marked [`Body::shed`].
    pub(crate) fn set_shed_bodies(&mut self, shed: bool) {
        self.shed_bodies = shed;
    }

    /// The stream's first bytes were missed: look for a message start before parsing.
    pub(crate) fn join_mid_stream(&mut self) {
        if matches!(self.state, State::Head) && self.buf.is_empty() {
            self.state = State::Resync;
            self.line_start = true;
        }
    }

    /// Bytes discarded so far while looking for a message start.
    #[must_use]
    pub fn skipped_bytes(&self) -> u64 {
        self.skipped
    }

    /// Whether a message is in progress (head collected, body not finished).
    #[must_use]
    pub fn in_message(&self) -> bool {
        matches!(self.state, State::Body(_))
    }

    /// The head of the message in progress, if its body is being read.
    pub(crate) fn partial_head(&self) -> Option<&Head> {
        match &self.state {
            State::Body(p) => Some(&p.head),
            _ => None,
        }
    }

    /// Bytes held in memory by this parser.
    #[must_use]
    pub fn buffered(&self) -> usize {
        let body = match &self.state {
            State::Body(p) => p.body.data.capacity(),
            _ => 0,
        };
        self.buf.capacity() + body
    }

    /// Parses `data`, which arrived at `ts`.
    pub(crate) fn push(&mut self, mut data: &[u8], ts: u64, sink: &mut impl Sink) {
        // Inside a body with nothing buffered: decode straight from the input, no copy.
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
            self.searched = 0;
            while !data.is_empty() {
                let State::Body(partial) = &mut self.state else {
                    break;
                };
                match feed(partial, data, self.limits.body, self.shed_bodies) {
                    Ok(fed) => {
                        partial.last_ts = ts;
                        data = &data[fed.consumed..];
                        if fed.done {
                            self.finish(true, sink);
                        }
                    }
                    Err(e) => {
                        self.fail(e, sink);
                        break;
                    }
                }
            }
            if data.is_empty() {
                return;
            }
        }
        if self.start == self.buf.len() {
            self.buf_ts = ts;
        }
        self.buf.extend_from_slice(data);
        self.process(ts, sink);
    }

    /// Accounts for `n` bytes lost before the next [`push`](Self::push).
    pub(crate) fn gap(&mut self, n: u64, ts: u64, sink: &mut impl Sink) {
        if n == 0 {
            return;
        }
        if self.start == self.buf.len()
            && let State::Body(partial) = &mut self.state
            && partial.decoder.gap(n, &mut partial.body).is_ok()
        {
            partial.last_ts = ts;
            if partial.decoder.is_done() {
                self.finish(true, sink);
            }
            return;
        }
        match self.state {
            State::Resync => {}
            State::Head if self.start == self.buf.len() => {}
            _ => self.fail(ParseError::Gap, sink),
        }
        self.skip_buffer();
        self.state = State::Resync;
        // Records usually begin at message boundaries: the next one may start a message.
        self.line_start = true;
    }

    /// The connection ended: a body delimited by the close completes, anything else in
    /// progress is reported cut short.
    pub(crate) fn close(&mut self, sink: &mut impl Sink) {
        if let State::Body(partial) = &self.state {
            let complete = partial.decoder.until_close();
            self.finish(complete, sink);
        }
        self.skip_buffer();
        self.state = State::Resync;
    }

    fn skip_buffer(&mut self) {
        self.skipped += (self.buf.len() - self.start) as u64;
        self.buf.clear();
        self.start = 0;
        self.searched = 0;
    }

    fn process(&mut self, ts: u64, sink: &mut impl Sink) {
        loop {
            match &mut self.state {
                State::Resync => {
                    if !self.resync() {
                        break;
                    }
                }
                State::Head => {
                    if !self.parse_head(ts, sink) {
                        break;
                    }
                }
                State::Body(partial) => {
                    let input = &self.buf[self.start..];
                    if input.is_empty() {
                        break;
                    }
                    match feed(partial, input, self.limits.body, self.shed_bodies) {
                        Ok(fed) => {
                            partial.last_ts = ts;
                            self.start += fed.consumed;
                            if fed.done {
                                self.finish(true, sink);
                            }
                        }
                        Err(e) => self.fail(e, sink),
                    }
                }
            }
        }
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
            self.searched = 0;
        } else if self.start > 0 && self.start * 2 >= self.buf.len() {
            self.buf.drain(..self.start);
            self.searched = self.searched.saturating_sub(self.start);
            self.start = 0;
        }
    }

    /// Finds the next line that starts a message of this direction; false if more bytes are
    /// needed. Only line starts are candidates: the buffer's first byte if it begins a line,
    /// and every byte after a newline.
    fn resync(&mut self) -> bool {
        let input = &self.buf[self.start..];
        let mut candidate = if self.line_start {
            Some(0)
        } else {
            memchr::memchr(b'\n', input).map(|i| i + 1)
        };
        while let Some(at) = candidate {
            let rest = &input[at..];
            if rest.len() < common::classify::PEEK_LEN {
                // Too short to tell yet: keep this line start for the next push.
                self.skipped += at as u64;
                self.start += at;
                self.line_start = true;
                return false;
            }
            if self.starts_message(rest) {
                self.skipped += at as u64;
                self.start += at;
                self.searched = self.start;
                self.state = State::Head;
                return true;
            }
            candidate = memchr::memchr(b'\n', rest).map(|i| at + i + 1);
        }
        // No line starts here: the next push begins one only if this ended with a newline.
        if let Some(&last) = input.last() {
            self.line_start = last == b'\n';
        }
        self.skipped += input.len() as u64;
        self.start = self.buf.len();
        false
    }

    fn starts_message(&self, bytes: &[u8]) -> bool {
        let mut peek = [0u8; common::classify::PEEK_LEN];
        peek.copy_from_slice(&bytes[..common::classify::PEEK_LEN]);
        common::classify::classify(&peek, bytes.len()) == common::proto::HTTP
            && (bytes.starts_with(b"HTTP/") == (self.direction == Direction::Responses))
    }

    /// Tries to parse a head from the buffer; false if more bytes are needed.
    fn parse_head(&mut self, ts: u64, sink: &mut impl Sink) -> bool {
        // Empty lines between messages are allowed (RFC 9112 section 2.2).
        while self.start < self.buf.len() && matches!(self.buf[self.start], b'\r' | b'\n') {
            self.start += 1;
        }
        let input = &self.buf[self.start..];
        if input.is_empty() {
            return false;
        }
        let from = self.searched.saturating_sub(self.start).saturating_sub(3);
        let Some(end) = find_head_end(input, from) else {
            self.searched = self.buf.len();
            if input.len() > self.limits.max_head {
                self.fail(ParseError::HeadTooLarge, sink);
                self.start += 1;
                self.state = State::Resync;
                return true;
            }
            // Bytes that cannot start a message are not worth waiting on.
            if input.len() >= common::classify::PEEK_LEN && !self.starts_message(input) {
                self.fail(ParseError::BadHead, sink);
                self.state = State::Resync;
                return true;
            }
            return false;
        };
        if end > self.limits.max_head {
            self.fail(ParseError::HeadTooLarge, sink);
            self.start += 1;
            self.state = State::Resync;
            return true;
        }
        let Message {
            head,
            body,
            trailers,
            ..
        } = match parse_head(&input[..end], self.direction) {
            Ok(m) => m,
            Err(e) => {
                self.fail(e, sink);
                self.start += 1;
                self.state = State::Resync;
                return true;
            }
        };
        let first_ts = self.buf_ts;
        let framing = match self.direction {
            Direction::Requests => request_framing(&head),
            Direction::Responses => response_framing(&head, sink.answering()),
        };
        let framing = match framing {
            Ok(f) => f,
            Err(e) => {
                self.fail(e, sink);
                self.start += 1;
                self.state = State::Resync;
                return true;
            }
        };
        if self.direction == Direction::Requests {
            sink.request_started(&head, first_ts);
        }
        self.start += end;
        self.searched = self.start;
        self.buf_ts = ts;
        self.state = State::Body(spare::partial(Partial {
            head,
            head_bytes: end as u64,
            body,
            trailers,
            decoder: BodyDecoder::new(framing),
            first_ts,
            last_ts: ts,
        }));
        if let State::Body(p) = &self.state
            && p.decoder.is_done()
        {
            self.finish(true, sink);
        }
        true
    }

    /// Emits the message in progress and goes back to reading heads.
    fn finish(&mut self, complete: bool, sink: &mut impl Sink) {
        let State::Body(mut partial) = std::mem::replace(&mut self.state, State::Head) else {
            return;
        };
        let message = Message {
            head: std::mem::replace(&mut partial.head, spare::EMPTY_HEAD),
            body: std::mem::take(&mut partial.body),
            trailers: std::mem::take(&mut partial.trailers),
            head_bytes: partial.head_bytes,
            first_ts: partial.first_ts,
            last_ts: partial.last_ts,
            complete,
        };
        spare::keep_partial(partial);
        sink.message(self.direction, message);
    }

    /// Reports an error; a message in progress is reported cut short.
    fn fail(&mut self, error: ParseError, sink: &mut impl Sink) {
        sink.error(self.direction, error);
        if matches!(self.state, State::Body(_)) {
            self.finish(false, sink);
        }
        self.state = State::Resync;
        self.line_start = false;
    }
}

/// Feeds `data` to the body of `partial`, keeping up to `limit` bytes, or none while `shed`
/// (then marking the body if that left bytes out).
fn feed(
    partial: &mut Partial,
    data: &[u8],
    limit: usize,
    shed: bool,
) -> Result<super::body::Fed, ParseError> {
    let size = partial.body.size;
    let fed = partial.decoder.feed(
        data,
        &mut partial.body,
        &mut partial.trailers,
        if shed { 0 } else { limit },
    );
    if shed && partial.body.size > size {
        partial.body.shed = true;
    }
    fed
}

/// End of the head (index after the blank line), searching from `from`.
fn find_head_end(input: &[u8], from: usize) -> Option<usize> {
    let mut at = from.min(input.len());
    while let Some(i) = memchr::memchr(b'\n', &input[at..]) {
        let nl = at + i;
        match input.get(nl + 1) {
            Some(b'\n') => return Some(nl + 2),
            Some(b'\r') if input.get(nl + 2) == Some(&b'\n') => return Some(nl + 3),
            _ => at = nl + 1,
        }
    }
    None
}

/// Overwrites `dst` with `src`, keeping its buffer.
fn set(dst: &mut String, src: &str) {
    dst.clear();
    dst.push_str(src);
}

/// Overwrites `dst` with `src` decoded leniently (invalid UTF-8 becomes U+FFFD).
fn set_lossy(dst: &mut String, src: &[u8]) {
    dst.clear();
    // Header values are nearly always valid: checking is much cheaper than the lossy decoder.
    match std::str::from_utf8(src) {
        Ok(s) => dst.push_str(s),
        Err(_) => dst.push_str(&String::from_utf8_lossy(src)),
    }
}

/// The head of a message in `bytes`, parsed into the buffers of a spare message (whose body
/// and trailers are empty).
fn parse_head(bytes: &[u8], direction: Direction) -> Result<Message, ParseError> {
    // Left uninitialized: httparse writes the ones it fills, and zeroing 256 entries (8 KiB)
    // per message was most of this function's time in a profile of the live agent.
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; HEADERS_MAX];
    let mut message = spare::message(direction);
    let head = &mut message.head;
    match direction {
        Direction::Requests => {
            let mut req = httparse::Request::new(&mut []);
            match req.parse_with_uninit_headers(bytes, &mut headers) {
                Ok(httparse::Status::Complete(_)) => {}
                Ok(httparse::Status::Partial) | Err(_) => return Err(ParseError::BadHead),
            }
            let (m, t) = (req.method.unwrap_or_default(), req.path.unwrap_or_default());
            match &mut head.start {
                StartLine::Request { method, target } => {
                    set(method, m);
                    set(target, t);
                }
                start @ StartLine::Response { .. } => {
                    *start = StartLine::Request {
                        method: m.to_owned(),
                        target: t.to_owned(),
                    };
                }
            }
            head.version = req.version.unwrap_or(1);
            fill_headers(&mut head.headers, req.headers);
        }
        Direction::Responses => {
            let mut res = httparse::Response::new(&mut []);
            let config = {
                let mut c = httparse::ParserConfig::default();
                c.allow_spaces_after_header_name_in_responses(true)
                    .allow_obsolete_multiline_headers_in_responses(true);
                c
            };
            match config.parse_response_with_uninit_headers(&mut res, bytes, &mut headers) {
                Ok(httparse::Status::Complete(_)) => {}
                Ok(httparse::Status::Partial) | Err(_) => return Err(ParseError::BadHead),
            }
            let (code, r) = (res.code.unwrap_or_default(), res.reason.unwrap_or_default());
            match &mut head.start {
                StartLine::Response { status, reason } => {
                    *status = code;
                    set(reason, r);
                }
                start @ StartLine::Request { .. } => {
                    *start = StartLine::Response {
                        status: code,
                        reason: r.to_owned(),
                    };
                }
            }
            head.version = res.version.unwrap_or(1);
            fill_headers(&mut head.headers, res.headers);
        }
    }
    Ok(message)
}

/// Copies the parsed headers into `slots`, reusing their buffers.
fn fill_headers(slots: &mut Vec<Header>, parsed: &[httparse::Header<'_>]) {
    spare::resize_headers(slots, parsed.len());
    for (slot, h) in slots.iter_mut().zip(parsed) {
        set(&mut slot.name, h.name);
        set_lossy(&mut slot.value, h.value);
    }
}

/// The value of Content-Length, if valid (repeated identical values are allowed).
fn content_length(head: &Head) -> Result<Option<u64>, ParseError> {
    let mut found: Option<u64> = None;
    for h in head
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
    {
        for part in h.value.split(',') {
            let part = part.trim();
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(ParseError::BadLength);
            }
            let n: u64 = part.parse().ok().ok_or(ParseError::BadLength)?;
            if found.is_some_and(|f| f != n) {
                return Err(ParseError::BadLength);
            }
            found = Some(n);
        }
    }
    Ok(found)
}

/// Whether Transfer-Encoding is present, and whether chunked is its final coding.
fn transfer_encoding(head: &Head) -> Option<bool> {
    let mut last = None;
    for h in head
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
    {
        if let Some(coding) = h.value.split(',').map(str::trim).rfind(|c| !c.is_empty()) {
            last = Some(coding.eq_ignore_ascii_case("chunked"));
        }
    }
    last
}

fn request_framing(head: &Head) -> Result<Framing, ParseError> {
    match transfer_encoding(head) {
        Some(true) => return Ok(Framing::Chunked),
        Some(false) => return Err(ParseError::BadLength),
        None => {}
    }
    Ok(content_length(head)?.map_or(Framing::Empty, Framing::Length))
}

fn response_framing(head: &Head, answering: Answering) -> Result<Framing, ParseError> {
    let status = head.status().unwrap_or(0);
    if (100..200).contains(&status) || status == 204 || status == 304 || answering.head {
        return Ok(Framing::Empty);
    }
    if answering.connect && (200..300).contains(&status) {
        return Ok(Framing::Empty);
    }
    match transfer_encoding(head) {
        Some(true) => return Ok(Framing::Chunked),
        Some(false) => return Ok(Framing::UntilClose),
        None => {}
    }
    Ok(content_length(head)?.map_or(Framing::UntilClose, Framing::Length))
}
