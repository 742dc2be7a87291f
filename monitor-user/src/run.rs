//! `apimon run`: preflight, load, start the threads, serve metrics, stop cleanly on a signal.

use std::{
    sync::{Arc, atomic::AtomicBool, mpsc},
    thread,
};

use anyhow::{Context as _, bail};
use tokio::{signal::unix::SignalKind, sync::watch};
use tracing::{error, info, warn};

use crate::{
    alert::{alerter::Alerter, deliver, novelty::Novelty, spool::Spool},
    analysis::{
        Analyzer, Destinations, datamap::DataMap, detect::Detector, inspect::Inspector,
        mask::Hasher, route::Routes,
    },
    capture::{
        control::{Control, TlsPolicy},
        hold::OpenHold,
        host::{self, Check, Status},
        loader::{self, LoadOptions},
    },
    config::{Config, Overrides, TlsProbe},
    conn::{ConnTable, TableConfig},
    output::{events::EventWriter, metrics::Metrics, server},
    pipeline::{Outputs, Pipeline},
    shed::{ShedConfig, Shedder},
};

/// The analyzer a configuration describes (shared by `run` and `analyze`).
pub fn analyzer(config: &Config) -> anyhow::Result<Analyzer> {
    let path = &config.source;
    let detector = Detector::new(&config.privacy.regions(path)?);
    let hasher = Hasher::new(config.privacy.hash_key(path)?);
    let inspector = Inspector::new(detector, hasher, config.analysis.max_decoded_bytes);
    Ok(Analyzer::new(
        Destinations::from_config(&config.destinations),
        inspector,
        Routes::new(config.analysis.route_segment_cardinality),
    ))
}

/// Loads every program without attaching: proves the kernel's verifier accepts them.
#[must_use]
pub fn verify_programs() -> Check {
    let options = LoadOptions {
        ring_buffer_bytes: common::maps::EVENTS_BYTES,
        wakeup_bytes: 0,
        probe_all: false,
        verify_only: true,
    };
    match loader::load(options) {
        Ok(k) => Check {
            name: "programs",
            status: Status::Ok,
            detail: format!("{} eBPF programs pass this kernel's verifier", k.programs),
        },
        Err(e) => Check {
            name: "programs",
            status: Status::Fail,
            detail: format!("{e}"),
        },
    }
}

/// Where alerts wait and what is known lives; `None` parts when the state directory is not
/// writable and no sink needs it.
fn state(config: &Config) -> anyhow::Result<(Option<Arc<Spool>>, Option<std::path::PathBuf>)> {
    let dir = &config.alerts.state_dir;
    match std::fs::create_dir_all(dir) {
        Ok(()) => {
            let spool = Spool::open(&dir.join("spool"), config.alerts.spool_max_alerts)
                .with_context(|| format!("cannot open the alert spool in {}", dir.display()))?;
            Ok((
                Some(Arc::new(spool)),
                Some(dir.join("known-destinations.json")),
            ))
        }
        Err(e) if !config.alerts.sinks.is_empty() => bail!(
            "alerts.state_dir {}: {e}; the alert spool needs a writable directory",
            dir.display()
        ),
        Err(e) => {
            warn!(
                "alerts.state_dir {}: {e}; known destinations will not survive a restart",
                dir.display()
            );
            Ok((None, None))
        }
    }
}

/// The fanotify group that holds opens of OpenSSL until the opener is probed, when per-process
/// probing asks for it; without one (no `CAP_SYS_ADMIN`, no fanotify) first calls may be missed.
fn open_hold(capture: &crate::config::CaptureConfig) -> Option<Arc<OpenHold>> {
    if !capture.tls || capture.tls_probe != TlsProbe::ThirdParty || !capture.tls_hold_opens {
        return None;
    }
    match OpenHold::new() {
        Ok(h) => {
            crate::capture::hold::raise_fd_limit();
            Some(Arc::new(h))
        }
        Err(e) => {
            warn!(
                "cannot hold opens of OpenSSL until processes are probed ({e}): a client's \
                 calls in its first milliseconds may be missed"
            );
            None
        }
    }
}

