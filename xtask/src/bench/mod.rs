//! `cargo xtask bench overhead`: what apimon costs the traffic it watches, live.
//!
//! nginx in a network namespace plays a third-party API; wrk on the host calls it over
//! keep-alive, plaintext and TLS, with nothing attached, with a naive floor (bpftrace
//! count-only probes on apimon's hooks), and with apimon. Modes take turns within each round
//! so that this VM's slow drifts hit them alike, and ratios are taken within a round.

mod agent;
mod child;
mod conns;
mod floor;
mod interrupt;
mod libssl;
mod metrics;
mod netns;
mod nginx;
mod procfs;
mod report;
pub(crate) mod uprobe;
mod wrk;

use std::{
    fs,
    net::SocketAddr,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use self::{
    agent::{Agent, Delta},
    floor::Floor,
    netns::{API_ADDR, Netns},
    nginx::{Nginx, Site},
    procfs::CpuTimes,
    report::{Held, Machine, Mode, Run, Scenario},
};

/// How long and how often to measure.
#[derive(Clone, Debug)]
pub(crate) struct Options {
    /// Seconds per wrk run.
    pub(crate) seconds: u64,
    /// Rounds; each runs every scenario in every mode once.
    pub(crate) rounds: usize,
    /// Keep-alive connections held open in the memory scenario (0 skips it).
    pub(crate) connections: usize,
}

/// Runs the live overhead bench; without root, says why it skips and returns Ok.
pub(crate) fn overhead(opts: &Options) -> Result<()> {
    if !crate::packages::nix_is_root() {
        println!(
            "bench overhead: skipped, it needs root (network namespace, eBPF probes, nginx); \
             run `sudo -E cargo xtask bench overhead`"
        );
        return Ok(());
    }
    crate::packages::ensure()?;
    let bin = crate::build_agent()?;
    // Two benches would share the namespace name and each other's CPUs: one at a time.
    let _lock = lock()?;
    interrupt::install();

    let dir = std::env::temp_dir().join(format!("apimon-bench-{}", std::process::id()));
    fs::create_dir_all(&dir).with_context(|| format!("creating {dir:?}"))?;
    let result = run(&bin, &dir, opts);
    match &result {
        Ok(()) => {
            let _ = fs::remove_dir_all(&dir);
        }
        // Logs of nginx, the agent and bpftrace stay for a look at what went wrong.
        Err(_) => eprintln!("bench overhead: logs kept in {}", dir.display()),
    }
    result
}

/// An exclusive lock held while the bench runs (released when the file closes, even on a
/// crash).
fn lock() -> Result<fs::File> {
    let path = Path::new("/run/apimon-bench.lock");
    let file = fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    // SAFETY: flock on a descriptor we own; no memory is involved.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        bail!(
            "another `cargo xtask bench overhead` holds {}: wait for it to finish",
            path.display()
        );
    }
    Ok(file)
}

/// Where each scenario's wrk points, and what the agent's `host` label for it is.
struct Target {
    url: String,
    host: String,
}

/// Everything a measured run needs.
struct Bench<'a> {
    bin: &'a Path,
    dir: &'a Path,
    config: PathBuf,
    libssl: PathBuf,
    seconds: u64,
    agents_started: usize,
}

fn run(bin: &Path, dir: &Path, opts: &Options) -> Result<()> {
    let (libssl, linked) = libssl::shared_by_wrk_and_nginx()?;
    let machine = Machine::gather(&crate::workspace_root(), &libssl, &linked);
    machine.print();
    println!(
        "command:  cargo xtask bench overhead --seconds {} --rounds {} --connections {}",
        opts.seconds, opts.rounds, opts.connections
    );
    let others = procfs::other_tracers(&[]);
    if !others.is_empty() {
        println!(
            "warning: other tracers are running and add their probes to every mode: {others:?}"
        );
    }

    let mut bench = Bench {
        bin,
        dir,
        config: agent::write_config(bin, dir)?,
        libssl,
        seconds: opts.seconds,
        agents_started: 0,
    };
    nginx::write_cert(dir, "api.bench.test", API_ADDR)?;
    let _netns = Netns::create()?;
    let api_plain = SocketAddr::new(API_ADDR.parse()?, 80);
    let _api = Nginx::start(
        dir,
        &Site {
            name: "api",
            plain: Some(api_plain),
            tls: Some(SocketAddr::new(API_ADDR.parse()?, 443)),
            in_netns: true,
        },
    )?;
    let port = agent::free_port()?;
    let _inbound = Nginx::start(
        dir,
        &Site {
            name: "inbound",
            plain: None,
            tls: Some(SocketAddr::from(([127, 0, 0, 1], port))),
            in_netns: false,
        },
    )?;
    let target = |s: Scenario| match s {
        Scenario::Plain => Target {
            url: format!("http://{API_ADDR}/v1/items"),
            host: API_ADDR.to_owned(),
        },
        Scenario::Tls => Target {
            url: format!("https://{API_ADDR}/v1/items"),
            host: API_ADDR.to_owned(),
        },
        Scenario::Inbound => Target {
            url: format!("https://127.0.0.1:{port}/v1/items"),
            host: format!("127.0.0.1:{port}"),
        },
    };

    // One short run each first: nginx's and wrk's pages faulted in, TLS code paths warm.
    for s in Scenario::ALL {
        wrk::run(&target(s).url, 2).with_context(|| format!("warming up {}", s.name()))?;
    }

    let started = Instant::now();
    let mut runs = Vec::new();
    for round in 1..=opts.rounds {
        for scenario in Scenario::ALL {
            // The order of modes turns each round: none of them always runs first.
            let mut modes = Scenario::MODES.to_vec();
            let turn = (round - 1) % modes.len();
            modes.rotate_left(turn);
            for mode in modes {
                interrupt::check()?;
                let run = bench.measure(round, scenario, mode, &target(scenario))?;
                println!("{}", run.line());
                runs.push(run);
            }
        }
    }
    let held = if opts.connections > 0 {
        Some(bench.hold_connections(api_plain, opts.connections)?)
    } else {
        None
    };
    println!(
        "\nmeasured in {:.0} s; medians of {} rounds of {} s per run, wrk -t1 -c{}",
        started.elapsed().as_secs_f64(),
        opts.rounds,
        opts.seconds,
        wrk::CONNECTIONS
    );
    report::print(&runs, held.as_ref());
    Ok(())
}

