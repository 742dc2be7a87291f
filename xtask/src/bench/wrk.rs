//! wrk, the load generator: one timed run over keep-alive connections and what it printed.

use std::{
    io::Read as _,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use super::{child::Guarded, report::first_line};

/// wrk threads: one, so that wrk and nginx's single worker each get one of the two vCPUs.
const THREADS: u32 = 1;
/// Keep-alive connections wrk keeps busy.
pub(crate) const CONNECTIONS: u32 = 16;

/// What one wrk run reported.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Outcome {
    /// Requests completed (the "N requests in" line; excludes those in flight at the end).
    pub(crate) requests: u64,
    /// The "Requests/sec" line.
    pub(crate) rps: f64,
    /// Socket errors plus non-2xx/3xx responses: should be 0.
    pub(crate) errors: u64,
}

/// Runs wrk against `url` for `seconds` and parses its summary.
pub(crate) fn run(url: &str, seconds: u64) -> Result<Outcome> {
    let mut cmd = Command::new("wrk");
    cmd.args([
        &format!("-t{THREADS}"),
        &format!("-c{CONNECTIONS}"),
        &format!("-d{seconds}s"),
        url,
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::piped());
    let mut wrk = Guarded::spawn("wrk", &mut cmd, libc::SIGINT)?;
    // The summary is a few hundred bytes: the pipe holds it until wrk exits.
    let limit = Duration::from_secs(seconds + 30);
    let Some(status) = wrk.wait_for(limit)? else {
        bail!("wrk {url} still running after {} s", limit.as_secs());
    };
    let mut text = String::new();
    if let Some(mut out) = wrk.child_mut().stdout.take() {
        out.read_to_string(&mut text)
            .context("reading wrk's output")?;
    }
    if !status.success() {
        bail!("wrk {url} failed ({status}):\n{text}");
    }
    parse(&text).with_context(|| format!("wrk {url} printed:\n{text}"))
}

/// Parses wrk's summary.
fn parse(text: &str) -> Result<Outcome> {
    let mut outcome = Outcome::default();
    let mut seen = (false, false);
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("Requests/sec:") {
            outcome.rps = rest.trim().parse().context("Requests/sec")?;
            seen.0 = true;
        } else if let Some((n, _)) = line.split_once(" requests in ") {
            outcome.requests = n.trim().parse().context("requests in")?;
            seen.1 = true;
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            outcome.errors += rest
                .split(',')
                .filter_map(|part| part.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>();
        } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            outcome.errors += rest.trim().parse::<u64>().context("Non-2xx")?;
        }
    }
    if seen != (true, true) {
        bail!("no \"Requests/sec\" or \"requests in\" line");
    }
    Ok(outcome)
}

/// The version line `wrk -v` prints, without its copyright notice.
pub(crate) fn version(dir: &Path) -> String {
    let line = first_line(Command::new("wrk").arg("-v"), dir);
    line.split_once(" Copyright")
        .map_or(line.as_str(), |(version, _)| version)
        .trim()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_summary_with_errors() {
        let text = "Running 8s test @ http://203.0.113.10/v1/items\n  1 threads and 16 connections\n  Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency   152.21us   30.12us   1.20ms   90.00%\n    Req/Sec    70.12k     2.10k   75.00k    80.00%\n  558123 requests in 8.00s, 101.23MB read\n  Socket errors: connect 0, read 2, write 0, timeout 1\n  Non-2xx or 3xx responses: 4\nRequests/sec:  69765.37\nTransfer/sec:     12.65MB\n";
        let o = parse(text).expect("parse");
        assert_eq!(o.requests, 558_123);
        assert!((o.rps - 69_765.37).abs() < 1e-6);
        assert_eq!(o.errors, 7);
    }
}
