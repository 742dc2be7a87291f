//! Bodies as the detectors see them: decoded (gzip, deflate, br), typed (JSON, form, multipart,
//! text), bounded in size, and read as far as they go when truncated.

use std::{borrow::Cow, io::Read as _};

/// What a body holds, which decides how it is walked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    Json,
    Form,
    /// `multipart/form-data` (or mixed) with its boundary.
    Multipart(String),
    Text,
    /// Images, archives, fonts, media, unknown binary: not scanned.
    Binary,
}

/// The kind of a body from its `Content-Type`, and its first bytes when that says little.
#[must_use]
pub fn kind(content_type: Option<&str>, body: &[u8]) -> Kind {
    let mut buf = [0u8; 128];
    let ct = super::ascii_lowercase(content_type.unwrap_or_default(), &mut buf);
    let mime = ct.split(';').next().unwrap_or_default().trim();
    if mime.starts_with("multipart/")
        && let Some(b) = ct
            .split(';')
            .find_map(|p| p.trim().strip_prefix("boundary="))
    {
        // The boundary keeps its case: take it from the original header.
        let original = content_type.unwrap_or_default();
        let at = original
            .to_ascii_lowercase()
            .find("boundary=")
            .map_or(0, |i| i + 9);
        let raw = original[at..]
            .split(';')
            .next()
            .unwrap_or(b)
            .trim()
            .trim_matches('"');
        return Kind::Multipart(raw.to_owned());
    }
    if mime.contains("json") {
        return Kind::Json;
    }
    if mime == "application/x-www-form-urlencoded" {
        return Kind::Form;
    }
    if mime.starts_with("text/")
        || mime.contains("xml")
        || mime.contains("javascript")
        || mime.contains("graphql")
    {
        return Kind::Text;
    }
    let binary = [
        "image/",
        "audio/",
        "video/",
        "font/",
        "application/octet-stream",
        "application/zip",
        "application/gzip",
        "application/pdf",
        "application/x-protobuf",
        "application/grpc",
        "application/wasm",
    ];
    if binary.iter().any(|b| mime.starts_with(b)) {
        return Kind::Binary;
    }
    sniff(body)
}

/// A body without a useful type: JSON if it looks like it, text if mostly printable.
fn sniff(body: &[u8]) -> Kind {
    if super::json::looks_like_json(body) {
        return Kind::Json;
    }
    let head = &body[..body.len().min(512)];
    if head.is_empty() {
        return Kind::Text;
    }
    let printable = head
        .iter()
        .filter(|b| b.is_ascii_graphic() || b.is_ascii_whitespace() || **b >= 0x80)
        .count();
    if printable * 10 >= head.len() * 9 {
        if head.contains(&b'=')
            && !head.contains(&b' ')
            && !head.contains(&b'\n')
            && head.iter().filter(|b| **b == b'=').count() >= 1
        {
            return Kind::Form;
        }
        Kind::Text
    } else {
        Kind::Binary
    }
}

/// Undoes `Content-Encoding` (gzip, x-gzip, deflate, br; several in order), producing at most
/// `max` bytes. A body that does not decode (HAR files store bodies already decoded) is kept as
/// it is; a truncated one decodes as far as it goes.
#[must_use]
pub fn decode<'a>(body: &'a [u8], content_encoding: Option<&str>, max: usize) -> Cow<'a, [u8]> {
    let Some(ce) = content_encoding else {
        return Cow::Borrowed(body);
    };
    let mut data = Cow::Borrowed(body);
    for coding in ce.split(',').map(|c| c.trim().to_ascii_lowercase()).rev() {
        let decoded = match coding.as_str() {
            "gzip" | "x-gzip" => gunzip(&data, max),
            "deflate" => {
                let zlib = inflate(&data, true, max).0;
                if zlib.is_empty() {
                    inflate(&data, false, max).0
                } else {
                    zlib
                }
            }
            "br" => read_bounded(brotli_decompressor::Decompressor::new(&data[..], 4096), max),
            _ => continue,
        };
        if decoded.is_empty() && !data.is_empty() {
            // Not actually encoded (or not decodable): analyse what there is.
            break;
        }
        data = Cow::Owned(decoded);
    }
    data
}

