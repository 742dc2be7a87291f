//! The agent's `/metrics` page: fetched over plain HTTP and parsed into samples.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

/// One sample line: name, labels, value.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Sample {
    /// Metric name (with `_bucket`/`_sum` suffixes as printed).
    pub(crate) name: String,
    /// Label pairs in printed order.
    pub(crate) labels: Vec<(String, String)>,
    /// The value.
    pub(crate) value: f64,
}

impl Sample {
    /// The value of label `name`, if present.
    pub(crate) fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Every sample of one scrape.
#[derive(Clone, Debug, Default)]
pub(crate) struct Page {
    /// The samples, in printed order.
    pub(crate) samples: Vec<Sample>,
}

impl Page {
    /// Sum of the samples named `name` whose labels pass `keep`.
    pub(crate) fn sum(&self, name: &str, keep: impl Fn(&Sample) -> bool) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name && keep(s))
            .map(|s| s.value)
            .sum()
    }

    /// Sum of every sample named `name`.
    pub(crate) fn total(&self, name: &str) -> f64 {
        self.sum(name, |_| true)
    }
}

/// Fetches and parses `http://addr/metrics`.
pub(crate) fn scrape(addr: SocketAddr) -> Result<Page> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))
        .with_context(|| format!("connecting to the agent's metrics at {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    // HTTP/1.0: the answer is the whole body up to the close, never chunked.
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: apimon\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)
        .with_context(|| format!("reading {addr}/metrics"))?;
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("{addr}/metrics answered without a header end");
    };
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        bail!(
            "{addr}/metrics answered {}",
            head.lines().next().unwrap_or("")
        );
    }
    Ok(parse(body))
}

/// Parses the Prometheus text format; lines that do not parse are skipped.
pub(crate) fn parse(text: &str) -> Page {
    let samples = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(parse_line)
        .collect();
    Page { samples }
}

fn parse_line(line: &str) -> Option<Sample> {
    let (name, labels, rest) = match line.find('{') {
        Some(open) => {
            let (labels, rest) = parse_labels(&line[open + 1..])?;
            (&line[..open], labels, rest)
        }
        None => {
            let (name, rest) = line.split_once(' ')?;
            (name, Vec::new(), rest)
        }
    };
    // A timestamp may follow the value.
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Parses `k="v",k2="v2"}` and returns the pairs and what follows the `}`.
fn parse_labels(mut s: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start_matches([',', ' ']);
        if let Some(rest) = s.strip_prefix('}') {
            return Some((labels, rest));
        }
        let (key, rest) = s.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        labels.push((key.trim().to_owned(), value));
        s = &rest[end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labels_escapes_and_bare_samples() {
        let page = parse(
            "# HELP x y\n\
             apimon_http_requests_total{direction=\"egress\",host=\"a\\\"b\",tls=\"true\"} 12\n\
             apimon_ready 1\n\
             apimon_x_bucket{le=\"+Inf\"} 3 1700000000\n",
        );
        assert_eq!(page.samples.len(), 3);
        let s = &page.samples[0];
        assert_eq!(s.label("host"), Some("a\"b"));
        assert_eq!(s.label("tls"), Some("true"));
        assert!(
            (page.sum("apimon_http_requests_total", |s| s.label("direction")
                == Some("egress"))
                - 12.0)
                .abs()
                < 1e-9
        );
        assert!((page.total("apimon_ready") - 1.0).abs() < 1e-9);
        // The timestamp after the value is not taken for the value.
        assert!((page.total("apimon_x_bucket") - 3.0).abs() < 1e-9);
    }
}
