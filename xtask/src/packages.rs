//! Debian packages the tests and benchmarks drive: real clients, servers and tools.

use std::process::Command;

use anyhow::{Result, bail};

use crate::cmd::run;

/// (command that must exist, Debian package that provides it)
const NEEDED: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("curl", "curl"),
    ("wget", "wget"),
    ("openssl", "openssl"),
    ("python3", "python3"),
    ("node", "nodejs"),
    ("nginx", "nginx-light"),
    ("wrk", "wrk"),
    ("bpftrace", "bpftrace"),
    ("bpftool", "bpftool"),
    ("setpriv", "util-linux"),
];

fn has_command(name: &str) -> bool {
    Command::new("sh")
        .args([
            "-c",
            &format!("command -v {name} >/dev/null 2>&1 || test -x /usr/sbin/{name}"),
        ])
        .status()
        .is_ok_and(|s| s.success())
}

/// Installs the packages whose commands are missing (needs root and Debian's apt).
pub(crate) fn ensure() -> Result<()> {
    let missing: Vec<&str> = NEEDED
        .iter()
        .filter(|(cmd, _)| !has_command(cmd))
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !nix_is_root() {
        bail!(
            "missing packages {missing:?}; install them as root: apt-get install {}",
            missing.join(" ")
        );
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// Whether this process runs as root (apt and the eBPF tests need it).
pub(crate) fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc_geteuid() == 0 }
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}
