//! `apimon analyze FILE.har`: the live agent's analysis, offline, on a HAR file.

use std::{io::Write, path::Path, time::Instant};

use anyhow::Context as _;

use crate::{
    analysis::{CallContext, CallDirection, datamap::DataMap},
    config::Config,
    har,
    output::events::EventWriter,
};

/// What an analysis did.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Summary {
    pub entries: usize,
    pub calls: u64,
    pub findings: u64,
    pub bytes: u64,
    pub seconds: f64,
}

/// Analyses the HAR file at `path`, writing calls and findings as JSON lines to `out`, and the
/// data map to the configured files.
pub fn analyze(
    path: &Path,
    config: &Config,
    out: Box<dyn Write + Send>,
    data_map: Option<&Path>,
    report: Option<&Path>,
) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let mut analyzer = crate::run::analyzer(config)?;
    let mut events = EventWriter::new(out);
    let mut map = DataMap::new(config.analysis.max_flows);
    let mut summary = Summary::default();
    let mut write_error = None;
    summary.entries = har::read(path, |index, call| {
        let ctx = CallContext {
            pid: None,
            comm: "har",
            direction: CallDirection::Egress,
            tls_lib: None,
            tls: call.tls,
            remote: call.remote,
            ts: &call.started,
            entry: Some(index),
        };
        let a = analyzer.analyze(&ctx, &call.exchange);
        summary.calls += 1;
        summary.findings += a.findings.len() as u64;
        map.record(&a);
        if write_error.is_none()
            && let Err(e) = events.write_analysis(&a)
        {
            write_error = Some(e);
        }
    })?;
    if let Some(e) = write_error {
        return Err(e).context("writing results");
    }
    events.flush().context("writing results")?;
    if let Some(p) = data_map {
        map.write_json(p)
            .with_context(|| format!("writing the data map to {}", p.display()))?;
    }
    if let Some(p) = report {
        map.write_markdown(p)
            .with_context(|| format!("writing the report to {}", p.display()))?;
    }
    summary.bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}
