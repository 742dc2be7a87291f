//! `cargo xtask`: one entry point to set up a fresh machine, build, run and test apimon.

mod bench;
mod cmd;
mod packages;
mod toolchain;

use std::{
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

use crate::cmd::run;

#[derive(Parser)]
#[command(about = "Set up, build, run and test apimon")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what is missing: nightly rust-src, bpf-linker (and test packages with --test-deps).
    Setup {
        /// Also install the Debian packages the tests use (curl, nginx, wrk, ...).
        #[arg(long)]
        test_deps: bool,
    },
    /// Set up, build the agent (eBPF object included) in release mode.
    Build,
    /// Set up, build and run `apimon run` with the given arguments (needs root).
    Run {
        /// Arguments passed to `apimon run`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up and run every test: unit, property, and the root-only integration tests.
    Test {
        /// Only run tests whose name contains this filter.
        filter: Option<String>,
    },
    /// Benchmarks, each reported beside its baseline in the same run: the detector (criterion,
    /// against JSON parsing of the same bytes) and the live overhead (nginx and wrk with no
    /// agent, a count-only bpftrace floor, and apimon; needs root).
    Bench {
        /// `detect`: only the detector; `overhead`: only the live bench; `uprobe`: what a
        /// uprobe costs by the instruction it replaces; any other text: the detector's
        /// benchmarks whose name contains it. Without it: the detector and the live bench.
        filter: Option<String>,
        /// Overhead bench: seconds per wrk run [default: 8, or 3 with --quick].
        #[arg(long)]
        seconds: Option<u64>,
        /// Overhead bench: rounds, each running every scenario in every mode [default: 3, or
        /// 1 with --quick].
        #[arg(long)]
        rounds: Option<usize>,
        /// Overhead bench: keep-alive connections held open to measure the agent's memory
        /// (0 skips that scenario).
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// Overhead bench: one round of 3 s runs, to check the harness.
        #[arg(long)]
        quick: bool,
    },
    /// Lint host crates and the eBPF crate (for its own target), and check formatting.
    Lint,
    /// The loop `bench uprobe` measures, run as its child.
    #[command(hide = true)]
    UprobeLoop { kind: String, calls: u64 },
    /// Fuzz a target (http_session, records) with cargo-fuzz for a while.
    Fuzz {
        /// Fuzz target name.
        #[arg(default_value = "http_session")]
        target: String,
        /// How long to fuzz.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Task::Setup { test_deps } => {
            toolchain::ensure()?;
            if test_deps {
                packages::ensure()?;
                packages::ensure_python_modules()?;
            }
            Ok(())
        }
        Task::Build => build_agent().map(drop),
        Task::Run { args } => {
            let bin = build_agent()?;
            let err = Command::new(&bin).arg("run").args(args).exec();
            Err(err).with_context(|| format!("exec {}", bin.display()))
        }
        Task::Test { filter } => test(filter.as_deref()),
        Task::Lint => lint(),
        Task::Bench {
            filter,
            seconds,
            rounds,
            connections,
            quick,
        } => {
            let options = bench::Options {
                seconds: seconds.unwrap_or(if quick { 3 } else { 8 }),
                rounds: rounds.unwrap_or(if quick { 1 } else { 3 }),
                connections,
            };
            bench(filter.as_deref(), &options)
        }
        Task::Fuzz { target, seconds } => fuzz(&target, seconds),
        Task::UprobeLoop { kind, calls } => bench::uprobe::child_loop(&kind, calls),
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// A cargo command rooted at the workspace, with bpf-linker on PATH.
fn cargo() -> Result<Command> {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root())
        .env("PATH", toolchain::path_with_cargo_bin()?);
    Ok(cmd)
}

/// A nightly cargo command (the eBPF crate and cargo-fuzz need nightly), rooted at the
/// workspace, with bpf-linker on PATH.
fn cargo_nightly() -> Result<Command> {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", toolchain::NIGHTLY, "cargo"])
        .current_dir(workspace_root())
        .env("PATH", toolchain::path_with_cargo_bin()?)
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO")
        .env_remove("RUSTC");
    Ok(cmd)
}

/// Builds `apimon` in release mode and returns the binary's path.
fn build_agent() -> Result<PathBuf> {
    toolchain::ensure()?;
    run(cargo()?.args([
        "build",
        "--release",
        "--package",
        "monitor-user",
        "--bin",
        "apimon",
    ]))?;
    let bin = target_dir().join("release").join("apimon");
    if !bin.exists() {
        bail!("cargo build succeeded but {} is missing", bin.display());
    }
    Ok(bin)
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace_root().join("target"), PathBuf::from)
}

