//! One pass over raw bytes finds every candidate. Candidates are cheap to find and most are
//! rejected by the validators; the shapes are broad on purpose (one number-like shape for
//! cards, SSNs, phones and IPv4) so that no entity shadows another.

use regex_automata::{MatchKind, meta, util::syntax};

use super::DataType;

/// What a candidate may be, before validation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// A secret whose format alone identifies it.
    Token(DataType),
    /// `eyJ….eyJ….…`: a JWT if both parts decode to JSON.
    Jwt,
    Email,
    Iban,
    Ipv6,
    /// Digits with separators: a card, an SSN, a phone number or an IPv4 address.
    Number,
}

/// Secrets recognisable by a literal prefix: the regex engine's literal prefilter skips
/// through text at memory speed and stops only near these.
const TOKENS: &[(&str, Shape)] = &[
    (
        r"-----BEGIN[A-Z ]*PRIVATE KEY(?: BLOCK)?-----",
        Shape::Token(DataType::PrivateKey),
    ),
    (
        r"eyJ[A-Za-z0-9_-]+\.eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*",
        Shape::Jwt,
    ),
    (
        r"(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA|APKA)[A-Z2-7]{16}",
        Shape::Token(DataType::AwsAccessKey),
    ),
    (
        r"gh[pousr]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9_]{82}",
        Shape::Token(DataType::GithubToken),
    ),
    (
        r"xox[baprse]-[A-Za-z0-9-]{10,}",
        Shape::Token(DataType::SlackToken),
    ),
    (
        r"https://hooks\.slack\.com/services/T[A-Za-z0-9]+/B[A-Za-z0-9]+/[A-Za-z0-9]+",
        Shape::Token(DataType::SlackWebhook),
    ),
    (
        r"(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}",
        Shape::Token(DataType::StripeKey),
    ),
    (
        r"AIza[0-9A-Za-z_-]{35}",
        Shape::Token(DataType::GoogleApiKey),
    ),
    (
        r"sk-ant-(?:api|admin)[0-9]{2}-[A-Za-z0-9_-]{80,}",
        Shape::Token(DataType::AnthropicApiKey),
    ),
    (
        r"sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,}T3BlbkFJ[A-Za-z0-9_-]{20,}",
        Shape::Token(DataType::OpenaiApiKey),
    ),
    (
        r"glpat-[A-Za-z0-9_-]{20}",
        Shape::Token(DataType::GitlabToken),
    ),
    (
        r"SG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}",
        Shape::Token(DataType::SendgridKey),
    ),
    (r"npm_[A-Za-z0-9]{36}", Shape::Token(DataType::NpmToken)),
];

/// A candidate: its shape and byte range in the scanned text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub shape: Shape,
    pub start: usize,
    pub end: usize,
}

/// Finds candidates: literal-prefixed secrets with a multi-pattern regex; emails, IBANs, IP
/// addresses and number-like strings with byte loops anchored on what they must contain
/// (`@`, digits, `:`), so that the whole text is read at memory speed, not at regex speed.
#[derive(Debug)]
pub struct Scanner {
    tokens: meta::Regex,
}

/// Lazy DFA cache per search thread. Bounded on purpose: the cache is what collapses with
/// large pattern sets when left at its default.
const DFA_CACHE_BYTES: usize = 8 * 1024 * 1024;

impl Scanner {
    /// Compiles the token patterns.
    ///
    /// # Panics
    /// If a built-in pattern does not compile: caught by every test run.
    #[must_use]
    pub fn new() -> Self {
        let patterns: Vec<&str> = TOKENS.iter().map(|(p, _)| *p).collect();
        let tokens = meta::Regex::builder()
            .syntax(syntax::Config::new().unicode(false).utf8(false))
            .configure(
                meta::Config::new()
                    .match_kind(MatchKind::LeftmostFirst)
                    .hybrid_cache_capacity(DFA_CACHE_BYTES),
            )
            .build_many(&patterns)
            .unwrap_or_else(|e| panic!("built-in detector patterns: {e}"));
        Self { tokens }
    }

    /// Appends the candidates in `text` to `out`, ordered by start and never overlapping:
    /// the leftmost wins, and a secret wins over what it contains (digits in a token).
    pub fn scan(&self, text: &[u8], out: &mut Vec<Candidate>) {
        let first = out.len();
        for m in self.tokens.find_iter(text) {
            out.push(Candidate {
                shape: TOKENS[m.pattern().as_usize()].1,
                start: m.start(),
                end: m.end(),
            });
        }
        emails(text, out);
        ipv6(text, out);
        numbers_and_ibans(text, out);
        let found = &mut out[first..];
        // Each finder emits in order; most documents need no reordering at all.
        if !found.is_sorted_by_key(|c| (c.start, rank(c.shape))) {
            found.sort_by_key(|c| (c.start, rank(c.shape)));
        }
        let mut end = 0;
        let mut keep = first;
        for i in first..out.len() {
            let c = out[i];
            if keep == first || c.start >= end {
                out[keep] = c;
                keep += 1;
                end = c.end;
            }
        }
        out.truncate(keep);
    }
}

