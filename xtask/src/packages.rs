//! Debian packages the tests and benchmarks drive: real clients, servers and tools.

use std::{fs, os::unix::fs::PermissionsExt as _, path::PathBuf, process::Command};

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

/// Where the executable `name` is: the first match on `PATH`, else in `/usr/sbin` (where
/// Debian puts nginx, and which a non-root `PATH` often lacks).
pub(crate) fn command_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join(name))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// Installs the packages whose commands are missing (needs root and Debian's apt).
pub(crate) fn ensure() -> Result<()> {
    let missing: Vec<&str> = NEEDED
        .iter()
        .filter(|(cmd, _)| command_path(cmd).is_none())
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

/// Python modules the labelled corpus generator needs, pinned to a major version so that a
/// seed gives the same corpus: (import name, pip requirement).
const PYTHON_MODULES: &[(&str, &str)] = &[
    ("faker", "faker==40.*"),
    ("phonenumbers", "phonenumbers==9.*"),
];

/// Installs the corpus generator's Python modules with pip when they cannot be imported.
pub(crate) fn ensure_python_modules() -> Result<()> {
    let missing: Vec<&str> = PYTHON_MODULES
        .iter()
        .filter(|(module, _)| {
            !Command::new("python3")
                .args(["-c", &format!("import {module}")])
                .status()
                .is_ok_and(|s| s.success())
        })
        .map(|(_, req)| *req)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing Python modules {}", missing.join(" "));
    let has_pip = Command::new("python3")
        .args(["-m", "pip", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_pip {
        if !nix_is_root() {
            bail!("python3 has no pip; install python3-pip as root");
        }
        run(Command::new("apt-get")
            .args([
                "install",
                "-y",
                "-qq",
                "--no-install-recommends",
                "python3-pip",
            ])
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    // Debian's system Python refuses pip installs without this flag (PEP 668); a pyenv or venv
    // Python ignores it.
    run(Command::new("python3")
        .args(["-m", "pip", "install", "--quiet"])
        .args(&missing)
        .env("PIP_BREAK_SYSTEM_PACKAGES", "1"))
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