fn test(filter: Option<&str>) -> Result<()> {
    toolchain::ensure()?;
    packages::ensure()?;
    packages::ensure_python_modules()?;
    let bin = build_agent()?;

    let mut unit = cargo()?;
    unit.args([
        "test",
        "--release",
        "--workspace",
        "--exclude",
        "monitor-ebpf",
        "--exclude",
        "tests",
    ]);
    if let Some(f) = filter {
        unit.arg(f);
    }
    run(&mut unit)?;

    // Integration tests load real eBPF programs and create network namespaces: one at a time.
    let mut integration = cargo()?;
    integration
        .args([
            "test",
            "--release",
            "--package",
            "tests",
            "--",
            "--test-threads=1",
            "--nocapture",
        ])
        .env("APIMON_BIN", &bin);
    if let Some(f) = filter {
        integration.arg(f);
    }
    run(&mut integration)
}

/// `detect`, `overhead` or `uprobe` runs that bench alone; other filters select detector benchmarks;
/// no filter runs both.
fn bench(filter: Option<&str>, options: &bench::Options) -> Result<()> {
    match filter {
        Some("overhead") => bench::overhead(options),
        Some("uprobe") => bench::uprobe::run(options.rounds),
        Some("detect") => bench_detector(None),
        Some(f) => bench_detector(Some(f)),
        None => {
            bench_detector(None)?;
            bench::overhead(options)
        }
    }
}

/// The detector's criterion benchmarks (`monitor-user/benches/detect.rs`).
fn bench_detector(filter: Option<&str>) -> Result<()> {
    toolchain::ensure()?;
    let mut detector = cargo()?;
    detector.args([
        "bench",
        "--package",
        "monitor-user",
        "--bench",
        "detect",
        "--",
    ]);
    if let Some(f) = filter {
        detector.arg(f);
    }
    run(&mut detector)
}

fn lint() -> Result<()> {
    toolchain::ensure()?;
    run(cargo()?.args(["fmt", "--all", "--check"]))?;
    run(cargo()?.args([
        "clippy",
        "--workspace",
        "--exclude",
        "monitor-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    run(cargo_nightly()?
        .args([
            "clippy",
            "--package",
            "monitor-ebpf",
            "--bins",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Zbuild-std=core",
            "--",
            "-D",
            "warnings",
        ])
        .env("CARGO_CFG_BPF_TARGET_ARCH", std::env::consts::ARCH)
        .env(
            "RUSTFLAGS",
            format!("--cfg bpf_target_arch=\"{}\"", std::env::consts::ARCH),
        ))
}

fn fuzz(target: &str, seconds: u64) -> Result<()> {
    toolchain::ensure()?;
    let has_cargo_fuzz = Command::new("cargo")
        .args(["fuzz", "--version"])
        .env("PATH", toolchain::path_with_cargo_bin()?)
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_cargo_fuzz {
        run(cargo()?.args(["install", "cargo-fuzz", "--locked"]))?;
    }
    // The fuzzed code is userspace only: skip building the eBPF object under sanitizers.
    run(cargo_nightly()?
        .args([
            "fuzz",
            "run",
            target,
            "--fuzz-dir",
            "fuzz",
            "--",
            &format!("-max_total_time={seconds}"),
        ])
        .env("AYA_BUILD_SKIP", "1"))
}