/// Which of two candidates starting at the same byte wins.
fn rank(s: Shape) -> u8 {
    match s {
        Shape::Token(_) | Shape::Jwt => 0,
        Shape::Email => 1,
        Shape::Iban => 2,
        Shape::Ipv6 => 3,
        Shape::Number => 4,
    }
}

fn email_local(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'%' | b'+' | b'-')
}

fn domain_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'.'
}

/// `local@domain.tld` around every `@`.
fn emails(text: &[u8], out: &mut Vec<Candidate>) {
    for at in memchr::memchr_iter(b'@', text) {
        let mut start = at;
        while start > 0 && at - start < 64 && email_local(text[start - 1]) {
            start -= 1;
        }
        let mut end = at + 1;
        while end < text.len() && end - at < 254 && domain_byte(text[end]) {
            end += 1;
        }
        // A domain ends on a letter or digit, and has a dot.
        while end > at + 1 && matches!(text[end - 1], b'.' | b'-') {
            end -= 1;
        }
        if start < at && end > at + 1 && text[at + 1..end].contains(&b'.') {
            out.push(Candidate {
                shape: Shape::Email,
                start,
                end,
            });
        }
    }
}

fn ip6_byte(b: u8) -> bool {
    b.is_ascii_hexdigit() || b == b':' || b == b'.'
}

/// IPv6: runs of hex digits and colons with a `::` or seven colons (clock times have neither).
fn ipv6(text: &[u8], out: &mut Vec<Candidate>) {
    let mut from = 0;
    while let Some(off) = memchr::memchr(b':', &text[from..]) {
        let colon = from + off;
        let mut start = colon;
        while start > 0 && ip6_byte(text[start - 1]) {
            start -= 1;
        }
        let mut end = colon + 1;
        while end < text.len() && ip6_byte(text[end]) {
            end += 1;
        }
        let run = &text[start..end];
        let colons = run.iter().filter(|b| **b == b':').count();
        if colons >= 2
            && (colons >= 7 || memchr::memmem::find(run, b"::").is_some())
            && end - start <= 45
        {
            out.push(Candidate {
                shape: Shape::Ipv6,
                start,
                end,
            });
        }
        from = end.max(colon + 1);
    }
}

const DIGIT: u8 = 1;
const WORD: u8 = 2;
const NUMBER: u8 = 4;

/// Byte classes, one load per byte in the hot loops instead of a chain of range checks.
static CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        if c.is_ascii_digit() {
            t[b] |= DIGIT | NUMBER;
        }
        if c.is_ascii_alphanumeric() || c == b'_' {
            t[b] |= WORD;
        }
        if matches!(c, b' ' | b'(' | b')' | b'.' | b'-') {
            t[b] |= NUMBER;
        }
        b += 1;
    }
    t
};

/// Bytes a number-like candidate may contain after its first digit.
fn number_byte(b: u8) -> bool {
    CLASS[usize::from(b)] & NUMBER != 0
}

fn word_byte(b: u8) -> bool {
    CLASS[usize::from(b)] & WORD != 0
}

/// Number-like candidates (what `\+?\(?[0-9][0-9 ().-]{4,}[0-9]` would match, leftmost,
/// longest), and IBANs (two capitals then two digits). Plain runs of up to 8 digits and plain
/// decimals can be no card, SSN, phone or IPv4, and are not reported.
fn numbers_and_ibans(text: &[u8], out: &mut Vec<Candidate>) {
    let n = text.len();
    let mut i = 0;
    while i < n {
        if !text[i].is_ascii_digit() {
            i = next_digit(text, i + 1);
            continue;
        }
        if i >= 2
            && text[i - 1].is_ascii_uppercase()
            && text[i - 2].is_ascii_uppercase()
            && text.get(i + 1).is_some_and(u8::is_ascii_digit)
            && let Some(end) = iban_end(text, i + 2)
        {
            out.push(Candidate {
                shape: Shape::Iban,
                start: i - 2,
                end,
            });
        }
        // Digits inside a word (hex, UUID groups, `cus_9s8d…` ids) are no candidate: the
        // validators reject a number that follows a letter. Skip the whole word.
        if i > 0 && (text[i - 1].is_ascii_alphabetic() || text[i - 1] == b'_') {
            while i < n && word_byte(text[i]) {
                i += 1;
            }
            continue;
        }
        // An optional `(` and `+` just before the first digit belong to the candidate.
        let mut start = i;
        if start > 0 && text[start - 1] == b'(' {
            start -= 1;
        }
        if start > 0 && text[start - 1] == b'+' {
            start -= 1;
        }
        let mut j = i;
        let mut last_digit = i;
        let mut digits = 0usize;
        let mut separators = 0usize;
        let mut dots = 0usize;
        while j < n && number_byte(text[j]) {
            if CLASS[usize::from(text[j])] & DIGIT != 0 {
                last_digit = j;
                digits += 1;
            } else {
                separators += 1;
                dots += usize::from(text[j] == b'.');
            }
            j += 1;
        }
        let end = last_digit + 1;
        let plain_short = separators == 0 && digits <= 8 && start == i;
        let plain_decimal = separators == 1 && dots == 1 && start == i;
        if end - start >= 6 && !plain_short && !plain_decimal {
            out.push(Candidate {
                shape: Shape::Number,
                start,
                end,
            });
        }
        i = j.max(i + 1);
    }
}

