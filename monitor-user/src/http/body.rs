//! Message body framing: Content-Length, chunked (with trailers), until close.

use super::{Body, Header, ParseError};

/// Longest chunk-size line accepted (hex size plus extensions).
const MAX_CHUNK_LINE: usize = 4096;
/// Most trailer bytes accepted after the last chunk.
const MAX_TRAILERS: usize = 16 * 1024;

/// How a message's body is delimited (RFC 9112 section 6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body at all.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Everything until the connection closes.
    UntilClose,
}

#[derive(Debug)]
enum State {
    Length {
        remaining: u64,
    },
    ChunkSize {
        line: Vec<u8>,
    },
    ChunkData {
        remaining: u64,
    },
    /// The CRLF after chunk data; `seen` bytes of it consumed.
    ChunkDataEnd {
        seen_cr: bool,
    },
    Trailers {
        line: Vec<u8>,
        total: usize,
    },
    UntilClose,
    Done,
}

/// Incremental body decoder for one message.
#[derive(Debug)]
pub(crate) struct BodyDecoder {
    state: State,
}

/// What a call to [`BodyDecoder::feed`] did.
pub(crate) struct Fed {
    /// Bytes of the input that belonged to this body.
    pub(crate) consumed: usize,
    /// The body is complete; the rest of the input is the next message.
    pub(crate) done: bool,
}

impl BodyDecoder {
    pub(crate) fn new(framing: Framing) -> Self {
        let state = match framing {
            Framing::Empty | Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length { remaining: n },
            Framing::Chunked => State::ChunkSize { line: Vec::new() },
            Framing::UntilClose => State::UntilClose,
        };
        Self { state }
    }

    pub(crate) fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// Whether only the connection's end can finish this body.
    pub(crate) fn until_close(&self) -> bool {
        matches!(self.state, State::UntilClose)
    }

    /// Decodes as much of `data` as belongs to this body.
    pub(crate) fn feed(
        &mut self,
        data: &[u8],
        body: &mut Body,
        trailers: &mut Vec<Header>,
        limit: usize,
    ) -> Result<Fed, ParseError> {
        let mut pos = 0;
        while pos < data.len() {
            let rest = &data[pos..];
            match &mut self.state {
                State::Done => break,
                State::UntilClose => {
                    body.append(rest, limit);
                    pos = data.len();
                }
                State::Length { remaining } | State::ChunkData { remaining } => {
                    let n = rest
                        .len()
                        .min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                    body.append(&rest[..n], limit);
                    *remaining -= n as u64;
                    pos += n;
                    if *remaining == 0 {
                        self.state = match self.state {
                            State::Length { .. } => State::Done,
                            _ => State::ChunkDataEnd { seen_cr: false },
                        };
                    }
                }
                State::ChunkDataEnd { seen_cr } => {
                    match rest[0] {
                        b'\r' if !*seen_cr => *seen_cr = true,
                        b'\n' => self.state = State::ChunkSize { line: Vec::new() },
                        _ => return Err(ParseError::BadChunk),
                    }
                    pos += 1;
                }
                State::ChunkSize { line } => {
                    let (taken, complete) = take_line(rest, line);
                    pos += taken;
                    if line.len() > MAX_CHUNK_LINE {
                        return Err(ParseError::BadChunk);
                    }
                    if complete {
                        let size = parse_chunk_size(line)?;
                        self.state = if size == 0 {
                            State::Trailers {
                                line: Vec::new(),
                                total: 0,
                            }
                        } else {
                            State::ChunkData { remaining: size }
                        };
                    }
                }
                State::Trailers { line, total } => {
                    let (taken, complete) = take_line(rest, line);
                    pos += taken;
                    *total += taken;
                    if *total > MAX_TRAILERS {
                        return Err(ParseError::HeadTooLarge);
                    }
                    if complete {
                        let text = trim_eol(line);
                        if text.is_empty() {
                            self.state = State::Done;
                        } else {
                            if let Some(h) = parse_header_line(text) {
                                trailers.push(h);
                            }
                            line.clear();
                        }
                    }
                }
            }
        }
        Ok(Fed {
            consumed: pos,
            done: self.is_done(),
        })
    }

    /// Accounts for `n` bytes that happened but were not captured. Fails if they cannot all be
    /// body payload (they would cover framing the parser needs).
    pub(crate) fn gap(&mut self, n: u64, body: &mut Body) -> Result<(), ParseError> {
        match &mut self.state {
            State::UntilClose => {
                body.skip(n);
                Ok(())
            }
            State::Length { remaining } if n <= *remaining => {
                body.skip(n);
                *remaining -= n;
                if *remaining == 0 {
                    self.state = State::Done;
                }
                Ok(())
            }
            State::ChunkData { remaining } if n <= *remaining => {
                body.skip(n);
                *remaining -= n;
                if *remaining == 0 {
                    self.state = State::ChunkDataEnd { seen_cr: false };
                }
                Ok(())
            }
            _ => Err(ParseError::Gap),
        }
    }
}

