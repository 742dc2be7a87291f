//! `cargo xtask bench uprobe`: what one uprobe costs a call, by the instruction it replaces.
//!
//! The kernel emulates a few instructions after a uprobe's trap (a push of a register, nops,
//! direct jumps) and single-steps every other one out of line, a second trap. Where that
//! second trap is expensive (this VM), the instruction under the probe decides most of its
//! cost, which is why apimon puts OpenSSL's probes on functions that begin with a push
//! (monitor-user/src/capture/probe_site.rs). Two functions here do the same work and differ
//! only in their first instruction; a child process calls one in a loop with no probe, with
//! an entry probe, and with an entry and a return probe (tracefs uprobe events on this very
//! binary), modes in turn within each round.

use std::{
    fs,
    io::{BufRead as _, BufReader, Write as _},
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use super::report::median;

/// Calls per measurement.
const CALLS: u64 = 200_000;

/// Where tracefs is mounted (the bench mounts it if needed).
const TRACEFS: &str = "/sys/kernel/tracing";

#[cfg(target_arch = "x86_64")]
std::arch::global_asm!(
    ".globl apimon_uprobe_sub",
    ".type apimon_uprobe_sub,@function",
    "apimon_uprobe_sub:",
    "sub rsp, 0x18",
    "lea eax, [rdi + 1]",
    "add rsp, 0x18",
    "ret",
    ".size apimon_uprobe_sub, .-apimon_uprobe_sub",
    ".globl apimon_uprobe_push",
    ".type apimon_uprobe_push,@function",
    "apimon_uprobe_push:",
    "push rbp",
    "lea eax, [rdi + 1]",
    "pop rbp",
    "ret",
    ".size apimon_uprobe_push, .-apimon_uprobe_push",
);

#[cfg(target_arch = "x86_64")]
unsafe extern "C" {
    /// Begins with `sub $0x18,%rsp`, as OpenSSL's `SSL_read` does: single-stepped.
    fn apimon_uprobe_sub(x: u32) -> u32;
    /// Begins with `push %rbp`: emulated.
    fn apimon_uprobe_push(x: u32) -> u32;
}

/// The functions measured: the name the child takes, and what the report calls them.
const KINDS: [(&str, &str); 2] = [
    ("sub", "`sub $0x18,%rsp` (single-stepped)"),
    ("push", "`push %rbp` (emulated)"),
];

/// How the function is probed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Probe {
    None,
    Entry,
    EntryAndReturn,
}

impl Probe {
    const ALL: [Self; 3] = [Self::None, Self::Entry, Self::EntryAndReturn];
}

/// Runs the bench; without root or off x86-64, says why it skips and returns Ok.
pub(crate) fn run(rounds: usize) -> Result<()> {
    if !cfg!(target_arch = "x86_64") {
        println!("bench uprobe: skipped, its functions are x86-64 code");
        return Ok(());
    }
    if !crate::packages::nix_is_root() {
        println!("bench uprobe: skipped, it needs root (tracefs uprobe events)");
        return Ok(());
    }
    mount_tracefs()?;
    let exe = std::env::current_exe().context("finding this binary")?;
    // kind -> probe -> ns per call, one value per round.
    let mut ns: [[Vec<f64>; 3]; 2] = Default::default();
    for round in 0..rounds.max(1) {
        for (k, (kind, _)) in KINDS.iter().enumerate() {
            for i in 0..Probe::ALL.len() {
                let p = (i + round) % Probe::ALL.len();
                let v = measure(&exe, kind, Probe::ALL[p])?;
                println!(
                    "  round {} {kind:<4} {:?}: {v:.0} ns per call",
                    round + 1,
                    Probe::ALL[p]
                );
                ns[k][p].push(v);
            }
        }
    }
    println!(
        "\n| first instruction | no probe | entry probe | entry + return | entry probe / no probe |"
    );
    println!("|---|---|---|---|---|");
    let med = ns.map(|by_probe| by_probe.map(|v| median(v).unwrap_or(0.0)));
    for ((_, first), m) in KINDS.iter().zip(&med) {
        println!(
            "| {first} | {:.3} µs | {:.2} µs | {:.2} µs | {:.0}x |",
            m[0] / 1e3,
            m[1] / 1e3,
            m[2] / 1e3,
            m[1] / m[0].max(1e-3)
        );
    }
    println!(
        "\nan entry probe on `sub` costs {:.1}x one on `push` (medians of {} rounds of {CALLS} calls)",
        med[0][1] / med[1][1].max(1e-3),
        rounds.max(1)
    );
    Ok(())
}