/// Loads the file again on SIGHUP; a bad file is refused and the running one kept.
fn reload(
    current: &mut Config,
    overrides: &Overrides,
    metrics: &Metrics,
    pipeline: &mpsc::Sender<Arc<Config>>,
    sinks: &watch::Sender<Vec<crate::config::alerts::SinkConfig>>,
) {
    let m = &metrics.alerting;
    if current.source.as_os_str().is_empty() {
        warn!("SIGHUP: the agent was started without --config; there is nothing to reload");
        return;
    }
    let mut new = match Config::load(&current.source) {
        Ok(c) => c,
        Err(e) => {
            error!("configuration reload refused, the running configuration stays: {e}");
            m.reloads.with_label_values(&["error"]).inc();
            m.reload_ok.set(0);
            return;
        }
    };
    overrides.apply(&mut new);
    let (applied, restart) = current.reloaded(new);
    if !restart.is_empty() {
        warn!(
            "configuration reloaded; changes to {} take effect at the next restart",
            restart.join(", ")
        );
    }
    if applied.alerts.sinks != current.alerts.sinks {
        let _ = sinks.send(applied.alerts.sinks.clone());
    }
    let _ = pipeline.send(Arc::new(applied.clone()));
    m.reloads.with_label_values(&["ok"]).inc();
    m.reload_ok.set(1);
    info!("configuration reloaded from {}", applied.source.display());
    *current = applied;
}

