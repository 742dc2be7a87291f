//! Support for apimon's integration tests: a third-party API in a network namespace of the
//! test's own, the agent started and stopped for real, and its events read back.
//!
//! These tests load real eBPF programs, so they need root. Without it they print why they
//! skip; CI runs as root, where they always run.

use std::{
    fs,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

pub mod load;
pub mod receiver;

/// The third party's address (TEST-NET-2: routes nowhere else).
pub const API_ADDR: &str = "198.51.100.10";
/// The host side of the link to it.
pub const HOST_ADDR: &str = "198.51.100.1";
/// The third party's IPv6 address (documentation prefix).
pub const API_ADDR6: &str = "2001:db8::10";
/// The host side's IPv6 address.
pub const HOST_ADDR6: &str = "2001:db8::1";
/// The name clients use for it.
pub const API_HOST: &str = "api.partner.test";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Whether the tests can load eBPF programs; if not, prints why (tests then skip).
#[must_use]
pub fn can_run(test: &str) -> bool {
    // SAFETY: no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        println!("SKIPPED {test}: needs root to load eBPF programs and create network namespaces");
    }
    root
}

/// This repository's folder of test fixtures.
#[must_use]
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// Runs `cmd` to completion and returns its stdout; fails the test with its stderr if it
/// fails.
pub fn output(cmd: &mut Command) -> Vec<u8> {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn ip(args: &[&str]) {
    output(Command::new("ip").args(args));
}

/// A fresh, empty directory of this test process's own under the temporary directory.
#[must_use]
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("apimon-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Writes an agent configuration, `toml` plus an `[alerts]` table with `state_dir` in `dir`
/// (so the agent's state is the test's own, never the host's), to `dir/apimon.toml`; returns
/// its path. `toml` must not have an `[alerts]` table of its own.
#[must_use]
pub fn agent_config(dir: &Path, toml: &str) -> PathBuf {
    let path = dir.join("apimon.toml");
    fs::write(
        &path,
        format!("{toml}\n{}", alerts_state(&dir.join("state"))),
    )
    .expect("agent config");
    path
}

/// An `[alerts]` table keeping the agent's state (known destinations, spool) in `state`.
fn alerts_state(state: &Path) -> String {
    format!("[alerts]\nstate_dir = \"{}\"\n", state.display())
}

/// Personal data the tests send, exactly as written on the wire.
pub mod pii {
    pub const EMAIL: &str = "lucy.smith@example.com";
    pub const CARD: &str = "4111 1111 1111 1111";
    pub const SSN: &str = "536-22-5041";
    pub const PHONE: &str = "+1 415 555 2671";

    /// A JSON order for a customer carrying all four, plus `extra` in the customer object.
    #[must_use]
    pub fn customer(extra: Option<(&str, &str)>) -> String {
        let mut c =
            serde_json::json!({"email": EMAIL, "card_number": CARD, "ssn": SSN, "phone": PHONE});
        if let Some((k, v)) = extra {
            c[k] = serde_json::Value::String(v.to_owned());
        }
        serde_json::json!({
            "customer": c,
            "order_id": "9f1c2a7e-5b0d-4c1e-9a57-2f6b1e0c8d43",
            "created_at": "2026-11-23T10:00:00Z",
        })
        .to_string()
    }
}

/// A network namespace holding the third-party API, linked to the host by a veth pair.
/// Removed (with its link and processes) on drop.
pub struct ThirdParty {
    pub netns: String,
    server: Child,
    /// Folder with the CA certificate clients trust.
    pub dir: PathBuf,
    /// Held until the namespace is gone: the link name and addresses are fixed, so two
    /// suites (or a suite and a helper's run) take turns instead of tearing down each other's.
    _turn: fs::File,
}

impl ThirdParty {
    /// Creates the namespace and starts the API server (plaintext on 8080, TLS on 8443).
    #[must_use]
    pub fn start() -> Self {
        let turn = take_turn(Path::new("/run/apimon-third-party.lock"));
        let netns = format!("apimon-test-{}", std::process::id());
        let (host_if, ns_if) = ("apimon-h0", "apimon-n0");
        // Leftovers of a run that was killed would hold the same names and addresses.
        let _ = Command::new("ip").args(["netns", "del", &netns]).output();
        let _ = Command::new("ip").args(["link", "del", host_if]).output();
        ip(&["netns", "add", &netns]);
        ip(&[
            "link", "add", host_if, "type", "veth", "peer", "name", ns_if,
        ]);
        ip(&["link", "set", ns_if, "netns", &netns]);
        ip(&["addr", "add", &format!("{HOST_ADDR}/24"), "dev", host_if]);
        ip(&[
            "-6",
            "addr",
            "add",
            &format!("{HOST_ADDR6}/64"),
            "dev",
            host_if,
            "nodad",
        ]);
        ip(&["link", "set", host_if, "up"]);
        let in_ns = |args: &[&str]| {
            let mut all = vec!["netns", "exec", netns.as_str()];
            all.extend_from_slice(args);
            ip(&all);
        };
        in_ns(&["ip", "addr", "add", &format!("{API_ADDR}/24"), "dev", ns_if]);
        in_ns(&[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("{API_ADDR6}/64"),
            "dev",
            ns_if,
            "nodad",
        ]);
        in_ns(&["ip", "link", "set", ns_if, "up"]);
        in_ns(&["ip", "link", "set", "lo", "up"]);

        let dir = std::env::temp_dir().join(format!(
            "apimon-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir).expect("temp dir");
        output(Command::new("openssl").args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-keyout",
            &dir.join("key.pem").to_string_lossy(),
            "-out",
            &dir.join("cert.pem").to_string_lossy(),
            "-subj",
            &format!("/CN={API_HOST}"),
            "-addext",
            &format!("subjectAltName=DNS:{API_HOST},IP:{API_ADDR}"),
        ]));
        let mut server = Command::new("ip")
            .args(["netns", "exec", &netns, "python3"])
            .arg(fixture("server.py"))
            .args(["8080", "8443"])
            .arg(dir.join("cert.pem"))
            .arg(dir.join("key.pem"))
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the API server");
        let mut line = String::new();
        let stdout = server.stdout.take().expect("server stdout");
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("server says it listens");
        assert_eq!(line.trim(), "listening", "API server did not start");
        wait_for_port(&format!("{API_ADDR}:8443"));
        wait_for_port(&format!("[{API_ADDR6}]:8080"));
        Self {
            netns,
            server,
            dir,
            _turn: turn,
        }
    }

    /// The CA file clients trust.
    #[must_use]
    pub fn ca(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }

    /// The API server's process id (it answers the calls: ingress on its side).
    #[must_use]
    pub fn server_pid(&self) -> u32 {
        // `ip netns exec` execs the command in place: the child's pid is python's.
        self.server.id()
    }
}

impl Drop for ThirdParty {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .output();
        let _ = Command::new("ip")
            .args(["link", "del", "apimon-h0"])
            .output();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Waits for the exclusive lock on `path` (created if missing), saying so when it has to.
fn take_turn(path: &Path) -> fs::File {
    let file = fs::File::create(path).expect("lock file");
    if file.try_lock().is_err() {
        eprintln!(
            "waiting for {} (another suite uses the test namespace)",
            path.display()
        );
        file.lock()
            .unwrap_or_else(|e| panic!("locking {}: {e}", path.display()));
    }
    file
}

fn wait_for_port(addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect_timeout(&addr.parse().expect("addr"), Duration::from_millis(200))
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "{addr} never accepted connections"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// A running `apimon run`, writing events to a file of its own.
pub struct Agent {
    child: Option<Child>,
    events: PathBuf,
    pub metrics: SocketAddr,
    stderr: PathBuf,
}

/// The agent binary: `APIMON_BIN` (set by `cargo xtask test`), else the workspace's release build.
#[must_use]
pub fn agent_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("APIMON_BIN") {
        return PathBuf::from(bin);
    }
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/apimon");
    assert!(
        bin.exists(),
        "{} is missing: run the tests with `cargo xtask test`",
        bin.display()
    );
    bin
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Agent {
    /// Starts the agent and waits until it reports ready (TLS probed, open connections found).
    #[must_use]
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts the agent with extra arguments to `apimon run`.
    #[must_use]
    pub fn start_with(extra: &[&str]) -> Self {
        Self::start_env(extra, &[])
    }

    /// Starts the agent with extra arguments and environment variables.
    #[must_use]
    pub fn start_env(extra: &[&str], env: &[(&str, &str)]) -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let events =
            std::env::temp_dir().join(format!("apimon-events-{}-{n}.jsonl", std::process::id()));
        let stderr = events.with_extension("log");
        let _ = fs::remove_file(&events);
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let mut command = Command::new(agent_bin());
        command
            .args(["run", "--log-level", "info", "--events"])
            .arg(&events)
            .args(["--metrics-addr", &metrics.to_string()]);
        // State (known destinations, spool) of the test's own, never the host's /var/lib.
        if let Some(i) = extra.iter().position(|a| *a == "--config") {
            let given = extra.get(i + 1).expect("--config needs a path");
            let text = fs::read_to_string(given).expect("read the test's agent config");
            assert!(
                text.contains("state_dir"),
                "{given}: set [alerts] state_dir to a temporary directory"
            );
        } else {
            let config = events.with_extension("toml");
            fs::write(&config, alerts_state(&events.with_extension("state")))
                .expect("agent config");
            command.arg("--config").arg(&config);
        }
        let child = command
            .args(extra)
            .envs(env.iter().copied())
            .stderr(fs::File::create(&stderr).expect("agent log"))
            .spawn()
            .expect("start apimon");
        let mut agent = Self {
            child: Some(child),
            events,
            metrics,
            stderr,
        };
        agent.wait_ready();
        agent
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.scrape().lines().any(|l| l == "apimon_ready 1") {
                return;
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("apimon exited ({status}) before ready:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "apimon not ready after 30 s:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// The agent's process id.
    #[must_use]
    pub fn pid(&self) -> u32 {
        // Never 0: kill(0, ...) would signal the whole process group.
        self.child.as_ref().map(Child::id).expect("the agent runs")
    }

    /// The agent's peak resident memory so far (`VmHWM`), in KiB; 0 if unknown.
    #[must_use]
    pub fn peak_rss_kib(&self) -> u64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// Sends `signal` to the agent.
    pub fn signal(&self, signal: i32) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.pid() as i32, signal) };
    }

    /// Whether the agent is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Kills the agent with SIGKILL (no chance to flush or clean up); returns its log.
    pub fn kill(mut self) -> String {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.log()
    }

    /// Polls `/metrics` until a line satisfies `what`, for at most `secs` seconds.
    pub fn wait_metric(&self, what: impl Fn(&str) -> bool, secs: u64) -> bool {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if self.scrape().lines().any(&what) {
                return true;
            }
            thread::sleep(Duration::from_millis(200));
        }
        false
    }

    /// The agent's log so far.
    #[must_use]
    pub fn log(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The text of `/metrics` (empty if unreachable).
    #[must_use]
    pub fn scrape(&self) -> String {
        let Ok(mut s) = TcpStream::connect_timeout(&self.metrics, Duration::from_secs(1)) else {
            return String::new();
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let req = format!(
            "GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.metrics
        );
        if s.write_all(req.as_bytes()).is_err() {
            return String::new();
        }
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default()
    }

    /// Sends SIGINT, waits for a clean exit, and returns every event written.
    #[must_use]
    pub fn stop(mut self) -> Vec<Value> {
        let mut child = self.child.take().expect("running");
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let status = child.wait().expect("wait for apimon");
        assert!(
            status.success(),
            "apimon exited with {status}:\n{}",
            self.log()
        );
        let text = fs::read_to_string(&self.events).unwrap_or_default();
        text.lines()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("bad event line {l:?}: {e}"))
            })
            .collect()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = fs::remove_file(&self.events);
        let _ = fs::remove_file(&self.stderr);
        let _ = fs::remove_file(self.events.with_extension("toml"));
        let _ = fs::remove_dir_all(self.events.with_extension("state"));
    }
}

/// The sum of every sample of `series` in a Prometheus text exposition: `series` is a metric
/// name, optionally with the start of its labels (`apimon_shed_total{stage="body"`).
#[must_use]
pub fn metric_sum(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(series)
                .is_some_and(|rest| rest.starts_with([' ', '{', ',', '}']))
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Runs a client to completion, panicking with its output if it fails; returns its pid.
pub fn run_client(cmd: &mut Command) -> u32 {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let pid = child.id();
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("waiting for {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    pid
}

/// The `call` events of process `pid`.
#[must_use]
pub fn calls_of(events: &[Value], pid: u32) -> Vec<&Value> {
    events
        .iter()
        .filter(|e| e["kind"] == "call" && e["pid"] == pid)
        .collect()
}

/// Compact view of a call for assertions: method, host, path, status, direction, tls.
#[must_use]
pub fn shape(call: &Value) -> (String, String, String, Option<u64>, String, bool) {
    (
        call["method"].as_str().unwrap_or_default().to_owned(),
        call["host"].as_str().unwrap_or_default().to_owned(),
        call["path"].as_str().unwrap_or_default().to_owned(),
        call["status"].as_u64(),
        call["direction"].as_str().unwrap_or_default().to_owned(),
        call["tls"].as_bool().unwrap_or_default(),
    )
}

/// The expected shape of a call to the third-party API.
#[must_use]
pub fn expect(
    method: &str,
    path: &str,
    status: u64,
    direction: &str,
    tls: bool,
) -> (String, String, String, Option<u64>, String, bool) {
    (
        method.to_owned(),
        API_HOST.to_owned(),
        path.to_owned(),
        Some(status),
        direction.to_owned(),
        tls,
    )
}
