//! apimon under test: started with its default configuration (state kept in the bench's
//! folder, emptied before each start), read through `/metrics` and `/proc`, stopped on drop.

use std::{
    fs, io,
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    child::Guarded,
    interrupt,
    metrics::{self, Page, Sample},
    procfs::{self, Memory},
};
use crate::cmd::output_of;

/// Writes the agent's configuration (defaults, except state in `dir`) and has the agent
/// validate it. Returns its path.
pub(crate) fn write_config(bin: &Path, dir: &Path) -> Result<PathBuf> {
    let config = dir.join("apimon.toml");
    let state = state_dir(dir);
    // Only the state folder differs from the defaults: the host's /var/lib/apimon stays
    // untouched, and [`Agent::start`] empties this one so every run starts with no known
    // destinations.
    fs::write(
        &config,
        format!("[alerts]\nstate_dir = \"{}\"\n", state.display()),
    )
    .with_context(|| format!("writing {config:?}"))?;
    output_of(Command::new(bin).arg("config").arg("check").arg(&config))
        .context("`apimon config check` refused the bench's configuration")?;
    Ok(config)
}

/// The agent's `alerts.state_dir` in the bench's folder `dir`.
fn state_dir(dir: &Path) -> PathBuf {
    dir.join("agent-state")
}

/// A running `apimon run`.
pub(crate) struct Agent {
    process: Guarded,
    metrics: SocketAddr,
    log: PathBuf,
}

