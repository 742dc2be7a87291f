//! Validators: a candidate is personal data only if its checksum, registry or format rules
//! hold. Each returns false on anything doubtful: precision first, then recall.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Luhn checksum over ASCII digits.
#[must_use]
pub fn luhn(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, d) in digits.iter().rev().enumerate() {
        let mut v = u32::from(d - b'0');
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum.is_multiple_of(10)
}

fn prefix_in(digits: &[u8], len: usize, lo: u32, hi: u32) -> bool {
    digits.len() >= len
        && std::str::from_utf8(&digits[..len])
            .ok()
            .and_then(|s| s.parse::<u32>().ok())
            .is_some_and(|p| (lo..=hi).contains(&p))
}

/// Whether a digit string has the issuer prefix and length of a payment card brand: Visa,
/// Mastercard (51-55, 2221-2720), Amex, Discover, JCB (incl. 15-digit 1800/2131), Diners,
/// Maestro, UnionPay, Mir, RuPay, Verve, UATP, Troy.
#[must_use]
pub fn card_brand_matches(d: &[u8]) -> bool {
    let n = d.len();
    let p = |len, lo, hi| prefix_in(d, len, lo, hi);
    (d.first() == Some(&b'4') && matches!(n, 13 | 16 | 19))
        || ((p(2, 51, 55) || p(4, 2221, 2720)) && n == 16)
        || ((p(2, 34, 34) || p(2, 37, 37)) && n == 15)
        || ((p(4, 6011, 6011) || p(3, 644, 649) || p(2, 65, 65) || p(6, 622_126, 622_925))
            && (16..=19).contains(&n))
        || (p(2, 62, 62) && (16..=19).contains(&n))
        || (p(2, 35, 35) && (16..=19).contains(&n))
        || ((p(4, 2131, 2131) || p(4, 1800, 1800)) && n == 15)
        || ((p(3, 300, 305) || p(4, 3095, 3095) || p(2, 36, 36) || p(2, 38, 39))
            && (14..=19).contains(&n))
        || ((p(2, 50, 50) || p(2, 56, 69) || p(4, 604, 604) && d[0] == b'0')
            && (12..=19).contains(&n))
        || (p(4, 2200, 2204) && (16..=19).contains(&n))
        || ((p(2, 60, 60) || p(2, 81, 82) || p(3, 508, 508)) && n == 16)
        || (d.first() == Some(&b'1') && n == 15)
        || (p(4, 9792, 9792) && n == 16)
}

/// A payment card number: 12-19 digits, brand prefix and length, Luhn, not one repeated digit.
#[must_use]
pub fn credit_card(digits: &[u8]) -> bool {
    (12..=19).contains(&digits.len())
        && digits.iter().all(u8::is_ascii_digit)
        && digits.iter().any(|&b| b != digits[0])
        && card_brand_matches(digits)
        && luhn(digits)
}

/// A US Social Security number by the SSA's rules: area not 000, 666 or 9xx, group not 00,
/// serial not 0000, and not one of the numbers published as examples.
#[must_use]
pub fn us_ssn(digits: &[u8]) -> bool {
    if digits.len() != 9 || !digits.iter().all(u8::is_ascii_digit) {
        return false;
    }
    let num = |r: std::ops::Range<usize>| {
        digits[r]
            .iter()
            .fold(0u32, |a, d| a * 10 + u32::from(d - b'0'))
    };
    let (area, group, serial) = (num(0..3), num(3..5), num(5..9));
    const SAMPLES: [&[u8]; 4] = [b"078051120", b"219099999", b"123456789", b"457555462"];
    area != 0
        && area != 666
        && area < 900
        && group != 0
        && serial != 0
        && !SAMPLES.contains(&digits)
        && digits.iter().any(|&b| b != digits[0])
}

/// An IBAN: per-country length and format, and the ISO 7064 mod-97 check.
#[must_use]
pub fn iban(text: &str) -> bool {
    let compact: String = text
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_uppercase();
    compact.len() >= 15 && compact.parse::<iban::Iban>().is_ok()
}

