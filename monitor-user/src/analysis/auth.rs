//! How a request authenticates: the credential's kind, never its value.

use crate::http::Head;

/// Authentication schemes recognised in requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Auth {
    None,
    Bearer,
    Basic,
    Digest,
    /// AWS Signature Version 4 (header or presigned URL).
    AwsSigV4,
    /// A key or token in a dedicated header or query parameter.
    ApiKey,
    /// A session cookie.
    Cookie,
    /// An `Authorization` scheme not listed here.
    Other,
}

impl Auth {
    /// Name used in events and metrics.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Bearer => "bearer",
            Self::Basic => "basic",
            Self::Digest => "digest",
            Self::AwsSigV4 => "aws_sigv4",
            Self::ApiKey => "api_key",
            Self::Cookie => "cookie",
            Self::Other => "other",
        }
    }
}

/// Whether a header carries an API key or access token by its name.
#[must_use]
pub fn is_key_header(name: &str) -> bool {
    let mut buf = [0u8; 64];
    is_key_header_lower(&super::ascii_lowercase(name, &mut buf))
}

/// [`is_key_header`] of a name already in lower case.
pub(crate) fn is_key_header_lower(n: &str) -> bool {
    if n.contains("csrf") || n.contains("xsrf") {
        return false;
    }
    const EXACT: &[&str] = &[
        "apikey",
        "api-key",
        "x-api-key",
        "x-apikey",
        "x-auth-token",
        "x-access-token",
        "x-goog-api-key",
        "ocp-apim-subscription-key",
        "x-functions-key",
        "private-token",
        "x-token",
        "authentication",
    ];
    EXACT.contains(&n)
        || n.contains("api-key")
        || n.contains("api_key")
        || n.contains("apikey")
        || n.ends_with("-access-token")
        || n.ends_with("-auth-token")
        || n.ends_with("-api-token")
        || n.ends_with("-server-token")
        || n.ends_with("-secret-key")
}

/// Whether a query parameter carries a key or token by its name.
#[must_use]
pub fn is_key_param(name: &str) -> Option<Auth> {
    let mut buf = [0u8; 64];
    is_key_param_lower(&super::ascii_lowercase(name, &mut buf))
}

/// [`is_key_param`] of a name already in lower case.
fn is_key_param_lower(n: &str) -> Option<Auth> {
    match n {
        "access_token" | "bearer_token" | "oauth_token" => Some(Auth::Bearer),
        "api_key" | "apikey" | "api-key" | "key" | "token" | "auth_token" | "app_key"
        | "client_secret" | "private_token" | "subscription-key" => Some(Auth::ApiKey),
        "x-amz-credential" | "x-amz-signature" => Some(Auth::AwsSigV4),
        _ => None,
    }
}

/// The scheme a request authenticates with, strongest evidence first.
#[must_use]
pub fn auth_of(head: &Head, query: Option<&str>) -> Auth {
    if let Some(value) = head.header("authorization") {
        let scheme = value.split_whitespace().next().unwrap_or_default();
        let is = |s: &str| scheme.eq_ignore_ascii_case(s);
        return if is("bearer") || is("token") {
            Auth::Bearer
        } else if is("basic") {
            Auth::Basic
        } else if is("digest") {
            Auth::Digest
        } else if is("aws4-hmac-sha256") {
            Auth::AwsSigV4
        } else if scheme.is_empty() {
            Auth::None
        } else if !value.contains(' ') {
            Auth::ApiKey
        } else {
            Auth::Other
        };
    }
    if head
        .headers
        .iter()
        .any(|h| is_key_header(&h.name) && !h.value.trim().is_empty())
    {
        return Auth::ApiKey;
    }
    if let Some(q) = query {
        for pair in q.split('&') {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            if !value.is_empty()
                && let Some(a) = is_key_param(name)
            {
                return a;
            }
        }
    }
    if head.header("cookie").is_some_and(|c| !c.trim().is_empty()) {
        return Auth::Cookie;
    }
    Auth::None
}

