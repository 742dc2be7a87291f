//! What may leave the agent of a sensitive value: a masked sample, and optionally a keyed hash
//! that lets users correlate the same value across calls without seeing it.

use hmac::{Hmac, Mac as _};
use sha2::Sha256;

use super::detect::DataType;

/// Replaces every character but the last `keep` digits with `*`, keeping separators.
fn keep_last_digits(v: &str, keep: usize) -> String {
    let total = v.chars().filter(char::is_ascii_digit).count();
    let mut seen = 0;
    v.chars()
        .map(|c| {
            if c.is_ascii_digit() {
                seen += 1;
                if seen + keep > total { c } else { '*' }
            } else if c.is_alphanumeric() {
                '*'
            } else {
                c
            }
        })
        .collect()
}

/// Each word's first letter, the rest starred: `Lucy Smith` -> `L*** S***`.
fn initials(v: &str) -> String {
    v.split_whitespace()
        .map(|w| {
            let first: String = w.chars().take(1).collect();
            format!("{first}***")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A masked sample of a value: enough to recognise the kind and tell values apart in a list,
/// never enough to use it.
#[must_use]
pub fn mask(data_type: DataType, value: &str) -> String {
    let v = value.trim();
    match data_type {
        DataType::Email => match v.rsplit_once('@') {
            Some((local, domain)) => format!("{}***@{domain}", local.chars().next().unwrap_or('*')),
            None => "***".into(),
        },
        DataType::CreditCard => {
            let digits: String = v.chars().filter(char::is_ascii_digit).collect();
            format!(
                "**** **** **** {}",
                &digits[digits.len().saturating_sub(4)..]
            )
        }
        DataType::Phone | DataType::UsSsn => keep_last_digits(v, 2),
        DataType::Iban => {
            let compact: String = v.chars().filter(|c| !c.is_whitespace()).collect();
            let n = compact.chars().count();
            let head: String = compact.chars().take(2).collect();
            let tail: String = compact.chars().skip(n.saturating_sub(4)).collect();
            format!("{head}{}{tail}", "*".repeat(n.saturating_sub(6)))
        }
        DataType::IpAddress => {
            if v.contains(':') {
                let groups: Vec<&str> = v.split(':').take(2).collect();
                format!("{}:***", groups.join(":"))
            } else {
                let octets: Vec<&str> = v.split('.').take(2).collect();
                format!("{}.*.*", octets.join("."))
            }
        }
        DataType::DateOfBirth => v
            .chars()
            .map(|c| if c.is_alphanumeric() { '*' } else { c })
            .collect(),
        DataType::PersonName | DataType::StreetAddress => initials(v),
        DataType::Password | DataType::AwsSecretKey => "********".into(),
        DataType::PrivateKey => "-----BEGIN *** PRIVATE KEY-----".into(),
        _ => {
            // Token prefixes name the issuer (AKIA, ghp_, sk_live_): keep 4 characters.
            let head: String = v.chars().take(4).collect();
            format!(
                "{head}{}",
                "*".repeat(v.chars().count().saturating_sub(4).min(12))
            )
        }
    }
}

/// The form a value is hashed in, so that `4111 1111…` and `4111-1111…` hash the same.
fn canonical(data_type: DataType, value: &str) -> String {
    match data_type {
        DataType::CreditCard | DataType::UsSsn | DataType::Phone => {
            let plus = if value.trim_start().starts_with('+') {
                "+"
            } else {
                ""
            };
            format!(
                "{plus}{}",
                value
                    .chars()
                    .filter(char::is_ascii_digit)
                    .collect::<String>()
            )
        }
        DataType::Iban => value
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect::<String>()
            .to_ascii_uppercase(),
        DataType::Email | DataType::PersonName | DataType::StreetAddress => {
            value.trim().to_lowercase()
        }
        _ => value.trim().to_owned(),
    }
}

/// Keyed hashes of values (HMAC-SHA256), when the user configured a key.
#[derive(Clone, Default)]
pub struct Hasher {
    key: Option<Vec<u8>>,
}

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("Hasher")
            .field("enabled", &self.key.is_some())
            .finish()
    }
}

impl Hasher {
    /// Hashes with `key`; `None` disables hashing.
    #[must_use]
    pub fn new(key: Option<Vec<u8>>) -> Self {
        Self {
            key: key.filter(|k| !k.is_empty()),
        }
    }

    /// 32 hex characters (128 bits of HMAC-SHA256), or `None` without a key.
    #[must_use]
    pub fn hash(&self, data_type: DataType, value: &str) -> Option<String> {
        let key = self.key.as_ref()?;
        let mut mac = Hmac::<Sha256>::new_from_slice(key).ok()?;
        mac.update(data_type.name().as_bytes());
        mac.update(b":");
        mac.update(canonical(data_type, value).as_bytes());
        let digest = mac.finalize().into_bytes();
        Some(digest[..16].iter().map(|b| format!("{b:02x}")).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_hide_values() {
        assert_eq!(
            mask(DataType::Email, "lucy@example.com"),
            "l***@example.com"
        );
        assert_eq!(
            mask(DataType::CreditCard, "4111-1111-1111-1111"),
            "**** **** **** 1111"
        );
        assert_eq!(mask(DataType::Phone, "(415) 555-2671"), "(***) ***-**71");
        assert_eq!(mask(DataType::UsSsn, "536-22-5041"), "***-**-**41");
        assert_eq!(
            mask(DataType::Iban, "DE89 3704 0044 0532 0130 00"),
            "DE****************3000"
        );
        assert_eq!(mask(DataType::IpAddress, "81.2.69.142"), "81.2.*.*");
        assert_eq!(mask(DataType::DateOfBirth, "1980-03-05"), "****-**-**");
        assert_eq!(mask(DataType::PersonName, "Lucy Smith"), "L*** S***");
        assert_eq!(
            mask(DataType::AwsAccessKey, "AKIAIOSFODNN7EXAMPLE"),
            "AKIA************"
        );
        assert_eq!(mask(DataType::Password, "hunter2"), "********");
    }

    #[test]
    fn keyed_hash_correlates_equal_values_only() {
        let h = Hasher::new(Some(b"k".to_vec()));
        let a = h.hash(DataType::CreditCard, "4111 1111 1111 1111");
        assert_eq!(a, h.hash(DataType::CreditCard, "4111-1111-1111-1111"));
        assert_ne!(a, h.hash(DataType::CreditCard, "5555 5555 5555 4444"));
        assert_eq!(a.as_ref().map(String::len), Some(32));
        assert_ne!(
            a,
            Hasher::new(Some(b"other".to_vec())).hash(DataType::CreditCard, "4111 1111 1111 1111")
        );
        assert_eq!(Hasher::new(None).hash(DataType::Email, "a@b.co"), None);
        assert!(!format!("{h:?}").contains('k') || format!("{h:?}").contains("enabled"));
    }
}