/// Runs the agent until SIGINT or SIGTERM; SIGHUP reloads the configuration.
pub fn run(config: Config, overrides: Overrides) -> anyhow::Result<()> {
    let checks = host::preflight();
    for c in checks.iter().filter(|c| c.status == Status::Warn) {
        warn!("{}: {}", c.name, c.detail);
    }
    let failures: Vec<String> = checks
        .into_iter()
        .filter(|c| c.status == Status::Fail)
        .map(|c| format!("{}: {}", c.name, c.detail))
        .collect();
    if !failures.is_empty() {
        bail!(
            "this host cannot run the agent:\n  - {}\n(`apimon check` shows every check)",
            failures.join("\n  - ")
        );
    }
    for mounted in [host::ensure_tracefs(), host::ensure_bpffs()] {
        match mounted {
            Ok(Some(done)) => info!("{done}"),
            Ok(None) => {}
            Err(e) => bail!("{e}"),
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("apimon-io")
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(config, overrides))
}

async fn serve(mut config: Config, overrides: Overrides) -> anyhow::Result<()> {
    let addr = config.output.metrics_addr;
    let listener = server::bind(addr).await.with_context(|| {
        format!("cannot serve metrics on {addr}; choose another address with --metrics-addr")
    })?;
    let events = match &config.output.events {
        Some(path) => Some(
            EventWriter::open(path)
                .with_context(|| format!("cannot open events output {}", path.display()))?,
        ),
        None => None,
    };
    // Without TLS capture nothing is probed: the kernel must not keep TLS bookkeeping for
    // every process.
    let probe_all = config.capture.tls && config.capture.tls_probe == TlsProbe::All;
    let kernel = loader::load(LoadOptions {
        ring_buffer_bytes: config.capture.ring_buffer_bytes,
        wakeup_bytes: config.capture.wakeup_bytes,
        probe_all,
        verify_only: false,
    })?;
    info!("{} tracepoints attached", kernel.tracepoints);

    let metrics = Arc::new(Metrics::new(config.metrics.max_hosts));
    let (spool, known_path) = state(&config)?;
    let novelty = Novelty::load(
        known_path,
        config.anomaly.learning_period,
        config.anomaly.max_destinations,
    )
    .map_err(anyhow::Error::msg)?;
    let (alerts_tx, alerts_rx) = tokio::sync::mpsc::channel(1024);
    let (sinks_tx, sinks_rx) = watch::channel(config.alerts.sinks.clone());
    let (stop_alerts, alerts_stopped) = watch::channel(false);
    let dispatcher = tokio::spawn(deliver::dispatch(
        alerts_rx,
        sinks_rx,
        spool,
        Arc::clone(&metrics),
        alerts_stopped,
    ));
    let (reload_tx, reload_rx) = mpsc::channel();
    let (requests_tx, requests_rx) = mpsc::channel();
    let (notices_tx, notices_rx) = mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let (ended_tx, mut ended_rx) = tokio::sync::mpsc::unbounded_channel::<&'static str>();

    let hold = open_hold(&config.capture);
    // Only while the hold thread runs: the control thread stops once every sender is gone.
    let hold_requests = hold.is_some().then(|| requests_tx.clone());
    let policy = config.capture.tls.then(|| TlsPolicy {
        all: probe_all,
        processes: config.capture.tls_processes.clone(),
        paths: config.capture.tls_paths.clone(),
        hold: hold.clone(),
    });
    let high_water = kernel.marks.shed;
    let (control, ring) = Control::new(kernel, policy, Arc::clone(&metrics));
    let table = ConnTable::new(TableConfig::from_config(&config.capture));
    let outputs = Outputs {
        events,
        data_map: DataMap::new(config.analysis.max_flows),
        data_map_path: config.output.data_map.clone(),
        report_path: config.output.report.clone(),
        data_map_interval: config.output.data_map_interval,
    };
    let mut pipeline = Pipeline::new(
        table,
        analyzer(&config)?,
        outputs,
        Arc::clone(&metrics),
        requests_tx,
    );
    pipeline.shedder = Shedder::new(ShedConfig::from_config(&config.capture));
    pipeline.high_water = high_water;
    pipeline.alerter = Some(Alerter::new(
        &config,
        novelty,
        alerts_tx,
        Arc::clone(&metrics),
    ));

    let hold_thread = match hold.zip(hold_requests) {
        Some((hold, requests)) => {
            let stop = Arc::clone(&stop);
            let expired = metrics.tls_holds.expired.clone();
            Some(
                thread::Builder::new()
                    .name("apimon-hold".into())
                    .spawn(move || hold.forward(&requests, &expired, &stop))?,
            )
        }
        None => None,
    };
    let control_thread = {
        let stop = Arc::clone(&stop);
        let ended = ended_tx.clone();
        thread::Builder::new()
            .name("apimon-control".into())
            .spawn(move || {
                control.run(&requests_rx, &notices_tx, &stop);
                let _ = ended.send("control");
            })?
    };
    let pipeline_thread = {
        let stop = Arc::clone(&stop);
        let ended = ended_tx;
        thread::Builder::new()
            .name("apimon-pipeline".into())
            .spawn(move || {
                pipeline.run(ring, &notices_rx, &reload_rx, &stop);
                let _ = ended.send("pipeline");
            })?
    };

    let (stop_server, server_stopped) = watch::channel(false);
    let server_task = tokio::spawn(server::serve(
        listener,
        Arc::clone(&metrics),
        server_stopped,
    ));
    let mut sigint = tokio::signal::unix::signal(SignalKind::interrupt())?;
    let mut sigterm = tokio::signal::unix::signal(SignalKind::terminate())?;
    let mut sighup = tokio::signal::unix::signal(SignalKind::hangup())?;
    let unexpected = loop {
        tokio::select! {
            _ = sigint.recv() => break None,
            _ = sigterm.recv() => break None,
            which = ended_rx.recv() => break which,
            _ = sighup.recv() => reload(&mut config, &overrides, &metrics, &reload_tx, &sinks_tx),
        }
    };
    info!("stopping");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    // The pipeline drains the ring buffer and flushes; the control thread then drops the
    // programs, which detaches them all.
    let pipeline_ok = pipeline_thread.join().is_ok();
    let control_ok = control_thread.join().is_ok();
    let hold_ok = hold_thread.is_none_or(|t| t.join().is_ok());
    // The pipeline has queued its last alerts; the dispatcher spools them, then stops.
    let _ = stop_alerts.send(true);
    let _ = dispatcher.await;
    let _ = stop_server.send(true);
    let _ = server_task.await;
    if !pipeline_ok || !control_ok || !hold_ok {
        bail!("an agent thread panicked; see the log above");
    }
    if let Some(which) = unexpected {
        warn!("the {which} thread stopped on its own");
        bail!("the {which} thread stopped unexpectedly");
    }
    Ok(())
}