impl Bench<'_> {
    /// One wrk run of `scenario` with `mode` attached.
    fn measure(
        &mut self,
        round: usize,
        scenario: Scenario,
        mode: Mode,
        target: &Target,
    ) -> Result<Run> {
        let mut disturbed = !procfs::other_tracers(&[]).is_empty();
        let background = wait_for_quiet()?;
        let mut run = Run {
            round,
            scenario,
            mode,
            wrk: wrk::Outcome::default(),
            background,
            steal: 0.0,
            agent: None,
            floor_hits: None,
            disturbed: false,
        };
        match mode {
            Mode::None => self.load(&mut run, &target.url)?,
            Mode::Floor => {
                // The hooks apimon uses in this scenario: no OpenSSL probes where it
                // probes no one (the inbound server).
                let libssl = (scenario != Scenario::Inbound).then_some(self.libssl.as_path());
                let floor = Floor::start(self.dir, libssl)?;
                self.load(&mut run, &target.url)?;
                // The run was measured with bpftrace attached; one that then does not exit
                // in time (seen once: killed after 30 s, its counts never printed) costs
                // the hit count only, not the bench.
                run.floor_hits = floor
                    .stop()
                    .inspect_err(|e| eprintln!("bench: probe hits unknown: {e:#}"))
                    .ok();
            }
            Mode::Agent => {
                let agent = self.start_agent()?;
                let pid = agent.pid();
                let before = agent.snapshot()?;
                self.load(&mut run, &target.url)?;
                let after = agent.settled()?;
                disturbed |= !procfs::other_tracers(&[pid]).is_empty();
                run.agent = Some(Delta::between(&before, &after, &target.host));
                stop_agent(agent);
            }
        }
        run.disturbed = disturbed || !procfs::other_tracers(&[]).is_empty();
        Ok(run)
    }

    /// Runs wrk against `url` into `run`, with the hypervisor's steal over the same time.
    fn load(&self, run: &mut Run, url: &str) -> Result<()> {
        let start = CpuTimes::now()?;
        run.wrk = wrk::run(url, self.seconds)?;
        run.steal = start.steal_until(CpuTimes::now()?);
        Ok(())
    }

    fn start_agent(&mut self) -> Result<Agent> {
        self.agents_started += 1;
        Agent::start(self.bin, &self.config, self.dir, self.agents_started)
    }

    /// Opens `n` connections to the API with the agent running, one exchange on each, and
    /// reads the agent's memory while they are all open.
    fn hold_connections(&mut self, api: SocketAddr, n: usize) -> Result<Held> {
        // Our sockets, plus headroom for everything else this process has open.
        conns::raise_nofile(n as u64 + 1024)?;
        let agent = self.start_agent()?;
        let before = agent.snapshot()?;
        let t = Instant::now();
        let streams = conns::open(api, n)?;
        let open_secs = t.elapsed().as_secs_f64();
        // Let the agent drain its ring buffer and settle its tables.
        interrupt::sleep(Duration::from_secs(3))?;
        let after = agent.settled()?;
        let held = Held {
            connections: streams.len(),
            open_secs,
            rss_before: before.memory.rss,
            rss: after.memory.rss,
            tracked: after.page.total("apimon_connections_tracked").round() as u64,
            agent: Delta::between(&before, &after, API_ADDR),
        };
        drop(streams);
        stop_agent(agent);
        println!(
            "held {} connections: agent RSS {:.1} MB, peak {:.1} MB",
            held.connections,
            report::mb(held.rss),
            report::mb(held.agent.peak_rss)
        );
        Ok(held)
    }
}

/// Longest wait for other load on the host to stop before a run goes ahead anyway.
const QUIET_WAIT: Duration = Duration::from_secs(90);

/// Waits (up to [`QUIET_WAIT`]) until the host's CPUs are at most 10% busy over one second
/// while the bench itself is idle: whatever keeps them busy then is someone else's load (a
/// build, a test run) and would land on one mode only. Returns the last second's busy share.
fn wait_for_quiet() -> Result<f64> {
    let end = Instant::now() + QUIET_WAIT;
    let mut said = false;
    loop {
        let start = CpuTimes::now()?;
        interrupt::sleep(Duration::from_secs(1))?;
        let busy = start.busy_until(CpuTimes::now()?);
        if busy <= 0.10 || Instant::now() >= end {
            return Ok(busy);
        }
        if !said {
            println!(
                "  (host {:.0}% busy with other work: waiting up to {} s for it to stop)",
                busy * 100.0,
                QUIET_WAIT.as_secs()
            );
            said = true;
        }
    }
}

/// Stops the agent; an unclean exit is reported but does not end the bench (its figures are
/// already taken).
fn stop_agent(agent: Agent) {
    if let Err(e) = agent.stop() {
        eprintln!("warning: {e:#}");
    }
}
