//! Route templates: `/v1/users/12345/orders/9f1c2e` -> `/v1/users/{id}/orders/{id}`, so that
//! metrics and findings group by endpoint, not by value.

/// Whether a path segment is a value rather than a name: numbers, UUIDs, hashes, emails,
/// dates, and long tokens mixing letters and digits.
#[must_use]
pub fn is_value_segment(seg: &str) -> bool {
    if seg.is_empty() {
        return false;
    }
    let bytes = seg.as_bytes();
    let digits = bytes.iter().filter(|b| b.is_ascii_digit()).count();
    let hex = bytes.iter().all(u8::is_ascii_hexdigit);
    if digits == bytes.len() {
        return true;
    }
    if seg.contains('@') || seg.contains("%40") {
        return true;
    }
    // UUID-like: hex groups separated by dashes.
    if bytes.len() >= 32 && bytes.iter().all(|b| b.is_ascii_hexdigit() || *b == b'-') {
        return true;
    }
    if hex && bytes.len() >= 12 && digits > 0 {
        return true;
    }
    // Dates and versions of data (2024-01-31), numbers with separators.
    if digits * 2 >= bytes.len()
        && bytes
            .iter()
            .all(|b| b.is_ascii_digit() || b"-_.:".contains(b))
    {
        return true;
    }
    // Opaque ids: long, mixing letters and digits (base62, base64url).
    if bytes.len() >= 16
        && digits > 0
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_=".contains(b))
    {
        return true;
    }
    // Short ids with a prefix and digits, as many APIs mint them: cus_9s8d7f, ord-12345.
    if let Some((prefix, rest)) = seg.split_once(['_', '-'])
        && prefix.len() <= 6
        && rest.len() >= 6
        && rest.bytes().any(|b| b.is_ascii_digit())
        && rest.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return true;
    }
    false
}

/// Learns, per host, which path segments are names and which are values: a position that has
/// seen more than `max_children` distinct literals is a value position from then on. Memory is
/// bounded (hosts and nodes capped), and a given path always maps to the same template once
/// its segments are known.
#[derive(Debug)]
pub struct Routes {
    hosts: std::collections::HashMap<String, Node>,
    max_children: usize,
    max_hosts: usize,
    max_nodes: usize,
    nodes: usize,
    /// Name segments templated as `{id}` only because the node cap was reached.
    not_learned: u64,
}

/// FNV-1a, for the literals of one path position: they are few (at most `max_children`), so
/// a weak hash cannot be abused, and SipHash was most of the cost of templating a route.
#[derive(Clone, Copy, Debug)]
struct SegmentHasher(u64);

impl Default for SegmentHasher {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl std::hash::Hasher for SegmentHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

#[derive(Debug, Default)]
struct Node {
    literals: std::collections::HashMap<String, Node, std::hash::BuildHasherDefault<SegmentHasher>>,
    /// Where values (`{id}`) lead.
    values: Option<Box<Node>>,
}

impl Routes {
    /// At most `max_children` distinct literals per position.
    #[must_use]
    pub fn new(max_children: usize) -> Self {
        Self {
            hosts: std::collections::HashMap::new(),
            max_children,
            max_hosts: 10_000,
            max_nodes: 1_000_000,
            nodes: 0,
            not_learned: 0,
        }
    }

    /// Path segments not learned because the table was at its node cap, since start: each
    /// was templated as `{id}` although it looked like a name. Counted per occurrence.
    #[must_use]
    pub const fn not_learned(&self) -> u64 {
        self.not_learned
    }

    /// The route template of `target` on `host`.
    pub fn template(&mut self, host: &str, target: &str) -> String {
        let mut out = String::new();
        self.template_into(host, target, &mut out);
        out
    }