/// Moves bytes up to and including the next `\n` from `input` into `line`. Returns how many
/// bytes were taken and whether the line is complete.
fn take_line(input: &[u8], line: &mut Vec<u8>) -> (usize, bool) {
    match memchr::memchr(b'\n', input) {
        Some(i) => {
            line.extend_from_slice(&input[..=i]);
            (i + 1, true)
        }
        None => {
            line.extend_from_slice(input);
            (input.len(), false)
        }
    }
}

fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// `1a3f;ext=1\r\n` -> 0x1a3f. Lenient on whitespace and bare LF, strict on the digits.
fn parse_chunk_size(line: &[u8]) -> Result<u64, ParseError> {
    let line = trim_eol(line);
    let digits = line.split(|&b| b == b';').next().unwrap_or_default();
    let digits = digits.trim_ascii();
    if digits.is_empty() || digits.len() > 16 {
        return Err(ParseError::BadChunk);
    }
    let text = std::str::from_utf8(digits)
        .ok()
        .ok_or(ParseError::BadChunk)?;
    u64::from_str_radix(text, 16)
        .ok()
        .ok_or(ParseError::BadChunk)
}

fn parse_header_line(line: &[u8]) -> Option<Header> {
    let colon = memchr::memchr(b':', line)?;
    let name = String::from_utf8_lossy(line[..colon].trim_ascii()).into_owned();
    let value = String::from_utf8_lossy(line[colon + 1..].trim_ascii()).into_owned();
    Some(Header { name, value })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(framing: Framing, parts: &[&[u8]]) -> (Body, Vec<Header>, usize, bool) {
        let mut d = BodyDecoder::new(framing);
        let mut body = Body::default();
        let mut trailers = Vec::new();
        let mut consumed = 0;
        let mut done = false;
        for p in parts {
            let fed = d
                .feed(p, &mut body, &mut trailers, 1 << 20)
                .expect("valid body");
            consumed += fed.consumed;
            done = fed.done;
        }
        (body, trailers, consumed, done)
    }

    #[test]
    fn content_length_stops_at_its_end() {
        let (body, _, consumed, done) = decode(Framing::Length(5), &[b"hel", b"loGET /"]);
        assert_eq!(body.data, b"hello");
        assert_eq!(consumed, 5);
        assert!(done);
    }

    #[test]
    fn chunked_with_extensions_and_trailers() {
        let wire: &[u8] = b"4;name=v\r\nWiki\r\n5\r\npedia\r\n0\r\nX-Checksum: abc\r\n\r\nNEXT";
        let (body, trailers, consumed, done) = decode(Framing::Chunked, &[wire]);
        assert_eq!(body.data, b"Wikipedia");
        assert_eq!(body.size, 9);
        assert_eq!(
            trailers,
            vec![Header {
                name: "X-Checksum".into(),
                value: "abc".into()
            }]
        );
        assert_eq!(consumed, wire.len() - 4);
        assert!(done);
    }

    #[test]
    fn chunked_split_at_every_byte() {
        let wire: &[u8] = b"3\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\n\r\n";
        let parts: Vec<&[u8]> = wire.chunks(1).collect();
        let (body, _, consumed, done) = decode(Framing::Chunked, &parts);
        assert_eq!(body.data, b"abc0123456789abcdef");
        assert_eq!(consumed, wire.len());
        assert!(done);
    }

    #[test]
    fn bad_chunk_size_is_an_error() {
        let mut d = BodyDecoder::new(Framing::Chunked);
        let mut body = Body::default();
        assert!(d.feed(b"zz\r\n", &mut body, &mut Vec::new(), 10).is_err());
    }

    #[test]
    fn limit_keeps_a_prefix_but_counts_everything() {
        let mut d = BodyDecoder::new(Framing::Length(10));
        let mut body = Body::default();
        d.feed(b"0123456789", &mut body, &mut Vec::new(), 4)
            .expect("valid");
        assert_eq!(body.data, b"0123");
        assert_eq!(body.size, 10);
        assert!(body.truncated);
    }

    #[test]
    fn gaps_inside_the_body_are_skipped_with_their_size() {
        let mut d = BodyDecoder::new(Framing::Length(10));
        let mut body = Body::default();
        d.feed(b"012", &mut body, &mut Vec::new(), 100)
            .expect("valid");
        d.gap(5, &mut body).expect("fits");
        let fed = d
            .feed(b"89X", &mut body, &mut Vec::new(), 100)
            .expect("valid");
        assert!(fed.done);
        assert_eq!(body.size, 10);
        assert!(d.gap(1, &mut body).is_err());
    }
}
