//! Where a call goes, and whether that is a third party.

use std::{
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
};

use ipnet::IpNet;

use crate::http::Head;

/// Decides what is internal. Everything else is a third party.
#[derive(Clone, Debug)]
pub struct Destinations {
    internal_networks: Vec<IpNet>,
    /// Lower-case suffixes such as `.internal` (a leading dot means "subdomains of").
    internal_domains: Vec<String>,
    /// Hosts always treated as third parties, even on internal addresses.
    third_party_domains: Vec<String>,
}

/// Networks that never route to the internet: loopback, RFC 1918, link-local, CGNAT, ULA.
pub const DEFAULT_INTERNAL_NETWORKS: &[&str] = &[
    "127.0.0.0/8",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "169.254.0.0/16",
    "100.64.0.0/10",
    "::1/128",
    "fc00::/7",
    "fe80::/10",
];

/// Domain suffixes that name internal services.
pub const DEFAULT_INTERNAL_DOMAINS: &[&str] = &[
    "localhost",
    ".localhost",
    ".internal",
    ".local",
    ".svc",
    ".cluster.local",
    ".lan",
    ".home.arpa",
];

/// Whether `host` is `pattern` or one of its subdomains (`example.com` and `.example.com` both
/// mean that); `*.example.com` means subdomains only. Both are lower-case. Runs for every
/// pattern on every call: no allocation.
pub(crate) fn suffix_matches(host: &str, pattern: &str) -> bool {
    let (domain, subdomains_only) = match pattern.strip_prefix("*.") {
        Some(d) => (d, true),
        None => (pattern.strip_prefix('.').unwrap_or(pattern), false),
    };
    match host.strip_suffix(domain) {
        Some("") => !subdomains_only,
        Some(rest) => rest.ends_with('.'),
        None => false,
    }
}

impl Destinations {
    /// Defaults plus the configured networks and domains.
    #[must_use]
    pub fn new(extra_networks: &[IpNet], extra_domains: &[String], third_party: &[String]) -> Self {
        let mut internal_networks: Vec<IpNet> = DEFAULT_INTERNAL_NETWORKS
            .iter()
            .filter_map(|n| n.parse().ok())
            .collect();
        internal_networks.extend_from_slice(extra_networks);
        let mut internal_domains: Vec<String> = DEFAULT_INTERNAL_DOMAINS
            .iter()
            .map(|d| (*d).to_owned())
            .collect();
        internal_domains.extend(extra_domains.iter().map(|d| d.to_ascii_lowercase()));
        Self {
            internal_networks,
            internal_domains,
            third_party_domains: third_party.iter().map(|d| d.to_ascii_lowercase()).collect(),
        }
    }

    /// What `[destinations]` describes.
    #[must_use]
    pub fn from_config(c: &crate::config::DestinationsConfig) -> Self {
        Self::new(
            &c.internal_networks,
            &c.internal_domains,
            &c.third_party_domains,
        )
    }

    /// Whether a call to `host` (at `remote`) leaves the organisation.
    #[must_use]
    pub fn is_third_party(&self, host: &str, remote: Option<SocketAddr>) -> bool {
        if self
            .third_party_domains
            .iter()
            .any(|d| suffix_matches(host, d))
        {
            return true;
        }
        if let Ok(ip) = host.parse::<IpAddr>() {
            return !self.is_internal_ip(ip);
        }
        if self
            .internal_domains
            .iter()
            .any(|d| suffix_matches(host, d))
        {
            return false;
        }
        // A single-label name resolves through the local search domains.
        if !host.is_empty() && !host.contains('.') {
            return false;
        }
        if host.is_empty() {
            return remote.is_some_and(|r| !self.is_internal_ip(r.ip()));
        }
        // A public name is a third party even through a private address (egress proxy, NAT).
        true
    }

    fn is_internal_ip(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        ip.is_unspecified() || self.internal_networks.iter().any(|n| n.contains(&ip))
    }
}

impl Default for Destinations {
    fn default() -> Self {
        Self::new(&[], &[], &[])
    }
}

/// The host a request names: `Host` header without port, lower-case; else the peer's IP.
#[must_use]
pub fn host_of(head: &Head, remote: Option<SocketAddr>) -> String {
    let mut out = String::new();
    host_into(head, remote, &mut out);
    out
}

/// [`host_of`] into `out` (cleared first), reusing its buffer.
pub fn host_into(head: &Head, remote: Option<SocketAddr>, out: &mut String) {
    out.clear();
    let from_header = head
        .header("host")
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .or_else(|| {
            // absolute-form request targets (proxies): http://host:port/path
            match &head.start {
                crate::http::StartLine::Request { target, .. } => target
                    .split_once("://")
                    .map(|(_, rest)| rest.split(['/', '?']).next().unwrap_or(rest)),
                crate::http::StartLine::Response { .. } => None,
            }
        });
    match from_header {
        Some(h) => {
            out.push_str(strip_port(h));
            out.make_ascii_lowercase();
        }
        None => {
            if let Some(r) = remote {
                let _ = write!(out, "{}", r.ip());
            }
        }
    }
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if !h.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{Header, StartLine};

    fn head(host: Option<&str>, target: &str) -> Head {
        Head {
            start: StartLine::Request {
                method: "GET".into(),
                target: target.into(),
            },
            version: 1,
            headers: host
                .map(|h| {
                    vec![Header {
                        name: "Host".into(),
                        value: h.into(),
                    }]
                })
                .unwrap_or_default(),
        }
    }

    #[test]
    fn hosts() {
        let remote: Option<SocketAddr> = Some("198.51.100.10:443".parse().expect("addr"));
        assert_eq!(
            host_of(&head(Some("API.Partner.test:8443"), "/"), remote),
            "api.partner.test"
        );
        assert_eq!(
            host_of(&head(Some("[2001:db8::1]:443"), "/"), remote),
            "2001:db8::1"
        );
        assert_eq!(host_of(&head(None, "/"), remote), "198.51.100.10");
        assert_eq!(
            host_of(&head(None, "http://proxy.example:81/x"), remote),
            "proxy.example"
        );
    }

    #[test]
    fn third_parties() {
        let d = Destinations::new(
            &["203.0.113.0/24".parse().expect("net")],
            &[".corp.example".into()],
            &[],
        );
        let public: Option<SocketAddr> = Some("198.51.100.10:443".parse().expect("addr"));
        let private: Option<SocketAddr> = Some("10.1.2.3:443".parse().expect("addr"));
        assert!(d.is_third_party("api.partner.test", public));
        assert!(d.is_third_party("api.stripe.com", private));
        assert!(d.is_third_party("198.51.100.10", public));
        assert!(!d.is_third_party("10.1.2.3", private));
        assert!(!d.is_third_party("127.0.0.1", None));
        assert!(!d.is_third_party("203.0.113.7", None));
        assert!(!d.is_third_party("billing.default.svc.cluster.local", private));
        assert!(!d.is_third_party("db.corp.example", public));
        assert!(!d.is_third_party("localhost", None));
        assert!(!d.is_third_party("backend", private));
        assert!(d.is_third_party("", public));
        assert!(!d.is_third_party("", private));
        let forced = Destinations::new(&[], &[], &["partner.local".into()]);
        assert!(forced.is_third_party("api.partner.local", private));
    }
}
