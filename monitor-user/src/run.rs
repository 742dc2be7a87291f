//! `apimon run`: preflight, load, start the threads, serve metrics, stop cleanly on a signal.

use std::{
    sync::{Arc, atomic::AtomicBool, mpsc},
    thread,
};

use anyhow::{Context as _, bail};
use tokio::{signal::unix::SignalKind, sync::watch};
use tracing::{info, warn};

use crate::{
    analysis::{
        Analyzer, Destinations, datamap::DataMap, detect::Detector, inspect::Inspector,
        mask::Hasher, route::Routes,
    },
    capture::{
        control::Control,
        host::{self, Check, Status},
        loader::{self, LoadOptions},
    },
    config::Config,
    conn::{ConnTable, TableConfig},
    http::Limits,
    output::{events::EventWriter, metrics::Metrics, server},
    pipeline::{Outputs, Pipeline},
};

/// The analyzer a configuration describes (shared by `run` and `analyze`).
pub fn analyzer(config: &Config) -> anyhow::Result<Analyzer> {
    let path = &config.source;
    let detector = Detector::new(&config.privacy.regions(path)?);
    let hasher = Hasher::new(config.privacy.hash_key(path)?);
    let inspector = Inspector::new(detector, hasher, config.analysis.max_decoded_bytes);
    let destinations = Destinations::new(
        &config.destinations.internal_networks,
        &config.destinations.internal_domains,
        &config.destinations.third_party_domains,
    );
    Ok(Analyzer::new(
        destinations,
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

/// Runs the agent until SIGINT or SIGTERM.
pub fn run(config: Config) -> anyhow::Result<()> {
    let failures: Vec<String> = host::preflight()
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
    runtime.block_on(serve(config))
}

async fn serve(config: Config) -> anyhow::Result<()> {
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
    let kernel = loader::load(LoadOptions {
        ring_buffer_bytes: config.capture.ring_buffer_bytes,
        wakeup_bytes: config.capture.wakeup_bytes,
        verify_only: false,
    })?;
    info!("{} tracepoints attached", kernel.tracepoints);

    let metrics = Arc::new(Metrics::new(config.metrics.max_hosts));
    let (requests_tx, requests_rx) = mpsc::channel();
    let (notices_tx, notices_rx) = mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let (ended_tx, mut ended_rx) = tokio::sync::mpsc::unbounded_channel::<&'static str>();

    let loader::Kernel {
        ebpf,
        ring,
        fds,
        counters,
        ..
    } = kernel;
    let control = Control::new(
        ebpf,
        fds,
        counters,
        config.capture.tls.then(|| config.capture.tls_paths.clone()),
        Arc::clone(&metrics),
    );
    let table = ConnTable::new(TableConfig {
        http: Limits {
            max_head: config.capture.max_header_bytes,
            body: config.capture.body_limit,
        },
        max_connections: config.capture.max_connections,
        response_timeout_ns: u64::try_from(config.capture.response_timeout.as_nanos())
            .unwrap_or(u64::MAX),
    });
    let outputs = Outputs {
        events,
        data_map: DataMap::new(config.analysis.max_flows),
        data_map_path: config.output.data_map.clone(),
        report_path: config.output.report.clone(),
        data_map_interval: config.output.data_map_interval,
    };
    let pipeline = Pipeline::new(
        table,
        analyzer(&config)?,
        outputs,
        Arc::clone(&metrics),
        requests_tx,
    );

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
                pipeline.run(ring, &notices_rx, &stop);
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
    let unexpected = tokio::select! {
        _ = sigint.recv() => None,
        _ = sigterm.recv() => None,
        which = ended_rx.recv() => which,
    };
    info!("stopping");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    // The pipeline drains the ring buffer and flushes; the control thread then drops the
    // programs, which detaches them all.
    let pipeline_ok = pipeline_thread.join().is_ok();
    let control_ok = control_thread.join().is_ok();
    let _ = stop_server.send(true);
    let _ = server_task.await;
    if !pipeline_ok || !control_ok {
        bail!("an agent thread panicked; see the log above");
    }
    if let Some(which) = unexpected {
        warn!("the {which} thread stopped on its own");
        bail!("the {which} thread stopped unexpectedly");
    }
    Ok(())
}