/// Inflates a zlib (`zlib` true) or raw deflate stream into at most `max` bytes. Keeps what
/// was decoded before the input ended or went bad (truncated bodies). Returns the output and
/// the input bytes consumed.
fn inflate(input: &[u8], zlib: bool, max: usize) -> (Vec<u8>, usize) {
    let mut d = flate2::Decompress::new(zlib);
    let mut out = Vec::with_capacity(max.min(input.len().saturating_mul(4)).max(1024));
    loop {
        let consumed = usize::try_from(d.total_in())
            .unwrap_or(input.len())
            .min(input.len());
        if out.len() >= max {
            out.truncate(max);
            return (out, consumed);
        }
        if out.capacity() == out.len() {
            out.reserve((out.len()).clamp(1024, max - out.len()));
        }
        let before = (d.total_in(), d.total_out());
        match d.decompress_vec(&input[consumed..], &mut out, flate2::FlushDecompress::None) {
            Ok(flate2::Status::StreamEnd) | Err(_) => break,
            Ok(_) if (d.total_in(), d.total_out()) == before => break,
            Ok(_) => {}
        }
    }
    out.truncate(max);
    (out, usize::try_from(d.total_in()).unwrap_or(input.len()))
}

/// gzip: each member's header skipped, its deflate stream inflated, members concatenated.
fn gunzip(mut data: &[u8], max: usize) -> Vec<u8> {
    let mut out = Vec::new();
    while data.len() > 10 && data.starts_with(&[0x1f, 0x8b, 8]) && out.len() < max {
        let flags = data[3];
        let mut at = 10;
        if flags & 4 != 0 {
            let xlen = usize::from(u16::from_le_bytes([
                data.get(10).copied().unwrap_or(0),
                data.get(11).copied().unwrap_or(0),
            ]));
            at += 2 + xlen;
        }
        for flag in [8u8, 16] {
            if flags & flag != 0 {
                at += data
                    .get(at..)
                    .and_then(|rest| rest.iter().position(|b| *b == 0))
                    .map_or(data.len(), |z| z + 1);
            }
        }
        if flags & 2 != 0 {
            at += 2;
        }
        let Some(stream) = data.get(at..) else { break };
        let (member, used) = inflate(stream, false, max - out.len());
        out.extend_from_slice(&member);
        // Next member after this one's 8-byte trailer, if any.
        data = stream.get(used + 8..).unwrap_or_default();
    }
    out
}

/// Reads up to `max` bytes, keeping what was read before an error (truncated input).
fn read_bounded(reader: impl std::io::Read, max: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut limited = reader.take(max as u64);
    let mut buf = [0u8; 8192];
    loop {
        match limited.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    out
}

/// One part of a multipart body: its name, whether it is a file, its type, and its bytes.
#[derive(Debug, PartialEq, Eq)]
pub struct Part<'a> {
    pub name: String,
    pub filename: Option<String>,
    pub content_type: Option<String>,
    pub body: &'a [u8],
}