impl Agent {
    /// Starts the agent, with an empty state folder (nothing a previous run learnt), and waits
    /// for `apimon_ready 1` (probes attached, open connections found).
    pub(crate) fn start(bin: &Path, config: &Path, dir: &Path, n: usize) -> Result<Self> {
        let state = state_dir(dir);
        if let Err(e) = fs::remove_dir_all(&state)
            && e.kind() != io::ErrorKind::NotFound
        {
            return Err(e).with_context(|| format!("removing {state:?}"));
        }
        let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let log = dir.join(format!("agent-{n}.log"));
        let mut cmd = Command::new(bin);
        cmd.arg("run")
            .arg("--config")
            .arg(config)
            .arg("--metrics-addr")
            .arg(metrics.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).with_context(|| format!("creating {log:?}"))?);
        let agent = Self {
            process: Guarded::spawn("apimon", &mut cmd, libc::SIGINT)?,
            metrics,
            log,
        };
        agent.wait_ready()
    }

    fn wait_ready(mut self) -> Result<Self> {
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(page) = metrics::scrape(self.metrics)
                && page.total("apimon_ready") >= 1.0
            {
                return Ok(self);
            }
            if let Some(status) = self.process.exited()? {
                bail!(
                    "apimon exited ({status}) before ready:\n{}",
                    self.log_text()
                );
            }
            if Instant::now() >= end {
                bail!("apimon not ready after 60 s:\n{}", self.log_text());
            }
            interrupt::sleep(Duration::from_millis(100))?;
        }
    }

    /// The agent's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Its metrics, CPU time and memory now.
    pub(crate) fn snapshot(&self) -> Result<Snapshot> {
        Ok(Snapshot {
            page: metrics::scrape(self.metrics)?,
            cpu: procfs::cpu_time(self.pid())?,
            memory: procfs::memory(self.pid())?,
        })
    }

    /// Waits until the agent has reported what it was sent (its call count stops moving for
    /// half a second, at most 10 s), then takes a snapshot.
    pub(crate) fn settled(&self) -> Result<Snapshot> {
        let end = Instant::now() + Duration::from_secs(10);
        let mut last = self.snapshot()?;
        loop {
            interrupt::sleep(Duration::from_millis(500))?;
            let now = self.snapshot()?;
            let calls = |s: &Snapshot| s.page.total("apimon_http_requests_total");
            if calls(&now) == calls(&last) || Instant::now() >= end {
                return Ok(now);
            }
            last = now;
        }
    }

    /// Stops the agent with SIGINT and fails if it did not exit cleanly.
    pub(crate) fn stop(mut self) -> Result<()> {
        let status = self.process.stop(Duration::from_secs(20));
        if !status.is_some_and(|s| s.success()) {
            bail!(
                "apimon ended with {status:?} after SIGINT:\n{}",
                self.log_text()
            );
        }
        Ok(())
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// What the agent reported and used at one moment.
#[derive(Clone, Debug, Default)]
pub(crate) struct Snapshot {
    /// Its `/metrics`.
    pub(crate) page: Page,
    /// CPU time used since it started.
    pub(crate) cpu: Duration,
    /// Its memory.
    pub(crate) memory: Memory,
}

/// What the agent did between two snapshots.
#[derive(Clone, Debug, Default)]
pub(crate) struct Delta {
    /// Egress calls to the bench's API host (the calls wrk made).
    pub(crate) egress: u64,
    /// Ingress calls (nginx's side, when the agent can read it).
    pub(crate) ingress: u64,
    /// `apimon_events_lost_total`, every reason.
    pub(crate) lost: u64,
    /// The reasons of `lost` that moved, and by how much.
    pub(crate) lost_by_reason: Vec<(String, u64)>,
    /// The stages of `apimon_shed_total` that moved (work not done under load: calls
    /// `sampled_out` are counted there, not in the requests), and by how much.
    pub(crate) shed_by_stage: Vec<(String, u64)>,
    /// `apimon_bytes_not_copied_total`.
    pub(crate) not_copied: u64,
    /// `apimon_kernel_records_skipped_total`.
    pub(crate) skipped: u64,
    /// CPU time used.
    pub(crate) cpu: Duration,
    /// Peak RSS at the end.
    pub(crate) peak_rss: u64,
    /// Every `apimon_tls_*` sample at the end (what TLS probing did), summed per name.
    pub(crate) tls: Vec<(String, u64)>,
}

impl Delta {
    /// The change from `before` to `after`, counting egress calls whose `host` label is `host`.
    pub(crate) fn between(before: &Snapshot, after: &Snapshot, host: &str) -> Self {
        let diff = |name: &str, keep: &dyn Fn(&Sample) -> bool| {
            growth(before.page.sum(name, keep), after.page.sum(name, keep))
        };
        let requests = "apimon_http_requests_total";
        Self {
            egress: diff(requests, &|s| {
                s.label("direction") == Some("egress") && s.label("host") == Some(host)
            }),
            ingress: diff(requests, &|s| s.label("direction") == Some("ingress")),
            lost: diff("apimon_events_lost_total", &|_| true),
            lost_by_reason: grown_by_label(before, after, "apimon_events_lost_total", "reason"),
            shed_by_stage: grown_by_label(before, after, "apimon_shed_total", "stage"),
            not_copied: diff("apimon_bytes_not_copied_total", &|_| true),
            skipped: diff("apimon_kernel_records_skipped_total", &|_| true),
            cpu: after.cpu.saturating_sub(before.cpu),
            peak_rss: after.memory.peak,
            tls: tls_metrics(&after.page),
        }
    }
}

/// How much a counter grew from `before` to `after`, rounded; 0 if it went down.
fn growth(before: f64, after: f64) -> u64 {
    (after - before).max(0.0).round() as u64
}

/// The distinct values of `keys`, sorted.
fn distinct<'a>(keys: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut keys: Vec<&str> = keys.collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// The `apimon_tls_*` metrics (their names change as TLS probing evolves: take them all).
fn tls_metrics(page: &Page) -> Vec<(String, u64)> {
    let names = page
        .samples
        .iter()
        .map(|s| s.name.as_str())
        .filter(|n| n.starts_with("apimon_tls_"));
    distinct(names)
        .into_iter()
        .map(|n| (n.to_owned(), page.total(n).round() as u64))
        .collect()
}

/// Each value of `label` on counter `name` whose sample grew between two snapshots, and by
/// how much.
fn grown_by_label(
    before: &Snapshot,
    after: &Snapshot,
    name: &str,
    label: &str,
) -> Vec<(String, u64)> {
    let values = after
        .page
        .samples
        .iter()
        .filter(|s| s.name == name)
        .filter_map(|s| s.label(label));
    distinct(values)
        .into_iter()
        .filter_map(|r| {
            let of = |p: &Page| p.sum(name, |s| s.label(label) == Some(r));
            let d = growth(of(&before.page), of(&after.page));
            (d > 0).then(|| (r.to_owned(), d))
        })
        .collect()
}

/// A TCP port free on loopback right now.
pub(crate) fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("finding a free port")?
        .port())
}
