//! Personal data and secrets in a value: candidates from one scan, validated, with the field's
//! name as context. Pure: bytes in, typed hits out, raw values never kept.

pub mod keys;
pub mod scan;
pub mod validate;

use std::net::{Ipv4Addr, Ipv6Addr};

use base64::Engine as _;
pub use keys::Hints;
use scan::{Candidate, Scanner, Shape};

/// Kinds of data apimon reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DataType {
    Email,
    Phone,
    CreditCard,
    UsSsn,
    Iban,
    IpAddress,
    DateOfBirth,
    PersonName,
    StreetAddress,
    Jwt,
    AwsAccessKey,
    AwsSecretKey,
    PrivateKey,
    GithubToken,
    SlackToken,
    SlackWebhook,
    StripeKey,
    GoogleApiKey,
    OpenaiApiKey,
    AnthropicApiKey,
    GitlabToken,
    SendgridKey,
    NpmToken,
    Password,
}

impl DataType {
    /// Every type, for reports and metrics.
    pub const ALL: [Self; 24] = [
        Self::Email,
        Self::Phone,
        Self::CreditCard,
        Self::UsSsn,
        Self::Iban,
        Self::IpAddress,
        Self::DateOfBirth,
        Self::PersonName,
        Self::StreetAddress,
        Self::Jwt,
        Self::AwsAccessKey,
        Self::AwsSecretKey,
        Self::PrivateKey,
        Self::GithubToken,
        Self::SlackToken,
        Self::SlackWebhook,
        Self::StripeKey,
        Self::GoogleApiKey,
        Self::OpenaiApiKey,
        Self::AnthropicApiKey,
        Self::GitlabToken,
        Self::SendgridKey,
        Self::NpmToken,
        Self::Password,
    ];

    /// Name in events and metrics (`data_type`).
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Email => "email",
            Self::Phone => "phone",
            Self::CreditCard => "credit_card",
            Self::UsSsn => "us_ssn",
            Self::Iban => "iban",
            Self::IpAddress => "ip_address",
            Self::DateOfBirth => "date_of_birth",
            Self::PersonName => "person_name",
            Self::StreetAddress => "street_address",
            Self::Jwt => "jwt",
            Self::AwsAccessKey => "aws_access_key",
            Self::AwsSecretKey => "aws_secret_key",
            Self::PrivateKey => "private_key",
            Self::GithubToken => "github_token",
            Self::SlackToken => "slack_token",
            Self::SlackWebhook => "slack_webhook",
            Self::StripeKey => "stripe_key",
            Self::GoogleApiKey => "google_api_key",
            Self::OpenaiApiKey => "openai_api_key",
            Self::AnthropicApiKey => "anthropic_api_key",
            Self::GitlabToken => "gitlab_token",
            Self::SendgridKey => "sendgrid_key",
            Self::NpmToken => "npm_token",
            Self::Password => "password",
        }
    }

    /// Whether this is a secret (credential) rather than personal data.
    #[must_use]
    pub const fn is_secret(self) -> bool {
        !matches!(
            self,
            Self::Email
                | Self::Phone
                | Self::CreditCard
                | Self::UsSsn
                | Self::Iban
                | Self::IpAddress
                | Self::DateOfBirth
                | Self::PersonName
                | Self::StreetAddress
        )
    }

    /// Personal data whose leak is directly exploitable (fraud, identity theft).
    #[must_use]
    pub const fn is_sensitive(self) -> bool {
        matches!(self, Self::CreditCard | Self::UsSsn | Self::Iban)
    }
}

/// A typed value found at `start..end` of the scanned text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hit {
    pub data_type: DataType,
    pub start: usize,
    pub end: usize,
}

/// Regions tried for numbers in phone fields written without `+`: the largest API markets.
const COMMON_REGIONS: &[phonenumber::country::Id] = {
    use phonenumber::country::Id::*;
    &[
        US, GB, DE, FR, IN, BR, CA, AU, ES, IT, NL, MX, JP, CH, SE, BE, AT, IE, PL, PT,
    ]
};

