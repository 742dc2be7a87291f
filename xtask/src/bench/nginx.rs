//! nginx as the API under load: a configuration written for the bench, a self-signed
//! certificate, and a running instance (in the namespace or on the host) stopped on drop.

use std::{
    fs,
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{child::Guarded, interrupt, netns::NETNS};
use crate::cmd::output_of;

/// The JSON body every request gets: small, so the bench measures per-call costs.
pub(crate) const BODY: &str = r#"{"ok":true,"id":42}"#;

/// Writes a self-signed P-256 certificate for `name` (and `ip`) into `dir`.
pub(crate) fn write_cert(dir: &Path, name: &str, ip: &str) -> Result<()> {
    output_of(Command::new("openssl").args([
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "2",
        "-keyout",
        &dir.join("key.pem").to_string_lossy(),
        "-out",
        &dir.join("cert.pem").to_string_lossy(),
        "-subj",
        &format!("/CN={name}"),
        "-addext",
        &format!("subjectAltName=DNS:{name},IP:{ip}"),
    ]))
    .map(drop)
    .context("creating the bench's TLS certificate")
}

/// Where one nginx instance listens.
pub(crate) struct Site<'a> {
    /// Instance name: names its config, pid file, logs and temp folders.
    pub(crate) name: &'a str,
    /// Plaintext listen address, if any.
    pub(crate) plain: Option<SocketAddr>,
    /// TLS listen address, if any (cert.pem and key.pem in the folder).
    pub(crate) tls: Option<SocketAddr>,
    /// Run inside the bench namespace (else on the host).
    pub(crate) in_netns: bool,
}

/// A running nginx master and its worker, stopped (SIGTERM to the group) on drop.
pub(crate) struct Nginx {
    process: Guarded,
    error_log: PathBuf,
}

impl Nginx {
    /// Writes the configuration into `dir`, starts nginx and waits until every port accepts.
    pub(crate) fn start(dir: &Path, site: &Site<'_>) -> Result<Self> {
        let conf = dir.join(format!("{}.conf", site.name));
        let error_log = dir.join(format!("{}-error.log", site.name));
        fs::write(&conf, config(dir, site)).with_context(|| format!("writing {conf:?}"))?;
        let mut cmd = if site.in_netns {
            let mut c = Command::new("ip");
            // `ip netns exec` execs nginx in place: the child's pid is the master's.
            c.args(["netns", "exec", NETNS, "nginx"]);
            c
        } else {
            Command::new("nginx")
        };
        cmd.arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(&error_log)
            .stdin(Stdio::null());
        // SIGTERM is nginx's fast shutdown: the master stops its worker and exits.
        let mut nginx = Self {
            process: Guarded::spawn(&format!("nginx ({})", site.name), &mut cmd, libc::SIGTERM)?,
            error_log,
        };
        for addr in site.plain.iter().chain(site.tls.iter()) {
            nginx.wait_accepting(*addr)?;
        }
        Ok(nginx)
    }

    fn wait_accepting(&mut self, addr: SocketAddr) -> Result<()> {
        let end = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            interrupt::check()?;
            if let Some(status) = self.process.exited()? {
                bail!(
                    "nginx exited ({status}) before listening on {addr}:\n{}",
                    fs::read_to_string(&self.error_log).unwrap_or_default()
                );
            }
            if Instant::now() >= end {
                bail!("nginx does not accept connections on {addr} after 15 s");
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

/// nginx's configuration: one worker, no access log, keep-alive for as long as the bench
/// runs, room for the 10,000-connection scenario, and one location returning [`BODY`].
fn config(dir: &Path, site: &Site<'_>) -> String {
    let d = dir.display();
    let n = site.name;
    let mut listen = String::new();
    if let Some(addr) = site.plain {
        listen += &format!("        listen {addr} backlog=4096;\n");
    }
    if let Some(addr) = site.tls {
        listen += &format!(
            "        listen {addr} ssl backlog=4096;\n\
             \x20       ssl_certificate {d}/cert.pem;\n\
             \x20       ssl_certificate_key {d}/key.pem;\n\
             \x20       ssl_protocols TLSv1.3;\n"
        );
    }
    format!(
        r#"# Written by `cargo xtask bench overhead`.
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 65536;
user nobody nogroup;
pid {d}/{n}.pid;
error_log {d}/{n}-error.log warn;

events {{
    worker_connections 30000;
}}

http {{
    access_log off;
    # Debian compiles in /var/lib/nginx/*: keep every temp folder in the bench's own.
    client_body_temp_path {d}/{n}-body;
    proxy_temp_path {d}/{n}-proxy;
    fastcgi_temp_path {d}/{n}-fastcgi;
    uwsgi_temp_path {d}/{n}-uwsgi;
    scgi_temp_path {d}/{n}-scgi;
    keepalive_requests 1000000000;
    keepalive_timeout 600s;
    default_type application/json;

    server {{
{listen}
        location / {{
            return 200 '{BODY}';
        }}
    }}
}}
"#
    )
}
