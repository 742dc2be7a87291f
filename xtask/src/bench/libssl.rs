//! Which OpenSSL the load generator and the server load: the file the floor's uprobes go on.

use std::{fs, path::PathBuf, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::cmd::output_of;

/// The libssl `program` loads dynamically, from `ldd`, with symlinks resolved.
fn linked_by(program: &str) -> Result<PathBuf> {
    let path = crate::packages::command_path(program)
        .with_context(|| format!("{program} is not on PATH nor in /usr/sbin"))?;
    let ldd = output_of(Command::new("ldd").arg(&path))?;
    // "	libssl.so.3 => /lib/x86_64-linux-gnu/libssl.so.3 (0x...)"
    let lib = ldd
        .lines()
        .filter_map(|l| l.trim().split_once(" => "))
        .find(|(name, _)| name.starts_with("libssl.so"))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .with_context(|| {
            format!("{program} does not load libssl dynamically (static OpenSSL?):\n{ldd}")
        })?;
    fs::canonicalize(lib).with_context(|| format!("resolving {lib}"))
}

/// The libssl wrk and nginx both load, and a note saying so for the report.
pub(crate) fn shared_by_wrk_and_nginx() -> Result<(PathBuf, String)> {
    let wrk = linked_by("wrk")?;
    let nginx = linked_by("nginx")?;
    if wrk != nginx {
        bail!(
            "wrk loads {} but nginx loads {}: the floor's uprobes would miss one of them",
            wrk.display(),
            nginx.display()
        );
    }
    Ok((
        wrk,
        "dynamically linked by wrk and nginx, checked with ldd".to_owned(),
    ))
}
