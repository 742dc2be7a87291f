//! Many idle keep-alive connections, each with one finished HTTP exchange: what the agent
//! must keep tracking while they stay open.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use super::{interrupt, nginx::BODY};

/// Raises this process's open-file limit to at least `want` (root may raise the hard limit).
pub(crate) fn raise_nofile(want: u64) -> Result<()> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        bail!("getrlimit(RLIMIT_NOFILE) failed");
    }
    if limit.rlim_cur >= want {
        return Ok(());
    }
    limit.rlim_cur = want;
    limit.rlim_max = limit.rlim_max.max(want);
    // SAFETY: setrlimit reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        bail!(
            "setrlimit(RLIMIT_NOFILE, {want}) failed: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Opens `n` connections to `addr`, sends one GET on each and reads its whole response, and
/// returns them still open. Requests all go out before any response is read, so the agent
/// sees the exchanges overlap as on a busy host.
pub(crate) fn open(addr: SocketAddr, n: usize) -> Result<Vec<TcpStream>> {
    let mut streams = Vec::with_capacity(n);
    for i in 0..n {
        if i % 500 == 0 {
            interrupt::check()?;
        }
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .with_context(|| format!("connection {i} of {n} to {addr}"))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let request = format!(
            "GET /v1/items/{i} HTTP/1.1\r\nHost: {}\r\nUser-Agent: apimon-bench\r\n\r\n",
            addr.ip()
        );
        s.write_all(request.as_bytes())
            .with_context(|| format!("sending on connection {i}"))?;
        streams.push(s);
    }
    let mut buf = [0_u8; 1024];
    for (i, s) in streams.iter_mut().enumerate() {
        if i % 500 == 0 {
            interrupt::check()?;
        }
        let mut got = Vec::new();
        // The body is last and small: the response is complete once it ends with it.
        while !got.ends_with(BODY.as_bytes()) {
            let k = s
                .read(&mut buf)
                .with_context(|| format!("reading the response on connection {i}"))?;
            if k == 0 {
                bail!("connection {i} closed before its response ended");
            }
            got.extend_from_slice(&buf[..k]);
        }
    }
    Ok(streams)
}