    /// [`template`](Self::template) into `out` (cleared first), reusing its buffer. Known
    /// hosts and segments are looked up, not copied: this runs for every call.
    pub fn template_into(&mut self, host: &str, target: &str, out: &mut String) {
        out.clear();
        let path = path_of(target);
        // Hosts are the sender's to choose: their map keeps SipHash. A known host (nearly
        // every call's) is hashed once.
        let mut node = match self.hosts.get_mut(host) {
            Some(node) => node,
            None => {
                let key = if self.hosts.len() < self.max_hosts {
                    host
                } else {
                    // Hosts beyond the cap share one tree: its literals are learned as usual.
                    ""
                };
                self.hosts.entry(key.to_owned()).or_default()
            }
        };
        out.reserve(path.len());
        for seg in path.split('/').skip(1) {
            out.push('/');
            let name = !is_value_segment(seg);
            let known = name && node.literals.contains_key(seg);
            let room = node.literals.len() < self.max_children;
            let literal = known || (name && room && self.nodes < self.max_nodes);
            if name && room && !literal {
                self.not_learned += 1;
            }
            if literal {
                out.push_str(seg);
                if !known {
                    self.nodes += 1;
                    node.literals.insert(seg.to_owned(), Node::default());
                }
                let Some(next) = node.literals.get_mut(seg) else {
                    return;
                };
                node = next;
            } else {
                out.push_str("{id}");
                node = node.values.get_or_insert_with(Box::default);
            }
        }
        if out.is_empty() {
            out.push('/');
        }
    }
}

impl Default for Routes {
    fn default() -> Self {
        Self::new(50)
    }
}

/// The route template of a request target (query string dropped).
#[must_use]
pub fn template(target: &str) -> String {
    let path = path_of(target);
    let mut out = String::with_capacity(path.len());
    for seg in path.split('/').skip(1) {
        out.push('/');
        if is_value_segment(seg) {
            out.push_str("{id}");
        } else {
            out.push_str(seg);
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// The path of a request target: no query, no fragment, no scheme and authority.
#[must_use]
pub fn path_of(target: &str) -> &str {
    // Runs several times per call: most targets have no `:` at all, which one memchr tells.
    let absolute = if memchr::memchr(b':', target.as_bytes()).is_some() {
        target.split_once("://")
    } else {
        None
    };
    let target = match absolute {
        Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => target,
    };
    let end = memchr::memchr2(b'?', b'#', target.as_bytes()).unwrap_or(target.len());
    let path = &target[..end];
    if path.is_empty() { "/" } else { path }
}

/// The query string of a request target, if any.
#[must_use]
pub fn query_of(target: &str) -> Option<&str> {
    let q = target.split_once('?')?.1;
    Some(q.split('#').next().unwrap_or(q))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_of_matches_the_plain_string_search() {
        fn reference(target: &str) -> &str {
            let target = match target.split_once("://") {
                Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
                None => target,
            };
            let end = target.find(['?', '#']).unwrap_or(target.len());
            let path = &target[..end];
            if path.is_empty() { "/" } else { path }
        }
        for t in [
            "/v1/users/42?x=1",
            "/a#frag?",
            "",
            "*",
            "?q",
            "http://h:80/a/42?x",
            "https://h",
            "/r?to=http://x/y",
            "/time/12:30/x",
            "/é/ü?ß#€",
        ] {
            assert_eq!(path_of(t), reference(t), "{t}");
        }
    }

    #[test]
    fn cardinality_is_capped_per_position() {
        let mut r = Routes::new(3);
        assert_eq!(r.template("h", "/v1/users/alice"), "/v1/users/alice");
        assert_eq!(r.template("h", "/v1/users/bob"), "/v1/users/bob");
        assert_eq!(r.template("h", "/v1/users/carol"), "/v1/users/carol");
        assert_eq!(r.template("h", "/v1/users/dave"), "/v1/users/{id}");
        assert_eq!(
            r.template("h", "/v1/users/erin/orders"),
            "/v1/users/{id}/orders"
        );
        assert_eq!(r.template("h", "/v1/users/alice"), "/v1/users/alice");
        // Another host learns on its own.
        assert_eq!(r.template("other", "/v1/users/dave"), "/v1/users/dave");
        assert_eq!(
            r.template("h", "/v1/users/42/orders"),
            "/v1/users/{id}/orders"
        );
    }

    #[test]
    fn segments_beyond_the_node_cap_are_counted() {
        let mut r = Routes::new(50);
        r.max_nodes = 2;
        assert_eq!(r.template("h", "/a/b/c"), "/a/b/{id}");
        assert_eq!(r.not_learned(), 1);
        // Known segments still match, and a value is no name: neither counts.
        assert_eq!(r.template("h", "/a/b"), "/a/b");
        assert_eq!(r.template("h", "/a/42"), "/a/{id}");
        assert_eq!(r.not_learned(), 1);
    }

    #[test]
    fn templates() {
        assert_eq!(
            template("/v1/users/12345/orders/9f1c2e3d4b5a6978"),
            "/v1/users/{id}/orders/{id}"
        );
        assert_eq!(
            template("/v1/users/123e4567-e89b-12d3-a456-426614174000"),
            "/v1/users/{id}"
        );
        assert_eq!(
            template("/v1/customers/cus_9s8d7f6g?expand=x"),
            "/v1/customers/{id}"
        );
        assert_eq!(template("/lookup/alice@example.com"), "/lookup/{id}");
        assert_eq!(template("/reports/2024-01-31"), "/reports/{id}");
        assert_eq!(template("/v2/charges"), "/v2/charges");
        assert_eq!(template("/api/v1/health-check"), "/api/v1/health-check");
        assert_eq!(template("/"), "/");
        assert_eq!(template("*"), "/");
        assert_eq!(template("http://h:80/a/42?x"), "/a/{id}");
        assert_eq!(path_of("/a/b?c=d#e"), "/a/b");
        assert_eq!(query_of("/a?c=d#e"), Some("c=d"));
    }
}