/// Credentials in a request body's top-level fields (OAuth client credentials, API keys sent
/// in a form or JSON body).
#[must_use]
pub fn body_auth(content_type: Option<&str>, body: &[u8]) -> Auth {
    let found = |name: &str, value: &str| -> Option<Auth> {
        if value.trim().is_empty() {
            return None;
        }
        let mut buf = [0u8; 64];
        match &*super::ascii_lowercase(name, &mut buf) {
            "client_secret" | "client_assertion" | "password" | "refresh_token" => {
                Some(Auth::Other)
            }
            n => is_key_param_lower(n),
        }
    };
    match super::body::kind(content_type, body) {
        super::body::Kind::Form => form_urlencoded::parse(body)
            .find_map(|(k, v)| found(&k, &v))
            .unwrap_or(Auth::None),
        super::body::Kind::Json => {
            let mut auth = Auth::None;
            super::json::walk(body, |path, scalar| {
                if auth == Auth::None
                    && path.parent_key().is_none()
                    && let Some(k) = path.key()
                {
                    let text = super::json::scalar_text(body, scalar);
                    if let Some(a) = found(&String::from_utf8_lossy(k), &text) {
                        auth = a;
                    }
                }
            });
            auth
        }
        _ => Auth::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{Header, StartLine};

    fn head(headers: &[(&str, &str)]) -> Head {
        Head {
            start: StartLine::Request {
                method: "GET".into(),
                target: "/".into(),
            },
            version: 1,
            headers: headers
                .iter()
                .map(|(n, v)| Header {
                    name: (*n).into(),
                    value: (*v).into(),
                })
                .collect(),
        }
    }

    #[test]
    fn schemes() {
        assert_eq!(
            auth_of(&head(&[("Authorization", "Bearer eyJ...")]), None),
            Auth::Bearer
        );
        assert_eq!(
            auth_of(&head(&[("authorization", "Basic dXNlcjpwYXNz")]), None),
            Auth::Basic
        );
        assert_eq!(
            auth_of(
                &head(&[("Authorization", "AWS4-HMAC-SHA256 Credential=AKIA/...")]),
                None
            ),
            Auth::AwsSigV4
        );
        assert_eq!(
            auth_of(&head(&[("Authorization", "sk_live_abc")]), None),
            Auth::ApiKey
        );
        assert_eq!(auth_of(&head(&[("X-API-Key", "k")]), None), Auth::ApiKey);
        assert_eq!(auth_of(&head(&[("DD-API-KEY", "k")]), None), Auth::ApiKey);
        assert_eq!(
            auth_of(&head(&[("X-Shopify-Access-Token", "k")]), None),
            Auth::ApiKey
        );
        assert_eq!(auth_of(&head(&[("X-CSRF-Token", "k")]), None), Auth::None);
        assert_eq!(auth_of(&head(&[]), Some("q=1&api_key=abc")), Auth::ApiKey);
        assert_eq!(auth_of(&head(&[]), Some("access_token=abc")), Auth::Bearer);
        assert_eq!(auth_of(&head(&[]), Some("api_key=")), Auth::None);
        assert_eq!(
            auth_of(&head(&[("Cookie", "session=abc")]), None),
            Auth::Cookie
        );
        assert_eq!(auth_of(&head(&[("Accept", "*/*")]), None), Auth::None);
        assert_eq!(
            body_auth(
                Some("application/x-www-form-urlencoded"),
                b"grant_type=x&client_secret=s"
            ),
            Auth::Other
        );
        assert_eq!(
            body_auth(Some("application/json"), br#"{"api_key":"k","q":1}"#),
            Auth::ApiKey
        );
        assert_eq!(
            body_auth(Some("application/json"), br#"{"user":{"api_key":"k"}}"#),
            Auth::None
        );
    }
}