/// Finds and validates personal data and secrets.
#[derive(Debug)]
pub struct Detector {
    scanner: Scanner,
    regions: Vec<phonenumber::country::Id>,
}

impl Default for Detector {
    fn default() -> Self {
        Self::new(&[phonenumber::country::Id::US])
    }
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

impl Detector {
    /// A detector reading phone numbers without `+` in `regions`, in order.
    #[must_use]
    pub fn new(regions: &[phonenumber::country::Id]) -> Self {
        Self {
            scanner: Scanner::new(),
            regions: regions.to_vec(),
        }
    }

    /// Candidates in `text` (not yet validated).
    pub fn candidates(&self, text: &[u8], out: &mut Vec<Candidate>) {
        self.scanner.scan(text, out);
    }

    /// Every pattern-detected hit in `text`, all of it under one field with `hints`.
    pub fn scan_value(&self, text: &[u8], hints: &Hints, out: &mut Vec<Hit>) {
        let mut candidates = Vec::new();
        self.scanner.scan(text, &mut candidates);
        for c in candidates {
            if let Some(t) = self.classify(&c, text, hints) {
                out.push(Hit {
                    data_type: t,
                    start: c.start,
                    end: c.end,
                });
            }
        }
    }

    /// Types that only the field's name reveals, for a whole scalar `value`: birth dates,
    /// names, addresses, passwords, AWS secret keys.
    #[must_use]
    pub fn context_value(&self, value: &str, hints: &Hints) -> Option<DataType> {
        let v = value.trim();
        if v.is_empty() {
            return None;
        }
        if hints.birth_date && validate::birth_date(v) {
            return Some(DataType::DateOfBirth);
        }
        if hints.person_name && validate::person_name(v) {
            return Some(DataType::PersonName);
        }
        if hints.street_address && validate::street_address(v) {
            return Some(DataType::StreetAddress);
        }
        if hints.aws_secret
            && v.len() == 40
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'/' || b == b'+')
        {
            return Some(DataType::AwsSecretKey);
        }
        if hints.password
            && v.len() <= 256
            && !v.bytes().all(|b| b == b'*' || b == b'x' || b == b'X')
        {
            return Some(DataType::Password);
        }
        None
    }

