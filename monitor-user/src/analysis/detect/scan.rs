//! One pass over raw bytes finds every candidate: a multi-pattern DFA in ASCII mode. Candidates
//! are cheap to find and most are rejected by the validators; the patterns are broad on
//! purpose (one number-like shape for cards, SSNs, phones and IPv4) so that no entity shadows
//! another.

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

/// Patterns, in priority order for candidates starting at the same byte.
const PATTERNS: &[(&str, Shape)] = &[
    (
        r"-----BEGIN[A-Z ]{0,30}PRIVATE KEY(?: BLOCK)?-----",
        Shape::Token(DataType::PrivateKey),
    ),
    (
        r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*",
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
        r"xox[baprse]-[A-Za-z0-9-]{10,80}",
        Shape::Token(DataType::SlackToken),
    ),
    (
        r"https://hooks\.slack\.com/services/T[A-Za-z0-9]{6,}/B[A-Za-z0-9]{6,}/[A-Za-z0-9]{20,}",
        Shape::Token(DataType::SlackWebhook),
    ),
    (
        r"(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,99}",
        Shape::Token(DataType::StripeKey),
    ),
    (
        r"AIza[0-9A-Za-z_-]{35}",
        Shape::Token(DataType::GoogleApiKey),
    ),
    (
        r"sk-ant-(?:api|admin)[0-9]{2}-[A-Za-z0-9_-]{80,110}",
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
    (
        r"[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?)+",
        Shape::Email,
    ),
    (r"[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}", Shape::Iban),
    (
        r"[0-9A-Fa-f]{0,4}:[0-9A-Fa-f]{0,4}:[0-9A-Fa-f:.]{1,40}",
        Shape::Ipv6,
    ),
    (r"\+?\(?[0-9][0-9 ().\-]{4,24}[0-9]", Shape::Number),
];

/// A candidate: its shape and byte range in the scanned text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub shape: Shape,
    pub start: usize,
    pub end: usize,
}

/// The compiled candidate patterns.
#[derive(Debug)]
pub struct Scanner {
    regex: meta::Regex,
}

/// Lazy DFA cache per search thread. Bounded on purpose: the cache is what collapses with
/// large pattern sets when left at its default.
const DFA_CACHE_BYTES: usize = 8 * 1024 * 1024;

impl Scanner {
    /// Compiles the patterns.
    ///
    /// # Panics
    /// If a built-in pattern does not compile: caught by every test run.
    #[must_use]
    pub fn new() -> Self {
        let patterns: Vec<&str> = PATTERNS.iter().map(|(p, _)| *p).collect();
        let regex = meta::Regex::builder()
            .syntax(syntax::Config::new().unicode(false).utf8(false))
            .configure(
                meta::Config::new()
                    .match_kind(MatchKind::LeftmostFirst)
                    .hybrid_cache_capacity(DFA_CACHE_BYTES),
            )
            .build_many(&patterns)
            .unwrap_or_else(|e| panic!("built-in detector patterns: {e}"));
        Self { regex }
    }

    /// Appends the candidates in `text` to `out`.
    pub fn scan(&self, text: &[u8], out: &mut Vec<Candidate>) {
        for m in self.regex.find_iter(text) {
            out.push(Candidate {
                shape: PATTERNS[m.pattern().as_usize()].1,
                start: m.start(),
                end: m.end(),
            });
        }
    }
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
