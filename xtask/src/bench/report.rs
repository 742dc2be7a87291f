//! What the bench prints: the machine, one line per run while it goes, and at the end the
//! summary table with each target's PASS or MISS.

use std::{fmt::Write as _, fs, path::Path, process::Command, thread};

use super::{
    agent::Delta,
    procfs,
    wrk::{self, CONNECTIONS},
};

/// A load pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scenario {
    /// wrk -> nginx in the namespace, plain HTTP: the agent's egress path.
    Plain,
    /// wrk -> nginx in the namespace over TLS 1.3: egress through OpenSSL.
    Tls,
    /// wrk -> nginx on the host over loopback TLS: a server the agent should leave alone.
    Inbound,
}

impl Scenario {
    /// Every scenario, in the order each round runs them.
    pub(crate) const ALL: [Self; 3] = [Self::Plain, Self::Tls, Self::Inbound];

    /// Its name in the tables.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Plain => "plaintext",
            Self::Tls => "TLS",
            Self::Inbound => "inbound TLS (loopback)",
        }
    }

    /// Its name in the targets table.
    fn short_name(self) -> &'static str {
        match self {
            Self::Inbound => "inbound TLS",
            s => s.name(),
        }
    }

    /// The modes every scenario is measured in. The floor hooks what apimon hooks there:
    /// OpenSSL too where it probes the caller, the tracepoints alone for the inbound server.
    pub(crate) const MODES: [Mode; 3] = [Mode::None, Mode::Floor, Mode::Agent];
}

/// What is watching the traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Nothing attached.
    None,
    /// bpftrace, count-only probes on apimon's hooks in every process.
    Floor,
    /// apimon with its default configuration.
    Agent,
}

impl Mode {
    /// Its name in the tables.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Floor => "floor",
            Self::Agent => "agent",
        }
    }
}

/// One timed wrk run in one mode.
#[derive(Clone, Debug)]
pub(crate) struct Run {
    /// Round number, from 1.
    pub(crate) round: usize,
    /// Load pattern.
    pub(crate) scenario: Scenario,
    /// What was attached.
    pub(crate) mode: Mode,
    /// What wrk reported.
    pub(crate) wrk: wrk::Outcome,
    /// Share of the host's CPU time busy in the second before the run, the bench idle.
    pub(crate) background: f64,
    /// Share of the host's CPU time the hypervisor stole during the wrk run.
    pub(crate) steal: f64,
    /// What the agent reported and used, in agent mode.
    pub(crate) agent: Option<Delta>,
    /// bpftrace's probe hits, in floor mode.
    pub(crate) floor_hits: Option<u64>,
    /// Another apimon or bpftrace was running on the host around this run.
    pub(crate) disturbed: bool,
}

impl Run {
    /// One line for the progress log.
    pub(crate) fn line(&self) -> String {
        let mut s = format!(
            "round {} {:<22} {:<5} {:>9.0} req/s {:>9} requests",
            self.round,
            self.scenario.name(),
            self.mode.name(),
            self.wrk.rps,
            self.wrk.requests
        );
        let _ = write!(
            s,
            " [background {:.0}%, steal {:.1}%]",
            self.background * 100.0,
            self.steal * 100.0
        );
        if self.wrk.errors > 0 {
            let _ = write!(s, " {} ERRORS", self.wrk.errors);
        }
        if let Some(hits) = self.floor_hits {
            let _ = write!(
                s,
                ", {hits} probe hits ({:.1}/request)",
                hits as f64 / self.wrk.requests.max(1) as f64
            );
        }
        if let Some(a) = &self.agent {
            let _ = write!(
                s,
                ", agent: {} egress ({:.5}) {} ingress, lost {}, CPU {:.0} ms ({} µs/egress call, {} µs/call seen), peak RSS {:.1} MB",
                a.egress,
                a.egress as f64 / self.wrk.requests.max(1) as f64,
                a.ingress,
                a.lost,
                a.cpu.as_secs_f64() * 1e3,
                fmt(per_egress_call(a), 2),
                fmt(cpu_per_call(a, a.egress + a.ingress), 2),
                mb(a.peak_rss)
            );
            for (reason, n) in &a.lost_by_reason {
                let _ = write!(s, " [{reason} {n}]");
            }
            s.push_str(&shed_line(a));
            if a.not_copied > 0 || a.skipped > 0 {
                let _ = write!(
                    s,
                    ", bytes not copied {}, records skipped {}",
                    a.not_copied, a.skipped
                );
            }
            if self.scenario != Scenario::Plain {
                let _ = write!(s, ", {}", tls_line(a));
            }
        }
        if self.disturbed {
            s += " (*another tracer was running)";
        }
        if self.loaded() {
            s += " (*busy host)";
        }
        s
    }

