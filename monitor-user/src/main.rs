//! `apimon`: the host agent's command line.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use apimon::{
    capture::host::{self, Status},
    config::Config,
};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "apimon",
    version,
    about = "Watches the HTTP API calls processes make and serve, plaintext or TLS"
)]
struct Cli {
    /// Log level (error, warn, info, debug, trace); RUST_LOG overrides it.
    #[arg(long, global = true, default_value = "warn")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent (needs root or CAP_BPF+CAP_PERFMON).
    Run {
        /// Configuration file (TOML); every key has a default.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Write one JSON object per call to FILE, or to stdout with `-`.
        #[arg(long, value_name = "FILE|-")]
        events: Option<PathBuf>,
        /// Serve Prometheus metrics on this address (default 127.0.0.1:9464).
        #[arg(long, value_name = "ADDR")]
        metrics_addr: Option<SocketAddr>,
    },
    /// Check whether this host can run the agent, and say what to fix.
    Check,
}

fn init_logs(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(format!("apimon={level},{level}")))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(&cli.log_level);
    let result = match cli.command {
        Command::Run {
            config,
            events,
            metrics_addr,
        } => run(config, events, metrics_addr),
        Command::Check => return check(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("apimon: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(
    config: Option<PathBuf>,
    events: Option<PathBuf>,
    metrics_addr: Option<SocketAddr>,
) -> anyhow::Result<()> {
    let mut config = match config {
        Some(path) => Config::load(&path)?,
        None => Config::default(),
    };
    if let Some(e) = events {
        config.output.events = Some(e);
    }
    if let Some(a) = metrics_addr {
        config.output.metrics_addr = a;
    }
    apimon::run::run(config)
}

fn check() -> ExitCode {
    let mut checks = host::preflight();
    let fatal = checks.iter().any(|c| c.status == Status::Fail);
    if !fatal {
        checks.push(apimon::run::verify_programs());
    }
    let mut failed = false;
    for c in &checks {
        let tag = match c.status {
            Status::Ok => "ok  ",
            Status::Warn => "WARN",
            Status::Fail => {
                failed = true;
                "FAIL"
            }
        };
        println!("{tag}  {:<15} {}", c.name, c.detail);
    }
    if failed {
        println!("\napimon cannot run on this host until the FAIL lines above are fixed.");
        ExitCode::FAILURE
    } else {
        println!("\napimon can run on this host.");
        ExitCode::SUCCESS
    }
}
