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
        // libphonenumber's metadata loads on first use (about 0.1 s): here, at start-up, not
        // in the middle of the traffic that first carries a phone number.
        let _ = validate::phone("+14155552671", regions);
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
        // One pass over the bytes, no allocation: candidates are dense in API traffic, and most
        // are timestamps, amounts and ids to reject quickly.
        let shape = NumberShape::of(s)?;
        let digits = shape.digits();

        if shape.separators == 0 {
            // Plain digits: a card (Luhn), or by field name a phone or an SSN.
            if (12..=19).contains(&digits.len()) && !hints.not_personal_number {
                let short = digits.len() == 12 || (digits.len() == 13 && digits[0] != b'4');
                if (!short || hints.card || mentions_card(prefix)) && validate::credit_card(digits)
                {
                    return Some(DataType::CreditCard);
                }
            }
            if digits.len() == 9 && hints.ssn {
                return validate::us_ssn(digits).then_some(DataType::UsSsn);
            }
            // E.164 (`+33612345678`) says it is a phone by itself; bare digits need the field,
            // or in free text a phone word just before.
            if hints.not_personal_number
                || !(hints.phone || s.starts_with(b"+") || mentions_phone(prefix))
            {
                return None;
            }
        } else {
            // Dotted quads: IPv4, unless a version string (rv:1.9.0.1, Chrome/1.2.3.4).
            if shape.only_dots && shape.groups >= 4 {
                let ip: Ipv4Addr = std::str::from_utf8(s).ok()?.parse().ok()?;
                let versioned = hints.version
                    || before.is_some_and(|b| matches!(b, b'/' | b':' | b'v' | b'V'))
                    || follows_version_word(prefix);
                return (!versioned && validate::public_ipv4(ip)).then_some(DataType::IpAddress);
            }
            if shape.date_like() {
                return None;
            }
            // SSN: 3-2-4 with one kind of separator.
            if shape.sizes() == [3, 2, 4]
                && (shape.dashes == 2) != (shape.spaces == 2)
                && shape.dashes + shape.spaces == 2
            {
                return validate::us_ssn(digits).then_some(DataType::UsSsn);
            }
            if hints.not_personal_number {
                return None;
            }
            if shape.card_separators
                && !s.starts_with(b"+")
                && (12..=19).contains(&digits.len())
                && validate::credit_card(digits)
            {
                return Some(DataType::CreditCard);
            }
        }
        let groups_ok = shape.groups >= 3 && shape.sizes().iter().all(|g| *g <= 5);
        let phone_shaped = s.starts_with(b"+")
            || s.starts_with(b"00")
            || s.contains(&b'(')
            || groups_ok
            || hints.phone;
        if !phone_shaped || !(7..=15).contains(&digits.len()) {
            return None;
        }
        let mut candidate = std::str::from_utf8(s).ok()?.to_owned();
        if extension > 0 {
            candidate.push_str(std::str::from_utf8(&rest[..extension]).unwrap_or(""));
        }
        if validate::phone(&candidate, &self.regions) {
            return Some(DataType::Phone);
        }
        // A phone field with a number in another country's national format: with a trunk
        // prefix (`020 7946 0958`, `06 12 34 56 78`) or without one (Spain, Italy: `612 34 66
        // 00`): try the common countries. Not for what is written the NANP way (3-3-4 digits),
        // which the configured regions already judged: `(123) 456-7890` is valid in the UK's
        // plan but is a placeholder; nor for short local numbers.
        let nanp_shaped = shape.sizes() == [3, 3, 4] && digits[0] != b'0';
        (hints.phone
            && !nanp_shaped
            && digits.len() >= 8
            && !candidate.starts_with('+')
            && validate::phone(&candidate, COMMON_REGIONS))
        .then_some(DataType::Phone)
    }
}

/// The digits and digit groups of a number-like candidate, read in one pass.
struct NumberShape {
    digit_buf: [u8; 19],
    n_digits: usize,
    /// Digit count of each group (separated by any of `.-()/` or space), up to 12 groups.
    group_buf: [u8; 12],
    groups: usize,
    separators: usize,
    dashes: usize,
    spaces: usize,
    only_dots: bool,
    /// Separators are spaces or dashes only (how card numbers are written).
    card_separators: bool,
}