    /// Whether someone else's load may have moved this run: over 10% of the host's CPU busy
    /// before it, or over 5% stolen during it.
    pub(crate) fn loaded(&self) -> bool {
        self.background > 0.10 || self.steal > 0.05
    }
}

/// The agent's `apimon_tls_*` metrics as `name=value` (prefix dropped; the agent always
/// exports them).
fn tls_line(a: &Delta) -> String {
    a.tls
        .iter()
        .map(|(n, v)| format!("{}={v}", n.trim_start_matches("apimon_")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// ", shed: body 12, sampled_out 3" for the shed stages that moved; empty if none did.
fn shed_line(a: &Delta) -> String {
    if a.shed_by_stage.is_empty() {
        return String::new();
    }
    let stages: Vec<String> = a
        .shed_by_stage
        .iter()
        .map(|(stage, n)| format!("{stage} {n}"))
        .collect();
    format!(", shed: {}", stages.join(", "))
}

/// Agent CPU time per egress call it counted, in µs.
fn per_egress_call(a: &Delta) -> Option<f64> {
    cpu_per_call(a, a.egress)
}

/// Agent CPU time per call of `calls`, in µs; `None` for no calls.
fn cpu_per_call(a: &Delta, calls: u64) -> Option<f64> {
    (calls > 0).then(|| a.cpu.as_secs_f64() * 1e6 / calls as f64)
}

/// Bytes as MB (10^6, the unit of the target).
pub(crate) fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

/// The 10,000-connection scenario's result.
#[derive(Clone, Debug)]
pub(crate) struct Held {
    /// Connections held open.
    pub(crate) connections: usize,
    /// Seconds it took to open them and finish one exchange on each.
    pub(crate) open_secs: f64,
    /// Agent RSS before they were opened.
    pub(crate) rss_before: u64,
    /// Agent RSS with all of them open.
    pub(crate) rss: u64,
    /// `apimon_connections_tracked` with all of them open.
    pub(crate) tracked: u64,
    /// What the agent counted meanwhile, and its peak RSS with all of them open.
    pub(crate) agent: Delta,
}

/// The machine and the software under test, as printed and documented.
#[derive(Clone, Debug)]
pub(crate) struct Machine {
    /// "key: value" lines.
    pub(crate) lines: Vec<(String, String)>,
}

impl Machine {
    /// Reads CPU, memory, kernel, tool versions and the commit the agent was built from.
    pub(crate) fn gather(workspace: &Path, libssl: &Path, linked: &str) -> Self {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map_or("unknown", |l| l.trim_start_matches([' ', '\t', ':']))
            .to_owned();
        let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem = procfs::kib_field(&meminfo, "MemTotal:").map_or_else(
            || "unknown".to_owned(),
            |kib| format!("{:.1} GiB", kib as f64 / 1024.0 / 1024.0),
        );
        let nproc = thread::available_parallelism().map_or(0, usize::from);
        let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned();
        let commit = first_line(
            Command::new("git").args(["rev-parse", "--short", "HEAD"]),
            workspace,
        );
        let dirty = Command::new("git")
            .args(["status", "--porcelain", "--untracked-files=no"])
            .current_dir(workspace)
            .output()
            .is_ok_and(|o| !o.stdout.is_empty());
        let agent = if dirty {
            format!("{commit} with uncommitted changes in the tree")
        } else {
            commit
        };
        let lines = vec![
            ("cpu".to_owned(), format!("{cpu}, {nproc} vCPU")),
            ("memory".to_owned(), mem),
            ("kernel".to_owned(), format!("Linux {kernel}")),
            ("bpf stats".to_owned(), bpf_stats()),
            (
                "agent".to_owned(),
                format!("target/release/apimon built from {agent}"),
            ),
            (
                "nginx".to_owned(),
                first_line(Command::new("nginx").arg("-v"), workspace),
            ),
            ("wrk".to_owned(), wrk::version(workspace)),
            (
                "bpftrace".to_owned(),
                first_line(Command::new("bpftrace").arg("--version"), workspace),
            ),
            (
                "openssl".to_owned(),
                first_line(Command::new("openssl").arg("version"), workspace),
            ),
            (
                "libssl".to_owned(),
                format!("{} ({linked})", libssl.display()),
            ),
        ];
        Self { lines }
    }

    /// Prints one "key: value" line each.
    pub(crate) fn print(&self) {
        println!("machine:");
        for (k, v) in &self.lines {
            println!("  {k:<9} {v}");
        }
    }
}

/// Whether the kernel times every eBPF program run (`kernel.bpf_stats_enabled`): when on, each
/// run of the floor's and the agent's programs alike also reads the clock twice, which on a VM
/// with kvm-clock was 2% of the CPU of a host saturated with traced syscalls (perf,
/// docs/performance.md).
fn bpf_stats() -> String {
    match fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").map(|s| s.trim().to_owned()) {
        Ok(v) if v == "0" => "off (kernel.bpf_stats_enabled=0)".to_owned(),
        Ok(v) => format!("on (kernel.bpf_stats_enabled={v}): every program run is timed"),
        Err(e) => format!("unknown ({e})"),
    }
}

/// The first line a command prints on stdout, or else on stderr (nginx -v uses stderr).
pub(crate) fn first_line(cmd: &mut Command, dir: &Path) -> String {
    cmd.current_dir(dir)
        .output()
        .ok()
        .and_then(|o| {
            let out = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&out)
                .lines()
                .next()
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The median, or `None` for no values.
pub(crate) fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len().is_multiple_of(2) {
        f64::midpoint(values[mid - 1], values[mid])
    } else {
        values[mid]
    })
}

/// The figures of one scenario over all rounds.
#[derive(Clone, Debug, Default)]
struct Figures {
    none: Option<f64>,
    floor: Option<f64>,
    agent: Option<f64>,
    agent_none: Option<f64>,
    agent_floor: Option<f64>,
    /// What the count-only probes alone keep: no agent on these hooks does better.
    floor_none: Option<f64>,
    cpu_per_egress_call: Option<f64>,
    counted: u64,
    completed: u64,
    agent_runs: u64,
    lost: u64,
    disturbed: bool,
}

impl Figures {
    fn of(runs: &[Run], scenario: Scenario) -> Self {
        let of = |mode: Mode| {
            runs.iter()
                .filter(move |r| r.scenario == scenario && r.mode == mode)
        };
        let rps = |mode: Mode| median(of(mode).map(|r| r.wrk.rps).collect());
        // Ratios within a round, where the machine's drift hit both modes alike.
        let ratio = |top: Mode, bottom: Mode| {
            median(
                of(top)
                    .filter_map(|t| {
                        let b = of(bottom).find(|b| b.round == t.round)?;
                        Some(t.wrk.rps / b.wrk.rps)
                    })
                    .collect(),
            )
        };
        let agents: Vec<&Run> = of(Mode::Agent).collect();
        Self {
            none: rps(Mode::None),
            floor: rps(Mode::Floor),
            agent: rps(Mode::Agent),
            agent_none: ratio(Mode::Agent, Mode::None),
            agent_floor: ratio(Mode::Agent, Mode::Floor),
            floor_none: ratio(Mode::Floor, Mode::None),
            cpu_per_egress_call: median(
                agents
                    .iter()
                    .filter_map(|r| per_egress_call(r.agent.as_ref()?))
                    .collect(),
            ),
            counted: agents
                .iter()
                .filter_map(|r| r.agent.as_ref())
                .map(|a| a.egress)
                .sum(),
            completed: agents.iter().map(|r| r.wrk.requests).sum(),
            agent_runs: agents.len() as u64,
            lost: agents
                .iter()
                .filter_map(|r| r.agent.as_ref())
                .map(|a| a.lost)
                .sum(),
            disturbed: runs
                .iter()
                .any(|r| r.scenario == scenario && (r.disturbed || r.loaded())),
        }
    }

    fn completeness(&self) -> Option<f64> {
        (self.completed > 0).then(|| self.counted as f64 / self.completed as f64)
    }
}

/// A throughput ratio of one scenario's medians.
#[derive(Clone, Copy, Debug)]
enum Ratio {
    AgentNone,
    AgentFloor,
}

impl Ratio {
    fn name(self) -> &'static str {
        match self {
            Self::AgentNone => "agent/none",
            Self::AgentFloor => "agent/floor",
        }
    }

    fn of(self, f: &Figures) -> Option<f64> {
        match self {
            Self::AgentNone => f.agent_none,
            Self::AgentFloor => f.agent_floor,
        }
    }
}

/// A throughput target: the least a ratio of one scenario may be.
#[derive(Clone, Copy, Debug)]
struct Goal {
    scenario: Scenario,
    ratio: Ratio,
    min: f64,
}

/// Each scenario's throughput target, in the order of [`Scenario::ALL`]: the scenario table
/// and the targets table are both built from it.
const GOALS: [Goal; 3] = [
    Goal {
        scenario: Scenario::Plain,
        ratio: Ratio::AgentNone,
        min: 0.95,
    },
    Goal {
        scenario: Scenario::Tls,
        ratio: Ratio::AgentFloor,
        min: 1.3,
    },
    Goal {
        scenario: Scenario::Inbound,
        ratio: Ratio::AgentNone,
        min: 0.97,
    },
];

impl Goal {
    /// The goal as printed: `>= 0.95`.
    fn text(self) -> String {
        format!(">= {}", self.min)
    }

    fn pass(self, f: &Figures) -> Option<bool> {
        self.ratio.of(f).map(|v| v >= self.min)
    }

    /// For a goal against no agent: what the floor kept, when even it fell short of the goal.
    fn out_of_floor_reach(self, f: &Figures) -> Option<f64> {
        match self.ratio {
            Ratio::AgentNone => f.floor_none.filter(|&v| v < self.min),
            Ratio::AgentFloor => None,
        }
    }
}

/// One target: what was measured, the goal, and whether it was met.
struct Check {
    what: String,
    measured: String,
    goal: String,
    pass: Option<bool>,
}

/// PASS, MISS, or n/a when there was nothing to measure.
fn verdict(pass: Option<bool>) -> &'static str {
    match pass {
        Some(true) => "PASS",
        Some(false) => "MISS",
        None => "n/a",
    }
}

