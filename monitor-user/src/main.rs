//! `apimon`: the host agent's command line.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use apimon::{
    capture::host::{self, Status},
    config::{Config, Overrides},
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
        /// Keep the data map (who sends which personal data where) in FILE, as JSON.
        #[arg(long, value_name = "FILE")]
        data_map: Option<PathBuf>,
        /// Keep the data map in FILE as a Markdown report too.
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
    },
    /// Analyse a HAR 1.2 file offline: calls and findings as JSON lines on stdout.
    Analyze {
        /// The HAR file (as exported by browsers and proxies).
        har: PathBuf,
        /// Configuration file (TOML).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Write the data map to FILE as JSON.
        #[arg(long, value_name = "FILE")]
        data_map: Option<PathBuf>,
        /// Write the data map to FILE as a Markdown report.
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
    },
    /// Check whether this host can run the agent, and say what to fix.
    Check,
    /// Work with configuration files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate FILE: syntax, keys, ranges, that secrets resolve; errors give the line.
    Check {
        /// The TOML file.
        file: PathBuf,
    },
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
            data_map,
            report,
        } => run(config, events, metrics_addr, data_map, report),
        Command::Analyze {
            har,
            config,
            data_map,
            report,
        } => analyze(&har, config, data_map, report),
        Command::Check => return check(),
        Command::Config {
            command: ConfigCommand::Check { file },
        } => config_check(&file),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("apimon: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(path: Option<PathBuf>) -> anyhow::Result<Config> {
    Ok(match path {
        Some(path) => Config::load(&path)?,
        None => Config::default(),
    })
}

fn analyze(
    har: &std::path::Path,
    config: Option<PathBuf>,
    data_map: Option<PathBuf>,
    report: Option<PathBuf>,
) -> anyhow::Result<()> {
    let config = load_config(config)?;
    let s = apimon::analyze::analyze(
        har,
        &config,
        Box::new(std::io::stdout()),
        data_map.as_deref(),
        report.as_deref(),
    )?;
    tracing::info!(
        "{} entries, {} calls, {} findings, {:.1} MB in {:.2} s ({:.0} MB/s)",
        s.entries,
        s.calls,
        s.findings,
        s.bytes as f64 / 1e6,
        s.seconds,
        s.bytes as f64 / 1e6 / s.seconds.max(1e-9)
    );
    Ok(())
}

fn run(
    config: Option<PathBuf>,
    events: Option<PathBuf>,
    metrics_addr: Option<SocketAddr>,
    data_map: Option<PathBuf>,
    report: Option<PathBuf>,
) -> anyhow::Result<()> {
    let mut config = load_config(config)?;
    let overrides = Overrides {
        events,
        metrics_addr,
        data_map,
        report,
    };
    overrides.apply(&mut config);
    apimon::run::run(config, overrides)
}

fn config_check(file: &std::path::Path) -> anyhow::Result<()> {
    let config = Config::load(file)?;
    println!("{}: ok", file.display());
    let a = &config.alerts;
    for s in &a.sinks {
        println!(
            "  sink {} ({}): rate {}/min, timeout {:?}, min severity {}",
            s.name,
            s.kind.as_str(),
            s.rate_per_minute,
            s.timeout,
            s.min_severity.as_str()
        );
    }
    if a.sinks.is_empty() {
        println!("  no alert sinks: alerts are counted in metrics and written to events only");
    }
    println!(
        "  state in {}, anomaly window {:?}",
        a.state_dir.display(),
        config.anomaly.interval
    );
    Ok(())
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