/// Nanoseconds per call of `kind` with `probe` on it, measured in a child process.
fn measure(exe: &Path, kind: &str, probe: Probe) -> Result<f64> {
    let mut child = Command::new(exe)
        .args(["uprobe-loop", kind, &CALLS.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the loop")?;
    let mut out = BufReader::new(child.stdout.take().context("no stdout")?);
    let mut line = String::new();
    out.read_line(&mut line)?;
    let offset = line
        .strip_prefix("offset ")
        .and_then(|s| u64::from_str_radix(s.trim(), 16).ok())
        .with_context(|| format!("the loop said {line:?}"))?;
    let group = format!("apimon_bench_{}", child.id());
    let mut events = Vec::new();
    let result = (|| -> Result<f64> {
        if probe != Probe::None {
            events.push(add_event(&group, "entry", 'p', exe, offset)?);
        }
        if probe == Probe::EntryAndReturn {
            events.push(add_event(&group, "ret", 'r', exe, offset)?);
        }
        let mut stdin = child.stdin.take().context("no stdin")?;
        writeln!(stdin, "go")?;
        line.clear();
        out.read_line(&mut line)?;
        line.strip_prefix("ns ")
            .and_then(|s| s.trim().parse().ok())
            .with_context(|| format!("the loop said {line:?}"))
    })();
    for e in events.iter().rev() {
        remove_event(&group, e);
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("the loop exited with {status}");
    }
    result
}

/// Creates and enables a tracefs uprobe (`p`) or uretprobe (`r`) event at `offset` in `exe`.
fn add_event(group: &str, name: &str, kind: char, exe: &Path, offset: u64) -> Result<String> {
    let spec = format!("{kind}:{group}/{name} {}:0x{offset:x}\n", exe.display());
    append(&format!("{TRACEFS}/uprobe_events"), &spec)?;
    fs::write(format!("{TRACEFS}/events/{group}/{name}/enable"), "1")
        .with_context(|| format!("enabling {group}/{name}"))?;
    Ok(name.to_owned())
}

/// Disables and deletes an event made by [`add_event`]; failures only leave an idle event.
fn remove_event(group: &str, name: &str) {
    let _ = fs::write(format!("{TRACEFS}/events/{group}/{name}/enable"), "0");
    let _ = append(
        &format!("{TRACEFS}/uprobe_events"),
        &format!("-:{group}/{name}\n"),
    );
}

fn append(path: &str, text: &str) -> Result<()> {
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(path)
        .with_context(|| format!("opening {path}"))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("writing {text:?} to {path}"))
}

fn mount_tracefs() -> Result<()> {
    if Path::new(TRACEFS).join("uprobe_events").exists() {
        return Ok(());
    }
    let status = Command::new("mount")
        .args(["-t", "tracefs", "tracefs", TRACEFS])
        .status()?;
    if !status.success() {
        bail!("mounting tracefs at {TRACEFS} failed ({status})");
    }
    Ok(())
}

/// The child: prints the file offset of `kind`'s function, waits for "go" on stdin, calls it
/// `calls` times and prints the nanoseconds per call.
pub(crate) fn child_loop(kind: &str, calls: u64) -> Result<()> {
    #[cfg(target_arch = "x86_64")]
    {
        let f: unsafe extern "C" fn(u32) -> u32 = match kind {
            "sub" => apimon_uprobe_sub,
            "push" => apimon_uprobe_push,
            _ => bail!("unknown function {kind:?}"),
        };
        println!("offset {:x}", file_offset(f as usize as u64)?);
        let mut go = String::new();
        std::io::stdin().read_line(&mut go)?;
        let start = std::time::Instant::now();
        let mut sum = 0u32;
        for i in 0..calls {
            // SAFETY: both functions only compute from their argument and return.
            sum = sum.wrapping_add(unsafe { f(std::hint::black_box(i as u32)) });
        }
        let elapsed = start.elapsed();
        std::hint::black_box(sum);
        println!("ns {}", elapsed.as_nanos() as f64 / calls.max(1) as f64);
        Ok(())
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (kind, calls);
        bail!("x86-64 only")
    }
}

/// The file offset of `addr` in this process's executable, from /proc/self/maps.
fn file_offset(addr: u64) -> Result<u64> {
    let maps = fs::read_to_string("/proc/self/maps")?;
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (Some(range), Some(_perms), Some(offset)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end), Ok(offset)) = (
            u64::from_str_radix(start, 16),
            u64::from_str_radix(end, 16),
            u64::from_str_radix(offset, 16),
        ) else {
            continue;
        };
        if (start..end).contains(&addr) {
            return Ok(addr - start + offset);
        }
    }
    bail!("0x{addr:x} is in no mapping of this process")
}
