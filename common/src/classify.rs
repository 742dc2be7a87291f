//! First-bytes protocol check, shared by the kernel (to stop forwarding non-HTTP streams early)
//! and by userspace tests.

use crate::proto;

/// Bytes the classifier looks at.
pub const PEEK_LEN: usize = 8;

/// Starts of HTTP/1.x messages: request methods followed by a space, and the response
/// status line. Each is (bytes, how many of them must match).
const HTTP_STARTS: [(&[u8; PEEK_LEN], usize); 10] = [
    (b"GET     ", 4),
    (b"POST    ", 5),
    (b"PUT     ", 4),
    (b"HEAD    ", 5),
    (b"DELETE  ", 7),
    (b"PATCH   ", 6),
    (b"OPTIONS ", 8),
    (b"CONNECT ", 8),
    (b"TRACE   ", 6),
    (b"HTTP/1. ", 7),
];

const fn word(bytes: &[u8; PEEK_LEN]) -> u64 {
    u64::from_le_bytes(*bytes)
}

const fn low_bytes_mask(n: usize) -> u64 {
    if n >= PEEK_LEN {
        u64::MAX
    } else {
        (1u64 << (n * 8)) - 1
    }
}

/// Classifies the first `n` bytes of a record (`peek` holds up to [`PEEK_LEN`] of them):
/// [`proto::HTTP`] if they start an HTTP/1.x message, [`proto::TLS`] if they start a TLS
/// record, [`proto::OTHER`] otherwise, [`proto::UNKNOWN`] if fewer than 4 bytes were seen.
#[inline(always)]
#[must_use]
pub fn classify(peek: &[u8; PEEK_LEN], n: usize) -> u8 {
    if n < 4 {
        return proto::UNKNOWN;
    }
    let have = if n > PEEK_LEN { PEEK_LEN } else { n };
    let w = word(peek);
    let mut i = 0;
    while i < HTTP_STARTS.len() {
        let (sig, len) = HTTP_STARTS[i];
        let m = low_bytes_mask(if len < have { len } else { have });
        if w & m == word(sig) & m {
            return proto::HTTP;
        }
        i += 1;
    }
    // TLS record header: content type 20..=23, legacy version 3.x.
    if peek[0] >= 0x14 && peek[0] <= 0x17 && peek[1] == 3 && peek[2] <= 4 {
        return proto::TLS;
    }
    proto::OTHER
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(bytes: &[u8]) -> u8 {
        let mut peek = [0u8; PEEK_LEN];
        let n = bytes.len().min(PEEK_LEN);
        peek[..n].copy_from_slice(&bytes[..n]);
        classify(&peek, bytes.len())
    }

    #[test]
    fn http_requests_and_responses() {
        for start in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"POST /v1 HTTP/1.1",
            b"PUT /x HTTP/1.0",
            b"HEAD / HTTP/1.1",
            b"DELETE /a HTTP/1.1",
            b"PATCH /a HTTP/1.1",
            b"OPTIONS * HTTP/1.1",
            b"CONNECT a:443 HTTP/1.1",
            b"TRACE / HTTP/1.1",
            b"HTTP/1.1 200 OK",
            b"HTTP/1.0 404 Not Found",
        ] {
            assert_eq!(of(start), proto::HTTP, "{:?}", core::str::from_utf8(start));
        }
    }

    #[test]
    fn short_reads_decide_on_what_they_have() {
        assert_eq!(of(b"GET"), proto::UNKNOWN);
        assert_eq!(of(b"POST"), proto::HTTP);
        assert_eq!(of(b"DELE"), proto::HTTP);
        assert_eq!(of(b"HTTP/"), proto::HTTP);
    }

    #[test]
    fn everything_else() {
        assert_eq!(
            of(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01]),
            proto::TLS
        );
        assert_eq!(of(&[0x17, 0x03, 0x03, 0x00, 0x20, 1, 2, 3]), proto::TLS);
        assert_eq!(of(b"PRI * HTTP/2.0\r\n"), proto::OTHER);
        assert_eq!(of(b"SSH-2.0-OpenSSH"), proto::OTHER);
        assert_eq!(of(b"*1\r\n$4\r\nPING"), proto::OTHER);
        assert_eq!(of(b"220 smtp ready"), proto::OTHER);
        assert_eq!(of(b"GETX / HTTP/1.1"), proto::OTHER);
        assert_eq!(of(b"HTTP/2 200"), proto::OTHER);
        assert_eq!(of(b"get / http/1.1"), proto::OTHER);
    }
}