/// An email address whose domain ends in a public suffix (offline list compiled in).
#[must_use]
pub fn email(text: &str) -> bool {
    let Some((local, domain)) = text.rsplit_once('@') else {
        return false;
    };
    if local.is_empty() || local.len() > 64 || domain.len() > 253 {
        return false;
    }
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return false;
    }
    // An SSH remote such as git@github.com is not a mailbox.
    if local == "git" {
        return false;
    }
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    if domain.parse::<IpAddr>().is_ok() || !domain.contains('.') {
        return false;
    }
    if domain
        .split('.')
        .any(|l| l.is_empty() || l.len() > 63 || l.starts_with('-') || l.ends_with('-'))
    {
        return false;
    }
    psl::suffix(domain.as_bytes())
        .is_some_and(|s| s.is_known() && s.as_bytes() != domain.as_bytes())
}

/// A public (globally routed) IPv4 address: not private, loopback, link-local, CGNAT,
/// documentation, benchmarking, multicast or reserved.
#[must_use]
pub fn public_ipv4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    !(ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_multicast()
        || ip.is_unspecified()
        || o[0] == 0
        || (o[0] == 100 && (64..=127).contains(&o[1]))
        || (o[0] == 192 && o[1] == 0 && o[2] == 0)
        || (o[0] == 198 && (18..=19).contains(&o[1]))
        || o[0] >= 240)
}

/// A public IPv6 address: outside every special-purpose range (loopback, unspecified, IPv4
/// translation, discard, IETF protocol assignments, documentation, unique local, link-local,
/// site-local, multicast); an IPv4-mapped address is public if its IPv4 address is.
#[must_use]
pub fn public_ipv6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return public_ipv4(v4);
    }
    let s = ip.segments();
    !(ip.is_loopback()
        || ip.is_unspecified()
        || (s[0] == 0x64 && s[1] == 0xff9b)
        || (s[0] == 0x100 && s[1] == 0 && s[2] == 0 && s[3] == 0)
        || (s[0] == 0x2001 && s[1] < 0x200)
        || (s[0] == 0x2001 && s[1] == 0x0db8)
        || (s[0] & 0xfe00) == 0xfc00
        || (s[0] & 0xffc0) == 0xfe80
        || (s[0] & 0xffc0) == 0xfec0
        || (s[0] & 0xff00) == 0xff00
        || s[0] == 0)
}

/// Date parts of a plausible birth date: year 1900..=2030, a real month and day.
#[must_use]
pub fn birth_date(text: &str) -> bool {
    let t = text.trim();
    // Timestamps: keep the date part.
    let t = t
        .split(['T', ' '])
        .next()
        .filter(|d| d.len() >= 8)
        .unwrap_or(t);
    let ymd = parse_numeric_date(t).or_else(|| parse_worded_date(text.trim()));
    ymd.is_some_and(|(y, m, d)| (1900..=2030).contains(&y) && valid_day(y, m, d))
}

fn valid_day(y: u32, m: u32, d: u32) -> bool {
    let days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400) => 29,
        2 => 28,
        _ => return false,
    };
    (1..=days).contains(&d)
}