fn fmt(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.decimals$}"))
}

/// Prints the summary: the scenario table, the targets, the 10,000-connection line, and
/// every run.
pub(crate) fn print(runs: &[Run], held: Option<&Held>) {
    let plain = Figures::of(runs, Scenario::Plain);
    let tls = Figures::of(runs, Scenario::Tls);
    let inbound = Figures::of(runs, Scenario::Inbound);
    let figures = |s: Scenario| match s {
        Scenario::Plain => &plain,
        Scenario::Tls => &tls,
        Scenario::Inbound => &inbound,
    };

    // Completeness may exceed 1 by the requests in flight when wrk stopped (wrk does not
    // count them, the agent does): at most CONNECTIONS per run.
    let completeness_ok = |f: &Figures| {
        f.completeness().map(|c| {
            c >= 0.999
                && f.counted <= f.completed + u64::from(CONNECTIONS) * f.agent_runs
                && f.lost == 0
        })
    };
    let cpu_ok = |f: &Figures| f.cpu_per_egress_call.map(|us| us <= 10.0);

    println!();
    println!(
        "| scenario | none req/s | floor req/s | agent req/s | floor/none | agent/none | agent/floor | agent CPU µs/egress call | completeness | lost | target | result |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for goal in GOALS {
        let scenario = goal.scenario;
        let f = figures(scenario);
        let completeness = if scenario == Scenario::Inbound {
            "-".to_owned()
        } else {
            format!(
                "{} ({}/{})",
                fmt(f.completeness(), 5),
                f.counted,
                f.completed
            )
        };
        println!(
            "| {}{} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} {} | {} |",
            scenario.name(),
            if f.disturbed { " *" } else { "" },
            fmt(f.none, 0),
            fmt(f.floor, 0),
            fmt(f.agent, 0),
            fmt(f.floor_none, 3),
            fmt(f.agent_none, 3),
            fmt(f.agent_floor, 3),
            if scenario == Scenario::Inbound {
                "-".to_owned()
            } else {
                fmt(f.cpu_per_egress_call, 2)
            },
            completeness,
            f.lost,
            goal.ratio.name(),
            goal.text(),
            verdict(goal.pass(f)),
        );
    }
    if [&plain, &tls, &inbound].iter().any(|f| f.disturbed) {
        println!(
            "(* some of these runs had another apimon or bpftrace on the host, over 10% of its CPU busy before the run, or over 5% stolen during it: see every run below)"
        );
    }

    let ratio_check = |goal: &Goal| {
        let f = figures(goal.scenario);
        Check {
            what: format!("{} {}", goal.scenario.short_name(), goal.ratio.name()),
            measured: fmt(goal.ratio.of(f), 3),
            goal: goal.text(),
            pass: goal.pass(f),
        }
    };
    // The egress throughput targets first, inbound's last.
    let mut checks: Vec<Check> = GOALS
        .iter()
        .filter(|g| g.scenario != Scenario::Inbound)
        .map(ratio_check)
        .collect();
    let egress = [Scenario::Plain, Scenario::Tls];
    for s in egress {
        let f = figures(s);
        checks.push(Check {
            what: format!("{} completeness, events lost", s.short_name()),
            measured: format!("{}, {} lost", fmt(f.completeness(), 5), f.lost),
            goal: ">= 0.999, 0 lost".to_owned(),
            pass: completeness_ok(f),
        });
    }
    for s in egress {
        let f = figures(s);
        checks.push(Check {
            what: format!("{} agent CPU per egress call", s.short_name()),
            measured: format!("{} µs", fmt(f.cpu_per_egress_call, 2)),
            goal: "<= 10 µs".to_owned(),
            pass: cpu_ok(f),
        });
    }
    if let Some(h) = held {
        let peak = h.agent.peak_rss;
        checks.push(Check {
            what: format!("agent peak RSS, {} connections", h.connections),
            measured: format!("{:.1} MB", mb(peak)),
            goal: "<= 100 MB".to_owned(),
            pass: Some(peak <= 100_000_000),
        });
    }
    checks.extend(
        GOALS
            .iter()
            .filter(|g| g.scenario == Scenario::Inbound)
            .map(ratio_check),
    );

    println!();
    println!("| target | measured | goal | result |");
    println!("|---|---|---|---|");
    for c in &checks {
        println!(
            "| {} | {} | {} | {} |",
            c.what,
            c.measured,
            c.goal,
            verdict(c.pass)
        );
    }
    for goal in GOALS {
        if let Some(kept) = goal.out_of_floor_reach(figures(goal.scenario)) {
            println!(
                "{}: the floor alone kept {kept:.3} of no agent, under the goal of {}: count-only probes on these hooks, doing no work of their own, already miss it on this machine",
                goal.scenario.short_name(),
                goal.min
            );
        }
    }

    if let Some(h) = held {
        println!();
        println!(
            "{} connections (one exchange each, then held open) in {:.1} s: agent RSS {:.1} MB before, {:.1} MB with them open ({:.0} bytes per connection), peak {:.1} MB; apimon_connections_tracked {}; egress calls counted {}/{}, ingress {}, lost {}{}",
            h.connections,
            h.open_secs,
            mb(h.rss_before),
            mb(h.rss),
            h.rss.saturating_sub(h.rss_before) as f64 / h.connections.max(1) as f64,
            mb(h.agent.peak_rss),
            h.tracked,
            h.agent.egress,
            h.connections,
            h.agent.ingress,
            h.agent.lost,
            shed_line(&h.agent),
        );
    }
    let tls_probed: Vec<String> = runs
        .iter()
        .filter(|r| r.scenario == Scenario::Inbound)
        .filter_map(|r| {
            let a = r.agent.as_ref()?;
            Some(format!("round {}: {}", r.round, tls_line(a)))
        })
        .collect();
    if !tls_probed.is_empty() {
        println!(
            "inbound TLS, the agent's TLS metrics at the end of each agent run: {}",
            tls_probed.join("; ")
        );
    }

    println!();
    println!("every run:");
    for r in runs {
        println!("  {}", r.line());
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn agent_run(egress: u64, ingress: u64) -> Run {
        Run {
            round: 1,
            scenario: Scenario::Inbound,
            mode: Mode::Agent,
            wrk: wrk::Outcome {
                requests: 1000,
                rps: 100.0,
                errors: 0,
            },
            background: 0.0,
            steal: 0.0,
            agent: Some(Delta {
                egress,
                ingress,
                cpu: Duration::from_millis(80),
                ..Delta::default()
            }),
            floor_hits: None,
            disturbed: false,
        }
    }

    #[test]
    fn cpu_per_call_is_a_dash_without_calls() {
        let line = agent_run(0, 0).line();
        assert!(
            line.contains("(- µs/egress call, - µs/call seen)"),
            "{line}"
        );
        let line = agent_run(0, 400).line();
        assert!(
            line.contains("(- µs/egress call, 200.00 µs/call seen)"),
            "{line}"
        );
        let line = agent_run(100, 100).line();
        assert!(
            line.contains("(800.00 µs/egress call, 400.00 µs/call seen)"),
            "{line}"
        );
    }

    fn run(scenario: Scenario, mode: Mode, round: usize, rps: f64) -> Run {
        Run {
            round,
            scenario,
            mode,
            wrk: wrk::Outcome {
                requests: 1000,
                rps,
                errors: 0,
            },
            ..agent_run(0, 0)
        }
    }

    #[test]
    fn a_goal_the_floor_itself_misses_is_called_out_of_its_reach() {
        // Two rounds; ratios are taken within a round, then their median.
        let runs = [
            run(Scenario::Plain, Mode::None, 1, 100.0),
            run(Scenario::Plain, Mode::Floor, 1, 90.0),
            run(Scenario::Plain, Mode::Agent, 1, 50.0),
            run(Scenario::Plain, Mode::None, 2, 200.0),
            run(Scenario::Plain, Mode::Floor, 2, 170.0),
            run(Scenario::Plain, Mode::Agent, 2, 100.0),
        ];
        let f = Figures::of(&runs, Scenario::Plain);
        let floor_none = f.floor_none.unwrap();
        assert!((floor_none - 0.875).abs() < 1e-9, "{floor_none}");
        let [plain, tls, _] = GOALS;
        assert_eq!(plain.out_of_floor_reach(&f), Some(floor_none));
        // A goal against the floor is never out of its reach.
        assert_eq!(tls.out_of_floor_reach(&f), None);
        let reachable = Goal { min: 0.8, ..plain };
        assert_eq!(reachable.out_of_floor_reach(&f), None);
    }
}
