//! The agent fails clearly, never half-way: without privileges, with a bad configuration; it
//! leaves nothing attached when stopped or killed; it ignores what is not HTTP.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use tests::{API_ADDR, Agent, ThirdParty, agent_bin, can_run};

/// Runs `apimon ARGS` as an unprivileged user (nobody, no capabilities).
fn as_nobody(args: &[&str]) -> std::process::Output {
    Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .arg(agent_bin())
        .args(args)
        .output()
        .expect("run setpriv")
}

#[test]
fn unprivileged_run_and_check_fail_with_a_clear_message() {
    if !can_run("unprivileged_run_and_check_fail_with_a_clear_message") {
        return;
    }
    let run = as_nobody(&["run", "--metrics-addr", "127.0.0.1:0"]);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    assert!(
        err.contains("privileges") && err.contains("run as root"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    let check = as_nobody(&["check"]);
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(!check.status.success());
    assert!(out.contains("FAIL  privileges"), "{out}");
    assert!(out.contains("cannot run on this host"), "{out}");

    let root = Command::new(agent_bin())
        .arg("check")
        .output()
        .expect("check");
    let out = String::from_utf8_lossy(&root.stdout);
    assert!(root.status.success(), "{out}");
    assert!(out.contains("ok    programs"), "{out}");
}

#[test]
fn bad_configuration_is_rejected_with_its_line() {
    if !can_run("bad_configuration_is_rejected_with_its_line") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("apimon-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    for (text, wants) in [
        ("[capture]\nbody_limit = \"lots\"\n", "line 2"),
        (
            "[capture]\nring_buffer_bytes = 1000\n",
            "capture.ring_buffer_bytes",
        ),
        ("[nonsense]\n", "nonsense"),
        ("\u{0}\u{1}garbage", "line 1"),
    ] {
        let path = dir.join("bad.toml");
        std::fs::write(&path, text).expect("write config");
        let out = Command::new(agent_bin())
            .arg("run")
            .arg("--config")
            .arg(&path)
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{text:?} accepted");
        assert!(
            err.contains(wants) && err.contains("bad.toml"),
            "{text:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
    let out = Command::new(agent_bin())
        .args(["run", "--config", "/nonexistent/apimon.toml"])
        .output()
        .expect("run");
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read /nonexistent/apimon.toml"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Ids of loaded BPF programs with the agent's program names.
fn agent_programs() -> Vec<u64> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
        .expect("bpftool");
    let progs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    progs
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| {
            matches!(
                p["name"].as_str(),
                Some("sys_enter_write" | "ssl_read_ret" | "sched_process_e" | "sys_exit_read")
            )
        })
        .filter_map(|p| p["id"].as_u64())
        .collect()
}

fn wait_until_gone() -> Vec<u64> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = agent_programs();
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn nothing_stays_attached_after_sigint_or_sigkill() {
    if !can_run("nothing_stays_attached_after_sigint_or_sigkill") {
        return;
    }
    assert_eq!(
        wait_until_gone(),
        Vec::<u64>::new(),
        "programs of another agent are loaded"
    );
    let agent = Agent::start();
    assert!(
        !agent_programs().is_empty(),
        "the agent's programs are not visible to bpftool"
    );
    let _ = agent.stop();
    assert_eq!(
        wait_until_gone(),
        Vec::<u64>::new(),
        "programs left after SIGINT"
    );

    let mut child = Command::new(agent_bin())
        .args(["run", "--metrics-addr", "127.0.0.1:0"])
        .stderr(Stdio::null())
        .spawn()
        .expect("start apimon");
    let deadline = Instant::now() + Duration::from_secs(20);
    while agent_programs().is_empty() {
        assert!(Instant::now() < deadline, "agent never loaded its programs");
        thread::sleep(Duration::from_millis(100));
    }
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    assert_eq!(
        wait_until_gone(),
        Vec::<u64>::new(),
        "programs left after SIGKILL"
    );
    let pinned: Vec<_> = std::fs::read_dir("/sys/fs/bpf")
        .map(|d| d.filter_map(Result::ok).collect())
        .unwrap_or_default();
    assert!(
        pinned
            .iter()
            .all(|e| !e.file_name().to_string_lossy().contains("apimon")),
        "pinned leftovers"
    );
}

#[test]
fn non_http_traffic_is_ignored_and_metrics_are_served() {
    if !can_run("non_http_traffic_is_ignored_and_metrics_are_served") {
        return;
    }
    let api = ThirdParty::start();
    let agent = Agent::start();
    // Binary and line protocols to the API host's ports: none of it is HTTP.
    for payload in [
        &b"\x00\x01\x02\x03binary garbage\xff\xfe"[..],
        b"SSH-2.0-OpenSSH_9.2\r\n",
        b"*1\r\n$4\r\nPING\r\n",
    ] {
        if let Ok(mut s) = TcpStream::connect((API_ADDR, 8080)) {
            let _ = s.write_all(payload);
            let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
        }
    }
    // Kernel counters reach the metrics once a second.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut metrics = agent.scrape();
    while skipped_records(&metrics) < 3 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(200));
        metrics = agent.scrape();
    }
    let events = agent.stop();
    let to_api: Vec<_> = events
        .iter()
        .filter(|e| {
            e["remote_addr"]
                .as_str()
                .is_some_and(|r| r.starts_with(API_ADDR))
        })
        .collect();
    assert!(
        to_api.is_empty(),
        "non-HTTP traffic reported as calls: {to_api:?}"
    );
    assert!(
        skipped_records(&metrics) >= 3,
        "the kernel should have skipped the non-HTTP records:\n{metrics}"
    );
    for name in [
        "apimon_events_total",
        "apimon_events_lost_total{reason=\"ringbuf_full\"} 0",
        "apimon_connections_tracked",
        "apimon_ready 1",
        "apimon_tls_probed_files",
    ] {
        assert!(metrics.contains(name), "{name} missing:\n{metrics}");
    }
    drop(api);
}

fn skipped_records(metrics: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("apimon_kernel_records_skipped_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