/// `1980-03-05`, `1980/03/05`, `03/05/1980`, `05.03.1980`, `19800305`.
fn parse_numeric_date(t: &str) -> Option<(u32, u32, u32)> {
    if t.len() == 8 && t.bytes().all(|b| b.is_ascii_digit()) {
        return Some((
            t[..4].parse().ok()?,
            t[4..6].parse().ok()?,
            t[6..].parse().ok()?,
        ));
    }
    let parts: Vec<&str> = t.split(['-', '/', '.']).collect();
    if parts.len() != 3
        || parts
            .iter()
            .any(|p| p.is_empty() || p.len() > 4 || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    let n: Vec<u32> = parts.iter().filter_map(|p| p.parse().ok()).collect();
    if n.len() != 3 {
        return None;
    }
    if parts[0].len() == 4 {
        return Some((n[0], n[1], n[2]));
    }
    if parts[2].len() == 4 {
        // Month first (US) if it can be, else day first.
        return if n[0] <= 12 {
            Some((n[2], n[0], n[1]))
        } else {
            Some((n[2], n[1], n[0]))
        };
    }
    None
}

/// `March 5, 1980`, `5 March 1980`, `Mar 5 1980`.
fn parse_worded_date(t: &str) -> Option<(u32, u32, u32)> {
    const MONTHS: [&str; 12] = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    let words: Vec<String> = t
        .split([' ', ','])
        .filter(|w| !w.is_empty())
        .map(str::to_ascii_lowercase)
        .collect();
    if words.len() != 3 {
        return None;
    }
    let month = |w: &str| {
        MONTHS
            .iter()
            .position(|m| w.starts_with(m))
            .map(|i| i as u32 + 1)
    };
    let num = |w: &str| {
        w.trim_end_matches(|c: char| c.is_ascii_alphabetic())
            .parse::<u32>()
            .ok()
    };
    if let Some(m) = month(&words[0]) {
        return Some((num(&words[2])?, m, num(&words[1])?));
    }
    let m = month(&words[1])?;
    Some((num(&words[2])?, m, num(&words[0])?))
}

/// Words that fill name fields but are not names.
const NOT_NAMES: &[&str] = &[
    "null",
    "none",
    "nil",
    "n/a",
    "na",
    "unknown",
    "test",
    "true",
    "false",
    "admin",
    "user",
    "guest",
    "string",
    "example",
    "anonymous",
    "redacted",
    "undefined",
    "default",
    "customer",
    "name",
];

/// A person's name: 1 to 5 words of letters (any script), apostrophes, hyphens and dots.
#[must_use]
pub fn person_name(text: &str) -> bool {
    let t = text.trim();
    if !(2..=64).contains(&t.chars().count()) || NOT_NAMES.contains(&t.to_lowercase().as_str()) {
        return false;
    }
    let words: Vec<&str> = t.split_whitespace().collect();
    (1..=5).contains(&words.len())
        && words.iter().all(|w| {
            w.chars().next().is_some_and(char::is_alphabetic)
                && w.chars()
                    .all(|c| c.is_alphabetic() || matches!(c, '\'' | '-' | '.' | '’'))
        })
        && t.chars().filter(|c| c.is_alphabetic()).count() >= 2
}

/// Street suffixes: the USPS list (Publication 28, appendix C1, names and abbreviations) and
/// the street types of the European languages most API traffic is written in.
const STREET_WORDS: &[&str] = &[
    "alley",
    "aly",
    "anex",
    "annex",
    "arcade",
    "arc",
    "avenue",
    "ave",
    "av",
    "bayou",
    "beach",
    "bend",
    "bluff",
    "bluffs",
    "bottom",
    "boulevard",
    "blvd",
    "branch",
    "bridge",
    "brook",
    "brooks",
    "burg",
    "burgs",
    "bypass",
    "camp",
    "canyon",
    "cape",
    "causeway",
    "center",
    "centers",
    "circle",
    "cir",
    "circles",
    "cliff",
    "cliffs",
    "club",
    "common",
    "commons",
    "corner",
    "corners",
    "course",
    "court",
    "ct",
    "courts",
    "cove",
    "coves",
    "creek",
    "crescent",
    "cres",
    "crest",
    "crossing",
    "xing",
    "crossroad",
    "crossroads",
    "curve",
    "dale",
    "dam",
    "divide",
    "drive",
    "dr",
    "drives",
    "estate",
    "estates",
    "expressway",
    "expy",
    "extension",
    "ext",
    "extensions",
    "fall",
    "falls",
    "ferry",
    "field",
    "fields",
    "flat",
    "flats",
    "ford",
    "fords",
    "forest",
    "forge",
    "forges",
    "fork",
    "forks",
    "fort",
    "freeway",
    "fwy",
    "garden",
    "gardens",
    "gateway",
    "glen",
    "glens",
    "green",
    "greens",
    "grove",
    "groves",
    "harbor",
    "harbors",
    "haven",
    "heights",
    "hts",
    "highway",
    "hwy",
    "hill",
    "hills",
    "hollow",
    "inlet",
    "island",
    "islands",
    "isle",
    "junction",
    "junctions",
    "key",
    "keys",
    "knoll",
    "knolls",
    "lake",
    "lakes",
    "land",
    "landing",
    "lane",
    "ln",
    "light",
    "lights",
    "loaf",
    "lock",
    "locks",
    "lodge",
    "loop",
    "mall",
    "manor",
    "manors",
    "meadow",
    "meadows",
    "mews",
    "mill",
    "mills",
    "mission",
    "motorway",
    "mount",
    "mountain",
    "mountains",
    "neck",
    "orchard",
    "oval",
    "overpass",
    "park",
    "parks",
    "parkway",
    "pkwy",
    "parkways",
    "pass",
    "passage",
    "path",
    "pike",
    "pine",
    "pines",
    "place",
    "pl",
    "plain",
    "plains",
    "plaza",
    "plz",
    "point",
    "pt",
    "points",
    "port",
    "ports",
    "prairie",
    "radial",
    "ramp",
    "ranch",
    "rapid",
    "rapids",
    "rest",
    "ridge",
    "ridges",
    "river",
    "road",
    "rd",
    "roads",
    "route",
    "rte",
    "row",
    "rue",
    "run",
    "shoal",
    "shoals",
    "shore",
    "shores",
    "skyway",
    "spring",
    "springs",
    "spur",
    "spurs",
    "square",
    "sq",
    "squares",
    "station",
    "sta",
    "stravenue",
    "stream",
    "street",
    "st",
    "streets",
    "summit",
    "terrace",
    "ter",
    "throughway",
    "trace",
    "track",
    "trafficway",
    "trail",
    "trl",
    "tunnel",
    "turnpike",
    "tpke",
    "underpass",
    "union",
    "unions",
    "valley",
    "valleys",
    "via",
    "viaduct",
    "view",
    "views",
    "village",
    "villages",
    "ville",
    "vista",
    "walk",
    "walks",
    "wall",
    "way",
    "ways",
    "well",
    "wells",
    "close",
    "gate",
    // Continental Europe.
    "strasse",
    "straße",
    "str",
    "weg",
    "platz",
    "gasse",
    "allee",
    "ring",
    "damm",
    "ufer",
    "chemin",
    "boulevard",
    "allée",
    "impasse",
    "quai",
    "cours",
    "avenida",
    "calle",
    "carrer",
    "paseo",
    "plaza",
    "rua",
    "travessa",
    "piazza",
    "viale",
    "vicolo",
    "corso",
    "straat",
    "laan",
    "plein",
    "gracht",
];

/// Unit designators that may start an address line (USPS C2, and UK usage).
const UNIT_WORDS: &[&str] = &[
    "apt",
    "apartment",
    "suite",
    "ste",
    "unit",
    "flat",
    "studio",
    "floor",
    "fl",
    "room",
    "rm",
    "building",
    "bldg",
    "dept",
    "office",
    "po",
    "p.o.",
    "box",
    "lot",
    "space",
    "pier",
    "slip",
    "trailer",
    "hangar",
    "penthouse",
    "ph",
    "basement",
    "lobby",
    "rear",
    "front",
    "side",
];

/// A street address: letters and a house number, with the number first (`742 Evergreen
/// Terrace`), last (`Sontagstr. 22/65`), after a unit (`Flat 52 Sheila Courts`), or any number
/// with a street word; or, without a number, a street word (`rue de Chauvet`).
#[must_use]
pub fn street_address(text: &str) -> bool {
    let t = text.trim();
    let len = t.chars().count();
    if !(5..=200).contains(&len) || t.contains('@') || t.contains("://") {
        return false;
    }
    let letters = t.chars().filter(|c| c.is_alphabetic()).count();
    if letters < 3 {
        return false;
    }
    let words: Vec<String> = t
        .split(|c: char| c.is_whitespace() || c == ',' || c == '.' || c == '#')
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect();
    if words.len() < 2 {
        return false;
    }
    let number = |w: &str| {
        w.chars().next().is_some_and(|c| c.is_ascii_digit())
            && w.chars().filter(char::is_ascii_digit).count() <= 6
            && w.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '/' || c == '-')
    };
    let alphabetic = |w: &str| {
        w.chars()
            .all(|c| c.is_alphabetic() || c == '-' || c == '\'')
    };
    let compound = |w: &str| {
        [
            "straße", "strasse", "str", "weg", "platz", "gasse", "allee", "ring", "damm",
        ]
        .iter()
        .any(|s| w.chars().count() > s.chars().count() + 2 && w.ends_with(s))
    };
    let street_word = words
        .iter()
        .any(|w| STREET_WORDS.contains(&w.as_str()) || compound(w));
    let has_number = words.iter().any(|w| number(w));
    let first = number(&words[0]) && words[1].chars().any(char::is_alphabetic);
    let last =
        number(&words[words.len() - 1]) && words[..words.len() - 1].iter().all(|w| alphabetic(w));
    let unit = UNIT_WORDS.contains(&words[0].as_str()) && number(&words[1]) && words.len() >= 3;
    let unnumbered_street = !t.chars().any(|c| c.is_ascii_digit())
        && street_word
        && words.iter().all(|w| alphabetic(w))
        && words.len() <= 8;
    first || last || unit || (has_number && street_word) || unnumbered_street
}