/// The parts of a multipart body (a truncated last part is included as far as it goes).
#[must_use]
pub fn multipart<'a>(body: &'a [u8], boundary: &str) -> Vec<Part<'a>> {
    let delimiter = format!("--{boundary}");
    let finder = memchr::memmem::Finder::new(delimiter.as_bytes());
    let starts: Vec<usize> = finder.find_iter(body).collect();
    let mut parts = Vec::new();
    for (i, &at) in starts.iter().enumerate() {
        let from = at + delimiter.len();
        if body[from..].starts_with(b"--") {
            break;
        }
        let to = starts
            .get(i + 1)
            .map_or(body.len(), |next| next.saturating_sub(2).max(from));
        let chunk = &body[from..to];
        let chunk = chunk
            .strip_prefix(b"\r\n")
            .or_else(|| chunk.strip_prefix(b"\n"))
            .unwrap_or(chunk);
        let (head, content) = match memchr::memmem::find(chunk, b"\r\n\r\n") {
            Some(h) => (&chunk[..h], &chunk[h + 4..]),
            None => match memchr::memmem::find(chunk, b"\n\n") {
                Some(h) => (&chunk[..h], &chunk[h + 2..]),
                None => continue,
            },
        };
        let head = String::from_utf8_lossy(head);
        let mut part = Part {
            name: String::new(),
            filename: None,
            content_type: None,
            body: content,
        };
        for line in head.lines() {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            if name.trim().eq_ignore_ascii_case("content-disposition") {
                for attr in value.split(';').map(str::trim) {
                    if let Some(v) = attr.strip_prefix("name=") {
                        part.name = v.trim_matches('"').to_owned();
                    } else if let Some(v) = attr.strip_prefix("filename=") {
                        part.filename = Some(v.trim_matches('"').to_owned());
                    }
                }
            } else if name.trim().eq_ignore_ascii_case("content-type") {
                part.content_type = Some(value.trim().to_owned());
            }
        }
        parts.push(part);
    }
    parts
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    #[test]
    fn kinds() {
        assert_eq!(
            kind(Some("application/json; charset=utf-8"), b""),
            Kind::Json
        );
        assert_eq!(kind(Some("application/vnd.api+json"), b""), Kind::Json);
        assert_eq!(
            kind(Some("application/x-www-form-urlencoded"), b""),
            Kind::Form
        );
        assert_eq!(
            kind(Some("multipart/form-data; boundary=XyZ"), b""),
            Kind::Multipart("XyZ".into())
        );
        assert_eq!(kind(Some("image/png"), b"\x89PNG"), Kind::Binary);
        assert_eq!(kind(None, b" {\"a\":1}"), Kind::Json);
        assert_eq!(kind(None, b"a=1&b=2"), Kind::Form);
        assert_eq!(kind(None, b"hello there"), Kind::Text);
        assert_eq!(kind(None, &[0u8, 1, 2, 3, 255, 254, 7, 8]), Kind::Binary);
    }

    #[test]
    fn decoding() {
        let text: Vec<u8> = (0..500)
            .flat_map(|i| format!("{{\"n\":{i},\"email\":\"user{i}@example.com\"}}").into_bytes())
            .collect();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&text).expect("gzip");
        let gz = gz.finish().expect("gzip");
        assert_eq!(decode(&gz, Some("gzip"), 1 << 20).as_ref(), &text[..]);
        // Truncated: as far as it goes.
        let part = decode(&gz[..gz.len() / 2], Some("gzip"), 1 << 20);
        assert!(!part.is_empty() && text.starts_with(&part));
        // Bounded: a bomb stops at the limit.
        let bomb = {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            e.write_all(&vec![b'a'; 10 << 20]).expect("gzip");
            e.finish().expect("gzip")
        };
        assert_eq!(decode(&bomb, Some("gzip"), 4096).len(), 4096);
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&text).expect("zlib");
        assert_eq!(
            decode(&z.finish().expect("zlib"), Some("deflate"), 1 << 20).as_ref(),
            &text[..]
        );
        // Already decoded (HAR): kept as is.
        assert_eq!(decode(&text, Some("br"), 1 << 20).as_ref(), &text[..]);
        assert_eq!(decode(&text, Some("gzip"), 1 << 20).as_ref(), &text[..]);
    }

    #[test]
    fn multipart_parts() {
        let body = b"--b1\r\nContent-Disposition: form-data; name=\"meta\"\r\nContent-Type: application/json\r\n\r\n{\"email\":\"a@b.co\"}\r\n--b1\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.png\"\r\n\r\nPNG...\r\n--b1--\r\n";
        let parts = multipart(body, "b1");
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].name, "meta");
        assert_eq!(parts[0].body, b"{\"email\":\"a@b.co\"}");
        assert_eq!(parts[1].filename.as_deref(), Some("x.png"));
        assert!(multipart(b"garbage", "b1").is_empty());
    }
}