impl NumberShape {
    /// `None` when longer than any card, phone or SSN (19 digits) or in more than 12 groups.
    fn of(s: &[u8]) -> Option<Self> {
        let mut sh = Self {
            digit_buf: [0; 19],
            n_digits: 0,
            group_buf: [0; 12],
            groups: 0,
            separators: 0,
            dashes: 0,
            spaces: 0,
            only_dots: true,
            card_separators: true,
        };
        let mut in_group = false;
        for &b in s {
            if b.is_ascii_digit() {
                if sh.n_digits == sh.digit_buf.len() {
                    return None;
                }
                sh.digit_buf[sh.n_digits] = b;
                sh.n_digits += 1;
                if !in_group {
                    if sh.groups == sh.group_buf.len() {
                        return None;
                    }
                    sh.groups += 1;
                    in_group = true;
                }
                sh.group_buf[sh.groups - 1] += 1;
            } else {
                in_group = false;
                if b != b'+' {
                    sh.separators += 1;
                }
                sh.dashes += usize::from(b == b'-');
                sh.spaces += usize::from(b == b' ');
                sh.only_dots &= b == b'.';
                sh.card_separators &= b == b' ' || b == b'-';
            }
        }
        Some(sh)
    }

    fn digits(&self) -> &[u8] {
        &self.digit_buf[..self.n_digits]
    }

    fn sizes(&self) -> &[u8] {
        &self.group_buf[..self.groups]
    }

    /// Value of group `i` (its digits, as a number).
    fn group_value(&self, i: usize) -> u32 {
        let from: usize = self.group_buf[..i].iter().map(|g| usize::from(*g)).sum();
        let len = usize::from(self.group_buf[i]);
        self.digit_buf[from..from + len]
            .iter()
            .fold(0, |v, d| v * 10 + u32::from(d - b'0'))
    }

    /// `2024-01-31`, `31/01/2024`, `01.31.2024`, also followed by a time (`2024-01-31 10`):
    /// dates are birth dates only by context, never phone numbers.
    fn date_like(&self) -> bool {
        if self.groups < 3 {
            return false;
        }
        let year = 1800..=2200;
        match (self.group_buf[0], self.group_buf[1], self.group_buf[2]) {
            (4, 1 | 2, 1 | 2) => {
                year.contains(&self.group_value(0))
                    && (1..=12).contains(&self.group_value(1))
                    && (1..=31).contains(&self.group_value(2))
            }
            (1 | 2, 1 | 2, 4) => {
                year.contains(&self.group_value(2))
                    && (1..=31).contains(&self.group_value(0))
                    && (1..=31).contains(&self.group_value(1))
            }
            _ => false,
        }
    }
}

/// Whether one of `words` (lower-case) is in the last `WINDOW` bytes before a number, in any
/// case. No allocation: this runs for number candidates in free text.
fn mentions<const WINDOW: usize>(prefix: &[u8], words: &[&[u8]]) -> bool {
    let tail = &prefix[prefix.len().saturating_sub(WINDOW)..];
    let mut buf = [0u8; WINDOW];
    let lower = &mut buf[..tail.len()];
    lower.copy_from_slice(tail);
    lower.make_ascii_lowercase();
    words
        .iter()
        .any(|w| memchr::memmem::find(lower, w).is_some())
}

/// Whether the words just before a number name it a card (`card: 6304…`, `PAN 5018…`).
fn mentions_card(prefix: &[u8]) -> bool {
    mentions::<24>(prefix, &[b"card", b"pan", b"cc ", b"cc:"])
}

/// Whether the words just before a number name it a phone number (`phone: 4155552671`).
fn mentions_phone(prefix: &[u8]) -> bool {
    mentions::<16>(prefix, &[b"phone", b"mobile", b"tel:", b"tel ", b"cell"])
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
    // On the stack: this runs for nearly every number in every body.
    let mut buf = [0u8; 7];
    let n = rest.len().min(i + 6);
    let lower = &mut buf[..n];
    lower.copy_from_slice(&rest[..n]);
    lower.make_ascii_lowercase();
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

    #[test]
    fn phone_extensions() {
        for (rest, len) in [
            (" x123", 5),
            ("x12", 3),
            (" ext. 4567,", 10),
            ("EXT9", 4),
            (" Ext 12", 7),
            (" x1234567", 0),
            ("x12a", 0),
            ("", 0),
            (" ", 0),
            ("\",", 0),
            (" extra", 0),
        ] {
            assert_eq!(extension_len(rest.as_bytes()), len, "{rest:?}");
        }
    }

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
        let versioned = Hints {
            version: true,
            ..Hints::default()
        };
        assert_eq!(found("8.8.8.8", &versioned), vec![]);
        let order = Hints {
            not_personal_number: true,
            ..Hints::default()
        };
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