/// A phone number valid for its country by libphonenumber's rules (the `phonenumber`
/// crate). Numbers without `+` are read in the `regions` given, in order.
#[must_use]
pub fn phone(text: &str, regions: &[phonenumber::country::Id]) -> bool {
    let mut t = strip_extension(text.trim()).to_owned();
    if let Some(rest) = t.strip_prefix("00") {
        t = format!("+{rest}");
    }
    let digits = t.bytes().filter(u8::is_ascii_digit).count();
    if !(7..=15).contains(&digits) {
        return false;
    }
    if t.starts_with('+') {
        return phonenumber::parse(None, &t).is_ok_and(|n| phonenumber::is_valid(&n));
    }
    regions
        .iter()
        .any(|r| phonenumber::parse(Some(*r), &t).is_ok_and(|n| phonenumber::is_valid(&n)))
}

/// `415-555-0123 x1234` -> `415-555-0123`.
#[must_use]
pub fn strip_extension(t: &str) -> &str {
    let lower = t.as_bytes();
    for (i, w) in lower.windows(2).enumerate().rev() {
        let at = |j: usize| lower.get(j).copied().unwrap_or(0);
        let is_x = (w[0] == b'x' || w[0] == b'X') && w[1].is_ascii_digit();
        let is_ext =
            (at(i) == b'e' || at(i) == b'E') && t[i..].to_ascii_lowercase().starts_with("ext");
        let is_hash = w[0] == b'#';
        if is_x || is_ext || is_hash {
            return t[..i].trim_end();
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use phonenumber::country::Id;

    use super::*;

    #[test]
    fn cards_of_every_brand_and_length() {
        for card in [
            "4111111111111111",
            "4222000000006",
            "4716000000000000007",
            "5555555555554444",
            "2221000000000009",
            "2720000000000005",
            "378282246310005",
            "6011111111111117",
            "3530111333300000",
            "213100000000001",
            "180000000000002",
            "30569309025904",
            "6304000000000000",
            "060400000000",
            "6759000000000000",
            "6200000000000005",
            "2200000000000004",
        ] {
            assert!(credit_card(card.as_bytes()), "{card}");
        }
        for not in [
            "4111111111111112",
            "1234567812345678",
            "0000000000000000",
            "7111111111111113",
            "35301113333000",
            "490154203237518",
        ] {
            assert!(!credit_card(not.as_bytes()), "{not}");
        }
    }

    #[test]
    fn ssn_rules() {
        assert!(us_ssn(b"536225041"));
        for bad in [
            "000123456",
            "666123456",
            "912345678",
            "536005041",
            "536220000",
            "078051120",
            "123456789",
            "111111111",
        ] {
            assert!(!us_ssn(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn ibans() {
        assert!(iban("DE89 3704 0044 0532 0130 00"));
        assert!(iban("GB82WEST12345698765432"));
        assert!(iban("fr1420041010050500013m02606"));
        assert!(!iban("DE89 3704 0044 0532 0130 01"));
        assert!(!iban("DE89370400440532013"));
        assert!(!iban("XX89370400440532013000"));
    }

    #[test]
    fn emails() {
        assert!(email("lucy.smith@example.com"));
        assert!(email("a+tag@mail.co.uk"));
        assert!(email("x@sub.domain.io"));
        for bad in [
            "logo@2x.png",
            "a@localhost",
            "user@host.invalid",
            "git@github.com",
            "a@b",
            ".a@b.com",
            "a@1.2.3.4",
            "a@com",
        ] {
            assert!(!email(bad), "{bad}");
        }
    }

    #[test]
    fn ips() {
        assert!(public_ipv4("8.8.8.8".parse().expect("ip")));
        assert!(public_ipv4("81.2.69.142".parse().expect("ip")));
        for private in [
            "10.1.2.3",
            "192.168.1.1",
            "127.0.0.1",
            "100.64.1.1",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "172.16.5.4",
        ] {
            assert!(!public_ipv4(private.parse().expect("ip")), "{private}");
        }
        assert!(public_ipv6("2a00:1450:4001:81a::200e".parse().expect("ip")));
        assert!(!public_ipv6("2001:db8::1".parse().expect("ip")));
        assert!(public_ipv6(
            "9aea:6429:b149:1e24:3192:b705:4259:4052"
                .parse()
                .expect("ip")
        ));
        assert!(!public_ipv6("fd12:3456::1".parse().expect("ip")));
        assert!(!public_ipv6("ff02::1".parse().expect("ip")));
        assert!(!public_ipv6("fe80::1".parse().expect("ip")));
        assert!(!public_ipv6("::1".parse().expect("ip")));
    }

    #[test]
    fn birth_dates() {
        for d in [
            "1980-03-05",
            "03/05/1980",
            "25/12/1975",
            "05.03.1980",
            "19800305",
            "March 5, 1980",
            "5 Mar 1980",
            "1980-03-05T00:00:00Z",
        ] {
            assert!(birth_date(d), "{d}");
        }
        for d in [
            "2024-02-30",
            "1850-01-01",
            "13/13/1990",
            "not a date",
            "1980",
            "12345678",
        ] {
            assert!(!birth_date(d), "{d}");
        }
    }

    #[test]
    fn names_and_addresses() {
        for n in [
            "Lucy Smith",
            "José María García-López",
            "O'Brien",
            "Dr. Ann Lee",
            "李 小龙",
        ] {
            assert!(person_name(n), "{n}");
        }
        for n in [
            "null",
            "R2-D2",
            "a",
            "widget 3000",
            "john@example.com",
            "Test",
        ] {
            assert!(!person_name(n), "{n}");
        }
        for a in [
            "123 Main St",
            "4 Privet Drive, Little Whinging",
            "Apt. 4B, 77 Elm Street",
            "Hauptstraße 5",
            "742 Evergreen Terrace Springfield",
            "Sontagstr. 22/65",
            "Am Markt 12a",
            "Flat 52\nSheila Courts",
            "Studio 0\nLee Causeway",
            "rue de Chauvet",
            "Koch IIstraße 85",
        ] {
            assert!(street_address(a), "{a}");
        }
        for a in [
            "Main",
            "12345",
            "v1.2.3",
            "user@example.com",
            "https://x.com/1 a",
            "home office",
            "N/A",
            "same as billing",
        ] {
            assert!(!street_address(a), "{a}");
        }
    }

    #[test]
    fn phones() {
        let us = [Id::US];
        for p in [
            "+1 415 555 2671",
            "(415) 555-2671",
            "415-555-2671",
            "415.555.2671",
            "+44 20 7946 0958",
            "+49 30 901820",
            "001-415-555-2671",
            "415-555-2671 x123",
            "+33 1 42 68 53 00",
        ] {
            assert!(phone(p, &us), "{p}");
        }
        for p in [
            "123-456-7890",
            "555-0100",
            "+1 111 111 1111",
            "2024-01-31",
            "1234567",
        ] {
            assert!(!phone(p, &us), "{p}");
        }
        assert_eq!(strip_extension("415-555-2671 ext. 12"), "415-555-2671");
    }
}
