//! The naive floor: one bpftrace process with count-only probes on the hooks apimon uses, in
//! every process. What any agent on these hooks pays before it does any work of its own.

use std::{
    io::{BufRead as _, BufReader, Read},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{child::Guarded, interrupt};

/// Syscalls apimon follows on entry and exit (`monitor-ebpf/src/io.rs`, `sockets.rs`).
const SYSCALLS_ENTER_EXIT: &[&str] = &[
    "read",
    "write",
    "recvfrom",
    "sendto",
    "readv",
    "writev",
    "recvmsg",
    "sendmsg",
    "sendfile64",
    "socket",
    "connect",
    "accept",
    "accept4",
];
/// Syscalls apimon follows on entry only.
const SYSCALLS_ENTER: &[&str] = &["close", "mmap"];
/// OpenSSL functions apimon probes on entry (`monitor-ebpf/src/openssl.rs`).
const SSL_ENTRY: &[&str] = &["SSL_write", "SSL_write_ex", "SSL_read", "SSL_read_ex"];
/// OpenSSL functions apimon also probes on return: the reads (their data exists only then).
const SSL_RETURN: &[&str] = &["SSL_read", "SSL_read_ex"];

/// Tells bpftrace to print this line on stderr once every probe is attached (the flag its own
/// runtime tests use); "Attaching N probes..." comes before the attaching, so it is not enough.
const ATTACHED_ENV: &str = "__BPFTRACE_NOTIFY_PROBES_ATTACHED";

/// The bpftrace program: every hook counts its hits in one map and does nothing else. With
/// `libssl`, OpenSSL's functions in it too; without, the tracepoints alone (what apimon hooks
/// for a server it does not probe: the inbound scenario).
pub(crate) fn script(libssl: Option<&Path>) -> String {
    let mut probes: Vec<String> = Vec::new();
    for s in SYSCALLS_ENTER_EXIT {
        probes.push(format!("tracepoint:syscalls:sys_enter_{s}"));
        probes.push(format!("tracepoint:syscalls:sys_exit_{s}"));
    }
    for s in SYSCALLS_ENTER {
        probes.push(format!("tracepoint:syscalls:sys_enter_{s}"));
    }
    probes.push("tracepoint:sched:sched_process_exec".to_owned());
    probes.push("tracepoint:sched:sched_process_exit".to_owned());
    if let Some(lib) = libssl.map(Path::display) {
        for f in SSL_ENTRY {
            probes.push(format!("uprobe:{lib}:{f}"));
        }
        for f in SSL_RETURN {
            probes.push(format!("uretprobe:{lib}:{f}"));
        }
    }
    format!("{}\n{{ @[probe] = count(); }}\n", probes.join(",\n"))
}

/// Number of probes [`script`] attaches, with OpenSSL's (`uprobes`) or without.
pub(crate) fn probe_count(uprobes: bool) -> usize {
    let ssl = if uprobes {
        SSL_ENTRY.len() + SSL_RETURN.len()
    } else {
        0
    };
    SYSCALLS_ENTER_EXIT.len() * 2 + SYSCALLS_ENTER.len() + 2 + ssl
}

/// A line bpftrace printed, and on which stream.
enum Line {
    Out(String),
    Err(String),
}

/// A running bpftrace with the floor's probes attached.
pub(crate) struct Floor {
    process: Guarded,
    lines: Receiver<Line>,
    log: Vec<String>,
    /// Probes the script attaches.
    probes: usize,
}

impl Floor {
    /// Starts bpftrace on the script in `dir` (see [`script`] for `libssl`) and returns once
    /// all its probes are attached.
    pub(crate) fn start(dir: &Path, libssl: Option<&Path>) -> Result<Self> {
        let path = dir.join("floor.bt");
        std::fs::write(&path, script(libssl)).with_context(|| format!("writing {path:?}"))?;
        let mut cmd = Command::new("bpftrace");
        cmd.arg(&path)
            .env(ATTACHED_ENV, "1")
            // The maps are printed when bpftrace stops: the probe hits, read in `stop`.
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut process = Guarded::spawn("bpftrace", &mut cmd, libc::SIGINT)?;
        let (tx, lines) = mpsc::channel();
        let child = process.child_mut();
        let out = child.stdout.take().context("bpftrace stdout")?;
        let err = child.stderr.take().context("bpftrace stderr")?;
        forward(out, tx.clone(), Line::Out);
        forward(err, tx, Line::Err);
        let mut floor = Self {
            process,
            lines,
            log: Vec::new(),
            probes: probe_count(libssl.is_some()),
        };
        floor.wait_attached()?;
        Ok(floor)
    }

    fn wait_attached(&mut self) -> Result<()> {
        // Compiling and attaching ~36 programs takes a few seconds on this VM.
        let end = Instant::now() + Duration::from_secs(90);
        let mut attaching = None;
        loop {
            interrupt::check()?;
            match self.lines.recv_timeout(Duration::from_millis(100)) {
                Ok(Line::Err(l)) if l.trim() == ATTACHED_ENV => {
                    // stdout and stderr arrive through two threads: the "Attaching" line may
                    // come just after the marker.
                    let late = Instant::now() + Duration::from_secs(2);
                    while attaching.is_none() && Instant::now() < late {
                        if let Ok(Line::Out(l) | Line::Err(l)) =
                            self.lines.recv_timeout(Duration::from_millis(100))
                        {
                            attaching = attaching.or_else(|| attaching_count(&l));
                            self.log.push(l);
                        }
                    }
                    // A probe bpftrace could not place would make the floor cheaper than it is.
                    if attaching != Some(self.probes) {
                        bail!(
                            "bpftrace attached {attaching:?} probes, expected {}:\n{}",
                            self.probes,
                            self.log.join("\n")
                        );
                    }
                    return Ok(());
                }
                Ok(Line::Out(l) | Line::Err(l)) => {
                    attaching = attaching.or_else(|| attaching_count(&l));
                    self.log.push(l);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.process.wait_for(Duration::from_secs(5))?;
                    bail!(
                        "bpftrace exited ({status:?}) before attaching:\n{}",
                        self.log.join("\n")
                    );
                }
            }
            if Instant::now() >= end {
                bail!("bpftrace not attached after 90 s:\n{}", self.log.join("\n"));
            }
        }
    }

    /// Stops bpftrace (SIGINT: detach, print maps) and returns the total of probe hits.
    pub(crate) fn stop(mut self) -> Result<u64> {
        let status = self.process.stop(Duration::from_secs(30));
        // Both pipes close when bpftrace exits: drain what it printed.
        let mut hits = 0;
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            let (Line::Out(l) | Line::Err(l)) = line;
            // "@[tracepoint:syscalls:sys_enter_read]: 123456"
            if let Some(n) = l
                .strip_prefix("@[")
                .and_then(|rest| rest.rsplit_once("]: "))
                .and_then(|(_, n)| n.trim().parse::<u64>().ok())
            {
                hits += n;
            }
            self.log.push(l);
        }
        if !status.is_some_and(|s| s.success()) {
            bail!("bpftrace ended with {status:?}:\n{}", self.log.join("\n"));
        }
        Ok(hits)
    }
}

/// N in bpftrace's "Attaching N probes...".
fn attaching_count(line: &str) -> Option<usize> {
    line.strip_prefix("Attaching ")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Sends each line of `from` to `to`, on a thread of its own, until the pipe closes.
fn forward(from: impl Read + Send + 'static, to: mpsc::Sender<Line>, wrap: fn(String) -> Line) {
    thread::spawn(move || {
        for line in BufReader::new(from).lines() {
            let Ok(line) = line else { break };
            if to.send(wrap(line)).is_err() {
                break;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_has_every_probe_and_counts_only() {
        let probes = |s: &str| s.matches("tracepoint:").count() + s.matches("probe:").count();
        let s = script(Some(Path::new("/usr/lib/libssl.so.3")));
        assert_eq!(probes(&s), probe_count(true));
        assert!(s.contains("uretprobe:/usr/lib/libssl.so.3:SSL_read_ex"));
        assert!(!s.contains("uretprobe:/usr/lib/libssl.so.3:SSL_write"));
        assert!(s.ends_with("{ @[probe] = count(); }\n"));
        let tracepoints = script(None);
        assert_eq!(probes(&tracepoints), probe_count(false));
        assert!(!tracepoints.contains("probe:/"));
    }
}