/// Bit 7 of each byte of `w` set where that byte is an ASCII digit. SWAR: no byte's sum
/// overflows into its neighbour, because only the low 7 bits take part.
const fn digit_mask(w: u64) -> u64 {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let low = w & LOW7;
    let at_least_0 = low + 0x5050_5050_5050_5050; // low >= 0x30 sets bit 7
    let above_9 = low + 0x4646_4646_4646_4646; // low >= 0x3a sets bit 7
    at_least_0 & !above_9 & !w & HIGH
}

/// Position of the first ASCII digit at or after `from` (or `text.len()`), 8 bytes at a time:
/// most of a JSON document is letters and punctuation.
fn next_digit(text: &[u8], mut from: usize) -> usize {
    while from + 8 <= text.len() {
        let mut chunk = [0u8; 8];
        chunk.copy_from_slice(&text[from..from + 8]);
        let mask = digit_mask(u64::from_le_bytes(chunk));
        if mask != 0 {
            return from + (mask.trailing_zeros() / 8) as usize;
        }
        from += 8;
    }
    while from < text.len() && !text[from].is_ascii_digit() {
        from += 1;
    }
    from
}

/// End of an IBAN's body starting at `from` (after country and check digits): 11 to 30
/// capitals or digits, single spaces allowed between them.
fn iban_end(text: &[u8], from: usize) -> Option<usize> {
    let mut end = from;
    let mut chars = 0;
    let mut i = from;
    while i < text.len() && chars < 30 {
        let b = text[i];
        if b.is_ascii_digit() || b.is_ascii_uppercase() {
            chars += 1;
            i += 1;
            end = i;
        } else if b == b' '
            && text
                .get(i + 1)
                .is_some_and(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
        {
            i += 1;
        } else {
            break;
        }
    }
    (chars >= 11).then_some(end)
}

#[cfg(test)]
#[test]
fn digit_mask_is_exact() {
    for b in 0..=255u8 {
        let w = u64::from_le_bytes([b'x', b, 0xff, b'0', b'9', b'/', b':', 0x80]);
        let m = digit_mask(w);
        assert_eq!(m & 0x8000 != 0, b.is_ascii_digit(), "byte {b:#x}");
        assert_eq!(m & !0x8000, 0x0000_0080_8000_0000, "byte {b:#x}");
    }
    assert_eq!(next_digit(b"abcdefghijklmnop7", 0), 16);
    assert_eq!(next_digit(b"abc", 0), 3);
}

impl Default for Scanner {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shapes(text: &str) -> Vec<(Shape, String)> {
        let mut out = Vec::new();
        Scanner::new().scan(text.as_bytes(), &mut out);
        out.iter()
            .map(|c| (c.shape, text[c.start..c.end].to_owned()))
            .collect()
    }

    #[test]
    fn candidates_do_not_shadow_each_other() {
        let got = shapes(
            r#"{"email":"lucy@example.com","card":"4111 1111 1111 1111","iban":"DE89 3704 0044 0532 0130 00","ip":"8.8.8.8","v6":"2a00:1450::1"}"#,
        );
        assert_eq!(
            got,
            vec![
                (Shape::Email, "lucy@example.com".into()),
                (Shape::Number, "4111 1111 1111 1111".into()),
                (Shape::Iban, "DE89 3704 0044 0532 0130 00".into()),
                (Shape::Number, "8.8.8.8".into()),
                (Shape::Ipv6, "2a00:1450::1".into()),
            ]
        );
        let got = shapes("token=ghp_abcdefghijklmnopqrstuvwxyz0123456789&k=AKIAIOSFODNN7EXAMPLE");
        assert_eq!(got[0].0, Shape::Token(DataType::GithubToken));
        assert_eq!(
            got[1],
            (
                Shape::Token(DataType::AwsAccessKey),
                "AKIAIOSFODNN7EXAMPLE".into()
            )
        );
    }
}