    /// What candidate `c` of `text` is, if anything.
    #[must_use]
    pub fn classify(&self, c: &Candidate, text: &[u8], hints: &Hints) -> Option<DataType> {
        let s = &text[c.start..c.end];
        let before = c.start.checked_sub(1).map(|i| text[i]);
        let after = text.get(c.end).copied();
        let bounded = || !before.is_some_and(is_word) && !after.is_some_and(is_word);
        match c.shape {
            Shape::Token(DataType::PrivateKey) => Some(DataType::PrivateKey),
            Shape::Token(t) => bounded().then_some(t),
            Shape::Jwt => (bounded() && jwt(s)).then_some(DataType::Jwt),
            Shape::Email => {
                let local_cont =
                    before.is_some_and(|b| b.is_ascii_alphanumeric() || b"._%+-".contains(&b));
                let text = std::str::from_utf8(s).ok()?;
                (!local_cont
                    && !after.is_some_and(|b| b == b'-' || is_word(b))
                    && validate::email(text))
                .then_some(DataType::Email)
            }
            Shape::Iban => {
                let text = std::str::from_utf8(s).ok()?;
                (bounded() && validate::iban(text)).then_some(DataType::Iban)
            }
            Shape::Ipv6 => {
                if before.is_some_and(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
                    || after.is_some_and(|b| b.is_ascii_hexdigit() || b == b':')
                    || hints.version
                {
                    return None;
                }
                let text = std::str::from_utf8(s).ok()?.trim_end_matches('.');
                let ip: Ipv6Addr = text.parse().ok()?;
                validate::public_ipv6(ip).then_some(DataType::IpAddress)
            }
            Shape::Number => self.number(s, &text[..c.start], &text[c.end..], hints),
        }
    }

    fn number(&self, s: &[u8], prefix: &[u8], rest: &[u8], hints: &Hints) -> Option<DataType> {
        let before = prefix.last().copied();
        let after = rest.first().copied();
        if before.is_some_and(|b| is_word(b) || b == b'.' || b == b'-' || b == b'+') {
            return None;
        }
        let extension = extension_len(rest);
        if extension == 0
            && after.is_some_and(|b| {
                is_word(b) || (b == b'.' && rest.get(1).is_some_and(u8::is_ascii_digit))
            })
        {
            return None;
        }
        let text = std::str::from_utf8(s).ok()?;
        let digits: Vec<u8> = s.iter().copied().filter(u8::is_ascii_digit).collect();
        let groups: Vec<&str> = text
            .split(['.', '-', ' ', '/', '(', ')'])
            .filter(|g| !g.is_empty())
            .collect();

        // Dotted quads: IPv4, unless a version string (rv:1.9.0.1, Chrome/1.2.3.4).
        if s.iter().all(|b| b.is_ascii_digit() || *b == b'.') && groups.len() >= 4 {
            let ip: Ipv4Addr = text.parse().ok()?;
            let versioned = hints.version
                || before.is_some_and(|b| matches!(b, b'/' | b':' | b'v' | b'V'))
                || follows_version_word(prefix);
            return (!versioned && validate::public_ipv4(ip)).then_some(DataType::IpAddress);
        }
        if is_date_like(&groups) {
            return None;
        }
        // SSN: 3-2-4 with one kind of separator.
        let sizes: Vec<usize> = groups.iter().map(|g| g.len()).collect();
        if sizes == [3, 2, 4]
            && (text.contains('-') ^ text.contains(' '))
            && !text.contains(['.', '('])
        {
            return validate::us_ssn(&digits).then_some(DataType::UsSsn);
        }
        if hints.not_personal_number {
            return None;
        }
        let card_separators = s
            .iter()
            .all(|b| b.is_ascii_digit() || *b == b' ' || *b == b'-')
            && !s.starts_with(b"+");
        // Short card lengths (12-13 digits: Maestro, old Visa) are common id lengths too: alone
        // they count only in a card field, or written in groups, or after the word "card".
        let short = digits.len() == 12 || (digits.len() == 13 && digits[0] != b'4');
        let card_context =
            hints.card || s.contains(&b' ') || s.contains(&b'-') || mentions_card(prefix);
        if card_separators
            && (12..=19).contains(&digits.len())
            && (!short || card_context)
            && validate::credit_card(&digits)
        {
            return Some(DataType::CreditCard);
        }
        if digits.len() == 9 && groups.len() == 1 && hints.ssn {
            return validate::us_ssn(&digits).then_some(DataType::UsSsn);
        }
        let phone_shaped = s.starts_with(b"+")
            || s.starts_with(b"00")
            || s.contains(&b'(')
            || (groups.len() >= 3 && groups.iter().all(|g| g.len() <= 5))
            || hints.phone;
        if phone_shaped {
            let end = s.len();
            let mut candidate = text.to_owned();
            if extension > 0 {
                candidate.push_str(std::str::from_utf8(&rest[..extension]).unwrap_or(""));
            }
            let _ = end;
            if validate::phone(&candidate, &self.regions) {
                return Some(DataType::Phone);
            }
            // A phone field with a number in a national format that starts with a trunk prefix
            // (`020 7946 0958`, `06 12 34 56 78`): try the common countries. NANP numbers never
            // start with 0, so `(123) 456-7890` stays invalid.
            let trunk =
                candidate.trim_start_matches('(').starts_with('0') && !candidate.starts_with("00");
            if hints.phone && trunk && validate::phone(&candidate, COMMON_REGIONS) {
                return Some(DataType::Phone);
            }
        }
        None
    }
}

/// Whether the words just before a number name it a card (`card: 6304…`, `PAN 5018…`).
fn mentions_card(prefix: &[u8]) -> bool {
    let tail = &prefix[prefix.len().saturating_sub(24)..];
    let lower = String::from_utf8_lossy(tail).to_ascii_lowercase();
    lower.contains("card")
        || lower.contains("pan")
        || lower.contains("cc ")
        || lower.contains("cc:")
}

/// Whether the words just before a number name it a version (`version 1.2.3.4`, `ver: 2.0.1.7`).
fn follows_version_word(prefix: &[u8]) -> bool {
    let tail = &prefix[prefix.len().saturating_sub(12)..];
    let lower: Vec<u8> = tail.iter().map(u8::to_ascii_lowercase).collect();
    let trimmed = lower.trim_ascii_end();
    let trimmed = trimmed
        .strip_suffix(b":")
        .or_else(|| trimmed.strip_suffix(b"="))
        .unwrap_or(trimmed)
        .trim_ascii_end();
    trimmed.ends_with(b"version")
        || trimmed.ends_with(b"ver")
        || trimmed.ends_with(b"release")
        || trimmed.ends_with(b"build")
}

/// Length of a phone extension right after a number: ` x123`, `x123`, ` ext. 123`.
fn extension_len(rest: &[u8]) -> usize {
    let mut i = 0;
    if rest.first() == Some(&b' ') {
        i = 1;
    }
    let lower: Vec<u8> = rest
        .iter()
        .take(i + 6)
        .map(u8::to_ascii_lowercase)
        .collect();
    let marker = if lower[i..].starts_with(b"ext.") {
        4
    } else if lower[i..].starts_with(b"ext") {
        3
    } else if lower[i..].starts_with(b"x") {
        1
    } else {
        return 0;
    };
    let mut j = i + marker;
    if rest.get(j) == Some(&b' ') {
        j += 1;
    }
    let digits = rest[j.min(rest.len())..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    if digits == 0 || digits > 6 || rest.get(j + digits).is_some_and(|b| is_word(*b)) {
        return 0;
    }
    j + digits
}

/// `2024-01-31`, `31/01/2024`, `01.31.2024`: dates are birth dates only by context.
fn is_date_like(groups: &[&str]) -> bool {
    let sizes: Vec<usize> = groups.iter().take(3).map(|g| g.len()).collect();
    let num = |i: usize| {
        groups
            .get(i)
            .and_then(|g| g.parse::<u32>().ok())
            .unwrap_or(0)
    };
    match sizes.as_slice() {
        [4, 1 | 2, 1 | 2] => {
            (1800..=2200).contains(&num(0))
                && (1..=12).contains(&num(1))
                && (1..=31).contains(&num(2))
        }
        [1 | 2, 1 | 2, 4] => {
            (1800..=2200).contains(&num(2))
                && (1..=31).contains(&num(0))
                && (1..=31).contains(&num(1))
        }
        _ => false,
    }
}

/// A JWT: header and payload are base64url JSON objects, and the header names an algorithm.
#[must_use]
pub fn jwt(token: &[u8]) -> bool {
    let mut parts = token.split(|&b| b == b'.');
    let (Some(header), Some(payload)) = (parts.next(), parts.next()) else {
        return false;
    };
    let decode = |p: &[u8]| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(p)
            .ok()
    };
    let (Some(h), Some(p)) = (decode(header), decode(payload)) else {
        return false;
    };
    let header: Option<serde_json::Map<String, serde_json::Value>> =
        serde_json::from_slice(&h).ok();
    let payload_ok =
        serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&p).is_ok();
    payload_ok && header.is_some_and(|h| h.contains_key("alg"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(text: &str, hints: &Hints) -> Vec<(DataType, String)> {
        let mut out = Vec::new();
        Detector::default().scan_value(text.as_bytes(), hints, &mut out);
        out.iter()
            .map(|h| (h.data_type, text[h.start..h.end].to_owned()))
            .collect()
    }

    fn types(text: &str) -> Vec<DataType> {
        found(text, &Hints::default())
            .into_iter()
            .map(|(t, _)| t)
            .collect()
    }

    #[test]
    fn pattern_types_in_text() {
        use DataType::*;
        assert_eq!(types("mail lucy.smith@example.com now"), vec![Email]);
        assert_eq!(types("card 4111-1111-1111-1111."), vec![CreditCard]);
        assert_eq!(types("ssn 536-22-5041"), vec![UsSsn]);
        assert_eq!(
            types("call (415) 555-2671 x12 or +44 20 7946 0958"),
            vec![Phone, Phone]
        );
        assert_eq!(
            types("from 81.2.69.142 and 2a00:1450:4001:81a::200e"),
            vec![IpAddress, IpAddress]
        );
        assert_eq!(types("iban DE89 3704 0044 0532 0130 00"), vec![Iban]);
        assert_eq!(types("key AKIAIOSFODNN7EXAMPLE"), vec![AwsAccessKey]);
        let jwt = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4ifQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";
        assert_eq!(types(&format!("token={jwt}")), vec![Jwt]);
    }

    #[test]
    fn hard_negatives() {
        for text in [
            "id 123e4567-e89b-12d3-a456-426614174000",
            "at 2024-01-31T10:20:30.123456Z",
            "updated 2024-05-06 10:12:16",
            "invoice 563821904172",
            "epoch 1700000000000",
            "order 4111111111111112",
            "ssn 000-12-3456 666-12-3456 912-34-5678",
            "Mozilla/5.0 (X11; rv:1.9.6.20) Gecko Chrome/120.0.6099.109",
            "version 1.2.3.4",
            "masked **** **** **** 1111 and 411111******1111",
            "last4 1111",
            "sha256 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            "blob aGVsbG8gd29ybGQgdGhpcyBpcyBiYXNlNjQ=",
            "price 1,234.56 and 12.50",
            "private 10.0.0.1 and 192.168.1.1 and 127.0.0.1",
            "jwt-like eyJub3QiOiJqc29u.eyJhbHNvIjoibm90.abc",
            "10:20:30 12:34",
            "mac 00:1A:2B:3C:4D:5E",
        ] {
            assert_eq!(types(text), vec![], "{text}");
        }
        let mut versioned = Hints::default();
        versioned.version = true;
        assert_eq!(found("8.8.8.8", &versioned), vec![]);
        let mut order = Hints::default();
        order.not_personal_number = true;
        assert_eq!(found("4111111111111111", &order), vec![]);
    }

    #[test]
    fn context_types() {
        let d = Detector::default();
        let h = |k: &str, p: Option<&str>| keys::hints(k.as_bytes(), p.map(str::as_bytes));
        assert_eq!(
            d.context_value("1980-03-05", &h("dob", None)),
            Some(DataType::DateOfBirth)
        );
        assert_eq!(d.context_value("1980-03-05", &h("created_at", None)), None);
        assert_eq!(
            d.context_value("Lucy Smith", &h("full_name", None)),
            Some(DataType::PersonName)
        );
        assert_eq!(
            d.context_value("Lucy", &h("name", Some("customer"))),
            Some(DataType::PersonName)
        );
        assert_eq!(
            d.context_value("Widget Pro", &h("name", Some("product"))),
            None
        );
        assert_eq!(
            d.context_value("123 Main St", &h("address", None)),
            Some(DataType::StreetAddress)
        );
        assert_eq!(
            d.context_value("hunter2", &h("password", None)),
            Some(DataType::Password)
        );
        assert_eq!(d.context_value("********", &h("password", None)), None);
        let mut bare = Vec::new();
        d.scan_value(b"4155552671", &h("mobile", None), &mut bare);
        assert_eq!(
            bare.iter().map(|x| x.data_type).collect::<Vec<_>>(),
            vec![DataType::Phone]
        );
        let mut ssn = Vec::new();
        d.scan_value(b"536225041", &h("ssn", None), &mut ssn);
        assert_eq!(
            ssn.iter().map(|x| x.data_type).collect::<Vec<_>>(),
            vec![DataType::UsSsn]
        );
    }
}
